"""Writing a version: stage it, write its shards (resumably, from any process), publish it atomically.

    staged = stage_version(root, "synth-cxr", build_id, n_samples=1000, shard_size=128, spec=spec)
    for k in sorted(set(range(staged.n_shards)) - staged.finished_shards()):
        staged.write_shard(k, images, pathology, anatomy, rows)     # any process; one writer per shard
    version = staged.publish({"config": cfg, "config_hash": h, ...})

A shard is finished when its ledger marker `_ledger/shard-XXXXX.json` exists; it is written after the
arrays and the manifest part, so a writer killed mid-shard leaves the shard unfinished and a resumed
build rewrites it. Publishing moves the staging folder into place (a rename on a local root; a copy
elsewhere) and creates the catalog entry last: until then nothing is listed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import zarr
import zarr.api.asynchronous as zarr_async
from zarr.core.sync import sync as zarr_sync
from zarr.errors import ZarrUserWarning

from storage import catalog
from storage.arrays import ARRAY_NAMES, MASK_DTYPE, ArraySpec, array_dir, array_layouts
from storage.errors import StorageError
from storage.verify import image_sha256, masks_sha256
from storage.layout import (
    LEDGER_DIR,
    LOCKS_DIR,
    MANIFEST_DIR,
    STAGING_DIR,
    STAGING_PARAMS_FILE,
    VERSION_FILE,
    Root,
    check_name,
    check_relative_path,
    ledger_name,
    manifest_part_name,
    version_name,
    version_number,
)
from storage.manifest import manifest_counts, part_bytes, read_parts
from storage.schema import WRITER_COLUMNS, add_writer_columns, validate_caller_table

logger = logging.getLogger(__name__)

_RESERVED_FILES = frozenset({*(array_dir(n) for n in ARRAY_NAMES), MANIFEST_DIR, VERSION_FILE, "zarr.json"})
_PUBLISHING_MARKER = "_publishing.json"
_MAX_PUBLISH_TRIES = 100
# Keys that version.json sets itself; a publisher's lineage may not override them.
_RECORD_KEYS = frozenset(
    {"dataset", "version", "build_id", "created", "n_samples", "shard_size", "n_shards", "array_spec", "attrs", "counts", "shards"}
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _to_json(value: Any, what: str) -> bytes:
    try:
        return json.dumps(value, indent=2, sort_keys=True, default=_json_default).encode()
    except (TypeError, ValueError) as error:
        raise StorageError(f"{what} cannot be stored as JSON: {error}") from None


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'"""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


# --- input checks --------------------------------------------------------------------------------


def _check_array(name: str, value: Any, shape: tuple[int, ...], dtype: np.dtype, where: str) -> np.ndarray:
    array = np.asarray(value)
    if array.shape != shape:
        raise StorageError(f"{name} for {where} must have shape {shape}, got {array.shape}")
    if array.dtype != dtype:
        raise StorageError(f"{name} for {where} must be {np.dtype(dtype).name}, got {array.dtype}")
    return np.ascontiguousarray(array)


