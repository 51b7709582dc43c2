"""Where findings lie and how big they are: real published annotations against our masks.

Real annotations come from the files the installed torchxrayvision wheel ships (`torchxrayvision/data/`,
found through `torchxrayvision.__file__`; nothing is copied into this repository):

- NIH ChestX-ray14 `BBox_List_2017.csv.gz`: 984 boxes on 1024 px images, 8 findings;
- RSNA pneumonia `kaggle_stage_2_train_labels.csv.zip`: lung-opacity boxes on 1024 px (our consolidation);
- SIIM-ACR `siim-pneumothorax-train-rle.csv.gz`: pneumothorax masks at 1024 px (relative RLE, checked);
- V7 `semantic_masks_v7labs_lungs.zip`: lung masks, used only for the lung field;
- VinDr-CXR `vinbigdata-train.csv.gz`: boxes in native pixels without image sizes, so only scale-free
  descriptors (box aspect ratio) are taken from it.

The unit of comparison is one box per finding and side, as a reader draws it: a real box, or the bounding box
of a mask's pixels on one side of the midline (one box for cardiomegaly, which has no side). Each unit gets

- `x`: box centre across the lung field's bounding box (both lungs), 0 at the image's left edge of the field
  (the patient's right lung) and 1 at its right edge;
- `y`: box centre from the apex (0) to the base (1) of its side's lung (both lungs for cardiomegaly);
- `side` (by the midline between the lungs) and `zone` (thirds of `y`, as `anatomy_rules.zone_mask` splits
  each lung's vertical extent);
- `lateral` (shown, not in the distance): box centre from the midline (0) to its lung's lateral edge (1);
- `aspect`: box height over width (on square images; VinDr's is compared with it);
- `area_share`: box area over the area of the lung field's bounding box (both lungs). The box, not the lung
  area: V7's lung masks fill 0.61 of their box and the phantom's 0.48 (its lungs stop at the cardiac and
  mediastinal borders), so a share of the mask area would mostly measure that difference.

Real boxes come without lung masks, so they are normalised by a *typical real lung field*: the mean lung
bounding box per side of the V7 masks whose image is nearly square (the NIH, RSNA and SIIM images are
1024 x 1024). Our masks are normalised by their own image's lung masks.

Shape descriptors (skimage `regionprops`): `solidity` (area / convex-hull area), `eccentricity` (of the
ellipse with the same second moments) and `extent` (area / bounding-box area), of each side's pneumothorax
mask and of each lung.

One distance per finding (`location_distances`): the energy distance (Szekely; sqrt(2E|X-Y| - E|X-X'| -
E|Y-Y'|), as `scipy.stats.energy_distance` in 1-D) between the real and our units in the 3-D space
(x, y, log area_share), each coordinate divided by the real sample's standard deviation. Zero for the same
sample, growing as either location or size moves; the within-sample terms leave out each point's distance
to itself, so the estimate has no floor set by the sample sizes. A bootstrap gives its 90% interval.

    real = real_location_stats()                      # cached per process
    ours = location_stats(masks, anatomy)             # masks (N, 7, H, W), anatomy (N, 14, H, W)
    table = location_distances(real, ours)
"""

from __future__ import annotations

import functools
import gzip
import html
import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from aurad_models.vocabulary import PATHOLOGIES, ZONES, anatomy_index, pathology_index

logger = logging.getLogger(__name__)

FEATURES = ("x", "y", "log_area")
SHAPE_FEATURES = ("solidity", "eccentricity", "extent")
UNIT_COLUMNS = ("source", "finding", "image", "side", "x", "y", "lateral", "zone", "area_share", "log_area", "aspect",
                "mask_share", *SHAPE_FEATURES)

# Each finding's reference: the real source its distance is measured against, then the others shown beside it.
# NIH "Pneumonia" boxes are the airspace opacities NIH boxes; RSNA's opacity boxes are ten times as many.
REFERENCES: dict[str, tuple[str, ...]] = {
    "nodule": ("nih",),
    "mass": ("nih",),
    "consolidation": ("rsna", "nih"),
    "effusion": ("nih",),
    "pneumothorax": ("siim", "nih"),
    "cardiomegaly": ("nih",),
    "atelectasis": ("nih",),
}
NIH_LABELS = {"Nodule": "nodule", "Mass": "mass", "Pneumonia": "consolidation", "Effusion": "effusion",
              "Pneumothorax": "pneumothorax", "Cardiomegaly": "cardiomegaly", "Atelectasis": "atelectasis"}
