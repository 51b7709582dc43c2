"""Downstream retraining: does synthetic data help models trained on scarce real data?

For each regime - a fraction of the real training split alone ("real"), the same real images plus the
accepted synthetic samples ("real+synthetic"), or the synthetic samples alone ("synthetic") - a small model
is trained from scratch for a fixed number of steps (the same compute in every regime) and scored on the
held-out real test split, for several seeds. Real and real+synthetic runs of one seed share the real subset
and the initial weights, so their difference is the effect of the synthetic data alone.

    segmentation  MONAI UNet, one sigmoid channel per pathology class  -> Dice (metrics.dice_per_class)
    detection     torchvision RetinaNet with a tiny backbone, boxes from mask components -> mAP@0.5

Augmentation moves image and masks together with MONAI dictionary transforms (bilinear for the image,
nearest for the masks), seeded explicitly; boxes are derived after augmentation, so they move too.
No pretrained weights anywhere: every model starts from a seeded random initialisation.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from aurad_models import metrics
from aurad_models.pixels import stored_to_unit, unit_to_model
from aurad_models.seeding import derive_seed, torch_generator
from aurad_models.vocabulary import PATHOLOGIES

if TYPE_CHECKING:
    from storage import DatasetVersion

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TrainSet = Literal["real", "real+synthetic", "synthetic"]
Task = Literal["segmentation", "detection"]
TASK_METRIC = {"segmentation": "dice", "detection": "map50"}


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


class SegmentationConfig(BaseModel):
    """A small MONAI UNet trained for a fixed number of steps."""

    model_config = ConfigDict(extra="forbid")

    channels: tuple[int, ...] = Field((8, 16, 32), description="UNet channels per level")
    strides: tuple[int, ...] = Field((2, 2), description="UNet down-sampling strides (one fewer than channels)")
    num_res_units: int = Field(0, ge=0, description="0: plain conv blocks (half the cost of 1, learned as well at 64 px)")
    steps: int = Field(300, ge=1, description="optimiser steps, the same in every regime")
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-2, gt=0)
    augment: bool = True
    loader_workers: int = Field(1, ge=0, le=1, description="1: augment in a worker process beside training; 0: in-process")
    prior: float = Field(0.02, gt=0, lt=0.5, description="initial foreground probability of every output pixel")
    threshold: float = Field(0.5, gt=0, lt=1, description="sigmoid threshold for a predicted mask")


class DetectionConfig(BaseModel):
    """A RetinaNet with a tiny convolutional backbone (no pretrained weights), fixed steps."""

    model_config = ConfigDict(extra="forbid")

    backbone_channels: tuple[int, ...] = Field((16, 32, 64), description="conv widths; every layer but the last halves the size")
    anchor_sizes: tuple[float, ...] = Field((4, 8, 16, 32), description="anchor sides in pixels at 64 px (scaled with the image)")
    steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    augment: bool = True
    loader_workers: int = Field(1, ge=0, le=1, description="1: augment in a worker process beside training; 0: in-process")
    min_box_area: int = Field(4, ge=1, description="smallest mask component (pixels at 64 px) that becomes a box")
    score_threshold: float = Field(0.05, ge=0, lt=1)


class DownstreamConfig(BaseModel):
    """Which regimes and seeds to run (the profile's `evaluate` section minus the quality metrics)."""

    model_config = ConfigDict(extra="forbid")

    tasks: tuple[Task, ...] = ("segmentation",)
    real_fractions: tuple[float, ...] = Field((0.05, 0.10), description="shares of the real training split")
    synthetic_only: bool = Field(True, description="also train on the synthetic samples alone")
    full_real: bool = Field(False, description="also train on the whole real training split (the ceiling)")
    seeds: int = Field(2, ge=1)
    base_seed: int = 0
    min_real: int = Field(4, ge=1, description="least number of real images in a scarce subset")
    max_synthetic: int | None = Field(None, ge=1, description="cap on synthetic samples used (None: all accepted)")
    torch_threads: int | None = Field(
        1, ge=1, description="torch intra-op threads while training and scoring (restored after); None: leave "
        "torch's setting. 1 because these models are tiny: measured 3x faster than 2 threads on a busy 2-core "
        "machine, and the augmentation worker takes the other core")
    synthetic_share: float | None = Field(
        None, gt=0, lt=1, description="real+synthetic: share of each batch drawn from the synthetic samples "
        "(None: uniform over the union, so in proportion to the numbers of samples)")
    segmentation: SegmentationConfig = SegmentationConfig()
    detection: DetectionConfig = DetectionConfig()


# --- augmentation --------------------------------------------------------------------------------


def make_augmentation(seed: int, image_size: int):
    """MONAI dictionary transforms over {"image": (1, H, W), "label": (C, H, W)}: one random affine drawn for
    both keys (bilinear for the image, nearest for the masks), then intensity jitter on the image only.

    No left-right flip: it would put the heart on the wrong side. Seeded from `seed`, independent of any
    global random state.
    """
    from monai.transforms import Compose, RandAffined, RandGaussianNoised, RandScaleIntensityd

    shift = 0.05 * image_size
    transform = Compose(
        [
            RandAffined(
                keys=("image", "label"),
                prob=0.5,  # the affine is most of the augmentation cost: half the samples keep their geometry
                rotate_range=(math.radians(8),),
                scale_range=(0.08, 0.08),
                translate_range=(shift, shift),
                mode=("bilinear", "nearest"),
                padding_mode=("border", "zeros"),
            ),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandGaussianNoised(keys="image", prob=0.3, std=0.02),
        ]
    )
    transform.set_random_state(seed=seed % 2**32)
    return transform


def _batch(data: LabelledImages, indices: np.ndarray, augmentation) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 1, H, W) in the model range [-1, 1] and masks (B, C, H, W) float, augmented if asked."""
    images = torch.from_numpy(data.images[indices])[:, None]
    masks = torch.from_numpy(data.masks[indices].astype(np.float32))
    if augmentation is not None:
        pairs = [augmentation({"image": image, "label": mask}) for image, mask in zip(images, masks)]
        images = torch.stack([_plain(p["image"]) for p in pairs]).clamp(0, 1)
        masks = torch.stack([_plain(p["label"]) for p in pairs])
    return unit_to_model(images), masks


def _plain(x: Any) -> torch.Tensor:
    """A float tensor without MONAI's metadata (a MetaTensor when transforms run with metadata tracking)."""
    return (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)).float()


