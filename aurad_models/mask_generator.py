"""Pathology masks from anatomy and a prompt: a diffusers UNet denoising the 7 pathology channels.

The UNet sees, concatenated on channels: the noisy masks (7, scaled to [-1, 1]), the anatomy (14, 0/1) and
the prompt's spatial prior maps (7, see `prompt_encoder`); the prompt's token embedding is added to the
time embedding (`class_embed_type="identity"`). By default (`mask_loss="bce"`) the network predicts the
logits of the clean masks (x0 = tanh(output), trained with binary cross-entropy: sharper, and small lesions
get a useful gradient from the first steps), and a learned per-class `ConditionShortcut` from prior map c to
output channel c is added to its output, so "prior map c is about output channel c" need not be routed through
the whole UNet (a small CPU-trained UNet otherwise mixes the classes up). Prompts are dropped to the null prompt during training
(`prompt_dropout`) so sampling can use classifier-free guidance, and attributes (side, zone, size) are
dropped to "unspecified" (`attribute_dropout`) so partial prompts mean "any".

Saved as a directory with one subfolder per part:

    model_index.json     class, format version, parts, the MaskGeneratorConfig
    unet/                UNet2DModel (config.json + diffusion_pytorch_model.safetensors)
    prompt_encoder/      PromptEncoder (config.json + diffusion_pytorch_model.safetensors)
    shortcut/            ConditionShortcut (when config.shortcut)
    scheduler/           the training noise schedule (scheduler_config.json); samplers are built from it

Post-processing, off by default and measured separately: `restrict_to_prompt` empties the channels of
classes the prompt does not ask for, `restrict_to_region` clips each requested class to the region its
prompt asks for; both report how many pixels they removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from diffusers import ConfigMixin, DDPMScheduler, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from aurad_models.diffusion import (
    BetaSchedule,
    PredictionType,
    SamplingNetwork,
    SamplingSettings,
    as_channel_tensor,
    autocast,
    denoise,
    eager_network,
    per_sample_noise,
    sampling_network,
    sampling_scheduler,
    training_scheduler,
    training_target,
    unet_blocks,
)
from aurad_models.findings import Finding
from aurad_models.generators import register_generator
from aurad_models.prompt_encoder import EncodedPrompt, Prompt, PromptEncoder, requested_regions
from aurad_models.seeding import torch_generator
from aurad_models.serialization import read_index, require_file, write_index
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES, pathology_index

logger = logging.getLogger(__name__)

N_ANATOMY = len(ANATOMY_STRUCTURES)
N_PATHOLOGY = len(PATHOLOGIES)
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


class MaskGeneratorConfig(BaseModel):
    """Architecture and training-time conditioning of the mask generator (saved with the model).

    Defaults are the demo size: trains in about two minutes on 2 CPU cores at 64 px.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(64, ge=16, description="square mask size in pixels the generator works at")
    block_out_channels: tuple[int, ...] = Field((16, 32, 64, 64), description="UNet channels per resolution level")
    layers_per_block: int = Field(1, ge=1, description="ResNet layers per UNet block")
    attention: bool = Field(False, description="self-attention at the lowest resolution (costly on a CPU)")
    norm_num_groups: int = Field(8, description="GroupNorm groups; every block width must be divisible by it")
    prompt_hidden_dim: int = Field(64, description="width of the prompt encoder's finding-token embedding")
    prediction_type: PredictionType = Field(
        "sample", description="what the UNet predicts: sample (clean masks), epsilon (noise) or v_prediction"
    )
    num_train_timesteps: int = Field(1000, description="diffusion timesteps of the training noise schedule")
    beta_schedule: BetaSchedule = Field(
        "squaredcos_cap_v2", description="noise schedule: linear, scaled_linear or squaredcos_cap_v2 (cosine)"
    )
    prompt_dropout: float = Field(0.1, ge=0, le=1, description="share of training prompts replaced by the null prompt (for CFG)")
    attribute_dropout: float = Field(0.2, ge=0, le=1, description="chance each side / zone / size is forgotten in training")
    region_loss_weight: float = Field(4.0, ge=0, description="extra loss weight on pixels in requested regions or lesions")
    mask_loss: Literal["mse", "bce"] = Field(
        "bce", description="bce: the UNet predicts logits of the clean masks (x0 = tanh(output)), trained with "
        "binary cross-entropy; needs prediction_type 'sample'")
    input_perturbation: float = Field(0.2, ge=0, description="extra noise on the training inputs only (Ning et al. 2023): "
                                      "makes sampling robust to its own drift, which otherwise grows lesions in unrequested classes")
    shortcut: bool = Field(True, description="a learned per-class path from prior map c to output channel c, beside the UNet")

    @model_validator(mode="after")
    def _check_shapes(self) -> "MaskGeneratorConfig":
        _check_unet_shape(self.image_size, self.block_out_channels, self.norm_num_groups)
        if self.mask_loss == "bce" and self.prediction_type != "sample":
            raise ValueError("mask_loss 'bce' predicts the clean masks: it needs prediction_type 'sample'")
        return self


