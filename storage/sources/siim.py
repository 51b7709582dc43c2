"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019).

Layout:
    <root>/train-rle.csv                       ImageId, EncodedPixels (the header reads "ImageId, EncodedPixels")
    <root>/dicom-images-train/<study>/<series>/<ImageId>.dcm   (1024x1024 DICOM; ImageId is the SOP Instance UID)
The masks CSV is found among `_CSV_CANDIDATES` (each also gzipped), or named with `rle_csv`:
`train-rle.csv` (stage 1), `siim-pneumothorax-train-rle.csv.gz` (torchxrayvision's copy of it, read as
published: 12,954 rows, 12,047 images, 3,576 RLE rows on 2,669 of them) and `stage_2_train.csv`.
"-1" means no pneumothorax; several rows for one image are separate regions and are united. The RLE is
column-major and, in `train-rle.csv` and its torchxrayvision copy, relative (checked on every row, see
`geometry`); the stage-2 file `stage_2_train.csv` is read with absolute 1-based starts (`rle="absolute"`;
our assumption about that release, overridable; a relative file read as absolute quarantines its
records with a message saying so). Only pneumothorax was graded: every other label is NaN. DICOM names
are UIDs, so only their hash is written out.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from aurad_models.vocabulary import pathology_index
from storage.sources.base import SourceAdapter, find_index, index_files, read_table, spacing_metadata
from storage.sources.geometry import decode_rle
from storage.sources.pixels_io import read_dicom
from storage.sources.records import (
    RecordError,
    RecordRef,
    RelabelTable,
    SourceFormatError,
    SourceRecord,
    empty_pathology,
    findings_from,
    sample_id_for,
)

logger = logging.getLogger(__name__)

SIIM_RELABEL = RelabelTable(mapped={"pneumothorax": "pneumothorax"}, exhaustive=True)

# name -> its RLE form; tried in this order, each also as `<name>.gz`
_CSV_CANDIDATES = {
    "train-rle.csv": "relative",
    "siim-pneumothorax-train-rle.csv": "relative",
    "stage_2_train.csv": "absolute",
}


class SIIMPneumothorax(SourceAdapter):
    name = "siim-acr"
    relabel = SIIM_RELABEL

    def __init__(self, root: str | Path, rle_csv: str | None = None, rle: str | None = None) -> None:
        super().__init__(root)
        if rle not in (None, "relative", "absolute"):
            raise ValueError(f"rle must be 'relative' or 'absolute', got {rle!r}")
        if rle_csv is None:
            rle_csv = find_index(self.root, tuple(_CSV_CANDIDATES), f"{self.name} masks")
        self.rle_csv = rle_csv
        self.rle = rle or _CSV_CANDIDATES.get(Path(rle_csv).name.removesuffix(".gz"), "relative")
        self._files: dict[str, Path] | None = None

    def options(self) -> dict[str, object]:
        return {"rle_csv": self.rle_csv, "rle": self.rle}

    def scan(self) -> list[RecordRef]:
        table = read_table(self.root / self.rle_csv, ("ImageId", "EncodedPixels"), f"{self.name} masks")
        grouped: dict[str, list[str]] = defaultdict(list)
        for image_id, encoded in zip(table["ImageId"], table["EncodedPixels"]):
            image_id = image_id.strip()
            if image_id:
                grouped[image_id].append(encoded.strip())
        if not grouped:
            raise SourceFormatError(f"{self.name}: {self.rle_csv} lists no image")
        refs = []
        for image_id in sorted(grouped):
            key = f"{image_id}.dcm"
            refs.append(RecordRef(sample_id_for(self.name, key), key, None, self.display_name(key), grouped[image_id]))
        return refs

    def load(self, ref: RecordRef) -> SourceRecord:
        if self._files is None:
            self._files = index_files(self.root, (".dcm",))
        path = self._files.get(ref.key.lower())
        if path is None:
            raise RecordError(f"{ref.name}: image file listed in the RLE CSV is missing")
        image, metadata, spacing = read_dicom(path, ref.name)
        pathology = empty_pathology(image.shape)
        channel = pathology_index("pneumothorax")
        encodings = ref.annotations
        positives = [e for e in encodings if e != "-1"]
        if any(e == "" for e in encodings):
            raise RecordError(f"{ref.name}: empty EncodedPixels (expected an RLE or -1)")
        for encoded in positives:
            pathology[channel] |= decode_rle(encoded, image.shape, relative=self.rle == "relative")
        flags = []
        if positives and len(positives) != len(encodings):
            flags.append("-1 row next to RLE rows")
        if positives and not pathology[channel].any():
            raise RecordError(f"{ref.name}: RLE decodes to an empty mask")
        labels = SIIM_RELABEL.relabel(["pneumothorax"] if positives else []).labels
        metadata.update(spacing_metadata(spacing))
        metadata["regions"] = str(len(positives))
        return SourceRecord(
            sample_id=ref.sample_id,
            image=image,
            pathology=pathology,
            anatomy=None,
            labels=labels,
            findings=findings_from(labels, pathology, None),
            report=None,
            mask_source="exact",
            metadata=metadata,
            split=ref.split,
            source=ref.display,
            flags=flags,
        )
