"""NIH ChestX-ray14: the 984 images with radiologist boxes (`BBox_List_2017.csv`).

Layout:
    <root>/BBox_List_2017.csv    header `Image Index,Finding Label,Bbox [x,y,w,h],,,`: pandas sees the
                                 columns "Bbox [x", "y", "w", "h]" and blank trailing ones
                                 (984 boxes on 880 images, 8 finding classes)
    <root>/Data_Entry_2017.csv   optional; "Finding Labels" = "A|B|C" or "No Finding" (NLP-mined labels);
                                 or its 2020 revision `Data_Entry_2017_v2020.csv` (112,120 rows), whose
                                 header `...,View Position,OriginalImage[Width,Height],
                                 OriginalImagePixelSpacing[x,y]` pandas splits into "OriginalImage[Width",
                                 "Height]", "OriginalImagePixelSpacing[x", "y]"
    <root>/train_val_list.txt, <root>/test_list.txt   optional official split
    PNG images (1024x1024) anywhere under <root> (images_001/images/... as the tarballs unpack)
Both CSVs are found by name (`bbox_csv=None`, `data_entry_csv="auto"`: the names above, each also
gzipped as torchxrayvision ships them) or named explicitly; `data_entry_csv=None` (`-o data_entry_csv=null`)
ignores Data_Entry.
Boxes are (x, y, w, h) in pixels of the 1024 grid -> box masks (`mask_source="box"`); they are used as
pixels of the image as it is, so an image of another size (a resized copy) is imported with its boxes
unscaled and flagged "image not on the 1024x1024 box grid". Pixel spacing: Data_Entry gives the
*original* DICOM's size and spacing; the PNGs were resized from it to 1024x1024, so the spacing of an
image pixel is the original spacing times original size / image size, per axis (our assumption: the
resize covers the whole original frame, neither cropped nor padded). Metadata keeps
`original_size` (HxW) and `original_pixel_spacing_mm` (row,col) as listed and the derived
`source_pixel_spacing_mm` (which the driver rescales to the stored grid); an unreadable size or spacing
cell is flagged, never guessed. With Data_Entry the
labels are its labels (plus any boxed class), absence = 0; without it only boxed classes are known (1)
and every other label is NaN, since the box list is not a complete read. A label from Data_Entry with no
box leaves its mask channel empty; it is listed in metadata `unboxed_labels`.
Image names are `<patient>_<follow-up>.png`, so only their hash is written out; of Data_Entry only the
view position is kept (never patient id, age or sex).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import defaultdict
from pathlib import Path

from aurad_models.vocabulary import PATHOLOGIES, pathology_index
from storage.sources.base import SourceAdapter, find_index, index_files, parse_float, read_table
from storage.sources.geometry import box_mask
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

NIH_RELABEL = RelabelTable(
    mapped={
        "Atelectasis": "atelectasis",
        "Cardiomegaly": "cardiomegaly",
        "Consolidation": "consolidation",
        "Effusion": "effusion",
        "Mass": "mass",
        "Nodule": "nodule",
        "Pneumothorax": "pneumothorax",
    },
    unmapped=frozenset(
        {"Infiltration", "Infiltrate", "Pneumonia", "Edema", "Emphysema", "Fibrosis", "Hernia", "Pleural_Thickening"}
    ),
    ignored=frozenset({"No Finding"}),
    exhaustive=True,
)
NIH_BOXES_ONLY_RELABEL = dataclasses.replace(NIH_RELABEL, exhaustive=False)

_BBOX_RENAME = {"Bbox [x": "x", "Bbox [x,y,w,h]": "x", "h]": "h"}
# Data_Entry's geometry columns as pandas splits the published header; renamed to these names
_ENTRY_RENAME = {
    "OriginalImage[Width": "original_width",
    "Height]": "original_height",
    "OriginalImagePixelSpacing[x": "spacing_x",
    "y]": "spacing_y",
}
_GEOMETRY = ("original_width", "original_height", "spacing_x", "spacing_y")
_BBOX_CANDIDATES = ("BBox_List_2017.csv",)
_ENTRY_CANDIDATES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
BOX_GRID = 1024  # BBox_List's coordinates are pixels of the released 1024x1024 PNGs


class NIHBoxes(SourceAdapter):
    name = "nih-chestxray14"
    relabel = NIH_RELABEL

    def __init__(
        self,
        root: str | Path,
        bbox_csv: str | None = None,
        data_entry_csv: str | None = "auto",
    ) -> None:
        super().__init__(root)
        self.bbox_csv = bbox_csv or find_index(self.root, _BBOX_CANDIDATES, f"{self.name} boxes")
        if data_entry_csv == "auto":
            try:
                data_entry_csv = find_index(self.root, _ENTRY_CANDIDATES, f"{self.name} labels")
            except SourceFormatError:
                logger.info("%s: no %s in %s; labels come from the boxes only", self.name, " / ".join(_ENTRY_CANDIDATES), self.root)
                data_entry_csv = None
        self.data_entry_csv = data_entry_csv
        self._files: dict[str, Path] | None = None

    def options(self) -> dict[str, object]:
        return {"bbox_csv": self.bbox_csv, "data_entry_csv": self.data_entry_csv}

    def scan(self) -> list[RecordRef]:
        boxes = read_table(
            self.root / self.bbox_csv, ("Image Index", "Finding Label", "x", "y", "w", "h"), f"{self.name} boxes", _BBOX_RENAME
        )
        entries = self._entries() if self.data_entry_csv else {}
        split_of = self._official_split()
        grouped: dict[str, list[tuple[str, str, str, str, str]]] = defaultdict(list)
        for row in boxes[["Image Index", "Finding Label", "x", "y", "w", "h"]].itertuples(index=False):
            if row[0].strip():
                grouped[row[0].strip()].append(tuple(v.strip() for v in row[1:]))
        refs = []
        for image in sorted(grouped):
            annotations = {"boxes": grouped[image], "entry": entries.get(image), "has_entries": bool(entries)}
            refs.append(
                RecordRef(sample_id_for(self.name, image), image, split_of.get(image), self.display_name(image), annotations)
            )
        return refs

    def _entries(self) -> dict[str, dict[str, str]]:
        """Image Index -> its Data_Entry row: finding labels, view, and geometry when the file has it."""
        path = self.root / self.data_entry_csv
        table = read_table(path, ("Image Index", "Finding Labels"), f"{self.name} labels", _ENTRY_RENAME)
        present = [c for c in _GEOMETRY if c in table.columns]
        if present and len(present) != len(_GEOMETRY):  # half a geometry is a header we do not understand
            missing = [k for k, v in _ENTRY_RENAME.items() if v not in present]
            raise SourceFormatError(
                f"{self.name} labels: {path} has original-image columns "
                f"{', '.join(repr(k) for k, v in _ENTRY_RENAME.items() if v in present)} but lacks "
                f"{', '.join(repr(c) for c in missing)}; found {', '.join(repr(c) for c in table.columns)}"
            )
        if "View Position" not in table.columns:
            table["View Position"] = ""
        columns = ["Image Index", "Finding Labels", "View Position", *present]
        entries: dict[str, dict[str, str]] = {}
        for image, labels, view, *geometry in table[columns].itertuples(index=False, name=None):
            image = image.strip()
            if image in entries:
                raise SourceFormatError(f"{self.name} labels: {path} lists one image twice (column 'Image Index')")
            entries[image] = {"labels": labels, "view": view.strip(), **{c: v.strip() for c, v in zip(present, geometry)}}
        return entries

    def _official_split(self) -> dict[str, str]:
        split_of = {}
        for split, name in (("train", "train_val_list.txt"), ("test", "test_list.txt")):
            path = self.root / name
            if path.is_file():
                split_of.update({line.strip(): split for line in path.read_text().splitlines() if line.strip()})
        return split_of

    def load(self, ref: RecordRef) -> SourceRecord:
        if self._files is None:
            self._files = index_files(self.root, (".png",))
        path = self._files.get(ref.key.lower())
        if path is None:
            raise RecordError(f"{ref.name}: image file listed in the box list is missing")
        image, metadata = read_bitmap(path, ref.name)
        pathology = empty_pathology(image.shape)
        flags: list[str] = []
        if image.shape != (BOX_GRID, BOX_GRID):
            flags.append(f"image not on the {BOX_GRID}x{BOX_GRID} box grid")
        boxed_classes = []
        for finding, *coords in ref.annotations["boxes"]:
            boxed_classes.append(finding)
            label = self.relabel.lookup(finding)
            if label is None:
                continue
            x, y, w, h = (parse_float(c, "box value", ref.name) for c in coords)
            if w < 0 or h < 0:
                raise RecordError(f"{ref.name}: {finding} box has a negative width or height")
            mask, clipped = box_mask(image.shape, x, y, x + w, y + h)
            if clipped:
                flags.append("box clipped to the image")
            pathology[pathology_index(label)] |= mask
        entry = ref.annotations["entry"]
        if ref.annotations["has_entries"] and entry is None:
            raise RecordError(f"{ref.name}: image has boxes but no Data_Entry row")
        if entry is not None:
            classes = [c.strip() for c in entry["labels"].split("|") if c.strip()] + boxed_classes
            result = NIH_RELABEL.relabel(classes)
            if entry["view"]:
                metadata["view_position"] = entry["view"]
            if "spacing_x" in entry:
                geometry, note = _geometry(entry, image.shape)
                metadata.update(geometry)
                flags += [note] if note else []
        else:
            result = NIH_BOXES_ONLY_RELABEL.relabel(boxed_classes)
        labels = result.labels
        unboxed = [l for l in PATHOLOGIES if labels[l] == 1.0 and not pathology[pathology_index(l)].any()]
        if unboxed:
            metadata["unboxed_labels"] = ";".join(unboxed)
        metadata.update(relabel_metadata(result))
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


def _geometry(entry: dict[str, str], shape: tuple[int, int]) -> tuple[dict[str, str], str | None]:
    """Data_Entry's original size and spacing as metadata, and the spacing of this image's pixels; or a
    flag when a cell is not a positive number (the spacing is then left out, never guessed)."""
    try:
        width, height, spacing_x, spacing_y = (float(entry[c]) for c in _GEOMETRY)
    except ValueError:
        return {}, "unreadable original size or pixel spacing in Data_Entry"
    if not all(math.isfinite(v) and v > 0 for v in (width, height, spacing_x, spacing_y)):
        return {}, "unreadable original size or pixel spacing in Data_Entry"
    row_mm, col_mm = spacing_y * height / shape[0], spacing_x * width / shape[1]
    return {
        "original_size": f"{height:g}x{width:g}",
        "original_pixel_spacing_mm": f"{spacing_y:g},{spacing_x:g}",
        "source_pixel_spacing_mm": f"{row_mm:.6g},{col_mm:.6g}",
    }, None
