"""Stage 2, the anatomy bank: anatomy masks segmented from real, unlabelled CXRs, checked, stored once.

    version = build_anatomy_bank(SourceRef(root, "phantom"), root, "anatomy-bank", expert, AnatomyBankConfig())

The segmenter (torchxrayvision's PSPNet where its weights are present, else the project-trained one) runs
over one split of a source dataset in batches; each mask set goes through `anatomy_qc` (both lungs present,
plausible lung and heart areas, one connected heart). Every image is stored, the good ones accepted and
the others rejected with the reason, as a dataset version: images = the source images, anatomy = the
segmented masks, pathology masks empty, mask_source "none". Builds draw anatomy from its accepted samples.

On the embedded default the source is the phantom's held-out split, treated as unlabelled: its true
anatomy is never read, only its images.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from pydantic import BaseModel, ConfigDict, Field, model_validator
from aurad_models.anatomy_rules import heart_components
from aurad_models.experts.base import AnatomyExpert, batches
from aurad_models.experts.loading import ExpertChoice, load_anatomy_expert
from aurad_models.hashing import config_hash
from aurad_models.pixels import stored_to_unit
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES, anatomy_index
from storage import ArraySpec, find_published_build, stage_version
from tasks.experts import SourceRef

logger = logging.getLogger(__name__)

BANK_FORMAT = 1
_LEFT_LUNG = anatomy_index("Left Lung")
_RIGHT_LUNG = anatomy_index("Right Lung")
_HEART = anatomy_index("Heart")


# --- quality control ---------------------------------------------------------------------------------


class AnatomyQCConfig(BaseModel):
    """What a usable anatomy mask set looks like. Areas are fractions of the image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lung_area: tuple[float, float] = Field((0.03, 0.35), description="each lung's area (low, high)")
    heart_area: tuple[float, float] = Field((0.015, 0.25), description="the heart's area (low, high)")
    max_heart_components: int = Field(1, ge=1, description="connected pieces the heart may come in")
    speckle_fraction: float = Field(
        0.05, ge=0, lt=1, description="heart pieces smaller than this share of the largest piece are ignored"
    )

    @model_validator(mode="after")
    def _ranges(self) -> "AnatomyQCConfig":
        for name in ("lung_area", "heart_area"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi <= 1:
                raise ValueError(f"{name} must be (low, high) with 0 <= low < high <= 1, got {(lo, hi)}")
        return self


def anatomy_qc(anatomy: np.ndarray, config: AnatomyQCConfig) -> tuple[dict[str, float], str | None]:
    """Scores of one (14, H, W) mask set and the reason it is unusable (None when it passes)."""
    if anatomy.ndim != 3 or anatomy.shape[0] != len(ANATOMY_STRUCTURES):
        raise ValueError(f"anatomy must be ({len(ANATOMY_STRUCTURES)}, H, W), got {anatomy.shape}")
    pixels = anatomy.shape[1] * anatomy.shape[2]
    masks = anatomy.astype(bool)
    scores = {
        "qc.left_lung_area": float(masks[_LEFT_LUNG].sum()) / pixels,
        "qc.right_lung_area": float(masks[_RIGHT_LUNG].sum()) / pixels,
        "qc.heart_area": float(masks[_HEART].sum()) / pixels,
        "qc.heart_components": float(heart_components(masks[_HEART], config.speckle_fraction)),
    }
    problems = []
    for side in ("left", "right"):
        area = scores[f"qc.{side}_lung_area"]
        lo, hi = config.lung_area
        if area == 0:
            problems.append(f"{side} lung missing")
        elif not lo <= area <= hi:
            problems.append(f"{side} lung area {area:.3f} outside [{lo:.3f}, {hi:.3f}]")
    area, (lo, hi) = scores["qc.heart_area"], config.heart_area
    if area == 0:
        problems.append("heart missing")
    else:
        if not lo <= area <= hi:
            problems.append(f"heart area {area:.3f} outside [{lo:.3f}, {hi:.3f}]")
        pieces = int(scores["qc.heart_components"])
        if pieces > config.max_heart_components:
            problems.append(f"heart in {pieces} separate pieces (at most {config.max_heart_components})")
    return scores, ("anatomy QC: " + "; ".join(problems)) if problems else None


# --- the bank --------------------------------------------------------------------------------------


class AnatomyBankConfig(BaseModel):
    """Which source images to segment, with which segmenter, how to check and how to store the result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_split: str | None = Field(
        "val", description="split of the source to segment (None = all); on the phantom, one the generators do not train on"
    )
    max_samples: int | None = Field(None, ge=1, description="at most this many images (the first ones of the split)")
    segmenter: ExpertChoice = Field(
        default_factory=ExpertChoice, description="the anatomy segmenter: torchxrayvision weights or the project model"
    )
    qc: AnatomyQCConfig = Field(
        default_factory=AnatomyQCConfig, description="quality checks a segmented mask set must pass to be accepted"
    )
    batch_size: int = Field(32, ge=1, description="images per segmenter call")
    shard_size: int = Field(128, ge=1, description="samples per stored shard (one task run each)")


@dataclass
class ShardReport:
    shard: int
    samples: int
    accepted: int
    reasons: dict[str, int]


def bank_indices(version: Any, config: AnatomyBankConfig) -> np.ndarray:
    """Indices of the source samples that go into the bank (accepted samples of the split, in order)."""
    indices = version.select(accepted_only=True, split=config.source_split)
    if config.max_samples is not None:
        indices = indices[: config.max_samples]
    if len(indices) == 0:
        raise ValueError(f"{version.path} has no accepted samples in split {config.source_split!r} for the anatomy bank")
    return indices


def bank_build_id(source: Any, indices: np.ndarray, segmenter: dict[str, Any], config: AnatomyBankConfig) -> str:
    """A fingerprint of everything that decides the bank's content, so a rerun resumes the same build."""
    payload = {
        "format": BANK_FORMAT,
        "source": [source.name, source.version],
        "indices": [int(i) for i in indices],
        "segmenter": segmenter,
        "qc": config.qc.model_dump(mode="json"),
        "shard_size": config.shard_size,
    }
    return "bank-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def segment_and_check(
    images01: np.ndarray, expert: AnatomyExpert, qc: AnatomyQCConfig, batch_size: int = 32, progress: bool = False
) -> tuple[np.ndarray, list[tuple[dict[str, float], str | None]]]:
    """Segment images in batches and check each mask set: (anatomy (N, 14, H, W) uint8, [(scores, reason)])."""
    from tqdm.auto import tqdm

    n = len(images01)
    anatomy = np.zeros((n, len(ANATOMY_STRUCTURES), *images01.shape[1:]), dtype=np.uint8)
    with tqdm(total=n, desc="segment anatomy", unit="img", disable=not progress, leave=False) as bar:
        for part in batches(n, batch_size):
            anatomy[part] = expert.segment(images01[part])
            bar.update(part.stop - part.start)
    return anatomy, [anatomy_qc(a, qc) for a in anatomy]