VINDR_LABELS = {"Nodule/Mass": "nodule", "Consolidation": "consolidation", "Pleural effusion": "effusion",
                "Pneumothorax": "pneumothorax", "Cardiomegaly": "cardiomegaly", "Atelectasis": "atelectasis"}
REAL_IMAGE_SIZE = 1024  # NIH, RSNA and SIIM images
MIN_SIDE_SHARE = 0.05  # a side holding less of a mask's pixels is a fragment, not a unit of its own
_RIGHT, _LEFT = anatomy_index("Right Lung"), anatomy_index("Left Lung")


class MissingRealData(FileNotFoundError):
    """The torchxrayvision wheel (or one of its data files) is not installed."""


def real_data_dir() -> Path:
    """`torchxrayvision/data/` of the installed wheel."""
    try:
        import torchxrayvision
    except ImportError as error:
        raise MissingRealData("the real annotations come from torchxrayvision's wheel: pip install torchxrayvision") from error
    return Path(torchxrayvision.__file__).parent / "data"


def _real_file(name: str) -> Path:
    path = real_data_dir() / name
    if not path.is_file():
        raise MissingRealData(f"{path} is missing: torchxrayvision ships it in its wheel's data folder")
    return path


# --- the lung field ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LungField:
    """A lung field in image fractions (x across, y down): each side's bounding box (x0, y0, x1, y1), the
    midline between them and the lungs' area. 'right' is the patient's right lung, on the image's left."""

    right: tuple[float, float, float, float]
    left: tuple[float, float, float, float]
    area: float  # both lungs, share of the image
    n_masks: int = 1

    @property
    def box(self) -> tuple[float, float, float, float]:
        r, l = self.right, self.left
        return min(r[0], l[0]), min(r[1], l[1]), max(r[2], l[2]), max(r[3], l[3])

    @property
    def box_area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)

    @property
    def midline(self) -> float:
        return (self.right[2] + self.left[0]) / 2

    def side_of(self, x: float) -> str:
        return "right" if x < self.midline else "left"

    def normalise(self, cx: float, cy: float, side: str | None) -> tuple[float, float]:
        """(x across both lungs' box, y from apex to base of the side's lung, or both lungs' without side)."""
        x0, y0, x1, y1 = self.box
        top, bottom = (y0, y1) if side not in ("right", "left") else (getattr(self, side)[1], getattr(self, side)[3])
        return (cx - x0) / max(x1 - x0, 1e-9), (cy - top) / max(bottom - top, 1e-9)

    def lateral(self, cx: float, side: str) -> float:
        """0 at the midline, 1 at the lateral edge of the side's lung."""
        if side == "right":
            return (self.midline - cx) / max(self.midline - self.right[0], 1e-9)
        return (cx - self.midline) / max(self.left[2] - self.midline, 1e-9)


def box_of(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) of a mask's pixels in image fractions (pixel c spans [c, c+1))."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    return cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h


def anatomy_lung_field(anatomy: np.ndarray) -> LungField | None:
    """The lung field of one image's anatomy (14, H, W); None when a lung is missing."""
    right, left = box_of(anatomy[_RIGHT] > 0), box_of(anatomy[_LEFT] > 0)
    if right is None or left is None:
        return None
    area = float(((anatomy[_RIGHT] > 0) | (anatomy[_LEFT] > 0)).mean())
    return LungField(right, left, area)


def shape_descriptors(mask: np.ndarray) -> dict[str, float]:
    """Solidity, eccentricity and extent of a mask's pixels taken as one region (NaN when empty)."""
    from skimage.measure import regionprops

    mask = np.asarray(mask, dtype=np.uint8)
    if not mask.any():
        return {k: float("nan") for k in SHAPE_FEATURES}
    props = regionprops(mask)[0]
    return {"solidity": float(props.solidity), "eccentricity": float(props.eccentricity), "extent": float(props.extent)}


