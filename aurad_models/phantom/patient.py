"""The random patient: every geometric and acquisition parameter of one phantom, drawn from one stream.

Coordinates are patient coordinates in units of the detector width at zoom 1 (`FOV_CM` centimetres):
x grows to the image's right (the patient's left), y grows downwards. Nothing here depends on the output
size, so one seed gives the same patient at 64 and at 1024 pixels. The number of draws is fixed, so the
same seed gives the same patient whatever findings are later drawn on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter

from aurad_models.phantom.config import ImagingVariation, PatientVariation

FOV_CM = 38.0  # one patient-coordinate unit in centimetres (a 38 cm wide detector at zoom 1)
MU_WATER = 0.2  # effective linear attenuation of soft tissue, 1/cm, at a chest kVp
N_VERTEBRAE = 18  # C6 .. L3 drawn; index T1 is the first thoracic vertebra
T1 = 2


@dataclass(frozen=True)
class Side:
    """One hemithorax. sgn is -1 for the patient's right (image left) and +1 for the patient's left."""

    sgn: int
    apex_x: float  # apex centre, distance from the midline
    top: float  # y of the lung apex
    cp: float  # y of the costophrenic angle: the lowest point of the lung field
    width: float  # midline to the lateral costophrenic angle
    p_lat: float  # superellipse exponents of the lateral wall and of the apex
    q: float
    dome_height: float  # dome peak above the costophrenic angle
    dome_peak: float  # dome peak position, fraction of `width` from the midline
    dome_medial_drop: float  # medial end of the dome below its peak, fraction of dome_height
    dome_power: float  # steepness of the lateral slope into the costophrenic angle
    hilum_y: float
    column: float  # mediastinal border above the heart, distance from the midline
    heart_top: float  # where this side's heart border starts (right atrium / left ventricle)
    heart_waist: float  # height of the widest point of the heart border above the dome
    clavicle: tuple[float, float, float, float, float, float]  # medial lat, y; lateral lat, y; half thickness; S-curve
    # Scapula: superior angle (lat, y), inferior angle (lat, y), glenoid (lat, y).
    scapula: tuple[float, float, float, float, float, float]
    humerus: tuple[float, float, float]  # head centre lat, y, radius

    @property
    def a_lat(self) -> float:
        return self.width - self.apex_x

    @property
    def height(self) -> float:
        return self.cp - self.top


@dataclass(frozen=True)
class Patient:
    """All parameters of one phantom."""

    x_mid: float
    right: Side
    left: Side
    # Cardiomediastinal silhouette.
    ctr: float  # cardiothoracic ratio: heart width / thorax width at the costophrenic angles
    heart_right_fraction: float  # share of the heart width right of the midline
    heart_shape: float  # superellipse exponent of the heart borders (2 = elliptical)
    svc_bulge: float
    inlet_flare: float  # great vessels widening the mediastinum at the thoracic inlet
    knob: tuple[float, float, float, float]  # y, lateral extent from the midline, radius, half height
    trunk: tuple[float, float, float]  # pulmonary trunk: y, lateral extent, vertical half height
    descending_aorta: tuple[float, float]  # lateral offset at the diaphragm, radius
    trachea: tuple[float, float, float, float]  # half width, carina y, deviation at the knob, shift
    # Spine and ribs.
    spine_offset: float
    scoliosis: tuple[float, float]
    vertebra_levels: np.ndarray  # (N_VERTEBRAE + 1,) top y of each vertebra
    vertebra_half_width: float
    rib_offsets: np.ndarray  # (12,) jitter of each rib level, fraction of a level
    rib_widths: np.ndarray  # (12,) posterior rib thickness, fraction of a level
    rib_anterior_width: float
    rib_drop: float  # how far a rib descends from the spine to the lateral wall
    rib_hump: float  # how far a posterior rib rises before it turns down
    rib_anterior_slope: float
    # Body.
    body_cm: float
    soft_tissue_margin: float
    neck_half_width: float
    shoulder_y: float
    shoulder_width: float
    arm: tuple[float, float]  # lateral position of the upper arms at the shoulder, outward drift
    breast: tuple[float, float, float, float] | None  # lat, y, radius, thickness cm
    gastric_bubble: tuple[float, float, float, float] | None  # lat, depth below the dome, a, b
    lung_depth: float  # lung AP depth as a share of the body thickness
    lung_density: float
    texture: np.ndarray  # (24, 24) smoothed standard-normal field over the patient square
    vessel_seed: int
    # Acquisition and display.
    zoom: float
    tilt: float  # radians
    shift: tuple[float, float]
    photons: float
    blur: float
    bone_contrast: float
    detail: float
    compression: float
    gamma: float
    window_shift: float

    def side(self, name: str) -> Side:
        return self.left if name == "left" else self.right

    @property
    def thorax_width(self) -> float:
        return self.right.width + self.left.width

    @property
    def carina_y(self) -> float:
        return self.trachea[1]

    @property
    def heart_halves(self) -> tuple[float, float]:
        """Heart border distances from the midline (right, left): they set the CTR exactly."""
        width = self.ctr * self.thorax_width
        return self.heart_right_fraction * width, (1.0 - self.heart_right_fraction) * width


def _u(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def sample_patient(rng: np.random.Generator, variation: PatientVariation, imaging: ImagingVariation) -> Patient:
    """Draw one patient. The number and order of draws is fixed (see the module docstring)."""
    u = rng.uniform
    insp = _u(rng, variation.inspiration)
    top = u(0.095, 0.135)
    cp_r = 0.625 + 0.115 * insp + rng.normal(0.0, 0.008)
    cp_l = cp_r + u(-0.004, 0.022)
    half_width = _u(rng, variation.thorax_half_width)
    apex_x = u(0.1, 0.135)
    dome_r = u(0.055, 0.095)
    dome_l = dome_r - u(-0.012, 0.03)  # the right dome usually stands higher
    hilum_r = top + u(0.23, 0.27)
    knob_y = top + u(0.14, 0.18)
    carina = knob_y + u(0.035, 0.06)
    trunk_y = knob_y + u(0.065, 0.085)
    sides = []
    for sgn, cp, dome, hilum in ((-1, cp_r, dome_r, hilum_r), (1, cp_l, dome_l, hilum_r - u(0.0, 0.03))):
        width = half_width + u(-0.012, 0.012)
        clav_medial_y = top + u(0.035, 0.075)
        sides.append(
            Side(
                sgn=sgn,
                apex_x=apex_x + u(-0.01, 0.01),
                top=top + u(-0.008, 0.008),
                cp=cp,
                width=width,
                p_lat=u(1.8, 2.5),
                q=u(1.5, 2.1),
                dome_height=max(dome, 0.035),
                dome_peak=u(0.4, 0.55) if sgn < 0 else u(0.5, 0.65),
                dome_medial_drop=u(0.25, 0.6),
                dome_power=u(1.7, 2.5),
                hilum_y=hilum,
                column=u(0.05, 0.064) if sgn < 0 else u(0.045, 0.058),
                heart_top=(carina + u(0.02, 0.05)) if sgn < 0 else (trunk_y + u(-0.01, 0.015)),
                heart_waist=u(0.015, 0.06),
                clavicle=(
                    u(0.02, 0.04),
                    clav_medial_y,
                    width + u(-0.06, -0.02),
                    clav_medial_y - u(0.0, 0.055),
                    u(0.0105, 0.0145),
                    u(0.004, 0.014),
                ),
                scapula=(
                    width - u(0.06, 0.12),
                    top + u(-0.02, 0.02),
                    width - u(0.02, 0.09),
                    top + u(0.27, 0.37),
                    width + u(0.035, 0.06),
                    top + u(0.07, 0.1),
                ),
                humerus=(width + u(0.09, 0.13), top + u(0.05, 0.09), u(0.045, 0.06)),
            )
        )
    right, left = sides
    knob_r = u(0.02, 0.03)
    spacing = (cp_r - (top - 0.015)) / (9.3 + 2.2 * insp + rng.normal(0.0, 0.3))
    has_breast = rng.uniform() < variation.breast_probability
    breast = (u(0.17, 0.25), cp_r - u(0.05, 0.11), u(0.11, 0.16), u(1.0, 2.5))
    has_bubble = rng.uniform() < variation.gastric_bubble_probability
    bubble = (u(0.08, 0.2), u(0.035, 0.06), u(0.03, 0.065), u(0.02, 0.04))
    return Patient(
        x_mid=0.5,
        right=right,
        left=left,
        ctr=_u(rng, variation.cardiothoracic_ratio),
        heart_right_fraction=u(0.3, 0.4),
        heart_shape=u(1.8, 2.6),
        svc_bulge=u(0.0, 0.015),
        inlet_flare=u(0.005, 0.025),
        knob=(knob_y, u(0.075, 0.097), knob_r, u(0.03, 0.045)),
        trunk=(trunk_y, u(0.068, 0.085), u(0.028, 0.04)),
        descending_aorta=(u(0.02, 0.04), knob_r * u(0.7, 0.85)),
        trachea=(u(0.0155, 0.021), carina, u(0.004, 0.012), u(-0.004, 0.004)),
        spine_offset=_u(rng, variation.axial_rotation),
        scoliosis=(u(-0.012, 0.012), u(0.0, 2 * np.pi)),
        vertebra_levels=_vertebra_levels(top - u(0.0, 0.03), spacing, N_VERTEBRAE),
        vertebra_half_width=u(0.026, 0.033),
        rib_offsets=rng.normal(0.0, 0.06, 12),
        rib_widths=np.clip(rng.normal(u(0.36, 0.46), 0.03, 12), 0.28, 0.55),
        rib_anterior_width=u(0.42, 0.56),
        rib_drop=u(0.05, 0.075),
        rib_hump=u(0.008, 0.018),
        rib_anterior_slope=u(0.12, 0.2),
        body_cm=_u(rng, variation.body_thickness_cm),
        soft_tissue_margin=_u(rng, variation.soft_tissue_margin),
        neck_half_width=u(0.085, 0.115),
        shoulder_y=top + u(-0.05, 0.0),
        shoulder_width=u(0.5, 0.58),
        arm=(u(0.45, 0.56), u(0.0, 0.12)),
        breast=breast if has_breast else None,
        gastric_bubble=bubble if has_bubble else None,
        lung_depth=u(0.55, 0.7),
        lung_density=u(0.12, 0.22),
        texture=_smooth_field(rng, 24, sigma=1.0),
        vessel_seed=int(rng.integers(0, 2**31 - 1)),
        zoom=_u(rng, variation.zoom),
        tilt=np.deg2rad(_u(rng, variation.tilt_deg)),
        shift=(u(-0.015, 0.015), u(-0.03, 0.02)),
        photons=float(np.exp(u(*np.log(imaging.photons_per_pixel)))),
        blur=_u(rng, imaging.blur),
        bone_contrast=_u(rng, imaging.bone_contrast),
        detail=_u(rng, imaging.detail_enhancement),
        compression=_u(rng, imaging.range_compression),
        gamma=_u(rng, imaging.gamma),
        window_shift=float(rng.uniform(-1.0, 1.0) * imaging.window_jitter),
    )


def _vertebra_levels(t1_top: float, spacing: float, n: int) -> np.ndarray:
    """Top edge of each vertebra from C6 down; thoracic and lumbar bodies grow taller downwards."""
    heights = spacing * np.array([0.8 if k < T1 else 1.0 + 0.022 * (k - T1) for k in range(n)])
    levels = np.empty(n + 1)
    levels[T1] = t1_top
    for k in range(T1 - 1, -1, -1):
        levels[k] = levels[k + 1] - heights[k]
    for k in range(T1, n):
        levels[k + 1] = levels[k] + heights[k]
    return levels


def _smooth_field(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    return (field / (field.std() + 1e-9)).astype(np.float32)


def dome_y(side: Side, x_mid: float, x: np.ndarray | float) -> np.ndarray:
    """y of the hemidiaphragm under the lung of `side` at x (defined across the whole width)."""
    lat = side.sgn * (np.asarray(x, dtype=np.float32) - x_mid)
    peak_lat = side.dome_peak * side.width
    peak_y = side.cp - side.dome_height
    lateral = np.clip((lat - peak_lat) / (side.width - peak_lat), 0.0, None)
    medial = np.clip((peak_lat - lat) / peak_lat, 0.0, None)
    shape = lateral**side.dome_power + side.dome_medial_drop * medial * medial
    return (peak_y + side.dome_height * shape).astype(np.float32)


def with_cardiomegaly(p: Patient, ctr: float) -> Patient:
    """The same patient with a heart widened to the given cardiothoracic ratio (and a little taller)."""
    grow = ctr - p.ctr
    right = replace(p.right, heart_top=p.right.heart_top - 0.15 * grow)
    left = replace(p.left, heart_top=p.left.heart_top - 0.1 * grow)
    return replace(p, ctr=ctr, right=right, left=left)


def with_volume_loss(p: Patient, side: str, amount: float) -> Patient:
    """Volume loss on one side: the hemidiaphragm rises and the trachea shifts towards that side."""
    s = p.side(side)
    raised = replace(s, cp=s.cp - amount, dome_height=s.dome_height + 0.3 * amount)
    half, carina, dev, shift = p.trachea
    return replace(p, **{side: raised}, trachea=(half, carina, dev, shift + s.sgn * 0.25 * amount))
