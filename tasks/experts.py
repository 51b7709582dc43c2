"""Training the project's own experts on a source dataset version: plain functions, thin Prefect tasks.

    data = load_expert_data(open_dataset(root, "phantom"), split="train")
    result = train_pathology_classifier(data, ClassifierTrainingConfig())      # model, losses, seconds
    metrics = evaluate_pathology_classifier(result.model, val)                # auroc.<finding>, ...
    record = train_and_register_classifier(source, registry_root, config)     # all of it, into the registry

The classifier learns from the manifest's findings (the report), the segmenter from the anatomy masks.
Augmentation is `aurad_models.augmentation`: one random affine drawn per sample for the image and its
masks together (one batched sampling grid, bilinear for the image, nearest for masks), seeded from
the config's seed.
Randomness is explicit: batches come from a seeded numpy Generator, weight initialisation and training
run inside `torch.random.fork_rng` seeded from the config, so the global RNG is left as it was.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Callable, Sequence

import numpy as np
import torch
from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from aurad_models.augmentation import AugmentationConfig, PairedAugmentation
from aurad_models.experts.base import default_device, resize_batch
from aurad_models.experts.metrics import auroc, dice
from aurad_models.experts.trained import (
    ANATOMY_SEGMENTER_KIND,
    LESION_SEGMENTER_KIND,
    PATHOLOGY_CLASSIFIER_KIND,
    AnatomySegmenter,
    LesionSegmenter,
    PathologyClassifier,
    TrainedAnatomyExpert,
    TrainedPathologyExpert,
    operating_points,
)
from aurad_models.hashing import config_hash
from aurad_models.pixels import stored_to_unit, unit_to_model
from aurad_models.registry import ModelRecord, register_model
from aurad_models.seeding import derive_seed
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES
from tasks.retrain import LabelledSubset, SegmentationConfig, multilabel_segmentation_loss

logger = logging.getLogger(__name__)


# --- configuration ---------------------------------------------------------------------------------


class ClassifierTrainingConfig(BaseModel):
    """The pathology classifier's architecture and training budget (defaults: the demo profile)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int | None = Field(None, ge=16, description="training resolution; None: the source's")
    init_features: int = Field(16, description="DenseNet: feature maps of the first convolution")
    growth_rate: int = Field(8, description="DenseNet: feature maps each dense layer adds")
    block_config: tuple[int, ...] = Field((2, 4, 6, 4), description="DenseNet: dense layers in each dense block")
    dropout_prob: float = Field(0.0, description="DenseNet: dropout probability in the dense layers, 0-1")
    steps: int = Field(500, ge=1, description="optimiser steps (AdamW, one-cycle schedule)")
    batch_size: int = Field(32, ge=1, description="training images per step")
    learning_rate: float = Field(3e-3, gt=0, description="peak learning rate of the one-cycle schedule")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    max_pos_weight: float = Field(4.0, ge=1, description="cap of the per-finding positive weight (1 - p) / p")
    augmentation: AugmentationConfig = Field(
        default_factory=AugmentationConfig, description="random affine and intensity changes of the training images"
    )
    seed: int = Field(0, description="seed of the initialisation, batches, augmentation and max_*_samples subsets")
    log_every: int = Field(100, ge=1, description="steps between loss lines in the log")


class SegmenterTrainingConfig(BaseModel):
    """The anatomy segmenter's architecture and training budget (defaults: the demo profile)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int | None = Field(None, ge=16, description="training resolution; None: the source's")
    channels: tuple[int, ...] = Field((16, 32, 64, 128), description="UNet channels per level")
    strides: tuple[int, ...] = Field((2, 2, 2), description="UNet down-sampling strides (one fewer than channels)")
    num_res_units: int = Field(1, description="residual units per UNet block (0: plain conv blocks)")
    steps: int = Field(300, ge=1, description="optimiser steps (AdamW, one-cycle schedule)")
    batch_size: int = Field(16, ge=1, description="training images per step")
    learning_rate: float = Field(5e-3, gt=0, description="peak learning rate of the one-cycle schedule")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    augmentation: AugmentationConfig = Field(
        default_factory=AugmentationConfig,
        description="random affine (image and masks together) and intensity augmentation of the training images",
    )
    seed: int = Field(0, description="seed of the initialisation, batches, augmentation and max_*_samples subsets")
    log_every: int = Field(100, ge=1, description="steps between loss lines in the log")


class LesionSegmenterTrainingConfig(SegmentationConfig):
    """The fidelity expert (a lesion segmenter trained on real images): architecture, schedule (trained
    until the validation Dice stops improving, as the downstream models are) and calibration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: tuple[int, ...] = Field((16, 32, 64, 128), description="UNet channels per level")
    max_steps: int = Field(3000, ge=1, description="optimiser steps at most")
    patience: int = Field(6, ge=1, description="stop after this many checks without a better validation Dice")
    accept_share: float = Field(0.9, gt=0, lt=1, description="calibration: the share of real validation images the "
                                "fidelity expert's thresholds let through, per finding")
    seed: int = Field(0, description="seed of the initialisation, batches and augmentation")


