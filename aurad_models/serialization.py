"""Save and load torch modules as a directory of `config.json` + one safetensors file.

The same layout as diffusers' `save_pretrained`, for modules that are not diffusers `ModelMixin`s (expert
classifiers, small heads), plus the helpers every model directory in the project shares: tensors and JSON
side by side for training checkpoints, a weights checksum for the model registry, an index json for
generators made of several parts, and errors that name the missing file and the folder looked in.

Weights are only ever read with `safetensors.torch.load_file`: nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, TypeVar

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model_index.json"

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


class MissingModelFileError(FileNotFoundError):
    """A model directory lacks a file it needs; the message names the file and the directory."""


class ModelFormatError(ValueError):
    """A model directory whose contents do not match what the loader expects."""


def require_file(directory: str | Path, name: str, what: str = "model file") -> Path:
    """Path of `name` inside `directory`, or a clear error saying what is missing and where."""
    directory = Path(directory)
    path = directory / name
    if not path.is_file():
        if not directory.is_dir():
            raise MissingModelFileError(f"{what} {name!r} not found: the directory {directory} does not exist")
        present = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
        raise MissingModelFileError(f"{what} {name!r} not found in {directory} (it holds: {present})")
    return path


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically enough for our purposes: to a temporary name, then rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelFormatError(f"{path} is not valid JSON: {error}") from None


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Save a flat name -> tensor mapping as safetensors (contiguous CPU copies)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a clear error if it is missing."""
    path = Path(path)
    require_file(path.parent, path.name, what="weights file")
    return load_file(str(path))


def class_path(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def save_module(module: torch.nn.Module, directory: str | Path, config: Mapping[str, Any]) -> Path:
    """Save a plain torch module: `config.json` (its constructor arguments, class name, format version)
    and `model.safetensors` (its state dict). `type(module)(**config)` must rebuild it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = {"_class_name": class_path(module), "_format_version": FORMAT_VERSION, **dict(config)}
    write_json(directory / CONFIG_NAME, record)
    save_tensors(directory / WEIGHTS_NAME, module.state_dict())
    return directory


def load_module_config(directory: str | Path) -> dict[str, Any]:
    """The constructor arguments stored in a module directory (without the bookkeeping keys)."""
    config = read_json(require_file(directory, CONFIG_NAME, what="model config"))
    version = config.pop("_format_version", None)
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"{directory}: format version {version!r}, this code reads {FORMAT_VERSION}")
    return config


def load_module(cls: type[ModuleT], directory: str | Path, map_location: str | torch.device = "cpu") -> ModuleT:
    """Rebuild a module saved by `save_module` and load its weights (strict: every tensor must match)."""
    directory = Path(directory)
    config = load_module_config(directory)
    saved_class = config.pop("_class_name", None)
    if saved_class != class_path(cls):
        raise ModelFormatError(f"{directory} holds a {saved_class}, not a {class_path(cls)}")
    weights = load_tensors(directory / WEIGHTS_NAME)
    module = cls(**config)
    missing, unexpected = module.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ModelFormatError(
            f"{directory / WEIGHTS_NAME} does not fit {class_path(cls)}: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    return module.to(map_location)


def weights_sha256(directory: str | Path) -> str:
    """Checksum of every safetensors file under a model directory (names and contents, sorted order).

    Only weights count: re-writing a config or a record beside them leaves the checksum alone.
    """
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*.safetensors") if p.is_file())
    if not files:
        raise MissingModelFileError(f"no weights (*.safetensors) found under {directory}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def write_index(directory: str | Path, class_name: str, parts: Mapping[str, str], **extra: Any) -> None:
    """The index of a model made of parts (like diffusers' model_index.json): part -> class, one
    subfolder per part, plus any extra settings the whole model needs."""
    record = {"_class_name": class_name, "_format_version": FORMAT_VERSION, "parts": dict(parts), **extra}
    write_json(Path(directory) / INDEX_NAME, record)


def read_index(directory: str | Path, class_name: str) -> dict[str, Any]:
    """Read and check a model index; every part's subfolder must exist."""
    directory = Path(directory)
    index = read_json(require_file(directory, INDEX_NAME, what="model index"))
    if index.get("_class_name") != class_name:
        raise ModelFormatError(f"{directory} holds a {index.get('_class_name')!r}, not a {class_name!r}")
    if index.get("_format_version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"{directory}: format version {index.get('_format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    for part in index.get("parts", {}):
        if not (directory / part).is_dir():
            raise MissingModelFileError(f"part {part!r} (a subfolder) not found in {directory}")
    return index