def _two_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(right, left) lung of a V7 mask of both lungs: its two largest pieces, one each side of the image
    centre, the smaller at least a third of the larger; None for anything else (lateral views, crops)."""
    from scipy import ndimage

    labelled, n = ndimage.label(mask)
    if n < 2:
        return None
    sizes = np.bincount(labelled.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    a, b = order[0] + 1, order[1] + 1
    if sizes[order[1]] < sizes[order[0]] / 3 or sizes[order[1]] < 0.02 * mask.size:
        return None
    pieces = [labelled == a, labelled == b]
    centres = [np.flatnonzero(p.any(axis=0)).mean() / mask.shape[1] for p in pieces]
    if not (min(centres) < 0.5 < max(centres)):
        return None
    right, left = (pieces[0], pieces[1]) if centres[0] < centres[1] else (pieces[1], pieces[0])
    return right, left


@functools.lru_cache(maxsize=4)
def v7_lungs(max_aspect: float = 1.25, max_masks: int | None = None, seed: int = 0) -> tuple[LungField, pd.DataFrame]:
    """The typical real lung field (mean box per side, mean area, of the usable V7 masks of nearly square
    images: height / width within 1/max_aspect..max_aspect) and one row of shape descriptors per lung.
    `max_masks`: read that many of the masks, drawn with `seed` (all when None)."""
    from PIL import Image

    rights, lefts, areas, shapes = [], [], [], []
    with zipfile.ZipFile(_real_file("semantic_masks_v7labs_lungs.zip")) as archive:
        names = sorted(n for n in archive.namelist() if not n.endswith("/"))
        if max_masks is not None and len(names) > max_masks:
            names = sorted(np.random.default_rng(seed).choice(names, max_masks, replace=False))
        for name in names:
            opened = Image.open(io.BytesIO(archive.read(name)))
            w, h = opened.size
            if not 1 / max_aspect <= h / w <= max_aspect:
                continue
            opened.draft("L", (512, 512))  # JPEGs decode at a reduced scale, at least 512 px
            image = np.asarray(opened.convert("L"))
            h, w = image.shape
            if max(h, w) > 512:  # shapes and boxes do not need the full resolution
                step = int(np.ceil(max(h, w) / 512))
                image = image[::step, ::step]
            lungs = _two_lungs(image > 127)
            if lungs is None:
                continue
            right, left = lungs
            rights.append(box_of(right))
            lefts.append(box_of(left))
            areas.append(float((right | left).mean()))
            for side, lung in (("right", right), ("left", left)):
                shapes.append({"image": name, "side": side, **shape_descriptors(lung)})
    field = LungField(tuple(float(v) for v in np.mean(rights, axis=0)), tuple(float(v) for v in np.mean(lefts, axis=0)),
                      float(np.mean(areas)), len(areas))
    return field, pd.DataFrame(shapes)


# --- units: one box per finding and side -------------------------------------------------------------


def _unit(source: str, finding: str, image: str, field: LungField, box: Sequence[float], side: str | None,
          mask_share: float = float("nan"), shape: dict[str, float] | None = None) -> dict[str, Any]:
    """One unit from a box (x0, y0, x1, y1) in image fractions."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if finding != "cardiomegaly" and side is None:
        side = field.side_of(cx)
    x, y = field.normalise(cx, cy, side if finding != "cardiomegaly" else None)
    area_share = (x1 - x0) * (y1 - y0) / field.box_area
    zone = ZONES[int(np.clip(np.floor(y * 3), 0, 2))]
    lateral = field.lateral(cx, side) if side in ("right", "left") else float("nan")
    return {"source": source, "finding": finding, "image": image, "side": side or "midline", "x": x, "y": y,
            "lateral": lateral, "zone": zone, "aspect": (y1 - y0) / max(x1 - x0, 1e-9),
            "area_share": area_share, "log_area": float(np.log(max(area_share, 1e-6))), "mask_share": mask_share,
            **(shape or {k: float("nan") for k in SHAPE_FEATURES})}


