"""The import driver: any adapter's records -> one published dataset version.

    summary = import_source("vindr-cxr", "/data/vindr", root="aurad-data", dataset="vindr", image_size=256)

1. Scan the adapter's index (no pixels) and stage a version of that many samples. The build id is a
   fingerprint of the adapter, its options, the index and the output geometry, so a killed import
   resumes where it stopped: finished shards are skipped, never rewritten or duplicated.
2. Per shard, load records one at a time (never the whole dataset), pad each to a centred square and
   resize to `image_size` (area / bilinear for the image, nearest for masks) and write the shard.
   A record that fails with `RecordError` is *quarantined*: it keeps its row (accepted=False,
   reject_reason "quarantined: ...", blank arrays) so shard bounds never depend on which files are
   broken, and the rest of the import goes on.
3. From the staged manifest (so a resumed import reports every shard, not only this run's): write
   `quality/quarantine.csv`, the label matrix `labels.parquet` (sample_id + one float column per
   pathology: 1 / 0 / NaN = unknown) and publish, with the import settings and summary as lineage.

Prompts: the dataset's report where it has one, else the findings sentence, never claiming more than
the labels know (`prompt_for`). Every row's metadata also carries `label.<pathology>` ("1", "0", "nan"), `adapter`, `source_size`,
`pixel_spacing_mm` (at the stored resolution, when the source gives a spacing) and `flags` (notes such
as a clipped annotation, counted in the summary).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from aurad_models.findings import render_prompt
from aurad_models.pixels import to_stored
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES
from storage.arrays import ArraySpec
from storage.sources.base import SourceAdapter
from storage.sources.geometry import (
    pad_to_square,
    resize_image,
    resize_masks,
    square_geometry,
)
from storage.sources.records import (
    RecordError,
    RecordRef,
    SourceFormatError,
    SourceRecord,
    scrub_identifiers,
)
from storage.sources.registry import make_adapter
from storage.staging import StagedVersion, stage_version

logger = logging.getLogger(__name__)

QUARANTINE_FILE = "quality/quarantine.csv"
LABELS_FILE = "labels.parquet"
QUARANTINE_PREFIX = "quarantined: "
# Bump when the conversion changes what an import writes, so old staged builds are not resumed.
IMPORT_FORMAT = 1


@dataclass
class ImportSummary:
    """What an import did. `quarantined` lists (sample id, reason); ids are hashes, never file names."""

    dataset: str
    version: str
    build_id: str
    imported: int
    quarantined: list[tuple[str, str]]
    counts: dict[str, int]  # accepted samples with the label = 1, per pathology
    flags: dict[str, int] = field(default_factory=dict)  # notes (clipped annotation, unknown class...) -> samples
    splits: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["quarantined"] = [list(item) for item in self.quarantined]
        return data


@dataclass
class PreparedSample:
    """One record on the stored grid, ready for `write_shard`."""

    image: np.ndarray  # (S, S) uint16
    pathology: np.ndarray  # (C, S, S) uint8
    anatomy: np.ndarray  # (A, S, S) uint8
    row: dict[str, Any]


def import_source(
    adapter_name: str,
    path: str | Path,
    root: str | Path,
    dataset: str,
    image_size: int,
    shard_size: int = 64,
    split: str | None = None,
    options: dict[str, Any] | None = None,
    build_id: str | None = None,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> ImportSummary:
    """Import a real dataset at `path` through adapter `adapter_name` as a new version of `dataset`.

    `split` overrides the split every record gets (else the dataset's own, where it has one);
    `options` go to the adapter (see each adapter's constructor). Dataset-level problems raise
    `SourceFormatError` before anything is staged. Re-importing inputs already published under the
    default build id is a `StorageError` saying so: pass a new `build_id` to import them again.
    """
    if image_size < 1 or shard_size < 1:
        raise ValueError(f"image_size and shard_size must be positive, got {image_size}, {shard_size}")
    adapter = make_adapter(adapter_name, path, **(options or {}))
    refs = adapter.scan()
    if not refs:
        raise SourceFormatError(f"{adapter.name}: the dataset at {path} lists no record")
    settings = {
        "adapter": adapter.name,
        "options": adapter.options(),
        "image_size": image_size,
        "split": split,
        "format": IMPORT_FORMAT,
    }
    build_id = build_id or f"import-{adapter.name}-{_fingerprint(settings, refs, shard_size)[:16]}"
    staged = stage_version(
        root,
        dataset,
        build_id,
        n_samples=len(refs),
        shard_size=shard_size,
        spec=ArraySpec(image_size=image_size, pathology_channels=PATHOLOGIES, anatomy_channels=ANATOMY_STRUCTURES),
        attrs={"source_dataset": adapter.name},
        storage_options=storage_options,
    )
    finished = staged.finished_shards()
    bar = tqdm(total=len(refs), desc=f"import {adapter.name}", unit="img", disable=not progress)
    with bar:
        for k in range(staged.n_shards):
            start, stop = staged.shard_bounds(k)
            if k in finished:
                bar.update(stop - start)
                continue
            _write_shard(staged, k, adapter, refs[start:stop], image_size, split, bar)
    manifest = staged.read_manifest()
    summary = summarize(manifest, dataset, build_id)
    staged.write_file(QUARANTINE_FILE, quarantine_csv(manifest))
    staged.write_file(LABELS_FILE, label_matrix_parquet(manifest))
    lineage = {
        "kind": "source-import",
        # the folder's name and a hash of where it was: no machine's absolute path in published lineage
        "source": {**settings, "folder": Path(path).resolve().name, "folder_sha256": hashlib.sha256(
            str(Path(path).resolve()).encode()).hexdigest()[:16], "shard_size": shard_size},
        "config_hash": _fingerprint(settings, [], shard_size),
        "import_summary": {k: v for k, v in summary.as_dict().items() if k not in ("dataset", "version", "quarantined")}
        | {"quarantined": len(summary.quarantined)},
    }
    summary.version = staged.publish(lineage)
    logger.info(
        "imported %s into %s/%s: %d imported, %d quarantined",
        adapter.name, dataset, summary.version, summary.imported, len(summary.quarantined),
    )
    return summary


def _fingerprint(settings: dict[str, Any], refs: list[RecordRef], shard_size: int) -> str:
    """sha256 over the settings and every record's id and annotations (a changed index is a new build)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(str(shard_size).encode())
    for ref in refs:
        digest.update(ref.sample_id.encode())
        digest.update(repr(ref.annotations).encode())
    return digest.hexdigest()


def _write_shard(
    staged: StagedVersion,
    k: int,
    adapter: SourceAdapter,
    refs: list[RecordRef],
    image_size: int,
    split: str | None,
    bar: tqdm,
) -> None:
    n = len(refs)
    images = np.zeros((n, image_size, image_size), dtype=np.uint16)
    pathology = np.zeros((n, len(PATHOLOGIES), image_size, image_size), dtype=np.uint8)
    anatomy = np.zeros((n, len(ANATOMY_STRUCTURES), image_size, image_size), dtype=np.uint8)
    rows = []
    for i, ref in enumerate(refs):
        try:
            record = adapter.load(ref)
            sample = prepare_sample(record, image_size, adapter.name)
        except (RecordError, ValueError, TypeError, KeyError, IndexError) as error:  # one bad record never sinks an import
            reason = (str(error).removeprefix(f"{ref.name}: ") if isinstance(error, RecordError)
                      else f"malformed record ({type(error).__name__}: {str(error)[:200]})")  # one an adapter's checks missed
            logger.warning("quarantined %s (%s): %s", ref.name, ref.sample_id, reason)
            rows.append(quarantine_row(ref, reason, adapter.name))
        else:
            images[i], pathology[i], anatomy[i] = sample.image, sample.pathology, sample.anatomy
            rows.append(sample.row)
        if split is not None:
            rows[-1]["split"] = split
        bar.update(1)
    staged.write_shard(k, images, pathology, anatomy, rows)


# --- one record onto the stored grid -------------------------------------------------------------


def to_square(array: np.ndarray, image_size: int, is_mask: bool) -> np.ndarray:
    """Pad (..., H, W) to a centred square, then resize: area / bilinear for images, nearest for masks."""
    square = pad_to_square(array)
    if is_mask:
        return resize_masks(square, image_size)
    return resize_image(square, image_size)


def prepare_sample(record: SourceRecord, image_size: int, adapter_name: str) -> PreparedSample:
    """A record on the stored grid: uint16 image, uint8 masks, and its manifest row."""
    shape = record.image.shape
    image = to_stored(to_square(record.image, image_size, is_mask=False))
    pathology = (
        to_square(record.pathology, image_size, is_mask=True)
        if record.pathology is not None
        else np.zeros((len(PATHOLOGIES), image_size, image_size), dtype=np.uint8)
    )
    anatomy = (
        to_square(record.anatomy, image_size, is_mask=True)
        if record.anatomy is not None
        else np.zeros((len(ANATOMY_STRUCTURES), image_size, image_size), dtype=np.uint8)
    )
    flags = list(record.flags)
    if record.pathology is not None:
        lost = [
            label
            for c, label in enumerate(PATHOLOGIES)
            if record.pathology[c].any() and not pathology[c].any()
        ]
        flags += [f"{label} mask lost in resize" for label in lost]
    metadata = dict(record.metadata)
    metadata.update(
        {
            "adapter": adapter_name,
            "source_size": f"{shape[0]}x{shape[1]}",
            "anatomy": "present" if record.anatomy is not None else "none",
        }
    )
    spacing = metadata.get("source_pixel_spacing_mm")
    if spacing:
        scale = square_geometry(shape)[0] / image_size
        metadata["pixel_spacing_mm"] = ",".join(f"{float(v) * scale:.6g}" for v in spacing.split(","))
    metadata.update(label_metadata(record.labels))
    if flags:
        metadata["flags"] = "; ".join(sorted(set(flags)))
    row = {
        "sample_id": record.sample_id,
        "split": record.split,
        "prompt": prompt_for(record),
        "findings": [f.as_record() for f in record.findings],
        "seed": 0,
        "attempt_seeds": [],
        "attempt_reject_reasons": [],
        "source": record.source,
        "mask_source": record.mask_source,
        "mask_model_id": None,
        "image_model_id": None,
        "scores": {},
        "accepted": True,
        "reject_reason": None,
        "metadata": {str(k): str(v) for k, v in metadata.items()},
    }
    return PreparedSample(image, pathology, anatomy, row)


def prompt_for(record: SourceRecord) -> str:
    """The record's report, else a prompt that claims no more than the labels know.

    Positives: the canonical findings sentence. No positive and every label known: the normal report.
    No positive but some labels unknown (SIIM grades only pneumothorax): only the known negatives,
    "no pneumothorax." -- never "normal", which would claim the unknown labels absent.
    """
    if record.report:
        return scrub_identifiers(record.report)  # dates, record numbers, A^B names never reach the manifest
    if record.findings or not any(math.isnan(v) for v in record.labels.values()):
        return render_prompt(record.findings)
    negatives = [label for label in PATHOLOGIES if record.labels[label] == 0.0]
    return "; ".join(f"no {label}" for label in negatives) + "." if negatives else ""


def label_metadata(labels: dict[str, float]) -> dict[str, str]:
    """`label.<pathology>` -> "1" / "0" / "nan"."""
    return {
        f"label.{label}": "nan" if math.isnan(labels[label]) else str(int(labels[label])) for label in PATHOLOGIES
    }


def quarantine_row(ref: RecordRef, reason: str, adapter_name: str) -> dict[str, Any]:
    """The manifest row of a record that could not be imported: kept, not accepted, with the reason."""
    metadata = {"adapter": adapter_name, "quarantined": "true"}
    metadata.update(label_metadata({label: math.nan for label in PATHOLOGIES}))
    return {
        "sample_id": ref.sample_id,
        "split": ref.split,
        "prompt": "",
        "findings": [],
        "seed": 0,
        "attempt_seeds": [],
        "attempt_reject_reasons": [],
        "source": ref.display,
        "mask_source": "none",
        "mask_model_id": None,
        "image_model_id": None,
        "scores": {},
        "accepted": False,
        "reject_reason": QUARANTINE_PREFIX + reason,
        "metadata": metadata,
    }


# --- what the manifest says, once every shard is written -----------------------------------------


def _metadata_dicts(manifest: pa.Table) -> list[dict[str, str]]:
    return [dict(items) for items in manifest.column("metadata").to_pylist()]


def summarize(manifest: pa.Table, dataset: str, build_id: str) -> ImportSummary:
    """Counts from the staged manifest (so a resumed import reports every shard)."""
    accepted = manifest.column("accepted").to_pylist()
    reasons = manifest.column("reject_reason").to_pylist()
    ids = manifest.column("sample_id").to_pylist()
    splits = manifest.column("split").to_pylist()
    counts: Counter[str] = Counter({label: 0 for label in PATHOLOGIES})
    flags: Counter[str] = Counter()
    for ok, metadata in zip(accepted, _metadata_dicts(manifest)):
        if not ok:
            continue
        counts.update(label for label in PATHOLOGIES if metadata.get(f"label.{label}") == "1")
        flags.update(set(filter(None, metadata.get("flags", "").split("; "))))
    quarantined = [
        (sample_id, reason.removeprefix(QUARANTINE_PREFIX))
        for sample_id, ok, reason in zip(ids, accepted, reasons)
        if not ok and reason and reason.startswith(QUARANTINE_PREFIX)
    ]
    return ImportSummary(
        dataset=dataset,
        version="",
        build_id=build_id,
        imported=sum(accepted),
        quarantined=quarantined,
        counts=dict(counts),
        flags=dict(sorted(flags.items())),
        splits=dict(sorted(Counter(str(s) for s, ok in zip(splits, accepted) if ok).items())),
    )


def quarantine_csv(manifest: pa.Table) -> str:
    """sample_id, source (only where names are safe), split, reason: one line per quarantined record."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sample_id", "source", "split", "reason"])
    columns = [manifest.column(c).to_pylist() for c in ("sample_id", "source", "split", "accepted", "reject_reason")]
    for sample_id, source, split, ok, reason in zip(*columns):
        if not ok and reason and reason.startswith(QUARANTINE_PREFIX):
            writer.writerow([sample_id, source or "", split or "", reason.removeprefix(QUARANTINE_PREFIX)])
    return out.getvalue()


def label_matrix(manifest: pa.Table) -> pa.Table:
    """sample_id + one float64 column per pathology (1 / 0 / NaN), in manifest (array) order."""
    metadata = _metadata_dicts(manifest)
    columns: dict[str, Iterable] = {"sample_id": manifest.column("sample_id")}
    for label in PATHOLOGIES:
        columns[label] = pa.array([float(m.get(f"label.{label}", "nan")) for m in metadata], pa.float64())
    return pa.table(columns)


def label_matrix_parquet(manifest: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(label_matrix(manifest), sink)
    return sink.getvalue()
