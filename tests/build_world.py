"""A small, complete world for build-flow tests: a phantom source, an anatomy bank, tiny trained experts
and tiny trained generators, all under one storage root. Every model is real and trained for real, just
for very few steps, so the tests exercise the plumbing (fan-out, gates, resume, publish) in seconds; the
quality of what a properly trained pipeline makes is checked by the slow end-to-end test and `aurad demo`.
"""

from __future__ import annotations

from pathlib import Path

from aurad_models.image_generator import ImageGeneratorConfig
from aurad_models.mask_generator import MaskGeneratorConfig, MaskSamplingConfig
from aurad_models.image_generator import ImageSamplingConfig
from phantom_dataset import write_phantom_version
from tasks.experts import ClassifierTrainingConfig, SegmenterTrainingConfig, SourceRef
from tasks.experts import train_and_register_classifier, train_and_register_segmenter
from tasks.filtering import FilterConfig
from tasks.generate import BuildConfig
from tasks.quality import QualityConfig
from tasks.train import TrainingConfig, train_from_dataset

SIZE = 64
TINY_UNET = dict(image_size=SIZE, block_out_channels=(8, 16), norm_num_groups=8)
TINY_TRAINING = TrainingConfig(steps=12, batch_size=8, checkpoint_every=1000, n_validation_samples=0, num_threads=1)


def make_build_world(root: Path) -> Path:
    """Publish `phantom` (train/val/test) and `anatomy-bank` (exact phantom anatomy), train and register
    a classifier, a segmenter and both generators under `root`."""
    write_phantom_version(root, {"train": 48, "val": 16, "test": 16}, SIZE, shard_size=40)
    write_phantom_version(root, {"unlabelled": 32}, SIZE, dataset="anatomy-bank", shard_size=32, first_seed=5000)
    source = SourceRef(root=str(root), dataset="phantom")
    train_and_register_classifier(source, root, ClassifierTrainingConfig(steps=6, batch_size=8), device="cpu")
    train_and_register_segmenter(source, root, SegmenterTrainingConfig(steps=6, batch_size=8), device="cpu")
    train_from_dataset("mask-generator", root, "phantom", "latest", MaskGeneratorConfig(**TINY_UNET), TINY_TRAINING, val_split=None)
    train_from_dataset("image-generator", root, "phantom", "latest", ImageGeneratorConfig(**TINY_UNET), TINY_TRAINING, val_split=None)
    return root


def tiny_build_config(root: Path, **changes) -> BuildConfig:
    """A 24-sample, 3-shard build with 2 denoising steps. The tiny experts and generators are not good
    enough for the default thresholds, so the checks that judge model quality are loosened; the checks
    that judge structure (prompted masks non-empty, inside their region, nothing unprompted) stay."""
    config = BuildConfig(
        root=str(root),
        n_samples=24,
        shard_size=8,
        seed=3,
        mask_sampling=MaskSamplingConfig(num_inference_steps=2, threshold=0.05, restrict_to_prompt=True, restrict_to_region=True),
        image_sampling=ImageSamplingConfig(num_inference_steps=2),
        filter=FilterConfig.model_validate({
            "classifier": {"min_auroc": 0.99},
            "anatomy": {"dice_threshold": 0.0},
            "image_stats": {"margin": 50.0},
        }),
        quality=QualityConfig(min_acceptance_rate=0.0, mask_mostly=0.0, image_mostly=0.0, frequency_tolerance=0.5),
        max_tries=2,
        device="cpu",
    )
    return config.model_copy(update=changes)
