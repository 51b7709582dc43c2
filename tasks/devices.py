"""Which device a shard runs on: one shard (one sampling batch) per GPU at a time, on any runner.

A build with `device: cuda` on a machine with several GPUs spreads its shard tasks over all of them: each
task leases a free GPU for as long as it runs. The lease is an exclusive file lock per GPU, so it holds
across the threads of one flow run, the processes of a Dask LocalCluster, and several builds on the same
machine; a process that dies releases its locks with it. Prefect's `gpu` tag concurrency limit caps the
shard tasks of a whole deployment; the lease decides which GPU each one gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' where a GPU is visible, else 'cpu'; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def candidate_devices(device: str) -> list[str]:
    """The devices a shard asking for `device` may run on: every visible GPU for 'cuda', else just it."""
    device = resolve_device(device)
    if device != "cuda":
        return [device]
    count = torch.cuda.device_count()
    if count == 0:
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is visible (CUDA_VISIBLE_DEVICES, drivers); "
                           "set build.device=cpu to run on the CPU")
    return [f"cuda:{i}" for i in range(count)]


def default_lock_dir() -> Path:
    """Per-user lock folder shared by every process on this machine."""
    return Path(tempfile.gettempdir()) / f"aurad-device-locks-{os.getuid()}"


@contextlib.contextmanager
def lease_device(devices: Sequence[str], lock_dir: Path | None = None, poll_s: float = 0.2) -> Iterator[str]:
    """Hold one of `devices` exclusively while the block runs; wait while all are held. CPUs are shared,
    not leased: a CPU device is yielded at once."""
    if not any(d.startswith("cuda") for d in devices):
        yield devices[0]
        return
    lock_dir = lock_dir or default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for device in devices:
            handle = open(lock_dir / f"{device.replace(':', '-')}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield device
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(poll_s)
