"""What the benchmarks share: a real gateway of either engine in front of fake instances, and
the heavy-tailed request lengths. Run the benchmarks from the repository root."""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import helpers  # noqa: E402


def pareto_lengths(count: int, seed: int, minimum: int = 8, cap: int = 400) -> list[int]:
    """Request lengths in tokens: Pareto(alpha 1.5) from `minimum`, capped: a few long
    generations among many short ones, as chat traffic is."""
    rng = random.Random(seed)
    return [min(cap, int(minimum * rng.paretovariate(1.5))) for _ in range(count)]


class Gateway(helpers.Gateway):
    """The tests' gateway (a standalone nginx or haproxy rendered by `render-<engine>`), as
    a context manager, for the first `count` instances from `base`."""

    def __init__(self, engine: str, base: int, count: int, *flags: str) -> None:
        super().__init__(base, count, *flags, engine=engine)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
