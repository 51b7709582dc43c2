"""Opt-in calibration of where the phantom places its findings and how big it draws them.

The default phantom never reads this module: `generate_phantoms(seeds, config)` draws exactly what it drew
before it existed, so the shipped models, fingerprinted on the phantom's config and `PHANTOM_VERSION`, stay
valid. A calibration is passed explicitly,

    generate_phantoms(seeds, config, calibration=CALIBRATED)

and is not part of `PhantomConfig` (a new field there would change every config dump and so every source
build id). `PhantomCalibration()` holds today's tables and draws the same phantoms as no calibration at all.

`CALIBRATED` moves the placement and size tables towards real annotations (`tasks/grounding.py`: NIH
ChestX-ray14 and RSNA boxes, SIIM-ACR pneumothorax masks, normalised by a typical V7 lung field);
`python -m bench.locations` measures the distances before and after (bench/results/locations.md).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Range = tuple[float, float]
Weights = tuple[float, float, float]

# Today's tables, as the phantom's modules hold them (kept here only as the calibration's defaults; the
# default phantom reads its own module constants).
_ZONE_WEIGHTS: dict[str, Weights] = {
    "nodule": (0.4, 0.3, 0.3),
    "mass": (0.45, 0.35, 0.2),
    "consolidation": (0.2, 0.35, 0.45),
    "atelectasis": (0.15, 0.3, 0.55),
}
_SIZE_WEIGHTS: dict[str, Weights] = {
    "effusion": (0.45, 0.35, 0.2),
    "pneumothorax": (0.45, 0.35, 0.2),
    "cardiomegaly": (0.45, 0.35, 0.2),
}
_DEFAULT_SIZE_WEIGHTS: Weights = (0.4, 0.35, 0.25)


def _sizes(small: Range, moderate: Range, large: Range) -> dict[str, Range]:
    return {"small": small, "moderate": moderate, "large": large}


class PhantomCalibration(BaseModel):
    """The placement and size tables of the phantom's findings. Ranges are (low, high), drawn uniformly;
    lengths in patient units (one unit is the detector width); weights are over (upper, middle, lower) zones
    or (small, moderate, large) sizes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zone_weights: dict[str, Weights] = Field(default_factory=lambda: dict(_ZONE_WEIGHTS),
                                             description="zone prior of each zoned finding (upper, middle, lower)")
    size_weights: dict[str, Weights] = Field(default_factory=lambda: dict(_SIZE_WEIGHTS),
                                             description="size prior (small, moderate, large) per finding")
    default_size_weights: Weights = Field(_DEFAULT_SIZE_WEIGHTS, description="size prior of the findings not in size_weights")
    lateral: dict[str, Range] = Field(
        default_factory=dict,
        description="per zoned finding, where its centre may lie across its hemithorax, as fractions of the "
        "midline-to-chest-wall distance (absent: the default, 0.02 units to the chest wall)")
    ctr: dict[str, Range] = Field(default_factory=lambda: _sizes((0.58, 0.62), (0.62, 0.67), (0.67, 0.72)),
                                  description="cardiothoracic ratio of cardiomegaly per size")
    nodule_radius: dict[str, Range] = Field(default_factory=lambda: _sizes((0.013, 0.02), (0.02, 0.03), (0.03, 0.039)))
    mass_radius: dict[str, Range] = Field(default_factory=lambda: _sizes((0.04, 0.05), (0.05, 0.062), (0.062, 0.078)))
    consolidation_extent: dict[str, Range] = Field(default_factory=lambda: _sizes((0.045, 0.06), (0.06, 0.08), (0.08, 0.105)))
    effusion_level: dict[str, Range] = Field(
        default_factory=lambda: _sizes((0.76, 0.84), (0.63, 0.71), (0.52, 0.57)),
        description="top of the fluid at the chest wall, fraction of the lung height from the apex")
    effusion_rise: Range = Field((0.18, 0.3), description="how much lower the fluid's top lies at the mediastinum "
                                 "than at the chest wall (the meniscus), fraction of the lung height")
    effusion_wall: Literal["costophrenic angle", "lung edge"] = Field(
        "costophrenic angle",
        description="the chest wall the meniscus climbs: the lateral costophrenic angle's distance from the midline at "
        "every height (above the angle the lung's edge lies medial to it, so the fluid there stays below "
        "effusion_level), or the lung's lateral edge at each height (the fluid reaches effusion_level along the wall)")
    effusion_reach: dict[str, float] = Field(
        default_factory=lambda: {"small": 1.0, "moderate": 1.0, "large": 1.0},
        description="per size, how far from the chest wall the meniscus has fallen by effusion_rise, fraction of the "
        "wall's distance from the midline (1: across the whole hemithorax; small: fluid only in a band along the wall, "
        "where the rise takes its top below the dome)")
    effusion_meniscus_power: float = Field(
        0.45, gt=0, description="shape of the meniscus: its top falls by effusion_rise * u ** power, u the distance "
        "from the wall over effusion_reach (below 1: steepest at the wall; above 1: level near the wall, a lateral wedge)")
    pneumothorax_depth: dict[str, Range] = Field(default_factory=lambda: _sizes((0.02, 0.03), (0.04, 0.055), (0.075, 0.1)),
                                                 description="rim depth at the apex")
    pneumothorax_taper: dict[str, float] = Field(
        default_factory=lambda: {"small": 0.85, "moderate": 0.65, "large": 0.4},
        description="how the rim thins from apex to base: depth * (1 - taper * t), t the lung height fraction "
        "(above 1 the rim ends before the base: an apical pneumothorax)")
    atelectasis_length: dict[str, Range] = Field(
        default_factory=lambda: {"plate": (0.07, 0.12), "band": (0.1, 0.16)}, description="band length per kind")
    atelectasis_half_thickness: dict[str, Range] = Field(
        default_factory=lambda: {"plate": (0.005, 0.008), "band": (0.01, 0.015)}, description="band half thickness per kind")
    cardiomegaly_right_fraction: Range | None = Field(
        None, description="share of the enlarged heart's width right of the midline (None: the patient's own, 0.3-0.4)")
    cardiomegaly_top_rise: Range | None = Field(
        None, description="how far the enlarged heart's top (the right atrium's) lies above where the patient model puts "
        "it, patient units, negative: below (None: where it puts it)")
    cardiomegaly_dome_drop: Range | None = Field(
        None, description="how far both domes' medial ends lie below their peaks under an enlarged heart, fraction of "
        "the dome height (None: the patient's own, 0.25-0.6). The heart's mask ends at the diaphragm, so its lowest "
        "pixel is the notch where the domes meet under it; flatter domes end it near the cardiophrenic angles")

    @model_validator(mode="after")
    def _check(self) -> "PhantomCalibration":
        for name in ("zone_weights", "size_weights"):
            for label, weights in getattr(self, name).items():
                if min(weights) < 0 or not math.isclose(sum(weights), 1.0, abs_tol=1e-9):
                    raise ValueError(f"{name}[{label!r}] must be three non-negative weights summing to 1, got {weights}")
        if min(self.default_size_weights) < 0 or not math.isclose(sum(self.default_size_weights), 1.0, abs_tol=1e-9):
            raise ValueError(f"default_size_weights must sum to 1, got {self.default_size_weights}")
        for name, value in self:
            ranges = value.values() if isinstance(value, dict) else [value]
            for r in ranges:
                if isinstance(r, tuple) and len(r) == 2 and r[0] > r[1]:
                    raise ValueError(f"range in {name} must be (low, high), got {r}")
        for size in ("small", "moderate", "large"):
            for name in ("ctr", "nodule_radius", "mass_radius", "consolidation_extent", "effusion_level",
                         "effusion_reach", "pneumothorax_depth", "pneumothorax_taper"):
                if size not in getattr(self, name):
                    raise ValueError(f"{name} needs an entry for every size, {size!r} is missing")
        if min(self.effusion_reach.values()) <= 0:
            raise ValueError(f"effusion_reach must be positive, got {self.effusion_reach}")
        return self


