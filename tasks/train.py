"""Training the two generators: plain typed functions, and thin Prefect task wrappers over them.

    data = load_training_data(root, "phantom", "latest", split="train", size=64)
    result = train_mask_generator(data, val_data, MaskGeneratorConfig(), TrainingConfig(), work_dir)

A run lives in a work directory:

    loss.jsonl                         one line per `log_every` steps (step, loss, lr, seconds) and per validation
    checkpoints/step-000200/model/     the EMA weights as a loadable generator directory
    checkpoints/step-000200/state.*    training state: raw weights, AdamW and EMA tensors (safetensors) + json
    samples/step-000200.png            validation samples with mask overlays
    final/                             the finished generator (EMA weights), registered in the model registry

A run restarted on the same work directory resumes from its last checkpoint. Every random draw of a step
(the batch, dropout, timesteps, noise) comes from `derive_seed(seed, ..., step)`, so a resumed run follows
the same path as an uninterrupted one. AdamW, linear warm-up then cosine decay, gradient clipping, EMA.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from prefect import task
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from aurad_models.diffusion import autocast
from aurad_models.findings import Finding
from aurad_models.image_generator import ImageGenerator, ImageGeneratorConfig, ImageSamplingConfig
from aurad_models.mask_generator import MaskGenerator, MaskGeneratorConfig, MaskSamplingConfig
from aurad_models.registry import local_root, register_model
from aurad_models.seeding import derive_seed
from aurad_models.serialization import load_tensors, read_json, save_tensors, write_json
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES
from tasks.retrain import LabelledSubset, torch_threads
from tasks.user_masks import resize_images, resize_nearest

logger = logging.getLogger(__name__)

GeneratorKind = Literal["mask-generator", "image-generator"]
Device = Literal["auto", "cpu", "cuda"]


class TrainingConfig(BaseModel):
    """Optimisation of one generator: steps, batch, learning rate, EMA, clipping, checkpoints, validation.

    Defaults are the demo budget on 2 CPU cores at 64 px (see the report in bench/quality.py).
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(400, ge=1, description="optimiser steps in all (AdamW)")
    batch_size: int = Field(16, ge=1, description="training samples per step (and per validation batch)")
    learning_rate: float = Field(2e-3, gt=0, description="peak learning rate, reached after the warm-up")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(20, ge=0, description="steps of linear learning-rate warm-up to the peak")
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="after the warm-up: cosine decay to min_lr_ratio of the peak, or constant"
    )
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="cosine decays to this share of the peak")
    grad_clip: float = Field(1.0, gt=0, description="largest gradient norm; larger gradients are scaled down to it")
    ema_decay: float = Field(
        0.99, ge=0, lt=1, description="decay of the exponential moving average of the weights (the model that is saved)"
    )
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints (a rerun resumes from the last)")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept on disk; older ones are deleted")
    log_every: int = Field(20, ge=1, description="steps between lines of the loss log (mean loss since the last)")
    validate_every: int = Field(0, ge=0, description="0: validate only at the end")
    n_validation_samples: int = Field(8, ge=0, description="samples in the validation grid PNG (0: no grid)")
    validation_batches: int = Field(4, ge=0, description="batches of the val split for the validation loss")
    validation_inference_steps: int = Field(20, ge=1, description="denoising steps per validation grid sample")
    seed: int = Field(0, description="seed of the initialisation, batches, noise and validation draws")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: the CPUs available)")
    device: Device = Field("auto", description="cuda / cpu; auto: cuda if available")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "bf16", description="autocast of the training steps on CUDA (bf16 also on CPUs with native bf16); no: fp32"
    )
    time_limit_minutes: float | None = Field(
        None, gt=0, description="stop early (and save) after this long; makes the run depend on machine speed"
    )