def mask_units(source: str, finding: str, image: str, mask: np.ndarray, field: LungField,
               with_shape: bool = False) -> list[dict[str, Any]]:
    """Units of one finding's mask (H, W): one per side holding at least MIN_SIDE_SHARE of its pixels (one in
    all for cardiomegaly), each the bounding box of the side's pixels; the mask's own area share as
    `mask_share` (over the lung field's box), and its shape descriptors when `with_shape`."""
    mask = np.asarray(mask, dtype=bool)
    total = int(mask.sum())
    if total == 0:
        return []
    if finding == "cardiomegaly":
        parts = [(None, mask)]
    else:
        split = int(round(field.midline * mask.shape[1]))
        right, left = mask.copy(), mask.copy()
        right[:, split:] = False
        left[:, :split] = False
        parts = [(side, part) for side, part in (("right", right), ("left", left)) if part.sum() >= MIN_SIDE_SHARE * total]
    units = []
    for side, part in parts:
        shape = shape_descriptors(part) if with_shape else None
        units.append(_unit(source, finding, image, field, box_of(part), side, float(part.mean()) / field.box_area, shape))
    return units


def _nih_units(field: LungField) -> list[dict[str, Any]]:
    table = pd.read_csv(_real_file("BBox_List_2017.csv.gz"))
    table = table.iloc[:, :6]
    table.columns = ["image", "label", "x", "y", "w", "h"]
    units = []
    for row in table.itertuples(index=False):
        finding = NIH_LABELS.get(row.label)
        if finding is not None:
            box = np.array([row.x, row.y, row.x + row.w, row.y + row.h]) / REAL_IMAGE_SIZE
            units.append(_unit("nih", finding, row.image, field, box, None))
    return units


def _rsna_units(field: LungField) -> list[dict[str, Any]]:
    with zipfile.ZipFile(_real_file("kaggle_stage_2_train_labels.csv.zip")) as archive:
        table = pd.read_csv(archive.open(archive.namelist()[0]))
    table = table[table["Target"] == 1].dropna(subset=["x", "y", "width", "height"])
    units = []
    for row in table.itertuples(index=False):
        box = np.array([row.x, row.y, row.x + row.width, row.y + row.height]) / REAL_IMAGE_SIZE
        units.append(_unit("rsna", "consolidation", row.patientId, field, box, None))
    return units


def siim_rle_is_relative(encodings: Iterable[str]) -> bool:
    """Whether SIIM run-length encodings are relative (each start counts from the previous run's end) rather
    than absolute: absolute starts increase within an encoding; relative ones fall back to small gaps."""
    falling = rising = 0
    for encoded in encodings:
        starts = [int(v) for v in encoded.split()[0::2]]
        steps = np.diff(starts)
        falling += int((steps < 0).sum())
        rising += int((steps > 0).sum())
    return falling > 0.1 * max(rising + falling, 1)


def _siim_units(field: LungField, max_images: int | None, seed: int) -> list[dict[str, Any]]:
    from storage.sources.geometry import decode_rle

    with gzip.open(_real_file("siim-pneumothorax-train-rle.csv.gz"), "rt") as handle:
        table = pd.read_csv(handle)
    table.columns = ["image", "rle"]
    table["rle"] = table["rle"].astype(str).str.strip()
    table = table[table["rle"] != "-1"]
    relative = siim_rle_is_relative(table["rle"].head(200))
    images = sorted(table["image"].unique())
    if max_images is not None and len(images) > max_images:
        images = sorted(np.random.default_rng(seed).choice(images, max_images, replace=False))
    groups = table.groupby("image")["rle"]
    units = []
    shape = (REAL_IMAGE_SIZE, REAL_IMAGE_SIZE)
    for image in images:
        mask = np.zeros(shape, dtype=bool)
        for encoded in groups.get_group(image):
            mask |= decode_rle(encoded, shape, relative=relative) > 0
        small = mask.reshape(256, 4, 256, 4).any(axis=(1, 3))  # shapes at 256 px, like the phantom's
        units += mask_units("siim", "pneumothorax", image, small, field, with_shape=True)
    return units


def _vindr_aspects() -> pd.DataFrame:
    """VinDr boxes per finding: count and box aspect ratio (height / width), the one scale-free descriptor
    its size-less native-pixel boxes give."""
    table = pd.read_csv(_real_file("vinbigdata-train.csv.gz"))
    table = table[table["class_name"].isin(VINDR_LABELS)].dropna(subset=["x_min", "y_min", "x_max", "y_max"])
    table = table.assign(finding=table["class_name"].map(VINDR_LABELS),
                         aspect=(table["y_max"] - table["y_min"]) / (table["x_max"] - table["x_min"]).clip(lower=1))
    return table.groupby("finding")["aspect"].agg(n="size", aspect_median="median").reset_index()


