"""`train_flow`: train the mask generator and the image generator on a source dataset version.

Thin wiring: both generators read the same stored version (train split to train, val split to validate),
train as two tasks tagged "gpu" (a concurrency limit on that tag keeps one per GPU on a GPU work pool) and
come back as ids in the model registry under `<root>/models/`. Rerunning with the same parameters resumes
each run from its last checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from aurad_models.image_generator import ImageGeneratorConfig
from aurad_models.mask_generator import MaskGeneratorConfig
from flows.profiles import with_overrides
from tasks.retrain import LabelledSubset
from tasks.train import (
    TrainingConfig,
    train_image_generator_task,
    train_mask_generator_task,
)

logger = logging.getLogger(__name__)


class TrainFlowParameters(BaseModel):
    """What to train on and how; shown as a form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field("aurad-data", description="storage root: datasets, training runs and the model registry")
    dataset: str = Field("phantom", description="source dataset name")
    version: str = Field("latest", description="source dataset version")
    train_split: str = Field("train", description="source split the generators train on")
    val_split: str | None = Field(
        "val", description="source split for the validation loss and sample grid (None: no validation)"
    )
    mask_generator: MaskGeneratorConfig = Field(
        default_factory=MaskGeneratorConfig, description="architecture and conditioning of the mask generator"
    )
    image_generator: ImageGeneratorConfig = Field(
        default_factory=ImageGeneratorConfig,
        description="architecture, noise schedule and mask ablation of the image generator",
    )
    mask_training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="optimisation, checkpoints and validation of the mask generator"
    )
    image_training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="optimisation, checkpoints and validation of the image generator"
    )
    train_masks: bool = Field(True, description="train the mask generator")
    train_images: bool = Field(True, description="train the image generator")
    resume: bool = Field(True, description="resume a run from its last checkpoint; false: start it again from scratch")
    labelled_subset: LabelledSubset | None = Field(
        None, description="train with scarce labels: only this seeded share of the train split has masks (the mask "
        "generator sees those alone, the image generator every image); None: every label of the split")


class TrainFlowResult(BaseModel):
    """Registry ids of the trained generators (None where that generator was not trained)."""

    mask_generator_id: str | None
    image_generator_id: str | None
    seconds: dict[str, float]


@flow(name="aurad-train-generators", log_prints=False)
def train_flow(params: TrainFlowParameters = TrainFlowParameters(), overrides: dict[str, Any] | None = None) -> TrainFlowResult:
    """Train both generators on `params.dataset`/`params.version` and return their registry ids."""
    params = with_overrides(params, overrides)  # a run's few changes, merged (see flows.deployments)
    common = dict(root=params.root, dataset=params.dataset, version=params.version, train_split=params.train_split,
                  val_split=params.val_split, resume=params.resume, labelled_subset=params.labelled_subset)
    mask = image = None
    if params.train_masks:
        mask = train_mask_generator_task(model_config=params.mask_generator, training=params.mask_training, **common)
    if params.train_images:
        image = train_image_generator_task(model_config=params.image_generator, training=params.image_training, **common)
    return TrainFlowResult(
        mask_generator_id=mask.model_id if mask else None,
        image_generator_id=image.model_id if image else None,
        seconds={r.kind: round(r.seconds, 1) for r in (mask, image) if r is not None},
    )
