"""Grayscale chest X-rays from anatomy + pathology masks: segmentation-guided diffusion in pixel space.

The UNet sees, concatenated on channels: the noisy image (1 channel, [-1, 1]), the anatomy masks (14) and
the pathology masks (7). Training drops masks at random (*mask ablation*): all anatomy, all pathology, or
single channels. A dropped channel is zeroed **and** its availability flag is cleared; the 21 flags go
through a small MLP (`AvailabilityEmbedding`) added to the time embedding. So "dropped" (flag 0: unknown,
render anything plausible) differs from "absent" (flag 1, empty mask: there is none), and the model can
be conditioned on incomplete masks: anatomy alone, pathology alone, a few structures. Everything dropped is
the unconditional model, which classifier-free guidance uses (`guidance_scale` > 1).

Saved as a directory with one subfolder per part:

    model_index.json        class, format version, parts, the ImageGeneratorConfig
    unet/                   UNet2DModel
    condition_embedding/    AvailabilityEmbedding
    scheduler/              the training noise schedule

Extension point: `ControlNetImageGenerator` trains a diffusers `ControlNetModel` over a frozen,
pretrained base `UNet2DConditionModel` loaded from a local directory (never downloaded), with the same
training loss and sampling API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import ConfigMixin, ControlNetModel, DDPMScheduler, ModelMixin, UNet2DConditionModel, UNet2DModel
from diffusers.configuration_utils import register_to_config
from pydantic import BaseModel, ConfigDict, Field, model_validator
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
    min_snr_weights,
    per_sample_noise,
    sampling_network,
    sampling_scheduler,
    training_scheduler,
    training_target,
)
from aurad_models.generators import register_generator
from aurad_models.mask_generator import _check_unet_shape, build_unet, check_seeds
from aurad_models.pixels import model_to_unit, unit_to_model
from aurad_models.seeding import torch_generator
from aurad_models.serialization import read_index, require_file, write_index
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES

logger = logging.getLogger(__name__)

N_ANATOMY = len(ANATOMY_STRUCTURES)
N_PATHOLOGY = len(PATHOLOGIES)
N_FLAGS = N_ANATOMY + N_PATHOLOGY
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


class ImageGeneratorConfig(BaseModel):
    """Architecture, noise schedule and mask-ablation rates of the image generator (saved with the model).

    Defaults are the demo size (about two minutes of training on 2 CPU cores at 64 px).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(64, ge=16, description="square image size in pixels the generator works at")
    block_out_channels: tuple[int, ...] = Field((16, 32, 64, 64), description="UNet channels per resolution level")
    layers_per_block: int = Field(1, ge=1, description="ResNet layers per UNet block")
    attention: bool = Field(False, description="self-attention at the lowest resolution (costly on a CPU)")
    norm_num_groups: int = Field(8, description="GroupNorm groups; every block width must be divisible by it")
    prediction_type: PredictionType = Field(
        "v_prediction", description="what the UNet predicts: v_prediction, epsilon (noise) or sample (clean image)"
    )
    num_train_timesteps: int = Field(1000, description="diffusion timesteps of the training noise schedule")
    beta_schedule: BetaSchedule = Field(
        "squaredcos_cap_v2", description="noise schedule: linear, scaled_linear or squaredcos_cap_v2 (cosine)"
    )
    anatomy_dropout: float = Field(0.1, ge=0, le=1, description="chance all anatomy is dropped in training")
    anatomy_channel_dropout: float = Field(0.05, ge=0, le=1, description="chance each anatomy channel is dropped")
    pathology_dropout: float = Field(0.1, ge=0, le=1, description="chance all pathology is dropped")
    pathology_channel_dropout: float = Field(0.05, ge=0, le=1, description="chance each pathology channel is dropped")
    pathology_loss_weight: float = Field(2.0, ge=0, description="extra loss weight on pixels inside pathology masks")
    snr_gamma: float | None = Field(5.0, gt=0, description="Min-SNR-gamma loss weighting of the timesteps (None: uniform)")

    @model_validator(mode="after")
    def _check_shapes(self) -> "ImageGeneratorConfig":
        _check_unet_shape(self.image_size, self.block_out_channels, self.norm_num_groups)
        return self


class ImageSamplingConfig(SamplingSettings):
    """How to sample images: the shared sampler and speed settings, and classifier-free guidance (1 = none)."""

    guidance_scale: float = Field(1.0, ge=0, description="classifier-free guidance strength of the masks (1: none)")


@dataclass
class ImageGenerationOutput:
    """Generated images (N, H, W) float32 in [0, 1], the seed of each, and which mask channels were given."""

    images: np.ndarray
    seeds: list[int]
    anatomy_available: np.ndarray
    pathology_available: np.ndarray


