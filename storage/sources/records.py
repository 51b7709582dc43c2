"""What every adapter produces: one `SourceRecord` per image, on our vocabulary and pixel contract.

An adapter first *scans* its dataset into cheap `RecordRef`s (ids + annotations, no pixels), so the import
driver knows the sample count up front and can stream; then it *loads* one ref at a time into a
`SourceRecord`. A problem with one record raises `RecordError` (the driver quarantines that record and
goes on); a problem with the dataset as a whole (a missing CSV column, a missing index file) raises
`SourceFormatError` before anything is written.

De-identification: a sample id is a hash of the adapter name and the dataset-relative path, never the
path itself, because real file names carry identifiers (SIIM names files by DICOM UIDs, NIH by patient
number). Nothing from a DICOM header reaches a record except an allow-list of acquisition geometry
(`storage.sources.pixels_io.SAFE_DICOM_FIELDS`).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from aurad_models.anatomy_rules import located_side, located_zone
from aurad_models.findings import Finding
from aurad_models.vocabulary import (
    ANATOMY_STRUCTURES,
    LATERAL_FINDINGS,
    PATHOLOGIES,
    ZONED_FINDINGS,
    pathology_index,
)
from storage.schema import MASK_SOURCES


class SourceFormatError(ValueError):
    """The dataset as a whole cannot be read (missing index file, missing column): nothing is imported."""


class RecordError(ValueError):
    """One record cannot be imported; the driver quarantines it with this message as the reason.

    Messages must not contain patient data: adapters name a record by its safe display name or hash.
    """


def sample_id_for(adapter: str, relative_path: str) -> str:
    """A stable, non-reversible sample id: sha256 of `adapter:relative/path`, 32 hex characters."""
    key = f"{adapter}:{relative_path.replace(chr(92), '/')}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class RecordRef:
    """A record before its pixels are read: enough to count, order and hash it."""

    sample_id: str
    key: str  # dataset-relative path (or id) the adapter resolves again in `load`; never written out
    split: str | None = None
    display: str | None = None  # a name safe to write out (None: use the sample id)
    annotations: Any = None

    @property
    def name(self) -> str:
        """How log lines and quarantine reasons refer to this record."""
        return self.display or f"sample {self.sample_id}"


@dataclass
class SourceRecord:
    """One imported image with its masks and labels, at the source's own resolution.

    image: (H, W) float32 in [0, 1], MONOCHROME2 (brighter = more attenuation).
    pathology: (len(PATHOLOGIES), H, W) uint8 0/1, or None when the dataset has no masks for it.
    anatomy: (len(ANATOMY_STRUCTURES), H, W) uint8 0/1, or None.
    labels: every label of PATHOLOGIES -> 1.0 (present), 0.0 (absent) or NaN (unknown).
    metadata: str -> str, non-identifying only (spacing, unmapped classes, flags).
    """

    sample_id: str
    image: np.ndarray
    pathology: np.ndarray | None
    anatomy: np.ndarray | None
    labels: dict[str, float]
    findings: list[Finding]
    report: str | None
    mask_source: str
    metadata: dict[str, str] = field(default_factory=dict)
    split: str | None = None
    source: str | None = None
    flags: list[str] = field(default_factory=list)  # notes counted in the import summary

    def __post_init__(self) -> None:
        check_record(self)


def check_record(record: SourceRecord) -> None:
    """Shapes, dtypes and value ranges an adapter must honour; a mismatch is a bug or bad data."""
    image = record.image
    if image.ndim != 2 or image.dtype != np.float32:
        raise RecordError(f"image must be a (H, W) float32 array, got {image.dtype} {image.shape}")
    if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
        raise RecordError("image values must be finite and in [0, 1]")
    for name, masks, channels in (
        ("pathology", record.pathology, len(PATHOLOGIES)),
        ("anatomy", record.anatomy, len(ANATOMY_STRUCTURES)),
    ):
        if masks is None:
            continue
        if masks.shape != (channels, *image.shape):
            raise RecordError(
                f"{name} masks of shape {masks.shape[-2:]} disagree with the image size {image.shape}"
                if masks.ndim == 3 and masks.shape[0] == channels
                else f"{name} masks must be ({channels}, H, W), got {masks.shape}"
            )
        if masks.dtype != np.uint8:
            raise RecordError(f"{name} masks must be uint8, got {masks.dtype}")
    if set(record.labels) != set(PATHOLOGIES):
        raise RecordError(f"labels must cover exactly {PATHOLOGIES}, got {sorted(record.labels)}")
    if record.mask_source not in MASK_SOURCES:
        raise RecordError(f"mask_source must be one of {MASK_SOURCES}, got {record.mask_source!r}")


# --- relabelling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelabelResult:
    """A dataset's class names mapped onto PATHOLOGIES."""

    labels: dict[str, float]
    unmapped: tuple[str, ...]  # known classes of the dataset outside our vocabulary
    unknown: tuple[str, ...]  # names the table does not know at all (typo, newer release)


