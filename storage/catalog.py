"""The catalog: one small JSON file per published version, `<root>/<dataset>/catalog/<version>.json`.

A version is published exactly when its catalog entry exists. The entry is created last, exclusively,
after the version's files are complete, so a reader never sees a half-written version. Its `status` is
`released` or `candidate`: `latest` is the newest *released* version (a candidate opens only by its id
until it is promoted), and `<root>/<dataset>/LATEST` holds that version's id for readers without this
package. Entries without a status (older stores) count as released.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from storage.errors import StorageError
from storage.layout import CATALOG_DIR, Root, check_name, version_name, version_number

_ENTRY_SUFFIX = ".json"
RELEASED = "released"
CANDIDATE = "candidate"
LATEST_POINTER = "LATEST"


def _root(root: str | Path | Root, storage_options: dict[str, Any] | None = None) -> Root:
    return root if isinstance(root, Root) else Root(root, storage_options)


def published_versions(root: Root, dataset: str) -> list[str]:
    """Published versions of a dataset, oldest first (by number); empty if none."""
    names = root.listdir(root.path(dataset, CATALOG_DIR))
    versions = [n[: -len(_ENTRY_SUFFIX)] for n in names if n.endswith(_ENTRY_SUFFIX)]
    return sorted((v for v in versions if version_number(v) is not None), key=version_number)


def find_published_build(
    root: str | Path | Root, dataset: str, build_id: str, storage_options: dict[str, Any] | None = None
) -> str | None:
    """The published version a build id became, or None: lets a rerun of a finished build find it."""
    r = _root(root, storage_options)
    check_name(dataset, "dataset")
    for version in published_versions(r, dataset):
        if read_entry(r, dataset, version).get("build_id") == build_id:
            return version
    return None


def list_datasets(root: str | Path | Root, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Datasets under a root that have at least one published version, sorted by name."""
    r = _root(root, storage_options)
    if not r.isdir(r.base):
        raise StorageError(f"storage root {r.url} does not exist")
    names = []
    for name in r.listdir(r.base):
        try:
            check_name(name, "dataset")
        except StorageError:
            continue
        if published_versions(r, name):
            names.append(name)
    return names


def list_versions(
    root: str | Path | Root, dataset: str, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Published versions of a dataset, oldest first. An unknown dataset is a StorageError listing the known."""
    r = _root(root, storage_options)
    check_name(dataset, "dataset")
    versions = published_versions(r, dataset)
    if not versions:
        known = list_datasets(r) if r.isdir(r.base) else []
        raise StorageError(
            f"no published dataset {dataset!r} under {r.url}; published datasets: {', '.join(known) or 'none'}"
        )
    return versions


def version_status(root: Root, dataset: str, version: str) -> str:
    return read_entry(root, dataset, version).get("status", RELEASED)


def released_versions(root: Root, dataset: str) -> list[str]:
    """Released versions of a dataset, oldest first (candidates left out)."""
    return [v for v in published_versions(root, dataset) if version_status(root, dataset, v) == RELEASED]


def resolve_version(root: Root, dataset: str, version: str | int) -> str:
    """'latest' -> newest released; 'v0002' or 2 -> that version if published (a candidate too); else a
    clear StorageError."""
    versions = list_versions(root, dataset)
    if version == "latest":
        released = released_versions(root, dataset)
        if not released:
            raise StorageError(f"{dataset!r} has no released version, only candidates ({', '.join(versions)}): open one "
                               f"by its id, or promote it with `aurad datasets promote {dataset}@{versions[-1]}`")
        return released[-1]
    if isinstance(version, int) and not isinstance(version, bool):
        version = version_name(version)
    check_name(version, "version")
    if version in versions:
        return version
    path = root.path(dataset, version)
    if root.exists(path):
        raise StorageError(
            f"version {version!r} of {dataset!r} at {root.url_of(path)} is not published (half-written, being "
            f"published, or abandoned); published versions: {', '.join(versions)}"
        )
    raise StorageError(f"unknown version {version!r} of {dataset!r}; published versions: {', '.join(versions)}")


def next_version_number(root: Root, dataset: str) -> int:
    """One past the highest version number taken by a catalog entry or a version folder (published or not)."""
    taken = [version_number(v) for v in published_versions(root, dataset)]
    taken += [version_number(n) for n in root.listdir(root.path(dataset))]
    return max((n for n in taken if n is not None), default=0) + 1


def create_entry(root: Root, dataset: str, version: str, entry: dict[str, Any]) -> bool:
    """Create the catalog entry that publishes a version; False if another publisher holds that name."""
    path = root.path(dataset, CATALOG_DIR, version + _ENTRY_SUFFIX)
    return root.create_exclusive(path, json.dumps(entry, indent=2, sort_keys=True).encode())


def read_entry(root: Root, dataset: str, version: str) -> dict[str, Any]:
    """A version's catalog entry; a damaged one is a StorageError naming the file."""
    path = root.path(dataset, CATALOG_DIR, version + _ENTRY_SUFFIX)
    try:
        entry = json.loads(root.read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StorageError(f"catalog entry {root.url_of(path)} is damaged (not JSON: {error})") from None
    if not isinstance(entry, dict):
        raise StorageError(f"catalog entry {root.url_of(path)} is damaged (a {type(entry).__name__}, not a mapping)")
    return entry


def write_latest_pointer(root: Root, dataset: str) -> None:
    """`<root>/<dataset>/LATEST`: the newest released version's id, one line, for readers without this package."""
    released = released_versions(root, dataset)
    if released:
        root.write_bytes(root.path(dataset, LATEST_POINTER), (released[-1] + "\n").encode())


def promote(root: str | Path | Root, dataset: str, version: str | int, storage_options: dict[str, Any] | None = None) -> str:
    """Release a candidate version: `latest` (and the LATEST pointer) move to it if it is the newest
    released one. Promoting a released version changes nothing. Returns the version id."""
    r = _root(root, storage_options)
    check_name(dataset, "dataset")
    name = resolve_version(r, dataset, list_versions(r, dataset)[-1] if version == "latest" else version)
    entry = read_entry(r, dataset, name)
    if entry.get("status", RELEASED) != RELEASED:
        entry["status"] = RELEASED
        r.write_bytes(r.path(dataset, CATALOG_DIR, name + _ENTRY_SUFFIX), json.dumps(entry, indent=2, sort_keys=True).encode())
    write_latest_pointer(r, dataset)
    return name
