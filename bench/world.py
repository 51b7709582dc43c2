"""Small, complete worlds for tests and benchmarks: a phantom source dataset, an anatomy bank, and tiny
trained experts and generators, all under one storage root.

Every model is real and trained for real, just for very few steps, so tests and the orchestration
benchmark exercise the plumbing (fan-out, gates, resume, publish) in seconds; the quality of what a
properly trained pipeline makes is measured by `aurad demo` and bench/quality.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from aurad_models.findings import Finding
from aurad_models.image_generator import ImageGeneratorConfig, ImageSamplingConfig
from aurad_models.mask_generator import MaskGeneratorConfig, MaskSamplingConfig
from aurad_models.phantom import PhantomBatch, PhantomConfig, generate_phantoms
from aurad_models.pixels import to_stored
from storage import ArraySpec, stage_version
from tasks.experts import ClassifierTrainingConfig, LesionSegmenterTrainingConfig, SegmenterTrainingConfig, SourceRef
from tasks.experts import train_and_register_classifier, train_and_register_lesion_segmenter, train_and_register_segmenter
from tasks.filtering import FilterConfig
from tasks.build import BuildConfig
from tasks.quality import QualityConfig
from tasks.train import TrainingConfig, train_from_dataset

# One of each finding and a normal study: every label gets positives even in a dozen samples.
EACH_FINDING: tuple[tuple[Finding, ...], ...] = (
    (),
    (Finding(label="nodule", side="left", zone="upper"),),
    (Finding(label="mass", side="right"),),
    (Finding(label="consolidation", side="right", zone="lower"),),
    (Finding(label="effusion", side="left", size="moderate"),),
    (Finding(label="pneumothorax", side="right", size="large"),),
    (Finding(label="cardiomegaly", size="moderate"),),
    (Finding(label="atelectasis", side="left", zone="lower"),),
)


def cycle_findings(n: int) -> list[tuple[Finding, ...]]:
    return [EACH_FINDING[i % len(EACH_FINDING)] for i in range(n)]


def phantom_batch(seeds: Sequence[int], size: int = 64, findings: Sequence[tuple[Finding, ...]] | None = None) -> PhantomBatch:
    return generate_phantoms(list(seeds), PhantomConfig(size=size), findings)


def write_phantom_version(
    root: str | Path,
    splits: dict[str, int],
    size: int = 64,
    dataset: str = "phantom",
    shard_size: int = 16,
    first_seed: int = 0,
    cycle: bool = True,
) -> str:
    """Publish phantoms as a source dataset version (splits in order, seeds consecutive); `cycle` gives
    every finding in turn (else the phantom's own prior). Returns the version id."""
    plan = [split for split, count in splits.items() for _ in range(count)]
    seeds = list(range(first_seed, first_seed + len(plan)))
    batch = phantom_batch(seeds, size, cycle_findings(len(plan)) if cycle else None)
    staged = stage_version(root, dataset, f"test-{first_seed}-{len(plan)}-{size}", len(plan), shard_size, ArraySpec(image_size=size))
    for k in range(staged.n_shards):
        start, stop = staged.shard_bounds(k)
        rows = [
            {
                "sample_id": f"phantom-{seeds[i]:06d}",
                "split": plan[i],
                "prompt": batch.reports[i],
                "findings": [f.as_record() for f in batch.findings[i]],
                "seed": seeds[i],
                "attempt_seeds": [seeds[i]],
                "attempt_reject_reasons": [None],
                "source": None,
                "mask_source": "exact",
                "mask_model_id": None,
                "image_model_id": None,
                "scores": {},
                "accepted": True,
                "reject_reason": None,
                "metadata": {"anatomy": "present"},
            }
            for i in range(start, stop)
        ]
        staged.write_shard(
            k, to_stored(batch.images[start:stop]), batch.pathology[start:stop], batch.anatomy[start:stop], rows
        )
    return staged.publish({"kind": "test-phantom"})


# --- a world for the build flow -------------------------------------------------------------------

SIZE = 64
TINY_UNET = dict(image_size=SIZE, block_out_channels=(8, 16), norm_num_groups=8)
TINY_TRAINING = TrainingConfig(steps=12, batch_size=8, checkpoint_every=1000, n_validation_samples=0, num_threads=1)


def make_build_world(root: Path) -> Path:
    """Publish `phantom` (train/val/test) and `anatomy-bank` (exact phantom anatomy), train and register
    a classifier, an anatomy segmenter, a lesion segmenter and both generators under `root`."""
    write_phantom_version(root, {"train": 48, "val": 16, "test": 16}, SIZE, shard_size=40)
    write_phantom_version(root, {"unlabelled": 32}, SIZE, dataset="anatomy-bank", shard_size=32, first_seed=5000)
    source = SourceRef(root=str(root), dataset="phantom")
    train_and_register_classifier(source, root, ClassifierTrainingConfig(steps=6, batch_size=8), device="cpu")
    train_and_register_segmenter(source, root, SegmenterTrainingConfig(steps=6, batch_size=8), device="cpu")
    train_and_register_lesion_segmenter(source, root, LesionSegmenterTrainingConfig(max_steps=6, eval_every=3, batch_size=8))
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
        mask_sampling=MaskSamplingConfig(num_inference_steps=2, threshold=0.05),
        image_sampling=ImageSamplingConfig(num_inference_steps=2),
        filter=FilterConfig.model_validate({
            "classifier": {"min_auroc": 0.99},
            "anatomy": {"dice_threshold": 0.0},
            "image_stats": {"margin": 50.0},
            "fidelity": {"min_expert_dice": 1.0},
        }),
        quality=QualityConfig(min_acceptance_rate=0.0, mask_mostly=0.0, image_mostly=0.0, frequency_tolerance=0.5,
                              min_class_coverage=0.0),
        max_tries=2,
        prompt_redraws=1,
        device="cpu",
    )
    return config.model_copy(update=changes)
