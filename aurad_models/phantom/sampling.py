"""Which findings an image gets: sampled from the configured prior, or completed from a request.

`sample_findings` draws labels from `PhantomConfig.prevalence` with the co-occurrence boosts (odds
multipliers), then completes each one. `complete_finding` fills whatever attribute a requested finding
leaves unspecified (side, zone, size), so every returned finding is fully specified and renders back
to the same report.
"""

from __future__ import annotations

import numpy as np

from aurad_models.findings import Finding
from aurad_models.phantom.config import PhantomConfig
from aurad_models.vocabulary import LATERAL_FINDINGS, PATHOLOGIES, SIZES, ZONED_FINDINGS, ZONES

# Sampling order: a finding is drawn after the findings that can raise its odds.
_SAMPLING_ORDER = ("cardiomegaly", "consolidation", "mass", "effusion", "atelectasis", "nodule", "pneumothorax")

# Where findings tend to sit on an upright film (upper, middle, lower zone).
_ZONE_WEIGHTS = {
    "nodule": (0.4, 0.3, 0.3),
    "mass": (0.45, 0.35, 0.2),
    "consolidation": (0.2, 0.35, 0.45),
    "atelectasis": (0.15, 0.3, 0.55),
}
_SIZE_WEIGHTS = {
    "effusion": (0.45, 0.35, 0.2),
    "pneumothorax": (0.45, 0.35, 0.2),
    "cardiomegaly": (0.45, 0.35, 0.2),
}
_DEFAULT_SIZE_WEIGHTS = (0.4, 0.35, 0.25)


def sample_findings(rng: np.random.Generator, config: PhantomConfig, calibration=None) -> tuple[Finding, ...]:
    """Draw the findings of one image from the configured prior; fully specified, in PATHOLOGIES order.
    `calibration` (a `PhantomCalibration`, opt-in) replaces the zone and size priors."""
    present: list[str] = []
    for label in (*_SAMPLING_ORDER, *(label for label in PATHOLOGIES if label not in _SAMPLING_ORDER)):
        p = config.prevalence.get(label, 0.0)
        odds_boost = 1.0
        for given in present:
            odds_boost *= config.cooccurrence.get(given, {}).get(label, 1.0)
        u = rng.uniform()  # always drawn: the number of draws does not depend on earlier outcomes
        if p <= 0.0:
            continue
        if p >= 1.0:
            present.append(label)
            continue
        odds = p / (1.0 - p) * odds_boost
        if u < odds / (1.0 + odds):
            present.append(label)
    labels = sorted(present, key=PATHOLOGIES.index)
    return tuple(complete_finding(rng, Finding(label=label), config, calibration) for label in labels)


def complete_finding(rng: np.random.Generator, finding: Finding, config: PhantomConfig, calibration=None) -> Finding:
    """Fill unspecified side / zone / size at random; specified attributes are kept. `calibration` (a
    `PhantomCalibration`, opt-in) replaces the zone and size priors; None keeps the default ones."""
    label = finding.label
    zone_weights = _ZONE_WEIGHTS if calibration is None else calibration.zone_weights
    size_weights = _SIZE_WEIGHTS if calibration is None else calibration.size_weights
    default_size_weights = _DEFAULT_SIZE_WEIGHTS if calibration is None else calibration.default_size_weights
    side, zone, size = finding.side, finding.zone, finding.size
    if label in LATERAL_FINDINGS and side is None:
        if rng.uniform() < config.bilateral.get(label, 0.0):
            side = "bilateral"
        else:
            side = "right" if rng.uniform() < 0.5 else "left"
    if label in ZONED_FINDINGS and zone is None:
        zone = ZONES[int(rng.choice(3, p=zone_weights.get(label, (1 / 3, 1 / 3, 1 / 3))))]
    if size is None:
        size = SIZES[int(rng.choice(3, p=size_weights.get(label, default_size_weights)))]
    return Finding(label=label, side=side, zone=zone, size=size)
