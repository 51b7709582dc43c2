"""Fewer steps at equal quality? Speed and quality of each sampler and step count with *trained*
generators, against a many-step DDIM reference.

    python -m bench.samplers [--root aurad-data] [--n 64] [--grid ddim:50 ddim:20 ddim:10 dpm-solver++:20 ...]

Needs the generators and experts `aurad demo` registers under `--root` (a clear error says so otherwise).
Inputs are the source dataset's held-out `test` split: its anatomy, report findings and exact pathology
masks. For each sampler and step count, with the same seeds:
- masks from the mask generator (anatomy + findings), scored by their Dice against the reference
  sampler's masks (solver error: the deterministic samplers all solve the same ODE from the same noise)
  and the share of prompted findings whose mask is non-empty;
- images from the image generator (anatomy + the real masks), scored by the mean absolute difference to
  the reference images (in [0, 1] units) and the Fréchet distance of the project classifier's features to
  the real test images (FD; lower is closer to real; the reference's own FD is the bar to match).
Speed is images/s of the whole sampling call (median of `--repeats`), as the build runs it.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from aurad_models.experts import ExpertChoice, load_pathology_expert
from aurad_models.findings import Finding
from aurad_models.image_generator import ImageGenerator, ImageSamplingConfig
from aurad_models.mask_generator import MaskGenerator, MaskSamplingConfig
from aurad_models.metrics import dice_scores, expert_features, frechet_distance
from aurad_models.pixels import stored_to_unit
from aurad_models.registry import RegistryError, resolve_model
from aurad_models.vocabulary import pathology_index
from bench.record import markdown_table, median_seconds, progress_logging, write_results
from storage import StorageError, open_dataset

logger = logging.getLogger("bench.samplers")

DEFAULT_GRID = ["ddim:50", "ddim:20", "ddim:10", "dpm-solver++:20", "dpm-solver++:10", "dpm-solver++:5"]


def parse_sampler(text: str) -> tuple[str, int]:
    name, _, steps = text.partition(":")
    if name not in ("ddim", "dpm-solver++") or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"sampler {text!r}: write it as ddim:<steps> or dpm-solver++:<steps>")
    return name, int(steps)


def load_world(root: str, n: int, source: str) -> dict[str, Any]:
    """The latest generators and classifier under `root`, and `n` held-out test samples of `source`."""
    try:
        mask = MaskGenerator.from_pretrained(resolve_model(root, "mask-generator").path)
        image = ImageGenerator.from_pretrained(resolve_model(root, "image-generator").path)
        classifier = load_pathology_expert(ExpertChoice(source="project", device="cpu"), root)
        dataset = open_dataset(root, source, "latest")
    except (RegistryError, StorageError, FileNotFoundError) as error:
        raise SystemExit(f"bench.samplers needs trained generators, a classifier and a source dataset under {root!r} "
                         f"({error}); run `aurad demo -r {root}` first or pass --root") from error
    test = dataset.select(split="test")[:n]
    if test.size < 2:
        raise SystemExit(f"{dataset.path} has {test.size} test samples; bench.samplers needs at least 2")
    rows = dataset.manifest.take(test).to_pylist()
    return {
        "mask": mask, "image": image, "classifier": classifier,
        "anatomy": np.asarray(dataset.anatomy.get_orthogonal_selection((test,))).astype(np.float32),
        "pathology": np.asarray(dataset.masks.get_orthogonal_selection((test,))).astype(np.float32),
        "images": stored_to_unit(np.asarray(dataset.images.get_orthogonal_selection((test,)))),
        "findings": [tuple(Finding(**f) for f in row["findings"]) for row in rows],
        "source": f"{dataset.name}/{dataset.version}",
    }


def prompted_nonempty(masks: np.ndarray, findings: list[tuple[Finding, ...]]) -> float | None:
    hits = [masks[i, pathology_index(f.label)].any() for i, prompt in enumerate(findings) for f in prompt]
    return float(np.mean(hits)) if hits else None


def measure(world: dict[str, Any], grid: list[tuple[str, int]], build_mask: MaskSamplingConfig,
            build_image: ImageSamplingConfig, repeats: int) -> list[dict[str, Any]]:
    """Rows of speed and quality per sampler; the first entry of `grid` is the reference."""
    n = len(world["findings"])
    seeds = list(range(n))
    real_features = expert_features(world["classifier"], world["images"]).values
    rows, reference = [], {}
    for scheduler, steps in grid:
        update = {"scheduler": scheduler, "num_inference_steps": steps}
        mask_sampling, image_sampling = build_mask.model_copy(update=update), build_image.model_copy(update=update)
        outputs = {}

        def sample_masks():
            outputs["masks"] = world["mask"].sample(world["anatomy"], world["findings"], seeds, mask_sampling).masks

        def sample_images():
            outputs["images"] = world["image"].sample(world["anatomy"], world["pathology"], seeds, image_sampling).images

        mask_s = median_seconds(sample_masks, repeats, warmup=0)[0]
        image_s = median_seconds(sample_images, repeats, warmup=0)[0]
        if not reference:
            reference = dict(outputs)
        masks, images = outputs["masks"], outputs["images"]
        prompted = [(i, pathology_index(f.label)) for i, prompt in enumerate(world["findings"]) for f in prompt]
        per_class = dice_scores(masks, reference["masks"], empty_value=1.0)  # both empty: the same answer
        dice = [per_class[i, c] for i, c in prompted]
        row = {
            "sampler": scheduler, "steps": steps, "reference": not rows,
            "mask_images_per_s": round(n / mask_s, 2), "image_images_per_s": round(n / image_s, 2),
            "mask_dice_to_reference": round(float(np.mean(dice)), 4) if dice else None,
            "mask_prompted_nonempty": prompted_nonempty(masks, world["findings"]),
            "image_mad_to_reference": round(float(np.abs(images - reference["images"]).mean()), 5),
            "image_fd_to_real": round(frechet_distance(real_features, expert_features(world["classifier"], images).values), 3),
        }
        logger.info("%s %d steps: masks %.1f images/s (Dice to reference %s), images %.1f images/s (FD %.2f)",
                    scheduler, steps, row["mask_images_per_s"], row["mask_dice_to_reference"], row["image_images_per_s"],
                    row["image_fd_to_real"])
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.samplers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="aurad-data", help="storage root with the demo's models and source dataset")
    parser.add_argument("--profile", default="demo", help="profile whose build sampling settings (guidance, threshold, batch) to use")
    parser.add_argument("--source", default="phantom")
    parser.add_argument("--n", type=int, default=64, help="held-out test samples")
    parser.add_argument("--grid", nargs="+", type=parse_sampler, default=[parse_sampler(g) for g in DEFAULT_GRID],
                        help="sampler:steps, the first is the reference (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    progress_logging()
    for noisy in ("aurad_models", "tasks"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from flows.config import load_config

    build = load_config(args.profile).build
    world = load_world(args.root, args.n, args.source)
    rows = measure(world, args.grid, build.mask_sampling, build.image_sampling, args.repeats)
    table = markdown_table(rows, {
        "sampler": "sampler", "steps": "steps", "mask_images_per_s": "masks/s", "mask_dice_to_reference": "mask Dice to ref",
        "mask_prompted_nonempty": "prompted masks non-empty", "image_images_per_s": "images/s",
        "image_mad_to_reference": "image MAD to ref", "image_fd_to_real": "image FD to real"})
    reference = rows[0]
    table += ["", f"{len(world['findings'])} held-out test samples of {world['source']} at {world['image'].config.image_size} px; "
              f"reference {reference['sampler']} {reference['steps']} steps (its own FD to real: {reference['image_fd_to_real']}). "
              f"The other settings are the {args.profile!r} profile's build sampling (mask guidance "
              f"{build.mask_sampling.guidance_scale}, threshold {build.mask_sampling.threshold}, batch {build.image_sampling.batch_size}); "
              "FD on the project classifier's penultimate features, biased upwards at this N (compare rows, not other tables)."]
    print("\n".join(table))
    results = {"profile": args.profile, "n": len(world["findings"]), "source": world["source"], "rows": rows}
    out = write_results("samplers", results, table, "Sampler speed and quality vs steps (trained demo generators)", out=args.out)
    logger.info("wrote %s", out)
    return results


if __name__ == "__main__":
    main()
