"""Contact sheets: tile layout, mask colours, anatomy contours, legend, PNG output, input checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aurad_models.visualize import PATHOLOGY_COLOURS, overlay_grid, overlay_tile, save_overlay_grid
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES, pathology_index

H = W = 48


def _masks(n: int, channels: int) -> np.ndarray:
    masks = np.zeros((n, channels, H, W), dtype=np.uint8)
    masks[:, :, 10:20, 10:20] = 1
    return masks


def test_grid_has_the_tiles_and_a_legend():
    images = np.linspace(0, 1, 5 * H * W, dtype=np.float32).reshape(5, H, W)
    sheet = overlay_grid(images, pathology=_masks(5, len(PATHOLOGIES)), ncols=3)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    assert sheet.shape[1] == 3 * (W + 4) + 4
    assert sheet.shape[0] > 2 * (H + 4)  # two rows of tiles plus the legend
    plain = overlay_grid(images, ncols=3)
    assert plain.shape[0] == 2 * (H + 4) + 4  # no masks: no legend


def test_pathology_fill_uses_the_fixed_class_colour():
    image = np.full((H, W), 0.5, dtype=np.float32)
    masks = np.zeros((len(PATHOLOGIES), H, W), dtype=bool)
    masks[pathology_index("effusion"), 5:15, 5:15] = True
    tile = overlay_tile(image, pathology=masks)
    inside, outside = tile[10, 10].astype(int), tile[30, 30].astype(int)
    assert tuple(outside) == (128, 128, 128)
    colour = np.array(PATHOLOGY_COLOURS["effusion"])
    assert np.abs(inside - (0.55 * 127.5 + 0.45 * colour)).max() <= 1
    assert inside[2] > inside[0]  # effusion is blue


def test_anatomy_is_drawn_as_contours_not_fills():
    image = np.zeros((H, W), dtype=np.float32)
    anatomy = np.zeros((len(ANATOMY_STRUCTURES), H, W), dtype=bool)
    anatomy[0, 10:30, 10:30] = True
    tile = overlay_tile(image, anatomy=anatomy)
    assert tile[10, 20].any()  # edge coloured
    assert not tile[20, 20].any()  # interior untouched


def test_save_overlay_grid_writes_a_png_of_the_sheet_size(tmp_path):
    images = np.random.default_rng(0).uniform(size=(4, 1, H, W)).astype(np.float32)  # (N, 1, H, W) accepted
    kwargs = dict(
        pathology=_masks(4, len(PATHOLOGIES)),
        anatomy=_masks(4, len(ANATOMY_STRUCTURES)),
        titles=["a", "b", "c", "a much longer title that wraps"],
        ncols=2,
    )
    path = save_overlay_grid(tmp_path / "sub" / "grid.png", images, **kwargs)
    expected = overlay_grid(images, **kwargs)
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (expected.shape[1], expected.shape[0])
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), expected)


def test_other_channel_counts_get_generic_labels():
    images = np.zeros((2, H, W), dtype=np.float32)
    sheet = overlay_grid(images, pathology=_masks(2, 3), pathology_labels=["lesion", "fluid", "air"])
    assert sheet.shape[1] == 2 * (W + 4) + 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"images": np.zeros((2, 3, 4, 4, 4))},
        {"images": np.zeros((2, H, W)), "pathology": np.zeros((3, 7, H, W))},
        {"images": np.zeros((2, H, W)), "anatomy": np.zeros((2, 14, H + 1, W))},
        {"images": np.zeros((2, H, W)), "titles": ["only one"]},
    ],
)
def test_bad_shapes_raise(kwargs):
    with pytest.raises(ValueError):
        overlay_grid(**kwargs)
