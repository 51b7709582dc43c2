"""`anatomy_bank_flow`: segment a split of unlabelled CXRs, quality-check the masks, publish the bank.

Thin wiring over `tasks.anatomy`: the segmenter choice is pinned first (auto -> xrv or project, `latest` ->
a registry id), the staging is created (or resumed), one task per unfinished shard segments a few hundred
images in batches and writes them, and the bank is published with its lineage. Rerunning with the same
parameters resumes the same build, or returns the version it was already published as.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, ConfigDict, Field

from aurad_models.experts.loading import resolve_choice
from aurad_models.experts.trained import ANATOMY_SEGMENTER_KIND
from flows.profiles import with_overrides
from storage import find_published_build, open_dataset
from tasks.anatomy import (
    AnatomyBankConfig,
    BankShardJob,
    anatomy_bank_shard_task,
    bank_build_id,
    bank_indices,
    bank_lineage,
    stage_anatomy_bank,
)
from tasks.experts import SourceRef

logger = logging.getLogger(__name__)


class AnatomyBankParameters(BaseModel):
    """What to segment and where to store the bank; shown as a form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field("aurad-data", description="storage root: datasets and the model registry")
    source_dataset: str = Field("phantom", description="dataset of real (or phantom) CXRs treated as unlabelled")
    source_version: str = Field("latest", description="its version")
    bank_dataset: str = Field("anatomy-bank", description="dataset the bank is published as a version of")
    bank: AnatomyBankConfig = Field(
        default_factory=AnatomyBankConfig, description="which images to segment, with which segmenter, QC and shards"
    )
    build_id: str | None = Field(None, description="default: a fingerprint of the inputs, so reruns resume")
    progress: bool = Field(True, description="show a progress bar of the segmentation in the task logs")


class AnatomyBankResult(BaseModel):
    dataset: str
    version: str
    build_id: str
    samples: int
    accepted: int
    reject_reasons: dict[str, int]
    segmenter: dict


@task(name="stage-anatomy-bank")
def _stage(job: BankShardJob) -> list[int]:
    """Create or resume the staging; returns the shards still to write."""
    version = job.source.open()
    staged = stage_anatomy_bank(job.root, job.bank, version, job.indices, job.build_id, job.config)
    return sorted(set(range(staged.n_shards)) - staged.finished_shards())


@task(name="publish-anatomy-bank")
def _publish(job: BankShardJob, segmenter: dict) -> dict:
    version = job.source.open()
    staged = stage_anatomy_bank(job.root, job.bank, version, job.indices, job.build_id, job.config)
    lineage = bank_lineage(version, job.config, segmenter, staged.read_manifest())
    return {"version": staged.publish(lineage), **lineage["qc_summary"]}


@flow(name="aurad-anatomy-bank", log_prints=False)
def anatomy_bank_flow(params: AnatomyBankParameters = AnatomyBankParameters(), overrides: dict[str, Any] | None = None) -> AnatomyBankResult:
    """Build (or resume) the anatomy bank from `params.source_dataset` and publish it."""
    params = with_overrides(params, overrides)  # a run's few changes, merged (see flows.deployments)
    run_logger = get_run_logger()
    source = SourceRef(root=params.root, dataset=params.source_dataset, version=params.source_version)
    version = source.open()
    source = source.model_copy(update={"version": version.version})  # pin 'latest' for every task
    indices = bank_indices(version, params.bank)
    segmenter = resolve_choice(params.bank.segmenter, ANATOMY_SEGMENTER_KIND, params.root)
    config = params.bank.model_copy(update={"segmenter": segmenter})
    identity = segmenter.model_dump(mode="json", exclude={"device", "batch_size", "xrv_cache_dir", "xrv_path"})
    build_id = params.build_id or bank_build_id(version, indices, identity, config)
    job = BankShardJob(
        root=params.root, bank=params.bank_dataset, build_id=build_id, source=source,
        indices=[int(i) for i in indices], config=config, registry_root=params.root,
    )
    done = find_published_build(params.root, params.bank_dataset, build_id)
    if done is None:
        todo = _stage(job)
        run_logger.info("anatomy bank %s: %d shard(s) to segment with %s", build_id, len(todo), segmenter.source)
        for k in todo:  # one after another: each shard already batches a few hundred images on the device
            anatomy_bank_shard_task(job, k, params.progress)
        published = _publish(job, identity)
        done = published["version"]
    else:
        run_logger.info("anatomy bank build %s is already published as %s", build_id, done)

    bank = open_dataset(params.root, params.bank_dataset, done)
    summary = bank.lineage.get("qc_summary", {})
    run_logger.info("anatomy bank %s/%s: %s of %s accepted", params.bank_dataset, done, summary.get("accepted"), summary.get("samples"))
    return AnatomyBankResult(
        dataset=params.bank_dataset, version=done, build_id=build_id, samples=summary.get("samples", len(bank)),
        accepted=summary.get("accepted", 0), reject_reasons=summary.get("reject_reasons", {}), segmenter=identity,
    )