# --- stats -------------------------------------------------------------------------------------------


@dataclass
class LocationStats:
    """Units (one row per finding box, `UNIT_COLUMNS`) and, where known, lung shapes and notes."""

    units: pd.DataFrame
    lung_shapes: pd.DataFrame | None = None
    lung_field: LungField | None = None
    vindr: pd.DataFrame | None = None

    def of(self, finding: str, source: str | None = None) -> pd.DataFrame:
        rows = self.units[self.units["finding"] == finding]
        return rows if source is None else rows[rows["source"] == source]

    def summary(self) -> pd.DataFrame:
        """Per source and finding: count, side and zone shares, medians of x, y, area share (and shapes)."""
        rows = []
        for (source, finding), g in self.units.groupby(["source", "finding"], sort=False):
            row = {"source": source, "finding": finding, "n": len(g),
                   "right": float((g["side"] == "right").mean()), "left": float((g["side"] == "left").mean()),
                   **{zone: float((g["zone"] == zone).mean()) for zone in ZONES},
                   "x": float(g["x"].median()), "y": float(g["y"].median()), "lateral": float(g["lateral"].median()),
                   "area_share": float(g["area_share"].median()), "aspect": float(g["aspect"].median())}
            for k in SHAPE_FEATURES:
                row[k] = float(g[k].median()) if g[k].notna().any() else float("nan")
            rows.append(row)
        return pd.DataFrame(rows)


