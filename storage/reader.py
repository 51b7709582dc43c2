"""Reading a published version: manifest, arrays, dask, torch, selection and a summary.

    ds = open_dataset(root, "synth-cxr")                 # latest published version
    idx = ds.select(findings=["effusion"])               # accepted samples with an effusion
    ds.images[idx[0]], ds.masks[idx[0]]                  # zarr arrays, one image per chunk

Nothing here is needed to read a version: `pyarrow.parquet.read_table(<version>/manifest)` and
`zarr.open_array(<version>/images.zarr)` give the same data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from storage.arrays import ARRAY_NAMES, array_dir
from storage.catalog import RELEASED, read_entry, resolve_version
from storage.errors import StorageError
from storage.layout import VERSION_FILE, Root, check_name
from storage.manifest import manifest_counts, read_parts

if TYPE_CHECKING:
    import dask.array
    import pandas as pd
    import torch.utils.data


def open_version_arrays(root: Root, version_dir: str) -> dict[str, zarr.Array]:
    """The three arrays, read-only, through the version's consolidated metadata (one metadata read)."""
    store = root.zarr_store(version_dir, read_only=True)
    try:
        group = zarr.open_group(store, mode="r")
        return {name: group[array_dir(name)] for name in ARRAY_NAMES}
    except (FileNotFoundError, KeyError) as error:
        raise StorageError(f"missing or unreadable arrays in {root.url_of(version_dir)}: {error}") from None


