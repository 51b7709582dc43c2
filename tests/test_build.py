"""The build flow end to end on a tiny world: what it publishes (read back with plain pyarrow + zarr),
resume after a crash, gates that stop a build, reproducibility from recorded seeds."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from aurad_models.diffusion import cpu_has_bf16
from bench.world import make_build_world, tiny_build_config
from aurad_models.vocabulary import PATHOLOGIES
from storage import list_datasets, list_versions, open_dataset
from tasks.quality import QualityGateFailed

pytestmark = pytest.mark.usefixtures("prefect_harness")


def published_versions(root, dataset: str) -> list[str]:
    return list_versions(root, dataset) if dataset in list_datasets(root) else []


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def root(world, tmp_path):
    """A private copy of the world, so each test's builds do not see another's."""
    target = tmp_path / "root"
    shutil.copytree(world, target)
    return target


@pytest.fixture(scope="module")
def published(world, tmp_path_factory):
    """One build, published; shared by the read-back tests."""
    from flows.build import build_flow

    root = tmp_path_factory.mktemp("published")
    shutil.copytree(world, root, dirs_exist_ok=True)
    result = build_flow(tiny_build_config(root))
    return root, result


def test_published_version_reads_back_with_plain_pyarrow_and_zarr(published):
    root, result = published
    path = root / result.dataset / result.version
    manifest = pq.read_table(path / "manifest").to_pandas()
    images = zarr.open_array(str(path / "images.zarr"), mode="r")
    masks = zarr.open_array(str(path / "masks.zarr"), mode="r")
    anatomy = zarr.open_array(str(path / "anatomy.zarr"), mode="r")

    assert len(manifest) == images.shape[0] == masks.shape[0] == anatomy.shape[0] == 24
    assert manifest["sample_id"].is_unique and manifest["seed"].notna().all()
    assert images.dtype == np.uint16 and masks.dtype == np.uint8 and tuple(masks.attrs["channel_names"]) == PATHOLOGIES
    accepted = np.flatnonzero(manifest["accepted"].to_numpy())
    assert accepted.size > 0 and result.accepted == accepted.size
    for i in accepted:  # every accepted sample has a non-empty mask for each prompted finding, and nothing else
        prompted = {f["label"] for f in manifest["findings"].iloc[i]}
        sample = masks[int(i)]
        for c, label in enumerate(PATHOLOGIES):
            assert (sample[c].sum() > 0) == (label in prompted), (manifest["sample_id"].iloc[i], label)
    for i in range(len(manifest)):  # checksums in the manifest match the stored bytes
        assert hashlib.sha256(np.ascontiguousarray(images[i]).astype("<u2").tobytes()).hexdigest() == manifest["image_sha256"].iloc[i]
    tries = manifest["attempt_seeds"].map(len)
    assert (tries >= 1).all() and (tries <= 4).all()  # max_tries 2 on the first prompt, 2 on one redraw
    for row in manifest.itertuples():  # after max_tries rejections the prompt is redrawn: same findings, new attributes
        prompts = json.loads(dict(row.metadata)["attempt_prompts"])
        assert len(prompts) == len(row.attempt_seeds) and prompts[-1] == row.prompt
        assert len(set(prompts[:2])) == 1 and dict(row.metadata)["first_prompt"] == prompts[0]
    assert (manifest["attempt_seeds"].map(lambda s: s[-1]) == manifest["seed"]).all()
    rejected_tries = manifest["attempt_reject_reasons"].map(lambda r: all(x is not None for x in r[:-1]))
    assert rejected_tries.all()  # every try before the last was rejected, with its reason recorded

    lineage = json.loads((path / "version.json").read_text())
    for key in ("build_id", "config", "models", "inputs", "code_version", "quotas"):
        assert lineage.get(key) or lineage.get("lineage", {}).get(key), key
    for name in ("gates.json", "gates.html", "report.html", "build.json"):
        assert (path / "quality" / name).is_file(), name
    gates = json.loads((path / "quality" / "gates.json").read_text())
    assert {g["gate"] for g in gates} >= {"prompts", "manifest"} and all(g["success"] for g in gates)
    # great-expectations Data Docs: an index linking one GE-rendered page per suite run, build and shard gates
    docs = path / "quality" / "data_docs"
    index = (docs / "index.html").read_text()
    pages = sorted(p.name for p in docs.glob("*.html") if p.name != "index.html")
    assert {"prompts.html", "manifest.html", "shard-00000-anatomy.html", "shard-00000-images.html"} <= set(pages)
    assert all(f'href="{name}"' in index for name in pages) and "FAILED" not in index
    assert "Data documentation compiled by Great Expectations" in (docs / "manifest.html").read_text()


def test_rerun_of_a_published_build_publishes_nothing_new(published):
    from flows.build import build_flow

    root, first = published
    again = build_flow(tiny_build_config(root))
    assert again.already_published and again.version == first.version
    assert list_versions(root, first.dataset) == [first.version]


def test_same_config_and_seed_give_the_same_dataset_and_a_sample_regenerates_from_its_seed(published, root):
    from flows.build import build_flow
    from tasks.generate import regenerate_sample

    first_root, first = published
    second = build_flow(tiny_build_config(root))
    a = open_dataset(first_root, first.dataset, first.version).to_pandas()
    b = open_dataset(root, second.dataset, second.version).to_pandas()
    assert second.build_id == first.build_id
    for column in ("sample_id", "prompt", "seed", "image_sha256", "masks_sha256", "accepted"):
        assert a[column].tolist() == b[column].tolist(), column

    version = open_dataset(first_root, first.dataset, first.version)
    i = int(np.flatnonzero(a["accepted"].to_numpy())[0])
    image, pathology = regenerate_sample(version, i)
    stored = np.asarray(version.images[i]).astype(np.int64)
    # Alone rather than in its shard's batch the kernels sum in another order: in bf16 (the CPU default where the
    # CPU computes it natively) that moves pixels by up to ~2% of the range, in float32 by a few 16-bit levels.
    tolerance = 64 if cpu_has_bf16() is False else 0.02 * 65535
    assert np.abs(image.astype(np.int64) - stored).max() <= tolerance
    assert (pathology != np.asarray(version.masks[i])).mean() < 0.002  # masks: a boundary pixel at most
    other = int(np.flatnonzero(a["seed"].to_numpy() != a["seed"].iloc[i])[0])
    assert np.abs(stored - np.asarray(version.images[other]).astype(np.int64)).max() > 1000  # a real check


def test_a_build_killed_after_some_shards_resumes_without_recomputing_them(root, monkeypatch):
    import tasks.generate as generate
    from flows.build import build_flow

    config = tiny_build_config(root)
    real = generate.generate_samples
    calls: list[int] = []

    def crash_on_shard_two(anatomy, prompts, seeds, models, cfg):
        calls.append(len(prompts))
        if seeds[0] in crashing_seeds:
            raise RuntimeError("simulated crash in shard 2")
        return real(anatomy, prompts, seeds, models, cfg)

    crashing_seeds = {generate.try_seed(config.seed, 16, 0)}  # the first try of shard 2 (samples 16..23)
    monkeypatch.setattr(generate, "generate_samples", crash_on_shard_two)
    with pytest.raises(Exception, match="simulated crash"):
        build_flow(config)
    assert published_versions(root, config.dataset) == []  # nothing published
    staging = next((root / config.dataset / "_staging").iterdir())
    finished_first = sorted(int(p.stem.split("-")[1]) for p in (staging / "_ledger").glob("shard-*.json"))
    assert 2 not in finished_first and finished_first  # the others finished (one runner thread: 0 and 1 ran first)

    crashing_seeds.clear()
    shards_run: list[int] = []
    real_shard = generate.generate_shard

    def counting(context, plan):
        shards_run.append(plan.shard)
        return real_shard(context, plan)

    monkeypatch.setattr(generate, "generate_shard", counting)
    monkeypatch.setattr("flows.build.generate_shard", counting, raising=False)
    result = build_flow(config)
    assert sorted(shards_run) == sorted(set(range(3)) - set(finished_first))  # no finished shard recomputed
    assert result.reused_shards == finished_first and result.generated_shards == sorted(shards_run)
    manifest = open_dataset(root, config.dataset, result.version).to_pandas()
    assert len(manifest) == 24 and manifest["sample_id"].is_unique
    assert manifest["sample_id"].tolist() == [f"synthetic-{i:07d}" for i in range(24)]


def test_a_failing_gate_stops_the_build_and_publishes_nothing(root):
    from flows.build import build_flow

    config = tiny_build_config(root)
    never_accept = config.filter.model_copy(update={"anatomy": config.filter.anatomy.model_copy(update={"dice_threshold": 1.0})})
    failing = config.model_copy(update={"filter": never_accept, "quality": config.quality.model_copy(update={"min_acceptance_rate": 0.2})})
    with pytest.raises(QualityGateFailed, match=r"\[manifest\].*accepted"):
        build_flow(failing)
    assert published_versions(root, config.dataset) == []
    assert not (root / config.dataset / "catalog").exists() or not any((root / config.dataset / "catalog").iterdir())


def test_a_failing_shard_gate_stops_the_build_before_the_shard_is_written(root):
    from flows.build import build_flow

    config = tiny_build_config(root)
    strict = config.model_copy(update={"quality": config.quality.model_copy(update={"image_std_range": (0.9, 1.0), "image_mostly": 1.0})})
    with pytest.raises(QualityGateFailed, match=r"\[images\]"):
        build_flow(strict)
    assert published_versions(root, config.dataset) == []
    staging = next((root / config.dataset / "_staging").iterdir())
    assert not list((staging / "_ledger").glob("shard-*.json"))  # no shard counted as finished


def test_a_class_the_filter_lets_collapse_fails_the_build(root):
    from flows.build import build_flow

    config = tiny_build_config(root)
    no_nodules = config.filter.model_copy(update={"classifier": config.filter.classifier.model_copy(
        update={"min_auroc": None, "thresholds": {"nodule": 0.9999}, "check_absent": False})})
    collapsing = config.model_copy(update={"filter": no_nodules, "quality": config.quality.model_copy(update={"min_class_coverage": 0.8})})
    state = build_flow(collapsing, return_state=True)  # an expected failure: a clean Failed state, no crash
    assert state.is_failed() and "[coverage] nodule: 0 accepted samples hold it" in state.message
    with pytest.raises(QualityGateFailed, match=r"\[coverage\] nodule: 0 accepted samples hold it"):
        state.result()
    assert published_versions(root, config.dataset) == []
    staging = next((root / config.dataset / "_staging").iterdir())
    build = json.loads((staging / "quality" / "build.json").read_text())
    nodule = next(f for f in build["frequencies"] if f["label"] == "nodule")
    assert nodule["accepted"] == 0 and nodule["prompted"] > 0 and nodule["produced"] == 0.0  # counts accepted samples


def test_the_build_samples_from_any_registered_generator_class_controlnet_included(root, tmp_path):
    """The image model is loaded by the class its model_index.json names: a ControlNet over a (tiny, local)
    base UNet registers as an image generator and builds like the plain one."""
    import torch
    from diffusers import UNet2DConditionModel

    from aurad_models.image_generator import ControlNetImageGenerator, ImageGeneratorConfig
    from aurad_models.registry import register_model
    from flows.build import build_flow

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = UNet2DConditionModel(sample_size=64, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                                    norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        base.save_pretrained(tmp_path / "base")
        controlnet = ControlNetImageGenerator.from_base(tmp_path / "base", ImageGeneratorConfig(
            image_size=64, block_out_channels=(8, 16), norm_num_groups=4))
    controlnet.save_pretrained(tmp_path / "controlnet")
    record = register_model(root, "image-generator", tmp_path / "controlnet", {}, {"model_config": "controlnet"})
    result = build_flow(tiny_build_config(root, image_model=record.id, n_samples=8, shard_size=8))
    manifest = open_dataset(root, result.dataset, result.version).to_pandas()
    assert len(manifest) == 8 and set(manifest["image_model_id"]) == {record.id}
    from aurad_models.generators import load_generator
    from aurad_models.serialization import ModelFormatError

    with pytest.raises(ModelFormatError, match=r"ControlNetImageGenerator \(image generator\); a mask generator is needed"):
        load_generator(record.path, "mask")


def test_unknown_model_id_is_a_clear_error(root):
    from aurad_models.registry import RegistryError
    from flows.build import build_flow

    with pytest.raises(RegistryError, match="no-such-model"):
        build_flow(tiny_build_config(root, mask_model="no-such-model"))


def test_dask_local_cluster_builds_the_same_dataset_as_threads(published, root):
    """Scaling out changes where shards run, not what they contain: 2 Dask worker processes."""
    from flows.build import build_flow

    first_root, first = published
    result = build_flow(tiny_build_config(root, task_runner="dask", workers=2))
    assert result.build_id == first.build_id  # the runner is not part of the build's identity
    a = open_dataset(first_root, first.dataset, first.version).to_pandas()
    b = open_dataset(root, result.dataset, result.version).to_pandas()
    for column in ("sample_id", "seed", "image_sha256", "masks_sha256", "accepted", "attempt_seeds"):
        assert a[column].tolist() == b[column].tolist(), column


def test_dask_worker_check_accepts_the_same_code_and_explains_a_shadowed_package():
    """An existing cluster is checked before any shard is submitted. Workers with memory spilling on
    make a `storage/` folder first on their sys.path, which shadows this project's `storage` package in
    an editable install: the check must say so instead of letting every task crash."""
    import storage
    from distributed import LocalCluster

    from flows.runners import check_dask_workers

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, data=dict, dashboard_address=None) as cluster:
        identities = check_dask_workers(cluster.scheduler_address)
    assert [who["storage"] for who in identities.values()] == [storage.__file__]

    editable = "site-packages" not in storage.__file__
    if editable:
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            with pytest.raises(RuntimeError, match="cannot import aurad.*regular `pip install"):
                check_dask_workers(cluster.scheduler_address)


def test_shard_tasks_hold_a_named_gpu_concurrency_limit_and_a_missing_one_is_a_clear_error(root):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.build import build_flow

    with pytest.raises(Exception, match="no-such-limit"):
        build_flow(tiny_build_config(root, gpu_concurrency_limit="no-such-limit"))
    assert published_versions(root, "synthetic") == []

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="aurad-test-gpu", limit=1))
        result = build_flow(tiny_build_config(root, gpu_concurrency_limit="aurad-test-gpu"))
        limit = client.read_global_concurrency_limit_by_name("aurad-test-gpu")
    assert result.generated_shards and published_versions(root, "synthetic") == [result.version]
    assert limit.active_slots == 0  # every shard gave its slot back


def test_the_prefect_ui_gets_a_summary_artifact_a_report_link_and_named_shard_tasks(published):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    root, result = published

    async def read():
        async with get_client() as client:
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["build-synthetic", "build-synthetic-report"])))
            task_runs = await client.read_task_runs()
        return artifacts, task_runs

    artifacts, task_runs = asyncio.run(read())
    by_key = {a.key: a for a in artifacts}
    summary = by_key["build-synthetic"].data
    assert f"{result.dataset}/{result.version}" in summary and "samples accepted" in summary and "| nodule" in summary
    assert "(file:///" in by_key["build-synthetic-report"].data and by_key["build-synthetic-report"].data.endswith("report.html)")
    assert {"shard-00000", "shard-00001", "shard-00002"} <= {run.name for run in task_runs}


def test_top_up_prompts_ask_for_the_findings_the_main_shards_left_short():
    import pandas as pd

    from tasks.build import BuildConfig, topup_prompts
    from tasks.prompts import estimate_prior

    records = lambda *labels: [{"label": label, "side": None, "zone": None, "size": None} for label in labels]  # noqa: E731
    prior = estimate_prior([records()] * 50 + [records("nodule")] * 20 + [records("effusion")] * 20 + [records("nodule", "mass")] * 10)
    targets = {"nodule": 0.3, "effusion": 0.2, "mass": 0.1}
    main = pd.DataFrame({  # every effusion accepted; nodules prompted 30 times, accepted 3 times; masses never
        "findings": [records()] * 40 + [records("effusion")] * 20 + [records("nodule")] * 27 + [records("nodule", "mass")] * 3,
        "accepted": [True] * 60 + [False] * 27 + [True] * 3,
    })
    prompts = topup_prompts(prior, BuildConfig(), targets, main, n=40, seed=1)
    labels = [{f.label for f in p} for p in prompts]
    assert len(prompts) == 40
    assert sum("nodule" in p for p in labels) >= 30  # short, and hard to get accepted: most of the top-up
    assert sum("mass" in p for p in labels) >= 3 and all("nodule" in p for p in labels if "mass" in p)  # its companion comes along
    assert sum("effusion" in p for p in labels) <= 4  # not short: only what the prior draws for the rest
    assert prompts == topup_prompts(prior, BuildConfig(), targets, main, n=40, seed=1)  # a resumed build plans the same


_BUILD_IN_A_PROCESS = """
import json, logging, sys
from bench.world import tiny_build_config
from flows.build import generate_shards_in_loop
from tasks.build import run_build
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
result = run_build(tiny_build_config(sys.argv[1]), generate_shards_in_loop, logging.getLogger("build"))
print(json.dumps({"version": result.version, "build_id": result.build_id}))
"""


def test_two_identical_builds_at_once_both_end_with_the_same_published_version(root):
    """The nightly deployment and a manual run of the same config: the second waits for the first's lock,
    then finds its version published; neither fails, nothing is made twice."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    children = [subprocess.Popen([sys.executable, "-c", _BUILD_IN_A_PROCESS, str(root)], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [child.communicate(timeout=600) for child in children]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert results[0] == results[1]
    assert published_versions(root, tiny_build_config(root).dataset) == [results[0]["version"]]
    assert any("running in another process" in err for _, err in outputs)  # one of them waited