class TrainingBatches(torch.utils.data.IterableDataset):
    """`steps` batches of random training samples, augmented, as one seeded stream.

    Served by a DataLoader worker process so that MONAI's per-sample transforms (many small tensor ops,
    which crawl when they compete for threads with the training step) run single-threaded beside the
    training. All randomness is created inside `__iter__` from `seed`: the stream is identical with zero or
    one worker.
    """

    def __init__(
        self, data: LabelledImages, steps: int, batch_size: int, seed: int, augment: bool, weights: np.ndarray | None = None
    ) -> None:
        self.data, self.steps, self.batch_size, self.seed, self.augment = data, steps, batch_size, seed, augment
        self.p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.num_workers > 1:
            raise ValueError("TrainingBatches is one seeded stream: use at most one worker")
        if worker is not None:
            from monai.data import set_track_meta

            set_track_meta(False)  # this worker process only: plain tensors, no metadata bookkeeping
        rng = np.random.default_rng(derive_seed(self.seed, "batches"))
        augmentation = make_augmentation(derive_seed(self.seed, "augment"), self.data.images.shape[-1]) if self.augment else None
        for _ in range(self.steps):
            yield _batch(self.data, rng.choice(len(self.data), self.batch_size, p=self.p), augmentation)


def training_batches(
    data: LabelledImages, steps: int, batch_size: int, seed: int, augment: bool, workers: int, weights: np.ndarray | None = None
):
    """Iterate the training stream, in a worker process when `workers` is 1 (the default). `weights`: per
    sample drawing weights (None: uniform)."""
    stream = TrainingBatches(data, steps, batch_size, seed, augment, weights)
    if workers == 0:
        return iter(stream)
    return iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=1, prefetch_factor=4))


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


