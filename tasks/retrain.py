"""Downstream retraining: does synthetic data help models trained on scarce real data, and how much of what
perfect data would give does it reach?

For each real fraction (a seeded share of the real training split, nested across fractions) and each seed,
small models are trained from scratch on:

    real              the scarce real subset alone (the baseline)
    real+synthetic    the subset plus the accepted synthetic samples
    real+oracle       the subset plus as many *real* samples from outside it, drawn with the synthetic set's class
                      mix: what a perfect generator would give (the oracle)
    synthetic->real   pre-trained on the synthetic samples alone, then fine-tuned on the subset
and, once per seed, on the synthetic samples alone ("synthetic", the pre-training of the row above) and, for a
few seeds, on the whole real training split ("full-real", the ceiling).

Every model trains until its Dice (or mAP) on the real *validation* split stops improving (checked every
`eval_every` steps, at most `max_steps`, patience `patience` checks); the best validation checkpoint is
scored on the held-out real test split. Regimes of one seed share the real subset and the initial weights,
so the difference to "real" is the effect of the added data alone; the comparison over seeds is a two-sided
paired t-test (`paired_comparison`), and "significant" means p < `alpha`. The share of the oracle's gain
that the synthetic data reaches is the figure that says how good the generators are.

    segmentation  MONAI UNet, one sigmoid channel per pathology class  -> Dice (metrics.dice_per_class)
    detection     torchvision RetinaNet with a tiny backbone, boxes from mask components -> mAP@0.5

Runs are independent jobs executed by `workers` processes with one torch thread each (tiny models: two
single-threaded runs beat one two-threaded run on 2 cores); every job draws only from its own seeds, so
the document does not depend on the number of workers. No pretrained weights anywhere.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from aurad_models import metrics
from aurad_models.augmentation import AugmentationConfig, PairedAugmentation
from aurad_models.pixels import stored_to_unit, unit_to_model
from aurad_models.seeding import derive_seed, torch_generator
from aurad_models.vocabulary import PATHOLOGIES

if TYPE_CHECKING:
    from storage import DatasetVersion

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
TrainSet = Literal["real", "real+synthetic", "real+oracle", "synthetic->real", "synthetic", "full-real"]
Task = Literal["segmentation", "detection"]
TASK_METRIC = {"segmentation": "dice", "detection": "map50"}
COMPARED: tuple[str, ...] = ("real+synthetic", "real+oracle", "synthetic->real")
TEST_METHOD = "two-sided paired t-test over seeds (same real subset and initial weights in both arms)"


# --- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledImages:
    """Images (N, H, W) float32 in [0, 1] with pathology masks (N, C, H, W) uint8 in PATHOLOGIES order."""

    images: np.ndarray
    masks: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.masks.ndim != 4 or len(self.images) != len(self.masks):
            raise ValueError(f"images must be (N, H, W) and masks (N, C, H, W), got {self.images.shape}, {self.masks.shape}")
        if self.images.shape[-2:] != self.masks.shape[-2:]:
            raise ValueError(f"image size {self.images.shape[-2:]} differs from mask size {self.masks.shape[-2:]}")

    def __len__(self) -> int:
        return len(self.images)

    def present(self) -> np.ndarray:
        """(N, C) bool: which classes each sample's masks hold."""
        return self.masks.reshape(len(self), self.masks.shape[1], -1).any(axis=2)

    def class_mix(self) -> dict[str, float]:
        """Share of samples holding each class, and of samples with none ('normal')."""
        present = self.present()
        mix = {label: float(present[:, c].mean()) if len(self) else 0.0 for c, label in enumerate(PATHOLOGIES[: present.shape[1]])}
        mix["normal"] = float((~present.any(axis=1)).mean()) if len(self) else 0.0
        return mix

    def subset(self, indices: np.ndarray) -> "LabelledImages":
        return LabelledImages(self.images[indices], self.masks[indices])

    @staticmethod
    def concat(*parts: "LabelledImages") -> "LabelledImages":
        return LabelledImages(np.concatenate([p.images for p in parts]), np.concatenate([p.masks for p in parts]))


def load_labelled(
    version: "DatasetVersion", split: str | None = None, accepted_only: bool = True, limit: int | None = None
) -> LabelledImages:
    """Images and pathology masks of a dataset version (one split, accepted samples), masks reordered to
    PATHOLOGIES by channel name. `limit` keeps the first samples, for bounded evaluation time."""
    indices = version.select(accepted_only=accepted_only, split=split)
    if limit is not None:
        indices = indices[:limit]
    if len(indices) == 0:
        raise ValueError(f"{version.path}: no samples for split={split!r}, accepted_only={accepted_only}")
    channels = list(version.pathology_channels)
    missing = [label for label in PATHOLOGIES if label not in channels]
    if missing:
        raise ValueError(f"{version.path} has no mask channels for {missing} (it has {channels})")
    order = [channels.index(label) for label in PATHOLOGIES]
    images = stored_to_unit(np.asarray(version.images.oindex[indices]))
    masks = np.asarray(version.masks.oindex[indices])[:, order]
    return LabelledImages(images, masks.astype(np.uint8))


