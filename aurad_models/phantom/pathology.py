"""Findings drawn on a phantom by anatomy-aware rules, each with its exact mask.

Every mask is cut to the region `anatomy_rules.allowed_region` allows (a lung lesion to the lung field
of its side, an effusion to that lung field below its apex, cardiomegaly to the heart), and the
opacity a finding adds is confined to its mask, so image and mask agree. A lesion is placed in its
requested zone in patient coordinates, then checked on the pixel masks with `located_zone` /
`located_side` and placed again if the check fails.

Findings that change the anatomy itself (cardiomegaly widens the heart, atelectasis loses volume)
do it through `adjust_patient` before the anatomy is rendered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import distance_transform_edt

from aurad_models.anatomy_rules import allowed_region, located_side, located_zone
from aurad_models.findings import Finding
from aurad_models.phantom.anatomy import Anatomy, Grid, Silhouette, cage_half_width, cage_value, lung_field, smoothstep
from aurad_models.phantom.patient import FOV_CM, Patient, dome_y, with_cardiomegaly, with_volume_loss
from aurad_models.phantom.render import LesionFields
from aurad_models.phantom.vessels import splat_segments
from aurad_models.vocabulary import PATHOLOGIES, ZONES, pathology_index

if TYPE_CHECKING:
    from aurad_models.phantom.calibration import PhantomCalibration

logger = logging.getLogger(__name__)

F32 = np.float32
# Sizes in patient units: one unit is the 38 cm detector width, so 0.026 is about 1 cm.
# Nodule and mass radii are calibrated against the real NIH ChestX-ray14 boxes that torchxrayvision ships
# (BBox_List_2017: median nodule box 0.069 of the image width, mass 0.12-0.14): a nodule is 1-3 cm across,
# a mass from 3 cm. The earlier radii gave nodule boxes of 0.031 (0.45x the real median), 2 px at 64 px,
# which no 64 px segmenter could learn (bench/results/grounding.md measures the boxes).
_CTR = {"small": (0.58, 0.62), "moderate": (0.62, 0.67), "large": (0.67, 0.72)}
_NODULE_RADIUS = {"small": (0.013, 0.02), "moderate": (0.02, 0.03), "large": (0.03, 0.039)}
_MASS_RADIUS = {"small": (0.04, 0.05), "moderate": (0.05, 0.062), "large": (0.062, 0.078)}
_CONSOLIDATION_EXTENT = {"small": (0.045, 0.06), "moderate": (0.06, 0.08), "large": (0.08, 0.105)}
# Top of the fluid at the chest wall, as a fraction of the lung height from the apex. Raised from
# (0.86-0.92, 0.68-0.76, 0.53-0.58): the effusion boxes were 0.06 of the image against the NIH boxes' 0.20-0.27.
_EFFUSION_LEVEL = {"small": (0.76, 0.84), "moderate": (0.63, 0.71), "large": (0.52, 0.57)}
_EFFUSION_RECESS = {"small": 0.5, "moderate": 0.9, "large": 1.0}
_EFFUSION_REACH = {"small": 1.0, "moderate": 1.0, "large": 1.0}  # the meniscus falls across the whole hemithorax
_PNEUMOTHORAX_DEPTH = {"small": (0.02, 0.03), "moderate": (0.04, 0.055), "large": (0.075, 0.1)}
_PNEUMOTHORAX_TAPER = {"small": 0.85, "moderate": 0.65, "large": 0.4}
_VOLUME_LOSS = {"small": 0.0, "moderate": 0.012, "large": 0.028}
MIN_MASK_PIXELS = 3
PLACEMENT_ATTEMPTS = 12


def sides_of(finding: Finding) -> tuple[str, ...]:
    return ("right", "left") if finding.side == "bilateral" else (finding.side,)


def adjust_patient(p: Patient, findings: tuple[Finding, ...], rng: np.random.Generator, calibration=None) -> Patient:
    """Anatomy changes a finding brings: a wider heart, a raised hemidiaphragm. `calibration`: an opt-in
    `PhantomCalibration` whose tables replace this module's (None: the default phantom)."""
    ctr = _CTR if calibration is None else calibration.ctr
    for f in findings:
        if f.label == "cardiomegaly":
            p = with_cardiomegaly(p, float(rng.uniform(*ctr[f.size])))
            if calibration is not None:
                p = _calibrated_heart(p, calibration, rng)
        elif f.label == "atelectasis" and _VOLUME_LOSS[f.size] > 0:
            for side in sides_of(f):
                p = with_volume_loss(p, side, _VOLUME_LOSS[f.size] * float(rng.uniform(0.7, 1.3)))
    return p


