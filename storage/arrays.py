"""The three zarr 3 arrays of a version: their shapes, chunking, codecs and attributes.

One image per inner chunk (so one image reads alone, ~2 ms) and one zarr shard per pipeline shard (so a
pipeline shard is one file, and a writer that owns a pipeline shard owns its zarr shard: concurrent
writers never share one, which zarr would silently corrupt).

Codecs, measured here on 256 synthetic 256x256 samples (12-bit smooth-noise images, disc masks; one
machine, 2 shared cores, so the speeds are rough):
- images (uint16): Blosc-zstd level 1 with bit-shuffle: 1.8x smaller at ~170 MB/s write, against 1.3x
  for plain Zstd level 1 (~140 MB/s); the shuffle is what makes 12-16 bit pixels compress. Level 3
  with bit-shuffle gave the same ratio, slower.
- masks (uint8 {0,1}): plain Zstd level 1: ~600x smaller at ~400 MB/s; Blosc-zstd (shuffles do nothing
  for one-byte values) compressed less (~380x at level 1) for no speed gain. Masks stay uint8 rather
  than bit-packed: zstd already removes the 7 empty bits, and readers get plain {0,1} arrays.
bench/storage.py gives the whole picture: 2,000 samples, 3,015 MB -> 178 MB on disk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from zarr.codecs import BloscCodec, ZstdCodec

from aurad_models.pixels import STORED_ATTRIBUTES, STORED_DTYPE
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES

ARRAY_NAMES: tuple[str, ...] = ("images", "masks", "anatomy")
MASK_DTYPE = np.uint8


class ArraySpec(BaseModel):
    """What a version's arrays hold: square images of `image_size` and the mask channels, in order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(gt=0)
    pathology_channels: tuple[str, ...] = PATHOLOGIES
    anatomy_channels: tuple[str, ...] = ANATOMY_STRUCTURES

    @field_validator("pathology_channels", "anatomy_channels")
    @classmethod
    def _unique_channels(cls, channels: tuple[str, ...]) -> tuple[str, ...]:
        if not channels:
            raise ValueError("at least one channel is needed")
        if len(set(channels)) != len(channels):
            raise ValueError(f"channel names repeat: {list(channels)}")
        return channels


def image_codecs() -> list[Any]:
    return [BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")]


def mask_codecs() -> list[Any]:
    return [ZstdCodec(level=1)]


def array_layouts(spec: ArraySpec, n_samples: int, shard_size: int, attrs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Keyword arguments for `zarr.create_array`, per array name (also used by the benchmark's raw zarr)."""
    size = spec.image_size
    per_shard = min(shard_size, n_samples)
    n_path, n_anat = len(spec.pathology_channels), len(spec.anatomy_channels)
    mask_attrs = {"values": [0, 1]}
    return {
        "images": dict(
            shape=(n_samples, size, size),
            dtype=STORED_DTYPE,
            chunks=(1, size, size),
            shards=(per_shard, size, size),
            compressors=image_codecs(),
            fill_value=0,
            dimension_names=("sample", "y", "x"),
            attributes={**attrs, **STORED_ATTRIBUTES},
        ),
        "masks": dict(
            shape=(n_samples, n_path, size, size),
            dtype=MASK_DTYPE,
            chunks=(1, n_path, size, size),
            shards=(per_shard, n_path, size, size),
            compressors=mask_codecs(),
            fill_value=0,
            dimension_names=("sample", "channel", "y", "x"),
            attributes={**attrs, **mask_attrs, "channel_names": list(spec.pathology_channels)},
        ),
        "anatomy": dict(
            shape=(n_samples, n_anat, size, size),
            dtype=MASK_DTYPE,
            chunks=(1, n_anat, size, size),
            shards=(per_shard, n_anat, size, size),
            compressors=mask_codecs(),
            fill_value=0,
            dimension_names=("sample", "channel", "y", "x"),
            attributes={**attrs, **mask_attrs, "channel_names": list(spec.anatomy_channels)},
        ),
    }


def array_dir(name: str) -> str:
    """images -> images.zarr"""
    return f"{name}.zarr"
