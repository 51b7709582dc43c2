"""Reading source pixels onto our contract: float32 in [0, 1], MONOCHROME2 (brighter = more attenuation).

DICOM, in the order the standard's grayscale pipeline applies them (PS3.3 C.11, PS3.4 N.2):
1. Modality LUT: Modality LUT Sequence or Rescale Slope / Intercept (pydicom's `apply_modality_lut`).
2. VOI: Window Center / Width when present (LINEAR, LINEAR_EXACT or SIGMOID, first window when several),
   else the first VOI LUT Sequence item (a table lookup, done here: pydicom 3.0.2's `apply_voi` indexes
   8-bit LUTs with a uint8 array and wraps inputs above 255), scaled onto [0, 1] by the window / LUT
   output range.
   Without either, the image's own min..max after step 1 maps onto [0, 1] (what reading software does
   with no presentation hint).
3. MONOCHROME1 (minimum value displayed white) is inverted, so the output is always MONOCHROME2.

Only `SAFE_DICOM_FIELDS` (acquisition geometry and presentation) leave this module. Patient, study,
institution, date and UID fields are never read into our records.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from storage.sources.records import RecordError

logger = logging.getLogger(__name__)

# The only DICOM attributes copied into metadata: none identifies a patient, a study or a site.
SAFE_DICOM_FIELDS = ("Modality", "ViewPosition", "PhotometricInterpretation", "BitsStored")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def read_dicom(path: Path, name: str) -> tuple[np.ndarray, dict[str, str], tuple[float, float] | None]:
    """A DICOM radiograph -> (image in [0, 1] MONOCHROME2, safe metadata, pixel spacing (row, col) in mm).

    `name` is how errors refer to the file (file names may carry UIDs, so the path is never quoted).
    Any failure to parse or decode becomes a `RecordError`: source files are untrusted input.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # noqa: BLE001 - a broken file makes the parser raise anything; it is untrusted input
        raise RecordError(f"{name}: not a readable DICOM file ({type(error).__name__})") from None
    if "PixelData" not in ds:
        raise RecordError(f"{name}: DICOM file has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise RecordError(f"{name}: not a grayscale radiograph (PhotometricInterpretation {photometric!r})")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise RecordError(f"{name}: multi-frame DICOM is not a single radiograph")
    try:
        raw = ds.pixel_array
    except Exception as error:  # noqa: BLE001 - decoders raise anything on corrupt or unsupported data
        message = str(error).replace(str(path), "<file>")[:200]
        raise RecordError(f"{name}: DICOM pixel data cannot be decoded ({type(error).__name__}: {message})") from None
    if raw.ndim != 2:
        raise RecordError(f"{name}: expected a 2-D grayscale image, got pixel array of shape {raw.shape}")

    try:
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            image = _window(values, ds, name)
            voi = "window"
        elif ds.get("VOILUTSequence"):
            image = _voi_lut(values, ds.VOILUTSequence[0], name)
            voi = "lut"
        else:
            image = _min_max(values, name)
            voi = "none"
    except RecordError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as error:
        raise RecordError(f"{name}: invalid Modality / VOI LUT attributes ({type(error).__name__})") from None
    if photometric == "MONOCHROME1":
        image = 1.0 - image

    metadata = {key: str(ds.get(key)) for key in SAFE_DICOM_FIELDS if ds.get(key) not in (None, "")}
    metadata["voi"] = voi
    spacing = _pixel_spacing(ds)
    return np.clip(image, 0.0, 1.0).astype(np.float32), metadata, spacing


def _window(values: np.ndarray, ds, name: str) -> np.ndarray:
    """VOI windowing straight onto [0, 1] (PS3.3 C.11.2.1.2)."""
    def first(value) -> float:  # several windows (VM > 1): the first is the default view
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            return float(value)
        return float(list(value)[0])

    try:
        center = first(ds.WindowCenter)
        width = first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        raise RecordError(f"{name}: unreadable Window Center / Width") from None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function == "SIGMOID":
        if width <= 0:
            raise RecordError(f"{name}: Window Width must be > 0, got {width}")
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise RecordError(f"{name}: Window Width must be > 0, got {width}")
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if function != "LINEAR":
        raise RecordError(f"{name}: unknown VOI LUT Function {function!r}")
    if width < 1:
        raise RecordError(f"{name}: Window Width must be >= 1 for LINEAR windowing, got {width}")
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _voi_lut(values: np.ndarray, item, name: str) -> np.ndarray:
    """A VOI LUT table (PS3.3 C.11.2.1.1) onto [0, 1]: inputs below the first mapped value take the first
    entry, inputs past the table the last."""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 2**16
    if bits != 8 and not 10 <= bits <= 16:
        raise RecordError(f"{name}: VOI LUT with {bits} bits per entry is not allowed")
    data = item.LUTData
    table = np.frombuffer(data, dtype="<u2") if isinstance(data, bytes) else np.asarray(data, dtype=np.int64)
    if table.size < entries:
        raise RecordError(f"{name}: VOI LUT has {table.size} entries, its descriptor says {entries}")
    index = np.clip(np.round(values).astype(np.int64) - first, 0, entries - 1)
    return table[:entries].astype(np.float64)[index] / (2**bits - 1)


def _min_max(values: np.ndarray, name: str) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if not high > low:
        raise RecordError(f"{name}: image is constant (value {low}); nothing to import")
    return (values - low) / (high - low)


def _pixel_spacing(ds) -> tuple[float, float] | None:
    """Pixel Spacing, else Imager Pixel Spacing (row, column) in mm; None when absent or unreadable."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None:
            try:
                row, col = (float(v) for v in value)
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return row, col
    return None


def read_bitmap(path: Path, name: str, invert: bool = False) -> tuple[np.ndarray, dict[str, str]]:
    """A PNG / JPEG / TIFF radiograph -> image in [0, 1], scaled by its bit depth (8 or 16 bits).

    Bitmaps are taken as displayed (MONOCHROME2); `invert` for a source stored the other way. An RGB(A)
    file whose channels agree (NIH has some) is read as gray; a truly coloured image is an error.
    """
    try:
        with Image.open(path) as opened:
            opened.load()
            bitmap = opened.copy()
    except Exception as error:  # noqa: BLE001 - decoders raise anything on broken files (zlib, struct, OSError)
        raise RecordError(f"{name}: not a readable image ({type(error).__name__})") from None
    metadata = {"source_mode": bitmap.mode}
    if bitmap.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(bitmap, dtype=np.float64)
        maximum = 65535.0
    elif bitmap.mode in ("L", "P", "1", "LA"):
        array = np.asarray(bitmap.convert("L"), dtype=np.float64)
        maximum = 255.0
    elif bitmap.mode in ("RGB", "RGBA"):
        rgb = np.asarray(bitmap.convert("RGB"), dtype=np.float64)
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise RecordError(f"{name}: colour image; a radiograph must be grayscale")
        array = rgb[..., 0]
        maximum = 255.0
    elif bitmap.mode == "F":
        array = np.asarray(bitmap, dtype=np.float64)
        if array.min() < 0 or array.max() > 1:
            raise RecordError(f"{name}: float image outside [0, 1]")
        maximum = 1.0
    else:
        raise RecordError(f"{name}: unsupported image mode {bitmap.mode!r}")
    image = np.clip(array / maximum, 0.0, 1.0)
    if invert:
        image = 1.0 - image
    return image.astype(np.float32), metadata


def read_any_image(
    path: Path, name: str, invert: bool = False
) -> tuple[np.ndarray, dict[str, str], tuple[float, float] | None]:
    """DICOM by suffix (or by its DICM preamble), a bitmap otherwise."""
    if not path.is_file():
        raise RecordError(f"{name}: file is missing")
    if path.suffix.lower() in DICOM_SUFFIXES or _has_dicom_preamble(path):
        image, metadata, spacing = read_dicom(path, name)
        if invert:
            image = 1.0 - image
        return image, metadata, spacing
    image, metadata = read_bitmap(path, name, invert=invert)
    return image, metadata, None


def _has_dicom_preamble(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def read_mask_bitmap(path: Path, name: str) -> np.ndarray:
    """A binary mask file (PNG / GIF) -> (H, W) uint8 0/1 (any non-zero pixel is inside)."""
    if not path.is_file():
        raise RecordError(f"{name}: mask file is missing")
    try:
        with Image.open(path) as opened:
            opened.load()
            array = np.asarray(opened.convert("L") if opened.mode in ("P", "RGB", "RGBA", "LA", "1") else opened)
    except Exception as error:  # noqa: BLE001 - see read_bitmap
        raise RecordError(f"{name}: not a readable mask image ({type(error).__name__})") from None
    if array.ndim != 2:
        raise RecordError(f"{name}: mask must be a single-channel image, got shape {array.shape}")
    return (array > 0).astype(np.uint8)


def read_label_map(path: Path, name: str) -> np.ndarray:
    """An integer label-map image -> (H, W) int array of its values."""
    if not path.is_file():
        raise RecordError(f"{name}: mask file is missing")
    try:
        with Image.open(path) as opened:
            opened.load()
            array = np.asarray(opened)
    except Exception as error:  # noqa: BLE001 - see read_bitmap
        raise RecordError(f"{name}: not a readable label map ({type(error).__name__})") from None
    if array.ndim != 2:
        raise RecordError(f"{name}: a label map must be a single-channel image, got shape {array.shape}")
    return array.astype(np.int64)
