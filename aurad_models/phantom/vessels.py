"""Lung markings: pulmonary vessel trees branching from each hilum, splatted onto the grid.

A tree is a list of straight segments in patient coordinates (so the same patient has the same vessels
at every size). Rendering samples points every half pixel along each segment, deposits each point's
vessel volume bilinearly, and blurs with a width that follows the vessel radius: the result is the
path length (cm) of blood through each pixel, without evaluating every segment on every pixel.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from aurad_models.phantom.anatomy import Grid, Silhouette
from aurad_models.phantom.patient import FOV_CM, Patient

# Root branches per lung: (angle in degrees from the lateral horizontal, downwards positive, length,
# radius). Lower-lobe vessels are larger: an upright patient perfuses the bases more.
_ROOTS = (
    (-100.0, 0.075, 0.011),
    (-68.0, 0.075, 0.012),
    (-35.0, 0.065, 0.011),
    (0.0, 0.065, 0.012),
    (30.0, 0.075, 0.015),
    (55.0, 0.085, 0.017),
    (80.0, 0.085, 0.015),
)
GENERATIONS = 7


def vessel_segments(p: Patient, sil: Silhouette, rng: np.random.Generator) -> np.ndarray:
    """Segments (x0, y0, x1, y1, radius) of both trees, radius in patient units."""
    out = []
    for name in ("right", "left"):
        s = p.side(name)
        scale = s.height / 0.55
        hx = p.x_mid + s.sgn * (float(sil.at("border", name, np.float32(s.hilum_y))) + 0.005)
        n = len(_ROOTS)
        angle = np.deg2rad(np.array([r[0] for r in _ROOTS]) + rng.normal(0.0, 7.0, n))
        length = np.array([r[1] for r in _ROOTS]) * scale * rng.uniform(0.85, 1.15, n)
        radius = np.array([r[2] for r in _ROOTS]) * rng.uniform(0.85, 1.15, n)
        # Roots spread along the hilum: upper-lobe arteries leave higher, lower-lobe ones lower.
        x0 = np.full(n, hx) + s.sgn * rng.uniform(0.0, 0.015, n)
        y0 = s.hilum_y + 0.05 * np.sin(angle) * scale + rng.uniform(-0.01, 0.01, n)
        for _ in range(GENERATIONS):
            x1 = x0 + s.sgn * length * np.cos(angle)
            y1 = y0 + length * np.sin(angle)
            out.append(np.stack([x0, y0, x1, y1, radius], axis=1))
            m = x0.size
            # Two children: one close to the parent's course, one branching off more sharply.
            turn = np.deg2rad(rng.uniform(4.0, 14.0, m))
            split = np.deg2rad(rng.uniform(20.0, 38.0, m))
            flip = np.where(rng.uniform(size=m) < 0.5, 1.0, -1.0)
            angle = np.concatenate([angle + flip * turn, angle - flip * split])
            length = np.concatenate([length, 0.85 * length]) * rng.uniform(0.72, 0.9, 2 * m)
            radius = np.concatenate([radius * 0.8, radius * 0.66]) * rng.uniform(0.92, 1.05, 2 * m)
            x0 = np.concatenate([x1, x1])
            y0 = np.concatenate([y1, y1])
    return np.concatenate(out, axis=0)


def splat_segments(grid: Grid, segments: np.ndarray, cm_per_unit: float = FOV_CM) -> np.ndarray:
    """Path length (cm) through tubes of the given radii, rendered by splatting and per-radius blur."""
    size = grid.size
    image = np.zeros((size, size), dtype=np.float32)
    if segments.size == 0:
        return image
    x0, y0, x1, y1, r = segments.T
    length = np.hypot(x1 - x0, y1 - y0)
    step = 0.7 * grid.px
    counts = np.maximum(np.ceil(length / step).astype(np.int64), 1)
    seg = np.repeat(np.arange(len(segments)), counts)
    starts = np.cumsum(counts) - counts
    t = (np.arange(seg.size) - starts[seg] + 0.5) / counts[seg]
    px = x0[seg] + t * (x1 - x0)[seg]
    py = y0[seg] + t * (y1 - y0)[seg]
    pixel_cm = grid.px * cm_per_unit
    radius = r[seg] * (1.0 - 0.2 * t)  # taper along the segment towards the children's calibre
    volume = np.pi * (radius * cm_per_unit) ** 2 * (length[seg] * cm_per_unit / counts[seg])
    weight = volume / pixel_cm**2
    col, row = grid.to_pixel(px, py)
    radius_px = radius / grid.px
    for lo, hi in ((0.0, 1.2), (1.2, 4.0), (4.0, np.inf)):
        pick = (radius_px >= lo) & (radius_px < hi)
        if not pick.any():
            continue
        layer = _bilinear_deposit(size, col[pick], row[pick], weight[pick])
        sigma = max(0.7, 0.0012 / grid.px, 0.85 * float(np.median(radius_px[pick])))
        image += gaussian_filter(layer, sigma, mode="constant")
    return image


def _bilinear_deposit(size: int, col: np.ndarray, row: np.ndarray, weight: np.ndarray) -> np.ndarray:
    c0 = np.floor(col).astype(np.int64)
    r0 = np.floor(row).astype(np.int64)
    fc, fr = col - c0, row - r0
    rows = np.concatenate([r0, r0, r0 + 1, r0 + 1])
    cols = np.concatenate([c0, c0 + 1, c0, c0 + 1])
    weights = np.concatenate([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc]) * np.tile(weight, 4)
    ok = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    flat = np.bincount(rows[ok] * size + cols[ok], weights=weights[ok], minlength=size * size)
    return flat.reshape(size, size).astype(np.float32)
