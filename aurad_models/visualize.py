"""Contact sheets: grayscale images with coloured mask overlays, for people to look at.

Generic over where the arrays come from (phantoms, generated samples, training validation, HTML
reports): images are (N, H, W) or (N, 1, H, W) in [0, 1]; masks are (N, C, H, W) with any non-zero value
meaning "inside". Pathology channels are filled with a fixed, semi-transparent colour per class, anatomy
channels are drawn as contours, and a legend names the colours.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_erosion

from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES, PATHOLOGY_RECORDS

# One fixed colour per pathology (its record in `vocabulary`), chosen to stay apart on a gray background.
PATHOLOGY_COLOURS: dict[str, tuple[int, int, int]] = {p.label: p.colour for p in PATHOLOGY_RECORDS}
_EXTRA_COLOURS = [(180, 120, 255), (255, 160, 160), (120, 255, 200), (200, 200, 80)]
ALPHA = 0.45
_PAD = 4


def _anatomy_colours(n: int) -> list[tuple[int, int, int]]:
    """Distinct hues for anatomy contours (matplotlib's tab20, fixed order)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [tuple(int(255 * c) for c in cmap(i % 20)[:3]) for i in range(n)]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _as_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W) or (N, 1, H, W), got shape {images.shape}")
    return np.clip(images, 0.0, 1.0)


def _check_masks(masks: np.ndarray | None, images: np.ndarray, what: str) -> np.ndarray | None:
    if masks is None:
        return None
    masks = np.asarray(masks)
    if masks.ndim != 4 or masks.shape[0] != images.shape[0] or masks.shape[2:] != images.shape[1:]:
        raise ValueError(f"{what} masks must be (N, C, H, W) matching images {images.shape}, got {masks.shape}")
    return masks != 0


def overlay_tile(
    image: np.ndarray,
    pathology: np.ndarray | None = None,
    anatomy: np.ndarray | None = None,
    pathology_colours: Sequence[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """One (H, W, 3) uint8 tile: the gray image, pathology fills, anatomy contours."""
    rgb = np.repeat(np.clip(image, 0.0, 1.0)[..., None] * 255.0, 3, axis=-1)
    if pathology is not None:
        colours = pathology_colours or _pathology_colours(pathology.shape[0])
        for channel, colour in zip(pathology, colours):
            if channel.any():
                rgb[channel] = (1.0 - ALPHA) * rgb[channel] + ALPHA * np.asarray(colour, dtype=np.float32)
    if anatomy is not None:
        for channel, colour in zip(anatomy, _anatomy_colours(anatomy.shape[0])):
            if channel.any():
                edge = channel & ~binary_erosion(channel)
                rgb[edge] = colour
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _pathology_colours(n: int, labels: Sequence[str] | None = None) -> list[tuple[int, int, int]]:
    labels = list(labels) if labels is not None else (list(PATHOLOGIES) if n == len(PATHOLOGIES) else [])
    colours = [PATHOLOGY_COLOURS.get(label) for label in labels] + [None] * max(0, n - len(labels))
    return [c if c is not None else _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)] for i, c in enumerate(colours[:n])]


def overlay_grid(
    images: np.ndarray,
    pathology: np.ndarray | None = None,
    anatomy: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    pathology_labels: Sequence[str] | None = None,
    anatomy_labels: Sequence[str] | None = None,
) -> np.ndarray:
    """A contact sheet (RGB uint8): tiles in a grid, an optional title above each, and a legend.

    `pathology_labels` / `anatomy_labels` name the mask channels in the legend; they default to
    PATHOLOGIES / ANATOMY_STRUCTURES when the channel counts match those vocabularies.
    """
    images = _as_images(images)
    n, h, w = images.shape
    pathology = _check_masks(pathology, images, "pathology")
    anatomy = _check_masks(anatomy, images, "anatomy")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles must have one entry per image: {len(titles)} titles for {n} images")
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    font_size = int(np.clip(w / 18, 9, 14))
    font = _font(font_size)
    wrap = max(8, int(w / (0.55 * font_size)))
    title_lines = 0
    if titles is not None:
        title_lines = max(len(textwrap.wrap(t, wrap)[:4]) or 1 for t in titles)
    title_h = title_lines * (font_size + 2) + (2 if title_lines else 0)
    cell_w, cell_h = w + _PAD, h + title_h + _PAD

    p_labels = list(pathology_labels) if pathology_labels is not None else None
    p_colours = _pathology_colours(pathology.shape[1], p_labels) if pathology is not None else None
    if pathology is not None and p_labels is None:
        channels = pathology.shape[1]
        p_labels = list(PATHOLOGIES) if channels == len(PATHOLOGIES) else [f"class {i}" for i in range(channels)]
    a_labels = list(anatomy_labels) if anatomy_labels is not None else None
    if anatomy is not None and a_labels is None:
        channels = anatomy.shape[1]
        known = channels == len(ANATOMY_STRUCTURES)
        a_labels = list(ANATOMY_STRUCTURES) if known else [f"structure {i}" for i in range(channels)]

    sheet_w = ncols * cell_w + _PAD
    n_anatomy = anatomy.shape[1] if anatomy is not None else 0
    legend = _legend(sheet_w, font, font_size, p_labels, p_colours, a_labels, n_anatomy)
    sheet_h = nrows * cell_h + _PAD + legend.shape[0]
    sheet = Image.new("RGB", (sheet_w, sheet_h), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        row, col = divmod(i, ncols)
        x0, y0 = _PAD + col * cell_w, _PAD + row * cell_h
        if titles is not None:
            for k, line in enumerate(textwrap.wrap(titles[i], wrap)[:4]):
                draw.text((x0, y0 + k * (font_size + 2)), line, fill=(230, 230, 230), font=font)
        tile = overlay_tile(
            images[i],
            pathology[i] if pathology is not None else None,
            anatomy[i] if anatomy is not None else None,
            p_colours,
        )
        sheet.paste(Image.fromarray(tile), (x0, y0 + title_h))
    sheet.paste(Image.fromarray(legend), (0, nrows * cell_h + _PAD))
    return np.asarray(sheet)


def _legend(width, font, font_size, p_labels, p_colours, a_labels, n_anatomy) -> np.ndarray:
    """Colour swatches with names: filled squares for pathology, outlined squares for anatomy."""
    entries = []
    if p_labels:
        entries += [(label, colour, True) for label, colour in zip(p_labels, p_colours)]
    if a_labels:
        entries += [(label, colour, False) for label, colour in zip(a_labels, _anatomy_colours(n_anatomy))]
    if not entries:
        return np.zeros((0, width, 3), dtype=np.uint8)
    box = font_size
    item_w = max(box + 6 + int(0.6 * font_size * len(label)) + 12 for label, _, _ in entries)
    per_row = max(1, (width - 2 * _PAD) // item_w)
    rows = -(-len(entries) // per_row)
    height = rows * (box + 6) + 2 * _PAD
    image = Image.new("RGB", (width, height), (20, 20, 20))
    draw = ImageDraw.Draw(image)
    for k, (label, colour, filled) in enumerate(entries):
        r, c = divmod(k, per_row)
        x, y = _PAD + c * item_w, _PAD + r * (box + 6)
        if filled:
            draw.rectangle([x, y, x + box, y + box], fill=colour)
        else:
            draw.rectangle([x, y, x + box, y + box], outline=colour, width=2)
        draw.text((x + box + 6, y), label, fill=(230, 230, 230), font=font)
    return np.asarray(image)


def save_overlay_grid(path: str | Path, images: np.ndarray, **kwargs) -> Path:
    """Write `overlay_grid(images, **kwargs)` as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_grid(images, **kwargs)).save(path, format="PNG")
    return path
