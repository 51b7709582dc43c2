"""The manifest: one Parquet row per sample; row i of the concatenated parts is index i of every array.

`MANIFEST_SCHEMA` is checked when a shard is written and again when a version is read. Every part file
embeds it, so plain `pyarrow.parquet.read_table(<version>/manifest)` gets the same types.

    column                  type                                          null  meaning
    sample_id               string                                        no    unique within a version
    split                   string                                        yes   train / val / test (source datasets)
    prompt                  string                                        no    prompt / report text
    source_report           string                                        yes   the real report a prompt was read from
    findings                list<struct<label, side, zone, size: string>> no    may be empty; label not null
    seed                    int64                                         no    seed of the final try
    attempt_seeds           list<int64>                                   no    every try's seed, in order (last == seed)
    attempt_reject_reasons  list<string>                                  no    per try; null for the accepted try
    source                  string                                        yes   bank sample / source record it came from
    mask_source             string                                        no    exact | generated | user | box | none
    mask_model_id           string                                        yes
    image_model_id          string                                        yes
    scores                  map<string, double>                           no    every expert score
    accepted                bool                                          no
    reject_reason           string                                        yes
    metadata                map<string, string>                           no    free-form per-sample extras
    shard                   int32                                         no    filled by the writer
    index_in_shard          int32                                         no    filled by the writer
    image_sha256            string                                        no    filled by the writer: sha256 of the image bytes
    masks_sha256            string                                        no    filled by the writer: sha256 of pathology + anatomy bytes

Checksums hash the C-ordered bytes of the stored arrays: the image as little-endian uint16 (H, W); the
masks as the pathology (C, H, W) bytes followed by the anatomy (A, H, W) bytes, uint8.

Callers pass every column except the four writer-filled ones, as a `pa.Table` or a list of dicts
(`manifest_rows_to_table`); missing, extra or mistyped columns are a `StorageError` naming them. The
`OPTIONAL_COLUMNS` (nullable, added after manifest version 1) may be left out by a caller and are then
null; a part written before they existed reads back with them null.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from storage.errors import StorageError

MASK_SOURCES: tuple[str, ...] = ("exact", "generated", "user", "box", "none")

# What each column means, for documents written from the schema (the dataset card); the table above says
# the same for readers of this file.
COLUMN_MEANINGS: dict[str, str] = {
    "sample_id": "unique within a version",
    "split": "train / val / test (source datasets); empty for synthetic samples",
    "prompt": "the prompt (or report text) the sample was made from",
    "source_report": "the real radiology report the prompt was read from (`build.prompts.reports`, identifiers "
                     "scrubbed); empty for sampled prompts",
    "findings": "the prompt's findings: label, side, zone, size; may be empty (a normal image)",
    "seed": "seed of the final try: regenerates the sample",
    "attempt_seeds": "every try's seed, in order (the last is `seed`)",
    "attempt_reject_reasons": "per try, why the filter rejected it; null for the accepted try",
    "source": "the anatomy-bank sample or source record it came from",
    "mask_source": "exact | generated | user | box | none",
    "mask_model_id": "registry id of the mask generator",
    "image_model_id": "registry id of the image generator",
    "scores": "every expert score (accept.<expert> = that expert's verdict)",
    "accepted": "passed every expert of the filter; train on accepted rows only",
    "reject_reason": "why the final try was rejected",
    "metadata": "free-form per-sample extras (prompts of every try, ...)",
    "shard": "the shard (Parquet part, zarr shard) holding the sample",
    "index_in_shard": "row within the shard; the array index is the row's position in the whole manifest",
    "image_sha256": "sha256 of the image bytes (little-endian uint16, H x W)",
    "masks_sha256": "sha256 of the pathology then anatomy mask bytes (uint8)",
}

FINDING_TYPE = pa.struct(
    [
        pa.field("label", pa.string(), nullable=False),
        pa.field("side", pa.string()),
        pa.field("zone", pa.string()),
        pa.field("size", pa.string()),
    ]
)

CALLER_FIELDS: tuple[pa.Field, ...] = (
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("split", pa.string()),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("source_report", pa.string()),
    pa.field("findings", pa.list_(FINDING_TYPE), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("attempt_seeds", pa.list_(pa.int64()), nullable=False),
    pa.field("attempt_reject_reasons", pa.list_(pa.string()), nullable=False),
    pa.field("source", pa.string()),
    pa.field("mask_source", pa.string(), nullable=False),
    pa.field("mask_model_id", pa.string()),
    pa.field("image_model_id", pa.string()),
    pa.field("scores", pa.map_(pa.string(), pa.float64()), nullable=False),
    pa.field("accepted", pa.bool_(), nullable=False),
    pa.field("reject_reason", pa.string()),
    pa.field("metadata", pa.map_(pa.string(), pa.string()), nullable=False),
)
WRITER_FIELDS: tuple[pa.Field, ...] = (
    pa.field("shard", pa.int32(), nullable=False),
    pa.field("index_in_shard", pa.int32(), nullable=False),
    pa.field("image_sha256", pa.string(), nullable=False),
    pa.field("masks_sha256", pa.string(), nullable=False),
)

CALLER_SCHEMA = pa.schema(CALLER_FIELDS)
MANIFEST_SCHEMA = pa.schema(CALLER_FIELDS + WRITER_FIELDS, metadata={"aurad.manifest_version": "2"})
WRITER_COLUMNS: tuple[str, ...] = tuple(f.name for f in WRITER_FIELDS)
# Nullable columns added after manifest version 1: a caller may leave them out (null), old parts read them null.
OPTIONAL_COLUMNS: tuple[str, ...] = ("source_report",)


def _with_optional_columns(table: pa.Table, expected: pa.Schema) -> pa.Table:
    """The table with every missing `OPTIONAL_COLUMNS` entry added as nulls, at its place in `expected`."""
    for name in OPTIONAL_COLUMNS:
        if name not in table.column_names and name in expected.names:
            position = expected.get_field_index(name)
            before = [n for n in expected.names[:position] if n in table.column_names]
            at = table.column_names.index(before[-1]) + 1 if before else 0
            table = table.add_column(at, expected.field(name), pa.nulls(table.num_rows, expected.field(name).type))
    return table


# --- schema checks -------------------------------------------------------------------------------


def _loose(t: pa.DataType) -> pa.DataType:
    """The type with every nested field nullable: compares 'shape' apart from nullability."""
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _loose(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(t.key_type, _loose(t.item_type))
    if pa.types.is_list(t):
        return pa.list_(_loose(t.value_type))
    return t


def check_schema(schema: pa.Schema, expected: pa.Schema, where: str) -> None:
    """Raise StorageError naming every missing, unexpected or mistyped column (metadata is ignored)."""
    names = [f.name for f in schema]
    wanted = [f.name for f in expected]
    problems = []
    missing = [n for n in wanted if n not in names]
    extra = [n for n in names if n not in wanted]
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    for field in expected:
        if field.name in names:
            got = schema.field(field.name)
            if not got.type.equals(field.type):
                problems.append(f"column {field.name!r} has type {got.type}, expected {field.type}")
            elif got.nullable != field.nullable:
                problems.append(
                    f"column {field.name!r} is {'nullable' if got.nullable else 'not nullable'}, "
                    f"expected {'nullable' if field.nullable else 'not null'}"
                )
    if not problems and names != wanted:
        problems.append(f"columns are in the order {names}, expected {wanted}")
    if problems:
        raise StorageError(f"manifest schema mismatch in {where}: " + "; ".join(problems))


def _conform(table: pa.Table, expected: pa.Schema, where: str) -> pa.Table:
    """Reorder a caller's table to the expected schema, casting only where nothing but nullability or
    an all-null column differs; anything else is reported by `check_schema`."""
    table = _with_optional_columns(table, expected)
    names = set(table.column_names)
    if names != {f.name for f in expected}:
        check_schema(table.schema, expected, where)
    columns = []
    for field in expected:
        column = table.column(field.name)
        if not column.type.equals(field.type):
            same_shape = _loose(column.type).equals(_loose(field.type))
            if not (same_shape or pa.types.is_null(column.type)):
                check_schema(table.schema, expected, where)
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise StorageError(f"manifest column {field.name!r} in {where}: {error}") from None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=expected)


def _check_nulls(table: pa.Table, where: str) -> None:
    for field in table.schema:
        column = table.column(field.name)
        if not field.nullable and column.null_count:
            rows = [i for i, v in enumerate(column.is_null().to_pylist()) if v][:5]
            raise StorageError(f"manifest column {field.name!r} in {where} may not be null; nulls at rows {rows}")
    if "findings" in table.column_names and table.num_rows:
        labels = pc.struct_field(pc.list_flatten(table.column("findings")), "label")
        if labels.null_count:
            raise StorageError(f"manifest column 'findings' in {where}: every finding needs a label")


def _check_content(table: pa.Table, where: str) -> None:
    """Rules the types cannot say: unique ids, known mask sources, one reject reason per try."""
    ids = table.column("sample_id")
    if pc.count_distinct(ids).as_py() != table.num_rows:
        counts = pc.value_counts(ids).to_pylist()
        dupes = [c["values"] for c in counts if c["counts"] > 1][:5]
        raise StorageError(f"duplicate sample_id in {where}: {dupes}")
    bad = set(table.column("mask_source").to_pylist()) - set(MASK_SOURCES)
    if bad:
        raise StorageError(f"unknown mask_source {sorted(bad)} in {where}; known: {', '.join(MASK_SOURCES)}")
    rows = zip(
        table.column("sample_id").to_pylist(),
        table.column("seed").to_pylist(),
        table.column("attempt_seeds").to_pylist(),
        table.column("attempt_reject_reasons").to_pylist(),
    )
    for sample_id, seed, seeds, reasons in rows:
        if len(seeds) != len(reasons):
            raise StorageError(
                f"sample {sample_id!r} in {where}: {len(seeds)} attempt_seeds but {len(reasons)} attempt_reject_reasons"
            )
        if seeds and seeds[-1] != seed:
            raise StorageError(f"sample {sample_id!r} in {where}: seed {seed} is not the last attempt seed {seeds[-1]}")


# --- callers' rows -------------------------------------------------------------------------------


def manifest_rows_to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows as dicts (every column except the writer-filled ones) -> a table with the caller schema.

    Findings are dicts {label, side, zone, size} (e.g. `Finding.as_record()`); scores and metadata dicts.
    """
    if isinstance(rows, (str, bytes, dict)) or not isinstance(rows, Sequence):
        raise StorageError(f"manifest rows must be a list of dicts, got {type(rows).__name__}")
    wanted = [f.name for f in CALLER_FIELDS]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise StorageError(f"manifest row {i} must be a dict, got {type(row).__name__}")
        missing = [n for n in wanted if n not in row and n not in OPTIONAL_COLUMNS]
        extra = [k for k in row if k not in wanted]
        if missing or extra:
            writer = [k for k in extra if k in WRITER_COLUMNS]
            hint = f" ({writer} are filled by the writer)" if writer else ""
            raise StorageError(f"manifest row {i}: missing columns {missing}, unexpected columns {extra}{hint}")
    arrays = []
    for field in CALLER_FIELDS:
        values = [row.get(field.name) for row in rows]
        try:
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as error:
            hint = " (pass findings as dicts, e.g. Finding.as_record())" if field.name == "findings" else ""
            raise StorageError(f"manifest column {field.name!r} is not {field.type}: {error}{hint}") from None
    table = pa.Table.from_arrays(arrays, schema=CALLER_SCHEMA)
    _check_nulls(table, "the given rows")
    return table


