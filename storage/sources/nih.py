"""NIH ChestX-ray14: the 984 images with radiologist boxes (`BBox_List_2017.csv`).

Layout:
    <root>/BBox_List_2017.csv    header `Image Index,Finding Label,Bbox [x,y,w,h],,,`: pandas sees the
                                 columns "Bbox [x", "y", "w", "h]" and blank trailing ones
    <root>/Data_Entry_2017.csv   optional; "Finding Labels" = "A|B|C" or "No Finding" (NLP-mined labels)
    <root>/train_val_list.txt, <root>/test_list.txt   optional official split
    PNG images (1024x1024) anywhere under <root> (images_001/images/... as the tarballs unpack)
Boxes are (x, y, w, h) in pixels of the 1024 grid -> box masks (`mask_source="box"`). With Data_Entry the
labels are its labels (plus any boxed class), absence = 0; without it only boxed classes are known (1)
and every other label is NaN, since the box list is not a complete read. A label from Data_Entry with no
box leaves its mask channel empty; it is listed in metadata `unboxed_labels`.
Image names are `<patient>_<follow-up>.png`, so only their hash is written out; of Data_Entry only the
view position is kept (never patient id, age or sex).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from pathlib import Path

from aurad_models.vocabulary import PATHOLOGIES, pathology_index
from storage.sources.base import SourceAdapter, index_files, parse_float, read_table
from storage.sources.geometry import box_mask
from storage.sources.pixels_io import read_bitmap
from storage.sources.records import (
    RecordError,
    RecordRef,
    RelabelTable,
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


class NIHBoxes(SourceAdapter):
    name = "nih-chestxray14"
    relabel = NIH_RELABEL

    def __init__(
        self,
        root: str | Path,
        bbox_csv: str = "BBox_List_2017.csv",
        data_entry_csv: str | None = "Data_Entry_2017.csv",
    ) -> None:
        super().__init__(root)
        self.bbox_csv = bbox_csv
        self.data_entry_csv = data_entry_csv
        self._files: dict[str, Path] | None = None

    def options(self) -> dict[str, object]:
        return {"bbox_csv": self.bbox_csv, "data_entry_csv": self.data_entry_csv}

    def scan(self) -> list[RecordRef]:
        boxes = read_table(
            self.root / self.bbox_csv, ("Image Index", "Finding Label", "x", "y", "w", "h"), f"{self.name} boxes", _BBOX_RENAME
        )
        entries: dict[str, tuple[str, str]] = {}
        if self.data_entry_csv and (self.root / self.data_entry_csv).is_file():
            table = read_table(self.root / self.data_entry_csv, ("Image Index", "Finding Labels"), f"{self.name} labels")
            views = table["View Position"] if "View Position" in table.columns else [""] * len(table)
            entries = {i.strip(): (f, v.strip()) for i, f, v in zip(table["Image Index"], table["Finding Labels"], views)}
        elif self.data_entry_csv:
            logger.info("%s: no %s; labels come from the boxes only", self.name, self.data_entry_csv)
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
            finding_labels, view = entry
            classes = [c.strip() for c in finding_labels.split("|") if c.strip()] + boxed_classes
            result = NIH_RELABEL.relabel(classes)
            if view:
                metadata["view_position"] = view
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