# --- segmentation --------------------------------------------------------------------------------


def build_segmenter(config: SegmentationConfig, n_classes: int = len(PATHOLOGIES)) -> nn.Module:
    from monai.networks.nets import UNet

    if len(config.strides) != len(config.channels) - 1:
        raise ValueError(f"UNet needs one stride fewer than channels, got {config.channels} and {config.strides}")
    return UNet(
        spatial_dims=2, in_channels=1, out_channels=n_classes, channels=config.channels,
        strides=config.strides, num_res_units=config.num_res_units,
    )


def train_segmenter(
    data: LabelledImages, config: SegmentationConfig, seed: int, weights: np.ndarray | None = None
) -> nn.Module:
    """Train a UNet (multi-label sigmoid, Dice + BCE loss) for `config.steps` steps on `data`, drawing
    samples by `weights` (None: uniformly)."""
    from monai.losses import DiceCELoss

    if len(data) == 0:
        raise ValueError("no training samples")
    model = seeded_init(build_segmenter(config, data.masks.shape[1]), derive_seed(seed, "init"))
    set_output_prior(model, data.masks.shape[1], config.prior)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    # batch=True: Dice over the whole batch per class, so a sample without a finding adds no degenerate
    # 0/0 term; BCE beside it gives every pixel a gradient from the first step
    loss_fn = DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    for images, masks in training_batches(data, config.steps, config.batch_size, seed, config.augment, config.loader_workers, weights):
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), masks)
        loss.backward()
        optimiser.step()
    return model.eval()


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
    model.eval()
    out = []
    for start in range(0, len(images01), batch_size):
        x = unit_to_model(torch.from_numpy(np.asarray(images01[start : start + batch_size], np.float32))[:, None])
        out.append((torch.sigmoid(model(x)) >= threshold).to(torch.uint8).numpy())
    return np.concatenate(out)


def evaluate_segmenter(model: nn.Module, test: LabelledImages, threshold: float = 0.5) -> dict[str, Any]:
    """Dice per class and its macro mean on `test` (empty-empty cases left out, see metrics.dice_scores)."""
    return metrics.dice_per_class(predict_masks(model, test.images, threshold), test.masks)


# --- detection -----------------------------------------------------------------------------------


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


def _detection_targets(masks: torch.Tensor, min_area: int) -> list[dict[str, torch.Tensor]]:
    targets = []
    for mask in masks.numpy():
        found = boxes_from_masks(mask, min_area)
        targets.append({"boxes": torch.from_numpy(found["boxes"]), "labels": torch.from_numpy(found["labels"] + 1)})
    return targets


def train_detector(data: LabelledImages, config: DetectionConfig, seed: int, weights: np.ndarray | None = None) -> nn.Module:
    """Train the detector for `config.steps` steps; boxes come from the (augmented) masks' components."""
    if len(data) == 0:
        raise ValueError("no training samples")
    size = data.images.shape[-1]
    min_area = max(1, int(round(config.min_box_area * (size / 64) ** 2)))
    model = seeded_init(build_detector(config, size, data.masks.shape[1]), derive_seed(seed, "init"))
    retinanet_head_init(model, derive_seed(seed, "head"))
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    for images, masks in training_batches(data, config.steps, config.batch_size, seed, config.augment, config.loader_workers, weights):
        losses = model(list(images), _detection_targets(masks, min_area))
        optimiser.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
    return model.eval()


