"""Typed configuration of the procedural CXR phantom: output size, finding prior, patient variation.

Every field has a default, so `PhantomConfig()` is the embedded default and a YAML mapping with any
subset of the fields validates into one (`PhantomConfig.model_validate(yaml.safe_load(text))`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aurad_models.vocabulary import PATHOLOGIES

MIN_SIZE = 64
MAX_SIZE = 1024
# Bumped whenever the same config draws different phantoms (2: nodule, mass and effusion sizes calibrated
# against the NIH boxes). Part of the source dataset's fingerprint, so models trained on an older phantom
# are never taken for models of this one.
PHANTOM_VERSION = 2

# Per-image prevalence, tuned so that about a third of the images are normal once the co-occurrence
# boosts below are applied (a finding-rich dataset: the downstream models need positives).
DEFAULT_PREVALENCE: dict[str, float] = {
    "nodule": 0.14,
    "mass": 0.07,
    "consolidation": 0.14,
    "effusion": 0.17,
    "pneumothorax": 0.08,
    "cardiomegaly": 0.15,
    "atelectasis": 0.13,
}

# Odds multipliers: when the key finding is present, the odds of each listed finding are multiplied.
# Heart failure brings effusions; effusions compress the lung (atelectasis); pneumonia brings
# parapneumonic effusions; a mass brings satellite nodules and post-obstructive atelectasis.
DEFAULT_COOCCURRENCE: dict[str, dict[str, float]] = {
    "cardiomegaly": {"effusion": 3.0},
    "effusion": {"atelectasis": 2.0},
    "consolidation": {"effusion": 1.5},
    "mass": {"nodule": 1.5, "atelectasis": 1.5},
}

# Chance that a lateral finding is bilateral when its side is sampled.
DEFAULT_BILATERAL: dict[str, float] = {
    "nodule": 0.15,
    "mass": 0.03,
    "consolidation": 0.2,
    "effusion": 0.3,
    "pneumothorax": 0.02,
    "atelectasis": 0.25,
}


def _check_label_keys(mapping: dict[str, object], what: str) -> None:
    unknown = sorted(set(mapping) - set(PATHOLOGIES))
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown} in {what}; known: {', '.join(PATHOLOGIES)}")


Range = tuple[float, float]


class PatientVariation(BaseModel):
    """Ranges (low, high) the random patient is drawn from, uniformly unless said otherwise.

    Lengths are fractions of the image width (the field of view is about 38 cm wide).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    zoom: Range = Field((0.92, 1.06), description="field of view: patient size relative to the detector")
    tilt_deg: Range = Field((-3.0, 3.0), description="in-plane rotation of the patient on the detector, degrees")
    axial_rotation: Range = Field(
        (-0.015, 0.015),
        description="patient rotation: offset of the spinous processes from the midline, fraction of the image width",
    )
    inspiration: Range = Field(
        (0.0, 1.0), description="depth of inspiration: 0 = shallow (8 posterior ribs), 1 = deep (11 posterior ribs)"
    )
    thorax_half_width: Range = Field(
        (0.33, 0.39), description="midline to the lateral costophrenic angle, fraction of the image width"
    )
    cardiothoracic_ratio: Range = Field(
        (0.39, 0.49), description="heart width / thorax width of normal hearts; cardiomegaly draws its own"
    )
    body_thickness_cm: Range = Field((18.0, 30.0), description="posteroanterior thickness of the chest, cm")
    soft_tissue_margin: Range = Field(
        (0.025, 0.09), description="chest wall outside the ribs (habitus), fraction of the image width"
    )
    breast_probability: float = Field(0.4, ge=0.0, le=1.0, description="chance a patient has breast shadows, 0-1")
    gastric_bubble_probability: float = Field(
        0.7, ge=0.0, le=1.0, description="chance of a gastric air bubble under the left hemidiaphragm, 0-1"
    )


class ImagingVariation(BaseModel):
    """Acquisition and display: how the same patient can look on different machines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    photons_per_pixel: Range = Field(
        (30000.0, 200000.0), description="unattenuated X-ray quanta per pixel at 256 px (drawn log-uniform)"
    )
    noise_scale: float = Field(1.0, ge=0.0, description="multiplier of the quantum noise; 0 turns it off")
    blur: Range = Field((0.0008, 0.0022), description="detector blur sigma, fraction of the image width")
    bone_contrast: Range = Field((1.7, 2.4), description="bone / soft-tissue attenuation ratio (lower at high kVp)")
    detail_enhancement: Range = Field((0.4, 1.0), description="unsharp-mask gain of the digital processing")
    range_compression: Range = Field(
        (0.65, 0.9), description="share of the large-scale contrast kept by the digital processing"
    )
    gamma: Range = Field((0.85, 1.15), description="display gamma applied to the windowed image")
    window_jitter: float = Field(
        0.04,
        ge=0.0,
        le=0.2,
        description="largest random shift of the display window, fraction of the lung-to-mediastinum span",
    )


class PhantomConfig(BaseModel):
    """The phantom dataset: output size, finding prior, and the patient / imaging variation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(128, description="square output size in pixels, 64..1024")
    prevalence: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_PREVALENCE),
        description="per-image probability of each finding; findings missing here are never sampled",
    )
    cooccurrence: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_COOCCURRENCE.items()},
        description="odds multipliers: when the key finding is present, the listed findings' odds are multiplied",
    )
    bilateral: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_BILATERAL),
        description="chance, per lateral finding, that it is bilateral when its side is drawn (0-1)",
    )
    air_bronchogram_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="chance a consolidation shows air bronchograms, 0-1"
    )
    patient: PatientVariation = Field(
        default_factory=PatientVariation, description="ranges the random patient is drawn from"
    )
    imaging: ImagingVariation = Field(
        default_factory=ImagingVariation, description="ranges of the acquisition and display settings"
    )

    @field_validator("size")
    @classmethod
    def _check_size(cls, size: int) -> int:
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"phantom size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
        return size

    @field_validator("prevalence", "bilateral")
    @classmethod
    def _check_probabilities(cls, mapping: dict[str, float]) -> dict[str, float]:
        _check_label_keys(mapping, "prevalence / bilateral")
        bad = {k: v for k, v in mapping.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"probabilities must lie in [0, 1], got {bad}")
        return mapping

    @field_validator("cooccurrence")
    @classmethod
    def _check_cooccurrence(cls, mapping: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        _check_label_keys(mapping, "cooccurrence")
        for given, boosts in mapping.items():
            _check_label_keys(boosts, f"cooccurrence[{given!r}]")
            if any(v < 0 for v in boosts.values()):
                raise ValueError(f"cooccurrence odds multipliers must be >= 0, got {boosts} for {given!r}")
        return mapping

    @model_validator(mode="after")
    def _check_ranges(self) -> "PhantomConfig":
        for group in (self.patient, self.imaging):
            for name, value in group:
                if isinstance(value, tuple) and value[0] > value[1]:
                    raise ValueError(f"range {name} must be (low, high), got {value}")
        return self
