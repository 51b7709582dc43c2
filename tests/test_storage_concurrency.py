"""Several processes writing one version at once: every writer owns whole shards, so nothing is lost.

zarr silently loses data when two writers touch one zarr shard (STACK.md), so these tests start the
writers together (a barrier after the imports) and then check every sample by checksum.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle

import numpy as np
import zarr

from storage import open_dataset, stage_version
from storage.arrays import array_dir, array_layouts
from test_storage import image_sha, masks_sha, sample_arrays, sample_rows, spec

N_PROCESSES = 4
SHARDS_PER_PROCESS = 3
SHARD_SIZE = 8
N = N_PROCESSES * SHARDS_PER_PROCESS * SHARD_SIZE


def _storage_writer(staged_bytes: bytes, shards: list[int], barrier) -> None:
    staged = pickle.loads(staged_bytes)
    barrier.wait(timeout=60)
    for k in shards:
        start, stop = staged.shard_bounds(k)
        staged.write_shard(k, *sample_arrays(start, stop), sample_rows(start, stop))


def _raw_zarr_writer(path: str, shards: list[int], barrier) -> None:
    array = zarr.open_array(path, mode="r+")
    barrier.wait(timeout=60)
    for k in shards:
        start, stop = k * SHARD_SIZE, (k + 1) * SHARD_SIZE
        array[start:stop] = sample_arrays(start, stop)[0]


def _run(target, first_arg, n_shards: int) -> None:
    """One process per group of shards, interleaved (process p owns shards p, p + 4, ...), started together."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters, like separate Prefect workers
    barrier = context.Barrier(N_PROCESSES)
    processes = [
        context.Process(target=target, args=(first_arg, list(range(p, n_shards, N_PROCESSES)), barrier))
        for p in range(N_PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * N_PROCESSES


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    staged = stage_version(tmp_path, "ds", "b1", N, SHARD_SIZE, spec())
    _run(_storage_writer, pickle.dumps(staged), staged.n_shards)
    assert staged.finished_shards() == set(range(staged.n_shards))
    assert staged.publish({}) == "v0001"

    ds = open_dataset(tmp_path, "ds")
    images, pathology, anatomy = sample_arrays(0, N)
    expected_images = [image_sha(im) for im in images]
    expected_masks = [masks_sha(p, a) for p, a in zip(pathology, anatomy)]
    stored = ds.images[:]
    stored_pathology, stored_anatomy = ds.masks[:], ds.anatomy[:]
    assert len(ds) == N and stored.shape[0] == N
    assert [image_sha(im) for im in stored] == expected_images  # every image, by checksum
    assert [masks_sha(p, a) for p, a in zip(stored_pathology, stored_anatomy)] == expected_masks
    assert ds.manifest.column("image_sha256").to_pylist() == expected_images
    assert ds.manifest.column("masks_sha256").to_pylist() == expected_masks
    assert ds.manifest.column("sample_id").to_pylist() == [r["sample_id"] for r in sample_rows(0, N)]


def test_processes_owning_whole_shards_share_one_zarr_array(tmp_path):
    """The same layout the storage layer uses, written with plain zarr by processes that own whole shards."""
    path = str(tmp_path / array_dir("images"))
    zarr.create_array(path, **array_layouts(spec(), N, SHARD_SIZE, {})["images"])
    _run(_raw_zarr_writer, path, N // SHARD_SIZE)
    stored = zarr.open_array(path, mode="r")[:]
    expected = sample_arrays(0, N)[0]
    missing = [i for i in range(N) if not np.array_equal(stored[i], expected[i])]
    assert missing == []
    assert hashlib.sha256(stored.tobytes()).hexdigest() == hashlib.sha256(expected.tobytes()).hexdigest()
