"""The embedded default's source dataset: phantom CXRs written as a versioned dataset, shard by shard.

Every sample's seed derives from the config's seed and its index, so a shard regenerates identically in
any process, and the dataset is the same for the same config.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from prefect import task
from pydantic import BaseModel, ConfigDict, Field, field_validator

from aurad_models.hashing import config_hash
from aurad_models.phantom import PhantomConfig, generate_phantoms
from aurad_models.phantom.calibration import CALIBRATED
from aurad_models.phantom.config import PHANTOM_VERSION
from aurad_models.pixels import to_stored
from aurad_models.seeding import derive_seed
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES
from storage import ArraySpec, StagedVersion, stage_version

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "unlabelled", "test")


class SourceConfig(BaseModel):
    """The phantom source dataset: how many samples, how they split, and the phantom itself.

    Splits: `train` trains generators and experts, `val` validates them, `unlabelled` plays the bank of
    real, unlabelled CXRs the anatomy bank is segmented from, `test` is the held-out real data that
    scores downstream models.
    """

    model_config = ConfigDict(extra="forbid")

    root: str = Field("aurad-data", description="storage root")
    dataset: str = Field("phantom", description="name of the source dataset to publish a version of")
    n_samples: int = Field(1600, ge=1, description="number of phantom CXRs to generate")
    shard_size: int = Field(200, ge=1, description="samples per shard (one generation task, one zarr shard)")
    seed: int = Field(0, description="base seed; every sample's seed and split derive from it and its index")
    splits: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.6, "val": 0.1, "unlabelled": 0.15, "test": 0.15},
        description="share of the samples in each split (train, val, unlabelled, test); non-negative, sums to 1",
    )
    phantom: PhantomConfig = Field(
        default_factory=lambda: PhantomConfig(size=64),
        description="the procedural phantom: image size, finding prior, patient and imaging variation",
    )
    calibration: Literal["none", "calibrated"] = Field(
        "none", description="where findings lie and how big they are: none (the phantom's own tables, what the shipped "
        "models learnt from) or calibrated (moved towards real NIH/RSNA/SIIM annotations, "
        "aurad_models.phantom.calibration; a new world, so every model trains again)",
    )

    @field_validator("splits")
    @classmethod
    def _check_splits(cls, splits: dict[str, float]) -> dict[str, float]:
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; known: {', '.join(SPLITS)}")
        if any(v < 0 for v in splits.values()) or not np.isclose(sum(splits.values()), 1.0):
            raise ValueError(f"split fractions must be non-negative and sum to 1, got {splits}")
        return splits


def source_build_id(config: SourceConfig) -> str:
    """Build id of a source dataset: the same config always resumes / finds the same build."""
    # the default calibration is left out, so the build ids (and the shipped models' fingerprints) from
    # before the setting existed still stand; a calibrated world is named by its tables, not just their name
    identity = {**config.model_dump(mode="json", exclude={"root", "calibration"}), "phantom_version": PHANTOM_VERSION}
    if config.calibration == "calibrated":
        identity["calibration"] = CALIBRATED.model_dump(mode="json")
    return f"phantom-{config_hash(identity)[:16]}"


def sample_split(config: SourceConfig, index: int) -> str:
    """Deterministic split of one sample, drawn from its own seed."""
    u = np.random.default_rng(derive_seed(config.seed, index, "split")).random()
    edges = np.cumsum([config.splits.get(s, 0.0) for s in SPLITS])
    return SPLITS[int(np.searchsorted(edges, u, side="right").clip(0, len(SPLITS) - 1))]


def stage_source(config: SourceConfig) -> StagedVersion:
    """Stage (or resume) the source dataset's version."""
    spec = ArraySpec(image_size=config.phantom.size, pathology_channels=PATHOLOGIES, anatomy_channels=ANATOMY_STRUCTURES)
    return stage_version(config.root, config.dataset, source_build_id(config), config.n_samples, config.shard_size, spec)


def write_phantom_shard(staged: StagedVersion, shard: int, config: SourceConfig) -> int:
    """Generate one shard of phantoms and write it; returns the number of samples written."""
    start, stop = staged.shard_bounds(shard)
    seeds = [derive_seed(config.seed, index) for index in range(start, stop)]
    batch = generate_phantoms(seeds, config.phantom, calibration=CALIBRATED if config.calibration == "calibrated" else None)
    rows = [
        {
            "sample_id": f"{config.dataset}-{index:07d}",
            "split": sample_split(config, index),
            "prompt": batch.reports[i],
            "findings": [f.as_record() for f in batch.findings[i]],
            "seed": int(batch.seeds[i]),
            "attempt_seeds": [int(batch.seeds[i])],
            "attempt_reject_reasons": [None],
            "source": None,
            "mask_source": "exact",
            "mask_model_id": None,
            "image_model_id": None,
            "scores": {},
            "accepted": True,
            "reject_reason": None,
            "metadata": {"generator": "aurad-phantom"},
        }
        for i, index in enumerate(range(start, stop))
    ]
    staged.write_shard(shard, to_stored(batch.images), batch.pathology, batch.anatomy, rows)
    return stop - start


@task(name="phantom-shard", retries=1)
def phantom_shard_task(staged: StagedVersion, shard: int, config: SourceConfig) -> int:
    return write_phantom_shard(staged, shard, config)
