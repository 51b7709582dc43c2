"""The embedded world's trained models, shipped in the repository so `aurad demo` runs with competent models
in minutes on a CPU.

    aurad_models/embedded/manifest.json           per pipeline step: the settings fingerprint it was trained
                                                  with, its outputs (registry ids) and every model's sha256
    aurad_models/embedded/<kind>/<id>/            the model directory, exactly as the registry holds it
    aurad_models/embedded/<kind>/<id>/MODEL_CARD.md   how it was made (command, profile, seeds, steps, time), metrics

The models were made by the project's own training flows (`aurad demo --retrain`, then `aurad embed`), never
by hand. `aurad demo` looks a training step up here by the fingerprint of its settings (the same one the
pipeline's run ledger uses): on a match, the step's models are copied into the registry and their weights
re-hashed against the manifest, and the step does not train; on no match (other settings, another phantom
version), it trains as before. `aurad demo --retrain` never looks here.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aurad_models.registry import CARD_NAME, RECORD_NAME, ModelChecksumError, model_card, models_root, resolve_model
from aurad_models.serialization import read_json, weights_sha256, write_json

logger = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "manifest.json"


class EmbeddedModelError(RuntimeError):
    """A shipped model is missing or its weights do not match the manifest."""


def read_manifest(directory: Path = EMBEDDED_DIR) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    return json.loads(path.read_text()) if path.is_file() else {"steps": {}}


def find_step(step: str, fingerprint: str, directory: Path = EMBEDDED_DIR) -> dict[str, Any] | None:
    """The shipped entry of a pipeline step trained with exactly these settings, or None."""
    entry = read_manifest(directory)["steps"].get(step)
    return entry if entry is not None and entry["fingerprint"] == fingerprint else None


def install_step(entry: dict[str, Any], registry_root: str | Path, directory: Path = EMBEDDED_DIR) -> dict[str, Any]:
    """Copy a shipped step's models into the registry (idempotent) and verify every weights checksum.
    Returns the step's outputs, as its training would have."""
    for key, model in entry["models"].items():
        source = directory / model["kind"] / model["id"]
        if not (source / RECORD_NAME).is_file():
            raise EmbeddedModelError(f"shipped model {model['id']} is missing from {source} (the manifest lists it)")
        actual = weights_sha256(source / "model")
        if actual != model["sha256"]:
            raise EmbeddedModelError(f"shipped model {model['id']} at {source}: weights sha256 {actual[:12]}... does not "
                                     f"match the manifest's {model['sha256'][:12]}...; reinstall or `aurad demo --retrain`")
        target = models_root(registry_root) / model["kind"] / model["id"]
        if not (target / RECORD_NAME).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(target.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging)  # its card too: the registry's copy tells how it was made
            staging.rename(target)
        try:
            resolve_model(registry_root, model["kind"], model["id"], verify=True)
        except ModelChecksumError as error:
            raise EmbeddedModelError(f"installed shipped model differs from the manifest: {error}") from None
        logger.info("shipped %s %s: sha256 %s... verified", model["kind"], model["id"], model["sha256"][:12])
    return dict(entry["outputs"])


def export_step(step: str, fingerprint: str, outputs: dict[str, Any], kinds: dict[str, str], registry_root: str | Path,
                how: dict[str, Any], directory: Path = EMBEDDED_DIR) -> dict[str, Any]:
    """Copy the registered models of a finished step here, with a model card each, and record the step
    in the manifest under its settings fingerprint."""
    models = {}
    for key, kind in kinds.items():
        if outputs.get(key) is None:
            continue
        record = resolve_model(registry_root, kind, outputs[key], verify=True)
        target = directory / kind / record.id
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(record.path.parent, target)
        (target / CARD_NAME).write_text(model_card(record, made_with(step, how)))
        models[key] = {"kind": kind, "id": record.id, "sha256": record.sha256}
    manifest = read_manifest(directory)
    manifest["steps"][step] = {"fingerprint": fingerprint, "outputs": {k: outputs[k] for k in kinds if k in outputs},
                               "models": models, "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "how": how}
    write_json(directory / MANIFEST_NAME, manifest)
    return manifest["steps"][step]


def made_with(step: str, how: dict[str, Any]) -> list[str]:
    """The lines a shipped model's card adds: the command, code and machine that made it."""
    return [
        f"- the `{step}` step on the embedded phantom world: `{how.get('command', '?')}` (profile `{how.get('profile', '?')}`), "
        "then `aurad embed`",
        f"- code: aurad {how.get('package', '?')}, git {how.get('git_commit', '?')}; source build `{how.get('source_build', '?')}`",
        f"- machine: {how.get('machine', '?')}",
        f"- settings fingerprint: `{how.get('fingerprint', '?')}`",
    ]


def shipped_size(directory: Path = EMBEDDED_DIR) -> int:
    """Bytes of every shipped weights file."""
    return sum(p.stat().st_size for p in directory.rglob("*.safetensors"))


def shipped_models(directory: Path = EMBEDDED_DIR) -> list[dict[str, Any]]:
    """Every model the manifest lists, with its step and the record stored beside it."""
    out = []
    for step, entry in read_manifest(directory)["steps"].items():
        for key, model in entry["models"].items():
            record = read_json(directory / model["kind"] / model["id"] / RECORD_NAME)
            out.append({"step": step, "key": key, **model, "record": record, "path": directory / model["kind"] / model["id"] / "model"})
    return out