_HIDE_THIS_PROJECT = """
import sys
class _Hidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"aurad_models", "storage", "tasks", "flows", "bench"}:
            raise ImportError(f"{name} is hidden: the README's reader snippet must not need this project")
sys.meta_path.insert(0, _Hidden())
"""


def test_the_readme_reader_snippets_run_on_a_published_version_without_this_package(published, tmp_path):
    """README's "Reading a dataset without this package" blocks, run as written in a separate, isolated
    interpreter (`python -I`) in which this project's packages cannot be imported: pyarrow, zarr 3, pandas,
    dask, then polars and DuckDB, and the LATEST pointer only, against a real published version."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root, result = published
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Reading a dataset without this package", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2 and 'dataset = "aurad-data/synthetic"' in blocks[0]
    code = "\n".join(blocks).replace('dataset = "aurad-data/synthetic"', f'dataset = {str(root / result.dataset)!r}')
    checks = """
import json
print("RESULT", json.dumps({"version": version, "first_masks": first[1].shape[0], "blocks": lazy.numblocks[0],
      "accepted_rows": accepted_rows.height, "per_finding": dict(per_finding), "indexed": [i for i, _ in indexed],
      "ids": [s for _, s in indexed], "polars_ids": manifest["sample_id"].to_list(), "polars_index": manifest["array_index"].to_list()}))
