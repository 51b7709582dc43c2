"""YAML profiles -> typed configuration, with dotted overrides from the CLI or flow parameters.

A profile is a YAML file in `configs/` (or any path). It may start with `extends: <profile>` to inherit
another profile and change only what differs. Overrides are `section.key=value` strings whose values
are parsed as YAML (`build.n_samples=500`, `source.phantom.size=128`, `train.image.steps=100`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

PACKAGED_PROFILES = Path(__file__).resolve().parent.parent / "configs"

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A profile or override that cannot be turned into a valid configuration."""


def profile_path(profile: str | Path) -> Path:
    """Find a profile: an existing path, else `./configs/<name>.yaml`, else the packaged `configs/`."""
    candidate = Path(profile)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    for folder in (Path.cwd() / "configs", PACKAGED_PROFILES):
        path = folder / f"{profile}.yaml"
        if path.is_file():
            return path
    known = sorted(p.stem for p in PACKAGED_PROFILES.glob("*.yaml"))
    raise ConfigError(f"no profile {str(profile)!r}: not a YAML file, and not one of {', '.join(known)}")


def read_profile(profile: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The profile's settings as a dict, with `extends` resolved."""
    path = profile_path(profile)
    if path in _seen:
        raise ConfigError(f"profile {path} extends itself (via {' -> '.join(map(str, _seen))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"profile {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"profile {path} must be a mapping of sections, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return deep_merge(read_profile(parent, _seen + (path,)), data)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base`, merging nested mappings key by key."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` overrides (values parsed as YAML)."""
    data = copy.deepcopy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: value is not valid YAML ({error})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def validate(model: type[ModelT], data: dict[str, Any], source: str) -> ModelT:
    """Validate settings against a pydantic model; errors name the setting and the profile."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        lines = [f"invalid configuration ({source}):"]
        for item in error.errors():
            where = ".".join(str(p) for p in item["loc"]) or "(top level)"
            hint = _did_you_mean(model, item["loc"]) if item["type"] == "extra_forbidden" else ""
            lines.append(f"  {where}: {item['msg']}{hint}")
        raise ConfigError("\n".join(lines)) from None


def _did_you_mean(model: type[BaseModel], location: tuple[Any, ...]) -> str:
    """'; did you mean <closest field>?' for a misspelt key, from the fields of the model it sits in."""
    import difflib
    import typing

    fields: dict[str, Any] = model.model_fields
    for part in location[:-1]:
        if part not in fields:
            return ""
        annotation = fields[part].annotation
        options = [a for a in (annotation, *typing.get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not options:
            return ""
        fields = options[0].model_fields
    close = difflib.get_close_matches(str(location[-1]), list(fields), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def with_overrides(params: ModelT, overrides: dict[str, Any] | None) -> ModelT:
    """A flow's parameters with a run's `overrides` merged in (nested or dotted keys: `{"mask_sampling":
    {"threshold": 0.4}}` or `{"mask_sampling.threshold": 0.4}`), validated: a misspelt or invalid setting
    is an error naming it. Prefect replaces a parameter object whole; this is how a run changes a few."""
    if not overrides:
        return params
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        *path, last = str(key).split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return validate(type(params), deep_merge(params.model_dump(mode="json"), nested), f"overrides {overrides}")
