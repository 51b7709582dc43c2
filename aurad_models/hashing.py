"""Stable fingerprints of configurations: build ids, lineage hashes, resume keys."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel


def config_hash(config: BaseModel | dict) -> str:
    """sha256 of a configuration's canonical JSON (sorted keys): the same settings, the same hash."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
