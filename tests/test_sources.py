"""Source-dataset adapters on small files in the real formats, made here: DICOM written with pydicom,
the real CSV / JSON / raw layouts, one broken file per adapter that must end up quarantined."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from aurad_models.findings import parse_prompt
from aurad_models.vocabulary import PATHOLOGIES, anatomy_index, pathology_index
from storage import open_dataset
from storage.sources import (
    RecordError,
    RelabelTable,
    SourceFormatError,
    import_source,
    make_adapter,
    prepare_sample,
    sample_id_for,
)
from storage.sources.geometry import box_mask, decode_rle, disc_mask, polygon_mask
from storage.sources.pixels_io import read_dicom

# Distinctive patient / study values: none may appear anywhere in a published version.
PATIENT_NAME = "Zorblatt^Quentina"
PATIENT_ID = "PID-7731-ZX81"
BIRTH_DATE = "19450102"
ACCESSION = "ACC99812Q"
INSTITUTION = "Saint Xylophone Hospital"
STUDY_DATE = "20190304"
PHI = (PATIENT_NAME, "Zorblatt", "Quentina", PATIENT_ID, BIRTH_DATE, ACCESSION, INSTITUTION, STUDY_DATE)

NAN = math.nan


# --- writers for the real formats ----------------------------------------------------------------


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    spacing: tuple[float, float] | None = (0.5, 0.5),
    sop_uid: str | None = None,
) -> Path:
    """A real Part-10 DICOM file (preamble, file meta, explicit VR little endian) with patient data."""
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image, for presentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = "F"
    ds.AccessionNumber = ACCESSION
    ds.InstitutionName = INSTITUTION
    ds.StudyDate = STUDY_DATE
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def ramp(shape: tuple[int, int] = (64, 64), high: int = 4000) -> np.ndarray:
    """A horizontal ramp 0..high: every column a distinct value, easy to check after any mapping."""
    return np.tile(np.linspace(0, high, shape[1]).round().astype(np.uint16), (shape[0], 1))


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_truncated(path: Path, source: Path) -> Path:
    """The first half of a real file: a typical interrupted download."""
    data = source.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def siim_encode(mask: np.ndarray) -> str:
    """The SIIM sample code's encoder: column-major, starts relative to the end of the previous run."""
    flat = mask.T.flatten()
    out, position, i = [], 0, 0
    while i < flat.size:
        if flat[i]:
            start = i
            while i < flat.size and flat[i]:
                i += 1
            out += [start - position, i - start]
            position = i
        else:
            i += 1
    return " ".join(map(str, out))


def version_dir(root: Path, dataset: str, version: str) -> Path:
    return root / dataset / version


def assert_no_phi(root: Path, extra: tuple[str, ...] = ()) -> None:
    """No patient value in any file under the root (raw bytes) nor in the decoded manifests and label
    matrices (compressed columns could hide a string from a byte search)."""
    needles = PHI + extra
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, f"{needle!r} found in {path}"
    for path in list(root.rglob("manifest/*.parquet")) + list(root.rglob("labels.parquet")):
        text = pq.read_table(path).to_pandas().to_json()
        for needle in needles:
            assert needle not in text, f"{needle!r} found in {path}"


# --- DICOM pixel pipeline ------------------------------------------------------------------------


def test_dicom_monochrome2_without_voi_is_min_max(tmp_path):
    pixels = ramp(high=4000)
    image, metadata, spacing = read_dicom(write_dicom(tmp_path / "a.dcm", pixels), "a")
    expected = pixels.astype(np.float64) / 4000
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image.dtype == np.float32
    assert spacing == (0.5, 0.5)
    assert metadata["voi"] == "none" and metadata["PhotometricInterpretation"] == "MONOCHROME2"
    assert set(metadata) <= {"Modality", "ViewPosition", "PhotometricInterpretation", "BitsStored", "voi"}


