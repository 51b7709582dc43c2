"""Adapter names -> adapter classes. A read-only mapping: adding a source means adding a module here."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from storage.sources.base import SourceAdapter
from storage.sources.chestx_det import ChestXDet
from storage.sources.generic import GenericFolder
from storage.sources.jsrt import JSRT
from storage.sources.nih import NIHBoxes
from storage.sources.siim import SIIMPneumothorax
from storage.sources.vindr import VinDrCXR

ADAPTERS: Mapping[str, type[SourceAdapter]] = MappingProxyType(
    {cls.name: cls for cls in (VinDrCXR, ChestXDet, SIIMPneumothorax, JSRT, NIHBoxes, GenericFolder)}
)


def make_adapter(name: str, path: str | Path, **options: Any) -> SourceAdapter:
    """The adapter `name` on the dataset folder `path`; unknown names and options are clear errors."""
    try:
        cls = ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown source adapter {name!r}; known: {', '.join(ADAPTERS)}") from None
    try:
        return cls(path, **options)
    except TypeError as error:
        raise TypeError(f"bad options for adapter {name!r}: {error}") from None
