"""Which expert to use, as configuration: pretrained torchxrayvision weights where present, else the
project-trained model from the registry. The choice is logged and recorded (`describe()`), never silent."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from aurad_models.experts.base import AnatomyExpert, PathologyExpert, default_device
from aurad_models.experts.trained import (
    ANATOMY_SEGMENTER_KIND,
    LESION_SEGMENTER_KIND,
    PATHOLOGY_CLASSIFIER_KIND,
    AnatomySegmenter,
    LesionSegmenter,
    PathologyClassifier,
    TrainedAnatomyExpert,
    TrainedLesionExpert,
    TrainedPathologyExpert,
)
from aurad_models.experts.xrv import (
    DEFAULT_CLASSIFIER_WEIGHTS,
    DEFAULT_SEGMENTER_WEIGHTS,
    MissingWeightsError,
    file_sha256,
    find_weights,
    load_xrv_classifier,
    load_xrv_segmenter,
    xrv_weights,
)
from aurad_models.registry import RegistryError, resolve_model

logger = logging.getLogger(__name__)


class ExpertChoice(BaseModel):
    """Where an expert comes from.

    source: `xrv` = torchxrayvision weights (must be present locally), `project` = a registered
    project-trained model, `auto` = xrv where its weights file is present, else project.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["auto", "xrv", "project"] = Field(
        "auto",
        description="xrv: torchxrayvision weights (must be present locally); project: the registered project model; "
        "auto: xrv where its weights file is present, else project",
    )
    model: str = Field("latest", description="registry reference of the project model: 'latest' or an id")
    xrv_weights: str | None = Field(
        None, description="torchxrayvision weights name; default: densenet121-res224-all / chestx_det-pspnet"
    )
    xrv_cache_dir: str | None = Field(
        None, description="folder holding the xrv weights; default: ~/.torchxrayvision/models_data"
    )
    xrv_path: str | None = Field(None, description="an explicit xrv weights file instead of the cache folder")
    sha256: str | None = Field(None, description="expected sha256 of the xrv weights file (a mismatch is an error)")
    device: str | None = Field(None, description="cuda / cpu; default: cuda if available, else cpu")
    batch_size: int | None = Field(None, description="images per inference batch; default: the expert's own")
    threshold: float = Field(0.5, description="anatomy segmenter: sigmoid threshold of a mask pixel, 0-1")


def _use_xrv(choice: ExpertChoice, default_weights: str, what: str) -> bool:
    if choice.source == "xrv":
        return True
    if choice.source == "project":
        return False
    try:
        find_weights(xrv_weights(choice.xrv_weights or default_weights), choice.xrv_cache_dir, choice.xrv_path)
    except MissingWeightsError as error:
        logger.info("%s: torchxrayvision weights absent (%s); using the project-trained model", what, error)
        return False
    return True


def _project_record(registry_root: str | Path | None, kind: str, reference: str, xrv_hint: str):
    if registry_root is None:
        raise RegistryError(f"no model registry root given to load the project {kind}; {xrv_hint}")
    try:
        return resolve_model(registry_root, kind, reference)
    except RegistryError as error:
        raise RegistryError(f"{error}. Train one with the train-experts flow, or {xrv_hint}") from None


def load_pathology_expert(choice: ExpertChoice, registry_root: str | Path | None = None) -> PathologyExpert:
    """The pathology classifier the choice names (see `ExpertChoice`)."""
    weights = choice.xrv_weights or DEFAULT_CLASSIFIER_WEIGHTS
    if _use_xrv(choice, weights, "pathology classifier"):
        expert = load_xrv_classifier(
            weights, choice.xrv_cache_dir, choice.xrv_path, choice.sha256, choice.device, choice.batch_size or 32
        )
    else:
        hint = f"put the torchxrayvision weights {xrv_weights(weights).file_name} in the xrv cache folder"
        record = _project_record(registry_root, PATHOLOGY_CLASSIFIER_KIND, choice.model, hint)
        expert = TrainedPathologyExpert(
            PathologyClassifier.from_pretrained(record.path),
            model_id=record.id,
            batch_size=choice.batch_size or 64,
            device=default_device(choice.device),
            validation_auroc=record.metrics.get("auroc"),
        )
    logger.info("pathology classifier: %s", expert.name)
    return expert


