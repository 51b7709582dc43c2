"""Storage-layer throughput next to plain zarr on the same arrays, codecs and chunking.

    python -m bench.storage [--n 2000] [--size 256] [--shard-size 128] [--repeats 3]

Data: uint16 images of smooth noise quantised to 12 bits, 7 pathology and 14 anatomy channels of
random discs (compressible like real masks; not the phantom). "raw zarr" creates the same three arrays
with the same codecs, chunks and shards (`storage.arrays.array_layouts`) and writes / reads them shard by
shard with plain zarr calls. "storage" goes through stage_version -> write_shard -> publish (which adds
input checks, sha256 checksums, manifest parts and ledger files) and open_dataset -> array reads.
MB/s counts uncompressed bytes. Medians over --repeats runs after one warm-up run; raw and storage
runs take turns, so that on a shared machine both meet the same load.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import zarr
from scipy import ndimage

from storage import ArraySpec, manifest_rows_to_table, open_dataset, stage_version
from storage.arrays import array_dir, array_layouts

logger = logging.getLogger(__name__)

from bench.record import progress_logging, write_results
N_PATHOLOGY, N_ANATOMY = 7, 14


# --- synthetic data ------------------------------------------------------------------------------


def synthetic_arrays(n: int, size: int, seed: int = 0, n_unique: int = 100) -> dict[str, np.ndarray]:
    """n samples cycled from n_unique random ones (generation is slow; codecs do not see the repeat)."""
    rng = np.random.default_rng(seed)
    m = min(n, n_unique)
    coarse = rng.normal(size=(m, 16, 16)).astype(np.float32)
    images = ndimage.zoom(coarse, (1, size / 16, size / 16), order=3)
    images += rng.normal(scale=0.02, size=images.shape).astype(np.float32)
    lo, hi = images.min(axis=(1, 2), keepdims=True), images.max(axis=(1, 2), keepdims=True)
    images = (np.round((images - lo) / (hi - lo) * 4095) * 16).astype(np.uint16)
    yy, xx = np.mgrid[:size, :size]

    def discs(channels: int, p: float) -> np.ndarray:
        out = np.zeros((m, channels, size, size), np.uint8)
        for i in range(m):
            for c in range(channels):
                if rng.random() < p:
                    cy, cx = rng.uniform(0.15, 0.85, 2) * size
                    r = rng.uniform(0.05, 0.25) * size
                    out[i, c] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        return out

    bank = {"images": images, "masks": discs(N_PATHOLOGY, 0.3), "anatomy": discs(N_ANATOMY, 0.9)}
    order = np.arange(n) % m
    return {name: array[order] for name, array in bank.items()}


def synthetic_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "sample_id": f"bench-{i:06d}",
            "split": None,
            "prompt": "small nodule in the left upper zone.",
            "findings": [{"label": "nodule", "side": "left", "zone": "upper", "size": "small"}],
            "seed": i,
            "attempt_seeds": [i],
            "attempt_reject_reasons": [None],
            "source": None,
            "mask_source": "generated",
            "mask_model_id": None,
            "image_model_id": None,
            "scores": {"realism": 0.9},
            "accepted": True,
            "reject_reason": None,
            "metadata": {},
        }
        for i in range(n)
    ]


# --- the two ways of writing and reading ---------------------------------------------------------


def _bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def write_raw(path: Path, data: dict[str, np.ndarray], spec: ArraySpec, shard_size: int) -> None:
    n = len(data["images"])
    arrays = {
        name: zarr.create_array(str(path / array_dir(name)), **layout)
        for name, layout in array_layouts(spec, n, shard_size, {}).items()
    }
    for start, stop in _bounds(n, shard_size):
        for name, array in arrays.items():
            array[start:stop] = data[name][start:stop]


def read_raw(path: Path, shard_size: int) -> int:
    total = 0
    for name in ("images", "masks", "anatomy"):
        array = zarr.open_array(str(path / array_dir(name)), mode="r")
        for start, stop in _bounds(array.shape[0], shard_size):
            total += array[start:stop].nbytes
    return total


def write_storage(
    root: Path, data: dict[str, np.ndarray], spec: ArraySpec, shard_size: int, tables: list[pa.Table]
) -> None:
    n = len(data["images"])
    staged = stage_version(root, "bench", "build", n, shard_size, spec)
    for k, (start, stop) in enumerate(_bounds(n, shard_size)):
        staged.write_shard(
            k, data["images"][start:stop], data["masks"][start:stop], data["anatomy"][start:stop], tables[k]
        )
    staged.publish({"benchmark": "bench/storage.py"})


def read_storage(root: Path, shard_size: int) -> int:
    ds = open_dataset(root, "bench")
    total = 0
    for array in (ds.images, ds.masks, ds.anatomy):
        for start, stop in _bounds(len(ds), shard_size):
            total += array[start:stop].nbytes
    return total


def _block_nbytes(block: np.ndarray) -> np.ndarray:
    return np.array([block.nbytes])


def read_storage_dask(root: Path) -> int:
    """Read every block through `DatasetVersion.to_dask` (threads), keeping only each block's size."""
    import dask

    ds = open_dataset(root, "bench")
    total = 0
    with dask.config.set(scheduler="threads"):
        for array in ds.to_dask().values():
            sizes = array.map_blocks(
                _block_nbytes, chunks=((1,) * array.numblocks[0],), drop_axis=list(range(1, array.ndim)), dtype=np.int64
            )
            total += int(sizes.sum().compute())
    return total