def test_dicom_monochrome1_is_inverted(tmp_path):
    pixels = ramp(high=4000)
    m2, _, _ = read_dicom(write_dicom(tmp_path / "m2.dcm", pixels), "m2")
    m1, _, _ = read_dicom(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"), "m1")
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[0, 0] == pytest.approx(1.0) and m1[0, -1] == pytest.approx(0.0)  # low stored value = bright


def test_dicom_rescale_then_window(tmp_path):
    pixels = ramp(high=4000)
    slope, intercept, center, width = 2.0, -1000.0, 3000.0, 2001.0
    path = write_dicom(tmp_path / "w.dcm", pixels, rescale=(slope, intercept), window=(center, width))
    image, metadata, _ = read_dicom(path, "w")
    values = pixels * slope + intercept  # modality LUT
    expected = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1 LINEAR
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert metadata["voi"] == "window"
    assert (image == 0).any() and (image == 1).any() and ((image > 0) & (image < 1)).any()


def test_dicom_window_without_rescale_and_monochrome1(tmp_path):
    pixels = ramp(high=4000)
    path = write_dicom(tmp_path / "w1.dcm", pixels, photometric="MONOCHROME1", window=(2000.0, 1001.0))
    image, _, _ = read_dicom(path, "w1")
    expected = 1.0 - np.clip((pixels - 1999.5) / 1000 + 0.5, 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_dicom_is_a_record_error(tmp_path, damage):
    good = write_dicom(tmp_path / "good.dcm", ramp())
    bad = tmp_path / "bad.dcm"
    if damage == "truncated":
        write_truncated(bad, good)
    elif damage == "garbage":
        bad.write_bytes(b"this is not a dicom file" * 20)
    else:
        bad.write_bytes(b"")
    with pytest.raises(RecordError, match="bad"):
        read_dicom(bad, "bad")


def test_constant_dicom_is_a_record_error(tmp_path):
    path = write_dicom(tmp_path / "c.dcm", np.full((8, 8), 7, np.uint16))
    with pytest.raises(RecordError, match="constant"):
        read_dicom(path, "c")


# --- geometry ------------------------------------------------------------------------------------


def test_box_mask_covers_pixel_centres_inside():
    mask, clipped = box_mask((64, 64), 10, 20, 30, 25)
    assert not clipped
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 24, 10, 29)
    mask, clipped = box_mask((64, 64), 50, 50, 80, 70)
    assert clipped and mask.sum() == 14 * 14
    mask, _ = box_mask((64, 64), 5.2, 5.2, 5.4, 5.4)  # thinner than a pixel: the pixel at its centre
    assert mask.sum() == 1 and mask[5, 5] == 1


def test_polygon_mask_is_pixel_exact_and_clips():
    mask, clipped = polygon_mask((64, 64), [[10, 10], [19, 10], [19, 19], [10, 19]])
    assert not clipped
    expected = np.zeros((64, 64), np.uint8)
    expected[10:20, 10:20] = 1
    np.testing.assert_array_equal(mask, expected)
    mask, clipped = polygon_mask((64, 64), [[50, 50], [70, 50], [70, 70], [50, 70]])
    assert clipped
    expected = np.zeros((64, 64), np.uint8)
    expected[50:, 50:] = 1
    np.testing.assert_array_equal(mask, expected)


def test_rle_round_trip_relative_and_absolute():
    mask = np.zeros((16, 12), np.uint8)
    mask[3:7, 2:5] = 1
    mask[10, 9:12] = 1
    np.testing.assert_array_equal(decode_rle(siim_encode(mask), mask.shape, relative=True), mask)
    flat = mask.T.flatten()
    starts = np.flatnonzero(np.diff(np.concatenate([[0], flat])) == 1)
    ends = np.flatnonzero(np.diff(np.concatenate([flat, [0]])) == -1) + 1
    absolute = " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends))
    np.testing.assert_array_equal(decode_rle(absolute, mask.shape, relative=False), mask)
    with pytest.raises(RecordError, match="past the image"):
        decode_rle("150 60", (16, 12))
    with pytest.raises(RecordError, match="odd"):
        decode_rle("1 2 3", (16, 12))


def test_disc_mask():
    mask, clipped = disc_mask((32, 32), 10, 12, 3)
    assert not clipped and mask[12, 10] == 1 and mask[12, 13] == 1 and mask[12, 14] == 0 and mask.sum() == 29


# --- relabelling ---------------------------------------------------------------------------------


def test_relabel_table_one_zero_nan_and_unmapped():
    table = RelabelTable(
        mapped={"Nodule": "nodule", "Effusion": "effusion"},
        uncertain={"Diffuse Nodule": "nodule"},
        unmapped=frozenset({"Fracture"}),
        ignored=frozenset({"No finding"}),
    )
    result = table.relabel(["Effusion", "Fracture", "Diffuse Nodule", "Blorp", "No finding"])
    assert result.labels["effusion"] == 1.0
    assert math.isnan(result.labels["nodule"])  # diffuse nodule: unknown, not absent
    assert math.isnan(result.labels["mass"])  # never looked for
    assert result.unmapped == ("Fracture", "Diffuse Nodule") and result.unknown == ("Blorp",)
    assert table.relabel([]).labels["nodule"] == 0.0  # exhaustive read, covered, not seen
    not_exhaustive = RelabelTable(mapped={"Nodule": "nodule"}, exhaustive=False)
    assert math.isnan(not_exhaustive.relabel([]).labels["nodule"])
    with pytest.raises(KeyError, match="unknown pathology"):
        RelabelTable(mapped={"X": "pneumonia"})


# --- resize --------------------------------------------------------------------------------------


def test_prepare_sample_pads_to_square_then_resizes():
    from storage.sources.records import SourceRecord, findings_from

    image = np.full((64, 32), 0.5, np.float32)  # tall: padded left and right by 16
    pathology = np.zeros((len(PATHOLOGIES), 64, 32), np.uint8)
    pathology[pathology_index("effusion"), 40:48, 8:16] = 1
    labels = {p: (1.0 if p == "effusion" else 0.0) for p in PATHOLOGIES}
    record = SourceRecord(
        sample_id="x", image=image, pathology=pathology, anatomy=None, labels=labels,
        findings=findings_from(labels, pathology, None), report=None, mask_source="box",
        metadata={"source_pixel_spacing_mm": "0.5,0.5"},
    )
    sample = prepare_sample(record, 32, "test")
    assert sample.image.shape == (32, 32) and sample.image.dtype == np.uint16
    assert sample.image[:, :8].max() == 0 and sample.image[:, 24:].max() == 0  # the padding, halved
    assert sample.image[10, 16] == round(0.5 * 65535)
    effusion = sample.pathology[pathology_index("effusion")]
    rows, cols = np.nonzero(effusion)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 23, 12, 15)  # (40..47, 24..31) / 2
    assert sample.row["metadata"]["pixel_spacing_mm"] == "1,1"
    assert sample.row["metadata"]["label.effusion"] == "1" and sample.row["prompt"] == "pleural effusion."


def test_tiny_lesion_lost_in_resize_is_flagged():
    from storage.sources.records import SourceRecord

    pathology = np.zeros((len(PATHOLOGIES), 64, 64), np.uint8)
    pathology[0, 9, 9] = 1  # one pixel, on a row nearest-neighbour skips at 1/4 scale (it samples 2, 6, 10...)
    labels = {p: (1.0 if p == "nodule" else NAN) for p in PATHOLOGIES}
    record = SourceRecord("x", np.zeros((64, 64), np.float32), pathology, None, labels, [], None, "box")
    sample = prepare_sample(record, 16, "test")
    assert sample.pathology[0].sum() == 0
    assert "nodule mask lost in resize" in sample.row["metadata"]["flags"]
    assert sample.row["metadata"]["label.nodule"] == "1"  # the label stays: the annotation said so


# --- VinDr-CXR -----------------------------------------------------------------------------------

VINDR_HEADER = "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"


