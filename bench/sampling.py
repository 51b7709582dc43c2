"""Mask and image sampling speed: images/s per device, architecture (resolution), batch size, step count
and speed setting, with the FLOPs behind them and peak memory.

    python -m bench.sampling                                  # the CPU grid (about 10 minutes on 2 cores)
    python -m bench.sampling --device cuda --architectures production --batches auto --steps 20 \\
        --precision bf16 --channels-last both --compile no default

Models are built from a profile's generator configs (`--architectures demo production`: the demo's
64 px UNets, production's 256 px UNets with attention) with seeded random weights: speed does not depend
on the weights. Inputs are phantom anatomy and findings at the model's size. One timed run is a full
`sample()` call (noise, every denoising step, post-processing, copy back to the host), median over
`--repeats` after a warm-up run (which also pays any compilation; its time is reported apart).

FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one eager `sample()` of one image with the same
steps and guidance counts 2 x multiply-adds of every convolution, matmul and attention call (norms,
activations and the scheduler's arithmetic are not counted, so achieved figures are conservative).
Divided by the UNet passes per image (steps, x2 with guidance != 1) it is the FLOPs of one UNet forward
at batch 1 ('GFLOP/forward'; a batch of B costs B times that).
Achieved TFLOP/s = FLOPs per image x images/s, set against the GPU's dense bf16 peak (bench/record.py);
on a CPU there is no peak figure, only the achieved rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from aurad_models.image_generator import ImageGenerator, ImageGeneratorConfig, ImageSamplingConfig
from aurad_models.mask_generator import MaskGenerator, MaskGeneratorConfig, MaskSamplingConfig
from aurad_models.phantom import PhantomConfig, generate_phantoms
from bench.record import RESULTS, PeakMemory, bf16_matmul_tflops, bf16_peak_tflops, device_name, markdown_table, median_seconds, progress_logging, write_results
from flows.profiles import read_profile

logger = logging.getLogger("bench.sampling")


@dataclass
class Workload:
    """Inputs for one architecture at its size: anatomy, pathology masks and findings, cycled to any n."""

    anatomy: np.ndarray
    pathology: np.ndarray
    findings: list

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray, list]:
        index = np.arange(n) % len(self.anatomy)
        return self.anatomy[index], self.pathology[index], [self.findings[i] for i in index]


def workload(size: int, n: int = 16) -> Workload:
    batch = generate_phantoms(range(n), PhantomConfig(size=size))
    return Workload(batch.anatomy.astype(np.float32), batch.pathology.astype(np.float32), [list(f) for f in batch.findings])


def build_models(architecture: str, device: str) -> tuple[MaskGenerator, ImageGenerator]:
    """Both generators as the profile configures them, seeded random weights, on `device`. (Read from the
    profile's YAML alone, so this benchmark needs no Prefect, zarr or great-expectations: a GPU machine
    runs it with torch, diffusers and pydantic.)"""
    train = read_profile(architecture).get("train", {})
    torch.manual_seed(0)
    mask = MaskGenerator(MaskGeneratorConfig.model_validate(train.get("mask_generator", {})))
    image = ImageGenerator(ImageGeneratorConfig.model_validate(train.get("image_generator", {})))
    return mask.to(device).eval(), image.to(device).eval()


def sampler(kind: str, mask: MaskGenerator, image: ImageGenerator, inputs: Workload, n: int, sampling) -> Callable[[], Any]:
    anatomy, pathology, findings = inputs.take(n)
    seeds = list(range(n))
    if kind == "mask":
        return lambda: mask.sample(anatomy, findings, seeds, sampling)
    return lambda: image.sample(anatomy, pathology, seeds, sampling)


def flops_per_image(kind: str, mask: MaskGenerator, image: ImageGenerator, inputs: Workload, sampling) -> int:
    eager = sampling.model_copy(update={"compile": "no", "batch_size": 1})
    with FlopCounterMode(display=False) as counter:
        sampler(kind, mask, image, inputs, 1, eager)()
    return counter.get_total_flops()


def attention_kernel(generator: MaskGenerator | ImageGenerator) -> str:
    """How the UNet's attention layers run: 'sdpa' (torch's fused scaled_dot_product_attention, which
    picks flash / memory-efficient kernels on GPUs), another processor's name, or 'none' without attention."""
    from diffusers.models.attention_processor import Attention

    processors = {type(m.processor).__name__ for m in generator.unet.modules() if isinstance(m, Attention)}
    if not processors:
        return "none"
    return "sdpa" if processors == {"AttnProcessor2_0"} else "+".join(sorted(processors))