class AvailabilityEmbedding(ModelMixin, ConfigMixin):
    """Availability flags (which mask channels were given) -> a vector added to the time embedding."""

    @register_to_config
    def __init__(self, num_flags: int = N_FLAGS, embed_dim: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(num_flags, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, flags: torch.Tensor) -> torch.Tensor:
        return self.mlp(flags)


def ablation_flags(n: int, config: ImageGeneratorConfig, rng: np.random.Generator) -> np.ndarray:
    """Training-time availability flags (n, 21): 1 = channel given, 0 = dropped."""
    flags = np.ones((n, N_FLAGS), dtype=np.float32)
    anatomy, pathology = flags[:, :N_ANATOMY], flags[:, N_ANATOMY:]
    anatomy[rng.random((n, N_ANATOMY)) < config.anatomy_channel_dropout] = 0
    pathology[rng.random((n, N_PATHOLOGY)) < config.pathology_channel_dropout] = 0
    anatomy[rng.random(n) < config.anatomy_dropout] = 0
    pathology[rng.random(n) < config.pathology_dropout] = 0
    return flags


def _availability(given, n: int, channels: int, name: str, present: bool) -> np.ndarray:
    """(n, channels) flags from None (all given if the masks are, else none), a (channels,) or (n, channels)
    boolean array."""
    if given is None:
        return np.full((n, channels), present, dtype=bool)
    flags = np.asarray(given, dtype=bool)
    if flags.shape == (channels,):
        flags = np.broadcast_to(flags, (n, channels))
    if flags.shape != (n, channels):
        raise ValueError(f"{name} must be ({channels},) or ({n}, {channels}) booleans, got shape {flags.shape}")
    if flags.any() and not present:
        raise ValueError(f"{name} marks channels as given but no masks were passed")
    return flags.copy()


@register_generator("image")
class ImageGenerator(nn.Module):
    """UNet + availability embedding + noise schedule; `training_loss` to train, `sample` to render."""

    part_classes = {"unet": "UNet2DModel", "condition_embedding": "AvailabilityEmbedding", "scheduler": "DDPMScheduler"}

    def __init__(self, config: ImageGeneratorConfig, unet: UNet2DModel | None = None,
                 condition_embedding: AvailabilityEmbedding | None = None):
        super().__init__()
        self.config = config
        self.unet = unet or build_unet(
            1 + N_ANATOMY + N_PATHOLOGY, 1, config.image_size, config.block_out_channels,
            config.layers_per_block, config.attention, config.norm_num_groups,
        )
        embed_dim = self.unet.config.block_out_channels[0] * 4
        self.condition_embedding = condition_embedding or AvailabilityEmbedding(N_FLAGS, embed_dim)
        self.noise_scheduler = training_scheduler(config.num_train_timesteps, config.beta_schedule, config.prediction_type)
        self._compiled: dict[str, Callable[..., object]] = {}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _sampling_network(self, sampling: ImageSamplingConfig) -> SamplingNetwork | None:
        return sampling_network(self.unet, sampling.channels_last, sampling.compile, self._compiled)

    def _predict(self, noisy: torch.Tensor, t, masks: torch.Tensor, flags: torch.Tensor,
                 network: SamplingNetwork | None = None) -> torch.Tensor:
        """Model output for noisy images, masks (B, 21, H, W) already multiplied by the flags (B, 21)."""
        timesteps = torch.as_tensor(t, device=noisy.device).expand(len(noisy))
        network = network or eager_network(self.unet)
        return network(torch.cat([noisy, masks], dim=1), timesteps, class_labels=self.condition_embedding(flags))

    def training_loss(self, images: torch.Tensor, anatomy: torch.Tensor, pathology: torch.Tensor, seed: int,
                      pathology_known: torch.Tensor | None = None) -> torch.Tensor:
        """Denoising loss on one batch (images (B, H, W) in [0, 1]) with mask ablation drawn from `seed`.
        `pathology_known` (B,) bool marks images whose pathology masks are known; the others (unlabelled
        images) train with every pathology channel dropped, as "unknown"."""
        rng = np.random.default_rng(seed)
        generator = torch_generator(seed)
        flags = torch.from_numpy(ablation_flags(len(images), self.config, rng)).to(images.device)
        if pathology_known is not None:
            flags[:, N_ANATOMY:] *= pathology_known.to(flags.dtype)[:, None]
        masks = torch.cat([anatomy, pathology], dim=1) * flags[:, :, None, None]
        x0 = unit_to_model(images[:, None].float())
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(x0),), generator=generator).to(x0.device)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        output = self._predict(noisy, t, masks, flags)
        target = training_target(self.noise_scheduler, x0, noise, t)
        weight = 1.0 + self.config.pathology_loss_weight * (masks[:, N_ANATOMY:] > 0).any(dim=1, keepdim=True).float()
        per_sample = (weight * (output.float() - target) ** 2).mean(dim=(1, 2, 3))
        return (min_snr_weights(self.noise_scheduler, t, self.config.snr_gamma) * per_sample).mean()

    @torch.no_grad()
    def sample(
        self,
        anatomy: np.ndarray | torch.Tensor | None,
        pathology: np.ndarray | torch.Tensor | None,
        seeds: Sequence[int],
        sampling: ImageSamplingConfig | None = None,
        anatomy_available: np.ndarray | None = None,
        pathology_available: np.ndarray | None = None,
    ) -> ImageGenerationOutput:
        """Render one image per seed from anatomy (N, 14, H, W) and pathology (N, 7, H, W) masks.

        Either may be None (all its channels unknown); `*_available` flags mark single channels as unknown
        (their mask content is then ignored). An empty channel with its flag set means "absent".
        """
        sampling = sampling or ImageSamplingConfig()
        device = self.device
        size = self.config.image_size
        # 1. Check inputs.
        n = len(seeds)
        if anatomy is None:
            anatomy_t = torch.zeros((n, N_ANATOMY, size, size), device=device)
        else:
            anatomy_t = as_channel_tensor(anatomy, "anatomy", N_ANATOMY, size, device)
        if pathology is None:
            pathology_t = torch.zeros((n, N_PATHOLOGY, size, size), device=device)
        else:
            pathology_t = as_channel_tensor(pathology, "pathology", N_PATHOLOGY, size, device)
        if not len(anatomy_t) == len(pathology_t) == n:
            raise ValueError(f"need one seed per sample: anatomy {len(anatomy_t)}, pathology {len(pathology_t)}, seeds {n}")
        seeds = check_seeds(seeds, n)
        anatomy_flags = _availability(anatomy_available, n, N_ANATOMY, "anatomy_available", anatomy is not None)
        pathology_flags = _availability(pathology_available, n, N_PATHOLOGY, "pathology_available", pathology is not None)
        flags = torch.from_numpy(np.concatenate([anatomy_flags, pathology_flags], axis=1).astype(np.float32)).to(device)
        masks = torch.cat([anatomy_t, pathology_t], dim=1) * flags[:, :, None, None]
        self.eval()
        chunks = []
        for start in range(0, n, sampling.batch_size):
            chunk = slice(start, start + sampling.batch_size)
            chunks.append(self._sample_chunk(masks[chunk], flags[chunk], seeds[chunk], sampling))
        images = np.concatenate(chunks) if chunks else np.zeros((0, size, size), np.float32)
        return ImageGenerationOutput(images=images, seeds=seeds, anatomy_available=anatomy_flags, pathology_available=pathology_flags)

    def _sample_chunk(self, masks: torch.Tensor, flags: torch.Tensor, seeds: list[int], sampling: ImageSamplingConfig) -> np.ndarray:
        # 2. A fresh sampler over the training schedule.
        scheduler = sampling_scheduler(sampling.scheduler, self.noise_scheduler)
        # 3. Initial noise, one generator per sample.
        x = per_sample_noise((1, *masks.shape[2:]), seeds, masks.device)
        # 4. Denoise; the unconditional branch (for guidance) has every mask dropped.
        null_masks, null_flags = torch.zeros_like(masks), torch.zeros_like(flags)
        network = self._sampling_network(sampling)
        with autocast(masks.device, sampling.mixed_precision, on_cpu=True):
            x = denoise(
                lambda x_t, t: self._predict(x_t, t, masks, flags, network),
                x, scheduler, sampling.num_inference_steps, seeds,
                guidance_scale=sampling.guidance_scale,
                predict_unconditional=lambda x_t, t: self._predict(x_t, t, null_masks, null_flags, network),
                eta=sampling.eta,
            )
        # 5. Back to [0, 1] grayscale.
        return model_to_unit(x.float()[:, 0]).cpu().numpy()

    # --- save / load --------------------------------------------------------------------------------

    def _parts(self) -> dict[str, ModelMixin]:
        return {"unet": self.unet, "condition_embedding": self.condition_embedding}

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, part in self._parts().items():
            part.save_pretrained(directory / name)
        self.noise_scheduler.save_pretrained(directory / "scheduler")
        write_index(directory, type(self).__name__, self.part_classes, config=self.config.model_dump(mode="json"))
        return directory

    @classmethod
    def _load_parts(cls, directory: Path) -> tuple[ImageGeneratorConfig, dict[str, ModelMixin], DDPMScheduler]:
        index = read_index(directory, cls.__name__)
        config = ImageGeneratorConfig.model_validate(index["config"])
        classes = {"UNet2DModel": UNet2DModel, "AvailabilityEmbedding": AvailabilityEmbedding,
                   "UNet2DConditionModel": UNet2DConditionModel, "ControlNetModel": ControlNetModel}
        parts = {}
        for name, class_name in cls.part_classes.items():
            if name == "scheduler":
                continue
            require_file(directory / name, _DIFFUSERS_WEIGHTS, what=f"{name} weights")
            parts[name] = classes[class_name].from_pretrained(directory / name, low_cpu_mem_usage=False)
        require_file(directory / "scheduler", "scheduler_config.json", what="scheduler config")
        return config, parts, DDPMScheduler.from_pretrained(directory / "scheduler")

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ImageGenerator":
        config, parts, scheduler = cls._load_parts(Path(directory))
        model = cls(config, **parts)
        model.noise_scheduler = scheduler
        return model.to(device).eval()