def make_vindr(root: Path) -> dict[str, str]:
    ids = {"a": "9a5094b2563a1ef3ff50dc5c7ff71345", "b": "051132a778e61a86eb147c7c6f564dfe", "c": "1c32170b4af4ce1a3030eb8167753b06", "d": "47ed17dcb2cbeec15182ed335a8b5a9e"}
    # a: MONOCHROME1 with a window; two readers; a small Nodule/Mass (10 px * 0.5 mm = 5 mm -> nodule),
    # a big one (64 px * 0.5 mm = 32 mm -> mass), an effusion by one reader, an unmapped class.
    write_dicom(root / "train" / f"{ids['a']}.dicom", ramp(), photometric="MONOCHROME1", window=(2000.0, 4001.0), spacing=(0.5, 0.5))
    write_dicom(root / "train" / f"{ids['b']}.dicom", ramp(), spacing=None)
    (root / "train" / f"{ids['c']}.dicom").write_bytes(b"\x00" * 300)  # corrupt
    rows = [
        f"{ids['a']},R8,Nodule/Mass,10,12,20,20",
        f"{ids['a']},R9,Nodule/Mass,11,12,21,21",
        f"{ids['a']},R9,Nodule/Mass,0,30,64,40",
        f"{ids['a']},R8,Pleural effusion,40,44,64,64",
        f"{ids['a']},R9,Aortic enlargement,30,10,40,20",
        f"{ids['a']},R10,No finding,,,,",
        f"{ids['b']},R1,No finding,,,,",
        f"{ids['b']},R2,No finding,,,,",
        f"{ids['c']},R1,Cardiomegaly,20,30,40,50",
        f"{ids['d']},R1,No finding,,,,",  # listed, file missing
    ]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "annotations_train.csv").write_text(VINDR_HEADER + "\n".join(rows) + "\n")
    return ids


def test_vindr_adapter_records(tmp_path):
    ids = make_vindr(tmp_path)
    adapter = make_adapter("vindr-cxr", tmp_path)
    refs = {ref.key.split("/")[-1].split(".")[0]: ref for ref in adapter.scan()}
    assert len(refs) == 4
    a = adapter.load(refs[ids["a"]])
    assert a.mask_source == "box" and a.split == "train"
    assert a.labels["nodule"] == 1.0 and a.labels["mass"] == 1.0 and a.labels["effusion"] == 1.0
    assert a.labels["cardiomegaly"] == 0.0 and a.labels["pneumothorax"] == 0.0
    nodule = a.pathology[pathology_index("nodule")]
    expected = np.zeros((64, 64), np.uint8)
    expected[12:20, 10:20] = 1
    expected[12:21, 11:21] = 1  # the union of both readers' boxes
    np.testing.assert_array_equal(nodule, expected)
    mass = a.pathology[pathology_index("mass")]
    assert mass[30:40, :].all() and mass.sum() == 640
    assert a.pathology[pathology_index("effusion")][44:64, 40:64].all()
    assert a.metadata["unmapped_classes"] == "Aortic enlargement"
    assert a.image[0, 0] > 0.99  # MONOCHROME1: the lowest stored value is white after inversion
    b = adapter.load(refs[ids["b"]])
    assert all(b.labels[p] == 0.0 for p in PATHOLOGIES) and b.pathology.sum() == 0 and b.findings == []
    with pytest.raises(RecordError, match="not a readable DICOM"):
        adapter.load(refs[ids["c"]])
    with pytest.raises(RecordError, match="missing"):
        adapter.load(refs[ids["d"]])


def test_vindr_votes(tmp_path):
    ids = make_vindr(tmp_path)
    adapter = make_adapter("vindr-cxr", tmp_path, min_votes=2)
    ref = next(r for r in adapter.scan() if ids["a"] in r.key)
    a = adapter.load(ref)
    assert a.labels["nodule"] == 1.0  # two readers
    assert math.isnan(a.labels["effusion"]) and math.isnan(a.labels["mass"])  # one reader: disagreement
    assert a.pathology[pathology_index("effusion")].sum() == 0


def test_vindr_import_publishes_and_quarantines(tmp_path):
    ids = make_vindr(tmp_path / "vindr")
    root = tmp_path / "store"
    summary = import_source("vindr-cxr", tmp_path / "vindr", root, "vindr", image_size=64, shard_size=3, progress=False)
    assert summary.imported == 2 and len(summary.quarantined) == 2
    reasons = sorted(reason for _, reason in summary.quarantined)
    assert "not a readable DICOM" in reasons[1] and "missing" in reasons[0]
    assert summary.counts["nodule"] == 1 and summary.counts["mass"] == 1 and summary.counts["effusion"] == 1
    ds = open_dataset(root, "vindr")
    assert len(ds) == 4 and ds.version == summary.version
    table = ds.to_pandas().set_index("sample_id")
    a_id = sample_id_for("vindr-cxr", f"train/{ids['a']}.dicom")
    a_index = list(table.index).index(a_id)
    assert table.loc[a_id, "accepted"] and table.loc[a_id, "mask_source"] == "box"
    assert {f["label"] for f in table.loc[a_id, "findings"]} == {"nodule", "mass", "effusion"}
    np.testing.assert_array_equal(ds.masks[a_index, pathology_index("effusion"), 44:64, 40:64], 1)
    assert ds.masks[a_index, pathology_index("effusion")].sum() == 20 * 24
    quarantine = pd.read_csv(version_dir(root, "vindr", ds.version) / "quality" / "quarantine.csv")
    assert len(quarantine) == 2 and set(quarantine["sample_id"]) == {s for s, _ in summary.quarantined}
    labels = pd.read_parquet(version_dir(root, "vindr", ds.version) / "labels.parquet").set_index("sample_id")
    assert labels.loc[a_id, "nodule"] == 1.0 and labels.loc[a_id, "cardiomegaly"] == 0.0
    assert labels.loc[summary.quarantined[0][0]].isna().all()
    assert len(ds.select()) == 2  # quarantined rows are not accepted
    assert_no_phi(root, extra=tuple(ids.values()))


