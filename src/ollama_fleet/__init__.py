"""ollama-fleet: one pinned `ollama serve` per GPU, supervised, behind one gateway."""

__version__ = "0.1.0"
