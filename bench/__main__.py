"""Run benchmarks by name (default: the quick ones); each writes bench/results/<name>.json and <name>.md."""

from __future__ import annotations

import argparse
import importlib
import time

QUICK = ("phantom", "storage", "sampling", "filtering")
ALL = QUICK + ("orchestration", "demo", "samplers", "quality", "grounding", "priors", "locations", "reports", "visibility", "realism", "drr_anatomy", "experts")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(ALL)} (default: {' '.join(QUICK)})")
    names = parser.parse_args().names or list(QUICK)
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(ALL)}")
    for name in names:
        print(f"== bench.{name} ==", flush=True)
        began = time.perf_counter()
        importlib.import_module(f"bench.{name}").main([])
        print(f"== bench.{name}: {time.perf_counter() - began:.0f} s ==", flush=True)


if __name__ == "__main__":
    main()
