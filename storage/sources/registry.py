"""Adapter names -> adapter classes. A read-only mapping: adding a source means adding a module here."""

from __future__ import annotations

import inspect
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
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"adapter {name!r} has no option {', '.join(map(repr, unknown))}; its options: {', '.join(accepted) or 'none'}")
    try:
        return cls(path, **options)
    except TypeError as error:
        raise ValueError(f"bad options for adapter {name!r}: {error}") from None
