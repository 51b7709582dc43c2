"""Diffusion plumbing shared by the mask and image generators: schedules, samplers, seeds, precision.

Schedulers hold no weights: a generator stores the *training* noise schedule (a `DDPMScheduler` config)
and builds whichever sampler is asked for from it at sampling time (DDIM or DPM-Solver++), so samplers
swap without retraining. Randomness is one `torch.Generator` per sample: the initial noise and any
per-step noise of a sample come from its own seed, so a sample regenerated alone equals the batch one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from aurad_models.seeding import derive_seed, torch_generator

PredictionType = Literal["epsilon", "sample", "v_prediction"]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
SchedulerName = Literal["ddim", "dpm-solver++"]
MixedPrecision = Literal["no", "bf16", "fp16"]
CompileMode = Literal["no", "default", "reduce-overhead", "max-autotune"]


class SamplingSettings(BaseModel):
    """What every sampler shares: the sampler and its steps, per-step noise, batch size, and the speed
    settings (precision, memory format, compilation; bench/sampling.py measures them)."""

    model_config = ConfigDict(extra="forbid")

    scheduler: SchedulerName = Field("ddim", description="sampler: ddim or dpm-solver++ (2nd-order multistep)")
    num_inference_steps: int = Field(20, ge=1, description="denoising steps per sample")
    eta: float = Field(
        0.0, ge=0, le=1, description="DDIM per-step noise, 0 (deterministic) to 1 (DDPM-like); only with ddim"
    )
    batch_size: int = Field(16, ge=1, description="samples denoised together in one batch")
    mixed_precision: MixedPrecision = Field("bf16", description="autocast dtype on CUDA, and bf16 on CPUs that compute it "
                                            "natively (2.2x faster image sampling on this project's AVX512-BF16 CPU); 'no': float32")
    channels_last: bool = Field(True, description="NHWC weights and inputs: tensor-core friendly on GPUs, and 1.15x "
                                "faster on this project's CPU (bench/results/sampling.md)")
    compile: CompileMode = Field("no", description="torch.compile the UNet ('reduce-overhead' adds CUDA graphs): 7-30 s per "
                                 "input shape and no faster on this project's CPU (bench/results/sampling.md); for GPUs, "
                                 "measure with bench/gpu.sh")


def training_scheduler(num_train_timesteps: int, beta_schedule: str, prediction_type: str) -> DDPMScheduler:
    """The noise schedule a generator is trained with (and the config its samplers are built from)."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=True,
        timestep_spacing="trailing",
    )


def sampling_scheduler(name: SchedulerName, training: DDPMScheduler, clip_sample: bool = True):
    """A fresh sampler of the requested kind over the training schedule ('trailing' spacing: the first
    step starts from pure noise)."""
    if name == "ddim":
        return DDIMScheduler.from_config(training.config, clip_sample=clip_sample, set_alpha_to_one=True, timestep_spacing="trailing")
    if name == "dpm-solver++":
        return DPMSolverMultistepScheduler.from_config(
            training.config, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"
        )
    raise ValueError(f"unknown scheduler {name!r}; choose 'ddim' or 'dpm-solver++'")


def training_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network is trained to predict for the schedule's prediction type."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"unknown prediction type {kind!r}")


def min_snr_weights(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023): every timestep's loss weighted as if
    its target were x0 with the SNR clipped at gamma, so the many nearly clean, easy timesteps stop
    dominating the gradient. (B,) ones when gamma is None."""
    if gamma is None:
        return torch.ones(len(t), device=t.device)
    alphas = scheduler.alphas_cumprod.to(t.device)[t]
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return clipped / snr
    if kind == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def per_sample_noise(shape: Sequence[int], seeds: Sequence[int], device: torch.device, salt: int = 0) -> torch.Tensor:
    """Gaussian noise (len(seeds), *shape), row i drawn only from seed i (salt 0: the initial noise; other
    salts: further independent draws of the same sample, e.g. one per sampling step)."""
    generators = [torch_generator(int(seed) if salt == 0 else derive_seed(int(seed), "noise", salt)) for seed in seeds]
    return randn_tensor((len(seeds), *shape), generator=generators, device=torch.device("cpu")).to(device)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): only then is bf16 autocast faster."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast(device: torch.device, mixed_precision: MixedPrecision, on_cpu: bool = False) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast on CUDA when asked for; with `on_cpu`, bf16 autocast on a CPU with native bf16
    too (measured on this project's AVX512-BF16 CPU: 1.6-1.7x faster training steps of the generator UNets,
    2.2x faster image sampling); full precision everywhere else."""
    if device.type == "cuda" and mixed_precision != "no":
        dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and on_cpu and mixed_precision == "bf16" and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class SamplingNetwork:
    """A generator's UNet as sampling runs it: inputs in the weights' memory format, eager or compiled.

    `run` is the UNet itself or its `torch.compile` wrapper (same weights); call it like the UNet.
    """

    run: Callable[..., object]
    memory_format: torch.memory_format

    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        return self.run(sample.contiguous(memory_format=self.memory_format), timesteps, class_labels=class_labels).sample


