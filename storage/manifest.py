"""Manifest part files: one Parquet file per shard, written whole, read back and checked."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import StorageError
from storage.layout import MANIFEST_DIR, Root, manifest_part_name
from storage.schema import MANIFEST_SCHEMA, check_manifest_table


def part_bytes(table: pa.Table) -> bytes:
    """A manifest part as Parquet bytes (zstd), with the Arrow schema embedded."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def read_part(root: Root, version_dir: str, shard: int, n_shards: int, expected_sha256: str | None = None) -> pa.Table:
    """One shard's part: schema-checked, its shard / index_in_shard columns consistent with its place."""
    path = f"{version_dir}/{MANIFEST_DIR}/{manifest_part_name(shard, n_shards)}"
    where = root.url_of(path)
    data = root.read_bytes(path)
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise StorageError(f"manifest part {where} does not match the checksum recorded when it was written: it was "
                           "changed or damaged since")
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as error:
        raise StorageError(f"unreadable manifest part {where}: {error}") from None
    table = check_manifest_table(table, where)
    shards = table.column("shard").to_numpy()
    index = table.column("index_in_shard").to_numpy()
    if (shards != shard).any() or not np.array_equal(index, np.arange(table.num_rows)):
        raise StorageError(f"manifest part {where} has rows of another shard or out of order")
    return table


def read_parts(
    root: Root, version_dir: str, shards: Iterable[int], n_shards: int, checksums: dict[int, str] | None = None
) -> pa.Table:
    """The given shards' parts concatenated in shard order (an empty table with the schema if none)."""
    tables = [
        read_part(root, version_dir, k, n_shards, (checksums or {}).get(k)) for k in sorted(shards)
    ]
    if not tables:
        return MANIFEST_SCHEMA.empty_table()
    return pa.concat_tables(tables)


_BRACKETED = re.compile(r"\s*(\([^)]*\)|\[[^\]]*\])")
_NUMBER = r"-?\d+(?:\.\d+)?"
_BELOW, _ABOVE = re.compile(rf"{_NUMBER}\s*<\s*{_NUMBER}"), re.compile(rf"{_NUMBER}\s*>\s*{_NUMBER}")


def reject_reason_kinds(reason: str) -> set[str]:
    """The kinds of problem one reject reason names, its numbers left out: "classifier: atelectasis prompted
    but not detected (p=0.02 < 0.50); masks: nodule prompted but its mask is empty (0 px)" ->
    {"classifier: atelectasis prompted but not detected", "masks: nodule prompted but its mask is empty"}.
    Experts join their checks with "; " and a check's findings with ", " (`tasks.filtering`)."""
    kinds = set()
    for part in reason.split("; "):
        expert, _, details = part.partition(": ")
        for detail in _BRACKETED.sub("", details).split(", ") if details else [""]:
            detail = _ABOVE.sub("above its threshold", _BELOW.sub("below its threshold", detail))
            detail = " ".join(re.sub(_NUMBER, "", detail).split())
            kinds.add(f"{expert}: {detail}" if detail else expert)
    return kinds


def manifest_counts(manifest: pa.Table) -> dict[str, Any]:
    """Summary counts of a manifest: for version.json and `DatasetVersion.summary`."""
    accepted = manifest.column("accepted").to_pylist()
    findings = manifest.column("findings").to_pylist()
    per_finding: Counter[str] = Counter()
    for ok, sample_findings in zip(accepted, findings):
        if ok:
            per_finding.update({f["label"] for f in sample_findings})
    return {
        "samples": manifest.num_rows,
        "accepted": sum(accepted),
        "rejected": manifest.num_rows - sum(accepted),
        "findings_accepted": dict(sorted(per_finding.items())),
        "splits": dict(sorted(Counter(s or "none" for s in manifest.column("split").to_pylist()).items())),
        "mask_sources": dict(sorted(Counter(manifest.column("mask_source").to_pylist()).items())),
        "reject_reasons": dict(sorted(  # rejected samples per kind of problem, most frequent first
            Counter(k for r in manifest.column("reject_reason").to_pylist() if r is not None for k in reject_reason_kinds(r)).items(),
            key=lambda kv: (-kv[1], kv[0]))),
    }
