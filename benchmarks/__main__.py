"""Run the benchmarks: ``python -m benchmarks [NAME ...]`` (``make bench`` runs them all).

Every module ``benchmarks/bench_NAME.py`` has a ``main() -> None`` that measures its
baseline in the same run and prints ratios, so that the shared, noisy machine's speed
of the day cancels out.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def _available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )


def main(argv: list[str]) -> int:
    names = argv or _available()
    unknown = sorted(set(names) - set(_available()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(_available())}")
        return 2
    for name in names:
        print(f"== {name}", flush=True)
        importlib.import_module(f"benchmarks.bench_{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
