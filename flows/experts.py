"""`train_experts_flow`: train the project's pathology classifier, anatomy segmenter and lesion segmenter (the
fidelity expert) on a source version.

Thin wiring over `tasks.experts`: the source version is pinned ('latest' resolved once), each expert trains
in one task tagged "gpu" (train split to train, val split to validate), and each comes back as a model
registry id under `<root>/models/`, registered with its validation metrics (AUROC per finding, Dice per
structure) and lineage.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from flows.profiles import with_overrides
from tasks.experts import (
    ExpertsTrainingConfig,
    SourceRef,
    train_classifier_task,
    train_lesion_segmenter_task,
    train_segmenter_task,
)

logger = logging.getLogger(__name__)


class TrainExpertsParameters(BaseModel):
    """What to train the experts on and how; shown as a form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field("aurad-data", description="storage root: datasets and the model registry")
    dataset: str = Field("phantom", description="source dataset name")
    version: str = Field("latest", description="source dataset version")
    training: ExpertsTrainingConfig = Field(
        default_factory=ExpertsTrainingConfig, description="splits, models and budgets (null = skip that expert)"
    )
    device: str | None = Field(None, description="cuda / cpu; default: cuda if available")


class TrainExpertsResult(BaseModel):
    """Registry ids and validation metrics of the trained experts (None where not trained)."""

    source: SourceRef
    classifier_id: str | None
    segmenter_id: str | None
    lesion_segmenter_id: str | None = None
    metrics: dict[Literal["classifier", "segmenter", "lesion_segmenter"], dict[str, Any]]


@flow(name="aurad-train-experts", log_prints=False)
def train_experts_flow(params: TrainExpertsParameters = TrainExpertsParameters(), overrides: dict[str, Any] | None = None) -> TrainExpertsResult:
    """Train, validate and register both experts on `params.dataset`/`params.version`."""
    params = with_overrides(params, overrides)  # a run's few changes, merged (see flows.deployments)
    run_logger = get_run_logger()
    source = SourceRef(root=params.root, dataset=params.dataset, version=params.version)
    source = source.model_copy(update={"version": source.open().version})
    training = params.training
    classifier = segmenter = None
    if training.classifier is not None:
        classifier = train_classifier_task(source, params.root, training.classifier, training, params.device)
        run_logger.info(
            "pathology classifier %s: mean AUROC %.3f in %.0f s", classifier["id"],
            classifier["metrics"]["auroc_mean"], classifier["metrics"]["train_seconds"],
        )
    if training.segmenter is not None:
        segmenter = train_segmenter_task(source, params.root, training.segmenter, training, params.device)
        run_logger.info(
            "anatomy segmenter %s: mean Dice %.3f in %.0f s", segmenter["id"],
            segmenter["metrics"]["dice_mean"], segmenter["metrics"]["train_seconds"],
        )
    lesion = None
    if training.lesion_segmenter is not None:
        lesion = train_lesion_segmenter_task(source, params.root, training.lesion_segmenter, training)
        run_logger.info("lesion segmenter (fidelity expert) %s: pooled validation Dice %.3f in %.0f s", lesion["id"],
                        lesion["metrics"]["pooled_dice_mean"], lesion["metrics"]["train_seconds"])
    return TrainExpertsResult(
        source=source,
        classifier_id=classifier["id"] if classifier else None,
        segmenter_id=segmenter["id"] if segmenter else None,
        lesion_segmenter_id=lesion["id"] if lesion else None,
        metrics={name: r["metrics"] for name, r in (("classifier", classifier), ("segmenter", segmenter),
                                                     ("lesion_segmenter", lesion)) if r},
    )