def sampling_network(unet: nn.Module, channels_last: bool, compile_mode: CompileMode,
                     compiled: dict[str, Callable[..., object]]) -> SamplingNetwork:
    """The UNet set up for sampling: channels-last weights (NHWC convolutions; tensor-core friendly on GPUs)
    and `torch.compile` (Inductor kernels; 'reduce-overhead' adds CUDA graphs). Compiling costs 7-30 s per
    UNet and input shape on 2 CPU cores, where the compiled UNet is no faster than eager channels-last
    (bench/results/sampling.md); on GPUs it is measured by bench/gpu.sh.
    `compiled` caches the compiled wrappers per mode (one per generator)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    unet.to(memory_format=memory_format)
    if compile_mode == "no":
        return SamplingNetwork(unet, memory_format)
    if compile_mode not in compiled:
        compiled[compile_mode] = torch.compile(unet, mode=None if compile_mode == "default" else compile_mode, dynamic=False)
    return SamplingNetwork(compiled[compile_mode], memory_format)


def eager_network(unet: nn.Module) -> SamplingNetwork:
    """The UNet run as it is (training)."""
    return SamplingNetwork(unet, torch.contiguous_format)


def denoise(
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    scheduler,
    num_inference_steps: int,
    seeds: Sequence[int],
    guidance_scale: float = 1.0,
    predict_unconditional: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """The sampling loop: `predict(x, t)` is the conditional model output, `predict_unconditional` the
    null-conditioned one; with guidance_scale != 1 they mix as `u + s * (c - u)` (classifier-free guidance).
    DDIM's per-step noise (eta > 0) comes from each sample's own seed."""
    scheduler.set_timesteps(num_inference_steps, device=x.device)
    x = x * scheduler.init_noise_sigma
    for step, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        output = predict(model_input, t)
        if guidance_scale != 1.0:
            if predict_unconditional is None:
                raise ValueError("guidance_scale != 1 needs an unconditional prediction")
            unconditional = predict_unconditional(model_input, t)
            output = unconditional + guidance_scale * (output - unconditional)
        kwargs = {}
        if isinstance(scheduler, DDIMScheduler) and eta > 0:
            kwargs = {"eta": eta, "variance_noise": per_sample_noise(x.shape[1:], seeds, x.device, salt=1 + step)}
        elif eta > 0:
            raise ValueError("eta > 0 (stochastic sampling) is only supported with the 'ddim' scheduler")
        x = scheduler.step(output.float(), t, x, **kwargs).prev_sample
    return x


def as_channel_tensor(
    array, name: str, channels: int, size: int, device: torch.device, binary: bool = True
) -> torch.Tensor:
    """Check a (N, C, H, W) conditioning stack and return it as float32 on `device`.

    Raises naming the argument and what is wrong: dimensions, channel count, size, value range.
    """
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.array(array))
    if tensor.ndim != 4:
        raise ValueError(f"{name} must be (N, {channels}, H, W), got {tuple(tensor.shape)}")
    if tensor.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got {tensor.shape[1]} (shape {tuple(tensor.shape)})")
    if tuple(tensor.shape[2:]) != (size, size):
        raise ValueError(
            f"{name} must be {size}x{size} (the model's size), got {tensor.shape[2]}x{tensor.shape[3]}; "
            "resize masks with nearest-neighbour first"
        )
    tensor = tensor.to(torch.float32)
    if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
        raise ValueError(f"{name} values must lie in [0, 1], got [{tensor.min().item()}, {tensor.max().item()}]")
    if binary and tensor.numel() and not torch.all((tensor == 0) | (tensor == 1)):
        raise ValueError(f"{name} must be binary masks (0 / 1)")
    return tensor.to(device)


def unet_blocks(block_out_channels: Sequence[int], attention: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Down / up block types: plain ResNet blocks, self-attention only at the lowest resolution if asked
    (attention is the expensive part on a CPU)."""
    n = len(block_out_channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return tuple(down), tuple(up)