def test_a_vindr_box_entirely_outside_the_image_is_quarantined_not_a_positive_with_an_empty_mask(tmp_path):
    ids = make_vindr(tmp_path / "vindr")
    csv = tmp_path / "vindr" / "annotations" / "annotations_train.csv"
    csv.write_text(csv.read_text() + f"{ids['b']},R3,Pleural effusion,70,70,90,90\n")  # the image is 64 x 64
    summary = import_source("vindr-cxr", tmp_path / "vindr", tmp_path / "store", "vindr", image_size=64, progress=False)
    reasons = dict(summary.quarantined)
    b_id = sample_id_for("vindr-cxr", f"train/{ids['b']}.dicom")
    assert "entirely outside the 64x64 image" in reasons[b_id] and summary.imported == 1


def test_vindr_missing_column_fails_up_front(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "annotations_train.csv").write_text("image_id,rad_id,class_name,x_min,y_min,x_max\nx,R1,No finding,,,\n")
    with pytest.raises(SourceFormatError, match=r"annotations_train\.csv.*'y_max'"):
        import_source("vindr-cxr", tmp_path, tmp_path / "store", "v", image_size=32, progress=False)
    assert not (tmp_path / "store" / "v").exists()


# --- ChestX-Det -----------------------------------------------------------------------------------


def make_chestx_det(root: Path) -> None:
    gray = (ramp(high=255)).astype(np.uint8)
    for name in ("36204.png", "36205.png", "36206.png"):
        write_png(root / "train" / name, gray)
    write_truncated(root / "train" / "36207.png", root / "train" / "36206.png")
    square = [[10, 10], [19, 10], [19, 19], [10, 19]]
    outside = [[50, 50], [70, 50], [70, 70], [50, 70]]
    entries = [
        {"file_name": "36204.png", "syms": ["Nodule", "Calcification"], "boxes": [[10, 10, 19, 19], [30, 30, 35, 35]],
         "polygons": [square, [[30, 30], [35, 30], [35, 35], [30, 35]]]},
        {"file_name": "36205.png", "syms": ["Effusion", "Diffuse Nodule"], "boxes": [[50, 50, 63, 63], [0, 0, 5, 5]],
         "polygons": [outside, [[0, 0], [5, 0], [5, 5], [0, 5]]]},
        {"file_name": "36206.png", "syms": [], "boxes": [], "polygons": []},
        {"file_name": "36207.png", "syms": [], "boxes": [], "polygons": []},
    ]
    (root / "ChestX_Det_train.json").write_text(json.dumps(entries))


def test_chestx_det_adapter_and_import(tmp_path):
    make_chestx_det(tmp_path / "cxd")
    adapter = make_adapter("chestx-det", tmp_path / "cxd")
    refs = {ref.key: ref for ref in adapter.scan()}
    first = adapter.load(refs["36204.png"])
    expected = np.zeros((64, 64), np.uint8)
    expected[10:20, 10:20] = 1
    np.testing.assert_array_equal(first.pathology[pathology_index("nodule")], expected)
    assert first.labels["nodule"] == 1.0 and first.labels["mass"] == 0.0
    assert first.metadata["unmapped_classes"] == "Calcification" and first.mask_source == "exact"
    second = adapter.load(refs["36205.png"])
    assert math.isnan(second.labels["nodule"]) and second.labels["effusion"] == 1.0
    assert "annotation clipped to the image" in second.flags
    assert second.pathology[pathology_index("effusion")].sum() == 14 * 14

    root = tmp_path / "store"
    summary = import_source("chestx-det", tmp_path / "cxd", root, "cxd", image_size=64, progress=False)
    assert summary.imported == 3 and len(summary.quarantined) == 1
    assert "not a readable image" in summary.quarantined[0][1]
    assert summary.flags == {"annotation clipped to the image": 1}
    ds = open_dataset(root, "cxd")
    row = ds.to_pandas().set_index("sample_id").loc[sample_id_for("chestx-det", "36204.png")]
    assert row["prompt"] == "nodule." and pd.isna(row["source"])  # NIH-derived names are never written
    assert "36204" not in json.dumps(ds.to_pandas().astype(str).to_dict())


# --- SIIM-ACR -----------------------------------------------------------------------------------


def make_siim(root: Path) -> tuple[dict[str, str], np.ndarray]:
    uids = {k: generate_uid() for k in ("pos", "neg", "bad", "missing")}
    pixels = ramp(high=255).astype(np.uint16)
    for key in ("pos", "neg", "bad"):
        write_dicom(
            root / "dicom-images-train" / generate_uid() / generate_uid() / f"{uids[key]}.dcm",
            pixels, bits_stored=8, spacing=(0.168, 0.168), sop_uid=uids[key],
        )
    region1 = np.zeros((64, 64), np.uint8)
    region1[5:20, 40:50] = 1
    region2 = np.zeros((64, 64), np.uint8)
    region2[30:35, 45:60] = 1
    rows = [
        f"{uids['pos']}, {siim_encode(region1)}",
        f"{uids['pos']}, {siim_encode(region2)}",
        f"{uids['neg']}, -1",
        f"{uids['bad']}, 4000 200",  # runs past 64 x 64
        f"{uids['missing']}, -1",
    ]
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n" + "\n".join(rows) + "\n")
    return uids, region1 | region2


