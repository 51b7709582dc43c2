"""`import_source_flow`: import a real CXR dataset (VinDr-CXR, ChestX-Det, SIIM-ACR, JSRT/SCR, NIH boxes,
a generic folder) as a new dataset version.

Thin wiring over `storage.sources.import_source`, which streams records, quarantines broken ones and
publishes atomically; rerunning with the same parameters resumes an import that died part-way.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from storage.sources import ADAPTERS, import_source

logger = logging.getLogger(__name__)


class ImportSourceParameters(BaseModel):
    """What to import and where; shown as a form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(description=f"source layout: one of {', '.join(ADAPTERS)}")
    path: str = Field(description="the dataset's folder, as downloaded and unpacked")
    root: str = Field("aurad-data", description="storage root")
    dataset: str = Field(description="name of the dataset to add a version to")
    image_size: int = Field(256, gt=0, description="stored square size in pixels")
    shard_size: int = Field(64, gt=0, description="samples per shard (one write task, one zarr shard)")
    split: str | None = Field(None, description="split for every record (default: the dataset's own, if any)")
    options: dict[str, Any] = Field(default_factory=dict, description="adapter options (see its docstring)")
    build_id: str | None = Field(None, description="default: a fingerprint of the inputs, so reruns resume")
    progress: bool = Field(False, description="show a progress bar of the import")

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, name: str) -> str:
        if name not in ADAPTERS:
            raise ValueError(f"unknown adapter {name!r}; known: {', '.join(ADAPTERS)}")
        return name


class ImportSourceResult(BaseModel):
    """The published version and the import's counts (quarantined records by hashed id and reason)."""

    dataset: str
    version: str
    build_id: str
    imported: int
    quarantined: list[tuple[str, str]]
    counts: dict[str, int]
    flags: dict[str, int]
    splits: dict[str, int]


@flow(name="aurad-import-source", log_prints=False)
def import_source_flow(params: ImportSourceParameters) -> ImportSourceResult:
    """Import `params.path` through adapter `params.adapter` into `params.root`/`params.dataset`."""
    summary = import_source(
        params.adapter,
        params.path,
        root=params.root,
        dataset=params.dataset,
        image_size=params.image_size,
        shard_size=params.shard_size,
        split=params.split,
        options=params.options,
        build_id=params.build_id,
        progress=params.progress,
    )
    get_run_logger().info(
        "published %s/%s: %d imported, %d quarantined",
        summary.dataset, summary.version, summary.imported, len(summary.quarantined),
    )
    return ImportSourceResult(**summary.as_dict())