class MaskSamplingConfig(SamplingSettings):
    """How to sample masks: the shared sampler and speed settings, guidance, thresholds, post-processing."""

    @field_validator("class_thresholds")
    @classmethod
    def _known_findings(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(PATHOLOGIES))
        if unknown:
            raise ValueError(f"unknown findings {unknown} in class_thresholds; known: {', '.join(PATHOLOGIES)}")
        bad = {k: v for k, v in value.items() if not 0 < v < 1}
        if bad:
            raise ValueError(f"class thresholds must lie in (0, 1), got {bad}")
        return value

    guidance_scale: float = Field(2.0, ge=0, description="classifier-free guidance strength of the prompt (1: none)")
    threshold: float = Field(0.5, gt=0, lt=1, description="on the [0, 1] scale of the denoised masks")
    class_thresholds: dict[str, float] = Field(
        default_factory=dict, description="per-finding overrides of threshold (small findings such as nodules come "
        "out of few sampling steps with lower values than large ones)")
    restrict_to_prompt: bool = Field(True, description="post-processing: empty the classes the prompt does not ask for")
    restrict_to_region: bool = Field(True, description="post-processing: clip each class to the region its prompt "
                                     "requests may lie in (prompt_encoder.requested_regions); bench/quality.py measures masks without both")


@dataclass
class MaskGenerationOutput:
    """Generated masks: binary `masks` (N, 7, H, W) uint8, the denoised `soft` masks in [0, 1] before the
    threshold, the prompts and seeds used, and per sample and class how many pixels `restrict_to_prompt`
    removed (all zero when it was off)."""

    masks: np.ndarray
    soft: np.ndarray
    prompts: list[Prompt]
    seeds: list[int]
    removed_by_restriction: np.ndarray


def _check_unet_shape(image_size: int, block_out_channels: Sequence[int], norm_num_groups: int) -> None:
    factor = 2 ** (len(block_out_channels) - 1)
    if image_size % factor:
        raise ValueError(f"image_size {image_size} must be divisible by {factor} for {len(block_out_channels)} levels")
    for channels in block_out_channels:
        if channels % norm_num_groups:
            raise ValueError(f"block channels {channels} not divisible by norm_num_groups {norm_num_groups}")


def build_unet(in_channels: int, out_channels: int, image_size: int, block_out_channels, layers_per_block: int,
               attention: bool, norm_num_groups: int) -> UNet2DModel:
    """A pixel-space UNet2DModel whose class embedding is an identity (the caller adds a vector)."""
    down, up = unet_blocks(block_out_channels, attention)
    return UNet2DModel(
        sample_size=image_size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=tuple(block_out_channels),
        down_block_types=down,
        up_block_types=up,
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        attention_head_dim=min(block_out_channels[-1], 32),
        add_attention=attention,
        class_embed_type="identity",
    )


def check_prompts(prompts: Sequence, n: int) -> list[Prompt]:
    """Prompts as tuples of Findings, one per sample; a clear error otherwise."""
    if len(prompts) != n:
        raise ValueError(f"need one prompt per sample: {n} samples, {len(prompts)} prompts")
    checked = []
    for i, prompt in enumerate(prompts):
        prompt = tuple(prompt)
        for finding in prompt:
            if not isinstance(finding, Finding):
                raise TypeError(f"prompt {i}: expected Finding objects, got {type(finding).__name__} "
                                "(parse text with aurad_models.findings.parse_prompt)")
        checked.append(prompt)
    return checked


def check_seeds(seeds: Sequence[int], n: int) -> list[int]:
    if len(seeds) != n:
        raise ValueError(f"need one seed per sample: {n} samples, {len(seeds)} seeds")
    return [int(s) for s in seeds]


def drop_attributes(prompt: Prompt, rng: np.random.Generator, p: float) -> Prompt:
    """Forget each attribute of each finding with probability p (training: partial prompts mean 'any')."""
    out = []
    for finding in prompt:
        update = {k: None for k in ("side", "zone", "size") if getattr(finding, k) is not None and rng.random() < p}
        out.append(finding.model_copy(update=update) if update else finding)
    return tuple(out)