class DatasetVersion:
    """One published version of a dataset, opened read-only and checked for consistency."""

    def __init__(self, root: Root, dataset: str, version: str) -> None:
        self.root = root
        self.name = dataset
        self.version = version
        self._dir = root.path(dataset, version)
        self.lineage: dict[str, Any] = json.loads(root.read_bytes(f"{self._dir}/{VERSION_FILE}"))
        try:
            n_shards = int(self.lineage["n_shards"])
        except (KeyError, TypeError, ValueError):
            raise StorageError(f"{self.path}/{VERSION_FILE} has no valid n_shards") from None
        # Cheap checks at every open: each manifest part against the checksum version.json recorded for it,
        # the counts against the catalog entry. (`verify()` re-hashes every sample's arrays.)
        part_sha = {int(s["shard"]): s["manifest_sha256"] for s in self.lineage.get("shards", []) if "manifest_sha256" in s}
        self.manifest: pa.Table = read_parts(root, self._dir, range(n_shards), n_shards, part_sha)
        self._check_counts()
        self._arrays = open_version_arrays(root, self._dir)
        for name, array in self._arrays.items():
            if array.shape[0] != self.manifest.num_rows:
                raise StorageError(
                    f"{name}.zarr in {self.path} has {array.shape[0]} samples but the manifest has "
                    f"{self.manifest.num_rows} rows"
                )

    def _check_counts(self) -> None:
        entry = read_entry(self.root, self.name, self.version)
        self.status: str = entry.get("status", RELEASED)  # released, or a candidate not promoted yet
        accepted = int(pc.sum(self.manifest.column("accepted")).as_py() or 0)
        for what, recorded, found in (("samples", entry.get("n_samples"), self.manifest.num_rows),
                                      ("accepted samples", entry.get("accepted"), accepted)):
            if recorded is not None and int(recorded) != found:
                raise StorageError(f"{self.path}: the manifest holds {found} {what}, its catalog entry says {recorded}: "
                                   "the manifest was changed after publishing (`aurad datasets verify` checks every sample)")

    def verify(self, sample: int | None = None, seed: int = 0, progress=None):
        """Re-hash every sample's arrays (or a seeded `sample` of them) against the manifest (`storage.verify`)."""
        from storage.verify import verify_version

        return verify_version(self, sample, seed, progress)

    def read_sample(self, index: int, verify: bool = False) -> dict[str, np.ndarray]:
        """One sample's stored arrays {image (H, W) uint16, masks (C, H, W), anatomy (A, H, W)}; with `verify`,
        checked against its manifest checksums (a StorageError names the sample and the file)."""
        from storage.verify import sample_problems

        image, masks, anatomy = (np.asarray(a[index]) for a in (self.images, self.masks, self.anatomy))
        if verify:
            problems = sample_problems(self, index, image, masks, anatomy)
            if problems:
                raise StorageError("; ".join(problems))
        return {"image": image, "masks": masks, "anatomy": anatomy}

    def __reduce__(self):
        return (DatasetVersion, (self.root, self.name, self.version))

    def __repr__(self) -> str:
        return f"DatasetVersion({self.name!r}, {self.version!r}, n={len(self)}, path={self.path!r})"

    def __len__(self) -> int:
        return self.manifest.num_rows

    @property
    def path(self) -> str:
        return self.root.url_of(self._dir)

    @property
    def images(self) -> zarr.Array:
        """(N, H, W) uint16, attributes value_range / bits_stored / photometric_interpretation."""
        return self._arrays["images"]

    @property
    def masks(self) -> zarr.Array:
        """(N, C, H, W) uint8 {0, 1} pathology masks; channel order in attrs['channel_names']."""
        return self._arrays["masks"]

    @property
    def anatomy(self) -> zarr.Array:
        """(N, A, H, W) uint8 {0, 1} anatomy masks; channel order in attrs['channel_names']."""
        return self._arrays["anatomy"]

    @property
    def pathology_channels(self) -> tuple[str, ...]:
        return tuple(self.masks.attrs["channel_names"])

    @property
    def anatomy_channels(self) -> tuple[str, ...]:
        return tuple(self.anatomy.attrs["channel_names"])

    def to_pandas(self) -> pd.DataFrame:
        return self.manifest.to_pandas()

    def to_dask(self) -> dict[str, dask.array.Array]:
        """The arrays as dask arrays with one block per zarr shard (a whole file per task)."""
        import dask.array as da

        return {name: da.from_zarr(array, chunks=array.shards or array.chunks) for name, array in self._arrays.items()}

    def select(
        self, findings: list[str] | tuple[str, ...] | None = None, accepted_only: bool = True, split: str | None = None
    ) -> np.ndarray:
        """Indices (ascending) of samples having ALL the listed findings, optionally accepted / of a split."""
        if isinstance(findings, str):
            findings = [findings]
        wanted = list(findings or [])
        unknown = [f for f in wanted if f not in self.pathology_channels]
        if unknown:
            raise StorageError(f"unknown findings {unknown} for {self.path}; known: {', '.join(self.pathology_channels)}")
        keep = np.ones(len(self), dtype=bool)
        if accepted_only:
            keep &= self.manifest.column("accepted").to_numpy(zero_copy_only=False)
        if split is not None:
            keep &= pc.fill_null(pc.equal(self.manifest.column("split"), split), False).to_numpy(zero_copy_only=False)
        if wanted:
            column = self.manifest.column("findings").combine_chunks()
            rows = pc.list_parent_indices(column).to_numpy()
            labels = pc.struct_field(pc.list_flatten(column), "label").to_numpy(zero_copy_only=False)
            for label in wanted:
                has = np.zeros(len(self), dtype=bool)
                has[rows[labels == label]] = True
                keep &= has
        return np.flatnonzero(keep)

    def torch_dataset(self, indices: Any = None, accepted_only: bool = True, verify: bool = False) -> torch.utils.data.Dataset:
        """A map-style torch Dataset of dicts {image (1,H,W), masks (C,H,W), anatomy (A,H,W): float32 in
        [0, 1], index, sample_id}. With no indices: every sample (accepted ones if accepted_only);
        given indices are used as they are. With `verify`, each item is checked against its manifest
        checksums as it is read. Picklable, for DataLoader workers."""
        from storage.torch_data import VersionTorchDataset

        if indices is None:
            chosen = self.select(accepted_only=accepted_only)
        else:
            chosen = np.asarray(indices, dtype=np.int64).reshape(-1)
            if chosen.size and (chosen.min() < 0 or chosen.max() >= len(self)):
                raise StorageError(f"indices out of range for {self.path} with {len(self)} samples")
        column = lambda name: self.manifest.column(name).to_numpy(zero_copy_only=False)[chosen].tolist()  # noqa: E731
        checksums = (column("image_sha256"), column("masks_sha256")) if verify else None
        return VersionTorchDataset(self.root, self.name, self.version, chosen, column("sample_id"), checksums)

    def summary(self) -> dict[str, Any]:
        """Counts and lineage highlights (every scalar entry of version.json) for `aurad datasets show`."""
        counts = manifest_counts(self.manifest)
        n = counts["samples"]
        highlights = {k: v for k, v in sorted(self.lineage.items()) if isinstance(v, (str, int, float, bool))}
        return {
            "dataset": self.name,
            "version": self.version,
            "status": self.status,
            "path": self.path,
            "n_samples": n,
            "accepted": counts["accepted"],
            "acceptance_rate": counts["accepted"] / n if n else 0.0,
            "findings_accepted": counts["findings_accepted"],
            "splits": counts["splits"],
            "mask_sources": counts["mask_sources"],
            "reject_reasons": counts["reject_reasons"],
            "image_size": self.images.shape[-1],
            "pathology_channels": list(self.pathology_channels),
            "anatomy_channels": list(self.anatomy_channels),
            "lineage": highlights,
        }


def open_dataset(
    root: str | Path, dataset: str, version: str | int = "latest", storage_options: dict[str, Any] | None = None
) -> DatasetVersion:
    """Open a published version ('latest', 'v0002' or 2). Unknown or unpublished names raise StorageError."""
    r = root if isinstance(root, Root) else Root(root, storage_options)
    check_name(dataset, "dataset")
    return DatasetVersion(r, dataset, resolve_version(r, dataset, version))