@torch.no_grad()
def predict_boxes(model: nn.Module, images01: np.ndarray, batch_size: int = 32) -> list[dict[str, np.ndarray]]:
    """Per image {"boxes", "scores", "labels" (our class indices)}."""
    model.eval()
    out = []
    for start in range(0, len(images01), batch_size):
        x = unit_to_model(torch.from_numpy(np.asarray(images01[start : start + batch_size], np.float32))[:, None])
        for found in model(list(x)):
            out.append({"boxes": found["boxes"].numpy(), "scores": found["scores"].numpy(), "labels": found["labels"].numpy() - 1})
    return out


def evaluate_detector(model: nn.Module, test: LabelledImages, min_box_area: int = 4) -> dict[str, Any]:
    """mAP@0.5 on `test`, ground-truth boxes from its masks' components."""
    size = test.images.shape[-1]
    min_area = max(1, int(round(min_box_area * (size / 64) ** 2)))
    targets = [boxes_from_masks(mask, min_area) for mask in test.masks]
    return metrics.mean_average_precision(predict_boxes(model, test.images), targets)


# --- regimes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Regime:
    """One training set: a real fraction (0 for synthetic-only) and what is trained on."""

    real_fraction: float
    train_set: TrainSet


def plan_regimes(config: DownstreamConfig, with_synthetic: bool) -> list[Regime]:
    """Real and real+synthetic at every fraction, then synthetic-only and the full-real ceiling if asked."""
    regimes: list[Regime] = []
    for fraction in sorted(config.real_fractions):
        regimes.append(Regime(fraction, "real"))
        if with_synthetic:
            regimes.append(Regime(fraction, "real+synthetic"))
    if with_synthetic and config.synthetic_only:
        regimes.append(Regime(0.0, "synthetic"))
    if config.full_real:
        regimes.append(Regime(1.0, "real"))
    return regimes


def mixing_weights(sizes: Sequence[int], synthetic_share: float | None) -> np.ndarray | None:
    """Drawing weights for [real, synthetic] parts: each batch holds `synthetic_share` synthetic samples on
    average. None (or a single part): uniform over all samples, i.e. in proportion to the parts' sizes."""
    if synthetic_share is None or len(sizes) < 2:
        return None
    real, synthetic = sizes
    return np.concatenate([np.full(real, (1 - synthetic_share) / real), np.full(synthetic, synthetic_share / synthetic)])