def _calibrated_heart(p: Patient, calibration: PhantomCalibration, rng: np.random.Generator) -> Patient:
    """Where a calibration puts the enlarged heart (each table left at None keeps the patient's): its share right
    of the midline, its top, and the domes under it, which set where its box ends below."""
    if calibration.cardiomegaly_right_fraction is not None:
        p = replace(p, heart_right_fraction=float(rng.uniform(*calibration.cardiomegaly_right_fraction)))
    if calibration.cardiomegaly_top_rise is not None:
        rise = float(rng.uniform(*calibration.cardiomegaly_top_rise))
        p = replace(p, right=replace(p.right, heart_top=p.right.heart_top - rise))
    if calibration.cardiomegaly_dome_drop is not None:
        drop = float(rng.uniform(*calibration.cardiomegaly_dome_drop))
        p = replace(p, right=replace(p.right, dome_medial_drop=drop), left=replace(p.left, dome_medial_drop=drop))
    return p


@dataclass
class _Scene:
    """What every drawing function needs about the image."""

    p: Patient
    grid: Grid
    sil: Silhouette
    anatomy: Anatomy
    stack: np.ndarray  # (14, S, S) anatomy masks for anatomy_rules
    rng: np.random.Generator
    air_bronchogram_probability: float = 0.5
    calibration: object = None  # an opt-in PhantomCalibration; None draws with this module's tables

    def table(self, name: str, default):
        """One of the size / placement tables: the calibration's where one is given, else the module's."""
        return default if self.calibration is None else getattr(self.calibration, name)


def draw_findings(
    p: Patient,
    grid: Grid,
    sil: Silhouette,
    anatomy: Anatomy,
    findings: tuple[Finding, ...],
    rng: np.random.Generator,
    air_bronchogram_probability: float,
    calibration=None,
) -> tuple[np.ndarray, LesionFields]:
    """Masks (C, S, S) and the tissue changes of all findings, each drawn by its entry in `DRAWERS`
    (`calibration`: see `adjust_patient`)."""
    size = grid.size
    masks = np.zeros((len(PATHOLOGIES), size, size), dtype=bool)
    fields = LesionFields.empty(size)
    scene = _Scene(p, grid, sil, anatomy, anatomy.masks, rng, air_bronchogram_probability, calibration)
    for f in findings:
        if f.label not in DRAWERS:
            raise KeyError(f"the phantom cannot draw {f.label!r}: add its drawing to aurad_models.phantom.pathology.DRAWERS")
        masks[pathology_index(f.label)] |= DRAWERS[f.label](scene, f, fields)
    return masks, fields


# --- placement -----------------------------------------------------------------------------------


def _image_zone_fraction(scene: _Scene, side: str, x: float, y: float) -> float:
    """How far down the lung a point lies, as `anatomy_rules` measures it: by image rows."""
    p, s = scene.p, scene.p.side(side)
    _, rows = scene.grid.to_pixel(
        np.array([p.x_mid + s.sgn * s.apex_x, p.x_mid + s.sgn * s.width, x]), np.array([s.top, s.cp, y])
    )
    return float((rows[2] - rows[0]) / max(rows[1] - rows[0], 1e-6))


