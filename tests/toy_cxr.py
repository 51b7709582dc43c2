"""Hand-made toy chest masks for fast generator tests: elliptic lungs and heart, a disc nodule.

Not a phantom (that is `aurad_models.phantom`): just enough anatomy for `anatomy_rules` to work on.
"""

from __future__ import annotations

import numpy as np

from aurad_models.findings import Finding
from aurad_models.vocabulary import PATHOLOGIES, anatomy_index, pathology_index


def toy_batch(n: int, size: int = 32, seed: int = 0):
    """(images (n, H, W) float32, anatomy (n, 14, H, W) uint8, pathology (n, 7, H, W) uint8, findings):
    about two thirds have a small nodule in the left upper zone, the rest are normal."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    anatomy = np.zeros((n, 14, size, size), np.uint8)
    pathology = np.zeros((n, len(PATHOLOGIES), size, size), np.uint8)
    findings = []
    for i in range(n):
        cx = size / 2 + rng.uniform(-1, 1)
        for name, sign in (("Right Lung", -1), ("Left Lung", 1)):  # the patient's left is on the image right
            anatomy[i, anatomy_index(name)] = ((xx - cx - sign * 0.22 * size) / (0.15 * size)) ** 2 + ((yy - 0.5 * size) / (0.32 * size)) ** 2 < 1
        anatomy[i, anatomy_index("Heart")] = ((xx - cx) / (0.13 * size)) ** 2 + ((yy - 0.66 * size) / (0.13 * size)) ** 2 < 1
        anatomy[i, anatomy_index("Spine")] = np.abs(xx - cx) < 0.04 * size
        if i % 3 != 2:
            ny, nx = 0.3 * size + rng.uniform(-1, 1), cx + 0.22 * size + rng.uniform(-1, 1)
            pathology[i, pathology_index("nodule")] = (xx - nx) ** 2 + (yy - ny) ** 2 < (0.08 * size) ** 2
            findings.append((Finding(label="nodule", side="left", zone="upper", size="small"),))
        else:
            findings.append(())
    lungs = anatomy[:, anatomy_index("Left Lung")] | anatomy[:, anatomy_index("Right Lung")]
    images = np.where(lungs, 0.25, 0.65).astype(np.float32)
    images[anatomy[:, anatomy_index("Heart")] > 0] = 0.8
    images[pathology.any(axis=1)] = 0.9
    images += rng.normal(0, 0.02, images.shape).astype(np.float32)
    return np.clip(images, 0, 1), anatomy, pathology, findings
