"""Damage detection for a published version: every sample's stored bytes against the checksums the writer put
in its manifest row, and masks that must hold only 0 and 1.

    report = verify_version(open_dataset(root, "synthetic", "v0003"))            # every sample
    report = verify_version(version, sample=200, seed=1)                          # a seeded sample of 200
    report.ok, report.problems                                                    # sample ids and files named

The cheap checks (manifest parts against the checksums in version.json, counts against the catalog) run at
every `open_dataset`; this one reads every array and is `aurad datasets verify`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from storage.reader import DatasetVersion


def image_sha256(image: np.ndarray) -> str:
    """The checksum the writer records for one stored image: its little-endian uint16 bytes."""
    return hashlib.sha256(np.ascontiguousarray(image).astype("<u2").tobytes()).hexdigest()


def masks_sha256(pathology: np.ndarray, anatomy: np.ndarray) -> str:
    """The checksum of one sample's masks: the pathology (C, H, W) bytes, then the anatomy (A, H, W) bytes."""
    digest = hashlib.sha256(np.ascontiguousarray(pathology, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(anatomy, dtype=np.uint8).tobytes())
    return digest.hexdigest()


@dataclass
class VerifyReport:
    """What a verification read and found: checked indices and one line per problem (sample id and file)."""

    dataset: str
    version: str
    checked: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def sample_problems(version: "DatasetVersion", index: int, image: np.ndarray, pathology: np.ndarray, anatomy: np.ndarray) -> list[str]:
    """What is wrong with one sample as read (empty: nothing)."""
    row = {name: version.manifest.column(name)[index].as_py() for name in ("sample_id", "image_sha256", "masks_sha256")}
    where = f"sample {row['sample_id']} (index {index}) of {version.name}/{version.version}"
    problems = []
    if image_sha256(image) != row["image_sha256"]:
        problems.append(f"{where}: images.zarr bytes do not match the manifest's image_sha256")
    if masks_sha256(pathology, anatomy) != row["masks_sha256"]:
        problems.append(f"{where}: masks.zarr / anatomy.zarr bytes do not match the manifest's masks_sha256")
    for name, masks in (("masks.zarr", pathology), ("anatomy.zarr", anatomy)):
        values = np.unique(masks)
        if not set(values.tolist()) <= {0, 1}:
            problems.append(f"{where}: {name} holds values {values[values > 1].tolist()} besides 0 and 1")
    return problems


def verify_version(version: "DatasetVersion", sample: int | None = None, seed: int = 0,
                   progress: Callable[[int], None] | None = None, block: int = 64) -> VerifyReport:
    """Re-hash every sample (or a seeded `sample` of them) against its manifest row, block by block."""
    n = len(version)
    indices = np.arange(n) if sample is None or sample >= n else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    report = VerifyReport(version.name, version.version, len(indices))
    for start in range(0, len(indices), block):
        chunk = indices[start : start + block]
        images = np.asarray(version.images.oindex[chunk])
        pathology = np.asarray(version.masks.oindex[chunk])
        anatomy = np.asarray(version.anatomy.oindex[chunk])
        for j, index in enumerate(chunk):
            report.problems.extend(sample_problems(version, int(index), images[j], pathology[j], anatomy[j]))
        if progress is not None:
            progress(len(chunk))
    return report