def _bank_row(source: Any, row: dict[str, Any], scores: dict[str, float], reason: str | None, segmenter: str) -> dict[str, Any]:
    return {
        "sample_id": row["sample_id"],
        "split": row["split"],
        "prompt": "",
        "findings": [],  # unlabelled: unknown, recorded as label.<finding> = nan below
        "seed": 0,
        "attempt_seeds": [],
        "attempt_reject_reasons": [],
        "source": row["sample_id"],
        "mask_source": "none",
        "mask_model_id": None,
        "image_model_id": None,
        "scores": scores,
        "accepted": reason is None,
        "reject_reason": reason,
        "metadata": {
            "source_dataset": source.name,
            "source_version": source.version,
            "anatomy": "segmented",
            "anatomy_model": segmenter,
            **{f"label.{label}": "nan" for label in PATHOLOGIES},
        },
    }


def write_bank_shard(
    staged: Any, k: int, source: Any, indices: np.ndarray, expert: AnatomyExpert, config: AnatomyBankConfig, progress: bool = False
) -> ShardReport:
    """Segment, check and write shard k of the bank (its samples are indices[shard_bounds(k)])."""
    start, stop = staged.shard_bounds(k)
    chosen = indices[start:stop]
    every = (slice(None), slice(None))
    stored = np.asarray(source.images.get_orthogonal_selection((chosen, *every)))
    images01 = stored_to_unit(stored)
    anatomy, checks = segment_and_check(images01, expert, config.qc, config.batch_size, progress)
    source_rows = source.manifest.take(chosen).select(["sample_id", "split"]).to_pylist()
    rows = [_bank_row(source, row, scores, reason, expert.name) for row, (scores, reason) in zip(source_rows, checks)]
    pathology = np.zeros((len(chosen), len(PATHOLOGIES), *stored.shape[1:]), dtype=np.uint8)
    staged.write_shard(k, stored, pathology, anatomy, rows)
    reasons: dict[str, int] = {}
    for _, reason in checks:
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
    accepted = sum(reason is None for _, reason in checks)
    logger.info("anatomy bank shard %d: %d of %d accepted", k, accepted, len(chosen))
    return ShardReport(k, len(chosen), accepted, reasons)


