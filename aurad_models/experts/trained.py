"""The project's own experts, trained on the source dataset when pretrained weights are absent (and for the
embedded default): a MONAI DenseNet multi-label classifier and a MONAI UNet anatomy segmenter.

Both are plain `nn.Module`s whose constructor arguments are their config; they save to and load from a
directory (`config.json` + `model.safetensors`, plus a MONAI-bundle-like `metadata.json` saying what goes in
and comes out). Models see pixels in [-1, 1] (`aurad_models.pixels.unit_to_model`) at their training
resolution; the expert wrappers resize to it and back, so callers pass any (N, H, W) in [0, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.networks.nets import DenseNet, UNet
from torch import nn

from aurad_models.experts.base import batches, check_images01, resize_batch
from aurad_models.pixels import unit_to_model
from aurad_models.serialization import load_module, save_module, write_json
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES

logger = logging.getLogger(__name__)

PATHOLOGY_CLASSIFIER_KIND = "pathology-classifier"
ANATOMY_SEGMENTER_KIND = "anatomy-segmenter"
LESION_SEGMENTER_KIND = "lesion-segmenter"
METADATA_NAME = "metadata.json"
METADATA_VERSION = "1.0.0"


def _write_metadata(directory: Path, record: dict[str, Any]) -> None:
    write_json(directory / METADATA_NAME, {"version": METADATA_VERSION, **record})


class PathologyClassifier(nn.Module):
    """Multi-label finding classifier: MONAI DenseNet, one grey channel in, one logit per label out."""

    def __init__(
        self,
        labels: Sequence[str] = PATHOLOGIES,
        image_size: int = 64,
        init_features: int = 16,
        growth_rate: int = 8,
        block_config: Sequence[int] = (2, 4, 6, 4),
        bn_size: int = 4,
        dropout_prob: float = 0.0,
        operating_points: Sequence[float | None] | None = None,
    ) -> None:
        super().__init__()
        unknown = [label for label in labels if label not in PATHOLOGIES]
        if unknown:
            raise ValueError(f"unknown finding labels {unknown}; known: {', '.join(PATHOLOGIES)}")
        self._config: dict[str, Any] = {
            "labels": list(labels),
            "image_size": int(image_size),
            "init_features": int(init_features),
            "growth_rate": int(growth_rate),
            "block_config": [int(b) for b in block_config],
            "bn_size": int(bn_size),
            "dropout_prob": float(dropout_prob),
        }
        self.labels = tuple(labels)
        self.set_operating_points(operating_points)
        self.image_size = int(image_size)
        self.net = DenseNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=len(self.labels),
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=tuple(block_config),
            bn_size=bn_size,
            dropout_prob=dropout_prob,
        )

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def set_operating_points(self, points: Sequence[float | None] | None) -> None:
        """Per-label probability thresholds chosen on validation data (None: 0.5). The expert rescales its
        outputs so each operating point maps to 0.5, as torchxrayvision does with its `op_threshs`."""
        if points is not None:
            points = [None if p is None else float(p) for p in points]
            if len(points) != len(self.labels) or any(p is not None and not 0 < p < 1 for p in points):
                raise ValueError(f"need one operating point in (0, 1) (or None) per label {self.labels}, got {points}")
        self.operating_points = None if points is None else tuple(points)
        self._config["operating_points"] = points

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: ReLU + global average pool of the last dense block, (N, D)."""
        x = self.net.features(x)
        for name, layer in self.net.class_layers.named_children():
            if name == "out":
                break
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, len(labels)) for images (N, 1, S, S) in [-1, 1]."""
        return self.net(x)

    def save_pretrained(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        directory = save_module(self, directory, self.config)
        _write_metadata(
            directory,
            {
                "intended_use": "expert filter of synthetic CXRs: detect prompted findings, flag absent ones",
                "inputs": {"image": {"channels": 1, "dtype": "float32", "value_range": [-1, 1],
                                     "spatial_shape": [self.image_size, self.image_size]}},
                "outputs": {"logits": {"channels": list(self.labels), "activation": "sigmoid", "multi_label": True}},
                **(metadata or {}),
            },
        )
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "PathologyClassifier":
        return load_module(cls, directory, map_location=map_location)


class _MaskUNet(nn.Module):
    """A MONAI UNet, one grey channel in, one sigmoid logit per named mask channel out (multi-label: the
    channels may overlap), saved as `config.json` (its constructor arguments) + safetensors + metadata."""

    vocabulary: tuple[str, ...] = ()
    names_argument = ""  # the constructor argument holding the channel names
    intended_use = ""

    def __init__(self, names: Sequence[str], image_size: int, channels: Sequence[int], strides: Sequence[int],
                 num_res_units: int, extra: dict[str, Any], **unet: Any) -> None:
        super().__init__()
        unknown = [name for name in names if name not in self.vocabulary]
        if unknown:
            raise ValueError(f"unknown {self.names_argument} {unknown}; known: {', '.join(self.vocabulary)}")
        if len(strides) != len(channels) - 1:
            raise ValueError(f"UNet needs one stride fewer than channels, got {list(channels)} / {list(strides)}")
        self._config: dict[str, Any] = {
            self.names_argument: list(names), "image_size": int(image_size), "channels": [int(c) for c in channels],
            "strides": [int(s) for s in strides], "num_res_units": int(num_res_units), **extra,
        }
        self.names = tuple(names)
        self.image_size = int(image_size)
        self.net = UNet(spatial_dims=2, in_channels=1, out_channels=len(self.names), channels=tuple(channels),
                        strides=tuple(strides), num_res_units=num_res_units, **unet)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, channels, S, S) for images (N, 1, S, S) in [-1, 1]."""
        return self.net(x)

    def save_pretrained(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        directory = save_module(self, directory, self.config)
        _write_metadata(
            directory,
            {
                "intended_use": self.intended_use,
                "inputs": {"image": {"channels": 1, "dtype": "float32", "value_range": [-1, 1],
                                     "spatial_shape": [self.image_size, self.image_size]}},
                "outputs": {"logits": {"channels": list(self.names), "activation": "sigmoid",
                                       "threshold": self._config.get("threshold", 0.5), "multi_label": True}},
                **(metadata or {}),
            },
        )
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu"):
        return load_module(cls, directory, map_location=map_location)


class AnatomySegmenter(_MaskUNet):
    """Anatomy segmenter: one channel per ChestX-Det structure (clavicles lie over lungs: multi-label)."""

    vocabulary = ANATOMY_STRUCTURES
    names_argument = "structures"
    intended_use = "anatomy masks for the anatomy bank and the expert filter's anatomy check"

    def __init__(self, structures: Sequence[str] = ANATOMY_STRUCTURES, image_size: int = 64,
                 channels: Sequence[int] = (16, 32, 64, 128), strides: Sequence[int] = (2, 2, 2), num_res_units: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__(structures, image_size, channels, strides, num_res_units, {"dropout": float(dropout)}, dropout=dropout)
        self.structures = self.names


class LesionSegmenter(_MaskUNet):
    """The fidelity expert: a UNet trained on *real* images to outline the pathologies (one channel per
    finding). Re-segmenting a synthetic image says whether its lesions show where its masks are, and
    whether an image meant to be normal shows lesions it should not.

    `fidelity` holds what real validation images look like to it, per finding: `dice` (validation Dice
    over positives, pooled), `min_dice` (the Dice that `accept_share` of real positives reach) and
    `max_absent_pixels` (the predicted area that `accept_share` of real negatives stay under). Only
    findings with a validation Dice the filter trusts vote (`tasks.filtering.FidelityCheck`).
    """

    vocabulary = PATHOLOGIES
    names_argument = "labels"
    intended_use = "fidelity expert of the synthetic-data filter: re-segments synthetic CXRs; trained on real images"

    def __init__(self, labels: Sequence[str] = PATHOLOGIES, image_size: int = 64, channels: Sequence[int] = (16, 32, 64, 128),
                 strides: Sequence[int] = (2, 2, 2), num_res_units: int = 0, norm: str = "batch", threshold: float = 0.5,
                 fidelity: dict[str, dict[str, float | None]] | None = None) -> None:
        super().__init__(labels, image_size, channels, strides, num_res_units,
                         {"norm": norm, "threshold": float(threshold), "fidelity": fidelity}, norm=norm)
        self.labels = self.names
        self.threshold = float(threshold)
        self.fidelity = fidelity

    def set_fidelity(self, fidelity: dict[str, dict[str, float | None]]) -> None:
        self.fidelity = fidelity
        self._config["fidelity"] = fidelity


def operating_point_norm(probs: np.ndarray, points: Sequence[float | None]) -> np.ndarray:
    """Piecewise-linear rescaling mapping each column's operating point to 0.5 (torchxrayvision's
    `op_norm`): [0, t] -> [0, 0.5], [t, 1] -> [0.5, 1]. Columns without a point are left as they are."""
    out = np.array(probs, dtype=np.float32, copy=True)
    for j, t in enumerate(points):
        if t is None:
            continue
        p = out[:, j]
        out[:, j] = np.where(p < t, p / (2 * t), 1.0 - (1.0 - p) / (2 * (1.0 - t)))
    return out


def operating_points(probs: np.ndarray, labels: np.ndarray, names: Sequence[str] = PATHOLOGIES) -> dict[str, float | None]:
    """Per column, the threshold maximising Youden's J (sensitivity + specificity - 1), halfway between
    neighbouring scores and kept in [0.02, 0.98]; None where a column lacks positives or negatives."""
    out: dict[str, float | None] = {}
    for j, name in enumerate(names):
        p, y = np.asarray(probs[:, j], dtype=np.float64), np.asarray(labels[:, j]).astype(bool)
        keep = ~np.isnan(p)
        p, y = p[keep], y[keep]
        if y.all() or not y.any():
            out[name] = None
            continue
        scores = np.unique(p)[::-1]  # candidate thresholds, high to low
        tpr = np.array([(p[y] >= t).mean() for t in scores])
        fpr = np.array([(p[~y] >= t).mean() for t in scores])
        k = int(np.argmax(tpr - fpr))
        lower = scores[k + 1] if k + 1 < len(scores) else 0.0
        out[name] = float(np.clip((scores[k] + lower) / 2, 0.02, 0.98))
    return out


def model_input(images01: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """[0, 1] (N, H, W) -> the project models' input: (N, 1, size, size) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images01, dtype=np.float32))[:, None]
    return unit_to_model(resize_batch(x, (size, size))).to(device)


@dataclass
class TrainedPathologyExpert:
    """A project-trained PathologyClassifier as a PathologyExpert (sigmoid probabilities)."""

    model: PathologyClassifier
    model_id: str | None = None
    batch_size: int = 64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    validation_auroc: dict[str, float] | None = None  # per finding, from the registry record

    def __post_init__(self) -> None:
        self.model.to(self.device).eval()

    @property
    def name(self) -> str:
        return f"project:{self.model_id or 'unregistered'}"

    def _run(self, images01: np.ndarray, head: bool) -> np.ndarray:
        images = check_images01(images01)
        outputs = []
        with torch.inference_mode():
            for part in batches(len(images), self.batch_size):
                x = model_input(images[part], self.model.image_size, self.device)
                out = torch.sigmoid(self.model(x)) if head else self.model.features(x)
                outputs.append(out.float().cpu().numpy())
        width = len(self.model.labels) if head else 0
        return np.concatenate(outputs) if outputs else np.zeros((0, width), np.float32)

    def predict(self, images01: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """(N, 7) probabilities; `calibrated`: rescaled so the model's operating points map to 0.5."""
        probs = self._run(images01, head=True)
        if calibrated and self.model.operating_points is not None:
            probs = operating_point_norm(probs, self.model.operating_points)
        out = np.full((probs.shape[0], len(PATHOLOGIES)), np.nan, dtype=np.float32)
        for j, label in enumerate(self.model.labels):
            out[:, PATHOLOGIES.index(label)] = probs[:, j]
        return out

    def features(self, images01: np.ndarray) -> np.ndarray:
        return self._run(images01, head=False)

    def describe(self) -> dict[str, Any]:
        return {"kind": "project", "model": PATHOLOGY_CLASSIFIER_KIND, "model_id": self.model_id,
                "validation_auroc": self.validation_auroc}


@dataclass
class TrainedAnatomyExpert:
    """A project-trained AnatomySegmenter as an AnatomyExpert: logits resized back to the input's
    resolution, then sigmoid > threshold."""

    model: AnatomySegmenter
    model_id: str | None = None
    threshold: float = 0.5
    batch_size: int = 32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.model.to(self.device).eval()

    @property
    def name(self) -> str:
        return f"project:{self.model_id or 'unregistered'}"

    def segment(self, images01: np.ndarray) -> np.ndarray:
        images = check_images01(images01)
        n, h, w = images.shape
        out = np.zeros((n, len(ANATOMY_STRUCTURES), h, w), dtype=np.uint8)
        channels = [ANATOMY_STRUCTURES.index(s) for s in self.model.structures]
        with torch.inference_mode():
            for part in batches(n, self.batch_size):
                logits = self.model(model_input(images[part], self.model.image_size, self.device)).float().cpu()
                logits = resize_batch(logits, (h, w))
                out[part][:, channels] = (torch.sigmoid(logits) > self.threshold).numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": "project", "model": ANATOMY_SEGMENTER_KIND, "model_id": self.model_id}


@dataclass
class TrainedLesionExpert:
    """A project-trained LesionSegmenter as the fidelity expert: (N, 7, H, W) uint8 lesion masks at the
    input's resolution, in PATHOLOGIES order (channels it does not predict stay empty)."""

    model: LesionSegmenter
    model_id: str | None = None
    batch_size: int = 64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.model.to(self.device).eval()

    @property
    def name(self) -> str:
        return f"project:{self.model_id or 'unregistered'}"

    @property
    def fidelity(self) -> dict[str, dict[str, float | None]]:
        return self.model.fidelity or {}

    def segment(self, images01: np.ndarray) -> np.ndarray:
        images = check_images01(images01)
        n, h, w = images.shape
        out = np.zeros((n, len(PATHOLOGIES), h, w), dtype=np.uint8)
        channels = [PATHOLOGIES.index(label) for label in self.model.labels]
        with torch.inference_mode():
            for part in batches(n, self.batch_size):
                logits = self.model(model_input(images[part], self.model.image_size, self.device)).float().cpu()
                logits = resize_batch(logits, (h, w))
                out[part][:, channels] = (torch.sigmoid(logits) >= self.model.threshold).numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": "project", "model": LESION_SEGMENTER_KIND, "model_id": self.model_id, "fidelity": self.fidelity}
