"""`python -m bench [PART ...]`: run benchmarks and rewrite their sections of docs/benchmarks.md."""

from __future__ import annotations

import importlib
import sys

PARTS = ("generator", "ceiling", "training", "train_step", "fast_path", "scoring", "peers", "profile_scorer", "service", "memory", "gpu",
         "faults")


def main(argv: list[str]) -> int:
    parts = argv or list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    for part in parts:
        print(importlib.import_module(f"bench.{part}").run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