@register_generator("image")
class ControlNetImageGenerator(ImageGenerator):
    """Extension point: a ControlNet over a frozen pretrained base UNet (`UNet2DConditionModel`, 1 channel
    in and out, pixel space) loaded from a local directory; only the ControlNet trains.

    The ControlNet's conditioning image is the masks (times their flags) plus the 21 flags as constant
    planes. The base sees an empty cross-attention context (zeros); a text-conditioned base would get an
    encoded prompt there. In pixel space the ControlNet's conditioning embedding must not downsample, hence
    a single `conditioning_embedding_out_channels` element.
    """

    part_classes = {"base_unet": "UNet2DConditionModel", "controlnet": "ControlNetModel", "scheduler": "DDPMScheduler"}

    def __init__(self, config: ImageGeneratorConfig, base_unet: UNet2DConditionModel,
                 controlnet: ControlNetModel | None = None, conditioning_embedding_channels: int = 16):
        nn.Module.__init__(self)
        base = base_unet.config
        if base.in_channels != 1 or base.out_channels != 1:
            raise ValueError(f"the base UNet must be grayscale (1 channel in and out), got {base.in_channels} -> {base.out_channels}")
        if base.sample_size not in (None, config.image_size):
            raise ValueError(f"the base UNet was built for {base.sample_size} px, the config asks for {config.image_size}")
        self.config = config
        self.base_unet = base_unet.requires_grad_(False)
        self.controlnet = controlnet or ControlNetModel.from_unet(
            base_unet, conditioning_channels=2 * N_FLAGS,
            conditioning_embedding_out_channels=(conditioning_embedding_channels,),
        )
        self.noise_scheduler = training_scheduler(config.num_train_timesteps, config.beta_schedule, config.prediction_type)

    @classmethod
    def from_base(cls, base_dir: str | Path, config: ImageGeneratorConfig | None = None,
                  conditioning_embedding_channels: int = 16) -> "ControlNetImageGenerator":
        """Start a ControlNet over the pretrained base UNet saved (diffusers layout) in `base_dir`."""
        base_dir = Path(base_dir)
        require_file(base_dir, "config.json", what="base UNet config")
        require_file(base_dir, _DIFFUSERS_WEIGHTS, what="base UNet weights")
        base = UNet2DConditionModel.from_pretrained(base_dir, low_cpu_mem_usage=False)
        config = config or ImageGeneratorConfig(image_size=base.config.sample_size, block_out_channels=tuple(base.config.block_out_channels),
                                                norm_num_groups=base.config.norm_num_groups)
        return cls(config, base, conditioning_embedding_channels=conditioning_embedding_channels)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.controlnet.parameters() if p.requires_grad]

    def _sampling_network(self, sampling: ImageSamplingConfig) -> SamplingNetwork | None:
        """The ControlNet pair always runs eager in its own memory format (speed settings not wired)."""
        return None

    def _predict(self, noisy: torch.Tensor, t, masks: torch.Tensor, flags: torch.Tensor,
                 network: SamplingNetwork | None = None) -> torch.Tensor:
        timesteps = torch.as_tensor(t, device=noisy.device).expand(len(noisy))
        planes = flags[:, :, None, None].expand(-1, -1, *masks.shape[2:])
        context = torch.zeros((len(noisy), 1, self.base_unet.config.cross_attention_dim), device=noisy.device, dtype=noisy.dtype)
        down, mid = self.controlnet(noisy, timesteps, context, torch.cat([masks, planes], dim=1), return_dict=False)
        return self.base_unet(noisy, timesteps, context, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid).sample

    def _parts(self) -> dict[str, ModelMixin]:
        return {"base_unet": self.base_unet, "controlnet": self.controlnet}

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ControlNetImageGenerator":
        config, parts, scheduler = cls._load_parts(Path(directory))
        model = cls(config, parts["base_unet"], parts["controlnet"])
        model.noise_scheduler = scheduler
        return model.to(device).eval()