def largest_batch(run_at: Callable[[int], Callable[[], Any]], start: int = 8, limit: int = 1024) -> int:
    """The largest power-of-two batch (up to `limit`) one sampling call fits in GPU memory."""
    best, batch = 0, start
    while batch <= limit:
        try:
            run_at(batch)()
            best, batch = batch, batch * 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    if not best:
        raise RuntimeError(f"even a batch of {start} does not fit in GPU memory")
    return best


def measure(kind: str, architecture: str, mask: MaskGenerator, image: ImageGenerator, inputs: Workload,
            device: str, batch: int, steps: int, repeats: int, speed: dict[str, Any], guidance: float,
            scheduler: str, matmul_ceiling: float | None = None) -> dict[str, Any]:
    config_class = MaskSamplingConfig if kind == "mask" else ImageSamplingConfig
    sampling = config_class(scheduler=scheduler, num_inference_steps=steps, guidance_scale=guidance,
                            batch_size=batch, **speed)
    run = sampler(kind, mask, image, inputs, batch, sampling)
    with PeakMemory(device) as memory:
        first = median_seconds(run, repeats=1, warmup=0)[0]  # warm-up (and compilation)
        seconds, runs = median_seconds(run, repeats, warmup=0)
    flops = flops_per_image(kind, mask, image, inputs, sampling)
    forwards = steps * (1 if guidance == 1.0 else 2)  # UNet passes per image
    images_per_s = batch / seconds
    peak = bf16_peak_tflops(device)
    achieved = flops * images_per_s / 1e12
    return {
        "model": kind, "architecture": architecture, "size": mask.config.image_size, "device": device_name(device),
        "batch": batch, "steps": steps, "scheduler": scheduler, "guidance": guidance, **speed,
        "mixed_precision": speed["mixed_precision"] if device.startswith("cuda") else "no",
        "first_run_s": round(first, 3), "seconds": round(seconds, 4), "runs_s": [round(t, 4) for t in runs],
        "images_per_s": round(images_per_s, 3), "ms_per_image_step": round(seconds / batch / steps * 1000, 3),
        "gflop_per_image": round(flops / 1e9, 2), "unet_forwards": forwards,
        "gflop_per_forward": round(flops / forwards / 1e9, 3), "attention": attention_kernel(mask if kind == "mask" else image),
        "achieved_tflops": round(achieved, 4),
        "bf16_peak_tflops": peak, "fraction_of_peak": round(achieved / peak, 4) if peak else None,
        "bf16_matmul_tflops": round(matmul_ceiling, 1) if matmul_ceiling else None,
        "fraction_of_matmul": round(achieved / matmul_ceiling, 4) if matmul_ceiling else None,
        "peak_memory_mib": round(memory.mib, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.sampling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--architectures", nargs="+", default=["demo", "production"], help="profiles whose generator configs to build")
    parser.add_argument("--models", nargs="+", choices=["mask", "image"], default=["mask", "image"])
    parser.add_argument("--batches", nargs="+", default=None, help="batch sizes, or 'auto' (largest power of two that fits; GPU)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--scheduler", default="dpm-solver++", choices=["ddim", "dpm-solver++"])
    parser.add_argument("--guidance", type=float, default=1.0, help="1 = one UNet pass per step; other values double it")
    parser.add_argument("--precision", default="bf16", choices=["no", "bf16", "fp16"], help="autocast on CUDA")
    parser.add_argument("--channels-last", default="both", choices=["no", "yes", "both"])
    parser.add_argument("--compile", nargs="+", default=["no"], choices=["no", "default", "reduce-overhead", "max-autotune"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--append", action="store_true", help="add the rows to the results file instead of replacing them")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    progress_logging()
    for noisy in ("aurad_models", "tasks"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cpu = not args.device.startswith("cuda")
    # On a CPU the 256 px production UNet needs seconds per image and step: a small grid says enough.
    default_batches = {"demo": ["1", "16", "64"], "production": ["2"]} if cpu else {}
    formats = {"no": [False], "yes": [True], "both": [False, True]}[args.channels_last]
    ceiling = bf16_matmul_tflops(args.device)
    if ceiling:
        logger.info("bf16 matrix product ceiling on %s: %.0f TFLOP/s", device_name(args.device), ceiling)

    rows = []
    for architecture in args.architectures:
        mask, image = build_models(architecture, args.device)
        inputs = workload(mask.config.image_size)
        batches = args.batches or default_batches.get(architecture, ["auto"])
        steps_grid = args.steps if not (cpu and architecture == "production") else [2]
        for kind in args.models:
            for batch_arg in batches:
                if batch_arg == "auto":
                    speed = {"mixed_precision": args.precision, "channels_last": True, "compile": "no"}
                    config_class = MaskSamplingConfig if kind == "mask" else ImageSamplingConfig
                    batch = largest_batch(lambda b: sampler(kind, mask, image, inputs, b, config_class(
                        num_inference_steps=1, batch_size=b, guidance_scale=args.guidance, **speed)))
                else:
                    batch = int(batch_arg)
                for steps in steps_grid:
                    for channels_last in formats:
                        for compile_mode in args.compile:
                            speed = {"mixed_precision": args.precision, "channels_last": channels_last, "compile": compile_mode}
                            row = measure(kind, architecture, mask, image, inputs, args.device, batch, steps,
                                          args.repeats, speed, args.guidance, args.scheduler, ceiling)
                            logger.info("%s %s %dpx batch %d, %d steps, %s: %.2f images/s, %.1f GFLOP/image, %.3f TFLOP/s, %.0f MiB",
                                        architecture, kind, row["size"], batch, steps,
                                        f"channels_last={channels_last} compile={compile_mode}", row["images_per_s"],
                                        row["gflop_per_image"], row["achieved_tflops"], row["peak_memory_mib"])
                            rows.append(row)
    out = args.out or RESULTS / "sampling.json"
    if args.append and out.is_file():
        rows = json.loads(out.read_text())["rows"] + rows
    columns = {"architecture": "arch", "model": "model", "size": "px", "batch": "batch", "steps": "steps",
               "scheduler": "sampler", "guidance": "guidance", "mixed_precision": "precision", "channels_last": "NHWC", "compile": "compile", "images_per_s": "images/s",
               "ms_per_image_step": "ms/image/step", "first_run_s": "first run s", "gflop_per_image": "GFLOP/image", "gflop_per_forward": "GFLOP/forward", "attention": "attention",
               "achieved_tflops": "TFLOP/s", "fraction_of_peak": "of bf16 peak", "fraction_of_matmul": "of bf16 matmul", "peak_memory_mib": "peak MiB"}
    table = markdown_table(rows, columns)
    table += ["", "Medians of the timed runs (in the JSON) after a warm-up run ('first run s', which pays any "
              "compilation). Guidance other than 1 runs two UNet passes per step. Precision applies on CUDA only "
              "(CPU runs float32). Random-weight models built from each profile's generator configs. CPU peak "
              "memory is resident-set growth during the row (memory kept from earlier rows is not counted)."]
    print("\n".join(table))
    out = write_results("sampling", {"rows": rows}, table, "Mask and image sampling speed", out=out)
    logger.info("wrote %s", out)
    return {"rows": rows}


if __name__ == "__main__":
    main()
