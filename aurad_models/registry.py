"""A small model registry under `<root>/models/`: trained models as data, with checksums and lineage.

    <root>/models/<kind>/<id>/record.json   id, kind, sha256 of the weights, created, metrics, lineage
    <root>/models/<kind>/<id>/model/        a copy of the registered model directory
    <root>/models/<kind>/<id>/MODEL_CARD.md  its model card: what it is, the data it saw, its metrics, checksum

An id is `<kind>-<first 12 hex of the weights checksum>`, so registering the same weights twice gives the
same record, and a build can name the exact model it used. `resolve_model` re-hashes the weights and
refuses a model whose files changed after registration. Generic on purpose: any model directory of
safetensors files (generators, experts, segmenters) registers the same way.
"""

from __future__ import annotations

import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from aurad_models.serialization import read_json, weights_sha256, write_json

RECORD_NAME = "record.json"
CARD_NAME = "MODEL_CARD.md"
_KIND = re.compile(r"^[a-z][a-z0-9-]*$")
_ID = re.compile(r"^[a-z][a-z0-9-]*-[0-9a-f]{12}$")


class RegistryError(LookupError):
    """No such model, or an ambiguous reference."""


class ModelChecksumError(ValueError):
    """A registered model's weights no longer match the checksum recorded when it was registered."""


class ModelRecord(BaseModel):
    """What the registry knows about one model; `path` is the model directory to load from."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    path: Path
    sha256: str
    created: datetime
    metrics: dict[str, Any] = {}
    lineage: dict[str, Any] = {}


def local_root(root: str | Path, what: str = "the model registry") -> Path:
    """A storage root as a local path, or a clear error: the registry and training runs need a filesystem
    (datasets may live behind any fsspec URL; models are opened with plain file APIs)."""
    text = str(root)
    if "://" in text and not text.startswith("file://"):
        raise RegistryError(
            f"{what} needs a local or mounted folder, but storage.root is {text!r}: mount the bucket (e.g. with s3fs or "
            "gcsfuse) and set storage.root to the mount point"
        )
    return Path(text.removeprefix("file://"))


def models_root(root: str | Path) -> Path:
    return local_root(root) / "models"


def _check_kind(kind: str) -> str:
    if not _KIND.match(kind):
        raise ValueError(f"model kind {kind!r} must be lower-case words joined by '-', like 'mask-generator'")
    return kind


def _read_record(folder: Path) -> ModelRecord:
    data = read_json(folder / RECORD_NAME)
    data["path"] = folder / "model"  # stored relative: the root may move
    return ModelRecord.model_validate(data)


def register_model(
    root: str | Path, kind: str, model_dir: str | Path, metrics: dict[str, Any], lineage: dict[str, Any]
) -> ModelRecord:
    """Copy a model directory into the registry and record it. Idempotent for identical weights."""
    kind = _check_kind(kind)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    sha = weights_sha256(model_dir)
    model_id = f"{kind}-{sha[:12]}"
    folder = models_root(root) / kind / model_id
    if (folder / RECORD_NAME).is_file():
        return _read_record(folder)
    staging = models_root(root) / ".staging" / f"{model_id}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(model_dir, staging / "model")
    record = {
        "id": model_id,
        "kind": kind,
        "sha256": sha,
        "created": datetime.now(timezone.utc).isoformat(),
        "metrics": metrics,
        "lineage": lineage,
    }
    write_json(staging / RECORD_NAME, record)
    (staging / CARD_NAME).write_text(model_card(_read_record(staging)))
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(folder)  # atomic publish: a record is visible only once complete
    except OSError:
        if not (folder / RECORD_NAME).is_file():  # not a concurrent registration of the same weights
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return _read_record(folder)


def model_card(record: ModelRecord, made_with: list[str] | None = None) -> str:
    """A short model card: what the model is, the data it saw, how it was made (`made_with`: lines the caller
    knows, e.g. the command and machine of a shipped model), what it scored, its checksum."""
    lineage, metrics = record.lineage, record.metrics
    data = lineage.get("data") or lineage.get("source") or {}
    headline = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    seen = f"`{data.get('dataset', '?')}/{data.get('version', '?')}`, split `{data.get('split') or data.get('train_split', '?')}`"
    return "\n".join([
        f"# {record.id}",
        "",
        f"Kind: `{record.kind}`, trained by the AURAD pipeline; registered {record.created.isoformat(timespec='seconds')}.",
        "A research tool, not for diagnosis: it is only as good as the data it saw and the metrics below.",
        "",
        "## Training data",
        f"- {seen}" + (f", {data['n']} images" if data.get("n") else ""),
        "",
        "## How it was made",
        *(made_with or []),
        "- the full settings are in `record.json` (`lineage`)",
        "",
        "## Metrics (as recorded at registration)",
        *(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in headline.items()),
        *([] if headline else ["- none recorded"]),
        "",
        "## Checksum",
        f"sha256 of the weights (every safetensors file, `aurad_models.serialization.weights_sha256`): `{record.sha256}`",
        "",
    ])


def list_models(root: str | Path, kind: str | None = None) -> list[ModelRecord]:
    """Registered models, oldest first (of one kind, or all)."""
    base = models_root(root)
    kinds = [_check_kind(kind)] if kind else sorted(p.name for p in base.glob("*") if p.is_dir() and p.name[0] != ".")
    records = [
        _read_record(folder)
        for k in kinds
        for folder in (base / k).glob("*")
        if (folder / RECORD_NAME).is_file()
    ]
    return sorted(records, key=lambda r: (r.created, r.id))


def resolve_model(root: str | Path, kind: str, reference: str = "latest", verify: bool = True) -> ModelRecord:
    """A model by id (or 'latest' of a kind); with `verify`, its weights are re-hashed against the record."""
    kind = _check_kind(kind)
    if reference == "latest":
        records = list_models(root, kind)
        if not records:
            raise RegistryError(f"no {kind} models registered under {models_root(root) / kind}")
        record = records[-1]
    else:
        if not _ID.match(reference) or not reference.startswith(f"{kind}-"):
            raise RegistryError(f"{reference!r} is not a {kind} model id (ids look like '{kind}-<12 hex digits>', "
                                "or use 'latest'); `aurad models list` shows the registered ones")
        folder = models_root(root) / kind / reference
        if not (folder / RECORD_NAME).is_file():
            known = ", ".join(r.id for r in list_models(root, kind)) or "none"
            raise RegistryError(f"no {kind} model {reference!r} under {models_root(root) / kind} (known: {known})")
        record = _read_record(folder)
    if verify:
        actual = weights_sha256(record.path)
        if actual != record.sha256:
            raise ModelChecksumError(
                f"model {record.id} at {record.path}: weights checksum {actual[:12]}... does not match the "
                f"registered {record.sha256[:12]}...; the files changed after registration"
            )
    return record
