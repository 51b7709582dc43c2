"""JSRT (247 PA chest radiographs, 154 with a lung nodule) with SCR anatomy masks.

Layout (as the two downloads unpack; every file is found by name anywhere under <root>):
    JPCLN001.IMG .. JPCLN154.IMG (nodule), JPCNN001.IMG .. JPCNN093.IMG (no nodule)
        raw pixels, no header: 2048 x 2048, 16-bit big-endian words holding 12-bit values, 0.175 mm pixels
    CLNDAT_EN.TXT    clinical list, one nodule case per line: file name, subtlety (1-5), size (mm), age,
                     sex, x, y (pixel indices on the 2048 grid), diagnosis, ... (read only up to y; age and
                     sex are never copied). Some releases run lines together: entries are split at file names.
    SCR: scratch/fold{1,2}/masks/{left lung,right lung,heart,left clavicle,right clavicle}/<case>.gif
        (1024 x 1024, half the image resolution: upsampled 2x by repetition)

Polarity: JSRT stores transmitted light: a larger raw value is *less* attenuation (lungs are high). Our
contract is MONOCHROME2, so the image is `1 - raw / 4095`. Where SCR masks are present the adapter checks
it: the lung fields must come out darker than the heart; otherwise `polarity_check=suspect` is flagged.
SCR names structures by the patient's side, as our ChestX-Det vocabulary does ("left lung" -> "Left Lung",
on the image's right in a PA film); the adapter checks that too (`laterality_check`).

Nodules become discs of the listed diameter at the listed centre, with `mask_source="box"`: like a box, an
approximate shape built from coordinates, not an outline. A lesion over `nodule_mass_cutoff_mm` is a mass
(JSRT's "nodules" reach 60 mm). Only nodule and mass were graded: the other labels are NaN.
`raw_size` exists so tests can write small raw files; real JSRT files are 2048.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from aurad_models.vocabulary import anatomy_index, pathology_index
from storage.sources.base import SourceAdapter, index_files, relative
from storage.sources.geometry import disc_mask
from storage.sources.pixels_io import read_mask_bitmap
from storage.sources.records import (
    RecordError,
    RecordRef,
    RelabelTable,
    SourceFormatError,
    SourceRecord,
    empty_anatomy,
    empty_pathology,
    findings_from,
    sample_id_for,
)

logger = logging.getLogger(__name__)

JSRT_RELABEL = RelabelTable(mapped={"nodule": "nodule"}, also_covers=frozenset({"mass"}), exhaustive=True)

# SCR folder (patient's side) -> our anatomy channel.
SCR_STRUCTURES: dict[str, str] = {
    "left lung": "Left Lung",
    "right lung": "Right Lung",
    "heart": "Heart",
    "left clavicle": "Left Clavicle",
    "right clavicle": "Right Clavicle",
}

_CASE = re.compile(r"(JPC(?:LN|NN)\d{3}\.IMG)", re.IGNORECASE)


class JSRT(SourceAdapter):
    name = "jsrt"
    relabel = JSRT_RELABEL
    names_are_safe = True  # "JPCLN001.IMG": a case number, no patient data

    def __init__(
        self,
        root: str | Path,
        clinical_list: str = "CLNDAT_EN.TXT",
        raw_size: int = 2048,
        bits: int = 12,
        pixel_spacing_mm: float = 0.175,
        nodule_mass_cutoff_mm: float = 30.0,
        invert: bool = True,
    ) -> None:
        super().__init__(root)
        self.clinical_list = clinical_list
        self.raw_size = raw_size
        self.bits = bits
        self.spacing = pixel_spacing_mm
        self.cutoff_mm = nodule_mass_cutoff_mm
        self.invert = invert
        self._masks: dict[tuple[str, str], Path] | None = None

    def options(self) -> dict[str, object]:
        return {
            "clinical_list": self.clinical_list,
            "raw_size": self.raw_size,
            "bits": self.bits,
            "pixel_spacing_mm": self.spacing,
            "nodule_mass_cutoff_mm": self.cutoff_mm,
            "invert": self.invert,
        }

    def scan(self) -> list[RecordRef]:
        images = index_files(self.root, (".img",))
        images = {name: path for name, path in images.items() if _CASE.fullmatch(name)}
        if not images:
            raise SourceFormatError(f"{self.name}: no JPCLN*/JPCNN* .IMG file under {self.root}")
        nodule_cases = [n for n in images if n.upper().startswith("JPCLN")]
        clinical = self._read_clinical() if nodule_cases else {}
        refs = []
        for name in sorted(images, key=str.upper):
            case = name.upper()
            key = relative(images[name], self.root)
            refs.append(
                RecordRef(sample_id_for(self.name, key), key, None, self.display_name(case), clinical.get(case))
            )
        return refs

    def _read_clinical(self) -> dict[str, dict | str]:
        """Case -> {subtlety, size_mm, x, y}, or an error string for an entry that does not parse."""
        path = self.root / self.clinical_list
        if not path.is_file():
            found = [p for p in self.root.rglob("*") if p.name.lower() == Path(self.clinical_list).name.lower()]
            if not found:
                raise SourceFormatError(
                    f"{self.name}: nodule images present but the clinical list {self.clinical_list} is not under {self.root}"
                )
            path = found[0]
        text = path.read_text(encoding="latin-1")
        parts = _CASE.split(text)
        entries: dict[str, dict | str] = {}
        for case, rest in zip(parts[1::2], parts[2::2]):
            case = case.upper()
            if not case.startswith("JPCLN"):
                continue
            tokens = rest.split()
            try:
                entries[case] = {
                    "subtlety": int(tokens[0]),
                    "size_mm": float(tokens[1]),
                    "x": float(tokens[4]),
                    "y": float(tokens[5]),
                }
            except (IndexError, ValueError):
                entries[case] = f"clinical list entry for {case} does not parse"
        return entries

    def load(self, ref: RecordRef) -> SourceRecord:
        case = ref.display or ref.key
        image = self._read_raw(self.root / ref.key, case)
        shape = image.shape
        anatomy, anatomy_flags = self._read_anatomy(Path(ref.key).stem.upper(), shape, case)
        pathology = empty_pathology(shape)
        labels = JSRT_RELABEL.relabel([]).labels  # nodule = mass = 0, others NaN
        metadata = {
            "source_pixel_spacing_mm": f"{self.spacing:g},{self.spacing:g}",
            "anatomy_source": "scr" if anatomy is not None else "none",
        }
        flags = list(anatomy_flags)
        if case.upper().startswith("JPCLN"):
            entry = ref.annotations
            if entry is None:
                raise RecordError(f"{case}: nodule case missing from the clinical list")
            if isinstance(entry, str):
                raise RecordError(f"{case}: {entry}")
            label = "mass" if entry["size_mm"] > self.cutoff_mm else "nodule"
            mask, clipped = disc_mask(shape, entry["x"], entry["y"], entry["size_mm"] / 2 / self.spacing)
            if not mask.any():
                raise RecordError(f"{case}: nodule position lies outside the image")
            if clipped:
                flags.append("nodule disc clipped to the image")
            pathology[pathology_index(label)] = mask
            labels[label] = 1.0
            metadata.update({"nodule_size_mm": f"{entry['size_mm']:g}", "nodule_subtlety": str(entry["subtlety"])})
        metadata["polarity_check"] = _polarity_check(image, anatomy)
        if metadata["polarity_check"] == "suspect":
            logger.warning("%s: lungs are not darker than the heart after conversion; check the polarity", case)
            flags.append("polarity suspect")
        if anatomy is not None:
            metadata["laterality_check"] = _laterality_check(anatomy)
            if metadata["laterality_check"] == "suspect":
                flags.append("laterality suspect")
        return SourceRecord(
            sample_id=ref.sample_id,
            image=image,
            pathology=pathology,
            anatomy=anatomy,
            labels=labels,
            findings=findings_from(labels, pathology, anatomy),
            report=None,
            mask_source="box",
            metadata=metadata,
            split=ref.split,
            source=ref.display,
            flags=flags,
        )

    def _read_raw(self, path: Path, case: str) -> np.ndarray:
        expected = self.raw_size * self.raw_size * 2
        size = path.stat().st_size if path.is_file() else -1
        if size < 0:
            raise RecordError(f"{case}: image file is missing")
        if size != expected:
            raise RecordError(f"{case}: raw file has {size} bytes, expected {expected} ({self.raw_size}^2 16-bit words)")
        raw = np.fromfile(path, dtype=">u2").reshape(self.raw_size, self.raw_size)
        maximum = 2**self.bits - 1
        if int(raw.max()) > maximum:
            raise RecordError(f"{case}: raw values exceed {self.bits} bits (max {int(raw.max())}); wrong file or byte order")
        image = raw.astype(np.float32) / maximum
        return (1.0 - image if self.invert else image).astype(np.float32)

    def _read_anatomy(self, stem: str, shape: tuple[int, int], case: str) -> tuple[np.ndarray | None, list[str]]:
        if self._masks is None:
            self._masks = {
                (p.parent.name.lower(), p.stem.upper()): p
                for p in sorted(self.root.rglob("*"))
                if p.suffix.lower() == ".gif" and p.parent.name.lower() in SCR_STRUCTURES
            }
        paths = {s: self._masks.get((s, stem)) for s in SCR_STRUCTURES}
        if not any(paths.values()):
            return None, []
        missing = [s for s, p in paths.items() if p is None]
        if missing:
            raise RecordError(f"{case}: SCR masks incomplete (missing {', '.join(missing)})")
        anatomy = empty_anatomy(shape)
        flags = []
        for structure, path in paths.items():
            mask = read_mask_bitmap(path, f"{case} {structure} mask")
            if mask.shape != shape:
                factor = shape[0] // mask.shape[0]
                if factor < 2 or mask.shape[0] * factor != shape[0] or mask.shape[1] * factor != shape[1]:
                    raise RecordError(f"{case}: {structure} mask size {mask.shape} disagrees with the image {shape}")
                mask = np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)
                flags.append(f"anatomy upsampled x{factor}")
            anatomy[anatomy_index(SCR_STRUCTURES[structure])] = mask
        return anatomy, sorted(set(flags))


def _polarity_check(image: np.ndarray, anatomy: np.ndarray | None) -> str:
    """'ok' when the lungs are darker than the heart (MONOCHROME2), 'suspect' if not, 'unchecked' without masks."""
    if anatomy is None:
        return "unchecked"
    lungs = (anatomy[anatomy_index("Left Lung")] | anatomy[anatomy_index("Right Lung")]).astype(bool)
    heart = anatomy[anatomy_index("Heart")].astype(bool)
    if not lungs.any() or not heart.any():
        return "unchecked"
    return "ok" if float(image[lungs].mean()) < float(image[heart].mean()) else "suspect"


def _laterality_check(anatomy: np.ndarray) -> str:
    """'ok' when the patient's left lung lies right of the patient's right lung in the image (PA view)."""
    left = anatomy[anatomy_index("Left Lung")]
    right = anatomy[anatomy_index("Right Lung")]
    if not left.any() or not right.any():
        return "unchecked"
    return "ok" if np.nonzero(left)[1].mean() > np.nonzero(right)[1].mean() else "suspect"
