"""From tissue path lengths to a displayed radiograph: Beer-Lambert, quantum noise, detector blur, log,
digital processing and windowing.

    A = mu_water * (soft tissue - air in lungs and airways + lesions + vessels) + mu_water * (k - 1) * bone
    counts ~ Poisson(N0 * exp(-A))    (Gaussian approximation), blurred by the detector
    D = -log(counts / N0)             (what a detector's log amplifier gives)
    displayed = window(unsharp(D))    brighter = more attenuation

Overlapping structures add up in A, so ribs show faintly through the heart and a lesion behind the
diaphragm is hard to see, as on a film. The window comes from the patient (expected lung and
mediastinum attenuation), not from the image histogram, so a finding changes its own region's
brightness and not the whole image's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter, zoom

from aurad_models.phantom.anatomy import Anatomy, Grid, smoothstep
from aurad_models.phantom.patient import MU_WATER, Patient

F32 = np.float32


@dataclass
class LesionFields:
    """What the findings do to the tissue maps (all (S, S))."""

    replaced: np.ndarray  # cm of lung air replaced by fluid or tissue
    pneumothorax: np.ndarray  # 0..1: lung parenchyma gone, air left
    vessel_visibility: np.ndarray  # 0..1: 0 where lung markings vanish (pneumothorax)
    extra_tissue: np.ndarray  # cm of tissue outside the lung air budget (pleural line)
    recess_fill: dict[str, float]  # share of the posterior recess air replaced by fluid, per side

    @classmethod
    def empty(cls, size: int) -> "LesionFields":
        zeros = np.zeros((size, size), dtype=F32)
        ones = np.ones((size, size), dtype=F32)
        return cls(zeros.copy(), zeros.copy(), ones, zeros.copy(), {"right": 0.0, "left": 0.0})


def attenuation(p: Patient, anatomy: Anatomy, vessels: np.ndarray, lesions: LesionFields) -> np.ndarray:
    """Line integral of the attenuation coefficient through the patient at each pixel."""
    rho = p.lung_density
    air = sum(anatomy.air[s] + anatomy.recess[s] * (1.0 - lesions.recess_fill[s]) for s in ("right", "left"))
    replaced = np.minimum(lesions.replaced, air)
    left = air - replaced
    lung_cm = p.lung_depth * p.body_cm
    visible = lesions.vessel_visibility * np.clip(left / (0.5 * lung_cm), 0.0, 1.0)
    water = anatomy.body + anatomy.tissue + lesions.extra_tissue - anatomy.airway
    water = water - left * (1.0 - rho) - rho * lesions.pneumothorax * left + 1.4 * vessels * visible
    water = np.maximum(water, 0.0)
    return (MU_WATER * water + MU_WATER * (p.bone_contrast - 1.0) * anatomy.bone).astype(F32)


def expose(p: Patient, a: np.ndarray, grid: Grid, rng: np.random.Generator, noise_scale: float) -> np.ndarray:
    """Detected log signal D = -log(I / I0) with quantum noise and detector blur."""
    size = grid.size
    photons = p.photons * (256.0 / size)  # smaller pixels catch fewer quanta (sub-linear: detector binning)
    intensity = np.exp(-a)
    if noise_scale > 0:
        counts = photons * intensity
        noise = rng.standard_normal((size, size), dtype=F32)
        intensity = np.maximum(counts + noise_scale * np.sqrt(counts) * noise, 0.5) / photons
    intensity = gaussian_filter(intensity, p.blur * size, mode="nearest")
    return (-np.log(np.maximum(intensity, 1e-12))).astype(F32)


def reference_window(p: Patient) -> tuple[float, float]:
    """Expected attenuation of aerated lung and of the mediastinum over the spine for this patient."""
    lung = MU_WATER * (p.body_cm - (1.0 - p.lung_density) * p.lung_depth * p.body_cm)
    mediastinum = MU_WATER * p.body_cm + MU_WATER * (p.bone_contrast - 1.0) * 0.5
    return lung, mediastinum


def display(p: Patient, d: np.ndarray, grid: Grid) -> np.ndarray:
    """Window, then the digital processing of a DR system: compress large-scale range, boost detail."""
    lung, mediastinum = reference_window(p)
    span = mediastinum - lung
    lo = lung - (0.2 + p.window_shift) * span
    hi = mediastinum + 0.25 * span
    v = np.clip((d - lo) / (hi - lo), -0.15, 1.3)
    coarse = _coarse_blur(v, 0.06 * grid.size)
    fine = _box_blur(v, 0.015 * grid.size)
    # Detail gain eases off in dense regions (heart, abdomen), where a film's shoulder flattens contrast.
    gain = p.detail * (1.0 - 0.7 * smoothstep(0.55, 0.95, coarse))
    v = v + (p.compression - 1.0) * (coarse - 0.5) + gain * (v - fine)
    # The shoulder of a film's characteristic curve: contrast fades towards white.
    v = np.where(v > 0.7, 0.7 + 0.35 * np.tanh((v - 0.7) / 0.35), v)
    return (np.clip(v, 0.0, 1.0) ** p.gamma).astype(F32)


def _box_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Three box passes: a Gaussian of about this sigma in linear time."""
    width = max(int(round(np.sqrt(4.0 * sigma * sigma + 1.0))), 1)
    for _ in range(3):
        image = uniform_filter(image, width, mode="nearest")
    return image


def _coarse_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A wide blur computed at a quarter of the resolution (it only carries large-scale brightness)."""
    factor = max(1, min(4, int(sigma // 4)))
    if factor == 1:
        return _box_blur(image, sigma)
    size = image.shape[0]
    padded = np.pad(image, ((0, -size % factor), (0, -size % factor)), mode="edge")
    n = padded.shape[0] // factor
    small = padded.reshape(n, factor, n, factor).mean(axis=(1, 3))
    small = _box_blur(small, sigma / factor)
    return zoom(small, factor, order=1, mode="nearest", grid_mode=True)[:size, :size].astype(image.dtype)