def _check_mask(name: str, value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """uint8 {0, 1} masks; bool is taken as is (same bytes)."""
    array = np.asarray(value)
    if array.dtype == np.bool_:
        array = array.view(MASK_DTYPE)
    array = _check_array(name, array, shape, MASK_DTYPE, where)
    if array.size and array.max() > 1:
        bad = np.argwhere(array > 1)
        raise StorageError(
            f"{name} for {where} must hold only 0 and 1; {len(bad)} values are not, first at index "
            f"{tuple(int(i) for i in bad[0])} = {int(array[tuple(bad[0])])}"
        )
    return array


def _checksums(images: np.ndarray, pathology: np.ndarray, anatomy: np.ndarray) -> tuple[list[str], list[str]]:
    """Per sample: the checksums `storage.verify` checks (image bytes; pathology then anatomy bytes)."""
    return ([image_sha256(images[i]) for i in range(images.shape[0])],
            [masks_sha256(pathology[i], anatomy[i]) for i in range(images.shape[0])])


def _combined(digests: list[str]) -> str:
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


# --- the staged version --------------------------------------------------------------------------


class StagedVersion:
    """A version being built under `<root>/<dataset>/_staging/<build_id>/`.

    Holds only names and parameters, so it pickles small and any process can write shards through it.
    """

    def __init__(
        self,
        root: Root,
        dataset: str,
        build_id: str,
        n_samples: int,
        shard_size: int,
        spec: ArraySpec,
        attrs: dict[str, Any],
    ) -> None:
        self.root = root
        self.dataset = dataset
        self.build_id = build_id
        self.n_samples = n_samples
        self.shard_size = shard_size
        self.spec = spec
        self.attrs = attrs

    def __repr__(self) -> str:
        return f"StagedVersion({self.path!r}, n_samples={self.n_samples}, shard_size={self.shard_size})"

    # --- where -----------------------------------------------------------------------------------

    @property
    def _dir(self) -> str:
        return self.root.path(self.dataset, STAGING_DIR, self.build_id)

    @property
    def path(self) -> str:
        """The staging folder (a path locally, else a URL)."""
        return self.root.url_of(self._dir)

    @property
    def n_shards(self) -> int:
        return -(-self.n_samples // self.shard_size)

    def shard_bounds(self, k: int) -> tuple[int, int]:
        """Shard k covers samples [k * shard_size, min((k + 1) * shard_size, n_samples))."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.n_shards:
            raise StorageError(f"no shard {k!r} in {self.path}: shards are 0..{self.n_shards - 1}")
        k = int(k)
        return k * self.shard_size, min((k + 1) * self.shard_size, self.n_samples)

    def _ledger_path(self, k: int) -> str:
        return f"{self._dir}/{LEDGER_DIR}/{ledger_name(k)}"

    def _part_path(self, k: int) -> str:
        return f"{self._dir}/{MANIFEST_DIR}/{manifest_part_name(k, self.n_shards)}"

    # --- state -----------------------------------------------------------------------------------

    def _check_staged(self) -> None:
        if not self.root.exists(f"{self._dir}/{STAGING_PARAMS_FILE}"):
            raise StorageError(f"no staged version at {self.path} (published, discarded, or never staged)")

    def finished_shards(self) -> set[int]:
        """Shards whose ledger marker exists: their arrays and manifest part are complete."""
        finished = set()
        for name in self.root.listdir(f"{self._dir}/{LEDGER_DIR}"):
            digits = name.removeprefix("shard-").removesuffix(".json")
            if name == ledger_name(int(digits) if digits.isdigit() else -1) and int(digits) < self.n_shards:
                finished.add(int(digits))
        return finished

    def release_damaged_shards(self) -> list[str]:
        """Check every finished shard's ledger and manifest part against the checksum written with it; a
        damaged one is no longer counted as finished (its marker is set aside as `_ledger/damaged-*.json`),
        so a resumed build regenerates it instead of failing on it forever. Returns what was damaged."""
        damaged = []
        for k in sorted(self.finished_shards()):
            try:
                ledger = json.loads(self.root.read_bytes(self._ledger_path(k)))
                read_parts(self.root, self._dir, [k], self.n_shards, {k: ledger["manifest_sha256"]})
            except (StorageError, ValueError, KeyError, TypeError, OSError) as error:
                marker = self.root.read_bytes(self._ledger_path(k))
                self.root.write_bytes(f"{self._dir}/{LEDGER_DIR}/damaged-{ledger_name(k)}", marker)
                self.root.remove(self._ledger_path(k))
                damaged.append(f"shard {k}: {error}")
        return damaged

    def _ledgers(self, shards: set[int]) -> dict[int, dict[str, Any]]:
        return {k: json.loads(self.root.read_bytes(self._ledger_path(k))) for k in sorted(shards)}

    def arrays(self) -> dict[str, zarr.Array]:
        """The staged arrays, read-only (e.g. to draw a report's sample grid before publishing)."""
        self._check_staged()
        return {
            name: zarr.open_array(self.root.zarr_store(f"{self._dir}/{array_dir(name)}", read_only=True), mode="r")
            for name in ARRAY_NAMES
        }

    def read_manifest(self) -> pa.Table:
        """Finished shards' rows, in array order, each part checked against its ledger checksum."""
        ledgers = self._ledgers(self.finished_shards())
        checksums = {k: entry["manifest_sha256"] for k, entry in ledgers.items()}
        return read_parts(self.root, self._dir, ledgers, self.n_shards, checksums)

    # --- writing ---------------------------------------------------------------------------------

    def _write_arrays(self, start: int, stop: int, values: dict[str, np.ndarray]) -> None:
        """Write the three arrays' rows [start, stop) concurrently on zarr's event loop: one array's
        writes leave a core idle (zarr encodes a shard mostly on one thread), three keep both busy."""
        stores = {name: self.root.zarr_store(f"{self._dir}/{array_dir(name)}", read_only=False) for name in values}

        async def write() -> None:
            arrays = await asyncio.gather(*(zarr_async.open_array(store=s, mode="r+") for s in stores.values()))
            await asyncio.gather(*(a.setitem(slice(start, stop), values[n]) for a, n in zip(arrays, stores)))

        zarr_sync(write())

    def write_shard(
        self,
        k: int,
        images: np.ndarray,
        pathology: np.ndarray,
        anatomy: np.ndarray,
        rows: pa.Table | list[dict[str, Any]],
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Write shard k whole: arrays, then manifest part, then the ledger marker. Returns the ledger entry.

        images (n, H, W) uint16; pathology (n, C, H, W) and anatomy (n, A, H, W) uint8 {0, 1} (bool is
        accepted); rows: the n samples' manifest rows without the writer-filled columns.
        """
        start, stop = self.shard_bounds(k)
        n, size = stop - start, self.spec.image_size
        where = f"shard {k} of {self.path}"
        images = _check_array("images", images, (n, size, size), np.dtype(np.uint16), where)
        pathology = _check_mask("pathology", pathology, (n, len(self.spec.pathology_channels), size, size), where)
        anatomy = _check_mask("anatomy", anatomy, (n, len(self.spec.anatomy_channels), size, size), where)
        table = validate_caller_table(rows, where)
        if table.num_rows != n:
            raise StorageError(f"{where} covers {n} samples, got {table.num_rows} manifest rows")
        self._check_staged()
        ledger_path = self._ledger_path(k)
        if self.root.exists(ledger_path):
            if not overwrite:
                raise StorageError(f"{where} is already finished; pass overwrite=True to rewrite it")
            self.root.remove(ledger_path)  # unfinished until rewritten whole

        # Hash in a thread while zarr compresses and writes (hashlib and the codecs release the GIL).
        with ThreadPoolExecutor(max_workers=1) as pool:
            digests = pool.submit(_checksums, images, pathology, anatomy)
            self._write_arrays(start, stop, {"images": images, "masks": pathology, "anatomy": anatomy})
            image_sha, masks_sha = digests.result()

        part = part_bytes(add_writer_columns(table, k, image_sha, masks_sha))
        self.root.write_bytes(self._part_path(k), part)
        entry = {
            "shard": k,
            "start": start,
            "stop": stop,
            "rows": n,
            "manifest_part": manifest_part_name(k, self.n_shards),
            "manifest_sha256": hashlib.sha256(part).hexdigest(),
            "images_sha256": _combined(image_sha),
            "masks_sha256": _combined(masks_sha),
            "written": _now(),
            "writer": f"{socket.gethostname()}:{os.getpid()}",
        }
        self.root.write_bytes(ledger_path, _to_json(entry, "ledger"))
        logger.info("wrote %s (%d samples)", where, n)
        return entry

    def write_file(self, relpath: str, data: bytes | str) -> str:
        """Add a free-form file (e.g. quality/report.html) to the version; returns its path."""
        relpath = check_relative_path(relpath, _RESERVED_FILES)
        self._check_staged()
        path = f"{self._dir}/{relpath}"
        self.root.write_bytes(path, data.encode() if isinstance(data, str) else bytes(data))
        return self.root.url_of(path)

    def list_files(self, relative_dir: str) -> list[str]:
        """Names of the free-form files in a folder of the version (e.g. quality/data_docs), sorted."""
        relative_dir = check_relative_path(relative_dir, _RESERVED_FILES)
        return self.root.listdir(f"{self._dir}/{relative_dir}")

    def discard(self) -> None:
        """Remove the staging folder and everything in it."""
        self.root.remove(self._dir, recursive=True)
        logger.info("discarded %s", self.path)

    # --- publishing ------------------------------------------------------------------------------

    def publish(self, lineage: dict[str, Any] | None = None, release: bool = True) -> str:
        """Publish as the next version number; returns the version id (e.g. 'v0003').

        Every shard must be finished. `lineage` (config, its hash, model ids and checksums, code version,
        stage reports...) is stored in version.json next to what the storage layer records itself.
        `release=False` publishes a *candidate*: readable by its version id, never `latest` until promoted
        (`storage.catalog.promote`), so a test build does not become what downstream teams read.
        """
        self._check_staged()
        lineage = dict(lineage or {})
        clash = sorted(_RECORD_KEYS & lineage.keys())
        if clash:
            raise StorageError(f"lineage keys {clash} are set by the storage layer; rename them")
        finished = self.finished_shards()
        missing = sorted(set(range(self.n_shards)) - finished)
        if missing:
            raise StorageError(
                f"cannot publish {self.path}: {len(missing)} of {self.n_shards} shards unfinished: {_ranges(missing)}"
            )
        ledgers = self._ledgers(finished)
        checksums = {k: entry["manifest_sha256"] for k, entry in ledgers.items()}
        manifest = read_parts(self.root, self._dir, ledgers, self.n_shards, checksums)
        if manifest.num_rows != self.n_samples:
            raise StorageError(f"{self.path} has {manifest.num_rows} manifest rows for {self.n_samples} samples")
        validate_caller_table(manifest.drop_columns(list(WRITER_COLUMNS)), self.path)  # ids unique across shards
        record = {
            **lineage,
            "dataset": self.dataset,
            "build_id": self.build_id,
            "created": _now(),
            "n_samples": self.n_samples,
            "shard_size": self.shard_size,
            "n_shards": self.n_shards,
            "array_spec": self.spec.model_dump(mode="json"),
            "attrs": self.attrs,
            "counts": manifest_counts(manifest),
            "shards": [ledgers[k] for k in sorted(ledgers)],
        }
        _to_json(record, "lineage")  # fail before moving anything
        publish = self._publish_local if self.root.is_local else self._publish_copy
        status = catalog.RELEASED if release else catalog.CANDIDATE
        version = publish(record, status)
        if release:
            catalog.write_latest_pointer(self.root, self.dataset)
        logger.info("published %s/%s (%s) from build %s (%d samples)", self.dataset, version, status, self.build_id,
                    self.n_samples)
        return version

    def _catalog_entry(self, version: str, record: dict[str, Any], status: str) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": version,
            "build_id": self.build_id,
            "created": record["created"],
            "n_samples": self.n_samples,
            "accepted": record["counts"]["accepted"],
            "status": status,
        }

    def _publish_local(self, record: dict[str, Any], status: str) -> str:
        """Rename the staging folder to the next free version folder (the rename arbitrates between
        publishers), then create the catalog entry."""
        for _ in range(_MAX_PUBLISH_TRIES):
            version = version_name(catalog.next_version_number(self.root, self.dataset))
            target = self.root.path(self.dataset, version)
            self.root.write_bytes(f"{self._dir}/{VERSION_FILE}", _to_json({**record, "version": version}, "lineage"))
            if not self.root.rename_dir(self._dir, target):
                continue
            if catalog.create_entry(self.root, self.dataset, version, self._catalog_entry(version, record, status)):
                return version
            logger.warning("catalog entry %s of %s was taken by another publisher; retrying", version, self.dataset)
            if not self.root.rename_dir(target, self._dir):
                raise StorageError(f"could not move {target} back to {self.path} after a catalog clash")
        raise StorageError(f"gave up publishing {self.path} after {_MAX_PUBLISH_TRIES} version-number clashes")

    def _publish_copy(self, record: dict[str, Any], status: str) -> str:
        """For roots without atomic rename: reserve a version folder with an exclusive marker file, copy
        the staging files into it, then create the catalog entry; remove the staging folder last."""
        for _ in range(_MAX_PUBLISH_TRIES):
            version = version_name(catalog.next_version_number(self.root, self.dataset))
            target = self.root.path(self.dataset, version)
            marker = f"{target}/{_PUBLISHING_MARKER}"
            if not self.root.create_exclusive(marker, _to_json({"build_id": self.build_id}, "marker")):
                continue
            self.root.write_bytes(f"{self._dir}/{VERSION_FILE}", _to_json({**record, "version": version}, "lineage"))
            self.root.copy_tree(self._dir, target)
            self.root.remove(marker)
            if catalog.create_entry(self.root, self.dataset, version, self._catalog_entry(version, record, status)):
                self.root.remove(self._dir, recursive=True)
                return version
            logger.warning("catalog entry %s of %s was taken; %s stays unpublished", version, self.dataset, target)
        raise StorageError(f"gave up publishing {self.path} after {_MAX_PUBLISH_TRIES} version-number clashes")


# --- staging -------------------------------------------------------------------------------------


def _params(
    dataset: str, build_id: str, n_samples: int, shard_size: int, spec: ArraySpec, attrs: dict[str, Any]
) -> dict[str, Any]:
    """The parameters a resumed build must match, as JSON values."""
    params = {
        "dataset": dataset,
        "build_id": build_id,
        "n_samples": n_samples,
        "shard_size": shard_size,
        "array_spec": spec.model_dump(mode="json"),
        "attrs": attrs,
    }
    return json.loads(_to_json(params, "staging parameters"))


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: staged {a!r}, now {b!r}")
    return out


def _create_staging(root: Root, directory: str, params: dict[str, Any], spec: ArraySpec, attrs: dict[str, Any]) -> None:
    """Empty arrays + consolidated metadata, then the parameters file last (it marks the staging complete)."""
    store = root.zarr_store(directory, read_only=False)
    zarr.create_group(store, attributes={"dataset": params["dataset"], "build_id": params["build_id"]})
    for name, layout in array_layouts(spec, params["n_samples"], params["shard_size"], attrs).items():
        zarr.create_array(store, name=array_dir(name), **layout)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=ZarrUserWarning)
        zarr.consolidate_metadata(store)
    root.write_bytes(f"{directory}/{STAGING_PARAMS_FILE}", _to_json({**params, "created": _now()}, "parameters"))


def _recover_unpublished(root: Root, dataset: str, build_id: str, directory: str) -> bool:
    """Move back a version folder that a publisher renamed but died before cataloguing (local roots)."""
    published = set(catalog.published_versions(root, dataset))
    for name in root.listdir(root.path(dataset)):
        path = root.path(dataset, name)
        params_path = f"{path}/{STAGING_PARAMS_FILE}"
        if version_number(name) is None or name in published or not root.exists(params_path):
            continue
        if json.loads(root.read_bytes(params_path)).get("build_id") == build_id and root.rename_dir(path, directory):
            root.remove(f"{directory}/{VERSION_FILE}")
            logger.warning("recovered unpublished %s of build %s back into staging", path, build_id)
            return True
    return False


def stage_version(
    root: str | Path,
    dataset: str,
    build_id: str,
    n_samples: int,
    shard_size: int,
    spec: ArraySpec,
    attrs: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> StagedVersion:
    """Create `<root>/<dataset>/_staging/<build_id>/` with empty arrays of n_samples, or resume it.

    Resuming needs the same parameters (different ones raise a StorageError naming each difference);
    `attrs` are extra attributes on every array. A build_id that is already published is an error.
    """
    check_name(dataset, "dataset")
    check_name(build_id, "build_id")
    for what, value in (("n_samples", n_samples), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise StorageError(f"{what} must be a positive integer, got {value!r}")
    if not isinstance(spec, ArraySpec):
        raise StorageError(f"spec must be an ArraySpec, got {type(spec).__name__}")
    n_samples, shard_size, attrs = int(n_samples), int(shard_size), dict(attrs or {})
    r = Root(root, storage_options)
    params = _params(dataset, build_id, n_samples, shard_size, spec, attrs)
    staged = StagedVersion(r, dataset, build_id, n_samples, shard_size, spec, params["attrs"])
    directory = staged._dir
    params_path = f"{directory}/{STAGING_PARAMS_FILE}"

    published = catalog.find_published_build(r, dataset, build_id)
    if published is not None:
        raise StorageError(f"build {build_id!r} is already published as {dataset}/{published}; use a new build_id")
    if not r.exists(params_path):
        if r.is_local:
            if not _recover_unpublished(r, dataset, build_id, directory):
                _create_new(r, directory, params, spec, params["attrs"])
        else:
            r.remove(directory, recursive=True)  # a creation that died half-way
            _create_staging(r, directory, params, spec, params["attrs"])
    if not r.exists(params_path):
        raise StorageError(f"{staged.path} exists but is incomplete (no {STAGING_PARAMS_FILE}); discard it")
    existing = json.loads(r.read_bytes(params_path))
    existing.pop("created", None)
    differences = _differences(existing, params)
    if differences:
        raise StorageError(f"{staged.path} was staged with other parameters: " + "; ".join(differences))
    logger.info("staged %s (%d of %d shards finished)", staged.path, len(staged.finished_shards()), staged.n_shards)
    return staged


def _create_new(root: Root, directory: str, params: dict[str, Any], spec: ArraySpec, attrs: dict[str, Any]) -> None:
    """Build the staging in a private folder and rename it into place, so concurrent stagers agree on one."""
    parent, name = directory.rsplit("/", 1)
    tmp = f"{parent}/.{name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    root.makedirs(parent)
    try:
        _create_staging(root, tmp, params, spec, attrs)
        if not root.rename_dir(tmp, directory):
            logger.info("%s was staged concurrently by another process; using it", directory)
    finally:
        root.remove(tmp, recursive=True)


@contextmanager
def build_lock(root: str | Path, dataset: str, build_id: str, on_wait: Any = None,
               storage_options: dict[str, Any] | None = None) -> Iterator[None]:
    """Hold the lock of one staged build: a second identical build (the nightly deployment and a manual run
    of the same config) waits for the first instead of colliding on its shards, then finds its shards
    finished or its version published. `on_wait(message)` is called once if the lock is taken.

    An OS file lock (flock) on `<root>/<dataset>/_locks/<build_id>.lock`: local and mounted roots only;
    on an object store (no locks) builds are not serialised, and a warning says so."""
    check_name(dataset, "dataset")
    check_name(build_id, "build_id")
    r = Root(root, storage_options)
    if not r.is_local:
        logger.warning("storage root %s has no file locks: run one build of a config at a time", r.url)
        yield
        return
    import fcntl

    path = Path(r.path(dataset, LOCKS_DIR, f"{build_id}.lock"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(f"build {build_id} is running in another process (lock {path}); waiting for it to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