def _frame(units: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(units, columns=list(UNIT_COLUMNS))


# A seeded subsample of the large real files that still reads in seconds (the report section, the tests).
QUICK_SAMPLE = {"max_siim_images": 200, "max_lung_masks": 100}


@functools.lru_cache(maxsize=4)
def real_location_stats(max_siim_images: int | None = None, max_lung_masks: int | None = None, seed: int = 0) -> LocationStats:
    """Real units from the installed torchxrayvision files (NIH, RSNA boxes; SIIM masks), normalised by the
    typical V7 lung field. `max_siim_images` / `max_lung_masks`: read only that many SIIM images / V7 masks,
    drawn with `seed` (all when None)."""
    field, lung_shapes = v7_lungs(max_masks=max_lung_masks, seed=seed)
    units = _nih_units(field) + _rsna_units(field) + _siim_units(field, max_siim_images, seed)
    logger.info("real annotations: %d units; typical lung field from %d V7 masks", len(units), field.n_masks)
    return LocationStats(_frame(units), lung_shapes, field, _vindr_aspects())


def location_stats(masks: np.ndarray, anatomy: np.ndarray, source: str = "ours", with_shape: bool = True) -> LocationStats:
    """Units of our masks (N, 7, H, W) over their anatomy (N, 14, H, W), each image normalised by its own
    lung field; shape descriptors for pneumothorax and the lungs."""
    masks, anatomy = np.asarray(masks), np.asarray(anatomy)
    if masks.ndim != 4 or masks.shape[1] != len(PATHOLOGIES) or anatomy.shape[0] != masks.shape[0]:
        raise ValueError(f"masks must be (N, {len(PATHOLOGIES)}, H, W) with anatomy (N, 14, H, W), got {masks.shape}, {anatomy.shape}")
    units, shapes = [], []
    for i in range(len(masks)):
        field = anatomy_lung_field(anatomy[i])
        if field is None:
            continue
        for finding in PATHOLOGIES:
            mask = masks[i, pathology_index(finding)]
            if mask.any():
                units += mask_units(source, finding, str(i), mask, field, with_shape and finding == "pneumothorax")
        if with_shape:
            for side, channel in (("right", _RIGHT), ("left", _LEFT)):
                shapes.append({"image": str(i), "side": side, **shape_descriptors(anatomy[i, channel] > 0)})
    return LocationStats(_frame(units), pd.DataFrame(shapes) if with_shape else None)


# --- distances ---------------------------------------------------------------------------------------


def _mean_distance(a: np.ndarray, b: np.ndarray, same: bool = False) -> float:
    """Mean Euclidean distance between the points of a and b; `same`: a is b, and the zero distances of a
    point to itself are left out (the unbiased U-statistic)."""
    from scipy.spatial.distance import cdist, pdist

    if same:
        return float(pdist(a).mean()) if len(a) > 1 else 0.0
    return float(cdist(a, b).mean())


def energy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """sqrt(2E|A-B| - E|A-A'| - E|B-B'|) between two samples of points (n, d), with the within-sample means
    over distinct pairs (unbiased: two samples of one distribution score about 0, not a size-dependent
    floor); a negative estimate (samples closer than chance) is 0, so the same sample scores exactly 0."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    value = 2 * _mean_distance(a, b) - _mean_distance(a, a, same=True) - _mean_distance(b, b, same=True)
    return float(np.sqrt(max(value, 0.0)))


def feature_matrix(units: pd.DataFrame, features: Sequence[str] = FEATURES) -> np.ndarray:
    """The units' features (n, d), rows with a missing feature left out."""
    matrix = units[list(features)].to_numpy(np.float64)
    return matrix[np.isfinite(matrix).all(axis=1)]


def _real_scale(real: np.ndarray) -> np.ndarray:
    """Per feature, the real sample's standard deviation: the unit every distance is measured in."""
    scale = real.std(axis=0)
    scale[scale == 0] = 1.0
    return scale


def location_distance(real: pd.DataFrame, ours: pd.DataFrame, features: Sequence[str] = FEATURES,
                      bootstrap: int = 0, seed: int = 0, max_points: int = 1500) -> dict[str, float]:
    """Energy distance between real and our units on `features`, each divided by the real sample's standard
    deviation; with `bootstrap` > 0 its 5th and 95th percentile over resamples of both. Samples larger than
    `max_points` are subsampled (seeded)."""
    rng = np.random.default_rng(seed)
    a, b = feature_matrix(real, features), feature_matrix(ours, features)
    if len(a) == 0 or len(b) == 0:
        return {"distance": float("nan"), "low": float("nan"), "high": float("nan")}
    scale = _real_scale(a)
    a, b = a / scale, b / scale
    if len(a) > max_points:
        a = a[rng.choice(len(a), max_points, replace=False)]
    if len(b) > max_points:
        b = b[rng.choice(len(b), max_points, replace=False)]
    out = {"distance": energy_distance(a, b), "low": float("nan"), "high": float("nan")}
    if bootstrap:
        draws = _bootstrap_energy(a, b, bootstrap, rng)
        out["low"], out["high"] = (float(v) for v in np.percentile(draws, [5, 95]))
    return out


def _bootstrap_energy(a: np.ndarray, b: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Energy distances of `n` resamples (with replacement) of both samples. The within-sample means leave
    out the pairs of copies of one point, as the estimate leaves out a point paired with itself: counting
    them would shrink those means and bias every resample's distance upwards."""
    from scipy.spatial.distance import cdist

    aa, bb, ab = cdist(a, a), cdist(b, b), cdist(a, b)
    out = np.empty(n)
    for k in range(n):
        ca = np.bincount(rng.integers(0, len(a), len(a)), minlength=len(a)).astype(float)
        cb = np.bincount(rng.integers(0, len(b), len(b)), minlength=len(b)).astype(float)
        within_a = ca @ aa @ ca / max(len(a) ** 2 - (ca**2).sum(), 1.0)
        within_b = cb @ bb @ cb / max(len(b) ** 2 - (cb**2).sum(), 1.0)
        out[k] = np.sqrt(max(2 * (ca @ ab @ cb) / (len(a) * len(b)) - within_a - within_b, 0.0))
    return out


def energy_floor(real: pd.DataFrame, bounds: Mapping[str, tuple[float, float]], features: Sequence[str] = FEATURES,
                 candidates: int = 3000, iterations: int = 3000, seed: int = 0) -> float:
    """The least energy distance to the real units (in `location_distance`'s units) that any distribution of
    units inside `bounds` ({feature: (low, high)}, the features' own units) can reach. It tells a target that
    no table under a rule can meet from one that a better table might. Frank-Wolfe over candidate units (the
    real ones and jittered copies, clipped into the bounds): an estimate from above of the true floor."""
    from scipy.spatial.distance import cdist, pdist

    a = feature_matrix(real, features)
    scale = _real_scale(a)
    a = a / scale
    low = np.array([bounds.get(f, (-np.inf, np.inf))[0] for f in features]) / scale
    high = np.array([bounds.get(f, (-np.inf, np.inf))[1] for f in features]) / scale
    rng = np.random.default_rng(seed)
    jittered = a[rng.integers(0, len(a), candidates)] + rng.normal(0.0, 0.3, (candidates, a.shape[1]))
    points = np.clip(np.vstack([a, jittered]), low, high)
    to_real, within = cdist(points, a).mean(axis=1), cdist(points, points)
    weights = np.full(len(points), 1.0 / len(points))
    within_w = within @ weights
    for k in range(iterations):  # minimise 2 w.to_real - w'Ww over the simplex: move towards the best vertex
        j = int(np.argmin(to_real - within_w))
        step = 2.0 / (k + 3)
        weights *= 1 - step
        weights[j] += step
        within_w = (1 - step) * within_w + step * within[:, j]
    value = 2 * weights @ to_real - weights @ within_w - float(pdist(a).mean())
    return float(np.sqrt(max(value, 0.0)))


def location_distances(real: LocationStats, ours: LocationStats, bootstrap: int = 0, seed: int = 0,
                       findings: Sequence[str] = PATHOLOGIES) -> pd.DataFrame:
    """Per finding: the distance to its reference source (`REFERENCES`, first entry), to the other real
    sources beside it, the unit counts, and the medians of both sides."""
    rows = []
    for finding in findings:
        mine = ours.of(finding)
        if mine.empty:
            continue
        references = REFERENCES[finding]
        row: dict[str, Any] = {"finding": finding, "reference": references[0], "n_ours": len(mine)}
        for k, source in enumerate(references):
            theirs = real.of(finding, source)
            result = location_distance(theirs, mine, bootstrap=bootstrap if k == 0 else 0, seed=seed)
            if k == 0:
                row.update({"n_real": len(theirs), **result})
            else:
                row[f"distance_{source}"] = result["distance"]
        reference = real.of(finding, references[0])
        for k in ("x", "y", "lateral", "area_share"):
            row[f"real_{k}"] = float(reference[k].median())
            row[f"ours_{k}"] = float(mine[k].median())
        rows.append(row)
    return pd.DataFrame(rows)


# --- the phantom and the mask generator --------------------------------------------------------------


def phantom_units(per_finding: int = 200, size: int = 128, seed: int = 0, calibration: Any = None,
                  findings: Sequence[str] = PATHOLOGIES) -> LocationStats:
    """Units of `per_finding` phantoms per finding, each with that finding alone (its side, zone and size
    drawn by the phantom's own prior), on the phantom's exact anatomy; `calibration` as
    `generate_phantoms` takes it (None: the default phantom)."""
    from aurad_models.findings import Finding
    from aurad_models.phantom import PhantomConfig, generate_phantoms

    config = PhantomConfig(size=size)
    parts = []
    for k, finding in enumerate(findings):
        seeds = [seed + 100_000 * (k + 1) + i for i in range(per_finding)]
        kwargs = {} if calibration is None else {"calibration": calibration}
        batch = generate_phantoms(seeds, config, [(Finding(label=finding),)] * per_finding, **kwargs)
        parts.append(location_stats(batch.pathology, batch.anatomy, source="phantom"))
    units = pd.concat([p.units for p in parts], ignore_index=True)
    shapes = pd.concat([p.lung_shapes for p in parts], ignore_index=True)
    return LocationStats(units, shapes)


def mask_generator_units(model_dir: str | Path, per_finding: int = 40, seed: int = 0, sampling: Any = None,
                         findings: Sequence[str] = PATHOLOGIES) -> LocationStats:
    """Units of the masks a saved mask generator draws for one-finding prompts, on phantom anatomy at its
    size (the phantom's prompt prior completes side / zone / size; cardiomegaly prompts get the anatomy of a
    phantom with cardiomegaly, as a build pairs anatomy-bound findings). `sampling`: a MaskSamplingConfig."""
    from aurad_models.findings import Finding
    from aurad_models.generators import load_generator
    from aurad_models.phantom import PhantomConfig, generate_phantoms

    generator = load_generator(model_dir, "mask")
    config = PhantomConfig(size=generator.config.image_size)
    parts = []
    for k, finding in enumerate(findings):
        seeds = [seed + 200_000 * (k + 1) + i for i in range(per_finding)]
        batch = generate_phantoms(seeds, config, [(Finding(label=finding),)] * per_finding)
        out = generator.sample(batch.anatomy, batch.findings, seeds, sampling)
        parts.append(location_stats(out.masks, batch.anatomy, source="mask-generator"))
    return LocationStats(pd.concat([p.units for p in parts], ignore_index=True),
                         pd.concat([p.lung_shapes for p in parts], ignore_index=True))


def shape_table(real: LocationStats, ours: dict[str, LocationStats]) -> pd.DataFrame:
    """Median shape descriptors: pneumothorax (SIIM vs ours) and the lungs (V7 vs ours)."""
    rows = []

    def add(what: str, source: str, frame: pd.DataFrame | None) -> None:
        if frame is not None and len(frame):
            rows.append({"structure": what, "source": source, "n": len(frame),
                         **{k: float(frame[k].median()) for k in SHAPE_FEATURES}})

    add("pneumothorax", "siim", real.of("pneumothorax", "siim"))
    add("lungs", "v7", real.lung_shapes)
    for name, stats in ours.items():
        add("pneumothorax", name, stats.of("pneumothorax"))
        add("lungs", name, stats.lung_shapes)
    return pd.DataFrame(rows)


# --- the evaluation report ---------------------------------------------------------------------------


LOCATION_COLUMNS = ("finding", "reference", "n_real", "n_ours", "distance", "real_x", "ours_x", "real_y", "ours_y",
                    "real_area_share", "ours_area_share")


def location_document(datasets: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """What the evaluation stores (in quality_metrics.json) and its report shows: per dataset (name ->
    (masks (N, 7, H, W), anatomy (N, 14, H, W))) and finding, the distance of its finding boxes to the real
    annotations (a seeded subsample of the real files, `QUICK_SAMPLE`; `python -m bench.locations` reads
    more) and the medians of both. A skip with the reason when the real files are not installed."""
    try:
        real = real_location_stats(**QUICK_SAMPLE)
    except MissingRealData as error:
        return {"skipped": str(error)}
    rows = []
    for name, (masks, anatomy) in datasets.items():
        table = location_distances(real, location_stats(masks, anatomy, source=name, with_shape=False))
        rows += [{"dataset": name, **{k: (v if isinstance(v, str) else float(v)) for k, v in r.items() if k in LOCATION_COLUMNS}}
                 for r in table.to_dict("records")]
    return {"distance": "energy distance on (x, y, log area), in units of the real spread (0: same distribution)",
            "real": f"NIH and RSNA boxes, SIIM-ACR masks ({QUICK_SAMPLE['max_siim_images']} images), normalised by a "
                    f"typical V7 lung field ({QUICK_SAMPLE['max_lung_masks']} masks)", "rows": rows}


def location_section(document: Mapping[str, Any]) -> str:
    """HTML section of the evaluation report from `location_document`'s output."""
    title = "<h2 id=\"locations\">Finding locations against real annotations</h2>"
    if document.get("skipped"):
        return f"{title}<p class=\"muted\">skipped: {html.escape(str(document['skipped']))}</p>"
    header = ["dataset", "finding", "reference", "distance", "real x", "ours x", "real y", "ours y", "real area", "ours area"]
    rows = "".join(
        "<tr>" + "".join(f"<td class=\"text\">{html.escape(str(v))}</td>" if i < 3 else f"<td>{v:.3f}</td>"
                         for i, v in enumerate([r["dataset"], r["finding"], r["reference"], r["distance"], r["real_x"], r["ours_x"],
                                                r["real_y"], r["ours_y"], r["real_area_share"], r["ours_area_share"]])) + "</tr>"
        for r in document["rows"])
    head = "".join(f"<th class=\"text\">{h}</th>" if i < 3 else f"<th>{h}</th>" for i, h in enumerate(header))
    return (
        f"{title}<p>Where each dataset's findings lie and how big they are, against real published annotations "
        f"({html.escape(document['real'])}): box centre across the lung field (x) and from apex to base (y), box area "
        f"as a share of the lung field's box; medians, and the {html.escape(document['distance'])}. "
        "<code>python -m bench.locations</code> measures the phantom and the mask generator on more samples.</p>"
        f"<table id=\"locations-table\"><tr>{head}</tr>{rows}</table>"
    )