def real_subset(n: int, fraction: float, seed: int, min_count: int = 4) -> np.ndarray:
    """Indices of a `fraction` of n samples (at least `min_count`), drawn by a seeded permutation.

    Subsets of one seed are nested (the 5% subset lies inside the 10% one), so a curve over fractions
    adds data rather than swapping it.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"real fraction must be in (0, 1], got {fraction}")
    count = min(n, max(min_count, int(round(fraction * n))))
    return np.sort(np.random.default_rng(seed).permutation(n)[:count])


class LabelledSubset(BaseModel):
    """The scarce labelled part of a real training split: a seeded `fraction` of it (`real_subset`). Models
    trained "with scarce labels" see masks and findings of these samples only (the rest of the split as
    unlabelled images), and the downstream evaluation then gives every seed of that fraction this subset,
    so no model behind the synthetic data saw a label the scarce downstream model does not have."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(0.05, gt=0, le=1, description="share of the real training split whose labels are kept, 0-1")
    seed: int = Field(0, description="seed of the random draw of the subset")
    min_count: int = Field(4, ge=1, description="least number of labelled samples (at most the whole split)")

    def indices(self, n: int) -> np.ndarray:
        return real_subset(n, self.fraction, self.seed, self.min_count)


def oracle_subset(present: np.ndarray, exclude: np.ndarray, wanted: np.ndarray, seed: int) -> np.ndarray:
    """Real samples standing in for synthetic ones: indices into `present` (N, C) outside `exclude`, one per
    row of `wanted` (M, C) with the same set of classes where the pool has one, else the nearest set
    (fewest differing classes), drawn without replacement in a seeded order. At most the pool's size."""
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.arange(len(present)), exclude)
    pool = pool[rng.permutation(len(pool))]
    available = np.ones(len(pool), dtype=bool)
    chosen = []
    for row in wanted[rng.permutation(len(wanted))][: len(pool)]:
        distance = (present[pool] != row).sum(axis=1) + np.where(available, 0, len(row) + 1)
        k = int(np.argmin(distance))  # first (random) sample of the smallest distance
        chosen.append(pool[k])
        available[k] = False
    return np.sort(np.asarray(chosen, dtype=np.int64))


def boxes_from_masks(masks: np.ndarray, min_area: int = 4) -> dict[str, np.ndarray]:
    """Detection targets from one sample's masks (C, H, W): a box (x1, y1, x2, y2) per connected component
    (8-connected) of each class channel, label = channel index. Components under `min_area` pixels are
    dropped (speckle at mask edges, not a finding)."""
    from scipy import ndimage

    boxes, labels = [], []
    structure = np.ones((3, 3), dtype=bool)
    for c in range(masks.shape[0]):
        components, count = ndimage.label(masks[c] > 0, structure=structure)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        for k, found in enumerate(ndimage.find_objects(components), start=1):
            if found is None or sizes[k] < min_area:
                continue
            rows, cols = found
            boxes.append([cols.start, rows.start, cols.stop, rows.stop])
            labels.append(c)
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int64),
    }


# --- configuration -------------------------------------------------------------------------------


def _downstream_augmentation() -> AugmentationConfig:
    return AugmentationConfig(affine_prob=0.5, rotate_degrees=8.0, scale=0.08, translate_fraction=0.05,
                              contrast_prob=0.5, gamma=(0.85, 1.18), noise_prob=0.3, noise_std=0.02)


