"""Real chest X-ray datasets -> dataset versions, on our one vocabulary and pixel contract.

    from storage.sources import import_source
    summary = import_source("siim-acr", "/data/siim", root="aurad-data", dataset="siim", image_size=256)

Adapters (`ADAPTERS`): "vindr-cxr", "chestx-det", "siim-acr", "jsrt", "nih-chestxray14", "generic".
Each module's docstring documents the real layout it reads, its relabel table and what it assumes.
De-identification: sample ids are hashes of dataset-relative paths; only allow-listed, non-identifying
DICOM fields reach metadata; file names are written out only where they carry no patient data (JSRT).
"""

from storage.sources.driver import ImportSummary, PreparedSample, import_source, prepare_sample
from storage.sources.records import (
    RecordError,
    RecordRef,
    RelabelResult,
    RelabelTable,
    SourceFormatError,
    SourceRecord,
    sample_id_for,
)
from storage.sources.registry import ADAPTERS, make_adapter

__all__ = [
    "ADAPTERS",
    "ImportSummary",
    "PreparedSample",
    "RecordError",
    "RecordRef",
    "RelabelResult",
    "RelabelTable",
    "SourceFormatError",
    "SourceRecord",
    "import_source",
    "make_adapter",
    "prepare_sample",
    "sample_id_for",
]