def test_siim_import(tmp_path):
    uids, expected = make_siim(tmp_path / "siim")
    root = tmp_path / "store"
    summary = import_source("siim-acr", tmp_path / "siim", root, "siim", image_size=64, progress=False)
    assert summary.imported == 2 and len(summary.quarantined) == 2
    assert sorted(r.split(":")[0].split(" (")[0] for _, r in summary.quarantined) == [
        "RLE runs past the image", "image file listed in the RLE CSV is missing"
    ]
    assert summary.counts["pneumothorax"] == 1 and summary.counts["nodule"] == 0
    ds = open_dataset(root, "siim")
    table = ds.to_pandas()
    pos = table.index[table["sample_id"] == sample_id_for("siim-acr", f"{uids['pos']}.dcm")][0]
    np.testing.assert_array_equal(ds.masks[pos, pathology_index("pneumothorax")], expected)
    assert ds.masks[pos].sum() == expected.sum()
    labels = pd.read_parquet(version_dir(root, "siim", ds.version) / "labels.parquet")
    assert labels.loc[pos, "pneumothorax"] == 1.0 and math.isnan(labels.loc[pos, "nodule"])
    neg = table.index[table["sample_id"] == sample_id_for("siim-acr", f"{uids['neg']}.dcm")][0]
    assert labels.loc[neg, "pneumothorax"] == 0.0
    assert table.loc[neg, "prompt"] == "no pneumothorax."  # not "normal": the other labels are unknown
    assert parse_prompt(table.loc[neg, "prompt"]) == ()
    assert dict(table.loc[pos, "metadata"])["pixel_spacing_mm"] == "0.168,0.168"
    assert_no_phi(root, extra=tuple(uids.values()))


def test_siim_missing_column(tmp_path):
    (tmp_path / "train-rle.csv").write_text("ImageId,Pixels\nx,-1\n")
    with pytest.raises(SourceFormatError, match="'EncodedPixels'"):
        make_adapter("siim-acr", tmp_path).scan()


# --- JSRT / SCR -----------------------------------------------------------------------------------

JSRT_SIZE = 64


