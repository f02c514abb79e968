"""Model names as Ollama reads them (ollama/ollama `types/model/name.go`).

`qwen3`, `Qwen3`, `library/qwen3` and `registry.ollama.ai/library/qwen3:latest` all name one
model: the host `registry.ollama.ai`, the namespace `library` and the tag `latest` are
defaults, and names compare case-insensitively (`Name.EqualFold`). The fleet keys a model by
Ollama's shortest display form (`DisplayShortest`), lower-cased: `qwen3:latest`.
"""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


class Name(NamedTuple):
    host: str
    namespace: str
    model: str
    tag: str


def parse(text: str) -> Name:
    """`ParseName`: `ParseNameBare` merged with the defaults. The tag is what follows the last
    `:` when it comes after the last `/` (so `host:5000/m` has a port, not a tag); a scheme
    (`https://`) before the host is dropped."""
    text = text.strip().lower()
    tag = ""
    if text.rfind(":") > text.rfind("/"):
        text, _, tag = text.rpartition(":")
    parts = text.split("/")
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else ""
    host = "/".join(parts[:-2]).split("://", 1)[-1] if len(parts) >= 3 else ""
    return Name(host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG)


def canonical(text: str) -> str:
    """`DisplayShortest`, lower-cased: the key the fleet uses for a model everywhere."""
    name = parse(text)
    if name.host != DEFAULT_HOST:
        prefix = f"{name.host}/{name.namespace}/"
    elif name.namespace != DEFAULT_NAMESPACE:
        prefix = f"{name.namespace}/"
    else:
        prefix = ""
    return f"{prefix}{name.model}:{name.tag}"


def spellings(text: str) -> tuple[str, ...]:
    """Every way a request may name this model (lower-case; the gateway compares without
    case): with and without each default part Ollama would fill in."""
    name = parse(text)
    tags = [f":{name.tag}"] + ([""] if name.tag == DEFAULT_TAG else [])
    heads = [f"{name.host}/{name.namespace}/"]
    if name.host == DEFAULT_HOST:
        heads.append(f"{name.namespace}/")
        if name.namespace == DEFAULT_NAMESPACE:
            heads.append("")
    return tuple(sorted({head + name.model + tag for head in heads for tag in tags}, key=lambda s: (len(s), s)))
