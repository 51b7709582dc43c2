"""The pixel contract between storage and models.

Stored images are uint16 over the full range [0, 65535], brighter = more attenuation (MONOCHROME2), as
a digital radiograph is. Models see float32 in [-1, 1]. torchxrayvision's models see [-1024, 1024].
"""

from __future__ import annotations

import numpy as np

STORED_DTYPE = np.uint16
STORED_MAX = 65535
STORED_ATTRIBUTES = {
    "value_range": [0, STORED_MAX],
    "bits_stored": 16,
    "photometric_interpretation": "MONOCHROME2",
}


def to_stored(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint16; values outside [0, 1] are clipped."""
    return np.round(np.clip(image, 0.0, 1.0) * STORED_MAX).astype(STORED_DTYPE)


def stored_to_unit(image: np.ndarray) -> np.ndarray:
    """uint16 image -> float32 in [0, 1]."""
    if image.dtype != STORED_DTYPE:
        raise TypeError(f"stored images are {np.dtype(STORED_DTYPE).name}, got {image.dtype}")
    return image.astype(np.float32) / STORED_MAX


def unit_to_model(image):
    """[0, 1] -> [-1, 1] (numpy or torch)."""
    return image * 2.0 - 1.0


def model_to_unit(image):
    """[-1, 1] -> [0, 1] (numpy or torch), clipped."""
    return ((image + 1.0) / 2.0).clip(0.0, 1.0)


def unit_to_xrv(image):
    """[0, 1] -> torchxrayvision's [-1024, 1024] (numpy or torch)."""
    return (image * 2.0 - 1.0) * 1024.0
