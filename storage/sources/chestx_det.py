"""ChestX-Det (Deepwise; 3,578 NIH ChestX-ray14 images, 13 classes, with segmentation outlines).

Layout:
    <root>/ChestX_Det_train.json, <root>/ChestX_Det_test.json
    PNG images (1024x1024, 8-bit) anywhere under <root> (the release zips unpack to train/ and test/)
Each JSON is a list of {"file_name": "36204.png", "syms": [class, ...], "boxes": [[x1, y1, x2, y2], ...],
"polygons": [[[x, y], ...], ...]}, one polygon and one box per sym; an image with no sym is normal.
Polygons are pixel indices along the outline (the boxes are their inclusive min/max), rasterised with
the outline included, `mask_source="exact"`. Where a sym's polygon is missing its box stands in and the
record's `mask_source` becomes "box". Every image was read for all 13 classes (absence means 0).
The file names come from NIH's image numbering, so only their hash is written out.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from aurad_models.vocabulary import pathology_index
from storage.sources.base import SourceAdapter, index_files, parse_float
from storage.sources.geometry import box_mask, polygon_mask
from storage.sources.pixels_io import read_bitmap
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

CHESTX_DET_RELABEL = RelabelTable(
    mapped={
        "Atelectasis": "atelectasis",
        "Cardiomegaly": "cardiomegaly",
        "Consolidation": "consolidation",
        "Effusion": "effusion",
        "Mass": "mass",
        "Nodule": "nodule",
        "Pneumothorax": "pneumothorax",
    },
    # Many nodules outlined as one region: a nodule is there, but its mask is not a nodule's.
    uncertain={"Diffuse Nodule": "nodule"},
    unmapped=frozenset({"Calcification", "Emphysema", "Fibrosis", "Fracture", "Pleural Thickening"}),
    exhaustive=True,
)

_ANNOTATION_FILES = {"train": "ChestX_Det_train.json", "test": "ChestX_Det_test.json"}


class ChestXDet(SourceAdapter):
    name = "chestx-det"
    relabel = CHESTX_DET_RELABEL

    def __init__(self, root: str | Path, annotations: dict[str, str] | None = None) -> None:
        super().__init__(root)
        self.annotations = dict(annotations) if annotations else dict(_ANNOTATION_FILES)
        self._files: dict[str, Path] | None = None

    def options(self) -> dict[str, object]:
        return {"annotations": self.annotations}

    def scan(self) -> list[RecordRef]:
        present = {split: self.root / name for split, name in self.annotations.items() if (self.root / name).is_file()}
        if not present:
            raise SourceFormatError(
                f"{self.name}: no annotation file in {self.root} (looked for {', '.join(self.annotations.values())})"
            )
        refs: list[RecordRef] = []
        seen: set[str] = set()
        for split, path in present.items():
            for entry in _read_entries(path):
                file_name = entry["file_name"]
                if file_name in seen:
                    raise SourceFormatError(f"{self.name}: {path.name} lists an image twice (entry {file_name!r} repeats)")
                seen.add(file_name)
                refs.append(RecordRef(sample_id_for(self.name, file_name), file_name, split, self.display_name(file_name), entry))
        return refs

    def _find(self, file_name: str) -> Path | None:
        if self._files is None:
            self._files = index_files(self.root, (".png",))
        return self._files.get(file_name.lower())

    def load(self, ref: RecordRef) -> SourceRecord:
        entry = ref.annotations
        path = self._find(ref.key)
        if path is None:
            raise RecordError(f"{ref.name}: image file listed in the annotations is missing")
        image, metadata = read_bitmap(path, ref.name)
        syms = entry.get("syms")
        polygons = entry.get("polygons") or []
        boxes = entry.get("boxes") or []
        if not isinstance(syms, list):
            raise RecordError(f"{ref.name}: annotation has no 'syms' list")
        if polygons and len(polygons) != len(syms):
            raise RecordError(f"{ref.name}: {len(syms)} syms but {len(polygons)} polygons")
        pathology = empty_pathology(image.shape)
        flags: list[str] = []
        mask_source = "exact"
        for i, sym in enumerate(syms):
            label = self.relabel.lookup(str(sym))
            if label is None:
                continue
            polygon = polygons[i] if i < len(polygons) else None
            if polygon:
                mask, clipped = polygon_mask(image.shape, polygon)
            elif i < len(boxes) and boxes[i]:
                if len(boxes[i]) != 4:
                    raise RecordError(f"{ref.name}: box {i} is not [x1, y1, x2, y2]")
                x1, y1, x2, y2 = (parse_float(v, "box coordinate", ref.name) for v in boxes[i])
                mask, clipped = box_mask(image.shape, x1, y1, x2 + 1, y2 + 1)  # inclusive pixel indices
                mask_source = "box"
                flags.append("box used for a missing polygon")
            else:
                raise RecordError(f"{ref.name}: {sym!r} has neither a polygon nor a box")
            if clipped:
                flags.append("annotation clipped to the image")
            if not mask.any():
                flags.append("annotation entirely outside the image")
            pathology[pathology_index(label)] |= mask
        result = self.relabel.relabel(str(s) for s in syms)
        metadata.update(relabel_metadata(result))
        return SourceRecord(
            sample_id=ref.sample_id,
            image=image,
            pathology=pathology,
            anatomy=None,
            labels=result.labels,
            findings=findings_from(result.labels, pathology, None),
            report=None,
            mask_source=mask_source,
            metadata=metadata,
            split=ref.split,
            source=ref.display,
            flags=flags + relabel_flags(result),
        )


def _read_entries(path: Path) -> list[dict]:
    """The JSON's entries; a file that is not a list of objects with a 'file_name' fails up front."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SourceFormatError(f"chestx-det: {path} is not valid JSON ({error})") from None
    if not isinstance(data, list):
        raise SourceFormatError(f"chestx-det: {path} must hold a list of image entries, got {type(data).__name__}")
    for number, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            raise SourceFormatError(f"chestx-det: {path} entry {number} lacks the required key 'file_name'")
    return data
