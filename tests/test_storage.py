"""Storage layer: round trips, publish / resume semantics, readers, and every bad input.

The helpers at the top (`sample_arrays`, `sample_rows`, `build`) are also used by the subprocesses of
these tests and of test_storage_concurrency.py: every sample's arrays derive from its index alone, so
any process can regenerate and check them.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from aurad_models.pixels import STORED_ATTRIBUTES
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES
from storage import (
    MANIFEST_SCHEMA,
    ArraySpec,
    DatasetVersion,
    StagedVersion,
    StorageError,
    list_datasets,
    list_versions,
    manifest_rows_to_table,
    open_dataset,
    stage_version,
)
from storage import catalog as catalog_module
from storage.schema import CALLER_SCHEMA

SIZE = 16
TESTS_DIR = Path(__file__).parent
REPO = TESTS_DIR.parent


# --- helpers (also imported by subprocesses) -----------------------------------------------------


def spec() -> ArraySpec:
    return ArraySpec(image_size=SIZE)


def sample_arrays(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (uint16) and pathology / anatomy masks (uint8 {0,1}) of samples [start, stop), by index."""
    images, pathology, anatomy = [], [], []
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        images.append(rng.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16))
        pathology.append((rng.random((len(PATHOLOGIES), SIZE, SIZE)) < 0.2).astype(np.uint8))
        anatomy.append((rng.random((len(ANATOMY_STRUCTURES), SIZE, SIZE)) < 0.5).astype(np.uint8))
    return np.stack(images), np.stack(pathology), np.stack(anatomy)


def sample_rows(start: int, stop: int, prefix: str = "s") -> list[dict]:
    rows = []
    for i in range(start, stop):
        findings = []
        if i % 2:
            findings.append({"label": "effusion", "side": "right", "zone": None, "size": "moderate"})
        if i % 3 == 0:
            findings.append({"label": "nodule", "side": "left", "zone": "upper", "size": "small"})
        accepted = i % 4 != 0
        rows.append(
            {
                "sample_id": f"{prefix}{i:05d}",
                "split": ["train", "val", None][i % 3],
                "prompt": f"prompt {i}",
                "findings": findings,
                "seed": 1000 + i,
                "attempt_seeds": [i, 1000 + i],
                "attempt_reject_reasons": ["realism", None if accepted else "mask_location"],
                "source": f"bank-{i}",
                "mask_source": "generated",
                "mask_model_id": "mask-v1",
                "image_model_id": None,
                "scores": {"realism": i / 100, "anatomy_dice": 0.9},
                "accepted": accepted,
                "reject_reason": None if accepted else "mask_location",
                "metadata": {"i": str(i)},
            }
        )
    return rows


def write_shards(staged: StagedVersion, shards=None, prefix: str = "s") -> None:
    for k in range(staged.n_shards) if shards is None else shards:
        start, stop = staged.shard_bounds(k)
        staged.write_shard(k, *sample_arrays(start, stop), sample_rows(start, stop, prefix))


def build(root, dataset="ds", build_id="b1", n=10, shard_size=4, lineage=None, prefix="s") -> str:
    staged = stage_version(root, dataset, build_id, n, shard_size, spec())
    write_shards(staged, prefix=prefix)
    return staged.publish(lineage or {"config_hash": "abc"})


def image_sha(image: np.ndarray) -> str:
    return hashlib.sha256(image.astype("<u2").tobytes()).hexdigest()


def masks_sha(pathology: np.ndarray, anatomy: np.ndarray) -> str:
    return hashlib.sha256(pathology.tobytes() + anatomy.tobytes()).hexdigest()


# --- round trips ---------------------------------------------------------------------------------


