"""Versioned datasets: Zarr arrays + Parquet manifests, atomic publish, resumable staging, a catalog.

    <root>/<dataset>/catalog/<version>.json     one file per published version (visibility = it exists)
    <root>/<dataset>/<version>/                  v0001, v0002, ...
        manifest/part-00000-of-00004.parquet     one part per shard; row i <-> array index i
        images.zarr  (N, H, W) uint16            zarr 3, one image per chunk, one zarr shard per pipeline shard
        masks.zarr   (N, C, H, W) uint8 {0,1}    pathology masks, attrs['channel_names']
        anatomy.zarr (N, A, H, W) uint8 {0,1}    anatomy masks, attrs['channel_names']
        version.json                             lineage
        quality/ ...                             free-form files the publisher adds
        _ledger/, _staging.json                  the build's own records (per-shard checksums, parameters)
    <root>/<dataset>/_staging/<build_id>/        work in progress, never listed

The version folder is also a zarr group with consolidated metadata. The manifest schema is documented
in `storage.schema` (MANIFEST_SCHEMA). Writing: `stage_version` -> `StagedVersion.write_shard` ->
`StagedVersion.publish`. Reading: `open_dataset` -> `DatasetVersion`.
"""

from storage.arrays import ArraySpec
from storage.catalog import find_published_build, list_datasets, list_versions, promote
from storage.errors import StorageError
from storage.reader import DatasetVersion, open_dataset
from storage.schema import MANIFEST_SCHEMA, MASK_SOURCES, manifest_rows_to_table
from storage.staging import StagedVersion, build_lock, stage_version

__all__ = [
    "MANIFEST_SCHEMA",
    "MASK_SOURCES",
    "ArraySpec",
    "DatasetVersion",
    "StagedVersion",
    "StorageError",
    "find_published_build",
    "list_datasets",
    "list_versions",
    "manifest_rows_to_table",
    "open_dataset",
    "promote",
    "build_lock",
    "stage_version",
]