def read_storage_torch(root: Path, n_items: int) -> int:
    ds = open_dataset(root, "bench")
    items = ds.torch_dataset(indices=np.linspace(0, len(ds) - 1, n_items).astype(int))
    total = 0
    for i in range(len(items)):
        item = items[i]
        total += item["image"].numel() * 2 + item["masks"].numel() + item["anatomy"].numel()  # stored bytes
    return total


# --- timing --------------------------------------------------------------------------------------


def _timed_pairs(
    runs: dict[str, Callable[[], Any]], repeats: int, before: dict[str, Callable[[], None]] | None = None
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds (all threads of this process) per run of each callable, taking turns
    (a, b, a, b, ...) so that both meet the same load on a shared machine; the first round warms up and
    is not counted. CPU seconds do not depend on what else the machine runs; wall seconds do."""
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats + 1):
        for name, run in runs.items():
            if before and name in before:
                before[name]()
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            if i:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-items", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    progress_logging()
    logging.getLogger("storage").setLevel(logging.WARNING)

    spec = ArraySpec(image_size=args.size)
    logger.info("generating %d synthetic samples of %dx%d ...", args.n, args.size, args.size)
    data = synthetic_arrays(args.n, args.size)
    rows = synthetic_rows(args.n)
    tables = [manifest_rows_to_table(rows[a:b]) for a, b in _bounds(args.n, args.shard_size)]
    nbytes = sum(a.nbytes for a in data.values())
    mb = nbytes / 1e6

    scratch = Path(tempfile.mkdtemp(dir=args.dir, prefix="aurad-bench-"))
    raw_dir, storage_root = scratch / "raw", scratch / "storage"

    def clear(path: Path) -> Callable[[], None]:
        return lambda: shutil.rmtree(path, ignore_errors=True)

    load_before = os.getloadavg()
    try:
        logger.info("writing %.0f MB per run, %d timed runs after a warm-up ...", mb, args.repeats)
        times, cpu = _timed_pairs(
            {
                "raw_write": lambda: write_raw(raw_dir, data, spec, args.shard_size),
                "storage_write": lambda: write_storage(storage_root, data, spec, args.shard_size, tables),
            },
            args.repeats,
            before={"raw_write": clear(raw_dir), "storage_write": clear(storage_root)},
        )
        reads = {
            "raw_read": lambda: read_raw(raw_dir, args.shard_size),
            "storage_read": lambda: read_storage(storage_root, args.shard_size),
            "storage_read_dask": lambda: read_storage_dask(storage_root),
            "storage_torch_items": lambda: read_storage_torch(storage_root, args.torch_items),
        }
        read_times, read_cpu = _timed_pairs(reads, args.repeats)
        times |= read_times
        cpu |= read_cpu
        torch_bytes = read_storage_torch(storage_root, args.torch_items)
        raw_size, version_size = _folder_bytes(raw_dir), _folder_bytes(storage_root / "bench" / "v0001")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    rates = {name: mb / t for name, t in seconds.items()}
    rates["storage_torch_items"] = torch_bytes / 1e6 / seconds["storage_torch_items"]

    results = {
        "n_samples": args.n,
        "image_size": args.size,
        "shard_size": args.shard_size,
        "channels": {"pathology": N_PATHOLOGY, "anatomy": N_ANATOMY},
        "uncompressed_mb": round(mb, 1),
        "stored_mb": {"raw_zarr": round(raw_size / 1e6, 1), "storage_version": round(version_size / 1e6, 1)},
        "repeats": args.repeats,
        "scratch": str(scratch.parent),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "seconds": seconds,
        "cpu_seconds": {name: statistics.median(values) for name, values in cpu.items()},
        "all_runs_seconds": times,
        "mb_per_s": rates,
        "torch_items_per_s": args.torch_items / seconds["storage_torch_items"],
        "write_ratio": seconds["raw_write"] / seconds["storage_write"],
        "read_ratio": seconds["raw_read"] / seconds["storage_read"],
        "write_cpu_ratio": statistics.median(cpu["raw_write"]) / statistics.median(cpu["storage_write"]),
    }
    table = [
        "| | raw zarr | storage | ratio |",
        "|---|---|---|---|",
        f"| write MB/s | {rates['raw_write']:.0f} | {rates['storage_write']:.0f} | {results['write_ratio']:.2f} |",
        f"| write CPU s | {results['cpu_seconds']['raw_write']:.1f} | {results['cpu_seconds']['storage_write']:.1f} | "
        f"{results['write_cpu_ratio']:.2f} |",
        f"| read MB/s | {rates['raw_read']:.0f} | {rates['storage_read']:.0f} | {results['read_ratio']:.2f} |",
        f"| read as dask MB/s | | {rates['storage_read_dask']:.0f} | |",
        f"| torch items/s | | {results['torch_items_per_s']:.0f} | |",
        "",
        f"{args.n} samples of {args.size}x{args.size}, shard {args.shard_size}: {mb:.0f} MB uncompressed, "
        f"{raw_size / 1e6:.1f} MB stored (raw zarr), {version_size / 1e6:.1f} MB (storage version); medians of "
        f"{args.repeats} after a warm-up, runs alternating. Target: storage write >= 0.8 x raw zarr.",
    ]
    logger.info("\n".join(table))
    out = write_results("storage", results, table, "Storage write / read speed next to raw zarr", out=args.out)
    logger.info("wrote %s", out)
    return results


if __name__ == "__main__":
    main()
