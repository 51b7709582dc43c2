"""Expert filter speed: images/s through `filter_batch` (every expert on) and through each model expert
alone, for the project-trained experts (the demo's) and torchxrayvision's DenseNet-121 + PSPNet.

    python -m bench.filtering [--device cpu] [--stacks project xrv] [--sizes 64 256] [--n 64] [--repeats 3]

(xrv: measured at the last size only, and with at most 8 images on a CPU, where its PSPNet takes seconds
per image.)

Models carry seeded random weights (speed does not depend on them; no weights are downloaded): the
project experts are built from a profile's expert configs, the torchxrayvision ones with its own
constructors (`build_xrv_densenet`, `build_xrv_pspnet`). Inputs are phantom images, anatomy and masks
at each size; the xrv experts resize to 224 (DenseNet) and 512 (PSPNet) whatever the input size.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from aurad_models.experts.trained import (
    AnatomySegmenter,
    LesionSegmenter,
    PathologyClassifier,
    TrainedAnatomyExpert,
    TrainedLesionExpert,
    TrainedPathologyExpert,
)
from aurad_models.experts.xrv import (
    DEFAULT_CLASSIFIER_WEIGHTS,
    DEFAULT_SEGMENTER_WEIGHTS,
    XrvAnatomyExpert,
    XrvPathologyExpert,
    XrvPSPNetForward,
    build_xrv_densenet,
    build_xrv_pspnet,
    xrv_weights,
)
from aurad_models.phantom import PhantomConfig, generate_phantoms
from bench.record import PeakMemory, device_name, markdown_table, median_seconds, progress_logging, write_results
from flows.config import load_config
from tasks.filtering import FilterConfig, FilterExperts, ImageStatsReference, filter_batch

logger = logging.getLogger("bench.filtering")


def project_experts(size: int, device: torch.device, profile: str = "demo") -> FilterExperts:
    """The profile's classifier and segmenter architectures at `size`, seeded random weights (the fidelity
    expert without calibration: it scores every sample and rejects none)."""
    training = load_config(profile).experts.training
    torch.manual_seed(0)
    c, s = training.classifier, training.segmenter
    classifier = PathologyClassifier(image_size=size, init_features=c.init_features, growth_rate=c.growth_rate,
                                     block_config=c.block_config, dropout_prob=c.dropout_prob)
    segmenter = AnatomySegmenter(image_size=size, channels=s.channels, strides=s.strides, num_res_units=s.num_res_units)
    lesions = training.lesion_segmenter
    lesion = LesionSegmenter(image_size=size, channels=lesions.channels, strides=lesions.strides)
    return FilterExperts(TrainedPathologyExpert(classifier, "bench", device=device),
                         TrainedAnatomyExpert(segmenter, "bench", device=device),
                         TrainedLesionExpert(lesion, "bench", device=device))


def xrv_experts(device: torch.device) -> FilterExperts:
    """torchxrayvision's default classifier and segmenter architectures, seeded random weights."""
    torch.manual_seed(0)
    classifier_spec, segmenter_spec = xrv_weights(DEFAULT_CLASSIFIER_WEIGHTS), xrv_weights(DEFAULT_SEGMENTER_WEIGHTS)
    densenet = build_xrv_densenet(classifier_spec).to(device).eval()
    pspnet = XrvPSPNetForward(build_xrv_pspnet(segmenter_spec)).to(device).eval()
    return FilterExperts(
        XrvPathologyExpert(densenet, classifier_spec, Path("random-weights"), "", device=device),
        XrvAnatomyExpert(pspnet, segmenter_spec, Path("random-weights"), "", device=device),
    )


def measure(stack: str, experts: FilterExperts, size: int, n: int, repeats: int, device: str) -> list[dict[str, Any]]:
    batch = generate_phantoms(range(n), PhantomConfig(size=size))
    images = batch.images.astype(np.float32)
    reference = ImageStatsReference.from_images(images)
    config = FilterConfig(fidelity={"enabled": experts.fidelity is not None})
    stages = {
        "classifier": lambda: experts.classifier.predict(images),
        "anatomy segmenter": lambda: experts.anatomy.segment(images),
        "filter_batch (all experts)": lambda: filter_batch(images, batch.anatomy, batch.pathology,
                                                           [list(f) for f in batch.findings], experts, config, reference),
    }
    rows = []
    for stage, run in stages.items():
        with PeakMemory(device) as memory:
            seconds, runs = median_seconds(run, repeats)
        rows.append({"stack": stack, "stage": stage, "size": size, "n": n, "device": device_name(device),
                     "seconds": round(seconds, 3), "runs_s": [round(t, 3) for t in runs],
                     "images_per_s": round(n / seconds, 2), "peak_memory_mib": round(memory.mib, 1)})
        logger.info("%s %s at %d px: %.1f images/s", stack, stage, size, n / seconds)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.filtering", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stacks", nargs="+", choices=["project", "xrv"], default=["project", "xrv"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--n", type=int, default=64, help="images per filter call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    progress_logging()
    for noisy in ("aurad_models", "tasks"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    device = torch.device(args.device)
    rows = []
    for stack in args.stacks:
        # The xrv models resize every input to their own size: one input size says it all; on a CPU the
        # PSPNet takes seconds per image, so a few images do.
        sizes = args.sizes if stack == "project" else args.sizes[-1:]
        n = args.n if stack == "project" or device.type == "cuda" else min(args.n, 8)
        for size in sizes:
            experts = project_experts(size, device) if stack == "project" else xrv_experts(device)
            rows += measure(stack, experts, size, n, args.repeats, args.device)
    table = markdown_table(rows, {"stack": "experts", "stage": "stage", "size": "input px", "n": "images",
                                  "images_per_s": "images/s", "seconds": "seconds", "peak_memory_mib": "peak MiB"})
    table += ["", f"Medians of {args.repeats} calls after a warm-up; the xrv models work at 224 px (DenseNet-121) and "
              "512 px (PSPNet) whatever the input size. Random weights (speed does not depend on them)."]
    print("\n".join(table))
    out = write_results("filtering", {"device": args.device, "repeats": args.repeats, "rows": rows}, table,
                        "Expert filter speed", out=args.out)
    logger.info("wrote %s", out)
    return {"rows": rows}


if __name__ == "__main__":
    main()
