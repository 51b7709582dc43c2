"""The adapter interface, and small helpers the adapters share (index files, DICOM/bitmap records)."""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Iterable, Sequence

import pandas as pd

from storage.sources.records import RecordError, RecordRef, RelabelTable, SourceFormatError, SourceRecord

logger = logging.getLogger(__name__)


class SourceAdapter(ABC):
    """One real dataset's layout. Constructed on the dataset's root folder plus the adapter's options.

    `scan` reads only the index (CSV / JSON / file listing) and may raise `SourceFormatError`; `load`
    reads one record's pixels and may raise `RecordError`.
    """

    name: ClassVar[str]
    relabel: ClassVar[RelabelTable]
    # True only where the dataset's file names are known to carry no patient data (JSRT's case numbers);
    # elsewhere names are UIDs or patient numbers and only their hash is written out.
    names_are_safe: ClassVar[bool] = False

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceFormatError(f"{self.name}: dataset folder {self.root} does not exist")

    @abstractmethod
    def scan(self) -> list[RecordRef]:
        """Every record of the dataset, in a deterministic order, without reading pixels."""

    @abstractmethod
    def load(self, ref: RecordRef) -> SourceRecord:
        """One record's pixels, masks and labels."""

    def options(self) -> dict[str, object]:
        """The adapter's settings, for the version's lineage (override where there are any)."""
        return {}

    def display_name(self, relative_path: str) -> str | None:
        """What may be written out to name a record: its path when names are safe, else nothing."""
        return relative_path if self.names_are_safe else None


def read_table(path: Path, required: Sequence[str], what: str, rename: dict[str, str] | None = None) -> pd.DataFrame:
    """A CSV index as strings, with a clear error naming the file and any missing required column.

    Column names are stripped of surrounding spaces (SIIM's header reads `ImageId, EncodedPixels`) and
    then renamed with `rename`; blank trailing columns (NIH's files end rows with commas) are dropped.
    """
    if not path.is_file():
        raise SourceFormatError(f"{what}: index file {path} is missing")
    try:  # compression from the suffix: the published .csv.gz files are read as they are
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, compression="infer")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as error:
        # OSError / EOFError: a damaged or truncated .gz (gzip.BadGzipFile is an OSError)
        raise SourceFormatError(f"{what}: {path} is not a readable CSV file ({type(error).__name__}: {error})") from None
    table.columns = [str(c).strip() for c in table.columns]
    table = table.rename(columns=rename or {})
    blank = [c for c in table.columns if c.startswith("Unnamed:") and (table[c].str.strip() == "").all()]
    table = table.drop(columns=blank)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise SourceFormatError(
            f"{what}: {path} lacks required column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {', '.join(repr(c) for c in table.columns)}"
        )
    return table


def find_index(root: Path, candidates: Sequence[str], what: str) -> str:
    """The first of `candidates` (paths relative to `root`) that is a file, or a SourceFormatError listing
    where it looked. Each candidate is also tried gzipped (`.gz`), as some mirrors publish them."""
    for candidate in candidates:
        for name in (candidate, f"{candidate}.gz") if not candidate.endswith(".gz") else (candidate,):
            if (root / name).is_file():
                return name
    raise SourceFormatError(f"{what}: no index file in {root} (looked for {', '.join(candidates)}, also gzipped)")


def parse_float(value: str, what: str, where: str) -> float:
    """A CSV number, or a RecordError naming what could not be read."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RecordError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise RecordError(f"{where}: {what} is not finite")
    return number


def index_files(root: Path, suffixes: Iterable[str]) -> dict[str, Path]:
    """File name (lower case) -> path for every file under `root` with one of `suffixes`; a name found
    twice is dropped with a warning (ambiguous)."""
    suffixes = tuple(s.lower() for s in suffixes)
    found: dict[str, Path] = {}
    duplicates: set[str] = set()
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file():
            key = path.name.lower()
            if key in found:
                duplicates.add(key)
            found[key] = path
    for key in duplicates:
        del found[key]
    if duplicates:
        logger.warning("%d file names occur more than once under %s and are ignored as ambiguous", len(duplicates), root)
    return found


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def spacing_metadata(spacing: tuple[float, float] | None) -> dict[str, str]:
    if spacing is None:
        return {}
    return {"source_pixel_spacing_mm": f"{spacing[0]:g},{spacing[1]:g}"}
