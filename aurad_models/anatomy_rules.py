"""Where each finding may lie, derived from anatomy masks.

One definition used by the phantom (to place findings), the mask generator's quality bar, the expert
filter and the data-quality suites, so that "allowed" means the same thing everywhere.

Zones split each lung's vertical extent into thirds (upper, middle, lower). Sides are the patient's:
the left lung appears on the right of a posteroanterior image.
"""

from __future__ import annotations

import numpy as np

from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGY, ZONES, Pathology, Region, anatomy_index

_LEFT_LUNG = anatomy_index("Left Lung")
_RIGHT_LUNG = anatomy_index("Right Lung")
_HEART = anatomy_index("Heart")


def _check_anatomy(anatomy: np.ndarray) -> np.ndarray:
    if anatomy.ndim != 3 or anatomy.shape[0] != len(ANATOMY_STRUCTURES):
        raise ValueError(
            f"anatomy must be ({len(ANATOMY_STRUCTURES)}, H, W) in the ChestX-Det order, got shape {anatomy.shape}"
        )
    return anatomy.astype(bool, copy=False)


def lung_mask(anatomy: np.ndarray, side: str | None = None) -> np.ndarray:
    """The lung field of one side ('left' / 'right'), or of both (None / 'bilateral')."""
    anatomy = _check_anatomy(anatomy)
    if side == "left":
        return anatomy[_LEFT_LUNG]
    if side == "right":
        return anatomy[_RIGHT_LUNG]
    return anatomy[_LEFT_LUNG] | anatomy[_RIGHT_LUNG]


def _row_fraction(lung: np.ndarray) -> np.ndarray:
    """Per row, how far down the lung it is: 0 at the apex, 1 at the base (NaN where no lung rows)."""
    rows = np.flatnonzero(lung.any(axis=1))
    fraction = np.full(lung.shape[0], np.nan)
    if rows.size:
        top, bottom = rows[0], rows[-1]
        fraction[:] = (np.arange(lung.shape[0]) - top) / max(bottom - top, 1)
    return fraction


def zone_mask(anatomy: np.ndarray, side: str | None, zone: str) -> np.ndarray:
    """The part of the lung field(s) in a zone: thirds of each lung's own vertical extent."""
    if zone not in ZONES:
        raise ValueError(f"unknown zone {zone!r}; known: {', '.join(ZONES)}")
    lo, hi = {"upper": (-np.inf, 1 / 3), "middle": (1 / 3, 2 / 3), "lower": (2 / 3, np.inf)}[zone]
    sides = ("left", "right") if side in (None, "bilateral") else (side,)
    out = np.zeros(anatomy.shape[1:], dtype=bool)
    for s in sides:
        lung = lung_mask(anatomy, s)
        fraction = _row_fraction(lung)
        rows = (fraction >= lo) & (fraction < hi)
        out |= lung & rows[:, None]
    return out


REGION_NAMES = {"lung": "lung field", "lung below apex": "lung field below its apex", "lower lung": "lower lung field",
                "heart": "heart"}
# Regions that are the lung field from a fraction of each lung's height (0 apex, 1 base) down to its base.
# "lung below apex" leaves the apical fifth free: a quarter of the NIH effusion boxes reach above 0.18 of the
# typical lung field, a tenth above 0.04 (`python -m bench.locations`).
REGION_FROM = {"lung below apex": 0.2, "lower lung": 0.5}


def region_mask(region: Region, anatomy: np.ndarray, side: str | None = None) -> np.ndarray:
    """Pixels of a `vocabulary.Region` (of `side` for the lung regions; both lungs for None / 'bilateral')."""
    anatomy = _check_anatomy(anatomy)
    if region == "heart":
        return anatomy[_HEART]
    if region == "lung":
        return lung_mask(anatomy, side)
    if region not in REGION_FROM:
        raise ValueError(f"unknown region {region!r}; known: {', '.join(REGION_NAMES)}")
    sides = ("left", "right") if side in (None, "bilateral") else (side,)
    out = np.zeros(anatomy.shape[1:], dtype=bool)
    for s in sides:
        lung = lung_mask(anatomy, s)
        out |= lung & (_row_fraction(lung) >= REGION_FROM[region])[:, None]
    return out


def _pathology(label: str) -> Pathology:
    if label not in PATHOLOGY:
        raise KeyError(f"no anatomy rule for finding {label!r}; known: {', '.join(PATHOLOGY)}")
    return PATHOLOGY[label]


def allowed_region(label: str, anatomy: np.ndarray, side: str | None = None) -> np.ndarray:
    """Pixels where a mask of `label` may lie: the region of its `vocabulary.Pathology` record."""
    return region_mask(_pathology(label).region, anatomy, side)


def hint_region(label: str, anatomy: np.ndarray, side: str | None = None) -> np.ndarray:
    """Where the mask generator's prior map marks an unzoned request of `label`: its record's hint_region,
    inside its allowed region."""
    record = _pathology(label)
    return region_mask(record.hint_region or record.region, anatomy, side)


def inside_fraction(mask: np.ndarray, region: np.ndarray) -> float:
    """Share of a mask's pixels inside a region; 1.0 for an empty mask (nothing lies outside)."""
    mask = mask.astype(bool, copy=False)
    total = int(mask.sum())
    return 1.0 if total == 0 else float((mask & region).sum()) / total


def located_side(mask: np.ndarray, anatomy: np.ndarray) -> str | None:
    """Side holding the mask: 'left', 'right', 'bilateral' (a fifth or more on each), or None if empty."""
    mask = mask.astype(bool, copy=False)
    left = int((mask & lung_mask(anatomy, "left")).sum())
    right = int((mask & lung_mask(anatomy, "right")).sum())
    if left + right == 0:
        return None
    share = left / (left + right)
    if 0.2 <= share <= 0.8:
        return "bilateral"
    return "left" if share > 0.8 else "right"


def located_zone(mask: np.ndarray, anatomy: np.ndarray) -> str | None:
    """Zone holding most of the mask's lung pixels, or None if the mask misses the lungs."""
    counts = {z: int((mask.astype(bool) & zone_mask(anatomy, None, z)).sum()) for z in ZONES}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else None


def cardiothoracic_ratio(anatomy: np.ndarray) -> float:
    """Widest horizontal extent of the heart over that of the thorax (the two lung fields' union).

    Above 0.55 the heart is enlarged (cardiomegaly); NaN when the lungs or heart are missing.
    """
    anatomy = _check_anatomy(anatomy)

    def width(mask: np.ndarray) -> int:
        columns = np.flatnonzero(mask.any(axis=0))
        return int(columns[-1] - columns[0] + 1) if columns.size else 0

    thorax = width(lung_mask(anatomy))
    heart = width(anatomy[_HEART])
    return heart / thorax if thorax and heart else float("nan")


def heart_components(heart: np.ndarray, speckle_fraction: float = 0.05) -> int:
    """Connected pieces of a heart mask (8-connectivity), not counting specks smaller than `speckle_fraction`
    of the largest piece: the one definition the anatomy bank's QC and the build's anatomy gate share."""
    from scipy import ndimage

    labelled, n = ndimage.label(np.asarray(heart, dtype=bool), structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return n
    sizes = np.bincount(labelled.ravel())[1:]
    return int((sizes >= speckle_fraction * sizes.max()).sum())