class TrainingSchedule(BaseModel):
    """How long a downstream model trains: until the real validation metric stops improving."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(1500, ge=1, description="optimiser steps at most")
    eval_every: int = Field(100, ge=1, description="steps between validation checks (the best check is kept)")
    patience: int = Field(4, ge=1, description="stop after this many checks without a better validation score")
    batch_size: int = Field(16, ge=1, description="training samples per optimiser step")
    learning_rate: float = Field(5e-3, gt=0, description="peak of the one-cycle schedule (warm-up, cosine decay over max_steps)")
    finetune_learning_rate: float = Field(2e-3, gt=0, description="peak when fine-tuning a pre-trained model")
    augment: bool = Field(True, description="augment the training batches (the `augmentation` settings); false: none")
    augmentation: AugmentationConfig = Field(
        default_factory=_downstream_augmentation,
        description="random affine, contrast and noise of the training batches when augment is on",
    )


class SegmentationConfig(TrainingSchedule):
    """A small MONAI UNet (multi-label sigmoid, Dice + BCE)."""

    channels: tuple[int, ...] = Field((8, 16, 32, 64), description="UNet channels per level")
    strides: tuple[int, ...] = Field((2, 2, 2), description="UNet down-sampling strides (one fewer than channels)")
    num_res_units: int = Field(0, ge=0, description="0: plain conv blocks (half the cost of 1 at 64 px)")
    norm: Literal["batch", "instance"] = Field("batch", description="UNet normalisation layers: batch or instance norm")
    prior: float = Field(0.02, gt=0, lt=0.5, description="initial foreground probability of every output pixel")
    threshold: float = Field(0.5, gt=0, lt=1, description="sigmoid threshold for a predicted mask")


class DetectionConfig(TrainingSchedule):
    """A RetinaNet with a tiny convolutional backbone (no pretrained weights)."""

    max_steps: int = Field(800, ge=1, description="optimiser steps at most")
    batch_size: int = Field(8, ge=1, description="training samples per optimiser step")
    learning_rate: float = Field(
        2e-3, gt=0, description="peak of the one-cycle schedule (warm-up, cosine decay over max_steps)"
    )
    finetune_learning_rate: float = Field(1e-3, gt=0, description="peak when fine-tuning a pre-trained model")
    # 5 layers (a 4x4 map at 64 px, a receptive field that covers the heart): full-real mAP50 0.139 in 47 s
    # against 0.098 in 95 s for (16, 32, 64) (one seed, 800 steps, demo source)
    backbone_channels: tuple[int, ...] = Field((16, 32, 64, 64, 64), description="conv widths; every layer but the last halves the size")
    anchor_sizes: tuple[float, ...] = Field((4, 8, 16, 32), description="anchor sides in pixels at 64 px (scaled with the image)")
    min_box_area: int = Field(4, ge=1, description="smallest mask component (pixels at 64 px) that becomes a box")
    score_threshold: float = Field(0.05, ge=0, lt=1, description="RetinaNet drops detections scoring below this (0-1)")


class DownstreamConfig(BaseModel):
    """Which regimes and seeds to run (the profile's `evaluate` section minus the quality metrics)."""

    model_config = ConfigDict(extra="forbid")

    tasks: tuple[Task, ...] = Field(
        ("segmentation",), description="downstream tasks to retrain and score: segmentation and/or detection"
    )
    real_fractions: tuple[float, ...] = Field((0.05, 0.10), description="shares of the real training split")
    seeds: int = Field(8, ge=1, description="paired seeds per regime (8 resolve a gain of about 0.015 Dice here)")
    base_seed: int = Field(
        0, description="seed that every downstream run's seed (init, batches, scarce subset) and the C2ST derive from"
    )
    min_real: int = Field(4, ge=1, description="least number of real images in a scarce subset")
    oracle: bool = Field(True, description="also train with real samples in place of the synthetic ones (same count and class mix)")
    oracle_fractions: tuple[float, ...] | None = Field(
        None, description="real fractions at which the oracle runs (None: all); its share is read at these")
    pretrain_fractions: tuple[float, ...] | None = Field(
        None, description="real fractions at which synthetic->real (pre-train on synthetic, fine-tune on real) runs; None: all")
    synthetic_only: bool = Field(True, description="report the synthetic-only models (the pre-training of synthetic->real)")
    full_real_seeds: int = Field(2, ge=0, description="seeds of the full-real ceiling (0: none)")
    max_synthetic: int | None = Field(None, ge=1, description="cap on synthetic samples used (None: all accepted)")
    synthetic_share: float | None = Field(
        None, gt=0, lt=1, description="real+synthetic / real+oracle: share of each batch drawn from the added samples "
        "(None: uniform over the union, so in proportion to the numbers of samples)")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the paired test")
    useful_dice: float = Field(0.5, gt=0, le=1, description="a mask counts as usable when a real-trained segmenter "
                               "re-finds it with at least this Dice (the paper's 'clinically useful')")
    workers: int = Field(2, ge=0, description="processes that train models at once (one torch thread each); 0: in this process")
    labelled_subset: LabelledSubset | None = Field(
        None, description="the scarce labels the generators and experts were trained with: at its fraction every seed "
        "gets exactly this subset (None: a fresh seeded subset per seed)")
    segmentation: SegmentationConfig = Field(
        default_factory=SegmentationConfig,
        description="the downstream segmenter (UNet, scored by Dice) and its training schedule",
    )
    detection: DetectionConfig = Field(
        default_factory=DetectionConfig,
        description="the downstream detector (RetinaNet, scored by mAP@0.5) and its training schedule",
    )


# --- models --------------------------------------------------------------------------------------


def seeded_init(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise conv and linear layers with torch's default scheme, drawn from an explicit generator:
    reproducible initial weights without touching the global random state."""
    generator = torch_generator(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    return model


def build_segmenter(config: SegmentationConfig, n_classes: int = len(PATHOLOGIES)) -> nn.Module:
    from monai.networks.nets import UNet

    if len(config.strides) != len(config.channels) - 1:
        raise ValueError(f"UNet needs one stride fewer than channels, got {config.channels} and {config.strides}")
    return UNet(
        spatial_dims=2, in_channels=1, out_channels=n_classes, channels=config.channels,
        strides=config.strides, num_res_units=config.num_res_units, norm=config.norm,
    )


@torch.no_grad()
def set_output_prior(model: nn.Module, n_classes: int, prior: float) -> None:
    """Bias the last layer so every pixel starts at probability `prior` (Lin et al. 2017, focal loss):
    lesions cover a few percent of the image, and starting at 0.5 everywhere wastes the first hundreds
    of steps unlearning false positives."""
    last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.out_channels == n_classes]
    if not last or last[-1].bias is None:
        raise ValueError("no output convolution with a bias to set the prior on")
    last[-1].bias.fill_(-math.log((1 - prior) / prior))


@torch.no_grad()
def predict_masks(model: nn.Module, images01: np.ndarray, threshold: float = 0.5, batch_size: int = 64) -> np.ndarray:
    """Binary masks (N, C, H, W) uint8 from a segmenter."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images01), batch_size):
        x = unit_to_model(torch.from_numpy(np.asarray(images01[start : start + batch_size], np.float32))[:, None])
        out.append((torch.sigmoid(model(x)) >= threshold).to(torch.uint8).numpy())
    model.train(was_training)
    return np.concatenate(out)


def evaluate_segmenter(model: nn.Module, test: LabelledImages, threshold: float = 0.5) -> dict[str, Any]:
    """Dice per class and its macro mean on `test` (empty-empty cases left out, see metrics.dice_scores)."""
    return metrics.dice_per_class(predict_masks(model, test.images, threshold), test.masks)


def build_detector(config: DetectionConfig, image_size: int, n_classes: int = len(PATHOLOGIES)) -> nn.Module:
    """torchvision RetinaNet on a tiny conv backbone (one feature map at stride 2^(layers-1)); class k of
    our vocabulary is detector label k + 1 (0 stays unused, as torchvision's convention has it).

    Single-stage on purpose: a Faster R-CNN of the same backbone spent most of each CPU step in RoIAlign's
    backward (0.14 vs 0.09 core-seconds per batch of 8 at 64 px)."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    layers: list[nn.Module] = []
    in_channels = 1
    for i, width in enumerate(config.backbone_channels):
        stride = 2 if i < len(config.backbone_channels) - 1 else 1
        layers += [nn.Conv2d(in_channels, width, 3, stride=stride, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    backbone = nn.Sequential(*layers)
    backbone.out_channels = in_channels
    scale = image_size / 64
    anchors = AnchorGenerator(sizes=(tuple(float(s * scale) for s in config.anchor_sizes),), aspect_ratios=((0.5, 1.0, 2.0),))
    return RetinaNet(
        backbone,
        num_classes=n_classes + 1,
        min_size=image_size,
        max_size=image_size,
        image_mean=[0.0],
        image_std=[1.0],
        anchor_generator=anchors,
        score_thresh=config.score_threshold,
        detections_per_img=30,
    )


@torch.no_grad()
def retinanet_head_init(model: nn.Module, seed: int, prior: float = 0.01) -> None:
    """RetinaNet's own head initialisation (Lin et al. 2017: weights N(0, 0.01), classification bias at the
    foreground prior) redone from an explicit generator after `seeded_init`: focal loss learns slowly
    without the prior."""
    generator = torch_generator(seed)
    for part in (model.head.classification_head, model.head.regression_head):
        for module in part.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01, generator=generator)
                nn.init.zeros_(module.bias)
    nn.init.constant_(model.head.classification_head.cls_logits.bias, -math.log((1 - prior) / prior))


def _min_box_area(config: DetectionConfig, size: int) -> int:
    return max(1, int(round(config.min_box_area * (size / 64) ** 2)))


@torch.no_grad()
def predict_boxes(model: nn.Module, images01: np.ndarray, batch_size: int = 32) -> list[dict[str, np.ndarray]]:
    """Per image {"boxes", "scores", "labels" (our class indices)}."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images01), batch_size):
        x = unit_to_model(torch.from_numpy(np.asarray(images01[start : start + batch_size], np.float32))[:, None])
        for found in model(list(x)):
            out.append({"boxes": found["boxes"].numpy(), "scores": found["scores"].numpy(), "labels": found["labels"].numpy() - 1})
    model.train(was_training)
    return out


def evaluate_detector(model: nn.Module, test: LabelledImages, min_box_area: int = 4) -> dict[str, Any]:
    """mAP@0.5 on `test`, ground-truth boxes from its masks' components."""
    min_area = max(1, int(round(min_box_area * (test.images.shape[-1] / 64) ** 2)))
    targets = [boxes_from_masks(mask, min_area) for mask in test.masks]
    return metrics.mean_average_precision(predict_boxes(model, test.images), targets)


@dataclass
class DownstreamModel:
    """How one task builds, trains and scores its model (see `downstream_model`)."""

    config: TrainingSchedule
    build: Callable[[int, int], nn.Module]  # (image size, seed) -> a freshly initialised model
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, images [-1, 1], masks) -> loss
    score: Callable[[nn.Module, LabelledImages], dict[str, Any]]  # -> {"mean", "per_class", ...}


