"""Anatomy of one phantom as implicit shapes evaluated on a pixel grid.

Every structure is a function of patient coordinates (see `patient.py`) evaluated at pixel centres, so
masks and tissue maps agree pixel for pixel at any output size; small structures are evaluated only in
their bounding box. The same functions evaluated at a few points decide where a lesion may go
(`lung_field`).

Outputs: the 14 ChestX-Det anatomy masks, and the path lengths (cm) the renderer turns into
attenuation: body soft tissue, lung air per side (the posterior recess below each dome kept apart),
cortical-bone equivalent, air in the airways and stomach, extra soft tissue (hila, breasts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from aurad_models.phantom.patient import FOV_CM, T1, Patient, Side, dome_y
from aurad_models.vocabulary import ANATOMY_STRUCTURES, anatomy_index

F32 = np.float32
GRID_CENTRE = (0.5, 0.45)
Box = tuple[slice, slice]


@dataclass(frozen=True)
class Grid:
    """Pixel centres in patient coordinates (the patient's zoom, tilt and shift on the detector)."""

    x: np.ndarray
    y: np.ndarray
    size: int
    zoom: float
    tilt: float
    shift: tuple[float, float]

    @property
    def px(self) -> float:
        """Pixel pitch in patient units."""
        return 1.0 / (self.size * self.zoom)

    def to_pixel(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Patient coordinates -> (column, row) in pixels (0 = centre of the first pixel)."""
        cx, cy = GRID_CENTRE
        dx = (np.asarray(x) + self.shift[0] - cx) * self.zoom
        dy = (np.asarray(y) + self.shift[1] - cy) * self.zoom
        c, s = np.cos(self.tilt), np.sin(self.tilt)
        return (cx + c * dx - s * dy) * self.size - 0.5, (cy + s * dx + c * dy) * self.size - 0.5

    def box(self, x0: float, x1: float, y0: float, y1: float) -> Box:
        """Rows and columns covering a patient-coordinate rectangle (clipped to the image)."""
        col, row = self.to_pixel(np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]))
        r0, r1 = int(np.floor(row.min())) - 1, int(np.ceil(row.max())) + 2
        c0, c1 = int(np.floor(col.min())) - 1, int(np.ceil(col.max())) + 2
        clip = lambda v: min(max(v, 0), self.size)  # noqa: E731
        return slice(clip(r0), clip(r1)), slice(clip(c0), clip(c1))

    def at(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        return self.x[box], self.y[box]


def make_grid(size: int, patient: Patient) -> Grid:
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    u, v = np.meshgrid(centres, centres)
    cx, cy = GRID_CENTRE
    c, s = np.cos(patient.tilt), np.sin(patient.tilt)
    du, dv = u - cx, v - cy
    x = cx + (c * du + s * dv) / patient.zoom - patient.shift[0]
    y = cy + (-s * du + c * dv) / patient.zoom - patient.shift[1]
    return Grid(x.astype(F32), y.astype(F32), size, patient.zoom, patient.tilt, patient.shift)


@dataclass
class Anatomy:
    """Masks and tissue path lengths (cm) of one patient on one grid."""

    masks: np.ndarray  # (14, S, S) bool, ANATOMY_STRUCTURES order
    body: np.ndarray  # soft tissue
    air: dict[str, np.ndarray]  # lung air inside the cage above the dome, per side
    recess: dict[str, np.ndarray]  # lung air of the posterior recess below the dome, per side
    bone: np.ndarray  # cortical-bone equivalent
    airway: np.ndarray  # air in trachea, bronchi and stomach
    tissue: np.ndarray  # extra soft tissue: hila, breasts

    def mask(self, name: str) -> np.ndarray:
        return self.masks[anatomy_index(name)]

    def lung(self, side: str) -> np.ndarray:
        return self.mask("Left Lung" if side == "left" else "Right Lung")


# --- small shape helpers -------------------------------------------------------------------------


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def dome_depth(r2: np.ndarray) -> np.ndarray:
    """Chord of a unit sphere / cylinder at normalised radius^2: 1 at the centre, 0 at the edge."""
    return np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))


def tube(d: np.ndarray) -> np.ndarray:
    """Bone path across a tube of cortical shell and marrow at normalised offset d: bright margins."""
    d2 = d * d
    return np.sqrt(np.clip(1.0 - d2, 0.0, 1.0)) - 0.525 * np.sqrt(np.clip(1.0 - d2 * 2.0408, 0.0, 1.0))


def capsule_distance(x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance to the segment p0-p1."""
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * vx + (y - p0[1]) * vy) / max(vx * vx + vy * vy, 1e-12), 0.0, 1.0)
    return np.hypot(x - (p0[0] + t * vx), y - (p0[1] + t * vy))


