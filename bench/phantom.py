"""Phantom generation throughput: images per second at several sizes, in one process and in a pool.

    python -m bench.phantom [--sizes 64 128 256] [--n 200] [--workers 1 2] [--repeats 3]

Each run generates `n` phantoms with findings sampled from the default prior (`generate_phantoms`,
images + 14 anatomy + 7 pathology masks + reports), after one warm-up batch. With workers > 1 the seeds
are split into contiguous chunks over a process pool (per-sample seeding makes the result identical).
Reports the median over --repeats runs; also CPU seconds per image of the calling process when
workers == 1, which is the figure to trust on a shared, loaded machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from aurad_models.phantom import PhantomConfig, generate_phantoms

logger = logging.getLogger(__name__)

from bench.record import markdown_table, progress_logging, write_results


def _generate_chunk(seeds: list[int], size: int) -> int:
    return len(generate_phantoms(seeds, PhantomConfig(size=size)))


def phantom_images_per_second(
    size: int, n: int, workers: int = 1, repeats: int = 3, first_seed: int = 0
) -> dict[str, float]:
    """Median images/s (and CPU ms per image for one worker) generating `n` phantoms of `size` px."""
    config = PhantomConfig(size=size)
    generate_phantoms(range(first_seed, first_seed + min(n, 4)), config)  # warm-up: imports, caches
    rates, cpu = [], []
    for r in range(repeats):
        seeds = list(range(first_seed + r * n, first_seed + (r + 1) * n))
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if workers == 1:
            generate_phantoms(seeds, config)
            cpu.append((time.process_time() - cpu0) / n * 1000)
        else:
            chunks = [list(c) for c in np.array_split(seeds, workers)]
            with ProcessPoolExecutor(workers) as pool:
                done = sum(pool.map(_generate_chunk, chunks, [size] * workers))
            assert done == n
        rates.append(n / (time.perf_counter() - wall0))
    out = {"size": size, "n": n, "workers": workers, "images_per_s": statistics.median(rates)}
    if cpu:
        out["cpu_ms_per_image"] = statistics.median(cpu)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.phantom", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    progress_logging()
    rows = [phantom_images_per_second(size, args.n, w, args.repeats) for size in args.sizes for w in args.workers]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result = {"cpus": os.cpu_count(), "load_average_1min": load, "rows": rows}
    for row in rows:
        row["seconds_per_1000"] = 1000 / row["images_per_s"]
    table = markdown_table(rows, {"size": "px", "workers": "workers", "images_per_s": "images/s",
                                  "cpu_ms_per_image": "CPU ms/image", "seconds_per_1000": "s per 1000 images"})
    table += ["", f"{args.n} phantoms per run, medians of {args.repeats} runs after a warm-up."]
    print("\n".join(table))
    write_results("phantom", result, table, "Phantom generation speed", out=args.out)
    return result


if __name__ == "__main__":
    main()