def stage_anatomy_bank(root: str | Path, bank: str, source: Any, indices: np.ndarray, build_id: str, config: AnatomyBankConfig) -> Any:

    return stage_version(
        root,
        bank,
        build_id,
        n_samples=len(indices),
        shard_size=config.shard_size,
        spec=ArraySpec(image_size=int(source.images.shape[-1]), pathology_channels=PATHOLOGIES, anatomy_channels=ANATOMY_STRUCTURES),
        attrs={"kind": "anatomy-bank", "source_dataset": source.name, "source_version": source.version},
    )


def bank_lineage(source: Any, config: AnatomyBankConfig, segmenter: dict[str, Any], manifest: Any) -> dict[str, Any]:
    """version.json lineage: source, segmenter identity, config and its hash, and the QC outcome."""
    reasons: dict[str, int] = {}
    for reason in manifest.column("reject_reason").to_pylist():
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
    accepted = manifest.column("accepted").to_pylist()
    return {
        "kind": "anatomy-bank",
        "source": {"dataset": source.name, "version": source.version, "path": source.path, "split": config.source_split},
        "segmenter": segmenter,
        "config": config.model_dump(mode="json"),
        "config_hash": config_hash(config),
        "qc_summary": {
            "samples": len(accepted),
            "accepted": sum(accepted),
            "reject_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        },
    }


def build_anatomy_bank(
    source: SourceRef,
    root: str | Path,
    bank: str,
    expert: AnatomyExpert,
    config: AnatomyBankConfig,
    build_id: str | None = None,
    progress: bool = True,
) -> str:
    """Segment the source split, check every mask set and publish the bank; returns the version id.
    Resumable: a rerun with the same inputs skips finished shards (or returns the published version)."""
    version = source.open()
    indices = bank_indices(version, config)
    segmenter = expert.describe()
    build_id = build_id or bank_build_id(version, indices, segmenter, config)
    done = find_published_build(root, bank, build_id)
    if done is not None:
        logger.info("anatomy bank build %s is already published as %s/%s", build_id, bank, done)
        return done
    staged = stage_anatomy_bank(root, bank, version, indices, build_id, config)
    finished = staged.finished_shards()
    for k in range(staged.n_shards):
        if k not in finished:
            write_bank_shard(staged, k, version, indices, expert, config, progress)
    return staged.publish(bank_lineage(version, config, segmenter, staged.read_manifest()))


# --- Prefect --------------------------------------------------------------------------------------


class BankShardJob(BaseModel):
    """Everything a shard task needs, by location: no arrays or models travel between tasks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str
    bank: str
    build_id: str
    source: SourceRef
    indices: list[int]
    config: AnatomyBankConfig
    registry_root: str | None = None


@task(name="anatomy-bank-shard", tags=["gpu"])
def anatomy_bank_shard_task(job: BankShardJob, k: int, progress: bool = True) -> dict[str, Any]:
    """Segment, check and write one shard (loads the segmenter itself: models do not travel between tasks)."""
    version = job.source.open()
    indices = np.asarray(job.indices, dtype=np.int64)
    staged = stage_anatomy_bank(job.root, job.bank, version, indices, job.build_id, job.config)
    expert = load_anatomy_expert(job.config.segmenter, job.registry_root)
    report = write_bank_shard(staged, k, version, indices, expert, job.config, progress)
    return {"shard": report.shard, "samples": report.samples, "accepted": report.accepted, "reasons": report.reasons}
