"""VinDr-CXR (PhysioNet release, or the Kaggle competition's `train.csv`).

Layout:
    <root>/annotations/annotations_train.csv   image_id, rad_id, class_name, x_min, y_min, x_max, y_max
    <root>/annotations/annotations_test.csv    (optional; split "test")
    <root>/train/<image_id>.dicom, <root>/test/<image_id>.dicom
The CSV may also sit directly in <root>, or be Kaggle's `train.csv` (VinBigData competition: columns
image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max), which torchxrayvision ships as
`vinbigdata-train.csv.gz` (67,914 rows, 15,000 images, readers R1..R17, three per image); every name
is also tried gzipped, and `annotations=` names any other file. Images are then <root>/train/<image_id>.dicom
(or .dcm). Boxes are in the DICOM's own pixels; the CSV lists no image size, so a box is checked against
the DICOM when it is read (clipped: flagged; entirely outside: the record is quarantined). Each image
was read by several radiologists (`rad_id`); a "No finding" row (empty box) is a reader's normal read.

Labels: a label is 1 when at least `min_votes` radiologists reported it, 0 when none did, NaN when some
but fewer than `min_votes` did (the readers disagree); votes are readers, not boxes (one reader's three
boxes for a class are one vote).

Masks, fusing the readers: for a positive label the mask is the union (pixel-wise OR) of every box every
reader drew for it, so a region any reader marked is inside. A box is a bound, not an outline: the union
is where some reader put the finding; intersecting the readers would drop true extent wherever one
reader boxed tighter or boxed only one of several lesions. A label below `min_votes` (NaN) has an empty
mask. Metadata `readers.<label>` is how many readers boxed each label that got at least one vote, so
stricter agreement can be selected later without re-importing; `mask_source="box"`.

"Nodule/Mass" is one VinDr class: a box whose longer side exceeds `nodule_mass_cutoff_mm` (30 mm, the
radiological nodule/mass boundary) is a mass, otherwise a nodule, measured with the DICOM's pixel
spacing, or, when the DICOM has none, assuming the image width spans `assumed_width_mm`.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from aurad_models.vocabulary import pathology_index
from storage.sources.base import SourceAdapter, find_index, parse_float, read_table, spacing_metadata
from storage.sources.geometry import box_mask
from storage.sources.pixels_io import read_dicom
from storage.sources.records import (
    RecordError,
    RecordRef,
    RelabelTable,
    SourceFormatError,
    SourceRecord,
    empty_pathology,
    findings_from,
    relabel_flags,
    relabel_metadata,
    sample_id_for,
)

logger = logging.getLogger(__name__)

NODULE_MASS = "Nodule/Mass"

VINDR_RELABEL = RelabelTable(
    mapped={
        "Atelectasis": "atelectasis",
        "Cardiomegaly": "cardiomegaly",
        "Consolidation": "consolidation",
        "Pleural effusion": "effusion",
        "Pneumothorax": "pneumothorax",
    },
    also_covers=frozenset({"nodule", "mass"}),  # via "Nodule/Mass", split by size in the adapter
    unmapped=frozenset(
        {
            "Aortic enlargement", "Calcification", "Clavicle fracture", "Edema", "Emphysema", "Enlarged PA",
            "ILD", "Infiltration", "Lung cavity", "Lung cyst", "Lung Opacity", "Mediastinal shift",
            "Other lesion", "Pleural thickening", "Pulmonary fibrosis", "Rib fracture",
        }
    ),
    ignored=frozenset({"No finding", NODULE_MASS}),
    exhaustive=True,
)

_REQUIRED = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
_CANDIDATES = {  # each also tried gzipped
    "train": ("annotations/annotations_train.csv", "annotations_train.csv", "train.csv", "vinbigdata-train.csv"),
    "test": ("annotations/annotations_test.csv", "annotations_test.csv"),
}


class VinDrCXR(SourceAdapter):
    name = "vindr-cxr"
    relabel = VINDR_RELABEL

    def __init__(
        self,
        root: str | Path,
        annotations: str | None = None,
        min_votes: int = 1,
        nodule_mass_cutoff_mm: float = 30.0,
        assumed_width_mm: float = 350.0,
    ) -> None:
        super().__init__(root)
        if min_votes < 1:
            raise ValueError(f"min_votes must be >= 1, got {min_votes}")
        self.annotations = annotations
        self.min_votes = min_votes
        self.cutoff_mm = nodule_mass_cutoff_mm
        self.assumed_width_mm = assumed_width_mm

    def options(self) -> dict[str, object]:
        return {
            "annotations": self.annotations,
            "min_votes": self.min_votes,
            "nodule_mass_cutoff_mm": self.cutoff_mm,
            "assumed_width_mm": self.assumed_width_mm,
        }

    def _annotation_files(self) -> list[tuple[str, Path]]:
        if self.annotations is not None:
            return [("train", self.root / self.annotations)]
        files = []
        for split, candidates in _CANDIDATES.items():
            try:
                files.append((split, self.root / find_index(self.root, candidates, f"{self.name} annotations")))
            except SourceFormatError:
                continue
        if not files:
            raise SourceFormatError(
                f"{self.name}: no annotations CSV in {self.root} (looked for {', '.join(_CANDIDATES['train'])}, "
                "also gzipped)"
            )
        return files

    def scan(self) -> list[RecordRef]:
        refs = []
        for split, csv_path in self._annotation_files():
            table = read_table(csv_path, _REQUIRED, f"{self.name} annotations")
            if "rad_id" not in table.columns:
                table["rad_id"] = "reader"
            rows = table[["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]]
            grouped: dict[str, list[tuple[str, ...]]] = defaultdict(list)
            for row in rows.itertuples(index=False):
                if str(row.image_id).strip():
                    grouped[str(row.image_id).strip()].append(tuple(str(v).strip() for v in row))
            for image_id in sorted(grouped):
                key = f"{split}/{image_id}.dicom"
                refs.append(
                    RecordRef(sample_id_for(self.name, key), key, split, self.display_name(key), grouped[image_id])
                )
        return refs

    def _image_path(self, ref: RecordRef) -> Path:
        path = self.root / ref.key
        if not path.is_file() and path.with_suffix(".dcm").is_file():
            return path.with_suffix(".dcm")
        return path

    def load(self, ref: RecordRef) -> SourceRecord:
        path = self._image_path(ref)
        if not path.is_file():
            raise RecordError(f"{ref.name}: image file listed in the annotations is missing")
        image, metadata, spacing = read_dicom(path, ref.name)
        shape = image.shape
        pathology = empty_pathology(shape)
        votes: dict[str, set[str]] = defaultdict(set)
        boxes: dict[str, list[np.ndarray]] = defaultdict(list)
        flags: list[str] = []
        class_names = []
        for _image_id, rad_id, class_name, *coords in ref.annotations:
            class_names.append(class_name)
            label = self.relabel.lookup(class_name)
            if class_name == NODULE_MASS:
                label = None  # decided by size below, once the box is read
            elif label is None:
                continue
            if any(c == "" for c in coords):
                raise RecordError(f"{ref.name}: {class_name!r} row by {rad_id or 'a reader'} has no box")
            x_min, y_min, x_max, y_max = (parse_float(c, "box coordinate", ref.name) for c in coords)
            if label is None:
                label = self._nodule_or_mass(x_max - x_min, y_max - y_min, spacing, shape)
            mask, clipped = box_mask(shape, x_min, y_min, x_max, y_max)
            if clipped:
                flags.append("box clipped to the image")
            votes[label].add(rad_id)
            boxes[label].append(mask)

        result = self.relabel.relabel(class_names)
        labels = dict(result.labels)
        for label in self.relabel.covered:
            count = len(votes.get(label, ()))
            labels[label] = 1.0 if count >= self.min_votes else (math.nan if count else 0.0)
            if labels[label] == 1.0:
                channel = pathology_index(label)
                for mask in boxes[label]:
                    pathology[channel] |= mask
        metadata.update(spacing_metadata(spacing))
        metadata.update(relabel_metadata(result))
        metadata["readers"] = str(len({row[1] for row in ref.annotations}))
        metadata.update({f"readers.{label}": str(len(votes[label])) for label in sorted(votes)})
        if any(c == NODULE_MASS for c in class_names):
            metadata["nodule_mass_rule"] = "pixel_spacing" if spacing else f"assumed_width_{self.assumed_width_mm:g}mm"
        return SourceRecord(
            sample_id=ref.sample_id,
            image=image,
            pathology=pathology,
            anatomy=None,
            labels=labels,
            findings=findings_from(labels, pathology, None),
            report=None,
            mask_source="box",
            metadata=metadata,
            split=ref.split,
            source=ref.display,
            flags=flags + relabel_flags(result),
        )

    def _nodule_or_mass(
        self, width_px: float, height_px: float, spacing: tuple[float, float] | None, shape: tuple[int, int]
    ) -> str:
        if spacing is not None:
            row_mm, col_mm = spacing
        else:
            row_mm = col_mm = self.assumed_width_mm / shape[1]
        longest_mm = max(width_px * col_mm, height_px * row_mm)
        return "mass" if longest_mm > self.cutoff_mm else "nodule"

