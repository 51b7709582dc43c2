"""Stages 2-5 for one shard: anatomy from the bank -> masks -> images -> expert filter -> shard write.

A shard is hundreds of samples handled as batches: one task run per shard, never per image. Rejected
samples are regenerated with a new recorded seed (same prompt, same anatomy), up to `max_tries`; the
manifest row keeps every try's seed and reject reason. Data-quality gates run on the shard between the
stages (anatomy before generation; masks and images of the accepted samples after the filter) and stop
the build when they fail.

Seeds: try t of sample i has seed `derive_seed(build seed, i, "try", t)`; its mask noise comes from
`derive_seed(seed, "mask")` and its image noise from `derive_seed(seed, "image")`, so any stored sample
can be regenerated alone (`regenerate_sample`).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
from prefect import task

from aurad_models.experts import load_anatomy_expert, load_lesion_expert, load_pathology_expert
from aurad_models.findings import render_prompt
from aurad_models.generators import load_generator
from aurad_models.image_generator import ImageGenerator
from aurad_models.mask_generator import MaskGenerator
from aurad_models.pixels import to_stored
from aurad_models.seeding import derive_seed
from aurad_models.vocabulary import PATHOLOGIES
from storage import open_dataset
from tasks.build import BuildConfig, BuildModels, Prompt, ShardContext, ShardPlan
from tasks.devices import candidate_devices, lease_device
from tasks.filtering import FilterExperts, FilterResult, acceptance_report, filter_batch
from tasks.retrain import torch_threads
from tasks.quality import GateResult, anatomy_gate, anatomy_stats, image_gate, image_stats, mask_gate, mask_stats

logger = logging.getLogger(__name__)


@dataclass
class LoadedModels:
    mask_generator: MaskGenerator
    image_generator: ImageGenerator
    experts: FilterExperts


@functools.lru_cache(maxsize=16)
def load_models(models: BuildModels, filter_enabled: tuple[str, ...]) -> LoadedModels:
    """Load a build's models once per process and device; every shard task in the process reuses them
    (one entry per GPU when the shards of one process spread over several)."""
    device = models.device
    experts = FilterExperts(
        classifier=load_pathology_expert(models.classifier, models.registry_root) if "classifier" in filter_enabled else None,
        anatomy=load_anatomy_expert(models.segmenter, models.registry_root) if "anatomy" in filter_enabled else None,
        fidelity=load_lesion_expert(models.fidelity, models.registry_root) if "fidelity" in filter_enabled else None,
    )
    return LoadedModels(
        mask_generator=load_generator(models.mask_model_dir, "mask", device=device),
        image_generator=load_generator(models.image_model_dir, "image", device=device),
        experts=experts,
    )


@dataclass
class ShardReport:
    """What a shard did: counts, tries, per-expert acceptance, gate results, stage timings (seconds)."""

    shard: int
    n_samples: int
    accepted: int
    tries: list[int]
    acceptance: dict[str, Any]
    gates: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Slot:
    seeds: list[int] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    result: FilterResult | None = None


def try_seed(build_seed: int, index: int, attempt: int) -> int:
    return derive_seed(build_seed, index, "try", attempt)


def generate_samples(
    anatomy: np.ndarray, prompts: Sequence[Prompt], seeds: Sequence[int], models: LoadedModels, config: BuildConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Masks then images for a batch of samples; returns (pathology uint8 (N,7,H,W), images float [0,1])."""
    masks = models.mask_generator.sample(anatomy, prompts, [derive_seed(s, "mask") for s in seeds], config.mask_sampling)
    images = models.image_generator.sample(anatomy, masks.masks, [derive_seed(s, "image") for s in seeds], config.image_sampling)
    return masks.masks, images.images


def generate_shard(context: ShardContext, plan: ShardPlan) -> ShardReport:
    """Generate, filter, check and write one shard on a device leased for it (tasks/devices.py).
    Raises `QualityGateFailed` if a gate fails."""
    with lease_device(candidate_devices(context.models.device)) as device:
        with torch_threads(context.cpu_threads if device.startswith("cpu") else None):
            return generate_shard_on_device(replace(context, models=context.models.on_device(device)), plan)