# --- the thorax outline --------------------------------------------------------------------------


def cage_value(s: Side, x_mid: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Superellipse of one hemithorax, < 1 inside: apex rounded, lateral wall vertical at the base."""
    dx = s.sgn * (x - (x_mid + s.sgn * s.apex_x))
    lateral = dx > 0
    t = np.abs(dx) / np.where(lateral, F32(s.a_lat), F32(s.apex_x + 0.03))
    dy = np.clip((s.cp - y) / s.height, 0.0, None)
    return np.where(lateral, t**s.p_lat, t * t) + dy**s.q


def cage_half_width(s: Side, y: np.ndarray, grow: float) -> np.ndarray:
    """Midline to the lateral cage surface at height y (tapering below the costophrenic angle)."""
    dy = np.clip((s.cp - y) / (s.height + 1.5 * grow), 0.0, 1.0)
    upper = (1.0 - dy**s.q) ** (1.0 / s.p_lat)
    lower = 1.0 - 0.45 * np.clip((y - s.cp) / 0.35, 0.0, 1.0) ** 2
    return s.apex_x + (s.a_lat + grow) * np.where(y < s.cp, upper, lower)


def diaphragm_line(p: Patient, x: np.ndarray) -> np.ndarray:
    """Both domes joined under the heart: the floor of the cardiomediastinal silhouette."""
    w = smoothstep(p.x_mid - 0.04, p.x_mid + 0.04, x)
    return (1.0 - w) * dome_y(p.right, p.x_mid, x) + w * dome_y(p.left, p.x_mid, x)


def spine_x(p: Patient, y: np.ndarray) -> np.ndarray:
    amp, phase = p.scoliosis
    return p.x_mid + p.spine_offset + amp * np.sin(np.pi * (y - 0.05) / 0.9 + phase)


@dataclass(frozen=True)
class Silhouette:
    """Outlines that depend on height only, tabulated over y once per patient and interpolated.

    border: the lung's medial border (mediastinal column, SVC, aortic knob, pulmonary trunk and heart,
    smoothly joined); heart: the heart border alone (0 where there is no heart at that height);
    cage: the outer surface of the ribs; all distances from the midline. spine: x of the spine.
    """

    y: np.ndarray
    border: dict[str, np.ndarray]
    heart: dict[str, np.ndarray]
    cage: dict[str, np.ndarray]
    spine: np.ndarray

    def at(self, what: str, side: str, y: np.ndarray) -> np.ndarray:
        table = {"border": self.border, "heart": self.heart, "cage": self.cage}[what][side]
        return np.interp(y, self.y, table).astype(F32)

    def spine_at(self, y: np.ndarray) -> np.ndarray:
        return np.interp(y, self.y, self.spine).astype(F32)


def _smoothmax(arrays: list[np.ndarray], k: float) -> np.ndarray:
    stack = np.stack(arrays)
    top = stack.max(axis=0)
    return top + k * np.log(np.exp((stack - top) / k).sum(axis=0))


def silhouette(p: Patient) -> Silhouette:
    """Right border: SVC then right atrium. Left border: aortic knob, pulmonary trunk, left ventricle.

    Each heart border leaves the mediastinal column at the side's `heart_top`, bulges out convexly to
    its widest point just above the dome (the heart halves: they set the CTR) and stays wide down to
    the diaphragm, under which it disappears.
    """
    y = np.linspace(-0.3, 1.3, 1601)
    border, heart = {}, {}
    for name, half in zip(("right", "left"), p.heart_halves):
        s = p.side(name)
        floor = float(diaphragm_line(p, np.float32(p.x_mid + s.sgn * half)))
        waist = floor - s.heart_waist
        up = max(waist - s.heart_top, 0.05)
        low = 3.0 * (floor - waist) + 0.06
        t = np.where(y < waist, (y - waist) / up, (y - waist) / low)
        bulge = np.clip(1.0 - np.abs(t) ** p.heart_shape, 0.0, 1.0)
        heart[name] = np.where(bulge > 0, s.column + (half - s.column) * bulge, 0.0)
        column = s.column + p.inlet_flare * np.exp(-(((y - s.top - 0.02) / 0.06) ** 2))
        parts = [column, heart[name]]
        if name == "right":
            parts[0] = column + p.svc_bulge * np.clip((y - s.top - 0.05) / (p.carina_y - s.top - 0.02), 0.0, 1.0)
        else:
            ky, kext, _, kh = p.knob
            ty, text, th = p.trunk
            parts.append(kext * np.clip(1.0 - ((y - ky) / kh) ** 2, 0.0, 1.0) ** 0.6)
            parts.append(text * np.clip(1.0 - ((y - ty) / th) ** 2, 0.0, 1.0) ** 0.6)
        border[name] = _smoothmax(parts, 0.008)
    cage = {name: cage_half_width(p.side(name), y, 0.02) for name in ("right", "left")}
    return Silhouette(y, border, heart, cage, spine_x(p, y))


def heart_top_line(p: Patient, x: np.ndarray) -> np.ndarray:
    """Upper edge of the heart mask: from the right atrium's top to just below the pulmonary trunk."""
    right_half, left_half = p.heart_halves
    y_right = p.right.heart_top + 0.015
    y_left = p.trunk[0] + 0.6 * p.trunk[2]
    t = np.clip((x - (p.x_mid - right_half)) / (right_half + left_half), 0.0, 1.0)
    return y_right + (y_left - y_right) * t