class _DiceBCEWithLogits(torch.autograd.Function):
    """Soft Dice (MONAI's DiceLoss with sigmoid=True, smooth_nr = smooth_dr) + mean BCE-with-logits, in one
    pass with a closed-form gradient. Why: on one CPU thread the step of the small downstream UNet spent a
    quarter of its time in this loss (torch's log-sigmoid and log1p are not vectorised; MONAI and BCE each
    take their own sigmoid and keep its graph). Here one vectorised sigmoid serves both terms and the
    backward is one fused expression. tests/test_retrain.py checks value and gradient against MONAI + torch."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, batch_dice: bool, smooth: float) -> torch.Tensor:
        p = torch.sigmoid(logits)
        dims = ([0] if batch_dice else []) + list(range(2, logits.ndim))
        overlap, total = (p * target).sum(dims), p.sum(dims) + target.sum(dims)
        dice = 1 - (2 * overlap + smooth) / (total + smooth)
        # softplus(x) - x*y, as relu(x) - x*y - log(sigmoid(|x|)): the log of a value in [0.5, 1]
        bce = logits.clamp(min=0) - logits * target - torch.log(torch.where(logits >= 0, p, 1 - p))
        ctx.save_for_backward(p, target, overlap, total)
        ctx.batch_dice, ctx.smooth, ctx.n_dice = batch_dice, smooth, dice.numel()
        return dice.mean() + bce.mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        p, target, overlap, total = ctx.saved_tensors
        spatial = (1,) * (p.ndim - 2)
        shape = (1, p.shape[1], *spatial) if ctx.batch_dice else (p.shape[0], p.shape[1], *spatial)
        denominator = (total + ctx.smooth).view(shape)
        numerator = (2 * overlap + ctx.smooth).view(shape)
        d_dice = (numerator - 2 * target * denominator) / (denominator**2 * ctx.n_dice)  # d(dice mean) / dp
        d_logits = d_dice * p * (1 - p) + (p - target) / p.numel()
        return grad * d_logits, None, None, None


def multilabel_segmentation_loss(batch_dice: bool, smooth: float = 1e-5) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Dice + BCE on independent sigmoids (findings overlap). Not MONAI's DiceCELoss: with more than one
    channel its CE term is a softmax across channels, which a pixel with no finding adds nothing to: only
    Dice argues against false alarms there. On the demo the switch left every headline within its noise.
    `batch_dice`: one Dice per class over the whole batch (else per sample and class)."""
    return lambda logits, target: _DiceBCEWithLogits.apply(logits, target.to(logits.dtype), batch_dice, smooth)