def jsrt_raw(lung: int = 3500, heart: int = 1000, background: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Raw 12-bit JSRT-like pixels (transmitted light: lungs high) and SCR-like masks at half size."""
    half = JSRT_SIZE // 2
    masks = {s: np.zeros((half, half), np.uint8) for s in ("left lung", "right lung", "heart", "left clavicle", "right clavicle")}
    masks["right lung"][4:28, 3:14] = 255  # patient's right: image left
    masks["left lung"][4:28, 18:29] = 255  # patient's left: image right
    masks["heart"][18:28, 12:20] = 255
    masks["heart"][18:28, 12:20] &= ~(masks["left lung"][18:28, 12:20] | masks["right lung"][18:28, 12:20])
    masks["right clavicle"][3:5, 4:14] = 255
    masks["left clavicle"][3:5, 18:28] = 255
    raw = np.full((JSRT_SIZE, JSRT_SIZE), background, np.uint16)
    up = {s: np.repeat(np.repeat(m > 0, 2, 0), 2, 1) for s, m in masks.items()}
    raw[up["right lung"] | up["left lung"]] = lung
    raw[up["heart"]] = heart
    return raw, masks


def make_jsrt(root: Path) -> None:
    raw, masks = jsrt_raw()
    images = root / "All247images"
    images.mkdir(parents=True)
    for case in ("JPCLN001", "JPCNN001", "JPCLN003"):
        raw.astype(">u2").tofile(images / f"{case}.IMG")
    (images / "JPCLN002.IMG").write_bytes(raw.astype(">u2").tobytes()[:1000])  # truncated
    for case in ("JPCLN001", "JPCNN001", "JPCLN002", "JPCLN003"):
        for structure, mask in masks.items():
            write_png((root / "scratch" / "fold1" / "masks" / structure / f"{case}.gif"), mask)
    # Real CLNDAT_EN.TXT lines: name, subtlety, size (mm), age, sex, x, y, diagnosis, ... (tab separated).
    # JPCLN003 is missing from the list; age / sex must never be copied.
    (root / "CLNDAT_EN.TXT").write_text(
        "JPCLN001.IMG\t3\t15\t87\tmale\t46\t20\tmalignant\tlung cancer\tl.upper lobe\n"
        "JPCLN002.IMG\t2\t20\t61\tfemale\t20\t30\tbenign\thamartoma\tr.lower lobe\n",
        encoding="latin-1",
    )


def test_jsrt_reader_polarity_anatomy_and_nodule(tmp_path):
    make_jsrt(tmp_path)
    adapter = make_adapter("jsrt", tmp_path, raw_size=JSRT_SIZE, pixel_spacing_mm=1.5)
    refs = {ref.display: ref for ref in adapter.scan()}
    assert set(refs) == {"JPCLN001.IMG", "JPCLN002.IMG", "JPCLN003.IMG", "JPCNN001.IMG"}
    record = adapter.load(refs["JPCLN001.IMG"])
    assert record.image[20, 46] == pytest.approx(1 - 3500 / 4095)  # lung: dark in MONOCHROME2
    assert record.image[40, 32] == pytest.approx(1 - 1000 / 4095)  # heart: bright
    assert record.metadata["polarity_check"] == "ok" and record.metadata["laterality_check"] == "ok"
    left = record.anatomy[anatomy_index("Left Lung")]
    assert left[8:56, 36:58].all() and left.sum() == 48 * 22  # SCR 2x upsampled, patient's left on image right
    nodule = record.pathology[pathology_index("nodule")]
    assert nodule[20, 46] == 1 and nodule[20, 51] == 1 and nodule[20, 52] == 0  # radius 15 / 2 / 1.5 = 5 px
    assert record.labels["nodule"] == 1.0 and record.labels["mass"] == 0.0 and math.isnan(record.labels["effusion"])
    assert [f.as_record() for f in record.findings] == [{"label": "nodule", "side": "left", "zone": "upper", "size": None}]
    assert "87" not in json.dumps(record.metadata) and "male" not in json.dumps(record.metadata)
    normal = adapter.load(refs["JPCNN001.IMG"])
    assert normal.labels["nodule"] == 0.0 and normal.pathology.sum() == 0
    with pytest.raises(RecordError, match="expected"):
        adapter.load(refs["JPCLN002.IMG"])
    with pytest.raises(RecordError, match="missing from the clinical list"):
        adapter.load(refs["JPCLN003.IMG"])
    wrong = make_adapter("jsrt", tmp_path, raw_size=JSRT_SIZE, pixel_spacing_mm=1.5, invert=False)
    assert wrong.load(refs["JPCNN001.IMG"]).metadata["polarity_check"] == "suspect"


def test_jsrt_import(tmp_path):
    make_jsrt(tmp_path / "jsrt")
    root = tmp_path / "store"
    summary = import_source(
        "jsrt", tmp_path / "jsrt", root, "jsrt", image_size=32, progress=False,
        options={"raw_size": JSRT_SIZE, "pixel_spacing_mm": 1.5}, split="train",
    )
    assert summary.imported == 2 and len(summary.quarantined) == 2 and summary.splits == {"train": 2}
    ds = open_dataset(root, "jsrt")
    table = ds.to_pandas().set_index("source")
    assert table.loc["JPCLN001.IMG", "prompt"] == "nodule in the left upper zone."
    i = list(table.index).index("JPCLN001.IMG")
    assert ds.anatomy[i, anatomy_index("Left Lung")].sum() == 24 * 11  # 1/2 of 48 x 22
    quarantine = pd.read_csv(version_dir(root, "jsrt", ds.version) / "quality" / "quarantine.csv")
    assert sorted(quarantine["source"]) == ["JPCLN002.IMG", "JPCLN003.IMG"]  # JSRT case numbers are safe names
    assert_no_phi(root, extra=("hamartoma",))


def test_jsrt_without_clinical_list_fails_up_front(tmp_path):
    make_jsrt(tmp_path)
    (tmp_path / "CLNDAT_EN.TXT").unlink()
    with pytest.raises(SourceFormatError, match="CLNDAT_EN.TXT"):
        make_adapter("jsrt", tmp_path, raw_size=JSRT_SIZE).scan()


# --- NIH ChestX-ray14 boxes -----------------------------------------------------------------------


def make_nih(root: Path, with_entries: bool = True) -> None:
    gray = ramp(high=255).astype(np.uint8)
    write_png(root / "images_001" / "images" / "00048213_000.png", gray)
    write_png(root / "images_001" / "images" / "00048213_001.png", np.stack([gray] * 4, -1))  # RGBA, as NIH has
    (root / "images_001" / "images" / "00048214_000.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00048213_000.png,Nodule,10.5,20.25,8,6,,,\n"
        "00048213_000.png,Infiltrate,30,30,10,10,,,\n"
        "00048213_001.png,Effusion,40,40,24,30\n"
        "00048214_000.png,Mass,1,1,5,5\n"
    )
    if with_entries:
        (root / "Data_Entry_2017.csv").write_text(
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
            "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
            "00048213_000.png,Nodule|Infiltration|Cardiomegaly,0,48213,077,M,PA,2500,2048,0.143,0.143\n"
            "00048213_001.png,Effusion,1,48213,077,M,AP,2500,2048,0.143,0.143\n"
            "00048214_000.png,Mass,0,48214,051,F,PA,2500,2048,0.143,0.143\n"
        )


def test_nih_import(tmp_path):
    make_nih(tmp_path / "nih")
    root = tmp_path / "store"
    summary = import_source("nih-chestxray14", tmp_path / "nih", root, "nih", image_size=64, progress=False)
    assert summary.imported == 2 and len(summary.quarantined) == 1
    assert summary.counts == {"nodule": 1, "mass": 0, "consolidation": 0, "effusion": 1, "pneumothorax": 0, "cardiomegaly": 1, "atelectasis": 0}
    ds = open_dataset(root, "nih")
    table = ds.to_pandas()
    first = table.index[table["sample_id"] == sample_id_for("nih-chestxray14", "00048213_000.png")][0]
    nodule = ds.masks[first, pathology_index("nodule")]
    rows, cols = np.nonzero(nodule)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 25, 10, 17)  # x 10.5..18.5, y 20.25..26.25
    metadata = dict(table.loc[first, "metadata"])
    assert metadata["unboxed_labels"] == "cardiomegaly" and metadata["unmapped_classes"] == "Infiltrate;Infiltration"
    assert metadata["view_position"] == "PA" and ds.masks[first, pathology_index("cardiomegaly")].sum() == 0
    assert_no_phi(root, extra=("00048213", "00048214", "077Y", "48213"))


def test_nih_boxes_only_labels_are_unknown_elsewhere(tmp_path):
    make_nih(tmp_path, with_entries=False)
    adapter = make_adapter("nih-chestxray14", tmp_path)
    ref = next(r for r in adapter.scan() if r.key == "00048213_001.png")
    record = adapter.load(ref)
    assert record.labels["effusion"] == 1.0 and math.isnan(record.labels["nodule"])
    assert record.pathology[pathology_index("effusion")][40:64, 40:64].all()  # clipped at the border
    assert "box clipped to the image" in record.flags


def test_nih_header_with_missing_bbox_column(tmp_path):
    (tmp_path / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w\nx.png,Mass,1,2,3\n")
    with pytest.raises(SourceFormatError, match=r"BBox_List_2017\.csv lacks required column\(s\) 'h'"):
        make_adapter("nih-chestxray14", tmp_path).scan()


# --- generic folder -----------------------------------------------------------------------------


def make_generic(root: Path) -> None:
    image16 = (ramp(high=60000)).astype(np.uint16)
    write_png(root / "img" / "p001.png", image16)
    write_png(root / "img" / "p002.png", (ramp(high=255)).astype(np.uint8))
    write_dicom(root / "img" / "p003.dcm", ramp(), photometric="MONOCHROME1")
    write_png(root / "img" / "p004.png", (ramp(high=255)).astype(np.uint8))
    nodule = np.zeros((64, 64), np.uint8)
    nodule[5:9, 40:44] = 255
    empty = np.zeros((64, 64), np.uint8)
    write_png(root / "masks" / "p001_nodule.png", nodule)
    write_png(root / "masks" / "p001_effusion.png", empty)
    labelmap = np.zeros((64, 64), np.uint8)
    labelmap[50:60, 10:20] = 4  # effusion (1-based vocabulary order)
    labelmap[30:32, 30:34] = 5  # pneumothorax
    write_png(root / "masks" / "p003_labels.png", labelmap)
    write_png(root / "masks" / "p004_nodule.png", np.zeros((32, 32), np.uint8))  # wrong size
    lung = np.zeros((64, 64), np.uint8)
    lung[:, 32:] = 255
    write_png(root / "masks" / "p001_left_lung.png", lung)
    pd.DataFrame(
        [
            {"image": "img/p001.png", "mask_nodule": "masks/p001_nodule.png", "mask_effusion": "masks/p001_effusion.png",
             "mask": "", "anatomy_Left Lung": "masks/p001_left_lung.png", "labels": "", "report": "", "split": "train"},
            {"image": "img/p002.png", "mask_nodule": "", "mask_effusion": "", "mask": "", "anatomy_Left Lung": "",
             "labels": "cardiomegaly|Zebra", "report": "Enlarged heart.", "split": "test"},
            {"image": "img/p003.dcm", "mask_nodule": "", "mask_effusion": "", "mask": "masks/p003_labels.png",
             "anatomy_Left Lung": "", "labels": "", "report": "", "split": "train"},
            {"image": "img/p004.png", "mask_nodule": "masks/p004_nodule.png", "mask_effusion": "", "mask": "",
             "anatomy_Left Lung": "", "labels": "", "report": "", "split": "train"},
            {"image": "img/p005.png", "mask_nodule": "", "mask_effusion": "", "mask": "", "anatomy_Left Lung": "",
             "labels": "", "report": "", "split": "train"},  # file missing
        ]
    ).to_csv(root / "index.csv", index=False)


def test_generic_import(tmp_path):
    make_generic(tmp_path / "g")
    root = tmp_path / "store"
    summary = import_source("generic", tmp_path / "g", root, "g", image_size=64, shard_size=2, progress=False)
    assert summary.imported == 3 and len(summary.quarantined) == 2
    reasons = " | ".join(r for _, r in summary.quarantined)
    assert "nodule mask size 32x32 disagrees with the image 64x64" in reasons and "file is missing" in reasons
    assert summary.flags == {"unknown class 'Zebra'": 1}
    assert summary.splits == {"test": 1, "train": 2}
    ds = open_dataset(root, "g")
    table = ds.to_pandas().set_index("sample_id")
    ids = list(table.index)
    p1, p2, p3 = (ids.index(sample_id_for("generic", f"img/p00{i}.{'dcm' if i == 3 else 'png'}")) for i in (1, 2, 3))
    assert ds.masks[p1, pathology_index("nodule"), 5:9, 40:44].all() and ds.masks[p1].sum() == 16
    assert ds.images[p1][0, -1] == round(60000 / 65535 * 65535)  # 16-bit PNG scaled by its bit depth
    assert ds.anatomy[p1, anatomy_index("Left Lung")].sum() == 64 * 32
    row1 = table.iloc[p1]
    assert [f["side"] for f in row1["findings"]] == ["left"]  # the nodule lies in the user's left lung mask
    labels = pd.read_parquet(version_dir(root, "g", ds.version) / "labels.parquet").set_index("sample_id")
    one = labels.iloc[p1]
    assert one["nodule"] == 1.0 and one["effusion"] == 0.0 and math.isnan(one["mass"])
    two = labels.iloc[p2]
    assert two["cardiomegaly"] == 1.0 and two["nodule"] == 0.0  # a labels column is a complete list
    assert table.iloc[p2]["prompt"] == "Enlarged heart." and table.iloc[p2]["mask_source"] == "none"
    assert ds.masks[p3, pathology_index("effusion"), 50:60, 10:20].all()
    assert ds.masks[p3, pathology_index("pneumothorax")].sum() == 8
    assert ds.images[p3][0, 0] == 65535  # DICOM MONOCHROME1 inverted: lowest stored value is white
    assert_no_phi(root, extra=("p001", "p003"))


def test_generic_missing_image_column(tmp_path):
    (tmp_path / "index.csv").write_text("picture,mask\na.png,\n")
    with pytest.raises(SourceFormatError, match=r"index\.csv lacks required column\(s\) 'image'"):
        import_source("generic", tmp_path, tmp_path / "store", "g", image_size=32, progress=False)


def test_unknown_adapter_and_option():
    with pytest.raises(KeyError, match="known: vindr-cxr"):
        make_adapter("mimic", ".")
    with pytest.raises(ValueError, match="adapter 'jsrt' has no option 'colour'; its options: "):
        make_adapter("jsrt", ".", colour=True)


def test_aurad_import_sets_adapter_options_split_and_shard_size_from_the_cli(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    make_generic(tmp_path / "g")
    store = tmp_path / "store"
    runner = CliRunner()
    bad = runner.invoke(app, ["import", "generic", str(tmp_path / "g"), "-d", "g", "-r", str(store), "-o", "kep_names=true"])
    assert bad.exit_code == 1 and "no option 'kep_names'" in bad.stderr and "keep_names" in bad.stderr
    done = runner.invoke(app, ["import", "generic", str(tmp_path / "g"), "-d", "g", "-r", str(store), "--image-size", "64",
                               "--shard-size", "2", "--split", "val", "-o", "keep_names=true"])
    assert done.exit_code == 0, done.output
    ds = open_dataset(store, "g")
    assert ds.lineage["n_shards"] == 3 and set(ds.to_pandas()["split"]) == {"val"}
    assert "img/p001.png" in set(ds.to_pandas()["source"].dropna())  # keep_names: the user's own file names


# --- resume --------------------------------------------------------------------------------------


def test_interrupted_import_resumes_without_redoing_shards(tmp_path, monkeypatch):
    from storage.sources.generic import GenericFolder

    make_generic(tmp_path / "g")
    root = tmp_path / "store"
    original = GenericFolder.load
    loaded: list[str] = []

    def crash_on_fifth(self, ref):
        loaded.append(ref.key)
        if len(loaded) == 5:
            raise RuntimeError("worker died")
        return original(self, ref)

    monkeypatch.setattr(GenericFolder, "load", crash_on_fifth)
    with pytest.raises(RuntimeError, match="worker died"):
        import_source("generic", tmp_path / "g", root, "g", image_size=32, shard_size=2, progress=False)
    assert loaded == ["img/p001.png", "img/p002.png", "img/p003.dcm", "img/p004.png", "img/p005.png"]
    loaded.clear()
    monkeypatch.setattr(GenericFolder, "load", lambda self, ref: (loaded.append(ref.key), original(self, ref))[1])
    summary = import_source("generic", tmp_path / "g", root, "g", image_size=32, shard_size=2, progress=False)
    assert loaded == ["img/p005.png"]  # shards 0 and 1 were finished
    assert summary.imported == 3 and len(summary.quarantined) == 2  # p004's quarantine came from the first run
    assert len(open_dataset(root, "g")) == 5


# --- more bad input ------------------------------------------------------------------------------


def test_phi_check_is_not_vacuous(tmp_path):
    write_dicom(tmp_path / "x.dcm", ramp())
    with pytest.raises(AssertionError, match="found in"):
        assert_no_phi(tmp_path)


def test_jsrt_scr_mask_of_another_size_is_quarantined(tmp_path):
    make_jsrt(tmp_path)
    write_png(tmp_path / "scratch" / "fold1" / "masks" / "heart" / "JPCNN001.gif", np.zeros((20, 20), np.uint8))
    adapter = make_adapter("jsrt", tmp_path, raw_size=JSRT_SIZE, pixel_spacing_mm=1.5)
    ref = next(r for r in adapter.scan() if r.display == "JPCNN001.IMG")
    with pytest.raises(RecordError, match=r"heart mask size \(20, 20\) disagrees"):
        adapter.load(ref)


def test_generic_import_scrubs_identifiers_keeps_paths_inside_and_records_no_absolute_folder(tmp_path):
    make_generic(tmp_path / "g")
    (tmp_path / "outside.png").write_bytes((tmp_path / "g" / "img" / "p002.png").read_bytes())
    index = pd.read_csv(tmp_path / "g" / "index.csv", keep_default_na=False)
    index.loc[1, "report"] = "SMITH^JANE^Q, born 03/01/1950, MRN: 88812345, seen on March 4, 2021. Enlarged heart."
    index.loc[3, "image"] = "../outside.png"  # a path that leaves the dataset folder
    index.to_csv(tmp_path / "g" / "index.csv", index=False)
    summary = import_source("generic", tmp_path / "g", tmp_path / "store", "g", image_size=64, shard_size=2, progress=False)
    assert any("leaves the dataset folder" in reason for _, reason in summary.quarantined)
    table = open_dataset(tmp_path / "store", "g").to_pandas()
    prompts = " ".join(table["prompt"])
    assert "Enlarged heart." in prompts
    assert_no_phi(tmp_path / "store", extra=("SMITH", "JANE", "1950", "88812345", "March 4", str(tmp_path)))


def test_one_malformed_chestx_det_polygon_is_quarantined_and_the_rest_imports(tmp_path):
    make_chestx_det(tmp_path / "cxd")
    for name in ("36208.png", "36209.png", "36210.png"):
        write_png(tmp_path / "cxd" / "train" / name, ramp(high=255).astype(np.uint8))
    entries = json.loads((tmp_path / "cxd" / "ChestX_Det_train.json").read_text())
    entries += [
        {"file_name": "36208.png", "syms": ["Nodule"], "boxes": [[1, 1, 5, 5]], "polygons": [[[1, 1], [5], [5, 5]]]},  # ragged
        {"file_name": "36209.png", "syms": ["Mass"], "boxes": [[1, 1, 5, 5]], "polygons": [[["a", "b"], [5, 1], [5, 5]]]},
        {"file_name": "36210.png", "syms": ["Mass"], "boxes": [[1, 1, 5, 5]], "polygons": [{"x": 1}]},  # not a list of points
    ]
    (tmp_path / "cxd" / "ChestX_Det_train.json").write_text(json.dumps(entries))
    summary = import_source("chestx-det", tmp_path / "cxd", tmp_path / "store", "cxd", image_size=64, progress=False)
    assert summary.imported == 3  # the good records of make_chestx_det
    reasons = dict(summary.quarantined)
    assert len(reasons) == 4 and sum("polygon" in r or "malformed" in r for r in reasons.values()) == 3, reasons


def test_chestx_det_entry_without_file_name_fails_up_front(tmp_path):
    (tmp_path / "ChestX_Det_train.json").write_text(json.dumps([{"syms": [], "polygons": []}]))
    with pytest.raises(SourceFormatError, match="'file_name'"):
        make_adapter("chestx-det", tmp_path).scan()


def test_version_records_the_import(tmp_path):
    make_siim(tmp_path / "siim")
    summary = import_source("siim-acr", tmp_path / "siim", tmp_path / "store", "siim", image_size=32, progress=False)
    lineage = open_dataset(tmp_path / "store", "siim").lineage
    assert lineage["kind"] == "source-import" and lineage["source"]["adapter"] == "siim-acr"
    assert lineage["source"]["options"] == {"rle_csv": "train-rle.csv", "rle": "relative"}
    assert lineage["import_summary"]["imported"] == summary.imported == 2
    with pytest.raises(Exception, match="already published"):  # same inputs, same build: say so, do not duplicate
        import_source("siim-acr", tmp_path / "siim", tmp_path / "store", "siim", image_size=32, progress=False)


def test_dicom_voi_lut_sequence(tmp_path):
    from pydicom.dataset import Dataset

    path = write_dicom(tmp_path / "lut.dcm", ramp(high=4000))
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]  # entries, first mapped value, bits per entry
    item.add_new(0x00283006, "US", [v // 16 for v in range(4096)])  # LUT Data
    ds.VOILUTSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    image, metadata, _ = read_dicom(path, "lut")
    assert metadata["voi"] == "lut"
    np.testing.assert_allclose(image, (ramp(high=4000) // 16) / 255, atol=1e-6)
