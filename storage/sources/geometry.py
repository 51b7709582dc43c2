"""Annotations -> masks, and the one resize every record goes through.

Coordinate conventions (documented because off-by-one errors are invisible in a resized mask):
- Boxes (VinDr, NIH) are in continuous image coordinates where pixel (row r, column c) spans
  [c, c+1) x [r, r+1); a pixel is inside when its centre (c + 0.5, r + 0.5) is, with min <= centre < max
  (half-open, so a box covers as many pixels as it is wide). So the integer box x_min=10, x_max=30
  covers columns 10..29. A box thinner than a pixel still marks the pixel holding its centre.
- Polygons (ChestX-Det) list pixel indices along the outline, as the annotation tool wrote them (their
  boxes are the inclusive min/max of those indices): the outline pixels and every pixel inside are in.
- Discs (JSRT) are centred on a pixel index; a pixel is inside when its index is within the radius.
- The SIIM RLE is column-major on the image grid, relative ("start" counts from the end of the
  previous run) in `train-rle.csv` (and in torchxrayvision's copy of it,
  `siim-pneumothorax-train-rle.csv.gz`: decoded as absolute, every one of its 3,576 masks has runs that
  go backwards; decoded as relative, every one stays inside 1024x1024); absolute 1-based starts in the
  Kaggle-standard form.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image
from skimage.draw import polygon as fill_polygon
from skimage.draw import polygon_perimeter

from storage.sources.records import RecordError


def box_mask(shape: tuple[int, int], x_min: float, y_min: float, x_max: float, y_max: float) -> tuple[np.ndarray, bool]:
    """A box as a (H, W) uint8 mask, and whether it had to be clipped to the image. A box entirely
    outside the image is a RecordError (the record is quarantined)."""
    height, width = shape
    values = (x_min, y_min, x_max, y_max)
    if not all(math.isfinite(v) for v in values):
        raise RecordError(f"box has a non-numeric coordinate: {values}")
    if x_max < x_min or y_max < y_min:
        raise RecordError(f"box has max < min: {values}")
    col0, col1 = math.ceil(x_min - 0.5), math.ceil(x_max - 0.5) - 1
    row0, row1 = math.ceil(y_min - 0.5), math.ceil(y_max - 0.5) - 1
    if col1 < col0:  # thinner than a pixel: the pixel holding its centre
        col0 = col1 = math.floor((x_min + x_max) / 2)
    if row1 < row0:
        row0 = row1 = math.floor((y_min + y_max) / 2)
    clipped = col0 < 0 or row0 < 0 or col1 >= width or row1 >= height
    if col1 < 0 or row1 < 0 or col0 >= width or row0 >= height:  # a positive with an empty mask: never accepted
        raise RecordError(f"box {values} lies entirely outside the {height}x{width} image")
    mask = np.zeros(shape, dtype=np.uint8)
    mask[max(row0, 0) : max(min(row1, height - 1) + 1, 0), max(col0, 0) : max(min(col1, width - 1) + 1, 0)] = 1
    return mask, clipped


def polygon_mask(shape: tuple[int, int], points: Sequence[Sequence[float]]) -> tuple[np.ndarray, bool]:
    """A polygon of (x, y) pixel indices as a (H, W) uint8 mask (outline included), and whether any
    vertex lay outside the image (the mask is clipped to it)."""
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):  # ragged or non-numeric points
        raise RecordError(f"polygon must be a list of [x, y] points, got {str(points)[:80]}") from None
    if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0 or not np.isfinite(array).all():
        raise RecordError(f"polygon must be a list of [x, y] points, got {str(points)[:80]}")
    cols, rows = array[:, 0], array[:, 1]
    height, width = shape
    clipped = bool((cols < 0).any() or (rows < 0).any() or (cols > width - 1).any() or (rows > height - 1).any())
    mask = np.zeros(shape, dtype=np.uint8)
    if len(array) >= 3:
        rr, cc = fill_polygon(rows, cols, shape=shape)
        mask[rr, cc] = 1
    rr, cc = polygon_perimeter(np.round(rows).astype(int), np.round(cols).astype(int), shape=shape, clip=False)
    inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
    mask[rr[inside], cc[inside]] = 1
    return mask, clipped


def disc_mask(shape: tuple[int, int], x: float, y: float, radius: float) -> tuple[np.ndarray, bool]:
    """A filled disc centred on pixel index (x, y), and whether it reached outside the image."""
    if radius <= 0 or not all(math.isfinite(v) for v in (x, y, radius)):
        raise RecordError(f"disc needs a finite centre and a positive radius, got ({x}, {y}, {radius})")
    height, width = shape
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    mask = (((rows - y) ** 2 + (cols - x) ** 2) <= radius**2).astype(np.uint8)
    clipped = x - radius < 0 or y - radius < 0 or x + radius > width - 1 or y + radius > height - 1
    return mask, bool(clipped)


def decode_rle(encoded: str, shape: tuple[int, int], relative: bool = True) -> np.ndarray:
    """A SIIM-ACR run-length encoding -> (H, W) uint8 mask.

    Pairs of integers `start length`, column-major (the SIIM sample code reshapes to (width, height) and
    transposes). `relative=True` is `train-rle.csv`'s form: each start counts pixels from the end of the
    previous run, the first from pixel 0. `relative=False` is the Kaggle-standard form: 1-based absolute
    starts, increasing. A run past the image, a negative number, an odd count or (absolute) a run that
    starts before the previous one ended is a `RecordError`; the last is what a relative file read as
    absolute looks like.
    """
    height, width = shape
    try:
        numbers = [int(token) for token in encoded.split()]
    except ValueError:
        raise RecordError("RLE contains a non-integer token") from None
    if len(numbers) % 2:
        raise RecordError(f"RLE has an odd number of values ({len(numbers)})")
    flat = np.zeros(height * width, dtype=np.uint8)
    position = 0
    for start, length in zip(numbers[0::2], numbers[1::2]):
        if start < 0 or length < 0:
            raise RecordError("RLE contains a negative start or length")
        begin = position + start if relative else start - 1
        if begin < 0:
            raise RecordError("RLE start 0 in 1-based absolute encoding")
        if not relative and begin < position:
            raise RecordError(
                f"RLE run at pixel {begin} starts before the previous run ended ({position}): "
                "not an absolute encoding (is the file relative, rle='relative'?)"
            )
        end = begin + length
        if end > flat.size:
            raise RecordError(f"RLE runs past the image: pixel {end} of {flat.size} ({height}x{width})")
        flat[begin:end] = 1
        position = end
    return flat.reshape(width, height).T.copy()


# --- pad to square, then resize ------------------------------------------------------------------


def square_geometry(shape: tuple[int, int]) -> tuple[int, int, int]:
    """(side, top pad, left pad) that centres an image of `shape` in a square."""
    height, width = shape
    side = max(height, width)
    return side, (side - height) // 2, (side - width) // 2


def pad_to_square(array: np.ndarray) -> np.ndarray:
    """Zero-pad the last two axes to a centred square (0 = no attenuation: air, black in MONOCHROME2)."""
    side, top, left = square_geometry(array.shape[-2:])
    if side == array.shape[-2] == array.shape[-1]:
        return array
    out = np.zeros((*array.shape[:-2], side, side), dtype=array.dtype)
    out[..., top : top + array.shape[-2], left : left + array.shape[-1]] = array
    return out


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Square float image -> (size, size): area averaging when shrinking, bilinear when enlarging."""
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    method = Image.Resampling.BOX if image.shape[0] > size else Image.Resampling.BILINEAR
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize((size, size), method)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(C, S, S) uint8 masks -> (C, size, size) by nearest neighbour, so labels never blend."""
    if masks.shape[-2:] == (size, size):
        return masks
    out = np.empty((masks.shape[0], size, size), dtype=np.uint8)
    for channel, mask in enumerate(masks):
        out[channel] = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
    return out