@dataclass
class TrainingData:
    """Arrays of one split: images (N, H, W) float32 [0, 1], anatomy (N, 14, H, W) and pathology
    (N, 7, H, W) uint8 {0, 1}, the findings of each sample, and where they came from."""

    images: np.ndarray
    anatomy: np.ndarray
    pathology: np.ndarray
    findings: list[tuple[Finding, ...]]
    source: dict[str, Any] = field(default_factory=dict)
    labelled: np.ndarray | None = None  # (N,) bool: whose pathology masks and findings are known (None: all)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.labelled is None:
            self.labelled = np.ones(n, dtype=bool)
        if not (len(self.anatomy) == len(self.pathology) == len(self.findings) == n):
            raise ValueError(
                f"training arrays disagree on the sample count: images {n}, anatomy {len(self.anatomy)}, "
                f"pathology {len(self.pathology)}, findings {len(self.findings)}"
            )
        if n == 0:
            raise ValueError(f"no training samples ({self.source or 'no source'})")
        if self.anatomy.shape[1] != len(ANATOMY_STRUCTURES) or self.pathology.shape[1] != len(PATHOLOGIES):
            raise ValueError(f"need {len(ANATOMY_STRUCTURES)} anatomy and {len(PATHOLOGIES)} pathology channels, got "
                             f"{self.anatomy.shape} and {self.pathology.shape}")

    def __len__(self) -> int:
        return len(self.images)

    def resized(self, size: int) -> "TrainingData":
        """The same samples at `size` px (area / bilinear for images, nearest for masks)."""
        return TrainingData(resize_images(self.images, size), resize_nearest(self.anatomy, size),
                            resize_nearest(self.pathology, size), self.findings, {**self.source, "size": size}, self.labelled)

    def with_scarce_labels(self, subset: LabelledSubset) -> "TrainingData":
        """The same images, with pathology masks and findings known only for the labelled subset (the others'
        are emptied, and `labelled` says so): what a model trained with scarce labels may see."""
        keep = np.zeros(len(self), dtype=bool)
        keep[subset.indices(len(self))] = True
        pathology = np.where(keep[:, None, None, None], self.pathology, 0).astype(self.pathology.dtype)
        findings = [f if k else () for f, k in zip(self.findings, keep)]
        source = {**self.source, "labelled_subset": subset.model_dump(), "labelled": int(keep.sum())}
        return TrainingData(self.images, self.anatomy, pathology, findings, source, keep)

    def labelled_only(self) -> "TrainingData":
        keep = np.flatnonzero(self.labelled)
        return TrainingData(self.images[keep], self.anatomy[keep], self.pathology[keep], [self.findings[i] for i in keep],
                            {**self.source, "n": int(keep.size)}, self.labelled[keep])


class TrainingResult(BaseModel):
    """What a training run produced: the model directory, its registry id, the last losses, the logs."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: str
    model_dir: Path
    model_id: str | None
    steps: int
    final_loss: float
    val_loss: float | None
    seconds: float
    loss_log: Path
    samples_png: Path | None
    resumed_from: int = 0


# --- data -----------------------------------------------------------------------------------------


def _findings_from_records(records: list[dict[str, Any]] | None) -> tuple[Finding, ...]:
    return tuple(Finding(**{k: r.get(k) for k in ("label", "side", "zone", "size")}) for r in records or ())


def _reorder(array, names: tuple[str, ...], wanted: tuple[str, ...], what: str, where: str, index) -> np.ndarray:
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ValueError(f"{where}: {what} channels {missing} are missing (it has {list(names)})")
    data = np.asarray(array.oindex[index])
    if names == wanted:
        return data
    return data[:, [names.index(n) for n in wanted]]


def load_training_data(root: str | Path, dataset: str, version: str = "latest", split: str | None = "train",
                       size: int | None = None) -> TrainingData:
    """One split of a stored dataset version (accepted samples) as arrays, at `size` px if given."""
    from aurad_models.pixels import stored_to_unit
    from storage.reader import open_dataset

    ds = open_dataset(root, dataset, version)
    index = ds.select(split=split)
    where = f"{ds.path} (split {split!r})"
    if index.size == 0:
        raise ValueError(f"{where}: no accepted samples")
    images = stored_to_unit(np.asarray(ds.images.oindex[index]))
    anatomy = _reorder(ds.anatomy, ds.anatomy_channels, ANATOMY_STRUCTURES, "anatomy", where, index)
    pathology = _reorder(ds.masks, ds.pathology_channels, PATHOLOGIES, "pathology", where, index)
    records = ds.manifest.column("findings").to_pylist()
    findings = [_findings_from_records(records[i]) for i in index]
    data = TrainingData(images, anatomy, pathology, findings,
                        {"dataset": dataset, "version": ds.version, "build_id": ds.lineage.get("build_id"),
                         "split": split, "n": int(index.size)})
    return data.resized(size) if size and size != images.shape[-1] else data


# --- optimisation helpers -------------------------------------------------------------------------


class Ema:
    """Exponential moving average of the trainable parameters (with the usual warm-up of the decay)."""

    def __init__(self, named_parameters: dict[str, torch.nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().clone() for k, p in named_parameters.items()}

    @torch.no_grad()
    def update(self, named_parameters: dict[str, torch.nn.Parameter], step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, p in named_parameters.items():
            self.shadow[k].lerp_(p.detach(), 1 - decay)

    def copy_into(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of the model carrying the EMA weights."""
        averaged = copy.deepcopy(model)
        state = averaged.state_dict()
        state.update({k: v.to(state[k].dtype) for k, v in self.shadow.items()})
        averaged.load_state_dict(state)
        return averaged.eval()