class ExpertsTrainingConfig(BaseModel):
    """The experts and the source splits they learn from; a null expert is not trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_split: str = Field("train", description="source split the experts train on")
    val_split: str = Field(
        "val", description="source split the experts are validated on (and the lesion segmenter calibrated on)"
    )
    max_train_samples: int | None = Field(
        None,
        ge=1,
        description="cap on training images of the classifier and anatomy segmenter, a seeded subset (None: all)",
    )
    max_val_samples: int | None = Field(
        None,
        ge=1,
        description="cap on validation images of the classifier and anatomy segmenter, a seeded subset (None: all)",
    )
    classifier: ClassifierTrainingConfig | None = Field(
        default_factory=ClassifierTrainingConfig, description="the pathology classifier (DenseNet); null: not trained"
    )
    segmenter: SegmenterTrainingConfig | None = Field(
        default_factory=SegmenterTrainingConfig, description="the anatomy segmenter (UNet); null: not trained"
    )
    lesion_segmenter: LesionSegmenterTrainingConfig | None = Field(
        default_factory=LesionSegmenterTrainingConfig,
        description="the fidelity expert (a lesion UNet trained on real images); null: not trained",
    )
    labelled_subset: LabelledSubset | None = Field(
        None, description="train the classifier and the lesion segmenter with scarce labels: this seeded share of the "
        "train split only (the anatomy segmenter keeps every image: anatomy is not the scarce label)")





# --- data --------------------------------------------------------------------------------------------


@dataclass
class ExpertData:
    """One split of a source dataset in memory: images [0, 1], anatomy masks, finding labels (N, 7).

    `known` marks which labels are known: a source whose manifest says `label.<finding>` = nan (e.g. a
    dataset that never annotated it) leaves that label out of the loss and the metrics, never "absent".
    `has_anatomy` marks samples with anatomy masks (metadata `anatomy` != "none").
    """

    images: np.ndarray  # (N, H, W) float32
    anatomy: np.ndarray  # (N, 14, H, W) uint8
    labels: np.ndarray  # (N, 7) float32, 1 = the finding is in the sample's report
    known: np.ndarray | None = None  # (N, 7) bool; None = all known
    has_anatomy: np.ndarray | None = None  # (N,) bool; None = all
    sample_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.known is None:
            self.known = np.ones(self.labels.shape, dtype=bool)
        if self.has_anatomy is None:
            self.has_anatomy = np.ones(len(self.images), dtype=bool)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, keep: np.ndarray) -> "ExpertData":
        ids = [self.sample_ids[i] for i in np.flatnonzero(keep)] if self.sample_ids else []
        return ExpertData(self.images[keep], self.anatomy[keep], self.labels[keep], self.known[keep], self.has_anatomy[keep], ids)


def labels_from_findings(findings: Sequence[Sequence[Any]]) -> np.ndarray:
    """(N, 7) multi-hot labels from per-sample findings (Finding objects or {label: ...} dicts)."""
    out = np.zeros((len(findings), len(PATHOLOGIES)), dtype=np.float32)
    for i, sample in enumerate(findings):
        for finding in sample or ():
            label = finding["label"] if isinstance(finding, dict) else finding.label
            out[i, PATHOLOGIES.index(label)] = 1.0
    return out


def _known_labels(metadata: Sequence[Any]) -> np.ndarray:
    known = np.ones((len(metadata), len(PATHOLOGIES)), dtype=bool)
    for i, items in enumerate(metadata):
        values = dict(items or ())
        for j, label in enumerate(PATHOLOGIES):
            if values.get(f"label.{label}") == "nan":
                known[i, j] = False
    return known


def load_expert_data(version: Any, split: str | None, max_samples: int | None = None, seed: int = 0) -> ExpertData:
    """Read one split of a `storage.DatasetVersion` (accepted samples) into memory; at most `max_samples`
    (a seeded random subset, in index order)."""
    if tuple(version.anatomy_channels) != ANATOMY_STRUCTURES:
        raise ValueError(f"{version.path}: anatomy channels {version.anatomy_channels} are not {ANATOMY_STRUCTURES}")
    indices = version.select(accepted_only=True, split=split)
    if len(indices) == 0:
        raise ValueError(f"{version.path} has no accepted samples in split {split!r}")
    if max_samples is not None and len(indices) > max_samples:
        indices = np.sort(np.random.default_rng(seed).choice(indices, size=max_samples, replace=False))
    every = (slice(None),) * 2
    images = stored_to_unit(np.asarray(version.images.get_orthogonal_selection((indices, *every))))
    anatomy = np.asarray(version.anatomy.get_orthogonal_selection((indices, slice(None), *every)), dtype=np.uint8)
    manifest = version.manifest.take(indices)
    metadata = manifest.column("metadata").to_pylist()
    return ExpertData(
        images,
        anatomy,
        labels_from_findings(manifest.column("findings").to_pylist()),
        known=_known_labels(metadata),
        has_anatomy=np.array([dict(m or ()).get("anatomy") != "none" for m in metadata], dtype=bool),
        sample_ids=manifest.column("sample_id").to_pylist(),
    )


def _resize_images(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return resize_batch(torch.from_numpy(images)[:, None], (size, size)).numpy()[:, 0]


def _resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    if masks.shape[-1] == size and masks.shape[-2] == size:
        return masks
    return resize_batch(torch.from_numpy(masks.astype(np.float32)), (size, size), mode="nearest").numpy().astype(np.uint8)


class _BatchSampler:
    """Seeded random batches of augmented samples as model-ready tensors (one random affine per sample for
    the image and its masks, `aurad_models.augmentation`)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray | None, batch_size: int, augment: PairedAugmentation, seed: int) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
        self.masks = None if masks is None else torch.from_numpy(masks.astype(np.float32))
        self.batch_size = min(batch_size, len(images))
        self.augment = augment
        self.rng = np.random.default_rng(seed % 2**63)
        self._order: np.ndarray = np.empty(0, dtype=np.int64)

    def _next_indices(self) -> np.ndarray:
        if len(self._order) < self.batch_size:  # an epoch: every sample once, in a fresh order
            self._order = np.concatenate([self._order, self.rng.permutation(len(self.images))])
        out, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return out

    def __call__(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
        chosen = self._next_indices()
        index = torch.from_numpy(chosen)
        images, masks = self.augment(self.images[index], None if self.masks is None else self.masks[index])
        return chosen, unit_to_model(images), masks


@dataclass
class TrainResult:
    """A trained model and how the training went."""

    model: torch.nn.Module
    losses: list[float]
    seconds: float
    steps: int

    def loss_summary(self, window: int = 20) -> dict[str, float]:
        """Mean loss over the first and the last `window` steps."""
        window = max(1, min(window, len(self.losses) // 2 or 1))
        return {"loss_start": float(np.mean(self.losses[:window])), "loss_end": float(np.mean(self.losses[-window:]))}


def _fit(
    model: torch.nn.Module,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    learning_rate: float,
    weight_decay: float,
    device: torch.device,
    log_every: int,
    what: str,
) -> tuple[list[float], float]:
    """AdamW with a one-cycle schedule (warm-up, then cosine decay): the most progress for a fixed small
    budget of steps. A tqdm bar shows progress; the log gets a line every `log_every` steps."""
    from tqdm.auto import tqdm

    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=steps, pct_start=min(0.3, 50 / steps + 0.05)
    )
    losses: list[float] = []
    start = time.perf_counter()
    for step in tqdm(range(steps), desc=f"train {what}", unit="step", leave=False, mininterval=2.0):
        x, y = next_batch()
        loss = loss_fn(model(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = np.mean(losses[-log_every:])
            logger.info("%s step %d/%d loss %.4f (%.1f s)", what, step + 1, steps, recent, time.perf_counter() - start)
    model.eval()
    return losses, time.perf_counter() - start


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def train_pathology_classifier(
    data: ExpertData, config: ClassifierTrainingConfig, device: str | torch.device | None = None
) -> TrainResult:
    """Train a PathologyClassifier on the findings of `data` (weighted BCE: rarer findings weigh more)."""
    device = default_device(device)
    size = config.image_size or data.images.shape[-1]
    images = _resize_images(data.images, size)
    labels = torch.from_numpy(data.labels)
    known = torch.from_numpy(data.known.astype(np.float32))
    prevalence = (labels * known).sum(0) / known.sum(0).clamp(min=1)
    prevalence = prevalence.clamp(min=1.0 / max(len(labels), 1), max=1 - 1.0 / max(len(labels), 1))
    pos_weight = ((1 - prevalence) / prevalence).clamp(1.0, config.max_pos_weight).to(device)
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")

    def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y, mask = target[:, 0], target[:, 1]  # labels and which of them are known
        return (bce(logits, y) * mask).sum() / mask.sum().clamp(min=1)

    augment = PairedAugmentation(config.augmentation, derive_seed(config.seed, "classifier-augment"))
    sampler = _BatchSampler(images, None, config.batch_size, augment, derive_seed(config.seed, "classifier-batches"))

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        chosen, x, _ = sampler()
        rows = torch.from_numpy(chosen)
        return x, torch.stack([labels[rows], known[rows]], dim=1)

    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(derive_seed(config.seed, "classifier-init"))
        model = PathologyClassifier(
            labels=PATHOLOGIES,
            image_size=size,
            init_features=config.init_features,
            growth_rate=config.growth_rate,
            block_config=config.block_config,
            dropout_prob=config.dropout_prob,
        )
        losses, seconds = _fit(
            model, next_batch, criterion, config.steps, config.learning_rate, config.weight_decay, device,
            config.log_every, "pathology classifier",
        )
    logger.info("pathology classifier: %d steps in %.1f s, loss %.4f -> %.4f", config.steps, seconds, losses[0], losses[-1])
    return TrainResult(model, losses, seconds, config.steps)


def train_anatomy_segmenter(
    data: ExpertData, config: SegmenterTrainingConfig, device: str | torch.device | None = None
) -> TrainResult:
    """Train an AnatomySegmenter on the anatomy masks of `data`."""
    device = default_device(device)
    if not data.has_anatomy.all():
        logger.info("anatomy segmenter: %d of %d samples have anatomy masks", int(data.has_anatomy.sum()), len(data))
        data = data.subset(data.has_anatomy)
    if len(data) == 0:
        raise ValueError("no sample with anatomy masks to train the anatomy segmenter on")
    size = config.image_size or data.images.shape[-1]
    images = _resize_images(data.images, size)
    masks = _resize_masks(data.anatomy, size)
    augment = PairedAugmentation(config.augmentation, derive_seed(config.seed, "segmenter-augment"))
    sampler = _BatchSampler(images, masks, config.batch_size, augment, derive_seed(config.seed, "segmenter-batches"))

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        _, x, y = sampler()
        return x, y

    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(derive_seed(config.seed, "segmenter-init"))
        model = AnatomySegmenter(
            structures=ANATOMY_STRUCTURES,
            image_size=size,
            channels=config.channels,
            strides=config.strides,
            num_res_units=config.num_res_units,
        )
        losses, seconds = _fit(
            model, next_batch, multilabel_segmentation_loss(batch_dice=False), config.steps, config.learning_rate, config.weight_decay, device,
            config.log_every, "anatomy segmenter",
        )
    logger.info("anatomy segmenter: %d steps in %.1f s, loss %.4f -> %.4f", config.steps, seconds, losses[0], losses[-1])
    return TrainResult(model, losses, seconds, config.steps)


# --- evaluation --------------------------------------------------------------------------------------


def evaluate_pathology_classifier(model: PathologyClassifier, data: ExpertData, device: str | torch.device | None = None) -> dict[str, Any]:
    """AUROC per finding on `data` (NaN where a finding has no positives or no negatives), their mean, the
    prevalence, and the Youden operating point per finding (stored with the model: 0.5 then means it)."""
    expert = TrainedPathologyExpert(model, device=default_device(device))
    probs = expert.predict(data.images, calibrated=False)
    probs = np.where(data.known, probs, np.nan)  # unknown labels take no part
    per_finding = {label: auroc(probs[:, j], data.labels[:, j]) for j, label in enumerate(PATHOLOGIES)}
    valid = [v for v in per_finding.values() if not math.isnan(v)]
    return {
        "auroc": per_finding,
        "auroc_mean": float(np.mean(valid)) if valid else float("nan"),
        "prevalence": {
            label: float(data.labels[data.known[:, j], j].mean()) if data.known[:, j].any() else float("nan")
            for j, label in enumerate(PATHOLOGIES)
        },
        "operating_points": operating_points(probs, data.labels),
        "n_samples": len(data),
    }


def evaluate_anatomy_segmenter(model: AnatomySegmenter, data: ExpertData, device: str | torch.device | None = None) -> dict[str, Any]:
    """Dice per structure on `data`: the mean over images where the true structure is present."""
    data = data.subset(data.has_anatomy)
    expert = TrainedAnatomyExpert(model, device=default_device(device))
    predicted = expert.segment(data.images)
    per_structure = {}
    for c, name in enumerate(ANATOMY_STRUCTURES):
        present = data.anatomy[:, c].reshape(len(data), -1).any(axis=1)
        values = [dice(predicted[i, c], data.anatomy[i, c]) for i in np.flatnonzero(present)]
        per_structure[name] = float(np.mean(values)) if values else float("nan")
    valid = [v for v in per_structure.values() if not math.isnan(v)]
    return {"dice": per_structure, "dice_mean": float(np.mean(valid)) if valid else float("nan"), "n_samples": len(data)}


# --- train, evaluate, register -----------------------------------------------------------------------


class SourceRef(BaseModel):
    """A source dataset version by location (what tasks pass around instead of arrays)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str
    dataset: str
    version: str = "latest"

    def open(self) -> Any:
        from storage import open_dataset

        return open_dataset(self.root, self.dataset, self.version)


def _lineage(source: Any, config: BaseModel, splits: dict[str, str | None]) -> dict[str, Any]:
    return {
        "source": {"dataset": source.name, "version": source.version, "path": source.path, **splits},
        "config": config.model_dump(mode="json"),
        "config_hash": config_hash(config),
    }


def train_and_register_classifier(
    source: SourceRef,
    registry_root: str | Path,
    config: ClassifierTrainingConfig,
    train_split: str = "train",
    val_split: str = "val",
    max_train_samples: int | None = None,
    max_val_samples: int | None = None,
    device: str | None = None,
    labelled_subset: LabelledSubset | None = None,
) -> ModelRecord:
    """Train on the train split (its `labelled_subset` only, if given), validate (AUROC per finding,
    operating points) on the val split, save the model directory and register it with its metrics and lineage."""
    version = source.open()
    train = load_expert_data(version, train_split, max_train_samples, seed=config.seed)
    if labelled_subset is not None:
        keep = np.zeros(len(train), dtype=bool)
        keep[labelled_subset.indices(len(train))] = True
        train = train.subset(keep)
    val = load_expert_data(version, val_split, max_val_samples, seed=config.seed)
    result = train_pathology_classifier(train, config, device)
    metrics = evaluate_pathology_classifier(result.model, val, device)
    result.model.set_operating_points([metrics["operating_points"][label] for label in result.model.labels])
    metrics.update(result.loss_summary(), train_seconds=result.seconds, steps=result.steps, n_train=len(train))
    logger.info(
        "pathology classifier on %s/%s %s: AUROC %s (mean %.3f)", version.name, version.version, val_split,
        {k: round(v, 3) for k, v in metrics["auroc"].items()}, metrics["auroc_mean"],
    )
    lineage = _lineage(version, config, {"train_split": train_split, "val_split": val_split, "n": len(train),
                                         "labelled_subset": labelled_subset.model_dump() if labelled_subset else None})
    with TemporaryDirectory(prefix="aurad-classifier-") as tmp:
        result.model.save_pretrained(Path(tmp) / "model", metadata={"metrics": metrics, "lineage": lineage})
        return register_model(registry_root, PATHOLOGY_CLASSIFIER_KIND, Path(tmp) / "model", metrics, lineage)


def train_and_register_segmenter(
    source: SourceRef,
    registry_root: str | Path,
    config: SegmenterTrainingConfig,
    train_split: str = "train",
    val_split: str = "val",
    max_train_samples: int | None = None,
    max_val_samples: int | None = None,
    device: str | None = None,
) -> ModelRecord:
    """Train on the train split, validate (Dice per structure) on the val split, save and register."""
    version = source.open()
    train = load_expert_data(version, train_split, max_train_samples, seed=config.seed)
    val = load_expert_data(version, val_split, max_val_samples, seed=config.seed)
    result = train_anatomy_segmenter(train, config, device)
    metrics = evaluate_anatomy_segmenter(result.model, val, device)
    metrics.update(result.loss_summary(), train_seconds=result.seconds, steps=result.steps, n_train=len(train))
    logger.info(
        "anatomy segmenter on %s/%s %s: Dice %s (mean %.3f)", version.name, version.version, val_split,
        {k: round(v, 3) for k, v in metrics["dice"].items()}, metrics["dice_mean"],
    )
    lineage = _lineage(version, config, {"train_split": train_split, "val_split": val_split})
    with TemporaryDirectory(prefix="aurad-segmenter-") as tmp:
        result.model.save_pretrained(Path(tmp) / "model", metadata={"metrics": metrics, "lineage": lineage})
        return register_model(registry_root, ANATOMY_SEGMENTER_KIND, Path(tmp) / "model", metrics, lineage)


def calibrate_fidelity(predicted: np.ndarray, masks: np.ndarray, accept_share: float) -> dict[str, dict[str, float | None]]:
    """What real validation images look like to the lesion segmenter, per finding: pooled Dice over the
    images that hold it, the per-image Dice `accept_share` of them reach, and the predicted area (pixels)
    `accept_share` of the images without it stay under."""
    from aurad_models.metrics import dice_scores

    per_image = dice_scores(predicted, masks)
    out: dict[str, dict[str, float | None]] = {}
    for c, label in enumerate(PATHOLOGIES):
        positive = masks[:, c].reshape(len(masks), -1).any(axis=1)
        hits = (predicted[positive, c] & masks[positive, c]).sum()
        total = predicted[positive, c].sum() + masks[positive, c].sum()
        absent_pixels = predicted[~positive, c].reshape(int((~positive).sum()), -1).sum(axis=1)
        out[label] = {
            "dice": float(2 * hits / total) if total else None,
            "min_dice": float(np.quantile(per_image[positive, c], 1 - accept_share)) if positive.any() else None,
            "max_absent_pixels": float(np.quantile(absent_pixels, accept_share)) if absent_pixels.size else None,
            "positives": int(positive.sum()),
        }
    return out


def train_lesion_segmenter(train: Any, val: Any, config: LesionSegmenterTrainingConfig) -> tuple[LesionSegmenter, Any]:
    """Train the fidelity expert on real images and masks (`tasks.retrain.LabelledImages`) until its
    validation Dice stops improving, then calibrate it on the same validation images."""
    from monai.losses import DiceCELoss

    from tasks.retrain import DownstreamModel, evaluate_segmenter, fit, predict_masks, seeded_init, set_output_prior

    def build(size: int, seed: int) -> LesionSegmenter:
        model = LesionSegmenter(PATHOLOGIES, size, config.channels, config.strides, config.num_res_units, config.norm,
                                config.threshold)
        seeded_init(model, derive_seed(seed, "init"))
        set_output_prior(model, len(PATHOLOGIES), config.prior)
        return model

    # MONAI's DiceCELoss, whose CE term is a softmax across the finding channels (no gradient from a pixel
    # with no finding), unlike the downstream models' `multilabel_segmentation_loss`: the shipped fidelity
    # expert was trained with it, and changing the loss means retraining the shipped experts
    dice_ce = DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    task_model = DownstreamModel(config, build, lambda model, x, y: dice_ce(model(x), y),
                                 lambda model, data: evaluate_segmenter(model, data, config.threshold))
    result = fit(task_model, train, val, derive_seed(config.seed, "lesion-segmenter"))
    model = result.model
    model.set_fidelity(calibrate_fidelity(predict_masks(model, val.images, config.threshold), val.masks, config.accept_share))
    return model, result


def train_and_register_lesion_segmenter(
    source: SourceRef, registry_root: str | Path, config: LesionSegmenterTrainingConfig, train_split: str = "train",
    val_split: str = "val", labelled_subset: LabelledSubset | None = None,
) -> ModelRecord:
    """Train the fidelity expert on the source's labelled real images (its `labelled_subset` only, if given),
    validate and calibrate it on the val split, save and register it."""
    from tasks.retrain import evaluate_segmenter, load_labelled

    version = source.open()
    train, val = load_labelled(version, train_split, accepted_only=True), load_labelled(version, val_split, accepted_only=True)
    if labelled_subset is not None:
        train = train.subset(labelled_subset.indices(len(train)))
    with torch.random.fork_rng(devices=[]):
        model, result = train_lesion_segmenter(train, val, config)
    scores = evaluate_segmenter(model, val, config.threshold)
    metrics = {"dice": scores["per_class"], "dice_mean": scores["mean"], "pooled_dice": scores["pooled"]["per_class"],
               "pooled_dice_mean": scores["pooled"]["mean"], "fidelity": model.fidelity, "best_step": result.best_step,
               "steps": result.steps, "train_seconds": result.seconds, "n_train": len(train)}
    logger.info("lesion segmenter on %s/%s %s: pooled Dice %s (best step %d of %d)", version.name, version.version, val_split,
                {k: None if v is None else round(v, 3) for k, v in scores["pooled"]["per_class"].items()}, result.best_step, result.steps)
    lineage = _lineage(version, config, {"train_split": train_split, "val_split": val_split, "n": len(train),
                                         "labelled_subset": labelled_subset.model_dump() if labelled_subset else None})
    with TemporaryDirectory(prefix="aurad-lesion-") as tmp:
        model.save_pretrained(Path(tmp) / "model", metadata={"metrics": metrics, "lineage": lineage})
        return register_model(registry_root, LESION_SEGMENTER_KIND, Path(tmp) / "model", metrics, lineage)


# --- Prefect --------------------------------------------------------------------------------------


def _record_summary(record: ModelRecord) -> dict[str, Any]:
    return {"id": record.id, "kind": record.kind, "path": str(record.path), "sha256": record.sha256, "metrics": record.metrics}


@task(name="train-pathology-classifier", tags=["gpu"])
def train_classifier_task(
    source: SourceRef, registry_root: str, config: ClassifierTrainingConfig, splits: ExpertsTrainingConfig, device: str | None = None
) -> dict[str, Any]:
    """Train, validate and register the pathology classifier; returns the registry record as a dict."""
    record = train_and_register_classifier(
        source, registry_root, config, splits.train_split, splits.val_split, splits.max_train_samples,
        splits.max_val_samples, device, splits.labelled_subset,
    )
    return _record_summary(record)


@task(name="train-anatomy-segmenter", tags=["gpu"])
def train_segmenter_task(
    source: SourceRef, registry_root: str, config: SegmenterTrainingConfig, splits: ExpertsTrainingConfig, device: str | None = None
) -> dict[str, Any]:
    """Train, validate and register the anatomy segmenter; returns the registry record as a dict."""
    record = train_and_register_segmenter(
        source, registry_root, config, splits.train_split, splits.val_split, splits.max_train_samples,
        splits.max_val_samples, device,
    )
    return _record_summary(record)


@task(name="train-lesion-segmenter", tags=["gpu"])
def train_lesion_segmenter_task(
    source: SourceRef, registry_root: str, config: LesionSegmenterTrainingConfig, splits: ExpertsTrainingConfig
) -> dict[str, Any]:
    """Train, calibrate and register the fidelity expert; returns the registry record as a dict."""
    return _record_summary(train_and_register_lesion_segmenter(source, registry_root, config, splits.train_split, splits.val_split,
                                                               splits.labelled_subset))