class ConditionShortcut(ModelMixin, ConfigMixin):
    """A learned per-pixel, per-class path from prior map c to output channel c (weight and bias per class),
    added to the UNet's output. It starts at zero; it gives "prior map c is about output channel c" for
    free, which a small UNet otherwise needs many steps to route through its blocks."""

    @register_to_config
    def __init__(self, channels: int = N_PATHOLOGY):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1, groups=channels)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, prior_maps: torch.Tensor) -> torch.Tensor:
        return self.conv(prior_maps)


@register_generator("mask")
class MaskGenerator(nn.Module):
    """UNet + prompt encoder + noise schedule; `training_loss` to train, `sample` to generate."""

    def __init__(self, config: MaskGeneratorConfig, unet: UNet2DModel | None = None,
                 prompt_encoder: PromptEncoder | None = None, shortcut: ConditionShortcut | None = None):
        super().__init__()
        self.config = config
        self.unet = unet or build_unet(
            N_PATHOLOGY + N_ANATOMY + N_PATHOLOGY, N_PATHOLOGY, config.image_size, config.block_out_channels,
            config.layers_per_block, config.attention, config.norm_num_groups,
        )
        embed_dim = self.unet.config.block_out_channels[0] * 4
        self.prompt_encoder = prompt_encoder or PromptEncoder(embed_dim=embed_dim, hidden_dim=config.prompt_hidden_dim)
        self.shortcut = (shortcut or ConditionShortcut()) if config.shortcut else None
        self.noise_scheduler = training_scheduler(config.num_train_timesteps, config.beta_schedule, config.prediction_type)
        self._compiled: dict[str, Callable[..., object]] = {}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _raw(self, noisy: torch.Tensor, t, anatomy: torch.Tensor, encoded: EncodedPrompt,
             network: SamplingNetwork | None = None) -> torch.Tensor:
        """The network's output: logits of the clean masks (bce) or the schedule's prediction (mse)."""
        timesteps = torch.as_tensor(t, device=noisy.device).expand(len(noisy))
        model_input = torch.cat([noisy, anatomy, encoded.spatial], dim=1)
        output = (network or eager_network(self.unet))(model_input, timesteps, class_labels=encoded.embedding)
        if self.shortcut is not None:
            output = output + self.shortcut(encoded.spatial)
        return output

    def _predict(self, noisy: torch.Tensor, t, anatomy: torch.Tensor, encoded: EncodedPrompt,
                 network: SamplingNetwork | None = None) -> torch.Tensor:
        """What the sampler steps with: the clean-mask estimate in [-1, 1] (bce) or the raw prediction."""
        output = self._raw(noisy, t, anatomy, encoded, network)
        return torch.tanh(output.float()) if self.config.mask_loss == "bce" else output

    def training_loss(self, anatomy: torch.Tensor, pathology: torch.Tensor, prompts: Sequence[Prompt], seed: int) -> torch.Tensor:
        """Denoising loss on one batch; every random draw (dropout, timesteps, noise) comes from `seed`."""
        rng = np.random.default_rng(seed)
        generator = torch_generator(seed)
        prompts = [
            None if rng.random() < self.config.prompt_dropout else drop_attributes(p, rng, self.config.attribute_dropout)
            for p in prompts
        ]
        x0 = pathology * 2.0 - 1.0
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(x0),), generator=generator).to(x0.device)
        perturbed = noise + self.config.input_perturbation * torch.randn(x0.shape, generator=generator).to(x0.device)
        noisy = self.noise_scheduler.add_noise(x0, perturbed, t)
        encoded = self.prompt_encoder(prompts, anatomy)
        output = self._raw(noisy, t, anatomy, encoded).float()
        weight = 1.0 + self.config.region_loss_weight * ((encoded.spatial > 0) | (pathology > 0)).float()
        if self.config.mask_loss == "bce":  # tanh(o) = 2 sigmoid(2 o) - 1: logits 2 o of the 0/1 masks
            return (weight * nn.functional.binary_cross_entropy_with_logits(2 * output, pathology, reduction="none")).mean()
        target = training_target(self.noise_scheduler, x0, noise, t)
        return (weight * (output - target) ** 2).mean()

    @torch.no_grad()
    def sample(
        self,
        anatomy: np.ndarray | torch.Tensor,
        prompts: Sequence[Sequence[Finding]],
        seeds: Sequence[int],
        sampling: MaskSamplingConfig | None = None,
    ) -> MaskGenerationOutput:
        """Generate pathology masks for anatomy (N, 14, H, W) and one prompt and seed per sample."""
        sampling = sampling or MaskSamplingConfig()
        device = self.device
        # 1. Check inputs.
        anatomy_t = as_channel_tensor(anatomy, "anatomy", N_ANATOMY, self.config.image_size, device)
        prompts = check_prompts(prompts, len(anatomy_t))
        seeds = check_seeds(seeds, len(anatomy_t))
        self.eval()
        soft_chunks = []
        for start in range(0, len(anatomy_t), sampling.batch_size):
            chunk = slice(start, start + sampling.batch_size)
            soft_chunks.append(self._sample_chunk(anatomy_t[chunk], prompts[chunk], seeds[chunk], sampling))
        soft = np.concatenate(soft_chunks) if soft_chunks else np.zeros((0, N_PATHOLOGY, *anatomy_t.shape[2:]), np.float32)
        # 5. Threshold into binary masks; optionally empty the classes the prompt does not ask for.
        thresholds = np.array([sampling.class_thresholds.get(label, sampling.threshold) for label in PATHOLOGIES], np.float32)
        masks = (soft > thresholds[None, :, None, None]).astype(np.uint8)
        removed = np.zeros((len(masks), N_PATHOLOGY), dtype=np.int64)
        anatomy_np = anatomy_t.cpu().numpy() > 0.5
        for i, prompt in enumerate(prompts):
            requested = {pathology_index(f.label) for f in prompt}
            if sampling.restrict_to_prompt:
                for c in set(range(N_PATHOLOGY)) - requested:
                    removed[i, c] += int(masks[i, c].sum())
                    masks[i, c] = 0
            if sampling.restrict_to_region:
                region = requested_regions(prompt, anatomy_np[i])
                for c in requested:
                    removed[i, c] += int((masks[i, c] & ~region[c]).sum())
                    masks[i, c] &= region[c]
        return MaskGenerationOutput(masks=masks, soft=soft, prompts=prompts, seeds=seeds, removed_by_restriction=removed)

    def _sample_chunk(self, anatomy: torch.Tensor, prompts: list[Prompt], seeds: list[int], sampling: MaskSamplingConfig) -> np.ndarray:
        # 2. A fresh sampler over the training schedule.
        scheduler = sampling_scheduler(sampling.scheduler, self.noise_scheduler)
        # 3. Initial noise, one generator per sample.
        x = per_sample_noise((N_PATHOLOGY, *anatomy.shape[2:]), seeds, anatomy.device)
        # 4. Denoise with classifier-free guidance (null prompt as the unconditional branch).
        conditional = self.prompt_encoder(prompts, anatomy)
        unconditional = self.prompt_encoder([None] * len(prompts), anatomy)
        network = sampling_network(self.unet, sampling.channels_last, sampling.compile, self._compiled)
        with autocast(anatomy.device, sampling.mixed_precision, on_cpu=True):
            x = denoise(
                lambda x_t, t: self._predict(x_t, t, anatomy, conditional, network),
                x, scheduler, sampling.num_inference_steps, seeds,
                guidance_scale=sampling.guidance_scale,
                predict_unconditional=lambda x_t, t: self._predict(x_t, t, anatomy, unconditional, network),
                eta=sampling.eta,
            )
        return ((x.float().clamp(-1, 1) + 1) / 2).cpu().numpy()

    # --- save / load --------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet")
        self.prompt_encoder.save_pretrained(directory / "prompt_encoder")
        parts = {"unet": "UNet2DModel", "prompt_encoder": "PromptEncoder", "scheduler": "DDPMScheduler"}
        if self.shortcut is not None:
            self.shortcut.save_pretrained(directory / "shortcut")
            parts["shortcut"] = "ConditionShortcut"
        self.noise_scheduler.save_pretrained(directory / "scheduler")
        write_index(directory, type(self).__name__, parts, config=self.config.model_dump(mode="json"))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "MaskGenerator":
        directory = Path(directory)
        index = read_index(directory, cls.__name__)
        config = MaskGeneratorConfig.model_validate(index["config"])
        parts = ("unet", "prompt_encoder", "shortcut") if config.shortcut else ("unet", "prompt_encoder")
        for part in parts:
            require_file(directory / part, _DIFFUSERS_WEIGHTS, what=f"{part} weights")
        require_file(directory / "scheduler", "scheduler_config.json", what="scheduler config")
        unet = UNet2DModel.from_pretrained(directory / "unet", low_cpu_mem_usage=False)
        encoder = PromptEncoder.from_pretrained(directory / "prompt_encoder", low_cpu_mem_usage=False)
        shortcut = ConditionShortcut.from_pretrained(directory / "shortcut", low_cpu_mem_usage=False) if config.shortcut else None
        model = cls(config, unet=unet, prompt_encoder=encoder, shortcut=shortcut)
        model.noise_scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
        return model.to(device).eval()
