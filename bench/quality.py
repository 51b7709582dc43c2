"""Quality bar of the generators, measured on held-out phantom anatomy with sampled prompts.

    .venv/bin/python -m bench.quality                 # demo profile: train both generators, then measure
    .venv/bin/python -m bench.quality --profile quality

Steps: (1) phantom train / val / test sets; (2) train both generators with the profile's configs
(timed: the demo budget is about 4-5 minutes for both on 2 CPU cores); (3) a small CNN multi-label
classifier trained for about a minute on real phantom images, per-label thresholds chosen on the val set
(Youden's J); (4) prompts sampled from the prior estimated on the train split; masks generated for the
test anatomy; (5) images rendered from the generated masks (and, for comparison, from the real test masks).

Reported (JSON, `bench/results/quality_generators.json`):
* masks: share of prompted findings whose generated channel is non-empty (bar >= 0.90); share of generated
  pixels of prompted classes inside `anatomy_rules.allowed_region` (bar >= 0.95); share of samples with
  pixels in a class the prompt did not ask for, before the optional `restrict_to_prompt` post-processing;
* images: share of prompted findings the classifier finds in synthetic images (bar >= 0.70), next to the
  same figure on real test images (the baseline), and the false-positive rate on findings not prompted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch import nn

from aurad_models.anatomy_rules import allowed_region
from aurad_models.findings import Finding
from aurad_models.image_generator import ImageGenerator
from aurad_models.mask_generator import MaskGenerator
from aurad_models.prompt_encoder import prior_maps
from aurad_models.seeding import derive_seed, torch_generator
from aurad_models.vocabulary import PATHOLOGIES, pathology_index
from tasks.prompts import PromptSamplerConfig, estimate_prior, sample_prompts
from tasks.train import TrainingData, train_image_generator, train_mask_generator

logger = logging.getLogger("bench.quality")

RESULTS = Path(__file__).resolve().parent / "results" / "quality_generators.json"
BARS = {"mask_nonempty": 0.90, "mask_inside_allowed": 0.95, "image_detected": 0.70}


# --- data ----------------------------------------------------------------------------------------


def phantom_data(seeds: list[int], size: int, name: str) -> TrainingData:
    """Phantom samples as TrainingData (generated in chunks to keep memory flat)."""
    from aurad_models.phantom import PhantomConfig, generate_phantoms

    config = PhantomConfig(size=size)
    parts = [generate_phantoms(seeds[i : i + 100], config) for i in range(0, len(seeds), 100)]
    return TrainingData(
        images=np.concatenate([p.images for p in parts]).astype(np.float32),
        anatomy=np.concatenate([p.anatomy for p in parts]),
        pathology=np.concatenate([p.pathology for p in parts]),
        findings=[tuple(f) for p in parts for f in p.findings],
        source={"dataset": f"phantom-{name}", "n": len(seeds), "size": size},
    )


def label_matrix(findings: list[tuple[Finding, ...]]) -> np.ndarray:
    y = np.zeros((len(findings), len(PATHOLOGIES)), dtype=np.float32)
    for i, prompt in enumerate(findings):
        for f in prompt:
            y[i, pathology_index(f.label)] = 1
    return y


# --- the reference classifier --------------------------------------------------------------------


class SmallCNN(nn.Module):
    """A small multi-label CNN (a stand-in for the expert classifier, trained in about a minute)."""

    def __init__(self, n_labels: int = len(PATHOLOGIES), width: int = 24):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.Conv2d(o, o, 3, padding=1),
                                 nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(1, width), block(width, 2 * width), block(2 * width, 4 * width), block(4 * width, 4 * width))
        self.head = nn.Linear(4 * width, n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def train_classifier(data: TrainingData, seconds: float, seed: int) -> SmallCNN:
    """Train the classifier on real phantom images for a wall-clock budget (small flips of contrast as
    augmentation would blur the comparison; none is used)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN()
    x = torch.from_numpy(data.images)[:, None] * 2 - 1
    y = torch.from_numpy(label_matrix(data.findings))
    positive = y.mean(0).clamp(min=0.01)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=((1 - positive) / positive).clamp(max=10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    began, step = time.monotonic(), 0
    model.train()
    while time.monotonic() - began < seconds:
        generator = torch_generator(derive_seed(seed, "classifier-batch", step))
        index = torch.randperm(len(x), generator=generator)[:32]
        loss = loss_fn(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
    logger.info("classifier: %d steps in %.0f s, last loss %.3f", step, time.monotonic() - began, loss.item())
    return model.eval()


@torch.no_grad()
def predict(model: SmallCNN, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None] * 2 - 1
    return torch.cat([torch.sigmoid(model(x[i : i + 64])) for i in range(0, len(x), 64)]).numpy()


def youden_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per label, the threshold maximising sensitivity + specificity on real images (0.5 if undefined)."""
    thresholds = np.full(probs.shape[1], 0.5)
    for c in range(probs.shape[1]):
        pos, neg = probs[labels[:, c] == 1, c], probs[labels[:, c] == 0, c]
        if len(pos) == 0 or len(neg) == 0:
            continue
        candidates = np.unique(probs[:, c])
        j = [(pos >= t).mean() - (neg >= t).mean() for t in candidates]
        thresholds[c] = candidates[int(np.argmax(j))]
    return thresholds


def detection(probs: np.ndarray, thresholds: np.ndarray, prompts: list[tuple[Finding, ...]]) -> dict[str, Any]:
    """Share of prompted findings detected (per label and overall) and the false-positive rate on the rest."""
    labels = label_matrix(prompts)
    hits = probs >= thresholds
    per_label = {
        name: {"detected": float(hits[labels[:, c] == 1, c].mean()), "n": int(labels[:, c].sum()),
               "false_positive_rate": float(hits[labels[:, c] == 0, c].mean())}
        for c, name in enumerate(PATHOLOGIES) if labels[:, c].sum() > 0
    }
    prompted = labels == 1
    return {"detected": float(hits[prompted].mean()), "n_prompted": int(prompted.sum()),
            "false_positive_rate": float(hits[~prompted].mean()), "per_label": per_label}


# --- mask metrics --------------------------------------------------------------------------------


def mask_metrics(masks: np.ndarray, prompts: list[tuple[Finding, ...]], anatomy: np.ndarray,
                 removed: np.ndarray | None = None) -> dict[str, Any]:
    """Non-empty rate of prompted findings, share of pixels in the allowed region, unrequested pixels."""
    nonempty, inside, total, per_label = [], 0, 0, {}
    unrequested_samples = 0
    for i, prompt in enumerate(prompts):
        requested = {}
        for f in prompt:
            sides = requested.setdefault(f.label, set())
            sides.add(f.side)
        for label, sides in requested.items():
            channel = masks[i, pathology_index(label)].astype(bool)
            side = sides.pop() if len(sides) == 1 else None
            region = allowed_region(label, anatomy[i], side)
            n_in, n = int((channel & region).sum()), int(channel.sum())
            nonempty.append(n > 0)
            inside += n_in
            total += n
            stats = per_label.setdefault(label, {"n": 0, "nonempty": 0, "inside": 0, "pixels": 0})
            stats["n"] += 1
            stats["nonempty"] += int(n > 0)
            stats["inside"] += n_in
            stats["pixels"] += n
        others = [c for c in range(len(PATHOLOGIES)) if PATHOLOGIES[c] not in requested]
        unrequested_samples += bool(masks[i, others].any()) if removed is None else bool(removed[i].any())
    return {
        "nonempty": float(np.mean(nonempty)) if nonempty else float("nan"),
        "inside_allowed": inside / total if total else float("nan"),
        "n_prompted_findings": len(nonempty),
        "samples_with_unrequested_pixels": unrequested_samples / len(prompts),
        "per_label": {
            k: {"n": v["n"], "nonempty": v["nonempty"] / v["n"], "inside_allowed": v["inside"] / v["pixels"] if v["pixels"] else None}
            for k, v in per_label.items()
        },
    }


# --- main ----------------------------------------------------------------------------------------


def run(profile: str, n_train: int, n_val: int, n_test: int, classifier_seconds: float, seed: int,
        work_dir: Path) -> dict[str, Any]:
    from flows.config import load_config

    config = load_config(profile)
    params, sampling = config.train, config.build
    size = params.mask_generator.image_size
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    timings: dict[str, float] = {}

    # 1. Phantom splits (seeds disjoint by construction).
    began = time.monotonic()
    train = phantom_data([derive_seed(seed, "train", i) for i in range(n_train)], size, "train")
    val = phantom_data([derive_seed(seed, "val", i) for i in range(n_val)], size, "val")
    test = phantom_data([derive_seed(seed, "test", i) for i in range(n_test)], size, "test")
    timings["phantoms"] = time.monotonic() - began

    # 2. Train both generators (the profile's configs), timed together.
    began = time.monotonic()
    mask_run = train_mask_generator(train, val, params.mask_generator, params.mask_training, work_dir / "mask", resume=False)
    image_run = train_image_generator(train, val, params.image_generator, params.image_training, work_dir / "image", resume=False)
    timings["train_both_generators"] = time.monotonic() - began
    timings["train_mask_generator"] = mask_run.seconds
    timings["train_image_generator"] = image_run.seconds
    mask_model = MaskGenerator.from_pretrained(mask_run.model_dir)
    image_model = ImageGenerator.from_pretrained(image_run.model_dir)

    # 3. Reference classifier on real images; thresholds on the val split.
    began = time.monotonic()
    classifier = train_classifier(train, classifier_seconds, seed)
    thresholds = youden_thresholds(predict(classifier, val.images), label_matrix(val.findings))
    timings["classifier"] = time.monotonic() - began

    # 4. Prompts from the train split's prior; masks for the test anatomy.
    prior = estimate_prior(train.findings)
    prompts = sample_prompts(n_test, prior, PromptSamplerConfig(normal_fraction=0.0), seed=derive_seed(seed, "prompts"))
    seeds = [derive_seed(seed, "sample", i) for i in range(n_test)]
    began = time.monotonic()
    mask_sampling = sampling.mask_sampling.model_copy(update={"restrict_to_prompt": False, "restrict_to_region": False})  # raw masks
    generated = mask_model.sample(test.anatomy, prompts, seeds, mask_sampling)
    timings["sample_masks"] = time.monotonic() - began
    # Post-processing (measured separately): empty unrequested classes, clip to the requested regions.
    restricted = generated.masks.copy()
    for i, prompt in enumerate(prompts):
        keep = {pathology_index(f.label) for f in prompt}
        restricted[i, [c for c in range(len(PATHOLOGIES)) if c not in keep]] = 0
        restricted[i] &= (prior_maps(prompt, test.anatomy[i] > 0) > 0).astype(np.uint8)

    # 5. Images from generated masks, and from the real test masks for comparison.
    began = time.monotonic()
    synthetic_raw = image_model.sample(test.anatomy, generated.masks, seeds, sampling.image_sampling).images
    synthetic = image_model.sample(test.anatomy, restricted, seeds, sampling.image_sampling).images
    timings["sample_images"] = time.monotonic() - began
    from_real_masks = image_model.sample(test.anatomy, test.pathology, seeds, sampling.image_sampling).images

    real_probs = predict(classifier, test.images)
    results = {
        "profile": profile,
        "image_size": size,
        "n_train": n_train, "n_val": n_val, "n_test": n_test,
        "machine": {"cpus": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
                    "device": "cuda" if torch.cuda.is_available() else "cpu", "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "training": {"mask_generator": {"steps": mask_run.steps, "final_loss": mask_run.final_loss, "val_loss": mask_run.val_loss},
                     "image_generator": {"steps": image_run.steps, "final_loss": image_run.final_loss, "val_loss": image_run.val_loss}},
        "sampling": {"mask": mask_sampling.model_dump(), "image": sampling.image_sampling.model_dump()},
        "masks": mask_metrics(generated.masks, prompts, test.anatomy),
        "masks_postprocessed": mask_metrics(restricted, prompts, test.anatomy),
        "masks_real_test_split": mask_metrics(test.pathology, test.findings, test.anatomy),
        "images": {
            "synthetic_from_generated_masks": detection(predict(classifier, synthetic_raw), thresholds, prompts),
            "synthetic_from_postprocessed_masks": detection(predict(classifier, synthetic), thresholds, prompts),
            "synthetic_from_real_masks": detection(predict(classifier, from_real_masks), thresholds, test.findings),
            "real_test_images_baseline": detection(real_probs, thresholds, test.findings),
        },
    }
    results["bars"] = {
        "mask_nonempty": {"bar": BARS["mask_nonempty"], "value": results["masks"]["nonempty"]},
        "mask_inside_allowed": {"bar": BARS["mask_inside_allowed"], "value": results["masks"]["inside_allowed"]},
        "image_detected": {"bar": BARS["image_detected"], "value": results["images"]["synthetic_from_generated_masks"]["detected"],
                           "real_baseline": results["images"]["real_test_images_baseline"]["detected"]},
        "mask_nonempty_postprocessed": {"bar": BARS["mask_nonempty"], "value": results["masks_postprocessed"]["nonempty"]},
        "mask_inside_allowed_postprocessed": {"bar": BARS["mask_inside_allowed"], "value": results["masks_postprocessed"]["inside_allowed"]},
        "image_detected_postprocessed": {"bar": BARS["image_detected"], "value": results["images"]["synthetic_from_postprocessed_masks"]["detected"]},
    }
    for bar in results["bars"].values():
        bar["met"] = bool(bar["value"] >= bar["bar"])
    try:
        from aurad_models.visualize import save_overlay_grid

        grid = work_dir / f"samples_{profile}.png"
        save_overlay_grid(grid, np.concatenate([synthetic[:8], test.images[:8]]),
                          pathology=np.concatenate([generated.masks[:8], test.pathology[:8]]),
                          titles=[", ".join(f.label for f in p) for p in prompts[:8]] + ["real"] * 8)
        results["samples_png"] = str(grid)
    except ImportError:
        logger.warning("aurad_models.visualize not available: no sample grid")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="demo", choices=["demo", "quality"])
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--classifier-seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=Path("aurad-data/bench-quality"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = run(args.profile, args.n_train, args.n_val, args.n_test, args.classifier_seconds, args.seed,
                  args.work_dir / args.profile)
    everything = json.loads(args.out.read_text()) if args.out.is_file() else {}
    everything[args.profile] = results
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(everything, indent=2) + "\n")
    logger.info("bars (%s): %s", args.profile, json.dumps(results["bars"]))
    logger.info("written to %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
