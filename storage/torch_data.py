"""A torch Dataset over a published version (imported only when asked for, so torch stays optional)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from aurad_models.pixels import stored_to_unit
from storage.layout import Root


class VersionTorchDataset(Dataset):
    """Samples of one version as float32 tensors; opens its arrays lazily, once per worker process."""

    def __init__(self, root: Root, dataset: str, version: str, indices: np.ndarray, sample_ids: list[str],
                 checksums: tuple[list[str], list[str]] | None = None) -> None:
        self.root = root
        self.dataset = dataset
        self.version = version
        self.indices = np.asarray(indices, dtype=np.int64)
        self.sample_ids = list(sample_ids)
        self.checksums = checksums  # (image_sha256, masks_sha256) per item: every read is verified
        self._arrays: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return len(self.indices)

    def _open(self) -> dict[str, Any]:
        if self._arrays is None:
            from storage.reader import open_version_arrays

            self._arrays = open_version_arrays(self.root, self.root.path(self.dataset, self.version))
        return self._arrays

    def __getitem__(self, i: int) -> dict[str, Any]:
        arrays = self._open()
        index = int(self.indices[i])
        stored, masks, anatomy = (np.asarray(arrays[name][index]) for name in ("images", "masks", "anatomy"))
        if self.checksums is not None:
            from storage.errors import StorageError
            from storage.verify import image_sha256, masks_sha256

            image_ok = image_sha256(stored) == self.checksums[0][i]
            masks_ok = masks_sha256(masks, anatomy) == self.checksums[1][i]
            if not (image_ok and masks_ok):
                damaged = "images.zarr" if not image_ok else "masks.zarr / anatomy.zarr"
                raise StorageError(f"sample {self.sample_ids[i]} (index {index}) of {self.dataset}/{self.version}: "
                                   f"{damaged} bytes do not match the manifest's checksum")
        return {
            "image": torch.from_numpy(stored_to_unit(stored)[None]),
            "masks": torch.from_numpy(masks.astype(np.float32)),
            "anatomy": torch.from_numpy(anatomy.astype(np.float32)),
            "index": index,
            "sample_id": self.sample_ids[i],
        }
