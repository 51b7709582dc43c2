"""Image + mask augmentation for every model trained on CXRs: one random affine per sample, applied to the
image and its masks together, then intensity changes of the image only.

    augment = PairedAugmentation(AugmentationConfig(), seed=7)
    images, masks = augment(images, masks)     # (B, 1, H, W) in [0, 1], (B, C, H, W) in {0, 1}

Batched: one affine sampling grid for the whole batch, shared by the image (bilinear) and the masks (nearest,
as MONAI's `RandAffined` does per sample; the grid is the one MONAI's `AffineTransform` builds, which
tests/test_retrain.py checks pixel for pixel), so augmentation costs one grid per batch
instead of a chain of small per-sample transforms (measured: the per-sample MONAI chain was about as
expensive as the training step of the small downstream UNet). Every draw comes from the instance's own
`torch.Generator`: the same seed gives the same stream, and the global random state is never touched.
No flips: left and right are attributes of the findings (and the heart is on the left).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from aurad_models.seeding import torch_generator


class AugmentationConfig(BaseModel):
    """Ranges of the random affine and the intensity changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    affine_prob: float = Field(0.8, ge=0, le=1, description="share of samples that get a random affine")
    rotate_degrees: float = Field(4.0, ge=0, description="rotation range +-")
    scale: float = Field(0.06, ge=0, description="zoom range +-")
    translate_fraction: float = Field(0.04, ge=0, description="shift range +- as a fraction of the image size")
    contrast_prob: float = Field(0.3, ge=0, le=1, description="share of images whose contrast (gamma) changes")
    gamma: tuple[float, float] = Field((0.8, 1.25), description="gamma range of the contrast change")
    noise_prob: float = Field(0.3, ge=0, le=1, description="share of images that get Gaussian noise")
    noise_std: float = Field(0.015, ge=0, description="Gaussian noise on the [0, 1] image")


class PairedAugmentation:
    """A seeded stream of batched augmentations (see the module docstring)."""

    def __init__(self, config: AugmentationConfig, seed: int):
        self.config = config
        self.generator = torch_generator(seed)

    def _uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator) * 2 - 1

    def _theta(self, n: int) -> torch.Tensor:
        """(n, 2, 3) affines in normalised (row, column) coordinates; the identity for samples left as they are."""
        c = self.config
        angle = self._uniform(n) * math.radians(c.rotate_degrees)
        zoom = 1 + self._uniform(n) * c.scale
        shift = self._uniform(n, 2) * 2 * c.translate_fraction  # normalised coordinates span 2
        keep = torch.rand(n, generator=self.generator) >= c.affine_prob
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
        return torch.where(keep[:, None, None], identity, theta)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W), got {tuple(images.shape)}")
        if masks is not None and (masks.ndim != 4 or masks.shape[0] != images.shape[0] or masks.shape[2:] != images.shape[2:]):
            raise ValueError(f"masks must be (B, C, H, W) matching images {tuple(images.shape)}, got {tuple(masks.shape)}")
        n, c = images.shape[0], self.config
        theta = self._theta(n)[:, [1, 0]][:, :, [1, 0, 2]]  # (row, column) to grid_sample's (x, y) order
        grid = F.affine_grid(theta, [n, 1, *images.shape[2:]], align_corners=False)
        images = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        if masks is not None:
            masks = F.grid_sample(masks.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        low, high = math.log(c.gamma[0]), math.log(c.gamma[1])
        gamma = torch.exp(low + torch.rand(n, generator=self.generator) * (high - low))
        gamma = torch.where(torch.rand(n, generator=self.generator) < c.contrast_prob, gamma, torch.ones(n))
        images = images.clamp(0, 1) ** gamma[:, None, None, None]
        noisy = (torch.rand(n, generator=self.generator) < c.noise_prob).float()[:, None, None, None]
        noise = torch.randn(images.shape, generator=self.generator) * c.noise_std
        return (images + noisy * noise).clamp(0, 1), masks
