"""Where things live under a storage root, and the few filesystem operations the layout needs.

    <root>/<dataset>/catalog/<version>.json      published versions (visibility = this file exists)
    <root>/<dataset>/<version>/                  a version's files (v0001, v0002, ...)
    <root>/<dataset>/_staging/<build_id>/        work in progress
    <root>/<dataset>/_locks/<build_id>.lock      held while a build of that id runs (local roots)

`Root` wraps an fsspec filesystem so that the same code serves a local folder and any fsspec URL. On a
local folder it uses the OS directly where atomicity matters: replace-on-write for small files, rename
for moving a whole directory, hard links for exclusive creation.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from storage.errors import StorageError

logger = logging.getLogger(__name__)

CATALOG_DIR = "catalog"
STAGING_DIR = "_staging"
LOCKS_DIR = "_locks"
MANIFEST_DIR = "manifest"
LEDGER_DIR = "_ledger"
VERSION_FILE = "version.json"
STAGING_PARAMS_FILE = "_staging.json"

_NAME = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9._-]*$")
_VERSION = re.compile(r"^v(\d{4,})$")
_MAX_NAME_LENGTH = 128


RESERVED_NAMES = frozenset({"models", "runs", "training"})


def check_name(name: object, what: str) -> str:
    """A dataset, version or build name that is safe as one path component, else StorageError.

    Allowed: letters, digits, '.', '_', '-', not starting with '.' or '_' (no traversal, no hidden or
    private names, no separators).
    """
    if not isinstance(name, str) or not name:
        raise StorageError(f"{what} name must be a non-empty string, got {name!r}")
    if len(name) > _MAX_NAME_LENGTH or not _NAME.match(name):
        raise StorageError(
            f"unsafe {what} name {name!r}: use only letters, digits, '.', '_', '-' (at most "
            f"{_MAX_NAME_LENGTH}), not starting with '.' or '_'"
        )
    if what == "dataset" and name in RESERVED_NAMES:
        raise StorageError(f"{name!r} cannot name a dataset: the storage root keeps its {', '.join(sorted(RESERVED_NAMES))} "
                           "folders under those names (the model registry, the run ledger, training runs)")
    return name


def version_name(number: int) -> str:
    """v0001, v0002, ... (more digits past 9999, still sorting by number through `version_number`)."""
    return f"v{number:04d}"


def version_number(name: str) -> int | None:
    """The integer of a version name like v0003; None for anything else."""
    match = _VERSION.match(name)
    return int(match.group(1)) if match else None


def manifest_part_name(shard: int, n_shards: int) -> str:
    """Deterministic part name: part-00003-of-00016.parquet."""
    return f"part-{shard:05d}-of-{n_shards:05d}.parquet"


def ledger_name(shard: int) -> str:
    return f"shard-{shard:05d}.json"


def check_relative_path(relpath: str, reserved: frozenset[str]) -> str:
    """A relative path for a free-form file (e.g. quality/report.html): safe components, not reserved."""
    parts = str(relpath).replace("\\", "/").split("/")
    for part in parts:
        check_name(part, "file path component")
    if parts[0] in reserved:
        raise StorageError(f"{relpath!r} would overwrite {parts[0]!r}, which the storage layer owns")
    return "/".join(parts)


class Root:
    """A storage root: a local folder or any fsspec URL, plus its storage options.

    Pickles as (url, storage_options) so it can travel to other processes.
    """

    def __init__(self, url: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self.fs, self.base = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __reduce__(self):
        return (Root, (self.url, self.storage_options))

    def __repr__(self) -> str:
        return f"Root({self.url!r})"

    # --- paths -----------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """Filesystem path (no protocol) of parts joined under the root."""
        return "/".join([self.base.rstrip("/"), *parts])

    def url_of(self, path: str) -> str:
        """What a user passes to zarr / pyarrow / fsspec: a plain path locally, else a URL."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    # --- queries ---------------------------------------------------------------------------------

    def exists(self, path: str) -> bool:
        return os.path.exists(path) if self.is_local else self.fs.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path) if self.is_local else self.fs.isdir(path)

    def listdir(self, path: str) -> list[str]:
        """Names (not paths) directly under a directory; empty if it does not exist."""
        if self.is_local:
            try:
                return sorted(os.listdir(path))
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != path.rstrip("/")})

    def read_bytes(self, path: str) -> bytes:
        try:
            if self.is_local:
                return Path(path).read_bytes()
            return self.fs.cat_file(path)
        except FileNotFoundError:
            raise StorageError(f"missing file {self.url_of(path)}") from None

    # --- writes ----------------------------------------------------------------------------------

    def makedirs(self, path: str) -> None:
        if self.is_local:
            os.makedirs(path, exist_ok=True)
        else:
            self.fs.makedirs(path, exist_ok=True)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file; locally through a temporary file and a rename, so readers never see half."""
        parent = path.rsplit("/", 1)[0]
        self.makedirs(parent)
        if not self.is_local:
            self.fs.pipe_file(path, data)
            return
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create a file with its full content only if it does not exist; False if it does.

        Locally: write a temporary file, then hard-link it into place (link fails if the name exists), so
        the file never exists half-written. Elsewhere: fsspec's exclusive mode ('xb') where the
        filesystem has it, else check-then-write (not atomic on such stores).
        """
        parent = path.rsplit("/", 1)[0]
        self.makedirs(parent)
        if self.is_local:
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        try:
            with self.fs.open(path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError):
            logger.warning("%s has no exclusive create; falling back to check-then-write", type(self.fs).__name__)
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data)
            return True

    def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file or (recursive) a directory; nothing if it does not exist."""
        if not self.exists(path):
            return
        if self.is_local:
            if os.path.isdir(path):
                if not recursive:
                    raise StorageError(f"{path} is a directory")
                shutil.rmtree(path)
            else:
                os.unlink(path)
        else:
            self.fs.rm(path, recursive=recursive)

    def rename_dir(self, src: str, dst: str) -> bool:
        """Atomically move a local directory to a new name; False if the destination already exists."""
        if not self.is_local:
            raise StorageError(f"atomic rename is only available on local roots, not {self.url}")
        if os.path.exists(dst):
            return False
        try:
            os.rename(src, dst)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise
        return True

    def copy_tree(self, src: str, dst: str) -> None:
        """Copy every file under src to the same relative path under dst (file by file: no fsspec
        guessing whether to copy into or onto an existing folder)."""
        prefix = src.rstrip("/") + "/"
        sources = [p for p in self.fs.find(src) if p.startswith(prefix)]
        targets = [dst.rstrip("/") + "/" + p[len(prefix):] for p in sources]
        if sources:
            self.fs.copy(sources, targets)

    # --- zarr ------------------------------------------------------------------------------------

    def zarr_store(self, path: str, read_only: bool):
        """A zarr 3 store for a directory: LocalStore locally, FsspecStore (async-wrapped if need be) elsewhere."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(path, read_only=read_only)
        return FsspecStore.from_url(self.url_of(path), storage_options=self.storage_options or None, read_only=read_only)