@dataclass(frozen=True)
class RelabelTable:
    """How one dataset's class names map onto PATHOLOGIES (torchxrayvision's `relabel_dataset` idea).

    mapped: class name -> our label. A class listed here makes its label 1 on an image that has it.
    uncertain: class name -> our label it makes *unknown* (NaN) when present without a direct positive
        (e.g. ChestX-Det "Diffuse Nodule": nodules, but outlined as one region).
    unmapped: the dataset's other known classes; recorded in metadata, never turned into a 0.
    ignored: names that carry no finding ("No finding").
    exhaustive: every image was read for every class (absence of a covered label means 0); if False,
        a covered label without a positive is NaN.
    also_covers: labels a special rule in the adapter produces (VinDr "Nodule/Mass" -> nodule or mass).

    A label no class covers is NaN: the dataset never looked for it.
    """

    mapped: Mapping[str, str]
    uncertain: Mapping[str, str] = field(default_factory=dict)
    unmapped: frozenset[str] = frozenset()
    ignored: frozenset[str] = frozenset()
    exhaustive: bool = True
    also_covers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for label in (*self.mapped.values(), *self.uncertain.values(), *self.also_covers):
            pathology_index(label)  # a clear error for a label outside the vocabulary

    @property
    def covered(self) -> frozenset[str]:
        return frozenset(self.mapped.values()) | self.also_covers

    def lookup(self, name: str) -> str | None:
        """Our label for a class name (exact, then case-insensitive), or None."""
        if name in self.mapped:
            return self.mapped[name]
        folded = {k.casefold(): v for k, v in self.mapped.items()}
        return folded.get(name.strip().casefold())

    def relabel(self, classes: Iterable[str], extra_positives: Iterable[str] = ()) -> RelabelResult:
        """Labels for an image annotated with `classes` (repeats allowed); `extra_positives` are our labels
        an adapter resolved itself (e.g. by box size)."""
        positives = set(extra_positives)
        uncertain: set[str] = set()
        unmapped: list[str] = []
        unknown: list[str] = []
        known_other = {n.casefold() for n in self.unmapped}
        ignored = {n.casefold() for n in self.ignored}
        uncertain_folded = {k.casefold(): v for k, v in self.uncertain.items()}
        for name in classes:
            label = self.lookup(name)
            folded = name.strip().casefold()
            if label is not None:
                positives.add(label)
            elif folded in uncertain_folded:
                uncertain.add(uncertain_folded[folded])
                unmapped.append(name)
            elif folded in ignored:
                continue
            elif folded in known_other:
                unmapped.append(name)
            else:
                unknown.append(name)
        labels: dict[str, float] = {}
        for label in PATHOLOGIES:
            if label in positives:
                labels[label] = 1.0
            elif label in uncertain or label not in self.covered or not self.exhaustive:
                labels[label] = math.nan
            else:
                labels[label] = 0.0
        return RelabelResult(labels, tuple(dict.fromkeys(unmapped)), tuple(dict.fromkeys(unknown)))