def validate_caller_table(rows: pa.Table | Sequence[dict[str, Any]], where: str) -> pa.Table:
    """A caller's rows, checked and conformed to `CALLER_SCHEMA`."""
    if isinstance(rows, pa.Table):
        writer = [c for c in rows.column_names if c in WRITER_COLUMNS]
        if writer:
            raise StorageError(f"manifest rows for {where} must not contain {writer}: the writer fills them")
        table = _conform(rows, CALLER_SCHEMA, where)
        _check_nulls(table, where)
    else:
        table = manifest_rows_to_table(rows)
    _check_content(table, where)
    return table


def add_writer_columns(
    table: pa.Table, shard: int, image_sha256: Sequence[str], masks_sha256: Sequence[str]
) -> pa.Table:
    """The caller's table plus shard, index_in_shard and checksums, with `MANIFEST_SCHEMA`."""
    n = table.num_rows
    columns = list(table.columns) + [
        pa.array([shard] * n, pa.int32()),
        pa.array(range(n), pa.int32()),
        pa.array(list(image_sha256), pa.string()),
        pa.array(list(masks_sha256), pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=MANIFEST_SCHEMA)


def check_manifest_table(table: pa.Table, where: str) -> pa.Table:
    """A stored manifest (part) checked against `MANIFEST_SCHEMA`; returned with its exact schema. A part
    written before an `OPTIONAL_COLUMNS` column existed gets it as nulls."""
    table = _with_optional_columns(table, MANIFEST_SCHEMA)
    check_schema(table.schema, MANIFEST_SCHEMA, where)
    _check_nulls(table, where)
    return table.replace_schema_metadata(MANIFEST_SCHEMA.metadata)
