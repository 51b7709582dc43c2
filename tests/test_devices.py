"""Device leases: one shard per GPU at a time across threads and processes (device names only: the
leases are file locks, so they are tested here without a GPU)."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from aurad_models.experts import ExpertChoice
from tasks.devices import candidate_devices, lease_device
from tasks.build import BuildModels

GPUS = ["cuda:0", "cuda:1"]


def test_concurrent_leases_get_different_gpus_and_a_third_waits(tmp_path):
    held, released = [], threading.Event()
    third: list[tuple[str, float]] = []

    def hold():
        with lease_device(GPUS, tmp_path, poll_s=0.01) as device:
            held.append(device)
            released.wait(10)

    holders = [threading.Thread(target=hold) for _ in GPUS]
    for thread in holders:
        thread.start()
    while len(held) < 2:
        time.sleep(0.01)
    assert sorted(held) == GPUS

    def wait_for_one():
        began = time.perf_counter()
        with lease_device(GPUS, tmp_path, poll_s=0.01) as device:
            third.append((device, time.perf_counter() - began))

    waiter = threading.Thread(target=wait_for_one)
    waiter.start()
    time.sleep(0.3)
    assert third == []  # both GPUs busy: the third shard waits
    released.set()
    waiter.join(10)
    for thread in holders:
        thread.join(10)
    assert third and third[0][0] in GPUS and third[0][1] >= 0.3


def _hold_in_another_process(lock_dir, device, ready, done):
    with lease_device([device], lock_dir, poll_s=0.01):
        ready.set()
        done.wait(10)


def test_a_gpu_held_by_another_process_is_skipped(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    other = context.Process(target=_hold_in_another_process, args=(tmp_path, "cuda:0", ready, done))
    other.start()
    try:
        assert ready.wait(60)
        with lease_device(GPUS, tmp_path, poll_s=0.01) as device:
            assert device == "cuda:1"
    finally:
        done.set()
        other.join(30)
    with lease_device(GPUS, tmp_path) as device:  # released when the other process let go
        assert device == "cuda:0"


def test_cpu_is_not_leased(tmp_path):
    with lease_device(["cpu"], tmp_path) as first, lease_device(["cpu"], tmp_path) as second:
        assert first == second == "cpu"
    assert not any(tmp_path.iterdir())


def test_candidate_devices():
    assert candidate_devices("cpu") == ["cpu"]
    assert candidate_devices("cuda:3") == ["cuda:3"]
    import torch

    if not torch.cuda.is_available():
        assert candidate_devices("auto") == ["cpu"]
        with pytest.raises(RuntimeError, match="no CUDA device is visible"):
            candidate_devices("cuda")


def test_experts_follow_the_shard_device_unless_pinned():
    models = BuildModels("root", "m", "m-dir", "i", "i-dir", ExpertChoice(), ExpertChoice(device="cpu"), "cuda")
    moved = models.on_device("cuda:1")
    assert moved.device == "cuda:1" and moved.classifier.device == "cuda:1" and moved.segmenter.device == "cpu"
    assert hash(moved) != hash(models)  # a separate model cache entry per device
