"""User-supplied masks: label maps and one-hot stacks load, bad files are rejected clearly, rendering works."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aurad_models.findings import Finding
from aurad_models.image_generator import ImageGenerator, ImageGeneratorConfig, ImageSamplingConfig
from aurad_models.mask_generator import MaskGenerator, MaskGeneratorConfig, MaskSamplingConfig
from tasks.user_masks import UserMaskError, load_user_masks, render_user_masks, resize_nearest
from toy_cxr import toy_batch

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and threads oversubscribe a busy machine badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _label_map(one_hot: np.ndarray) -> np.ndarray:
    """One-hot (C, H, W) without overlaps -> label map (H, W), 0 = background, k = channel k-1."""
    return (one_hot * np.arange(1, len(one_hot) + 1)[:, None, None]).max(axis=0).astype(np.uint8)


@pytest.fixture
def anatomy():
    """Toy anatomy without overlaps (a label map holds one class per pixel)."""
    one_hot = toy_batch(2, size=64)[1]
    labels = np.stack([_label_map(a) for a in one_hot])
    return (labels[:, None] == np.arange(1, 15)[None, :, None, None]).astype(np.uint8)


def test_png_label_map_round_trip(tmp_path, anatomy):
    path = tmp_path / "anatomy.png"
    Image.fromarray(_label_map(anatomy[0])).save(path)
    loaded = load_user_masks([path], "anatomy")
    assert loaded.shape == (1, 14, 64, 64) and loaded.dtype == np.uint8
    assert np.array_equal(loaded[0], anatomy[0])


def test_npy_and_npz_one_hot_and_resizing(tmp_path, anatomy):
    np.save(tmp_path / "a.npy", anatomy[0])
    np.savez_compressed(tmp_path / "b.npz", masks=anatomy[1])
    np.save(tmp_path / "c.npy", _label_map(anatomy[1]).astype(np.int32))
    loaded = load_user_masks([tmp_path / "a.npy", tmp_path / "b.npz", tmp_path / "c.npy"], "anatomy", size=SIZE)
    assert loaded.shape == (3, 14, SIZE, SIZE)
    assert set(np.unique(loaded)) <= {0, 1}  # nearest-neighbour keeps masks binary
    assert np.array_equal(loaded[0], resize_nearest(anatomy[:1], SIZE)[0])
    assert np.array_equal(loaded[1], loaded[2])


def test_pathology_label_map(tmp_path):
    label_map = np.zeros((48, 48), np.uint8)
    label_map[10:20, 10:20] = 4  # effusion is the 4th pathology
    label_map[30:35, 30:35] = 1  # nodule
    np.save(tmp_path / "p.npy", label_map)
    loaded = load_user_masks([tmp_path / "p.npy"], "pathology")
    assert loaded.shape == (1, 7, 48, 48)
    assert loaded[0, 3].sum() == 100 and loaded[0, 0].sum() == 25 and loaded[0, [1, 2, 4, 5, 6]].sum() == 0


@pytest.mark.parametrize(
    "make, kind, fragment",
    [
        (lambda p: np.save(p / "x.npy", np.full((32, 32), 9, np.uint8)), "pathology", r"values must lie in 0\.\.7 .*found 9\.\.9"),
        (lambda p: np.save(p / "x.npy", np.zeros((5, 32, 32), np.uint8)), "anatomy", "needs 14 channels"),
        (lambda p: np.save(p / "x.npy", np.full((7, 32, 32), 2, np.uint8)), "pathology", "only 0 and 1"),
        (lambda p: np.save(p / "x.npy", np.full((32, 32), 0.5, np.float32)), "anatomy", "must hold integers"),
        (lambda p: np.save(p / "x.npy", np.zeros((32, 48), np.uint8)), "anatomy", "must be square"),
        (lambda p: np.save(p / "x.npy", np.zeros((8, 8), np.uint8)), "anatomy", "too small"),
        (lambda p: np.save(p / "x.npy", np.zeros((2, 2, 2, 2), np.uint8)), "anatomy", "expected a label map"),
        (lambda p: np.savez(p / "x.npz", a=np.zeros((32, 32)), b=np.zeros((32, 32))), "anatomy", "exactly one array"),
        (lambda p: Image.new("RGB", (32, 32)).save(p / "x.png"), "anatomy", "single-channel"),
        (lambda p: (p / "x.npy").write_bytes(b"not numpy"), "anatomy", "cannot read it"),
        (lambda p: (p / "x.txt").write_text("1 2 3"), "anatomy", "unsupported file type"),
    ],
)
def test_bad_files_are_rejected_with_the_file_named(tmp_path, make, kind, fragment):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(UserMaskError, match=fragment) as error:
        load_user_masks([path], kind)
    assert str(path) in str(error.value)


def test_missing_file_and_mixed_sizes(tmp_path, anatomy):
    with pytest.raises(UserMaskError, match="no such file"):
        load_user_masks([tmp_path / "nothing.npy"], "anatomy")
    np.save(tmp_path / "a.npy", anatomy[0])
    np.save(tmp_path / "b.npy", anatomy[0][:, :32, :32])
    with pytest.raises(UserMaskError, match="differs from the first file"):
        load_user_masks([tmp_path / "a.npy", tmp_path / "b.npy"], "anatomy")
    with pytest.raises(ValueError, match="kind must be"):
        load_user_masks([tmp_path / "a.npy"], "bones")


def test_render_user_masks_with_generated_pathology(tmp_path, anatomy):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        images = ImageGenerator(ImageGeneratorConfig(image_size=SIZE, block_out_channels=(8, 16), norm_num_groups=4))
        masks = MaskGenerator(MaskGeneratorConfig(image_size=SIZE, block_out_channels=(8, 16), norm_num_groups=4, prompt_hidden_dim=8))
    np.save(tmp_path / "a.npy", anatomy[0])
    user_anatomy = load_user_masks([tmp_path / "a.npy"], "anatomy")  # 64 px: resized to the model's 32
    out = render_user_masks(images, [3], anatomy=user_anatomy, prompts=[(Finding(label="effusion", side="left"),)],
                            mask_generator=masks, image_sampling=ImageSamplingConfig(num_inference_steps=2),
                            mask_sampling=MaskSamplingConfig(num_inference_steps=2))
    assert out.images.shape == (1, SIZE, SIZE) and out.generated_pathology and out.pathology.shape == (1, 7, SIZE, SIZE)
    alone = images.sample(out.anatomy, out.pathology, [3], ImageSamplingConfig(num_inference_steps=2))
    assert np.array_equal(alone.images, out.images)  # reproducible from the recorded seed and masks
    pathology_only = render_user_masks(images, [3], pathology=np.zeros((1, 7, 64, 64), np.uint8),
                                       image_sampling=ImageSamplingConfig(num_inference_steps=2))
    assert pathology_only.anatomy is None and pathology_only.images.shape == (1, SIZE, SIZE)
    with pytest.raises(UserMaskError, match="needs anatomy masks and a mask generator"):
        render_user_masks(images, [3], prompts=[()])
