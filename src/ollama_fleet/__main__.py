"""`python -m ollama_fleet` runs the command-line interface."""

from ollama_fleet.cli import main

main()
