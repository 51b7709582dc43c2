"""A generic folder: radiographs + exact masks + a CSV index, for data that comes in no public layout.

Layout: <root>/<csv> (default `index.csv`), paths in it relative to <root>:
    image            (required) PNG / JPEG / TIFF / DICOM
    mask             optional integer label map (PNG): value v is class `mask_values[v]`; 0 is background.
                     Default `mask_values`: 1..7 = PATHOLOGIES in vocabulary order (1 = nodule, ...).
    mask_<class>     optional binary mask per class (any non-zero pixel is in), e.g. `mask_nodule`;
                     an empty cell means no mask was given for that class on that row
    anatomy_<name>   optional binary anatomy masks, <name> from ANATOMY_STRUCTURES ("anatomy_Left Lung")
    labels           optional "|"-separated class names present on the image, the complete list (absent
                     classes are 0); "none" / "normal" / "No Finding" for a normal image; an empty cell
                     means not given
    report           optional free text, used as the prompt
    split            optional
Class names pass through `class_map` (their name -> ours), then must be in PATHOLOGIES; a name neither
maps is recorded as unknown. Labels: a class with a mask is 1 if the mask has pixels, else 0; `labels`
adds positives; any other label is NaN. Masks are `mask_source="exact"`. File names are the user's
own and may hold identifiers: only their hash is written out unless `keep_names=True`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES, anatomy_index, pathology_index
from storage.sources.base import SourceAdapter, read_table, spacing_metadata
from storage.sources.pixels_io import read_any_image, read_label_map, read_mask_bitmap
from storage.sources.records import (
    RecordError,
    RecordRef,
    RelabelTable,
    SourceFormatError,
    SourceRecord,
    empty_anatomy,
    empty_pathology,
    findings_from,
    inside_folder,
    labels_from_masks,
    relabel_flags,
    relabel_metadata,
    sample_id_for,
)

logger = logging.getLogger(__name__)


class GenericFolder(SourceAdapter):
    name = "generic"
    relabel = RelabelTable(mapped={label: label for label in PATHOLOGIES}, exhaustive=True)

    def __init__(
        self,
        root: str | Path,
        csv: str = "index.csv",
        class_map: dict[str, str] | None = None,
        mask_values: dict[int, str] | None = None,
        invert: bool = False,
        keep_names: bool = False,
    ) -> None:
        super().__init__(root)
        self.csv = csv
        self.class_map = dict(class_map or {})
        self.relabel = RelabelTable(mapped={**{label: label for label in PATHOLOGIES}, **self.class_map}, exhaustive=True)
        self.mask_values = {int(k): v for k, v in (mask_values or {i + 1: p for i, p in enumerate(PATHOLOGIES)}).items()}
        for value, name in self.mask_values.items():
            if value <= 0 or self.relabel.lookup(name) is None:
                raise ValueError(f"mask_values maps {value} -> {name!r}: values must be > 0 and names known classes")
        self.invert = invert
        self.keep_names = keep_names

    def options(self) -> dict[str, object]:
        return {
            "csv": self.csv,
            "class_map": self.class_map,
            "mask_values": {str(k): v for k, v in self.mask_values.items()},
            "invert": self.invert,
            "keep_names": self.keep_names,
        }

    def display_name(self, relative_path: str) -> str | None:
        return relative_path if self.keep_names else None

    def scan(self) -> list[RecordRef]:
        table = read_table(self.root / self.csv, ("image",), f"{self.name} index")
        mask_columns = {c: c.removeprefix("mask_") for c in table.columns if c.startswith("mask_")}
        for column, name in mask_columns.items():
            if self.relabel.lookup(name) is None:
                raise SourceFormatError(
                    f"{self.name}: {self.csv} column {column!r} names class {name!r}, neither ours "
                    f"({', '.join(PATHOLOGIES)}) nor in class_map"
                )
        anatomy_columns = {c: c.removeprefix("anatomy_") for c in table.columns if c.startswith("anatomy_")}
        for column, name in anatomy_columns.items():
            if name not in ANATOMY_STRUCTURES:
                raise SourceFormatError(
                    f"{self.name}: {self.csv} column {column!r}: {name!r} is not one of {', '.join(ANATOMY_STRUCTURES)}"
                )
        images = [p.strip() for p in table["image"]]
        duplicated = sorted({p for p in images if images.count(p) > 1})
        if duplicated:
            raise SourceFormatError(f"{self.name}: {self.csv} lists {len(duplicated)} image path(s) more than once")
        refs = []
        for row in table.to_dict("records"):
            key = row["image"].strip()
            if not key:
                raise SourceFormatError(f"{self.name}: {self.csv} has a row with an empty 'image' cell")
            annotations = {
                "mask": row.get("mask", "").strip() if "mask" in row else None,
                "class_masks": {mask_columns[c]: row[c].strip() for c in mask_columns if row[c].strip()},
                "anatomy": {anatomy_columns[c]: row[c].strip() for c in anatomy_columns if row[c].strip()},
                "labels": _label_cell(row.get("labels", "")),
                "report": row.get("report", "").strip() or None,
            }
            split = row.get("split", "").strip() or None
            refs.append(RecordRef(sample_id_for(self.name, key), key, split, self.display_name(key), annotations))
        return refs

    def load(self, ref: RecordRef) -> SourceRecord:
        notes = ref.annotations
        image, metadata, spacing = read_any_image(inside_folder(self.root, ref.key, "image"), ref.name, invert=self.invert)
        shape = image.shape
        pathology = empty_pathology(shape)
        provided: set[str] = set()
        if notes["mask"]:
            values = read_label_map(inside_folder(self.root, notes["mask"], "label map"), f"{ref.name} label map")
            _check_shape(values, shape, f"{ref.name}: label map")
            unknown_values = sorted(set(np.unique(values).tolist()) - {0} - set(self.mask_values))
            if unknown_values:
                raise RecordError(f"{ref.name}: label map holds values {unknown_values} not in mask_values")
            for value, name in self.mask_values.items():
                label = self.relabel.lookup(name)
                pathology[pathology_index(label)] |= (values == value).astype(np.uint8)
                provided.add(label)
        for name, mask_path in notes["class_masks"].items():
            mask = read_mask_bitmap(inside_folder(self.root, mask_path, f"{name} mask"), f"{ref.name} {name} mask")
            _check_shape(mask, shape, f"{ref.name}: {name} mask")
            label = self.relabel.lookup(name)
            pathology[pathology_index(label)] |= mask
            provided.add(label)
        anatomy = None
        if notes["anatomy"]:
            anatomy = empty_anatomy(shape)
            for name, mask_path in notes["anatomy"].items():
                mask = read_mask_bitmap(inside_folder(self.root, mask_path, f"{name} mask"), f"{ref.name} {name} mask")
                _check_shape(mask, shape, f"{ref.name}: {name} mask")
                anatomy[anatomy_index(name)] = mask
        labels = labels_from_masks(pathology, provided)
        flags: list[str] = []
        if notes["labels"] is not None:
            result = self.relabel.relabel(notes["labels"])
            for label, value in result.labels.items():
                if value == 1.0:
                    if labels[label] == 0.0:
                        flags.append("label without mask pixels")
                    labels[label] = 1.0
                elif math.isnan(labels[label]):
                    labels[label] = value  # 0: the list is complete
            metadata.update(relabel_metadata(result))
            flags += relabel_flags(result)
        metadata.update(spacing_metadata(spacing))
        metadata["anatomy_source"] = "user" if anatomy is not None else "none"
        mask_source = "exact" if provided else "none"
        return SourceRecord(
            sample_id=ref.sample_id,
            image=image,
            pathology=pathology if provided else None,
            anatomy=anatomy,
            labels=labels,
            findings=findings_from(labels, pathology, anatomy),
            report=notes["report"],
            mask_source=mask_source,
            metadata=metadata,
            split=ref.split,
            source=ref.display,
            flags=flags,
        )


_NORMAL_CELLS = frozenset({"none", "normal", "no finding"})


def _label_cell(cell: str) -> list[str] | None:
    """A `labels` cell -> class names; [] for an explicit normal; None when the cell is empty."""
    cell = cell.strip()
    if not cell:
        return None
    if cell.casefold() in _NORMAL_CELLS:
        return []
    return [c.strip() for c in cell.split("|") if c.strip()]


def _check_shape(mask: np.ndarray, shape: tuple[int, int], what: str) -> None:
    if mask.shape != shape:
        raise RecordError(f"{what} size {mask.shape[1]}x{mask.shape[0]} disagrees with the image {shape[1]}x{shape[0]}")