# Moved towards the real statistics of tasks/grounding.py (bench/results/locations.md has the distances).
# Real medians quoted: box centre height y (0 apex, 1 base), lateral position (0 midline, 1 chest wall) and
# box area over the lung field's box.
CALIBRATED = PhantomCalibration(
    zone_weights={
        "nodule": (0.25, 0.45, 0.30),  # NIH nodule boxes: upper 0.23, middle 0.49, lower 0.28
        "mass": (0.20, 0.65, 0.15),  # NIH mass boxes: 0.21, 0.65, 0.14
        "consolidation": (0.05, 0.6, 0.35),  # RSNA opacity boxes: 0.06, 0.64, 0.29
        "atelectasis": (0.05, 0.50, 0.45),  # NIH atelectasis boxes: 0.05, 0.49, 0.46
    },
    size_weights={
        "effusion": (0.34, 0.33, 0.33),  # NIH effusion boxes vary in area 0.02-0.26 (10th-90th percentile)
        "pneumothorax": (0.45, 0.35, 0.2),
        "cardiomegaly": (0.6, 0.25, 0.15),  # NIH heart boxes are narrow: 0.56 of the field, more small ones
        "atelectasis": (0.25, 0.35, 0.4),  # more lobar wedges: NIH boxes 0.031 of the field, phantom bands 0.010
    },
    lateral={"mass": (0.0, 0.6), "consolidation": (0.0, 0.6), "atelectasis": (0.05, 0.65)},  # real lateral ~0.46
    mass_radius=_sizes((0.035, 0.05), (0.05, 0.066), (0.066, 0.09)),  # NIH mass boxes vary more in size
    nodule_radius=_sizes((0.017, 0.026), (0.026, 0.039), (0.039, 0.05)),  # NIH nodule boxes 1.6x the phantom's area
    consolidation_extent=_sizes((0.055, 0.075), (0.075, 0.1), (0.1, 0.13)),  # RSNA boxes 1.5x
    # NIH heart boxes 0.286 of the field, phantom 0.330; the floor stays above the clinical 0.5
    ctr=_sizes((0.53, 0.56), (0.56, 0.6), (0.6, 0.7)),
    # NIH heart boxes: taller (h/w 0.80 against 0.67), centred higher (y 0.63 against 0.67) and spread 2.5-4x more
    # in x and y: the heart's share right of the midline varies more, its top rises or falls, and flat domes under
    # it end its box near the cardiophrenic angles (NIH box bottoms at y 0.89) rather than the notch between them.
    # 2026-12-05: the heart's side share and top spread wider (NIH box centres spread 0.058 in x, 0.09 in y;
    # the phantom's 0.041 and 0.029), 0.388 -> 0.284 on 300 phantoms at 128 px
    cardiomegaly_right_fraction=(0.18, 0.52),
    cardiomegaly_top_rise=(-0.06, 0.1),
    cardiomegaly_dome_drop=(0.0, 0.2),
    # NIH effusion boxes: tall and narrow (h/w 1.6), centred at y 0.64, their tops at 0.44 at the median (a
    # quarter above 0.18): the fluid climbs the lateral wall high (effusion_level, cut at the region's top, the
    # lung's apical fifth) and falls steeply towards the midline; its size is how high it climbs and how far it
    # reaches across, from a rim along the wall (small) to a wedge over most of the base (large). 2026-12-07, with
    # the effusion region widened from the lower half: 0.609 -> 0.444 on 300 phantoms at 128 px.
    effusion_level=_sizes((0.45, 0.7), (0.3, 0.5), (0.15, 0.35)),
    effusion_rise=(0.3, 0.5),
    effusion_wall="lung edge",
    effusion_reach={"small": 0.1, "moderate": 0.3, "large": 0.6},
    effusion_meniscus_power=2.0,
    pneumothorax_depth=_sizes((0.012, 0.02), (0.025, 0.035), (0.04, 0.06)),
    pneumothorax_taper={"small": 2.6, "moderate": 2.0, "large": 1.2},  # apical: SIIM boxes centre at y 0.18
    atelectasis_length={"plate": (0.09, 0.14), "band": (0.12, 0.18)},
    atelectasis_half_thickness={"plate": (0.015, 0.022), "band": (0.025, 0.035)},
)