def learning_rate(config: TrainingConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.learning_rate
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    floor = config.min_lr_ratio
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def pick_device(device: Device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is available")
    return torch.device(device)


def default_threads() -> int:
    """CPUs this process may use, less those other processes keep busy (1-minute load average).

    Measured here: with 2 cores and other work running, 2 torch threads ran a step 3-20x slower than
    1 thread (the threads wait on each other at every operation); on an idle machine 2 threads are faster.
    """
    cpus = len(os.sched_getaffinity(0))
    busy = int(round(os.getloadavg()[0]))
    return max(1, cpus - busy)




def _save_checkpoint(directory: Path, model, ema: Ema, optimizer: torch.optim.Optimizer, step: int, extra: dict) -> None:
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ema.copy_into(model).save_pretrained(staging / "model")
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    save_tensors(staging / "state.safetensors", tensors)
    write_json(staging / "state.json", {"step": step, "param_groups": optimizer_state["param_groups"],
                                        "optimizer_scalars": scalars, **extra})
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)


def _load_checkpoint(directory: Path, model, ema: Ema, optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    tensors = load_tensors(directory / "state.safetensors")
    meta = read_json(directory / "state.json")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for k in ema.shadow:
        ema.shadow[k] = tensors[f"ema.{k}"].to(device)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value.to(device)
    for key, value in meta["optimizer_scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"])


def _checkpoints(work_dir: Path) -> list[Path]:
    return sorted(p for p in (work_dir / "checkpoints").glob("step-*") if (p / "state.json").is_file())


# --- the loop -------------------------------------------------------------------------------------

LossFn = Callable[[torch.nn.Module, np.ndarray, int], torch.Tensor]
ValidateFn = Callable[[torch.nn.Module, Path], Path | None]


def _batch(data: TrainingData, index: np.ndarray, device: torch.device) -> dict[str, Any]:
    return {
        "images": torch.from_numpy(data.images[index]).to(device),
        "anatomy": torch.from_numpy(data.anatomy[index]).float().to(device),
        "pathology": torch.from_numpy(data.pathology[index]).float().to(device),
        "findings": [data.findings[i] for i in index],
        "labelled": torch.from_numpy(data.labelled[index]).to(device),
    }


def _loss(kind: GeneratorKind, model, batch: dict[str, Any], seed: int) -> torch.Tensor:
    if kind == "mask-generator":
        return model.training_loss(batch["anatomy"], batch["pathology"], batch["findings"], seed)
    known = None if bool(batch["labelled"].all()) else batch["labelled"]
    return model.training_loss(batch["images"], batch["anatomy"], batch["pathology"], seed, pathology_known=known)


@torch.no_grad()
def validation_loss(kind: GeneratorKind, model, data: TrainingData, config: TrainingConfig, device: torch.device) -> float:
    """Mean loss over fixed batches of held-out data (fixed seeds: comparable between steps and runs)."""
    model.eval()
    losses = []
    for b in range(config.validation_batches):
        rng = np.random.default_rng(derive_seed(config.seed, "validation-batch", b))
        index = rng.choice(len(data), size=min(config.batch_size, len(data)), replace=False)
        losses.append(_loss(kind, model, _batch(data, index, device), derive_seed(config.seed, "validation-loss", b)).item())
    return float(np.mean(losses)) if losses else float("nan")


def save_validation_grid(kind: GeneratorKind, model, data: TrainingData, config: TrainingConfig, path: Path) -> Path | None:
    """Samples of held-out anatomy with mask overlays, as a PNG grid (via aurad_models.visualize)."""
    n = min(config.n_validation_samples, len(data))
    if n == 0:
        return None
    try:
        from aurad_models.visualize import save_overlay_grid
    except ImportError:
        logger.warning("aurad_models.visualize is not available: no validation grid written to %s", path)
        return None
    seeds = [derive_seed(config.seed, "validation-sample", i) for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "mask-generator":
        sampling = MaskSamplingConfig(num_inference_steps=config.validation_inference_steps)
        masks = model.sample(data.anatomy[:n], data.findings[:n], seeds, sampling).masks
        titles = [", ".join(f.label for f in p) or "normal" for p in data.findings[:n]]
        save_overlay_grid(path, data.images[:n], pathology=masks, anatomy=None, titles=titles)
    else:
        sampling = ImageSamplingConfig(num_inference_steps=config.validation_inference_steps)
        images = model.sample(data.anatomy[:n], data.pathology[:n], seeds, sampling).images
        save_overlay_grid(path, np.concatenate([images, data.images[:n]]),
                          pathology=np.concatenate([data.pathology[:n]] * 2),
                          titles=["generated"] * n + ["real"] * n)
    return path


def train_generator(
    kind: GeneratorKind,
    model: torch.nn.Module,
    data: TrainingData,
    val_data: TrainingData | None,
    config: TrainingConfig,
    work_dir: str | Path,
    registry_root: str | Path | None = None,
    lineage: dict[str, Any] | None = None,
    resume: bool = True,
) -> TrainingResult:
    """Train a generator (anything with `training_loss`, `sample`, `save_pretrained`) and register it, on
    `config.num_threads` torch CPU threads (else `default_threads()`; torch's setting is restored after)."""
    threads = config.num_threads or default_threads()
    with torch_threads(threads):
        return _train_generator(kind, model, data, val_data, config, Path(work_dir), registry_root, lineage, resume, threads)


def _train_generator(kind: GeneratorKind, model: torch.nn.Module, data: TrainingData, val_data: TrainingData | None,
                     config: TrainingConfig, work_dir: Path, registry_root: str | Path | None, lineage: dict[str, Any] | None,
                     resume: bool, threads: int) -> TrainingResult:
    work_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(config.device)
    model = model.to(device)
    parameters = dict((k, p) for k, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(parameters.values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    ema = Ema(parameters, config.ema_decay)
    start = 0
    checkpoints = _checkpoints(work_dir)
    if resume and checkpoints:
        start = _load_checkpoint(checkpoints[-1], model, ema, optimizer, device)
        logger.info("%s: resuming from %s (step %d)", kind, checkpoints[-1], start)
    loss_log = work_dir / "loss.jsonl"
    if start == 0 and loss_log.exists():
        loss_log.unlink()
    logger.info("%s: %d trainable parameters, %d samples, %d steps of %d on %s (%d threads)", kind,
                sum(p.numel() for p in parameters.values()), len(data), config.steps, config.batch_size, device, threads)

    began = time.monotonic()
    window: list[float] = []
    last_loss = float("nan")
    step = start
    progress = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=kind, mininterval=5, leave=False)
    with loss_log.open("a") as log:
        for step in progress:
            model.train()
            rng = np.random.default_rng(derive_seed(config.seed, "batch", step))
            index = rng.choice(len(data), size=min(config.batch_size, len(data)), replace=False)
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device, config.mixed_precision, on_cpu=True):
                loss = _loss(kind, model, _batch(data, index, device), derive_seed(config.seed, "loss", step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters.values(), config.grad_clip)
            optimizer.step()
            ema.update(parameters, step)
            window.append(loss.item())
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                last_loss = float(np.mean(window))
                log.write(json.dumps({"step": done, "loss": last_loss, "lr": lr, "seconds": round(time.monotonic() - began, 2)}) + "\n")
                log.flush()
                progress.set_postfix(loss=f"{last_loss:.4f}")
                window = []
            out_of_time = config.time_limit_minutes is not None and time.monotonic() - began > 60 * config.time_limit_minutes
            if done % config.checkpoint_every == 0 or done == config.steps or out_of_time:
                _save_checkpoint(work_dir / "checkpoints" / f"step-{done:06d}", model, ema, optimizer, done,
                                 {"kind": kind, "loss": last_loss})
                for old in _checkpoints(work_dir)[: -config.keep_checkpoints]:
                    shutil.rmtree(old)
            if config.validate_every and done % config.validate_every == 0 and done != config.steps and val_data is not None:
                averaged = ema.copy_into(model)
                val = validation_loss(kind, averaged, val_data, config, device)
                log.write(json.dumps({"step": done, "val_loss": val}) + "\n")
                save_validation_grid(kind, averaged, val_data, config, work_dir / "samples" / f"step-{done:06d}.png")
            if out_of_time:
                logger.warning("%s: time limit of %.1f min reached at step %d of %d", kind, config.time_limit_minutes, done, config.steps)
                break
        final_step = step + 1 if config.steps > start else start
        if not window and np.isnan(last_loss) and loss_log.exists():  # resumed at the end: report the logged loss
            logged = [json.loads(line) for line in loss_log.read_text().splitlines()]
            last_loss = next((r["loss"] for r in reversed(logged) if "loss" in r), float("nan"))
        averaged = ema.copy_into(model)
        val_loss = None
        samples_png = None
        if val_data is not None:
            val_loss = validation_loss(kind, averaged, val_data, config, device)
            log.write(json.dumps({"step": final_step, "val_loss": val_loss}) + "\n")
            samples_png = save_validation_grid(kind, averaged, val_data, config, work_dir / "samples" / f"step-{final_step:06d}.png")
    seconds = time.monotonic() - began
    final_dir = work_dir / "final"
    shutil.rmtree(final_dir, ignore_errors=True)
    averaged.to("cpu").save_pretrained(final_dir)
    model_id = None
    if registry_root is not None:
        record = register_model(
            registry_root, kind, final_dir,
            metrics={"train_loss": last_loss, "val_loss": val_loss, "steps": final_step, "seconds": round(seconds, 1)},
            lineage={**(lineage or {}), "training": config.model_dump(mode="json"), "data": data.source},
        )
        model_id = record.id
        logger.info("%s: registered %s", kind, model_id)
    return TrainingResult(kind=kind, model_dir=final_dir, model_id=model_id, steps=final_step, final_loss=last_loss,
                          val_loss=val_loss, seconds=seconds, loss_log=loss_log, samples_png=samples_png, resumed_from=start)


def _initialised(cls, model_config, seed: int):
    """A freshly initialised model whose weights depend only on the seed (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(model_config)


def train_mask_generator(data: TrainingData, val_data: TrainingData | None, model_config: MaskGeneratorConfig,
                         training: TrainingConfig, work_dir: str | Path, registry_root: str | Path | None = None,
                         lineage: dict[str, Any] | None = None, resume: bool = True) -> TrainingResult:
    """Train a mask generator from scratch (or resume its run in `work_dir`)."""
    size = model_config.image_size
    data = data.resized(size) if data.images.shape[-1] != size else data
    val_data = val_data.resized(size) if val_data is not None and val_data.images.shape[-1] != size else val_data
    model = _initialised(MaskGenerator, model_config, derive_seed(training.seed, "init", "mask-generator"))
    lineage = {**(lineage or {}), "model_config": model_config.model_dump(mode="json")}
    return train_generator("mask-generator", model, data, val_data, training, work_dir, registry_root, lineage, resume)


def train_image_generator(data: TrainingData, val_data: TrainingData | None, model_config: ImageGeneratorConfig,
                          training: TrainingConfig, work_dir: str | Path, registry_root: str | Path | None = None,
                          lineage: dict[str, Any] | None = None, resume: bool = True) -> TrainingResult:
    """Train an image generator from scratch (or resume its run in `work_dir`)."""
    size = model_config.image_size
    data = data.resized(size) if data.images.shape[-1] != size else data
    val_data = val_data.resized(size) if val_data is not None and val_data.images.shape[-1] != size else val_data
    model = _initialised(ImageGenerator, model_config, derive_seed(training.seed, "init", "image-generator"))
    lineage = {**(lineage or {}), "model_config": model_config.model_dump(mode="json")}
    return train_generator("image-generator", model, data, val_data, training, work_dir, registry_root, lineage, resume)


def run_directory(root: str | Path, kind: GeneratorKind, dataset: str, version: str, model_config: BaseModel,
                  training: TrainingConfig, build_id: str | None = None, labelled_subset: LabelledSubset | None = None) -> Path:
    """Where a run keeps its checkpoints: one folder per (data, configs), so a rerun resumes it. `build_id`
    (the dataset version's content fingerprint) keeps a rebuilt v0001 from resuming an older one's run."""
    key = {"dataset": dataset, "version": version, "build_id": build_id, "model": model_config.model_dump(mode="json"),
           **({"labelled_subset": labelled_subset.model_dump()} if labelled_subset is not None else {}),
           "training": training.model_dump(mode="json", exclude={"time_limit_minutes", "num_threads", "device"})}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return local_root(root, "training runs") / "training" / kind / f"{dataset}-{version}-{digest[:12]}"


def train_from_dataset(kind: GeneratorKind, root: str | Path, dataset: str, version: str,
                       model_config: MaskGeneratorConfig | ImageGeneratorConfig, training: TrainingConfig,
                       train_split: str = "train", val_split: str | None = "val", resume: bool = True,
                       labelled_subset: LabelledSubset | None = None) -> TrainingResult:
    """Train one generator on a stored dataset version and register it under `<root>/models/`. With a
    `labelled_subset`, only those samples' masks are seen: the mask generator trains on them alone, the
    image generator on every image (the others as unlabelled: pathology unknown)."""
    data = load_training_data(root, dataset, version, train_split, model_config.image_size)
    if labelled_subset is not None:
        data = data.with_scarce_labels(labelled_subset)
        if kind == "mask-generator":
            data = data.labelled_only()
    val_data = load_training_data(root, dataset, version, val_split, model_config.image_size) if val_split else None
    resolved = data.source["version"]
    work_dir = run_directory(root, kind, dataset, resolved, model_config, training, data.source.get("build_id"),
                             labelled_subset)
    train = train_mask_generator if kind == "mask-generator" else train_image_generator
    lineage = {"dataset": dataset, "version": resolved, "train_split": train_split, "val_split": val_split}
    return train(data, val_data, model_config, training, work_dir, registry_root=root, lineage=lineage, resume=resume)


# --- Prefect tasks: thin wrappers ------------------------------------------------------------------


@task(name="train-mask-generator", tags=["gpu"])
def train_mask_generator_task(root: str, dataset: str, version: str, model_config: MaskGeneratorConfig,
                              training: TrainingConfig, train_split: str = "train", val_split: str | None = "val",
                              resume: bool = True, labelled_subset: LabelledSubset | None = None) -> TrainingResult:
    return train_from_dataset("mask-generator", root, dataset, version, model_config, training, train_split, val_split, resume,
                              labelled_subset)


@task(name="train-image-generator", tags=["gpu"])
def train_image_generator_task(root: str, dataset: str, version: str, model_config: ImageGeneratorConfig,
                               training: TrainingConfig, train_split: str = "train", val_split: str | None = "val",
                               resume: bool = True, labelled_subset: LabelledSubset | None = None) -> TrainingResult:
    return train_from_dataset("image-generator", root, dataset, version, model_config, training, train_split, val_split, resume,
                              labelled_subset)