def relabel_metadata(result: RelabelResult) -> dict[str, str]:
    """Metadata entries naming classes outside our vocabulary (so they are visible, not dropped)."""
    metadata = {}
    if result.unmapped:
        metadata["unmapped_classes"] = ";".join(sorted(result.unmapped))
    if result.unknown:
        metadata["unknown_classes"] = ";".join(sorted(result.unknown))
    return metadata


def relabel_flags(result: RelabelResult) -> list[str]:
    """Summary notes for unknown class names (counted per name in the import summary)."""
    return [f"unknown class {name!r}" for name in result.unknown]


# --- findings ------------------------------------------------------------------------------------


def findings_from(
    labels: Mapping[str, float], pathology: np.ndarray | None, anatomy: np.ndarray | None
) -> list[Finding]:
    """One finding per positive label, in vocabulary order.

    Side and zone come from the mask only where anatomy is known (`located_side` / `located_zone`), since
    'left' means the patient's left and only the lung masks say where that is. Size is left unset:
    the sources grade size inconsistently or not at all.
    """
    findings = []
    for label in PATHOLOGIES:
        if labels.get(label) != 1.0:
            continue
        side = zone = None
        if pathology is not None and anatomy is not None:
            mask = pathology[pathology_index(label)]
            if mask.any():
                if label in LATERAL_FINDINGS:
                    side = located_side(mask, anatomy)
                if label in ZONED_FINDINGS and side != "bilateral":
                    zone = located_zone(mask, anatomy)
        findings.append(Finding(label=label, side=side, zone=zone))
    return findings


def labels_from_masks(pathology: np.ndarray, provided: Iterable[str]) -> dict[str, float]:
    """Labels from exact masks: 1 where the mask of a provided class is non-empty, 0 where it is empty,
    NaN for classes the source gave no mask for."""
    provided = set(provided)
    return {
        label: (float(pathology[i].any()) if label in provided else math.nan)
        for i, label in enumerate(PATHOLOGIES)
    }


def empty_pathology(shape: tuple[int, int]) -> np.ndarray:
    return np.zeros((len(PATHOLOGIES), *shape), dtype=np.uint8)


def empty_anatomy(shape: tuple[int, int]) -> np.ndarray:
    return np.zeros((len(ANATOMY_STRUCTURES), *shape), dtype=np.uint8)


_IDENTIFIERS = [  # what a report's free text may hold about a patient; each becomes "[removed]"
    re.compile(r"\b[A-Za-z][\w'-]*(?:\^[\w'-]*)+"),  # DICOM person names: FAMILY^GIVEN^MIDDLE
    re.compile(r"\b\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}\b"),  # dates: 1950-03-01, 03/01/1950, 1.3.50
    re.compile(r"\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{2,4}\b",
               re.IGNORECASE),  # March 1, 1950
    re.compile(r"\b\d{1,2}(?:st|nd|rd|th)?\s+(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?,?\s+\d{2,4}\b",
               re.IGNORECASE),  # 1 March 1950
    re.compile(r"\b(?:mrn|id|acc(?:ession)?|record|patient|pt)\s*(?:no\.?|number|#)?\s*[:#]?\s*[A-Z0-9-]*\d[A-Z0-9-]*\b",
               re.IGNORECASE),  # MRN: 12345678, accession #A-1234
    re.compile(r"\b\d{5,}\b"),  # any other long number (record and phone numbers)
]


def scrub_identifiers(text: str) -> str:
    """A report with what could identify a patient removed: DICOM-style person names (A^B), dates,
    record / accession numbers and other long numbers. The findings a prompt needs never look like these."""
    for pattern in _IDENTIFIERS:
        text = pattern.sub("[removed]", text)
    return text


def inside_folder(root: Path, relative: str, what: str) -> Path:
    """`root / relative`, or a RecordError when the path leaves the dataset folder (../, absolute, links)."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise RecordError(f"{what} path {relative!r} leaves the dataset folder; paths in the index must stay inside it")
    return path
