"""The interface every expert offers, so the filter and the anatomy bank never care which model they hold.

    PathologyExpert.predict(images01 (N, H, W) in [0, 1]) -> (N, 7) probabilities in PATHOLOGIES order
    PathologyExpert.features(images01)                    -> (N, D) penultimate features (for FXD)
    AnatomyExpert.segment(images01)                       -> (N, 14, H, W) uint8 in ANATOMY_STRUCTURES order

A pathology expert may carry `validation_auroc` (finding -> AUROC on held-out data, None if unknown): the
filter lets only findings the expert is known to resolve vote. A probability of NaN means "this model does
not predict that finding" (e.g. torchxrayvision weights trained
on a dataset without nodule labels); callers treat it as unknown, never as absent. Masks come back at the
input's resolution whatever resolution the model runs at.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F


@runtime_checkable
class PathologyExpert(Protocol):
    """A multi-label pathology classifier over our PATHOLOGIES vocabulary."""

    name: str

    def predict(self, images01: np.ndarray) -> np.ndarray: ...

    def features(self, images01: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class AnatomyExpert(Protocol):
    """An anatomy segmenter over the 14 ChestX-Det structures."""

    name: str

    def segment(self, images01: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def check_images01(images01: np.ndarray) -> np.ndarray:
    """(N, H, W) float32 in [0, 1], or a clear error: the pixel contract is checked at the input."""
    images = np.asarray(images01)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W) in [0, 1], got shape {images.shape}")
    if images.dtype == np.uint16:
        raise TypeError("images are stored uint16; convert with aurad_models.pixels.stored_to_unit first")
    images = images.astype(np.float32, copy=False)
    if images.size and (np.nanmin(images) < -1e-3 or np.nanmax(images) > 1 + 1e-3):
        raise ValueError(
            f"images must lie in [0, 1] (the pixel contract), got [{np.nanmin(images):.3f}, {np.nanmax(images):.3f}]"
        )
    return images


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, max(1, batch_size)):
        yield slice(start, min(n, start + batch_size))


def resize_batch(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (N, C, H, W); anti-aliased when shrinking so thin structures do not alias away."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    shrinking = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrinking)


def default_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