"""
    done = subprocess.run([sys.executable, "-I", "-c", _HIDE_THIS_PROJECT + code + checks], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    ds = open_dataset(root, result.dataset, result.version)
    frame = ds.to_pandas()
    assert out["version"].endswith(result.version) and out["first_masks"] == len(PATHOLOGIES)
    assert out["blocks"] == -(-len(ds) // ds.images.shards[0]) > 1  # one dask task per pipeline shard
    assert out["accepted_rows"] == int(frame["accepted"].sum())
    held = frame[frame["accepted"]]["findings"].map(lambda fs: {f["label"] for f in fs})
    assert out["per_finding"] == {label: int(held.map(lambda s: label in s).sum()) for label in PATHOLOGIES if held.map(lambda s: label in s).any()}
    assert out["indexed"] == list(range(len(ds))) and out["ids"] == frame["sample_id"].tolist()  # row i <-> array index i
    assert out["polars_ids"] == frame["sample_id"].tolist() and out["polars_index"] == list(range(len(ds)))  # polars too


def test_an_anatomy_gate_failure_stops_the_build_at_planning_naming_the_shard_and_the_setting(root, monkeypatch):
    import tasks.generate as generate
    from flows.build import build_flow

    generated: list[int] = []
    monkeypatch.setattr(generate, "generate_samples", lambda *a, **k: generated.append(1))  # must never run
    config = tiny_build_config(root)
    strict = config.model_copy(update={"quality": config.quality.model_copy(update={"lung_area_range": (0.9, 1.0)})})
    with pytest.raises(QualityGateFailed, match=r"\[anatomy, shard 00000, bank anatomy-bank/v0001\].*") as failure:
        build_flow(strict)
    assert "build.quality.lung_area_range" in str(failure.value) and generated == []
    assert published_versions(root, config.dataset) == []


def test_the_build_report_names_its_inputs_and_shows_every_finding_tries_experts_and_shard_gates(published):
    """report.html, parsed: the summary names build, seed, source, bank and models; per-expert acceptance and
    tries are tables; every finding an accepted sample holds gets its own grid (drawn from the whole version,
    not the 16 shown); shard gates carry their shard number."""
    from test_report import Page

    root, result = published
    path = root / result.dataset / result.version
    page = Page((path / "quality" / "report.html").read_text())
    summary = {cells[0]: cells[1] for _, cells in page.tables["summary-table"][1:]}
    assert summary["build"] == result.build_id and summary["seed"] == str(tiny_build_config(root).seed) and summary["source"].startswith("phantom/v")
    assert summary["mask generator"].startswith("mask-generator-") and summary["status"] == "released"
    assert [cells[0] for _, cells in page.tables["acceptance-per_expert"][1:]]  # one row per expert
    assert page.tables["acceptance-tries"][0][1] == ["tries", "samples"]
    manifest = open_dataset(root, result.dataset, result.version).to_pandas()
    held = {f["label"] for fs in manifest[manifest["accepted"]]["findings"] for f in fs}
    assert held and held <= set(page.headings)
    gate_names = [cells[0] for cls, cells in page.tables["gates-table"] if cls == "gate"]
    assert any(name.endswith("(shard 00000)") for name in gate_names)


def test_every_version_has_a_dataset_card_with_metadata_features_and_measured_limitations(published):
    import yaml

    root, result = published
    card = (root / result.dataset / result.version / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    metadata = yaml.safe_load(front)
    assert metadata["license"] and "image-segmentation" in metadata["task_categories"] and metadata["size_categories"]
    assert "not for diagnosis" in body and result.build_id in body
    from storage.schema import MANIFEST_SCHEMA

    assert all(f"| `{name}` |" in body for name in MANIFEST_SCHEMA.names)  # every column, with its meaning
    assert "## Known limitations, measured on this version" in body and f"{result.n_samples} samples" in body


def test_a_build_from_reports_prompts_with_them_and_records_each_samples_report(root, tmp_path):
    """`build.prompts.reports`: every slot's prompt is its report's findings (a normal report a normal prompt),
    the report text (identifiers scrubbed) is in the manifest's `source_report`, and the report page compares
    the accepted samples' co-occurrence with the reports'. Every report here is written for this test."""
    import csv

    from aurad_models.findings import findings_from_report, render_prompt
    from flows.build import build_flow
    from storage.sources.records import scrub_identifiers
    from tasks.prompts import PromptSamplerConfig
    from test_report import Page

    reports = [
        "FINDINGS: Moderate cardiomegaly. Small left pleural effusion.\nIMPRESSION: Cardiomegaly and left effusion.",
        "The lungs are clear. No pleural effusion or pneumothorax. Heart size normal.",
        "Right upper lobe nodule measuring 8 mm, unchanged. MRN: 12345678.",
        "Left lower lobe consolidation. No pneumothorax.",
        "No acute cardiopulmonary process.",
        "Bibasilar atelectasis. Mildly enlarged cardiac silhouette.",
    ]
    path = tmp_path / "reports.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "Report"])
        writer.writerows(enumerate(reports))
    result = build_flow(tiny_build_config(root, prompts=PromptSamplerConfig(reports=str(path))))
    version = open_dataset(root, result.dataset, result.version)
    manifest = version.to_pandas()
    assert manifest["source_report"].notna().all()
    assert not manifest["source_report"].str.contains("12345678").any()  # scrubbed before it is written
    assert set(manifest["source_report"]) <= {scrub_identifiers(text) for text in reports}
    for row in manifest.itertuples():
        first = findings_from_report(row.source_report)
        assert dict(row.metadata)["first_prompt"] == render_prompt(first)  # the report's findings are the prompt
        assert sorted(f["label"] for f in row.findings) == sorted(f.label for f in first)  # redraws keep the findings
    assert version.lineage["inputs"]["prompts"].startswith(f"reports {path}")
    folder = root / result.dataset / result.version / "quality"
    assert json.loads((folder / "build.json").read_text())["cooccurrence"]["n_samples"] == int(manifest["accepted"].sum())
    assert "Co-occurrence" in Page((folder / "report.html").read_text()).headings


def test_the_manifest_gate_renders_its_data_doc_without_an_error(caplog):
    """GE's column-mean metric returns a numpy float64, which GE's own renderer refused with an ERROR and a
    traceback in every build's log (and a blank observed value): the page shows the value, and nothing is logged."""
    import logging

    import pandas as pd

    from tasks.quality import QualityConfig, manifest_gate

    manifest = pd.DataFrame({"sample_id": [f"s{i}" for i in range(8)], "seed": range(8), "prompt": ["nodule"] * 8,
                             "accepted": [True] * 6 + [False] * 2})
    with caplog.at_level(logging.ERROR, logger="great_expectations"):
        result = manifest_gate(manifest, QualityConfig())
    assert result.success and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "0.75" in result.data_doc
