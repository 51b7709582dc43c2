"""User-supplied masks: load, validate, resize, and render images for them.

A user may bring their own anatomy masks and/or pathology label maps, in either form:

* an **integer label map** (H, W) in a PNG or a .npy (or the array of a one-array .npz): 0 = background,
  k = 1..K the k-th class of the vocabulary (`ANATOMY_STRUCTURES` or `PATHOLOGIES`, in that order). A label
  map holds one class per pixel, so overlapping structures need the one-hot form;
* a **one-hot stack** (C, H, W) of 0/1 in a .npy / .npz (C = 14 for anatomy, 7 for pathology).

Every problem is an error naming the file and what is wrong. Masks are resized with nearest-neighbour to
the model size (never interpolated: a mask stays binary).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from aurad_models.findings import Finding
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES

logger = logging.getLogger(__name__)

MaskKind = Literal["anatomy", "pathology"]
_CHANNELS = {"anatomy": len(ANATOMY_STRUCTURES), "pathology": len(PATHOLOGIES)}


class UserMaskError(ValueError):
    """A user mask file that cannot be used; the message names the file and the problem."""


def resize_nearest(masks: np.ndarray, size: int) -> np.ndarray:
    """(N, C, H, W) masks -> (N, C, size, size), nearest-neighbour (values are kept exactly)."""
    if masks.shape[-2:] == (size, size):
        return masks
    tensor = torch.from_numpy(np.ascontiguousarray(masks)).float()
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode="nearest-exact").to(torch.uint8).numpy()


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) float images -> (N, size, size): area averaging down, bilinear up."""
    if images.shape[-2:] == (size, size):
        return images.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    mode = "area" if images.shape[-1] > size else "bilinear"
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode=mode).numpy()[:, 0]


def _read_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserMaskError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                if image.mode not in ("L", "I", "I;16", "P", "1"):
                    raise UserMaskError(f"{path}: a label map PNG must be single-channel (mode L, I, I;16 or P), got mode {image.mode}")
                return np.asarray(image)
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if len(archive.files) != 1:
                    raise UserMaskError(f"{path}: an .npz must hold exactly one array, it holds {archive.files}")
                return archive[archive.files[0]]
    except UserMaskError:
        raise
    except (OSError, ValueError) as error:
        raise UserMaskError(f"{path}: cannot read it ({error})") from None
    raise UserMaskError(f"{path}: unsupported file type {suffix!r}; use .png, .npy or .npz")


def to_one_hot(array: np.ndarray, kind: MaskKind, source: str) -> np.ndarray:
    """A label map (H, W) or one-hot stack (C, H, W) -> one-hot uint8 (C, H, W), validated."""
    channels = _CHANNELS[kind]
    if not np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.bool_):
        if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise UserMaskError(f"{source}: masks must hold integers, got {array.dtype} with non-integer values")
    if array.ndim == 2:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > channels:
            raise UserMaskError(
                f"{source}: {kind} label map values must lie in 0..{channels} (0 = background, k = "
                f"{'/'.join(_names(kind)[:2])}/...), found {low}..{high}"
            )
        return (array[None] == np.arange(1, channels + 1)[:, None, None]).astype(np.uint8)
    if array.ndim == 3:
        if array.shape[0] != channels:
            raise UserMaskError(f"{source}: a one-hot {kind} stack needs {channels} channels (C, H, W), got shape {array.shape}")
        values = np.unique(array)
        if not np.all(np.isin(values, (0, 1))):
            raise UserMaskError(f"{source}: a one-hot stack must hold only 0 and 1, found values {values[:10].tolist()}")
        return array.astype(np.uint8)
    raise UserMaskError(f"{source}: expected a label map (H, W) or a one-hot stack ({channels}, H, W), got shape {array.shape}")


def _names(kind: MaskKind) -> tuple[str, ...]:
    return ANATOMY_STRUCTURES if kind == "anatomy" else PATHOLOGIES


def load_user_masks(paths: Sequence[str | Path], kind: MaskKind, size: int | None = None, min_size: int = 16) -> np.ndarray:
    """Load one mask file per sample -> (N, C, size, size) uint8 one-hot (C = 14 anatomy / 7 pathology).

    Files may mix label maps and one-hot stacks; each must be square-ish (any H, W >= min_size), and all are
    resized with nearest-neighbour to `size` (default: the first file's size, which then all must share).
    """
    if kind not in _CHANNELS:
        raise ValueError(f"kind must be 'anatomy' or 'pathology', got {kind!r}")
    if not paths:
        raise UserMaskError("no mask files given")
    out = []
    for path in map(Path, paths):
        mask = to_one_hot(_read_array(path), kind, str(path))
        height, width = mask.shape[1:]
        if min(height, width) < min_size:
            raise UserMaskError(f"{path}: {height}x{width} is too small (at least {min_size}x{min_size})")
        if height != width:
            raise UserMaskError(f"{path}: masks must be square, got {height}x{width}; crop or pad it first")
        target = size or (out[0].shape[-1] if out else height)
        if size is None and height != target:
            raise UserMaskError(f"{path}: {height}x{width} differs from the first file's {target}x{target}; pass size=")
        out.append(resize_nearest(mask[None], target)[0])
    return np.stack(out)


@dataclass
class UserRenderOutput:
    """Rendered images (N, H, W) in [0, 1] for the user's masks, the masks used, and the seeds."""

    images: np.ndarray
    anatomy: np.ndarray | None
    pathology: np.ndarray | None
    seeds: list[int]
    generated_pathology: bool


def render_user_masks(
    image_generator,
    seeds: Sequence[int],
    anatomy: np.ndarray | None = None,
    pathology: np.ndarray | None = None,
    prompts: Sequence[Sequence[Finding]] | None = None,
    mask_generator=None,
    image_sampling=None,
    mask_sampling=None,
) -> UserRenderOutput:
    """Render images for user masks (from `load_user_masks`, any size: resized to the model's).

    With `prompts` and a `mask_generator` (and anatomy), pathology masks are generated for the user's
    anatomy first. A missing anatomy or pathology input is conditioned as "unknown" (mask ablation).
    """
    size = image_generator.config.image_size
    if anatomy is None and pathology is None and prompts is None:
        raise UserMaskError("give anatomy masks, pathology masks, or prompts (with anatomy and a mask generator)")
    anatomy = None if anatomy is None else resize_nearest(np.asarray(anatomy, dtype=np.uint8), size)
    pathology = None if pathology is None else resize_nearest(np.asarray(pathology, dtype=np.uint8), size)
    generated = False
    if prompts is not None:
        if pathology is not None:
            raise UserMaskError("give either pathology masks or prompts to generate them from, not both")
        if anatomy is None or mask_generator is None:
            raise UserMaskError("generating pathology masks from prompts needs anatomy masks and a mask generator")
        mask_size = mask_generator.config.image_size
        generated_masks = mask_generator.sample(resize_nearest(anatomy, mask_size), prompts, seeds, mask_sampling).masks
        pathology = resize_nearest(generated_masks, size)
        generated = True
    result = image_generator.sample(anatomy, pathology, seeds, image_sampling)
    return UserRenderOutput(images=result.images, anatomy=anatomy, pathology=pathology, seeds=list(result.seeds),
                            generated_pathology=generated)