def _place(scene: _Scene, side: str, zone: str, radius: float, keep_inside: float, label: str | None = None) -> tuple[float, float]:
    """A centre in the zone of one lung with a ring of `keep_inside * radius` inside the lung field.

    Random tries with a shrinking ring first; when the zone is a thin sliver (a huge heart, a raised
    dome), any point of the zone's lung field on a fine lattice. A calibration's `lateral` range for
    `label` bounds how far from the midline the centre may lie.
    """
    p, s, rng = scene.p, scene.p.side(side), scene.rng
    lateral = scene.table("lateral", {}).get(label)
    z = ZONES.index(zone)
    ring = np.linspace(0.0, 2 * np.pi, 12, endpoint=False)
    margin = 0.07
    for attempt in range(300):
        relax = 0.5 ** (attempt // 100)
        t = rng.uniform(z / 3 + margin, (z + 1) / 3 - margin)
        y = s.top + t * s.height
        if lateral is None:
            x = p.x_mid + s.sgn * rng.uniform(0.02, s.width)
        else:
            x = p.x_mid + s.sgn * rng.uniform(lateral[0] * s.width, lateral[1] * s.width)
        if not margin <= _image_zone_fraction(scene, side, x, y) - z / 3 <= 1 / 3 - margin:
            continue
        r = keep_inside * radius * relax
        xs = np.concatenate([[x], x + r * np.cos(ring)]).astype(F32)
        ys = np.concatenate([[y], y + r * np.sin(ring)]).astype(F32)
        if lung_field(p, xs, ys, side, scene.sil).all():
            return x, y
    lattice_t = np.linspace(z / 3 + 0.03, (z + 1) / 3 - 0.03, 40)
    lattice_lat = np.linspace(0.0, s.width, 80)
    tt, ll = np.meshgrid(lattice_t, lattice_lat)
    xs = (p.x_mid + s.sgn * ll).ravel().astype(F32)
    ys = (s.top + tt * s.height).ravel().astype(F32)
    inside = np.flatnonzero(lung_field(p, xs, ys, side, scene.sil))
    if inside.size == 0:
        raise RuntimeError(f"the {side} lung has no {zone} zone to place a lesion in")
    k = int(rng.choice(inside))
    return float(xs[k]), float(ys[k])


def _check(scene: _Scene, mask: np.ndarray, finding: Finding) -> bool:
    if mask.sum() < 1:
        return False
    if located_side(mask, scene.stack) != finding.side:
        return False
    return finding.zone is None or located_zone(mask, scene.stack) == finding.zone


# --- nodule, mass, consolidation, atelectasis ------------------------------------------------------


def _zoned_lesion(scene: _Scene, f: Finding, fields: LesionFields) -> np.ndarray:
    """Draw a lesion, checking it on the pixel masks; a few new placements if it misses its zone.

    On a bilateral lesion neither side may hold more than 2.5 times the other (a lung squeezed by a big
    heart holds a smaller lesion): the larger side is cut back to its densest part. A lobar wedge that
    cannot fit falls back to a band of atelectasis.
    """
    drawers = {"nodule": _round_lesion, "mass": _round_lesion, "consolidation": _consolidation, "atelectasis": _atelectasis}
    draw = drawers[f.label]
    best = None
    for attempt in range(PLACEMENT_ATTEMPTS):
        params = _lesion_params(scene, f, scene.air_bronchogram_probability)
        if params.get("kind") == "wedge" and attempt >= PLACEMENT_ATTEMPTS // 2:
            params["kind"] = "band"
        drawn = []
        for side in sides_of(f):
            m, r = draw(scene, side, f, params)
            m &= scene.anatomy.lung(side)
            drawn.append((m, r * m))
        if len(drawn) == 2:
            drawn = _balance(drawn)
        mask = drawn[0][0] | (drawn[1][0] if len(drawn) == 2 else False)
        replaced = sum(r for _, r in drawn)
        best = (mask, replaced)
        if _check(scene, mask, f):
            break
        logger.debug("re-placing %s: mask missed its side or zone", f.label)
    else:
        logger.warning("%s could not be placed exactly in the %s %s zone; kept the last try", f.label, f.side, f.zone)
    mask, replaced = best
    fields.replaced += replaced
    return mask


def _balance(drawn: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut the larger side of a bilateral lesion to at most 2.5 times the smaller, keeping its densest pixels."""
    counts = [int(m.sum()) for m, _ in drawn]
    small, big = (0, 1) if counts[0] <= counts[1] else (1, 0)
    keep = int(2.5 * counts[small])
    if counts[small] == 0 or counts[big] <= keep:
        return drawn
    m, r = drawn[big]
    threshold = np.sort(r[m])[::-1][keep - 1]
    cut = m & (r >= threshold)
    out = list(drawn)
    out[big] = (cut, r * cut)
    return out


def _lesion_params(scene: _Scene, f: Finding, bronchogram_probability: float) -> dict:
    """Size parameters shared by both sides of a bilateral finding."""
    rng = scene.rng
    if f.label == "nodule":
        radius = scene.table("nodule_radius", _NODULE_RADIUS)[f.size]
        return {"radius": rng.uniform(*radius), "lobes": 0.06, "density": rng.uniform(0.8, 1.0)}
    if f.label == "mass":
        radius = scene.table("mass_radius", _MASS_RADIUS)[f.size]
        return {"radius": rng.uniform(*radius), "lobes": 0.14, "density": rng.uniform(0.85, 1.0)}
    if f.label == "consolidation":
        return {
            "extent": rng.uniform(*scene.table("consolidation_extent", _CONSOLIDATION_EXTENT)[f.size]),
            "opacity": rng.uniform(0.4, 0.75),
            "bronchograms": rng.uniform() < bronchogram_probability,
        }
    return {"kind": {"small": "plate", "moderate": "band", "large": "wedge"}[f.size]}


def _round_lesion(scene: _Scene, side: str, f: Finding, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """A lobulated sphere of soft tissue: mask and replaced air (cm)."""
    grid, rng = scene.grid, scene.rng
    radius = max(params["radius"], 0.8 * grid.px)
    cx, cy = _place(scene, side, f.zone, radius, 1.0 if f.label == "nodule" else 0.6, f.label)
    harmonics = [(k, rng.uniform(0, params["lobes"]), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4, 5)]
    box = grid.box(cx - 1.5 * radius, cx + 1.5 * radius, cy - 1.5 * radius, cy + 1.5 * radius)
    x, y = grid.at(box)
    dx, dy = x - cx, y - cy
    theta = np.arctan2(dy, dx)
    r_theta = radius * (1.0 + sum(a * np.cos(k * theta + ph) for k, a, ph in harmonics))
    rho = np.hypot(dx, dy) / np.maximum(r_theta, 1e-6)
    mask = np.zeros((grid.size, grid.size), dtype=bool)
    replaced = np.zeros((grid.size, grid.size), dtype=F32)
    mask[box] = rho < 1.0
    replaced[box] = params["density"] * 2.0 * r_theta * FOV_CM * np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))
    return mask, replaced


def _consolidation(scene: _Scene, side: str, f: Finding, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Patchy airspace opacity: overlapping blobs broken up by noise, optionally air bronchograms."""
    grid, rng = scene.grid, scene.rng
    extent = params["extent"]
    cx, cy = _place(scene, side, f.zone, extent, 0.5, f.label)
    n = int(rng.integers(3, 6))
    bx = cx + rng.normal(0.0, 0.45 * extent, n)
    by = cy + rng.normal(0.0, 0.25 * extent, n)
    sigma = extent * rng.uniform(0.45, 0.75, n)
    box = grid.box(cx - 2.5 * extent, cx + 2.5 * extent, cy - 2.2 * extent, cy + 2.2 * extent)
    x, y = grid.at(box)
    density = np.zeros_like(x)
    for i in range(n):
        density += np.exp(-0.5 * ((x - bx[i]) ** 2 + (y - by[i]) ** 2) / sigma[i] ** 2)
    patch = rng.standard_normal((16, 16)).astype(F32)
    u = np.clip((x - cx) / (5 * extent) + 0.5, 0.0, 0.999) * 15
    v = np.clip((y - cy) / (4.4 * extent) + 0.5, 0.0, 0.999) * 15
    density = density * (1.0 + 0.45 * _bilinear(patch, u, v))
    fill = smoothstep(0.25, 1.6, density) ** 1.3  # ill-defined margins, denser centre
    fill = fill * (fill > 0.02)
    lung_air = scene.anatomy.air[side][box]
    replaced_box = params["opacity"] * fill * lung_air
    if params["bronchograms"]:
        replaced_box = _air_bronchograms(scene, side, (cx, cy), extent, box, replaced_box, fill)
    mask = np.zeros((grid.size, grid.size), dtype=bool)
    replaced = np.zeros((grid.size, grid.size), dtype=F32)
    mask[box] = fill > 0.0
    replaced[box] = replaced_box
    return mask, replaced


def _air_bronchograms(scene: _Scene, side: str, centre, extent, box, replaced_box, fill) -> np.ndarray:
    """Branching air-filled bronchi, visible as dark lines only inside the consolidation."""
    rng, s = scene.rng, scene.p.side(side)
    x0 = np.array([centre[0] - s.sgn * extent * 0.9])
    y0 = np.array([centre[1] + rng.uniform(-0.3, 0.3) * extent])
    angle = np.array([rng.uniform(-0.5, 0.5)])
    length = np.array([extent * 0.8])
    radius = np.array([0.0045])
    segments = []
    for _ in range(3):
        x1 = x0 + s.sgn * length * np.cos(angle)
        y1 = y0 + length * np.sin(angle)
        segments.append(np.stack([x0, y0, x1, y1, radius], axis=1))
        m = x0.size
        angle = np.concatenate([angle + rng.uniform(0.2, 0.6, m), angle - rng.uniform(0.2, 0.6, m)])
        length, radius = np.tile(length * 0.75, 2), np.tile(radius * 0.75, 2)
        x0, y0 = np.tile(x1, 2), np.tile(y1, 2)
    bronchi = splat_segments(scene.grid, np.concatenate(segments))[box]
    return np.maximum(replaced_box - 3.0 * bronchi * fill, 0.0)


def _atelectasis(scene: _Scene, side: str, f: Finding, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Plate-like (discoid) bands, a thicker band, or a lobar wedge pointing at the hilum."""
    grid, rng, p = scene.grid, scene.rng, scene.p
    s = p.side(side)
    mask = np.zeros((grid.size, grid.size), dtype=bool)
    replaced = np.zeros((grid.size, grid.size), dtype=F32)
    kind = params["kind"]
    if kind == "wedge":
        pts = _collapsed_lobe(scene, side, f.zone)
        xs, ys = [q[0] for q in pts], [q[1] for q in pts]
        box = grid.box(min(xs) - 0.01, max(xs) + 0.01, min(ys) - 0.01, max(ys) + 0.01)
        x, y = grid.at(box)
        inner = _triangle_depth(x, y, pts)
        lung_air = scene.anatomy.air[side][box]
        mask[box] = inner > 0
        replaced[box] = rng.uniform(0.5, 0.7) * lung_air * smoothstep(0.0, 0.03, inner) ** 0.7
        return mask, replaced
    if scene.calibration is None:
        length = rng.uniform(0.07, 0.12) if kind == "plate" else rng.uniform(0.1, 0.16)
        half_thickness = rng.uniform(0.005, 0.008) if kind == "plate" else rng.uniform(0.01, 0.015)
    else:
        length = rng.uniform(*scene.calibration.atelectasis_length[kind])
        half_thickness = rng.uniform(*scene.calibration.atelectasis_half_thickness[kind])
    half_thickness = max(half_thickness, 0.7 * grid.px)
    cx, cy = _place(scene, side, f.zone, 0.5 * length, 0.5, f.label)
    bands = [(cx, cy)]
    if kind == "plate" and rng.uniform() < 0.5:  # often a second, parallel plate just below
        bands.append((cx + s.sgn * 0.02, cy + rng.uniform(0.025, 0.04)))
    for bx, by in bands:
        angle = rng.uniform(-0.25, 0.25)
        density = rng.uniform(0.4, 0.6)
        box = grid.box(bx - length, bx + length, by - length, by + length)
        x, y = grid.at(box)
        along = (x - bx) * np.cos(angle) + (y - by) * np.sin(angle)
        across = -(x - bx) * np.sin(angle) + (y - by) * np.cos(angle)
        taper = np.sqrt(np.clip(1.0 - (2.0 * along / length) ** 2, 0.0, 1.0))
        profile = np.sqrt(np.clip(1.0 - (across / np.maximum(half_thickness * taper, 1e-6)) ** 2, 0.0, 1.0))
        lung_air = scene.anatomy.air[side][box]
        mask[box] |= profile > 0
        replaced[box] = np.maximum(replaced[box], density * lung_air * profile)
    return mask, replaced


def _collapsed_lobe(scene: _Scene, side: str, zone: str) -> list[tuple[float, float]]:
    """Triangle of a collapsed lobe, apex at the hilum: the lower lobe against the mediastinum and
    the dome, the upper lobe against the apex and mediastinum, the middle lobe pointing laterally."""
    p, s, rng = scene.p, scene.p.side(side), scene.rng

    def at(lat_fraction: float, t: float) -> tuple[float, float]:
        y = s.top + t * s.height
        border = float(scene.sil.at("border", side, np.float32(y)))
        return p.x_mid + s.sgn * (border + lat_fraction * (s.width - border)), y

    jitter = lambda: float(rng.uniform(-0.03, 0.03))  # noqa: E731
    if zone == "lower":

        def on_dome(lat_fraction: float) -> tuple[float, float]:
            x = at(lat_fraction, 0.85)[0]
            return at(lat_fraction, (float(dome_y(s, p.x_mid, x)) - s.top) / s.height - 0.005)

        return [at(0.02, 0.55 + jitter()), on_dome(0.0), on_dome(rng.uniform(0.35, 0.55))]
    if zone == "upper":
        return [at(0.02, 0.42 + jitter()), at(0.0, 0.06), at(rng.uniform(0.55, 0.8), 0.12 + jitter())]
    return [at(0.02, 0.48 + jitter()), at(0.9, 0.38 + jitter()), at(0.9, 0.62 + jitter())]


def _triangle_depth(x: np.ndarray, y: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Signed distance inside a triangle (positive inside): the smallest distance to its edges."""
    depth = None
    for i in range(3):
        (x0, y0), (x1, y1), (x2, y2) = pts[i], pts[(i + 1) % 3], pts[(i + 2) % 3]
        nx, ny = y1 - y0, -(x1 - x0)
        sign = np.sign(nx * (x2 - x0) + ny * (y2 - y0)) / max(np.hypot(nx, ny), 1e-9)
        d = sign * (nx * (x - x0) + ny * (y - y0))
        depth = d if depth is None else np.minimum(depth, d)
    return depth


def _bilinear(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    i, j = v.astype(np.int64), u.astype(np.int64)
    fv, fu = v - i, u - j
    top = table[i, j] * (1 - fu) + table[i, j + 1] * fu
    bottom = table[i + 1, j] * (1 - fu) + table[i + 1, j + 1] * fu
    return top * (1 - fv) + bottom * fv


# --- effusion ------------------------------------------------------------------------------------


def _effusion(scene: _Scene, f: Finding, fields: LesionFields) -> np.ndarray:
    """Fluid layering at the base: a meniscus higher laterally, graded opacity below it, the
    costophrenic angle and the hemidiaphragm hidden (the posterior recess fills too).

    Each side's fluid rises a little when its mask would be too small to see at this size, and on a
    bilateral effusion the smaller side rises until neither side holds less than a quarter of the fluid
    (a heart sitting on the left base leaves less room there).
    """
    grid, rng = scene.grid, scene.rng
    level = rng.uniform(*scene.table("effusion_level", _EFFUSION_LEVEL)[f.size])
    rise = rng.uniform(*scene.table("effusion_rise", (0.18, 0.3)))
    reach = scene.table("effusion_reach", _EFFUSION_REACH)[f.size]
    sides = sides_of(f)
    levels = {side: level + rng.uniform(-0.02, 0.02) for side in sides}
    drawn = {}
    for _ in range(20):
        for side in sides:
            if side not in drawn:
                drawn[side] = _effusion_side(scene, side, levels[side], rise, reach)
        counts = {side: int(drawn[side][1].sum()) for side in sides}
        change = {side: -0.03 for side in sides if counts[side] < MIN_MASK_PIXELS}  # raise the fluid a little
        if len(sides) == 2 and not change:
            small, big = sorted(sides, key=counts.get)
            if counts[small] < 0.23 * (counts[small] + counts[big]):
                # Raise the small side while its top lies in the lower half; else lower the big one.
                change = {small: -0.03} if levels[small] > 0.5 else {big: 0.03}
        if not change:
            break
        for side, step in change.items():
            levels[side] = min(levels[side] + step, 0.97)
            del drawn[side]
    mask = np.zeros((grid.size, grid.size), dtype=bool)
    for side, (box, side_mask, fluid) in drawn.items():
        mask[box] |= side_mask
        fields.replaced[box] += 0.97 * scene.anatomy.air[side][box] * fluid
        fields.recess_fill[side] = max(fields.recess_fill[side], _EFFUSION_RECESS[f.size])
    return mask


def _effusion_side(scene: _Scene, side: str, lateral_level: float, rise: float, reach: float):
    """Box, mask and fluid fraction of one side's effusion whose top at the chest wall lies at
    `lateral_level` (a fraction of the lung height), falling by `rise` over `reach` of the way to the midline."""
    grid, p = scene.grid, scene.p
    s = p.side(side)
    allowed = allowed_region("effusion", scene.stack, side)
    outer = p.x_mid + s.sgn * (s.width + 0.03)
    box = grid.box(min(p.x_mid, outer), max(p.x_mid, outer), s.top + 0.1 * s.height, s.cp + 0.02)
    x, y = grid.at(box)
    at_lung_edge = scene.table("effusion_wall", "costophrenic angle") == "lung edge"
    wall = cage_half_width(s, y, 0.0) if at_lung_edge else s.width
    lat = np.clip(s.sgn * (x - p.x_mid) / wall, 0.0, 1.0)
    # The meniscus climbs the chest wall: highest there, its top falls by `rise` towards the mediastinum.
    fall = np.clip((1.0 - lat) / reach, 0.0, 1.0) ** scene.table("effusion_meniscus_power", 0.45)
    top_y = s.top + s.height * (lateral_level + min(rise, 0.99 - lateral_level) * fall)
    fluid = np.clip((y - top_y) / 0.08, 0.0, 1.0) ** 0.8 * allowed[box]
    return box, (fluid > 0.15) & allowed[box], fluid


# --- pneumothorax --------------------------------------------------------------------------------


def _pneumothorax(scene: _Scene, f: Finding, fields: LesionFields) -> np.ndarray:
    """Air between the chest wall and the retracted lung: a rim widest at the apex, no lung markings,
    darker, bounded by the thin visceral pleural line."""
    grid, p, rng = scene.grid, scene.p, scene.rng
    size = grid.size
    depth0 = rng.uniform(*scene.table("pneumothorax_depth", _PNEUMOTHORAX_DEPTH)[f.size])
    taper = scene.table("pneumothorax_taper", _PNEUMOTHORAX_TAPER)[f.size]
    mask = np.zeros((size, size), dtype=bool)
    for side in sides_of(f):
        s = p.side(side)
        outer = p.x_mid + s.sgn * (s.width + 0.04)
        box = grid.box(min(p.x_mid, outer), max(p.x_mid, outer), s.top - 0.03, s.cp + 0.04)
        x, y = grid.at(box)
        lat = s.sgn * (x - p.x_mid)
        # Distance to the lateral and apical chest wall only: the medial side and the base are open.
        open_medially = (lat < s.apex_x) & (y > s.top + 0.12 * s.height)
        wall = (cage_value(s, p.x_mid, x, y) < 1.0) | open_medially | (y > dome_y(s, p.x_mid, x))
        wall &= lat > -0.01
        dist = distance_transform_edt(wall).astype(F32) * F32(grid.px)
        t = np.clip((y - s.top) / s.height, 0.0, 1.0)
        lung = scene.anatomy.lung(side)[box]
        for _ in range(8):
            depth = depth0 * (1.0 - taper * t)
            side_mask = lung & (dist < depth)
            if side_mask.sum() >= MIN_MASK_PIXELS:
                break
            depth0 *= 1.3
        mask[box] |= side_mask
        fields.pneumothorax[box] = np.maximum(fields.pneumothorax[box], side_mask)
        fields.vessel_visibility[box] *= 1.0 - side_mask
        width = max(0.0016, 0.5 * grid.px)
        line = np.exp(-(((dist - depth) / width) ** 2)) * (dist >= depth) * lung
        fields.extra_tissue[box] += 0.45 * line
    return mask


def _enlarged_heart(scene: _Scene, f: Finding, fields: LesionFields) -> np.ndarray:
    """Cardiomegaly is the heart itself, already widened by `adjust_patient`: its mask is the heart's."""
    return scene.anatomy.mask("Heart")


# How the phantom draws each pathology: (scene, finding, tissue fields) -> its mask. A new pathology class
# needs its record in `aurad_models.vocabulary.PATHOLOGY_RECORDS` and its drawing here.
DRAWERS = {
    "nodule": _zoned_lesion,
    "mass": _zoned_lesion,
    "consolidation": _zoned_lesion,
    "effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "cardiomegaly": _enlarged_heart,
    "atelectasis": _zoned_lesion,
}