def lung_field(p: Patient, x: np.ndarray, y: np.ndarray, side: str, sil: Silhouette) -> np.ndarray:
    """The visible lung field of one side at arbitrary points: inside the cage, above the dome, lateral
    to the cardiomediastinal silhouette."""
    s = p.side(side)
    inside = (cage_value(s, p.x_mid, x, y) < 1.0) & (y < dome_y(s, p.x_mid, x))
    return inside & (s.sgn * (x - p.x_mid) > sil.at("border", side, y))


# --- bones ---------------------------------------------------------------------------------------


def rib_levels(p: Patient) -> np.ndarray:
    """Height at the spine of posterior ribs 0..13 (1..12 real; 0 and 13 extrapolated for interpolation)."""
    lv = p.vertebra_levels
    heights = np.diff(lv)
    k = np.arange(1, 13)
    levels = lv[T1 + k - 1] + (0.3 + p.rib_offsets) * heights[T1 + k - 1]
    return np.concatenate([[2 * levels[0] - levels[1]], levels, [2 * levels[-1] - levels[-2]]])


def _ribs(p: Patient, sil: Silhouette, s: Side, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each rib is a loop tilted down anteriorly, seen from the front: from the spine the posterior
    arc rises, turns down at the lateral wall and comes back as the anterior arc, lower and fainter,
    ending at the costal cartilage (invisible)."""
    levels = rib_levels(p)
    index = np.arange(14, dtype=np.float64)
    xs = sil.spine_at(y)
    reach = np.maximum(sil.at("cage", "left" if s.sgn > 0 else "right", y) - s.sgn * (xs - p.x_mid), 0.02)
    sl = np.clip(s.sgn * (x - xs) / reach, 0.0, 1.2)
    c = np.sqrt(np.clip(1.0 - sl * sl, 0.0, 1.0))
    cs = np.maximum(c, 0.05)
    # Lower ribs run more obliquely and are fainter through the thick upper abdomen.
    k = p.rib_drop * (1.0 + 0.9 * smoothstep(s.top + 0.3, s.cp + 0.15, y))
    h, a = p.rib_hump, p.rib_anterior_slope
    low = smoothstep(s.cp - 0.05, s.cp + 0.1, y)
    depth_scale = 1.0 - 0.6 * low
    bone = np.zeros_like(x)
    for posterior in (True, False):
        if posterior:
            centre = k * (1.0 - c + 0.4 * sl * sl) - h * np.sin(np.pi * sl)
            slope = (k * (sl / cs + 0.8 * sl) - h * np.pi * np.cos(np.pi * sl)) / reach
        else:
            centre = k * (1.4 + c) + a * (1.0 - sl)
            slope = (-k * sl / cs - a) / reach
        phi = np.interp(y - centre, levels, index).astype(F32)
        rib = np.rint(phi)
        frac = phi - rib
        stretch = np.minimum(np.sqrt(1.0 + slope * slope), 3.0)
        if posterior:
            width = p.rib_widths[np.clip(rib.astype(np.int64) - 1, 0, 11)].astype(F32)
            visible = smoothstep(0.05 + 0.2 * low, 0.14 + 0.25 * low, sl) * (1.0 - smoothstep(1.0, 1.08, sl))
            visible *= ((rib >= 1) & (rib <= 12) & ((rib <= 10) | (sl < 0.45))) * (1.0 - 0.5 * (rib >= 11))
            depth = 1.15
        else:
            width = F32(p.rib_anterior_width)
            visible = smoothstep(0.3, 0.48, sl) * (1.0 - smoothstep(1.0, 1.08, sl))
            visible *= ((rib >= 1) & (rib <= 8)) * (1.0 - 0.7 * low)
            depth = 0.6
        bone += depth * depth_scale * visible * tube(frac / (0.5 * width * stretch))
    return bone


def _spine(p: Patient, sil: Silhouette, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lv = p.vertebra_levels
    phi = np.interp(y, lv, np.arange(lv.size, dtype=np.float64), left=-1.0, right=lv.size).astype(F32)
    frac = phi - np.floor(phi)
    xs = sil.spine_at(y)
    grow = np.clip((y - lv[T1]) / 0.6, 0.0, 1.0)
    half = p.vertebra_half_width * np.where(y < lv[T1], 0.8, 1.0 + 0.45 * grow)
    dx = (x - xs) / half
    plates = smoothstep(0.04, 0.13, frac) * (1.0 - smoothstep(0.87, 0.96, frac))
    endplates = np.exp(-(((frac - 0.1) / 0.03) ** 2)) + np.exp(-(((frac - 0.9) / 0.03) ** 2))
    body = (0.75 * plates + 0.25 * endplates) * (tube(dx) + 0.15 * dome_depth(dx * dx))
    pedicles = tube(np.hypot((np.abs(x - xs) - 0.6 * half) / (0.2 * half), (frac - 0.32) / 0.2))
    spinous = dome_depth(((x - xs) / (0.11 * half)) ** 2 + ((frac - 0.75) / 0.2) ** 2)
    bone = (0.75 * body + 0.45 * pedicles + 0.35 * spinous) * (phi >= 0)
    return bone, np.abs(dx) < 1.0


def _clavicle(p: Patient, s: Side, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m_lat, m_y, l_lat, l_y, half, curve = s.clavicle
    t = (s.sgn * (x - p.x_mid) - m_lat) / (l_lat - m_lat)
    centre = m_y + (l_y - m_y) * t - curve * np.sin(2 * np.pi * t)
    slope = ((l_y - m_y) - curve * 2 * np.pi * np.cos(2 * np.pi * t)) / (l_lat - m_lat)
    thickness = half * (1.25 - 0.45 * t + 0.35 * np.exp(-(((t - 1.0) / 0.12) ** 2)))
    thickness = thickness * np.clip(1.0 - np.abs(2.0 * t - 1.0) ** 8, 0.0, 1.0) ** 0.5
    d = (y - centre) / np.maximum(thickness * np.sqrt(1.0 + slope * slope), 1e-6)
    inside = (np.abs(d) < 1.0) & (t > 0.0) & (t < 1.0)
    return 1.7 * tube(d) * inside, inside


def _scapula_points(p: Patient, s: Side) -> list[tuple[float, float]]:
    sup_lat, sup_y, inf_lat, inf_y, gl_lat, gl_y = s.scapula
    return [(p.x_mid + s.sgn * la, ya) for la, ya in ((sup_lat, sup_y), (inf_lat, inf_y), (gl_lat, gl_y))]


def _scapula(p: Patient, s: Side, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pts = _scapula_points(p, s)
    dist = []
    for i in range(3):
        (x0, y0), (x1, y1), (x2, y2) = pts[i], pts[(i + 1) % 3], pts[(i + 2) % 3]
        nx, ny = y1 - y0, -(x1 - x0)
        sign = np.sign(nx * (x2 - x0) + ny * (y2 - y0)) / np.hypot(nx, ny)
        dist.append(sign * (nx * (x - x0) + ny * (y - y0)))
    medial, lateral, top = dist  # edges: superior-inferior angle, inferior angle-glenoid, glenoid-superior
    inner = np.minimum(np.minimum(medial, lateral), top)
    triangle = inner > 0
    gx, gy = pts[2]
    glenoid = ((x - gx) / 0.022) ** 2 + ((y - gy) / 0.035) ** 2
    clav_end = (p.x_mid + s.sgn * s.clavicle[2], s.clavicle[3])
    acromion = capsule_distance(x, y, (gx, gy - 0.03), clav_end) / 0.012
    spine_start = (pts[0][0] + 0.22 * (pts[1][0] - pts[0][0]), pts[0][1] + 0.22 * (pts[1][1] - pts[0][1]))
    ridge = capsule_distance(x, y, spine_start, (gx, gy - 0.03)) / 0.008
    plate = 0.12 * smoothstep(0.0, 0.01, inner)
    border = 0.55 * np.exp(-((lateral / 0.011) ** 2)) + 0.18 * np.exp(-((medial / 0.005) ** 2))
    bone = (plate + border + 0.3 * tube(ridge)) * triangle + 0.6 * tube(np.sqrt(glenoid)) + 0.4 * tube(acromion)
    return bone, triangle | (glenoid < 1.0) | (acromion < 1.0)


def _humerus(p: Patient, s: Side, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    lat, hy, r = s.humerus
    hx = p.x_mid + s.sgn * lat
    head = np.hypot(x - hx, y - hy) / r
    shaft = capsule_distance(x, y, (hx + s.sgn * 0.01, hy + 0.02), (hx + s.sgn * 0.07, hy + 0.6)) / (0.55 * r)
    return 1.1 * tube(head) + 0.9 * tube(shaft)


# --- the whole anatomy ---------------------------------------------------------------------------


def _texture(p: Patient, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The patient's low-resolution texture field, bilinearly interpolated at the points."""
    n = p.texture.shape[0]
    u = np.clip(x, 0.0, 1.0) * (n - 1.001)
    v = np.clip(y, 0.0, 1.0) * (n - 1.001)
    i, j = v.astype(np.int64), u.astype(np.int64)
    fv, fu = v - i, u - j
    t = p.texture
    top = t[i, j] * (1 - fu) + t[i, j + 1] * fu
    bottom = t[i + 1, j] * (1 - fu) + t[i + 1, j + 1] * fu
    return (top * (1 - fv) + bottom * fv).astype(F32)


def build_anatomy(p: Patient, grid: Grid, sil: Silhouette) -> Anatomy:
    """Evaluate every structure of the patient on the grid."""
    size = grid.size
    shape = (size, size)
    masks = np.zeros((len(ANATOMY_STRUCTURES),) + shape, dtype=bool)
    bone = np.zeros(shape, F32)
    air = {n: np.zeros(shape, F32) for n in ("right", "left")}
    recess = {n: np.zeros(shape, F32) for n in ("right", "left")}
    lung_cm = p.lung_depth * p.body_cm
    top = min(p.right.top, p.left.top)

    for name in ("right", "left"):
        s = p.side(name)
        title = name.capitalize()
        outer = p.x_mid + s.sgn * (s.width + 0.03)
        box = grid.box(min(p.x_mid, outer), max(p.x_mid, outer), s.top - 0.01, s.cp + 0.16)
        x, y = grid.at(box)
        lat = s.sgn * (x - p.x_mid)
        e = cage_value(s, p.x_mid, x, y)
        dome = dome_y(s, p.x_mid, x)
        border = sil.at("border", name, y)
        masks[anatomy_index(f"{title} Lung")][box] = (e < 1.0) & (y < dome) & (lat > border)
        band = (y >= dome) & (y < dome + 0.035) & (e < 1.0)
        masks[anatomy_index("Facies Diaphragmatica")][box] |= band
        # Air: thins towards the curved walls; a sharp step at the silhouette, with some lung left in
        # front of and behind the heart's rounded edges (less towards its thick centre).
        edge = np.sqrt(np.clip((lat - border) / 0.012, 0.0, 1.0))
        behind = 0.55 * (1.0 - np.sqrt(np.clip(1.0 - (np.maximum(lat, 0.0) / border) ** 2, 0.0, 1.0)))
        if s.sgn > 0:  # the descending aorta displaces the retrocardiac lung: the para-aortic line
            behind = behind * (1.0 - 0.9 * _descending_aorta(p, x, y)[0])
        base = lung_cm * np.sqrt(np.clip(1.0 - e, 0.0, 1.0)) * np.maximum(edge, behind)
        base = base * (1.0 + 0.1 * _texture(p, x, y))
        # At the dome the beam is tangent to the liver: a sharp step from thick lung to the thin
        # posterior recess, which fades out below.
        air[name][box] = base * (0.65 + 0.35 * np.sqrt(np.clip((dome - y) / 0.04, 0.0, 1.0))) * (y < dome)
        recess[name][box] = base * 0.28 * np.exp(-np.clip(y - dome, 0.0, None) / 0.035) * (y >= dome)

        rib_box = grid.box(min(p.x_mid, outer), max(p.x_mid, outer), top - 0.06, s.cp + 0.3)
        bone[rib_box] += _ribs(p, sil, s, *grid.at(rib_box))
        m_lat, m_y, l_lat, l_y, half, _ = s.clavicle
        ends = (p.x_mid + s.sgn * m_lat, p.x_mid + s.sgn * l_lat)
        cbox = _sorted_box(grid, *ends, min(m_y, l_y) - 0.04, max(m_y, l_y) + 0.04)
        clav_bone, clav_mask = _clavicle(p, s, *grid.at(cbox))
        bone[cbox] += clav_bone
        masks[anatomy_index(f"{title} Clavicle")][cbox] = clav_mask
        pts = np.array(_scapula_points(p, s) + [(p.x_mid + s.sgn * l_lat, l_y)])
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        sbox = _sorted_box(grid, x0 - 0.03, x1 + 0.03, y0 - 0.05, y1 + 0.04)
        scap_bone, scap_mask = _scapula(p, s, *grid.at(sbox))
        bone[sbox] += scap_bone
        masks[anatomy_index(f"{title} Scapula")][sbox] = scap_mask
        h_lat, h_y, h_r = s.humerus
        hx = p.x_mid + s.sgn * h_lat
        hbox = _sorted_box(grid, hx - s.sgn * 1.2 * h_r, hx + s.sgn * 0.2, h_y - 1.2 * h_r, 1.5)
        bone[hbox] += _humerus(p, s, *grid.at(hbox))
        # Hilum: beside the silhouette at the level of the hilar vessels.
        hx = p.x_mid + s.sgn * (float(sil.at("border", name, np.float32(s.hilum_y))) + 0.022)
        hil_box = _sorted_box(grid, hx - 0.035, hx + 0.035, s.hilum_y - 0.055, s.hilum_y + 0.055)
        x, y = grid.at(hil_box)
        hilum = ((x - hx) / 0.032) ** 2 + ((y - s.hilum_y) / 0.05) ** 2 < 1.0
        masks[anatomy_index(f"{title} Hilus Pulmonis")][hil_box] = hilum

    spine_box = _sorted_box(grid, p.x_mid - 0.1, p.x_mid + 0.1, -0.5, 1.5)
    spine_bone, spine_mask = _spine(p, sil, *grid.at(spine_box))
    bone[spine_box] += spine_bone
    masks[anatomy_index("Spine")][spine_box] = spine_mask

    _mediastinum(p, grid, sil, masks, top)
    airway, weasand = _airways(p, grid)
    masks[anatomy_index("Weasand")] = weasand
    body = _body(p, sil, grid.x, grid.y)
    tissue = _hila_and_breasts(p, grid, sil)
    return Anatomy(masks=masks, body=body, air=air, recess=recess, bone=bone, airway=airway, tissue=tissue)


def _sorted_box(grid: Grid, xa: float, xb: float, ya: float, yb: float) -> Box:
    return grid.box(min(xa, xb), max(xa, xb), min(ya, yb), max(ya, yb))


def _mediastinum(p: Patient, grid: Grid, sil: Silhouette, masks: np.ndarray, top: float) -> None:
    right_half, left_half = p.heart_halves
    floor = float(max(p.right.cp, p.left.cp)) + 0.02
    box = _sorted_box(grid, p.x_mid - right_half - 0.08, p.x_mid + left_half + 0.03, top - 0.03, floor)
    x, y = grid.at(box)
    dia = diaphragm_line(p, x)
    lat = x - p.x_mid
    above = y < dia
    heart = (lat > -sil.at("heart", "right", y)) & (lat < sil.at("heart", "left", y)) & above
    masks[anatomy_index("Heart")][box] = heart & (y > heart_top_line(p, x))
    masks[anatomy_index("Mediastinum")][box] = (
        (lat > -sil.at("border", "right", y)) & (lat < sil.at("border", "left", y)) & above & (y > top - 0.015)
    )
    ky, kext, kr, kh = p.knob
    kx = p.x_mid + kext - kr
    aorta = ((x - kx) / kr) ** 2 + ((y - ky) / (0.8 * kh)) ** 2 < 1.0
    aorta |= capsule_distance(x, y, (p.x_mid - 0.01, ky + 0.012), (kx, ky)) < 0.8 * kr
    aorta |= _descending_aorta(p, x, y)[1] & (y < dia)
    masks[anatomy_index("Aorta")][box] = aorta


def _descending_aorta(p: Patient, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth profile (0..1) and mask of the descending aorta, from the knob down beside the spine."""
    ky, kext, kr, _ = p.knob
    kx = p.x_mid + kext - kr
    da_end, da_r = p.descending_aorta
    da_floor = float(diaphragm_line(p, np.float32(p.x_mid + da_end)))
    t = np.clip((y - ky) / max(da_floor - ky, 0.05), 0.0, 1.0)
    dx = (x - (kx + (p.x_mid + da_end - kx) * np.sqrt(t))) / da_r
    below = y > ky
    return dome_depth(dx * dx) * below, (np.abs(dx) < 1.0) & below


def _airways(p: Patient, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    half, carina, dev, shift = p.trachea
    airway = np.zeros((grid.size, grid.size), F32)
    weasand = np.zeros((grid.size, grid.size), bool)
    box = _sorted_box(grid, p.x_mid - 0.09, p.x_mid + 0.1, -0.5, carina + 0.1)
    x, y = grid.at(box)
    centre = p.x_mid + shift - dev * np.exp(-(((y - p.knob[0]) / 0.05) ** 2))
    dx = (x - centre) / half
    air = 2 * half * FOV_CM * 0.85 * dome_depth(dx * dx) * smoothstep(carina + 0.3 * half, carina - 0.3 * half, y)
    weasand[box] = (np.abs(dx) < 1.0) & (y < carina)
    cx = p.x_mid + shift
    for p0, p1, r in (
        ((cx, carina), (cx - 0.035, carina + 0.035), 0.75 * half),
        ((cx - 0.035, carina + 0.035), (cx - 0.045, carina + 0.085), 0.55 * half),
        ((cx, carina), (cx + 0.06, carina + 0.045), 0.7 * half),
    ):
        d = capsule_distance(x, y, p0, p1) / r
        air = np.maximum(air, 2 * r * FOV_CM * 0.8 * dome_depth(d * d))
    airway[box] = air
    if p.gastric_bubble is not None:
        lat, below, a, b = p.gastric_bubble
        bx = p.x_mid + lat
        by = float(dome_y(p.left, p.x_mid, bx)) + below
        gbox = _sorted_box(grid, bx - a, bx + a, by - b, by + b)
        x, y = grid.at(gbox)
        r2 = ((x - bx) / a) ** 2 + ((y - by) / b) ** 2
        airway[gbox] += 4.0 * np.sqrt(dome_depth(r2)) * smoothstep(by + 0.35 * b, by + 0.25 * b, y)
    return airway, weasand


def _body(p: Patient, sil: Silhouette, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Soft tissue, elliptical cross-sections: chest (full thickness), neck, and the thinner shoulders
    and upper arms whose skin line slopes from the neck out over the humeral heads."""
    chest_half = 0.5 * (sil.at("cage", "right", y) + sil.at("cage", "left", y)) + p.soft_tissue_margin
    lat = x - p.x_mid
    chest = p.body_cm * np.sqrt(np.clip(1.0 - (lat / chest_half) ** 2, 0.0, 1.0))
    chest = chest * smoothstep(p.shoulder_y - 0.1, p.shoulder_y + 0.08, y)
    neck = 0.5 * p.body_cm * np.sqrt(np.sqrt(np.clip(1.0 - (lat / p.neck_half_width) ** 2, 0.0, 1.0)))
    start = p.shoulder_y - 0.11
    spread = np.clip((y - start) / 0.28, 0.0, 1.0) ** 0.8  # the skin line slopes down from the neck
    reach = p.neck_half_width + (p.shoulder_width - p.neck_half_width) * spread
    reach = reach * (1.0 - 0.8 * smoothstep(p.shoulder_y + 0.15, p.shoulder_y + 0.6, y)) + 1e-3
    shoulders = 0.75 * p.body_cm * np.sqrt(np.clip(1.0 - (lat / reach) ** 2, 0.0, 1.0)) * (y > start)
    arm_lat, drift = p.arm
    arm_centre = arm_lat + drift * np.clip(y - p.shoulder_y, 0.0, None)
    arms = 0.4 * p.body_cm * np.sqrt(np.clip(1.0 - ((np.abs(lat) - arm_centre) / 0.075) ** 2, 0.0, 1.0))
    arms = arms * smoothstep(p.shoulder_y, p.shoulder_y + 0.1, y)
    return np.maximum(np.maximum(chest, neck), np.maximum(shoulders, arms)).astype(F32)


def _hila_and_breasts(p: Patient, grid: Grid, sil: Silhouette) -> np.ndarray:
    tissue = np.zeros((grid.size, grid.size), F32)
    for s in (p.right, p.left):
        name = "left" if s.sgn > 0 else "right"
        hx = p.x_mid + s.sgn * (float(sil.at("border", name, np.float32(s.hilum_y))) + 0.012)
        box = _sorted_box(grid, hx - 0.06, hx + 0.06, s.hilum_y - 0.1, s.hilum_y + 0.1)
        x, y = grid.at(box)
        tissue[box] += 2.5 * np.exp(-0.5 * (((x - hx) / 0.02) ** 2 + ((y - s.hilum_y) / 0.04) ** 2))
        if p.breast is not None:
            lat, by, r, cm = p.breast
            bx = p.x_mid + s.sgn * lat
            box = _sorted_box(grid, bx - 1.2 * r, bx + 1.2 * r, by - 1.1 * r, by + 1.05 * r)
            x, y = grid.at(box)
            r2 = ((x - bx) / (1.15 * r)) ** 2 + ((y - by) / r) ** 2
            tissue[box] += cm * np.clip(1.0 - r2, 0.0, 1.0) ** 0.5 * smoothstep(by - 0.3 * r, by + 0.8 * r, y) ** 2
    return tissue