def _trainer(
    task: Task, config: DownstreamConfig
) -> tuple[Callable[[LabelledImages, int, np.ndarray | None], nn.Module], Callable[[nn.Module, LabelledImages], dict[str, Any]]]:
    if task == "segmentation":
        seg = config.segmentation
        return (lambda data, seed, w: train_segmenter(data, seg, seed, w)), (lambda model, test: evaluate_segmenter(model, test, seg.threshold))
    if task == "detection":
        det = config.detection
        return (lambda data, seed, w: train_detector(data, det, seed, w)), (lambda model, test: evaluate_detector(model, test, det.min_box_area))
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASK_METRIC)}")


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value); None for no values."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if arr.size == 0:
        return None, None
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def run_downstream(
    task: Task,
    real_train: LabelledImages,
    real_test: LabelledImages,
    synthetic: LabelledImages | None,
    config: DownstreamConfig,
    sources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and score every regime x seed for one task; returns the `evaluation.json` document.

    Shape (one file per task; detection has the same shape with "metric": "map50"):
        {"schema_version", "task", "metric", "classes", "regimes": [{"real_fraction", "train_set", "n_real",
         "n_synthetic", "mean", "std", "seeds", "values", "per_class", "per_class_std", "seconds"
         (+ "pooled_mean", "pooled_std" for segmentation: dataset-level Dice, see metrics.dice_per_class)}],
         "gains": [{"real_fraction", "real", "real+synthetic", "gain", "gain_std", "improved"}],
         "test": {"n"}, "real_train": {"n"}, "synthetic": {"n"} | None, "config", "sources", "seconds"}
    `std` is the sample standard deviation over seeds; `gain` the mean over seeds of the paired
    difference real+synthetic - real (same real subset and initial weights).
    """
    with torch_threads(config.torch_threads):
        return _run_downstream(task, real_train, real_test, synthetic, config, sources)


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


def _run_downstream(
    task: Task,
    real_train: LabelledImages,
    real_test: LabelledImages,
    synthetic: LabelledImages | None,
    config: DownstreamConfig,
    sources: dict[str, Any] | None,
) -> dict[str, Any]:
    train_fn, eval_fn = _trainer(task, config)
    if synthetic is not None and config.max_synthetic is not None:
        synthetic = synthetic.subset(np.arange(min(len(synthetic), config.max_synthetic)))
    if synthetic is not None and len(synthetic) == 0:
        synthetic = None
    regimes = plan_regimes(config, synthetic is not None)
    started = time.perf_counter()
    rows = []
    results: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for regime in regimes:
        regime_started = time.perf_counter()
        per_seed = []
        n_real = 0
        for s in range(config.seeds):
            seed = derive_seed(config.base_seed, task, s)
            parts = []
            if regime.train_set != "synthetic":
                subset = real_subset(len(real_train), regime.real_fraction, derive_seed(seed, "subset"), config.min_real)
                n_real = len(subset)
                parts.append(real_train.subset(subset))
            if regime.train_set != "real":
                parts.append(synthetic)
            model = train_fn(LabelledImages.concat(*parts), seed, mixing_weights([len(p) for p in parts], config.synthetic_share))
            per_seed.append(eval_fn(model, real_test))
        results[(regime.real_fraction, regime.train_set)] = per_seed
        mean, std = _mean_std([r["mean"] for r in per_seed])
        per_class, per_class_std = {}, {}
        for label in PATHOLOGIES:
            per_class[label], per_class_std[label] = _mean_std([r["per_class"][label] for r in per_seed])
        row = {
            "real_fraction": regime.real_fraction,
            "train_set": regime.train_set,
            "n_real": n_real,
            "n_synthetic": len(synthetic) if regime.train_set != "real" else 0,
            "mean": mean,
            "std": std,
            "seeds": config.seeds,
            "values": [r["mean"] for r in per_seed],
            "per_class": per_class,
            "per_class_std": per_class_std,
            "seconds": round(time.perf_counter() - regime_started, 2),
        }
        if all("pooled" in r for r in per_seed):  # segmentation: the dataset-level Dice beside the per-sample one
            row["pooled_mean"], row["pooled_std"] = _mean_std([r["pooled"]["mean"] for r in per_seed])
        rows.append(row)
        logger.info("%s %s at real %.0f%%: %s = %s +- %s (%s seeds, %.1f s)", task, regime.train_set,
                    100 * regime.real_fraction, TASK_METRIC[task], _fmt(mean), _fmt(std), config.seeds, row["seconds"])
    return {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "metric": TASK_METRIC[task],
        "classes": list(PATHOLOGIES),
        "regimes": rows,
        "gains": _gains(results),
        "test": {"n": len(real_test)},
        "real_train": {"n": len(real_train)},
        "synthetic": {"n": len(synthetic)} if synthetic is not None else None,
        "config": config.model_dump(mode="json"),
        "sources": sources or {},
        "seconds": round(time.perf_counter() - started, 2),
    }


def _gains(results: dict[tuple[float, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per real fraction, the paired effect of adding the synthetic data."""
    gains = []
    for (fraction, train_set), with_synthetic in sorted(results.items()):
        if train_set != "real+synthetic" or (fraction, "real") not in results:
            continue
        alone = results[(fraction, "real")]
        differences = [
            b["mean"] - a["mean"] for a, b in zip(alone, with_synthetic) if a["mean"] is not None and b["mean"] is not None
        ]
        gain, gain_std = _mean_std(differences)
        gains.append({
            "real_fraction": fraction,
            "real": _mean_std([a["mean"] for a in alone])[0],
            "real+synthetic": _mean_std([b["mean"] for b in with_synthetic])[0],
            "gain": gain,
            "gain_std": gain_std,
            "improved": gain is not None and gain > 0,
        })
    return gains


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
