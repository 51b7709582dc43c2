"""How far is the image generator from real images, per sampler? The evaluation's classifier two-sample
test (C2ST) on images rendered from real masks, so that the mask generator plays no part.

    python -m bench.realism [--root aurad-data] [--n 200] [--grid dpm-solver++:10 dpm-solver++:20 ddim:50 ...]

Needs the image generator and source dataset `aurad demo` registers under `--root`. The image generator
renders `--n` images from the anatomy and exact pathology masks of the source's `train` split; the C2ST
compares them with `--n` images of the held-out `val` and `test` splits (as the evaluation does), three
times with different seeds. The first
row is an oracle: the real `train` images themselves, the score a perfect generator would get. Beside each
row, three image statistics that tell the sets apart: the share of pixels that are exactly 0 (the phantom's
air outside the body), the mean intensity and the fine noise (the standard deviation of each image minus its
3x3 local mean). Two more rows take the first sampler's images and remove those differences: their
intensities mapped onto the real train images' distribution (quantile to quantile), then that plus Gaussian
noise on the body bringing the fine noise up to the real images'. What the C2ST still finds then is
structure, not global intensity or noise.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from aurad_models.findings import PATHOLOGIES
from aurad_models.image_generator import ImageGenerator, ImageSamplingConfig
from aurad_models.metrics import classifier_two_sample_test
from aurad_models.pixels import stored_to_unit
from aurad_models.registry import RegistryError, resolve_model
from bench.record import markdown_table, progress_logging, write_results
from bench.samplers import parse_sampler
from storage import StorageError, open_dataset

logger = logging.getLogger("bench.realism")

DEFAULT_GRID = ["dpm-solver++:10", "dpm-solver++:20", "ddim:50"]
# One C2ST's accuracy moves by up to 0.07 with its split and CNN seed on the same images (measured here:
# 0.915 and 0.985 for one set), so each row is the mean of three.
C2ST_SEEDS = (0, 1, 2)


def fine_noise(images: np.ndarray) -> float:
    """Standard deviation of the images minus their 3x3 local mean: the pixel-scale noise."""
    from scipy.ndimage import uniform_filter

    return float(np.std(images - uniform_filter(images, size=(1, 3, 3))))


def quantile_mapped(images: np.ndarray, reference: np.ndarray, points: int = 2001) -> np.ndarray:
    """`images` with their pooled intensity distribution moved onto `reference`'s (a monotone map)."""
    quantiles = np.linspace(0, 1, points)
    return np.interp(images, np.quantile(images, quantiles), np.quantile(reference, quantiles)).astype(np.float32)


def with_fine_noise(images: np.ndarray, target: float, seed: int = 0) -> np.ndarray:
    """Gaussian noise on the body (pixels above 0) so that `fine_noise` comes near `target`; clipped to [0, 1]."""
    missing = max(target**2 - fine_noise(images) ** 2, 0.0) ** 0.5 / (1 - 1 / 9) ** 0.5  # a 3x3 mean keeps 1/9 of it
    noise = np.random.default_rng(seed).normal(0.0, missing, images.shape) * (images > 0)
    return np.clip(images + noise, 0, 1).astype(np.float32)


def realism_row(name: str, steps: int | None, real: np.ndarray, images: np.ndarray, seconds: float | None) -> dict[str, Any]:
    runs = [classifier_two_sample_test(real, images, seed=seed) for seed in C2ST_SEEDS]
    accuracy = [run["accuracy"] for run in runs]
    row = {"images": name, "steps": steps, "c2st": round(float(np.mean(accuracy)), 3),
           "c2st_range": f"{min(accuracy):.3f}-{max(accuracy):.3f}", "auroc": round(float(np.mean([r["auroc"] for r in runs])), 3),
           "zero_share": round(float((images == 0).mean()), 4), "mean": round(float(images.mean()), 4),
           "fine_noise": round(fine_noise(images), 4),
           "seconds": None if seconds is None else round(seconds, 1)}
    logger.info("%s: C2ST %.3f (AUROC %.3f)", name if steps is None else f"{name} {steps} steps", row["c2st"], row["auroc"])
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.realism", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="aurad-data")
    parser.add_argument("--source", default="phantom")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--grid", nargs="+", type=parse_sampler, default=[parse_sampler(s) for s in DEFAULT_GRID])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    progress_logging()
    try:
        generator_path = resolve_model(args.root, "image-generator").path
        generator = ImageGenerator.from_pretrained(generator_path)
        dataset = open_dataset(args.root, args.source, "latest")
    except (RegistryError, StorageError, FileNotFoundError) as error:
        raise SystemExit(f"bench.realism needs an image generator and a source dataset under {args.root!r} ({error}); "
                         f"run `aurad demo -r {args.root}` first or pass --root") from error
    held_out = np.concatenate([dataset.select(accepted_only=False, split=s) for s in ("val", "test")])[: args.n]
    train = dataset.select(accepted_only=False, split="train")[: args.n]
    real = stored_to_unit(np.asarray(dataset.images.oindex[np.sort(held_out)]))
    order = [list(dataset.pathology_channels).index(label) for label in PATHOLOGIES]
    pathology = np.asarray(dataset.masks.oindex[train])[:, order]
    anatomy = np.asarray(dataset.anatomy.oindex[train])
    real_train = stored_to_unit(np.asarray(dataset.images.oindex[train]))
    rows = [realism_row("real train images (oracle)", None, real, real_train, None)]
    seeds = list(range(1000, 1000 + len(train)))
    rendered = []
    for scheduler, steps in args.grid:
        began = time.perf_counter()
        rendered.append(generator.sample(anatomy, pathology, seeds,
                                         ImageSamplingConfig(scheduler=scheduler, num_inference_steps=steps)).images)
        rows.append(realism_row(scheduler, steps, real, rendered[-1], time.perf_counter() - began))
    (scheduler, steps), mapped = args.grid[0], quantile_mapped(rendered[0], real_train)
    rows.append(realism_row(f"{scheduler}, intensities mapped to real train", steps, real, mapped, None))
    rows.append(realism_row(f"{scheduler}, mapped + fine noise of real train", steps, real,
                            with_fine_noise(mapped, fine_noise(real_train)), None))
    table = markdown_table(rows, {"images": "images", "steps": "steps", "c2st": "C2ST accuracy (mean of 3)", "c2st_range": "range", "auroc": "C2ST AUROC",
                                  "zero_share": "pixels exactly 0", "mean": "mean intensity", "fine_noise": "fine noise",
                                  "seconds": "sampling s"})
    table += ["", f"{len(train)} images rendered from the `train` split's masks of {dataset.name}/{dataset.version} by "
              f"{generator_path.parent.name if generator_path.name == 'model' else generator_path.name}, against "
              f"{len(real)} held-out real images (pixels exactly 0: {float((real == 0).mean()):.4f}, mean "
              f"{float(real.mean()):.4f}, fine noise {fine_noise(real):.4f}). C2ST 0.5: indistinguishable."]
    print("\n".join(table))
    results = {"rows": rows, "n": len(train), "source": f"{dataset.name}/{dataset.version}", "generator": str(generator_path)}
    write_results("realism", results, table, "Image realism per sampler (C2ST, images from real masks)", args.out)
    return results


if __name__ == "__main__":
    main()