def downstream_model(task: Task, config: DownstreamConfig) -> DownstreamModel:
    """The task's model, loss and metric."""
    if task == "segmentation":
        seg = config.segmentation
        # batch Dice: over the whole batch per class, so a sample without a finding adds no degenerate 0/0 term
        dice_bce = multilabel_segmentation_loss(batch_dice=True)

        def build(size: int, seed: int) -> nn.Module:
            model = seeded_init(build_segmenter(seg), derive_seed(seed, "init"))
            set_output_prior(model, len(PATHOLOGIES), seg.prior)
            return model

        return DownstreamModel(seg, build, lambda model, x, y: dice_bce(model(x), y),
                               lambda model, data: evaluate_segmenter(model, data, seg.threshold))
    if task == "detection":
        det = config.detection

        def build(size: int, seed: int) -> nn.Module:
            model = seeded_init(build_detector(det, size), derive_seed(seed, "init"))
            retinanet_head_init(model, derive_seed(seed, "head"))
            return model

        def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            area = _min_box_area(det, x.shape[-1])
            targets = []
            for mask in y.numpy():
                found = boxes_from_masks(mask, area)
                targets.append({"boxes": torch.from_numpy(found["boxes"]), "labels": torch.from_numpy(found["labels"] + 1)})
            return sum(model(list(x), targets).values())

        return DownstreamModel(det, build, loss, lambda model, data: evaluate_detector(model, data, det.min_box_area))
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASK_METRIC)}")


# --- training ------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """A trained model (its best validation checkpoint) and how the training went."""

    model: nn.Module
    best_step: int
    steps: int
    val_history: list[float | None]
    seconds: float


def sample_weights(sizes: Sequence[int], added_share: float | None) -> np.ndarray | None:
    """Drawing weights for [real, added] parts: each batch holds `added_share` added samples on average.
    None (or a single part): uniform over all samples, i.e. in proportion to the parts' sizes."""
    if added_share is None or len(sizes) < 2:
        return None
    real, added = sizes
    return np.concatenate([np.full(real, (1 - added_share) / real), np.full(added, added_share / added)])


