"""Model names follow Ollama's types/model/name.go: defaults filled in, case ignored."""

from __future__ import annotations

import pytest

from ollama_fleet.names import canonical, spellings


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("qwen3", "qwen3:latest"),
        ("Qwen3", "qwen3:latest"),
        ("library/qwen3", "qwen3:latest"),
        ("registry.ollama.ai/library/qwen3:latest", "qwen3:latest"),
        ("https://registry.ollama.ai/library/qwen3:8b", "qwen3:8b"),
        ("myns/model", "myns/model:latest"),
        ("hf.co/User/Model:Q4_K_M", "hf.co/user/model:q4_k_m"),
        ("host:5000/ns/m", "host:5000/ns/m:latest"),  # a port, not a tag
    ],
)
def test_canonical_is_ollamas_shortest_display(given: str, key: str) -> None:
    assert canonical(given) == key


def test_every_spelling_reads_back_as_the_same_model() -> None:
    for model in ("qwen3:latest", "qwen3:8b", "myns/model:latest", "hf.co/user/model:q4"):
        names = spellings(model)
        assert model in names
        assert {canonical(n) for n in names} == {model}
    assert set(spellings("qwen3")) == {
        "qwen3",
        "qwen3:latest",
        "library/qwen3",
        "library/qwen3:latest",
        "registry.ollama.ai/library/qwen3",
        "registry.ollama.ai/library/qwen3:latest",
    }
    assert spellings("hf.co/user/model:q4") == ("hf.co/user/model:q4",)
