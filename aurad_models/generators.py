"""One registry of generator classes: a saved generator is loaded by the class its `model_index.json` names
(as diffusers' `DiffusionPipeline` does with `_class_name`), so a build samples from whatever registered
generator a model directory holds: the pixel-space UNet ones, the ControlNet one, or a new class.

    generator = load_generator(directory, role="image", device="cuda")

A generator class registers itself with `@register_generator("mask" | "image")`; the role says what it makes
(pathology masks from anatomy + prompt, or images from anatomy + masks) and is checked at loading, so an
image generator given as the mask model is an error naming both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

import torch

from aurad_models.serialization import INDEX_NAME, ModelFormatError, read_json, require_file

Role = Literal["mask", "image"]
_REGISTRY: dict[str, tuple[type, Role]] = {}


def register_generator(role: Role) -> Callable[[type], type]:
    """Class decorator: make a generator class loadable by its name from a model directory."""

    def add(cls: type) -> type:
        _REGISTRY[cls.__name__] = (cls, role)
        return cls

    return add


def generator_classes() -> dict[str, Role]:
    """Every registered generator class name and its role."""
    _import_builtin()
    return {name: role for name, (_, role) in _REGISTRY.items()}


def _import_builtin() -> None:
    import aurad_models.image_generator  # noqa: F401  (registers ImageGenerator, ControlNetImageGenerator)
    import aurad_models.mask_generator  # noqa: F401  (registers MaskGenerator)


def load_generator(directory: str | Path, role: Role, device: str | torch.device = "cpu") -> Any:
    """The generator saved in `directory`, built by the class its index names, on `device`."""
    _import_builtin()
    directory = Path(directory)
    name = read_json(require_file(directory, INDEX_NAME, what="generator index")).get("_class_name")
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ModelFormatError(f"{directory} holds a {name!r}, which is not a registered generator class (known: {known})")
    cls, actual = _REGISTRY[name]
    if actual != role:
        raise ModelFormatError(f"{directory} holds a {name} ({actual} generator); a {role} generator is needed here")
    return cls.from_pretrained(directory, device=device)