def fit(
    task_model: DownstreamModel,
    train: LabelledImages,
    val: LabelledImages | None,
    seed: int,
    weights: np.ndarray | None = None,
    init: dict[str, torch.Tensor] | None = None,
) -> FitResult:
    """Train from a seeded initialisation (or the weights `init`, fine-tuning) with AdamW and a one-cycle
    schedule; keep the checkpoint with the best validation score and stop after `patience` checks without
    a better one. Without `val`, train `max_steps` and keep the last weights."""
    config = task_model.config
    if len(train) == 0:
        raise ValueError("no training samples")
    started = time.perf_counter()
    model = task_model.build(train.images.shape[-1], seed)
    if init is not None:
        model.load_state_dict(init)
    model.train()
    peak = config.finetune_learning_rate if init is not None else config.learning_rate
    optimiser = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=peak, total_steps=config.max_steps,
                                                   pct_start=min(0.3, 50 / config.max_steps + 0.05))
    rng = np.random.default_rng(derive_seed(seed, "batches"))
    p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
    augment = PairedAugmentation(config.augmentation, derive_seed(seed, "augment")) if config.augment else None
    images = torch.from_numpy(train.images)[:, None]
    masks = torch.from_numpy(train.masks.astype(np.float32))
    best_score, best_step, best_state, since_best = -math.inf, 0, None, 0
    history: list[float | None] = []
    step = 0
    for step in range(1, config.max_steps + 1):
        index = torch.from_numpy(rng.choice(len(train), config.batch_size, p=p))
        x, y = images[index], masks[index]
        if augment is not None:
            x, y = augment(x, y)
        loss = task_model.loss(model, unit_to_model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        schedule.step()
        if val is not None and (step % config.eval_every == 0 or step == config.max_steps):
            score = task_model.score(model, val)["mean"]
            history.append(score)
            if score is not None and score > best_score:
                best_score, best_step, since_best = score, step, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                if since_best >= config.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_step = step
    return FitResult(model.eval(), best_step, step, history, time.perf_counter() - started)


def train_segmenter(data: LabelledImages, config: SegmentationConfig, seed: int, val: LabelledImages | None = None,
                    weights: np.ndarray | None = None) -> nn.Module:
    """A downstream segmenter trained on `data` (its best checkpoint on `val`, if given)."""
    return fit(downstream_model("segmentation", DownstreamConfig(segmentation=config)), data, val, seed, weights).model


def train_detector(data: LabelledImages, config: DetectionConfig, seed: int, val: LabelledImages | None = None,
                   weights: np.ndarray | None = None) -> nn.Module:
    """A downstream detector trained on `data` (its best checkpoint on `val`, if given)."""
    return fit(downstream_model("detection", DownstreamConfig(detection=config)), data, val, seed, weights).model


# --- jobs ----------------------------------------------------------------------------------------


@dataclass
class Job:
    """One model to train and score: a regime at a real fraction for one seed."""

    task: Task
    config: DownstreamConfig
    train_set: str
    real_fraction: float
    seed_index: int
    seed: int
    parts: tuple[tuple[LabelledImages, np.ndarray | None], ...]  # the training set: (data, indices or all) joined
    val: LabelledImages | None
    test: LabelledImages
    n_real: int
    n_added: int
    weights: np.ndarray | None = None
    init: dict[str, torch.Tensor] | None = None
    keep_weights: bool = False  # return the trained weights (pre-training for synthetic->real)
    resegment: LabelledImages | None = None  # also re-segment these (fidelity of the synthetic masks)

    def train(self) -> LabelledImages:
        """The training set, joined where the job runs (the planner holds only references and indices)."""
        return LabelledImages.concat(*(data if index is None else data.subset(index) for data, index in self.parts))


@dataclass
class JobResult:
    train_set: str
    real_fraction: float
    seed_index: int
    n_real: int
    n_added: int
    score: dict[str, Any]
    best_step: int
    steps: int
    seconds: float
    weights: dict[str, torch.Tensor] | None = None
    resegmented: dict[str, Any] | None = None


def run_job(job: Job) -> JobResult:
    """Train and score one job (in a worker process or in this one)."""
    task_model = downstream_model(job.task, job.config)
    result = fit(task_model, job.train(), job.val, job.seed, job.weights, job.init)
    score = task_model.score(result.model, job.test)
    resegmented = None
    if job.resegment is not None and job.task == "segmentation":
        resegmented = {
            "synthetic": fidelity_summary(predict_masks(result.model, job.resegment.images, job.config.segmentation.threshold),
                                          job.resegment.masks, job.config.useful_dice),
            "real_test": fidelity_summary(predict_masks(result.model, job.test.images, job.config.segmentation.threshold),
                                          job.test.masks, job.config.useful_dice),
        }
    weights = {k: v.detach().clone() for k, v in result.model.state_dict().items()} if job.keep_weights else None
    return JobResult(job.train_set, job.real_fraction, job.seed_index, job.n_real, job.n_added, _plain_score(score),
                     result.best_step, result.steps, round(result.seconds, 2), weights, resegmented)


def _plain_score(score: dict[str, Any]) -> dict[str, Any]:
    return {k: score[k] for k in ("mean", "per_class", "pooled") if k in score}


def fidelity_summary(predicted: np.ndarray, masks: np.ndarray, useful_dice: float) -> dict[str, Any]:
    """How well a real-trained segmenter re-finds a set's own masks: pooled Dice per class, and the share of
    samples with findings whose masks it re-finds with Dice >= `useful_dice` (mean over their classes)."""
    scores = metrics.dice_per_class(predicted, masks)
    per_sample = metrics.dice_scores(predicted, masks)  # NaN where both are empty
    present = masks.reshape(len(masks), masks.shape[1], -1).any(axis=2)
    with_findings = present.any(axis=1)
    sample_dice = np.array([np.nanmean(np.where(present[i], per_sample[i], np.nan)) for i in np.flatnonzero(with_findings)])
    return {
        "pooled_dice": scores["pooled"]["mean"],
        "pooled_per_class": scores["pooled"]["per_class"],
        "samples_with_findings": int(with_findings.sum()),
        "useful_share": float((sample_dice >= useful_dice).mean()) if sample_dice.size else None,
    }


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `n` for the block, and restored after (process-wide: torch has
    no per-thread setting)."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _worker_init() -> None:
    torch.set_num_threads(1)


def execute(jobs: list[Job], followers: Callable[[JobResult], list[Job]], workers: int,
            progress: Callable[[JobResult, int, int], None]) -> list[JobResult]:
    """Run `jobs`, then the jobs `followers` makes from each result as soon as it is in, on `workers`
    processes (0: here, one torch thread). Results come back in no particular order."""
    results: list[JobResult] = []
    if workers == 0:
        queue = list(jobs)
        with torch_threads(1):
            while queue:
                result = run_job(queue.pop(0))
                results.append(result)
                queue.extend(followers(result))
                progress(result, len(results), len(results) + len(queue))
        return results
    context = multiprocessing.get_context("spawn")  # fork would copy the parent's Prefect and torch threads
    queue = list(jobs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
        pending: set[Future] = set()
        while queue or pending:
            while queue and len(pending) < workers + 1:  # a few in flight: each job carries its training data
                pending.add(pool.submit(run_job, queue.pop(0)))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                results.append(result)
                queue[:0] = followers(result)  # fine-tuning next: its pre-training is done
                progress(result, len(results), len(results) + len(pending) + len(queue))
    return results


# --- statistics ----------------------------------------------------------------------------------


def paired_comparison(baseline: Sequence[float | None], other: Sequence[float | None], alpha: float = 0.05) -> dict[str, Any]:
    """Mean of the per-seed differences other - baseline, its standard error, 95% interval and the two-sided
    paired t-test's p-value; `significant` when p < alpha (needs at least 3 seeds)."""
    from scipy import stats

    pairs = [(a, b) for a, b in zip(baseline, other) if a is not None and b is not None]
    d = np.asarray([b - a for a, b in pairs], np.float64)
    n = d.size
    out: dict[str, Any] = {"seeds": n, "gain": float(d.mean()) if n else None, "gain_std": None, "se": None,
                           "ci95": None, "p_value": None, "significant": False}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    p = float(2 * stats.t.sf(abs(d.mean()) / se, n - 1)) if se > 0 else (0.0 if d.mean() != 0 else 1.0)
    out.update(gain_std=sd, se=se, ci95=[float(d.mean() - half), float(d.mean() + half)], p_value=p,
               significant=bool(n >= 3 and p < alpha))
    return out


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value); None for no values."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if arr.size == 0:
        return None, None
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


# --- the evaluation ------------------------------------------------------------------------------


def run_downstream(
    task: Task,
    real_train: LabelledImages,
    real_test: LabelledImages,
    synthetic: LabelledImages | None,
    config: DownstreamConfig,
    sources: dict[str, Any] | None = None,
    real_val: LabelledImages | None = None,
    labels_seen: dict[str, Any] | None = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> dict[str, Any]:
    """Train and score every regime x seed for one task; returns the `evaluation.json` document. Each
    finished model is a progress line on `log` (the Prefect run logger in a flow: the terminal and the UI).

    Shape (detection has the same with "metric": "map50"):
        {"schema_version", "task", "metric", "classes", "test_method",
         "regimes": [{"real_fraction", "train_set", "n_real", "n_synthetic", "n_added", "mean", "std", "seeds",
                      "values", "per_class", "per_class_std", "pooled_mean", "pooled_std", "steps", "best_steps",
                      "seconds"}],
         "comparisons": [{"real_fraction", "train_set", "baseline": "real", "gain", "gain_std", "se", "ci95",
                          "p_value", "significant", "seeds"}],
         "gains": [{"real_fraction", "real", "real+synthetic", "gain", "gain_std", "se", "ci95", "p_value",
                    "significant", "improved", "oracle_gain", "oracle_share"}],
         "fidelity": {"synthetic": {...}, "real_test": {...}, "ratio"} | None,
         "labels_seen", "test": {"n"}, "val": {"n"}, "real_train": {"n"}, "synthetic": {"n", "class_mix"} | None,
         "config", "sources", "seconds"}
    `gain` is the mean over seeds of the paired difference to "real" (same real subset and initial weights);
    `oracle_share` = gain of real+synthetic / gain of real+oracle at that fraction.
    """
    started = time.perf_counter()
    if synthetic is not None and config.max_synthetic is not None:
        synthetic = synthetic.subset(np.arange(min(len(synthetic), config.max_synthetic)))
    if synthetic is not None and len(synthetic) == 0:
        synthetic = None
    if real_val is None:
        logger.warning("%s: no real validation split: every model trains its full %d steps and keeps its last weights",
                       task, downstream_model(task, config).config.max_steps)
    jobs, followers = plan_jobs(task, real_train, real_val, real_test, synthetic, config)
    total = len(jobs) + sum(1 for j in jobs if j.keep_weights) * len(_pretrain_fractions(config))

    log = log or logger

    def progress(result: JobResult, done: int, known: int) -> None:
        log.info("%s %s at %.0f%% real, seed %d: %s %s (best step %d of %d, %.1f s) [%d/%d]", task, result.train_set,
                    100 * result.real_fraction, result.seed_index, TASK_METRIC[task], _fmt(result.score.get("mean")),
                    result.best_step, result.steps, result.seconds, done, max(known, total))

    results = execute(jobs, followers, config.workers, progress)
    document = summarise(task, results, config)
    document.update(
        test={"n": len(real_test)},
        val={"n": len(real_val) if real_val is not None else 0},
        real_train={"n": len(real_train)},
        synthetic={"n": len(synthetic), "class_mix": synthetic.class_mix()} if synthetic is not None else None,
        real_class_mix=real_train.class_mix(),
        labels_seen=labels_seen or {},
        config=config.model_dump(mode="json"),
        sources=sources or {},
        seconds=round(time.perf_counter() - started, 2),
    )
    return document


def _pretrain_fractions(config: DownstreamConfig) -> tuple[float, ...]:
    return tuple(sorted(config.real_fractions if config.pretrain_fractions is None else config.pretrain_fractions))


def _oracle_fractions(config: DownstreamConfig) -> tuple[float, ...]:
    return tuple(sorted(config.real_fractions if config.oracle_fractions is None else config.oracle_fractions))


def plan_jobs(task: Task, real_train: LabelledImages, real_val: LabelledImages | None, real_test: LabelledImages,
              synthetic: LabelledImages | None, config: DownstreamConfig) -> tuple[list[Job], Callable[[JobResult], list[Job]]]:
    """Every independent job, and how a pre-training result turns into its fine-tuning jobs."""
    jobs: list[Job] = []
    present = real_train.present()
    wanted = synthetic.present() if synthetic is not None else None
    subsets: dict[tuple[int, float], np.ndarray] = {}

    def job(train_set: str, fraction: float, s: int, parts: list[tuple[LabelledImages, np.ndarray | None]], n_real: int,
            n_added: int, **extra) -> Job:
        return Job(task, config, train_set, fraction, s, derive_seed(config.base_seed, task, s), tuple(parts), real_val, real_test,
                   n_real, n_added, **extra)

    for s in range(config.seeds):
        seed = derive_seed(config.base_seed, task, s)
        for fraction in sorted(config.real_fractions):
            subset = _subset(len(real_train), fraction, seed, config)
            subsets[(s, fraction)] = subset
            scarce = (real_train, subset)
            jobs.append(job("real", fraction, s, [scarce], len(subset), 0))
            if synthetic is None:
                continue
            weights = sample_weights([len(subset), len(synthetic)], config.synthetic_share)
            jobs.append(job("real+synthetic", fraction, s, [scarce, (synthetic, None)], len(subset), len(synthetic), weights=weights))
            if config.oracle and fraction in _oracle_fractions(config):
                oracle = oracle_subset(present, subset, wanted, derive_seed(seed, "oracle", str(fraction)))
                jobs.append(job("real+oracle", fraction, s, [scarce, (real_train, oracle)], len(subset), len(oracle),
                                weights=sample_weights([len(subset), len(oracle)], config.synthetic_share)))
        if synthetic is not None and (config.synthetic_only or _pretrain_fractions(config)):
            jobs.append(job("synthetic", 0.0, s, [(synthetic, None)], 0, len(synthetic), keep_weights=bool(_pretrain_fractions(config))))
    for s in reversed(range(config.full_real_seeds)):  # the longest runs first: no long tail on one worker at the end
        jobs.insert(0, job("full-real", 1.0, s, [(real_train, None)], len(real_train), 0,
                           resegment=synthetic if s == 0 and task == "segmentation" else None))

    def followers(result: JobResult) -> list[Job]:
        if result.train_set != "synthetic" or result.weights is None:
            return []
        out = []
        for fraction in _pretrain_fractions(config):
            subset = subsets.get((result.seed_index, fraction))
            if subset is None:
                subset = _subset(len(real_train), fraction, derive_seed(config.base_seed, task, result.seed_index), config)
            out.append(job("synthetic->real", fraction, result.seed_index, [(real_train, subset)], len(subset),
                           result.n_added, init=result.weights))
        return out

    return jobs, followers


def _subset(n: int, fraction: float, seed: int, config: DownstreamConfig) -> np.ndarray:
    """The real subset of a seed at a fraction: the fixed labelled subset at its own fraction (and inside
    every larger one: the rest drawn around it), else a seeded draw per seed."""
    fixed = config.labelled_subset
    if fixed is not None and fraction == fixed.fraction:
        return fixed.indices(n)
    subset = real_subset(n, fraction, derive_seed(seed, "subset"), config.min_real)
    if fixed is not None and fraction > fixed.fraction:  # keep the subsets nested: the labelled one plus others
        core = fixed.indices(n)
        taken = set(core.tolist())
        extra = [i for i in np.random.default_rng(derive_seed(seed, "subset")).permutation(n) if i not in taken]
        subset = np.sort(np.concatenate([core, np.asarray(extra[: max(0, len(subset) - len(core))], np.int64)]))
    return subset


REGIME_ORDER = ("real", "real+synthetic", "real+oracle", "synthetic->real", "synthetic", "full-real")


def summarise(task: Task, results: list[JobResult], config: DownstreamConfig) -> dict[str, Any]:
    """Rows per regime, paired comparisons to "real", the headline gains with the oracle share, fidelity."""
    groups: dict[tuple[float, str], list[JobResult]] = {}
    for result in results:
        groups.setdefault((result.real_fraction, result.train_set), []).append(result)
    rows = []
    by_seed: dict[tuple[float, str], dict[int, float | None]] = {}
    for key in sorted(groups, key=lambda k: (k[1] in ("synthetic", "full-real"), k[0], REGIME_ORDER.index(k[1]))):
        fraction, train_set = key
        runs = sorted(groups[key], key=lambda r: r.seed_index)
        by_seed[key] = {r.seed_index: r.score.get("mean") for r in runs}
        mean, std = _mean_std([r.score.get("mean") for r in runs])
        per_class, per_class_std = {}, {}
        for label in PATHOLOGIES:
            per_class[label], per_class_std[label] = _mean_std([r.score["per_class"].get(label) for r in runs])
        row = {
            "real_fraction": fraction, "train_set": train_set, "n_real": runs[0].n_real,
            "n_synthetic": runs[0].n_added if train_set in ("real+synthetic", "synthetic", "synthetic->real") else 0,
            "n_added": runs[0].n_added, "mean": mean, "std": std, "seeds": len(runs),
            "values": [r.score.get("mean") for r in runs], "per_class": per_class, "per_class_std": per_class_std,
            "steps": [r.steps for r in runs], "best_steps": [r.best_step for r in runs],
            "seconds": round(sum(r.seconds for r in runs), 2),
        }
        if all("pooled" in r.score for r in runs):
            row["pooled_mean"], row["pooled_std"] = _mean_std([r.score["pooled"]["mean"] for r in runs])
        rows.append(row)

    comparisons, gains = [], []
    for fraction in sorted({f for f, t in groups if t == "real"}):
        base = by_seed[(fraction, "real")]
        found = {}
        for train_set in COMPARED:
            if (fraction, train_set) not in by_seed:
                continue
            other = by_seed[(fraction, train_set)]
            seeds = sorted(set(base) & set(other))
            found[train_set] = paired_comparison([base[s] for s in seeds], [other[s] for s in seeds], config.alpha)
            comparisons.append({"real_fraction": fraction, "train_set": train_set, "baseline": "real", **found[train_set]})
        if "real+synthetic" in found:
            synthetic, oracle = found["real+synthetic"], found.get("real+oracle")
            share = None
            if oracle and oracle["gain"] is not None and oracle["gain"] > 0 and synthetic["gain"] is not None:
                share = synthetic["gain"] / oracle["gain"]
            gains.append({
                "real_fraction": fraction,
                "real": _mean_std(list(base.values()))[0],
                "real+synthetic": _mean_std(list(by_seed[(fraction, "real+synthetic")].values()))[0],
                **{k: synthetic[k] for k in ("gain", "gain_std", "se", "ci95", "p_value", "significant", "seeds")},
                "improved": bool(synthetic["significant"] and synthetic["gain"] > 0),
                "oracle_gain": oracle["gain"] if oracle else None,
                "oracle_significant": oracle["significant"] if oracle else None,
                "oracle_share": share,
                "pretrain_gain": found.get("synthetic->real", {}).get("gain"),
                "pretrain_significant": found.get("synthetic->real", {}).get("significant"),
            })
    fidelity = next((r.resegmented for r in results if r.resegmented is not None), None)
    if fidelity is not None:
        real_dice, synthetic_dice = fidelity["real_test"]["pooled_dice"], fidelity["synthetic"]["pooled_dice"]
        fidelity["ratio"] = synthetic_dice / real_dice if real_dice and synthetic_dice is not None else None
        fidelity["segmenter"] = "the full-real ceiling model of seed 0 (trained on the real train split only)"
    return {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "metric": TASK_METRIC[task],
        "classes": list(PATHOLOGIES),
        "test_method": f"{TEST_METHOD}; significant at p < {config.alpha}",
        "regimes": rows,
        "comparisons": comparisons,
        "gains": gains,
        "fidelity": fidelity,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