def load_anatomy_expert(choice: ExpertChoice, registry_root: str | Path | None = None) -> AnatomyExpert:
    """The anatomy segmenter the choice names (see `ExpertChoice`)."""
    weights = choice.xrv_weights or DEFAULT_SEGMENTER_WEIGHTS
    if _use_xrv(choice, weights, "anatomy segmenter"):
        expert = load_xrv_segmenter(
            choice.xrv_cache_dir, choice.xrv_path, choice.sha256, choice.device, choice.batch_size or 2,
            choice.threshold, weights,
        )
    else:
        hint = f"put the torchxrayvision weights {xrv_weights(weights).file_name} in the xrv cache folder"
        record = _project_record(registry_root, ANATOMY_SEGMENTER_KIND, choice.model, hint)
        expert = TrainedAnatomyExpert(
            AnatomySegmenter.from_pretrained(record.path),
            model_id=record.id,
            threshold=choice.threshold,
            batch_size=choice.batch_size or 32,
            device=default_device(choice.device),
        )
    logger.info("anatomy segmenter: %s", expert.name)
    return expert


def load_lesion_expert(choice: ExpertChoice, registry_root: str | Path | None = None) -> TrainedLesionExpert:
    """The fidelity expert: a project-trained lesion segmenter from the registry (no torchxrayvision model
    outlines these findings, so `source` must be 'project' or 'auto')."""
    if choice.source == "xrv":
        raise ValueError("the fidelity expert has no torchxrayvision model: set its source to 'project' (or 'auto')")
    hint = "the lesion segmenter is trained on real labelled images by the train-experts flow"
    record = _project_record(registry_root, LESION_SEGMENTER_KIND, choice.model, hint)
    expert = TrainedLesionExpert(LesionSegmenter.from_pretrained(record.path), model_id=record.id,
                                 batch_size=choice.batch_size or 64, device=default_device(choice.device))
    logger.info("fidelity expert (lesion segmenter): %s", expert.name)
    return expert


_KINDS = {
    PATHOLOGY_CLASSIFIER_KIND: DEFAULT_CLASSIFIER_WEIGHTS,
    ANATOMY_SEGMENTER_KIND: DEFAULT_SEGMENTER_WEIGHTS,
    LESION_SEGMENTER_KIND: None,
}


def resolve_choice(choice: ExpertChoice, kind: str, registry_root: str | Path | None = None) -> ExpertChoice:
    """The same choice pinned to one exact model: `auto` decided, `latest` replaced by the registry id, the
    xrv weights file's sha256 recorded. Tasks that each load the expert then all get the same one, and the
    pinned choice is the expert's identity in lineage and build fingerprints."""
    if kind not in _KINDS:
        raise ValueError(f"unknown expert kind {kind!r}; known: {', '.join(_KINDS)}")
    weights = choice.xrv_weights or _KINDS[kind]
    if weights is not None and _use_xrv(choice, weights, kind):
        path = find_weights(xrv_weights(weights), choice.xrv_cache_dir, choice.xrv_path)
        return choice.model_copy(
            update={"source": "xrv", "xrv_weights": weights, "xrv_path": str(path), "sha256": choice.sha256 or file_sha256(path)}
        )
    hint = (f"put the torchxrayvision weights {xrv_weights(weights).file_name} in the xrv cache folder" if weights
            else "train it with the train-experts flow")
    record = _project_record(registry_root, kind, choice.model, hint)
    return choice.model_copy(update={"source": "project", "model": record.id})