def check_round_trip(ds: DatasetVersion, n: int, shard_size: int, prefix: str = "s") -> None:
    images, pathology, anatomy = sample_arrays(0, n)
    assert len(ds) == n
    np.testing.assert_array_equal(ds.images[:], images)
    np.testing.assert_array_equal(ds.masks[:], pathology)
    np.testing.assert_array_equal(ds.anatomy[:], anatomy)
    expected = manifest_rows_to_table(sample_rows(0, n, prefix))
    assert ds.manifest.schema.equals(MANIFEST_SCHEMA)
    assert ds.manifest.select(CALLER_SCHEMA.names).equals(expected)
    assert ds.manifest.column("shard").to_pylist() == [i // shard_size for i in range(n)]
    assert ds.manifest.column("index_in_shard").to_pylist() == [i % shard_size for i in range(n)]
    assert ds.manifest.column("image_sha256").to_pylist() == [image_sha(im) for im in images]
    assert ds.manifest.column("masks_sha256").to_pylist() == [masks_sha(p, a) for p, a in zip(pathology, anatomy)]


def test_round_trip_local(tmp_path):
    version = build(tmp_path, n=10, shard_size=4, lineage={"config_hash": "abc", "models": {"mask": "m1"}})
    assert version == "v0001"
    ds = open_dataset(tmp_path, "ds")
    check_round_trip(ds, 10, 4)
    assert (ds.name, ds.version, ds.path) == ("ds", "v0001", f"{tmp_path}/ds/v0001")
    assert ds.lineage["config_hash"] == "abc" and ds.lineage["models"] == {"mask": "m1"}
    assert ds.lineage["n_samples"] == 10 and ds.lineage["shard_size"] == 4 and ds.lineage["build_id"] == "b1"
    assert ds.lineage["counts"]["accepted"] == sum(i % 4 != 0 for i in range(10))
    assert ds.images.attrs.asdict() == STORED_ATTRIBUTES
    assert ds.images.metadata.dimension_names == ("sample", "y", "x")
    assert ds.masks.attrs["channel_names"] == list(PATHOLOGIES)
    assert ds.anatomy.attrs["channel_names"] == list(ANATOMY_STRUCTURES)
    assert ds.masks.metadata.dimension_names == ("sample", "channel", "y", "x")
    assert ds.images.chunks == (1, SIZE, SIZE) and ds.images.shards == (4, SIZE, SIZE)
    assert ds.masks.chunks == (1, len(PATHOLOGIES), SIZE, SIZE)
    group = zarr.open_group(ds.path, mode="r")
    assert group.metadata.consolidated_metadata is not None
    assert sorted(group.keys()) == ["anatomy.zarr", "images.zarr", "masks.zarr"]
    assert list_datasets(tmp_path) == ["ds"]
    assert not (tmp_path / "ds" / "_staging" / "b1").exists()


def test_round_trip_memory_root():
    root = f"memory://aurad-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        assert build(root, n=9, shard_size=4) == "v0001"
        staged = stage_version(root, "ds", "b2", 9, 4, spec())
        write_shards(staged)
        staged.write_file("quality/report.html", "<html></html>")
        assert staged.publish({"config_hash": "def"}) == "v0002"
        assert list_versions(root, "ds") == ["v0001", "v0002"]
        assert list_datasets(root) == ["ds"]
        ds = open_dataset(root, "ds")
        assert ds.version == "v0002" and ds.path.startswith("memory://")
        check_round_trip(ds, 9, 4)
        check_round_trip(open_dataset(root, "ds", "v0001"), 9, 4)
        assert fs.cat_file(ds.path.removeprefix("memory://") + "/quality/report.html") == b"<html></html>"
        assert not fs.exists(staged.path.removeprefix("memory://"))
        assert not any(p.endswith("_publishing.json") for p in fs.find(root.removeprefix("memory:/")))
        # plain zarr and pyarrow read it too
        assert zarr.open_array(f"{ds.path}/images.zarr", mode="r").shape == (9, SIZE, SIZE)
        assert pq.read_table(f"{ds.path.removeprefix('memory://')}/manifest", filesystem=fs).num_rows == 9
    finally:
        fs.rm(root.removeprefix("memory:/"), recursive=True)


def test_latest_resolution_and_old_versions_stay_readable(tmp_path):
    assert build(tmp_path, build_id="b1", n=6, shard_size=3) == "v0001"
    assert build(tmp_path, build_id="b2", n=6, shard_size=3, prefix="t") == "v0002"
    assert list_versions(tmp_path, "ds") == ["v0001", "v0002"]
    assert open_dataset(tmp_path, "ds").version == "v0002"
    assert open_dataset(tmp_path, "ds", "latest").lineage["build_id"] == "b2"
    old = open_dataset(tmp_path, "ds", "v0001")
    check_round_trip(old, 6, 3)
    assert open_dataset(tmp_path, "ds", 1).version == "v0001"
    check_round_trip(open_dataset(tmp_path, "ds", "v0002"), 6, 3, prefix="t")


def test_plain_pyarrow_and_zarr_read_without_this_project(tmp_path):
    build(tmp_path, n=10, shard_size=4)
    version_dir = tmp_path / "ds" / "v0001"
    code = """
import json, sys, hashlib
import pyarrow.parquet as pq, zarr
d = sys.argv[1]
table = pq.read_table(d + "/manifest")
images = zarr.open_array(d + "/images.zarr", mode="r")
masks = zarr.open_array(d + "/masks.zarr", mode="r")
group = zarr.open_group(d, mode="r")
print(json.dumps({
    "ids": table.column("sample_id").to_pylist(),
    "sha": [hashlib.sha256(images[i].astype("<u2").tobytes()).hexdigest() for i in range(images.shape[0])],
    "manifest_sha": table.column("image_sha256").to_pylist(),
    "channels": masks.attrs["channel_names"],
    "group": sorted(group.keys()),
    "seed_type": str(table.schema.field("seed").type),
    "findings_type": str(table.schema.field("findings").type),
    "aurad_loaded": any(m.split(".")[0] in ("storage", "aurad_models") for m in sys.modules),
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(version_dir)], capture_output=True, text=True, check=True, cwd="/"
    )
    got = json.loads(out.stdout)
    images, _, _ = sample_arrays(0, 10)
    assert got["ids"] == [r["sample_id"] for r in sample_rows(0, 10)]
    assert got["sha"] == got["manifest_sha"] == [image_sha(im) for im in images]
    assert got["channels"] == list(PATHOLOGIES)
    assert got["group"] == ["anatomy.zarr", "images.zarr", "masks.zarr"]
    assert got["seed_type"] == "int64" and got["findings_type"].startswith("list<")
    assert not got["aurad_loaded"]


def test_dask_reading_is_chunked_per_shard(tmp_path):
    build(tmp_path, n=10, shard_size=4)
    ds = open_dataset(tmp_path, "ds")
    arrays = ds.to_dask()
    images, pathology, anatomy = sample_arrays(0, 10)
    assert arrays["images"].chunks[0] == (4, 4, 2)
    assert arrays["masks"].chunks[0] == (4, 4, 2)
    np.testing.assert_array_equal(arrays["images"].compute(scheduler="threads"), images)
    np.testing.assert_array_equal(arrays["masks"].compute(scheduler="threads"), pathology)
    np.testing.assert_array_equal(arrays["anatomy"][3:7].compute(scheduler="threads"), anatomy[3:7])


def test_torch_dataset_items(tmp_path):
    import torch

    build(tmp_path, n=10, shard_size=4)
    ds = open_dataset(tmp_path, "ds")
    data = ds.torch_dataset()
    accepted = [i for i in range(10) if i % 4 != 0]
    assert len(data) == len(accepted)
    item = data[0]
    assert item["image"].shape == (1, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["masks"].shape == (len(PATHOLOGIES), SIZE, SIZE) and item["masks"].dtype == torch.float32
    assert item["anatomy"].shape == (len(ANATOMY_STRUCTURES), SIZE, SIZE)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["index"] == accepted[0] and item["sample_id"] == f"s{accepted[0]:05d}"
    images, pathology, _ = sample_arrays(accepted[0], accepted[0] + 1)
    np.testing.assert_allclose(item["image"][0].numpy(), images[0] / 65535, rtol=1e-6)
    np.testing.assert_array_equal(item["masks"].numpy(), pathology[0])
    assert len(ds.torch_dataset(accepted_only=False)) == 10
    chosen = ds.torch_dataset(indices=[0, 5])
    assert [chosen[i]["index"] for i in range(2)] == [0, 5]
    restored = pickle.loads(pickle.dumps(data))  # DataLoader workers get a pickled copy
    assert restored[1]["sample_id"] == data[1]["sample_id"]
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=3)))
    assert batch["image"].shape == (3, 1, SIZE, SIZE) and len(batch["sample_id"]) == 3
    with pytest.raises(StorageError, match="out of range"):
        ds.torch_dataset(indices=[10])


def test_select_summary_and_pandas(tmp_path):
    build(tmp_path, n=12, shard_size=5)
    ds = open_dataset(tmp_path, "ds")
    effusion = [i for i in range(12) if i % 2 and i % 4 != 0]
    both = [i for i in range(12) if i % 2 and i % 3 == 0 and i % 4 != 0]
    assert ds.select(findings=["effusion"]).tolist() == effusion
    assert ds.select(findings=["effusion", "nodule"]).tolist() == both
    assert ds.select(findings=["effusion"], accepted_only=False).tolist() == [i for i in range(12) if i % 2]
    assert ds.select(split="val").tolist() == [i for i in range(12) if i % 3 == 1 and i % 4 != 0]
    assert ds.select(accepted_only=False).tolist() == list(range(12))
    assert ds.select(findings=["mass"]).size == 0
    with pytest.raises(StorageError, match="unknown findings.*efusion"):
        ds.select(findings=["efusion"])
    summary = ds.summary()
    assert summary["n_samples"] == 12 and summary["accepted"] == 9
    assert summary["acceptance_rate"] == pytest.approx(0.75)
    nodule = [i for i in range(12) if i % 3 == 0 and i % 4 != 0]
    assert summary["findings_accepted"] == {"effusion": len(effusion), "nodule": len(nodule)}
    assert summary["reject_reasons"] == {"mask_location": 3}
    assert summary["lineage"]["config_hash"] == "abc" and summary["lineage"]["build_id"] == "b1"
    json.dumps(summary)
    frame = ds.to_pandas()
    assert len(frame) == 12 and list(frame.columns) == MANIFEST_SCHEMA.names


def test_dataset_version_pickles(tmp_path):
    build(tmp_path, n=4, shard_size=4)
    ds = pickle.loads(pickle.dumps(open_dataset(tmp_path, "ds")))
    assert ds.version == "v0001" and len(ds) == 4


# --- atomic publish and resume -------------------------------------------------------------------


def test_publish_with_missing_shards_publishes_nothing(tmp_path):
    build(tmp_path, build_id="b1", n=6, shard_size=3)
    staged = stage_version(tmp_path, "ds", "b2", 20, 3, spec())
    write_shards(staged, shards=[0, 2, 3], prefix="t")
    with pytest.raises(StorageError, match=r"4 of 7 shards unfinished: 1, 4-6") as error:
        staged.publish({})
    assert staged.path in str(error.value)
    assert list_versions(tmp_path, "ds") == ["v0001"]
    assert open_dataset(tmp_path, "ds").version == "v0001"
    assert staged.finished_shards() == {0, 2, 3}


def test_failure_inside_publish_before_catalog_leaves_nothing_listed(tmp_path, monkeypatch):
    """A publisher dying after the move but before the catalog entry: never listed; the same build
    resumes from the moved folder with its shards finished."""
    build(tmp_path, build_id="b1", n=6, shard_size=3)
    staged = stage_version(tmp_path, "ds", "b2", 6, 3, spec())
    write_shards(staged, prefix="t")

    def die(*args, **kwargs):
        raise RuntimeError("killed before the catalog entry")

    monkeypatch.setattr(catalog_module, "create_entry", die)
    with pytest.raises(RuntimeError):
        staged.publish({})
    monkeypatch.undo()
    assert (tmp_path / "ds" / "v0002").is_dir()  # moved, but not published
    assert list_versions(tmp_path, "ds") == ["v0001"]
    with pytest.raises(StorageError, match="v0002.*not published"):
        open_dataset(tmp_path, "ds", "v0002")
    resumed = stage_version(tmp_path, "ds", "b2", 6, 3, spec())
    assert resumed.finished_shards() == {0, 1}
    assert resumed.publish({}) == "v0002"
    check_round_trip(open_dataset(tmp_path, "ds"), 6, 3, prefix="t")


KILLED_WRITER = """
import sys, time
sys.path.insert(0, sys.argv[2])
import test_storage as h
import storage.staging

original = storage.staging.part_bytes
def slow_part_bytes(table):
    if int(table.column("shard")[0].as_py()) == 1:
        print("arrays of shard 1 written", flush=True)
        time.sleep(60)
    return original(table)
storage.staging.part_bytes = slow_part_bytes

staged = h.stage_version(sys.argv[1], "ds", "b2", 12, 4, h.spec())
h.write_shards(staged, prefix="t")
"""


def test_writer_killed_mid_shard_leaves_nothing_published_and_resumes(tmp_path):
    build(tmp_path, build_id="b1", n=6, shard_size=3)
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path), str(TESTS_DIR)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "arrays of shard 1 written", child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert list_versions(tmp_path, "ds") == ["v0001"]
    staged = stage_version(tmp_path, "ds", "b2", 12, 4, spec())
    assert staged.finished_shards() == {0}
    assert staged.read_manifest().num_rows == 4
    with pytest.raises(StorageError, match="unfinished: 1-2"):
        staged.publish({})
    write_shards(staged, shards=sorted(set(range(staged.n_shards)) - staged.finished_shards()), prefix="t")
    assert staged.publish({}) == "v0002"
    check_round_trip(open_dataset(tmp_path, "ds"), 12, 4, prefix="t")


def test_resume_with_same_parameters_and_refuse_different_ones(tmp_path):
    staged = stage_version(tmp_path, "ds", "b1", 10, 4, spec(), attrs={"profile": "demo"})
    write_shards(staged, shards=[0, 2])
    again = stage_version(tmp_path, "ds", "b1", 10, 4, spec(), attrs={"profile": "demo"})
    assert again.finished_shards() == {0, 2}
    assert again.read_manifest().column("shard").to_pylist() == [0] * 4 + [2] * 2
    with pytest.raises(StorageError, match="n_samples: staged 10, now 11"):
        stage_version(tmp_path, "ds", "b1", 11, 4, spec(), attrs={"profile": "demo"})
    with pytest.raises(StorageError, match="shard_size: staged 4, now 5"):
        stage_version(tmp_path, "ds", "b1", 10, 5, spec(), attrs={"profile": "demo"})
    with pytest.raises(StorageError, match="array_spec.image_size: staged 16, now 32"):
        stage_version(tmp_path, "ds", "b1", 10, 4, ArraySpec(image_size=32), attrs={"profile": "demo"})
    with pytest.raises(StorageError, match="attrs.profile: staged 'demo', now 'quality'"):
        stage_version(tmp_path, "ds", "b1", 10, 4, spec(), attrs={"profile": "quality"})
    write_shards(again, shards=[1])
    assert again.publish({}) == "v0001"
    with pytest.raises(StorageError, match="already published as ds/v0001"):
        stage_version(tmp_path, "ds", "b1", 10, 4, spec(), attrs={"profile": "demo"})


def test_staged_version_pickles_and_writes_elsewhere(tmp_path):
    staged = pickle.loads(pickle.dumps(stage_version(tmp_path, "ds", "b1", 8, 4, spec())))
    write_shards(staged)
    assert staged.finished_shards() == {0, 1}
    assert len(pickle.dumps(staged)) < 2000


def test_rewriting_a_finished_shard_needs_overwrite(tmp_path):
    staged = stage_version(tmp_path, "ds", "b1", 8, 4, spec())
    write_shards(staged)
    images, pathology, anatomy = sample_arrays(4, 8)
    with pytest.raises(StorageError, match="shard 1 .* already finished; pass overwrite=True"):
        staged.write_shard(1, images, pathology, anatomy, sample_rows(4, 8))
    zeros = np.zeros_like(pathology)
    staged.write_shard(1, images[::-1], zeros, anatomy, sample_rows(4, 8, prefix="u"), overwrite=True)
    staged.publish({})
    ds = open_dataset(tmp_path, "ds")
    np.testing.assert_array_equal(ds.images[4:8], images[::-1])
    assert not ds.masks[4:8].any()
    assert ds.manifest.column("sample_id").to_pylist()[4:] == [f"u{i:05d}" for i in range(4, 8)]


def test_catalog_clash_retries_with_the_next_number(tmp_path, monkeypatch):
    """Another publisher takes the number between our choice and our move, then the catalog name."""
    build(tmp_path, build_id="b1", n=4, shard_size=4)
    staged = stage_version(tmp_path, "ds", "b2", 4, 4, spec())
    write_shards(staged)
    stale = iter([1])  # a stale view: v0001 is already taken -> rename refused -> next number
    real_next = catalog_module.next_version_number
    monkeypatch.setattr(catalog_module, "next_version_number", lambda r, d: next(stale, None) or real_next(r, d))
    real_create = catalog_module.create_entry
    taken = iter([True])

    def clash_once(root, dataset, version, entry):
        if next(taken, False):  # someone else's catalog entry appears under our number
            real_create(root, dataset, version, {"version": version, "build_id": "intruder"})
            return False
        return real_create(root, dataset, version, entry)

    monkeypatch.setattr(catalog_module, "create_entry", clash_once)
    assert staged.publish({}) == "v0003"
    assert list_versions(tmp_path, "ds") == ["v0001", "v0002", "v0003"]
    ds = open_dataset(tmp_path, "ds", "v0003")
    assert ds.lineage["version"] == "v0003" and ds.lineage["build_id"] == "b2"


def test_write_file_and_discard(tmp_path):
    staged = stage_version(tmp_path, "ds", "b1", 4, 4, spec())
    path = staged.write_file("quality/results.json", b"{}")
    assert Path(path).read_bytes() == b"{}"
    for bad in ("manifest/x.parquet", "version.json", "images.zarr/zarr.json", "../x", "_ledger/shard-00000.json"):
        with pytest.raises(StorageError):
            staged.write_file(bad, "x")
    staged.discard()
    assert not Path(staged.path).exists()
    with pytest.raises(StorageError, match="no staged version"):
        staged.write_file("quality/x.txt", "x")


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "_private", "a b", "x\\y", "..", "a" * 200])
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(StorageError, match="name"):
        stage_version(tmp_path, name, "b1", 4, 4, spec())
    with pytest.raises(StorageError, match="name"):
        stage_version(tmp_path, "ds", name, 4, 4, spec())
    build(tmp_path, n=4, shard_size=4)
    with pytest.raises(StorageError, match="name"):
        open_dataset(tmp_path, name)
    with pytest.raises(StorageError, match="name"):
        open_dataset(tmp_path, "ds", name)


def test_unknown_dataset_and_version_list_what_exists(tmp_path):
    build(tmp_path, n=4, shard_size=4)
    with pytest.raises(StorageError, match=r"no published dataset 'other'.*published datasets: ds"):
        open_dataset(tmp_path, "other")
    with pytest.raises(StorageError, match=r"no published dataset 'other'"):
        list_versions(tmp_path, "other")
    with pytest.raises(StorageError, match=r"unknown version 'v0009'.*published versions: v0001"):
        open_dataset(tmp_path, "ds", "v0009")
    with pytest.raises(StorageError, match="does not exist"):
        list_datasets(tmp_path / "missing")


def test_half_written_version_is_never_listed(tmp_path):
    build(tmp_path, n=4, shard_size=4)
    half = tmp_path / "ds" / "v0002"
    (half / "manifest").mkdir(parents=True)
    (half / "version.json").write_text("{}")
    assert list_versions(tmp_path, "ds") == ["v0001"]
    assert open_dataset(tmp_path, "ds").version == "v0001"
    with pytest.raises(StorageError, match=r"v0002.*is not published"):
        open_dataset(tmp_path, "ds", "v0002")
    staged = stage_version(tmp_path, "ds", "b2", 4, 4, spec())  # a staging folder is not a version either
    assert list_versions(tmp_path, "ds") == ["v0001"]
    write_shards(staged)
    assert staged.publish({}) == "v0003"  # the half-written folder's number is never reused


def _rows(n: int = 4) -> list[dict]:
    return sample_rows(0, n)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r[1].pop("prompt"), r"row 1: missing columns \['prompt'\]"),
        (lambda r: r[0].update(colour="red"), r"unexpected columns \['colour'\]"),
        (lambda r: r[0].update(shard=1), r"\['shard'\] are filled by the writer"),
        (lambda r: r[2].update(seed="abc"), r"column 'seed' is not int64"),
        (lambda r: r[2].update(prompt=None), r"column 'prompt' .*may not be null; nulls at rows \[2\]"),
        (lambda r: r[0].update(findings=[{"label": None}]), r"findings"),
        (lambda r: r[0].update(scores={"a": "high"}), r"column 'scores'"),
        (lambda r: r[3].update(sample_id="s00000"), r"duplicate sample_id .*s00000"),
        (lambda r: r[0].update(mask_source="painted"), r"unknown mask_source \['painted'\]"),
        (lambda r: r[0].update(attempt_seeds=[1, 2, 3]), r"3 attempt_seeds but 2 attempt_reject_reasons"),
        (lambda r: r[1].update(seed=7), r"seed 7 is not the last attempt seed"),
    ],
)
def test_manifest_rows_are_validated(tmp_path, change, message):
    staged = stage_version(tmp_path, "ds", "b1", 4, 4, spec())
    rows = _rows()
    change(rows)
    with pytest.raises(StorageError, match=message):
        staged.write_shard(0, *sample_arrays(0, 4), rows)
    assert staged.finished_shards() == set()


def test_findings_as_objects_get_a_hint():
    from aurad_models.findings import Finding

    rows = _rows(1)
    rows[0]["findings"] = [Finding(label="effusion")]
    with pytest.raises(StorageError, match=r"as_record"):
        manifest_rows_to_table(rows)
    rows[0]["findings"] = [Finding(label="effusion").as_record()]
    assert manifest_rows_to_table(rows).num_rows == 1


def test_manifest_as_table(tmp_path):
    staged = stage_version(tmp_path, "ds", "b1", 4, 4, spec())
    table = manifest_rows_to_table(_rows())
    reordered = table.select(list(reversed(table.column_names)))
    staged.write_shard(0, *sample_arrays(0, 4), reordered)  # column order does not matter
    bad = table.set_column(table.schema.get_field_index("seed"), "seed", pa.array(["1"] * 4))
    with pytest.raises(StorageError, match=r"column 'seed' has type string, expected int64"):
        staged.write_shard(0, *sample_arrays(0, 4), bad, overwrite=True)
    loose = pa.table({name: table.column(name) for name in table.column_names})  # all nullable
    loose = loose.set_column(loose.schema.get_field_index("split"), "split", pa.nulls(4))
    staged.write_shard(0, *sample_arrays(0, 4), loose, overwrite=True)
    with_writer = loose.append_column("image_sha256", pa.array(["x"] * 4))
    with pytest.raises(StorageError, match="image_sha256.*the writer fills them"):
        staged.write_shard(0, *sample_arrays(0, 4), with_writer, overwrite=True)
    with pytest.raises(StorageError, match=r"missing columns \['prompt'\]"):
        staged.write_shard(0, *sample_arrays(0, 4), loose.drop_columns(["prompt"]), overwrite=True)
    with pytest.raises(StorageError, match=r"covers 4 samples, got 3 manifest rows"):
        staged.write_shard(0, *sample_arrays(0, 4), table.slice(0, 3), overwrite=True)


def _bad_arrays(kind: str):
    images, pathology, anatomy = sample_arrays(0, 4)
    if kind == "image dtype":
        images = images.astype(np.float32)
    elif kind == "image shape":
        images = images[:3]
    elif kind == "pathology channels":
        pathology = pathology[:, :3]
    elif kind == "anatomy dtype":
        anatomy = anatomy.astype(np.int16)
    elif kind == "pathology values":
        pathology = pathology.copy()
        pathology[2, 1, 3, 4] = 2
    elif kind == "anatomy values":
        anatomy = anatomy * 255
    return images, pathology, anatomy


@pytest.mark.parametrize(
    "kind, message",
    [
        ("image dtype", r"images for shard 0 .* must be uint16, got float32"),
        ("image shape", r"images for shard 0 .* must have shape \(4, 16, 16\), got \(3, 16, 16\)"),
        ("pathology channels", r"pathology .* must have shape \(4, 7, 16, 16\)"),
        ("anatomy dtype", r"anatomy .* must be uint8, got int16"),
        ("pathology values", r"pathology .* only 0 and 1; 1 values are not, first at index \(2, 1, 3, 4\) = 2"),
        ("anatomy values", r"anatomy .* only 0 and 1"),
    ],
)
def test_wrong_arrays_are_refused(tmp_path, kind, message):
    staged = stage_version(tmp_path, "ds", "b1", 4, 4, spec())
    with pytest.raises(StorageError, match=message):
        staged.write_shard(0, *_bad_arrays(kind), _rows())
    assert staged.finished_shards() == set()


def test_bool_masks_and_bad_shard_numbers(tmp_path):
    staged = stage_version(tmp_path, "ds", "b1", 6, 4, spec())
    images, pathology, anatomy = sample_arrays(0, 4)
    staged.write_shard(0, images, pathology.astype(bool), anatomy.astype(bool), _rows())
    for k in (2, -1, "0", 1.0):
        with pytest.raises(StorageError, match="no shard"):
            staged.shard_bounds(k)
    with pytest.raises(StorageError, match="positive integer"):
        stage_version(tmp_path, "ds", "b2", 0, 4, spec())
    with pytest.raises(StorageError, match="lineage keys \\['n_samples'\\]"):
        staged.publish({"n_samples": 3})
    write_shards(staged, shards=[1])
    with pytest.raises(StorageError, match="cannot be stored as JSON"):
        staged.publish({"model": object()})
    assert not (tmp_path / "ds" / "catalog").exists()


def test_manifest_with_wrong_schema_is_refused_on_read(tmp_path):
    build(tmp_path, n=8, shard_size=4)
    part = tmp_path / "ds" / "v0001" / "manifest" / "part-00001-of-00002.parquet"
    table = pq.read_table(part)
    table = table.set_column(table.schema.get_field_index("seed"), "seed", table.column("seed").cast(pa.string()))
    pq.write_table(table, part)
    with pytest.raises(StorageError, match=r"part-00001-of-00002.parquet does not match the checksum"):
        open_dataset(tmp_path, "ds")  # at open, the part's recorded checksum catches it first
    from storage.layout import Root
    from storage.manifest import read_parts

    with pytest.raises(StorageError, match=r"part-00001-of-00002.parquet.*column 'seed' has type string"):
        root = Root(tmp_path)
        read_parts(root, root.path("ds", "v0001"), range(2), 2)  # without a checksum, the schema check does


def test_missing_manifest_part_is_refused_on_read(tmp_path):
    build(tmp_path, n=8, shard_size=4)
    (tmp_path / "ds" / "v0001" / "manifest" / "part-00000-of-00002.parquet").unlink()
    with pytest.raises(StorageError, match="missing file .*part-00000-of-00002.parquet"):
        open_dataset(tmp_path, "ds")


def test_arrays_disagreeing_with_manifest_are_refused(tmp_path):
    build(tmp_path, n=8, shard_size=4)
    version_dir = tmp_path / "ds" / "v0001"
    zarr.open_array(str(version_dir / "masks.zarr"), mode="r+").resize((7, len(PATHOLOGIES), SIZE, SIZE))
    with warnings.catch_warnings():  # zarr warns about the non-zarr files beside the arrays
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(version_dir))
    with pytest.raises(StorageError, match=r"masks.zarr in .*v0001 has 7 samples but the manifest has 8 rows"):
        open_dataset(tmp_path, "ds")


def test_tampered_part_fails_its_ledger_checksum(tmp_path):
    staged = stage_version(tmp_path, "ds", "b1", 8, 4, spec())
    write_shards(staged)
    part = Path(staged.path) / "manifest" / "part-00000-of-00002.parquet"
    pq.write_table(pq.read_table(part), part, compression="gzip")
    with pytest.raises(StorageError, match="does not match the checksum"):
        staged.publish({})
    assert not (tmp_path / "ds" / "catalog").exists()


def test_array_spec_validation():
    with pytest.raises(ValueError):
        ArraySpec(image_size=0)
    with pytest.raises(ValueError, match="repeat"):
        ArraySpec(image_size=8, pathology_channels=("a", "a"))
    with pytest.raises(StorageError, match="ArraySpec"):
        stage_version("/tmp", "ds", "b", 4, 4, {"image_size": 8})
    custom = ArraySpec(image_size=8, pathology_channels=("effusion",), anatomy_channels=("Left Lung", "Right Lung"))
    assert custom.model_dump()["pathology_channels"] == ("effusion",)


def test_custom_channels_round_trip(tmp_path):
    custom = ArraySpec(image_size=8, pathology_channels=("effusion",), anatomy_channels=("Left Lung", "Right Lung"))
    staged = stage_version(tmp_path, "ds", "b1", 3, 2, custom)
    rng = np.random.default_rng(0)
    for k in range(staged.n_shards):
        start, stop = staged.shard_bounds(k)
        n = stop - start
        staged.write_shard(
            k,
            rng.integers(0, 65536, (n, 8, 8), dtype=np.uint16),
            rng.integers(0, 2, (n, 1, 8, 8), dtype=np.uint8),
            rng.integers(0, 2, (n, 2, 8, 8), dtype=np.uint8),
            sample_rows(start, stop),
        )
    staged.publish({})
    ds = open_dataset(tmp_path, "ds")
    assert ds.pathology_channels == ("effusion",) and ds.anatomy_channels == ("Left Lung", "Right Lung")
    assert ds.masks.shape == (3, 1, 8, 8)
    assert ds.select(findings=["effusion"], accepted_only=False).tolist() == [1]
    with pytest.raises(StorageError, match="unknown findings"):
        ds.select(findings=["nodule"])


def test_no_warnings_on_the_happy_path(tmp_path, recwarn):
    build(tmp_path, n=4, shard_size=4)
    ds = open_dataset(tmp_path, "ds")
    ds.images[0]
    ds.to_dask()["images"].compute(scheduler="sync")
    assert [str(w.message) for w in recwarn] == []


def test_root_may_be_a_string_path(tmp_path):
    assert build(str(tmp_path), n=4, shard_size=4) == "v0001"
    assert list_versions(str(tmp_path), "ds") == ["v0001"]
    assert os.path.isdir(open_dataset(str(tmp_path), "ds").path)


# --- damage to a published version ------------------------------------------------------------------


def _published_copy(tmp_path):
    from bench.world import write_phantom_version

    write_phantom_version(tmp_path, {"train": 12}, 64, shard_size=6)
    return tmp_path


def test_a_flipped_byte_in_an_array_chunk_is_found_naming_the_sample_and_the_file(tmp_path):
    import zarr

    root = _published_copy(tmp_path)
    version = open_dataset(root, "phantom")
    assert version.verify().ok and version.verify().checked == 12
    images = zarr.open_array(str(tmp_path / "phantom" / "v0001" / "images.zarr"), mode="r+")
    damaged = np.asarray(images[3]).copy()
    damaged[10, 10] ^= 0x0101
    images[3] = damaged
    masks = zarr.open_array(str(tmp_path / "phantom" / "v0001" / "masks.zarr"), mode="r+")
    bad = np.asarray(masks[7]).copy()
    bad[0, 0, 0] = 255
    masks[7] = bad
    report = open_dataset(root, "phantom").verify()
    assert not report.ok
    text = "\n".join(report.problems)
    assert "sample phantom-000003 (index 3)" in text and "images.zarr" in text
    assert "sample phantom-000007 (index 7)" in text and "masks.zarr holds values [255] besides 0 and 1" in text
    with pytest.raises(StorageError, match=r"phantom-000003 .*images.zarr"):
        open_dataset(root, "phantom").read_sample(3, verify=True)
    with pytest.raises(StorageError, match="phantom-000003"):
        open_dataset(root, "phantom").torch_dataset(verify=True)[3]
    assert open_dataset(root, "phantom").torch_dataset()[3]["image"].shape == (1, 64, 64)  # unverified reads still read


def test_a_rewritten_manifest_part_or_a_damaged_catalog_entry_fails_at_open(tmp_path):
    import pyarrow.parquet as pq

    root = _published_copy(tmp_path)
    part = next((tmp_path / "phantom" / "v0001" / "manifest").glob("part-00000-*.parquet"))
    original = part.read_bytes()
    table = pq.read_table(part)
    pq.write_table(table.set_column(table.schema.get_field_index("accepted"), "accepted",
                                    pa.array([False] * table.num_rows)), part)
    with pytest.raises(StorageError, match=r"part-00000-of-00002.parquet does not match the checksum recorded when it was written"):
        open_dataset(root, "phantom")
    part.write_bytes(original)
    assert open_dataset(root, "phantom").verify().ok
    entry = tmp_path / "phantom" / "catalog" / "v0001.json"
    entry.write_text("{not json")
    with pytest.raises(StorageError, match=r"catalog entry .*v0001.json is damaged"):
        open_dataset(root, "phantom")


def test_a_damaged_staged_shard_is_named_and_regenerated_not_a_resume_blocked_forever(tmp_path):
    staged = stage_version(tmp_path, "ds", "b1", 9, 3, spec())
    write_shards(staged, shards=[0, 1])
    part = tmp_path / "ds" / "_staging" / "b1" / "manifest" / "part-00001-of-00003.parquet"
    part.write_bytes(part.read_bytes()[:-20] + b"\0" * 20)  # flipped bytes in a finished shard's manifest part

    resumed = stage_version(tmp_path, "ds", "b1", 9, 3, spec())
    damaged = resumed.release_damaged_shards()
    assert len(damaged) == 1 and damaged[0].startswith("shard 1:") and "part-00001-of-00003.parquet" in damaged[0]
    assert resumed.finished_shards() == {0}  # shard 1 is regenerated, shard 0 kept
    write_shards(resumed, shards=[1, 2])
    assert resumed.release_damaged_shards() == []
    resumed.publish({})
    check_round_trip(open_dataset(tmp_path, "ds"), 9, 3)


def test_a_candidate_is_never_latest_until_promoted_and_the_pointer_file_follows(tmp_path):
    from storage import promote

    build(tmp_path, build_id="b1", n=6, shard_size=3)
    staged = stage_version(tmp_path, "ds", "b2", 6, 3, spec())
    write_shards(staged, prefix="t")
    assert staged.publish({}, release=False) == "v0002"
    assert open_dataset(tmp_path, "ds").version == "v0001"  # latest: the newest *released*
    candidate = open_dataset(tmp_path, "ds", "v0002")  # a candidate opens on purpose
    assert candidate.status == "candidate" and open_dataset(tmp_path, "ds").status == "released"
    assert (tmp_path / "ds" / "LATEST").read_text() == "v0001\n"
    assert promote(tmp_path, "ds", "v0002") == "v0002"
    assert open_dataset(tmp_path, "ds").version == "v0002" and (tmp_path / "ds" / "LATEST").read_text() == "v0002\n"

    only = stage_version(tmp_path, "fresh", "b3", 3, 3, spec())
    write_shards(only)
    only.publish({}, release=False)
    with pytest.raises(StorageError, match="no released version.*aurad datasets promote fresh@v0001"):
        open_dataset(tmp_path, "fresh")


def test_reject_reasons_group_by_kind_of_problem_without_their_numbers():
    from storage.manifest import reject_reason_kinds

    reason = ("classifier: atelectasis prompted but not detected (p=0.02 < 0.50), nodule prompted but not detected "
              "(p=0.10 < 0.50); masks: nodule prompted but its mask is empty (0 px); fidelity: consolidation re-found "
              "with Dice 0.03 < 0.08 (real images reach it); image_stats: image mean 0.61 outside the source range [0.20, 0.55]")
    assert reject_reason_kinds(reason) == {
        "classifier: atelectasis prompted but not detected", "classifier: nodule prompted but not detected",
        "masks: nodule prompted but its mask is empty", "fidelity: consolidation re-found with Dice below its threshold",
        "image_stats: image mean outside the source range"}
    # two samples rejected for the same kind with other p-values count as one kind, twice
    assert reject_reason_kinds("classifier: atelectasis prompted but not detected (p=0.31 < 0.50)") == \
        reject_reason_kinds("classifier: atelectasis prompted but not detected (p=0.00 < 0.50)")
    assert reject_reason_kinds("mask_location") == {"mask_location"}