def generate_shard_on_device(context: ShardContext, plan: ShardPlan) -> ShardReport:
    """`generate_shard` on `context.models.device` as it is."""
    from tasks.quality import raise_on_failure

    staged, models, reference, config = context.staged, context.models, context.reference, context.config
    progress = _run_logger()

    seconds: dict[str, float] = {}
    began = tick = time.perf_counter()
    loaded = load_models(models, config.filter.enabled())
    seconds["load_models"] = time.perf_counter() - tick
    n = len(plan.prompts)
    gates: list[GateResult] = []

    # 1. Anatomy from the bank, checked before anything is generated.
    tick = time.perf_counter()
    bank = open_dataset(context.bank_root, config.anatomy_bank, context.bank_version)
    order = np.argsort(plan.bank_indices)
    anatomy_sorted = np.asarray(bank.anatomy.get_orthogonal_selection((np.asarray(plan.bank_indices)[order],)))
    anatomy = np.empty_like(anatomy_sorted)
    anatomy[order] = anatomy_sorted
    bank_ids = bank.manifest.column("sample_id").to_pylist()
    gates.append(anatomy_gate(anatomy_stats(anatomy), config.quality))
    raise_on_failure(gates)
    seconds["anatomy"] = time.perf_counter() - tick

    # 2. Masks, images and the filter, retrying rejected samples with new seeds, then with redrawn prompts.
    size = anatomy.shape[-1]
    pathology = np.zeros((n, len(PATHOLOGIES), size, size), np.uint8)
    images = np.zeros((n, size, size), np.float32)
    slots = [_Slot() for _ in range(n)]
    todo = list(range(n))
    seconds.update(generate=0.0, filter=0.0)
    attempt = 0
    while todo:
        seeds = [try_seed(config.seed, plan.start + i, attempt) for i in todo]
        prompts = [plan.prompt_at(i, attempt, config.max_tries) for i in todo]
        tick = time.perf_counter()
        masks_t, images_t = generate_samples(anatomy[todo], prompts, seeds, loaded, config)
        seconds["generate"] += time.perf_counter() - tick
        tick = time.perf_counter()
        results = filter_batch(images_t, anatomy[todo], masks_t, prompts, loaded.experts, config.filter, reference)
        seconds["filter"] += time.perf_counter() - tick
        for j, i in enumerate(todo):
            pathology[i], images[i] = masks_t[j], images_t[j]
            slots[i].seeds.append(seeds[j])
            slots[i].prompts.append(prompts[j])
            slots[i].reasons.append(results[j].reject_reason)
            slots[i].result = results[j]
        attempt += 1
        todo = [i for i in todo if not slots[i].result.accepted and attempt < plan.attempts(i, config.max_tries)]
        progress.info("shard %05d: try %d done, %d of %d samples accepted (%.0f s)", plan.shard, attempt,
                      sum(s.result.accepted for s in slots if s.result is not None), n, time.perf_counter() - began)

    # 3. Gates on the samples the filter passed on (rejected ones are stored with their reasons and count
    #    against the build's acceptance floor instead). No accepted sample: nothing to check here.
    tick = time.perf_counter()
    kept = [i for i in range(n) if slots[i].result.accepted]
    if kept:
        gates.append(mask_gate(mask_stats(pathology[kept], anatomy[kept], [slots[i].prompts[-1] for i in kept]), config.quality))
        gates.append(image_gate(image_stats(images[kept]), config.quality))
    shard_gates = [g.to_json() for g in gates]
    staged.write_file(f"quality/shards/shard-{plan.shard:05d}.json", _json_dumps({"shard": plan.shard, "gates": shard_gates}))
    for gate in gates:  # great-expectations Data Docs, one page per suite run
        staged.write_file(f"quality/data_docs/shard-{plan.shard:05d}-{gate.gate}.html", gate.data_doc)
    raise_on_failure(gates)
    seconds["gates"] = time.perf_counter() - tick

    # 4. Write the shard: arrays, manifest rows, ledger.
    tick = time.perf_counter()
    rows = [
        _manifest_row(config, plan, i, slots[i], bank_ids[plan.bank_indices[i]], models)
        for i in range(n)
    ]
    staged.write_shard(plan.shard, to_stored(images), pathology, anatomy, rows)
    seconds["write"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - began
    results = [s.result for s in slots]
    return ShardReport(
        shard=plan.shard,
        n_samples=n,
        accepted=sum(r.accepted for r in results),
        tries=[len(s.seeds) for s in slots],
        acceptance=acceptance_report(results, [s.prompts[-1] for s in slots]),
        gates=[{k: g[k] for k in ("gate", "success", "failures", "rows")} for g in shard_gates],
        seconds=seconds,
    )


def regenerate_sample(version: Any, index: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Make sample `index` of a published synthetic version again from its manifest row and lineage:
    the stored anatomy, prompt and seed, and the pinned models. Returns (stored image uint16, masks uint8);
    equal to the stored arrays when the models and code are unchanged."""
    from aurad_models.findings import Finding as _Finding
    from aurad_models.registry import resolve_model

    lineage = version.lineage
    if lineage.get("kind") != "synthetic":
        raise ValueError(f"{version.path} is not a synthetic build (kind {lineage.get('kind')!r}); nothing to regenerate")
    config = BuildConfig.model_validate(lineage["config"])
    registry = version.root.url
    mask = resolve_model(registry, "mask-generator", lineage["models"]["mask_generator"]["id"])
    image = resolve_model(registry, "image-generator", lineage["models"]["image_generator"]["id"])
    row = version.manifest.slice(index, 1).to_pylist()[0]
    prompt = tuple(_Finding(**f) for f in row["findings"])
    loaded = LoadedModels(
        mask_generator=load_generator(mask.path, "mask", device=device),
        image_generator=load_generator(image.path, "image", device=device),
        experts=FilterExperts(None, None),
    )
    anatomy = np.asarray(version.anatomy[index : index + 1])
    masks, images = generate_samples(anatomy, [prompt], [int(row["seed"])], loaded, config)
    return to_stored(images)[0], masks[0]


def _manifest_row(config: BuildConfig, plan: ShardPlan, i: int, slot: _Slot, bank_id: str, models: BuildModels) -> dict[str, Any]:
    result = slot.result
    final = slot.prompts[-1]
    return {
        "sample_id": f"{config.dataset}-{plan.start + i:07d}",
        "split": None,
        "prompt": render_prompt(final),
        "source_report": plan.source_reports[i] if plan.source_reports else None,
        "findings": [f.as_record() for f in final],
        "seed": slot.seeds[-1],
        "attempt_seeds": list(slot.seeds),
        "attempt_reject_reasons": list(slot.reasons),
        "source": bank_id,
        "mask_source": "generated",
        "mask_model_id": models.mask_model_id,
        "image_model_id": models.image_model_id,
        "scores": {
            **{k: float(v) for k, v in result.scores.items() if v is not None and np.isfinite(v)},
            **{f"accept.{expert}": float(ok) for expert, ok in result.verdicts.items()},
        },
        "accepted": result.accepted,
        "reject_reason": result.reject_reason,
        "metadata": {"tries": str(len(slot.seeds)), "first_prompt": render_prompt(plan.prompts[i]),
                     "attempt_prompts": json.dumps([render_prompt(p) for p in slot.prompts])},
    }


def _run_logger() -> Any:
    """Prefect's run logger inside a task (its lines reach the UI), else this module's logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


def _json_dumps(data: Any) -> str:
    return json.dumps(data, indent=1, default=str)


@task(name="generate-shard", task_run_name="shard-{plan.shard:05d}", retries=0)
def generate_shard_task(context: ShardContext, plan: ShardPlan) -> ShardReport:
    """One shard, holding a slot of `config.gpu_concurrency_limit` when one is named. (Not a task tag:
    every tagged task run asks the server for tag limits, which stalled shard tasks by ~2 s here even with
    no limit defined; bench/results/orchestration.md.)"""
    limit = context.config.gpu_concurrency_limit
    if limit is None:
        return generate_shard(context, plan)
    from prefect.concurrency.sync import concurrency

    with concurrency(limit, occupy=1, strict=True):
        return generate_shard(context, plan)
