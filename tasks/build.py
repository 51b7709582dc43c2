"""The build: its configuration, the models it pins, planning (prompts, anatomy and redraws per slot), its
identity, the dataset-level gates and quotas, lineage and the report hand-off. The shard stage (`tasks.generate`)
makes the samples; how it runs (Prefect tasks on a thread pool or Dask, or a plain loop) is passed in, so the
same `run_build` runs under `flows.build.build_flow` and in `bench/orchestration.py`.

    result = run_build(config, shard_stage, logger)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from aurad_models.anatomy_rules import cardiothoracic_ratio
from aurad_models.experts import (
    ANATOMY_SEGMENTER_KIND,
    LESION_SEGMENTER_KIND,
    PATHOLOGY_CLASSIFIER_KIND,
    ExpertChoice,
    resolve_choice,
)
from aurad_models.findings import Finding, findings_from_report
from aurad_models.hashing import config_hash
from aurad_models.image_generator import ImageSamplingConfig
from aurad_models.mask_generator import MaskSamplingConfig
from aurad_models.registry import resolve_model
from aurad_models.seeding import derive_seed
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES
from storage import (
    ArraySpec,
    DatasetVersion,
    StagedVersion,
    build_lock,
    find_published_build,
    open_dataset,
    promote,
    stage_version,
)
from storage.catalog import CANDIDATE, RELEASED
from tasks.cards import dataset_card
from tasks.devices import resolve_device
from tasks.filtering import (
    FilterConfig,
    ImageStatsReference,
    image_stats_reference_from_dataset,
)
from tasks.prompts import (
    FindingPrior,
    PromptSamplerConfig,
    estimate_prior,
    read_reports,
    reports_file,
    redraw_attributes,
    redraw_unstated,
    report_slots,
    sample_prompts,
    tilted_weights,
)
from tasks.quality import (
    GateResult,
    QualityConfig,
    QualityGateFailed,
    accepted_frequencies,
    anatomy_gate,
    anatomy_stats,
    coverage_gate,
    data_docs_index,
    manifest_gate,
    prompt_gate,
    raise_on_failure,
    render_quality_html,
)
from tasks.report import finding_samples_of, render_version_report

if TYPE_CHECKING:
    from tasks.generate import ShardReport

MASK_GENERATOR_KIND = "mask-generator"
IMAGE_GENERATOR_KIND = "image-generator"
Prompt = tuple[Finding, ...]


class QuotaConfig(BaseModel):
    """How many accepted samples the build asks for, overall and per finding."""

    model_config = ConfigDict(extra="forbid")

    accepted: int | None = Field(None, ge=0, description="accepted samples wanted overall")
    per_finding: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, description="accepted samples wanted per finding")

    @field_validator("per_finding")
    @classmethod
    def _known_findings(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(PATHOLOGIES))
        if unknown:
            raise ValueError(f"unknown findings {unknown}; known: {', '.join(PATHOLOGIES)}")
        return value
    required: bool = Field(False, description="fail the build (publish nothing) when a quota is missed")


class BuildConfig(BaseModel):
    """A dataset build: what to make, from which models and anatomy, how to filter and check it."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field("aurad-data", description="storage root: datasets and the model registry")
    dataset: str = Field("synthetic", description="name of the dataset the build publishes a new version of")
    n_samples: int = Field(256, ge=1, description="prompt slots to fill; accepted samples are fewer (rejected slots stay in the manifest)")
    shard_size: int = Field(64, ge=1, description="samples per shard: one Prefect task, one zarr chunk row, one manifest part")
    seed: int = Field(0, description="build seed: every sample's seed derives from it and its index (same config + seed = same dataset)")
    source_dataset: str = Field("phantom", description="labels for the prompt prior, image statistics reference")
    source_version: str = Field("latest", description="version of the source dataset (a version id, or latest)")
    anatomy_bank: str = Field("anatomy-bank", description="dataset the build draws its anatomy masks from")
    anatomy_bank_version: str = Field("latest", description="version of the anatomy bank (a version id, or latest)")
    mask_model: str = Field("latest", description="registry id of the mask generator, or 'latest'")
    image_model: str = Field("latest", description="registry id of the image generator, or 'latest'")
    classifier: ExpertChoice = Field(default_factory=ExpertChoice, description="the pathology classifier of the filter")
    segmenter: ExpertChoice = Field(default_factory=ExpertChoice, description="the anatomy segmenter of the filter")
    fidelity: ExpertChoice = Field(default_factory=lambda: ExpertChoice(source="project"),
                                   description="the lesion segmenter trained on real images (fidelity expert)")
    prompts: PromptSamplerConfig = Field(default_factory=PromptSamplerConfig, description="how prompts are drawn from the source's label prior")
    mask_sampling: MaskSamplingConfig = Field(
        default_factory=MaskSamplingConfig,
        description="keeps only the prompted classes, each clipped to the region its prompt names (the defaults): the "
        "image is rendered from these final masks, so they stay pixel-exact",
    )
    image_sampling: ImageSamplingConfig = Field(default_factory=ImageSamplingConfig, description="image generator sampling")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="the expert filter: which checks reject a sample")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="great-expectations gate thresholds")
    cardiomegaly_ctr: float = Field(0.55, gt=0, lt=1, description="cardiothoracic ratio above which bank anatomy counts as an enlarged heart")
    topup_share: float = Field(
        0.25, ge=0, lt=1, description="share of the shards kept for a top-up round: they run after the others, with "
        "prompts drawn for the findings the filter left short of their target share among the accepted samples")
    max_tries: int = Field(3, ge=1, description="tries (new seeds) per prompt")
    prompt_redraws: int = Field(
        3, ge=0, description="after max_tries rejections, the slot's prompt is drawn again with the same findings and "
        "new attributes (side, zone, size), up to this many times; a slot still rejected then is kept as rejected")
    quotas: QuotaConfig = Field(default_factory=QuotaConfig, description="per-finding minimum accepted counts")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="'auto' (cuda if available), 'cpu', 'cuda' (every visible GPU), 'cuda:1' (that one)")
    release: bool = Field(True, description="publish as released (the new `latest`); false: a candidate, readable by "
                          "its id until `aurad datasets promote` releases it")
    task_runner: Literal["threads", "dask"] = Field("threads", description="how shards run: threads in this process, or a Dask cluster")
    workers: int = Field(1, ge=1, description="shards generated at once (threads, or Dask workers)")
    cpu_threads: int | None = Field(
        None, ge=1, description="torch CPU threads while a shard samples on the CPU (None: every CPU this process may use). "
        "CPU kernels sum in an order that depends on the thread count, so a build is byte-identical on every runner "
        "(threads, Dask) for the same value")
    dask_address: str | None = Field(None, description="a Dask scheduler address; None starts a LocalCluster")
    gpu_concurrency_limit: str | None = Field(
        None, description="a Prefect global concurrency limit each shard task holds one slot of while it runs (caps "
        "GPU shards across machines; create it first: `prefect gcl create gpu --limit N`). None: no limit; a machine "
        "still runs one shard per GPU (tasks/devices.py)")

    @field_validator("dataset", "source_dataset", "anatomy_bank")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        from storage import StorageError
        from storage.layout import check_name

        try:
            return check_name(value, "dataset")
        except StorageError as error:
            raise ValueError(str(error)) from None


@dataclass(frozen=True)
class BuildModels:
    """The pinned identity of every model a build uses (hashable: a per-process cache key)."""

    registry_root: str
    mask_model_id: str
    mask_model_dir: str
    image_model_id: str
    image_model_dir: str
    classifier: ExpertChoice
    segmenter: ExpertChoice
    device: str
    fidelity: ExpertChoice = ExpertChoice(source="project")

    def on_device(self, device: str) -> "BuildModels":
        """The same models placed on `device`; experts follow it unless their own device is pinned."""
        def follow(choice: ExpertChoice) -> ExpertChoice:
            return choice if choice.device not in (None, "auto", "cuda") else choice.model_copy(update={"device": device})

        return replace(self, device=device, classifier=follow(self.classifier), segmenter=follow(self.segmenter),
                       fidelity=follow(self.fidelity))


@dataclass
class ShardPlan:
    """What one shard makes: a prompt and a bank sample per slot (small: it travels to the task)."""

    shard: int
    start: int
    prompts: list[Prompt]
    bank_indices: list[int]
    redraws: list[list[Prompt]] = field(default_factory=list)  # per slot: the prompts tried after the first
    source_reports: list[str | None] = field(default_factory=list)  # per slot: the report its prompt was read from

    def prompt_at(self, slot: int, attempt: int, max_tries: int) -> Prompt:
        """The prompt of a slot's try: the first prompt for `max_tries` tries, then each redraw in turn."""
        k = attempt // max_tries
        return self.prompts[slot] if k == 0 else self.redraws[slot][k - 1]

    def attempts(self, slot: int, max_tries: int) -> int:
        return max_tries * (1 + (len(self.redraws[slot]) if self.redraws else 0))


class BuildResult(BaseModel):
    """What a build made and where it is."""

    dataset: str
    version: str
    build_id: str
    n_samples: int
    accepted: int
    generated_shards: list[int]
    reused_shards: list[int]
    quotas: dict[str, Any]
    report: str
    already_published: bool = False
    status: str = RELEASED  # or CANDIDATE: readable by its id, not `latest` until promoted
    seconds: dict[str, float] = {}  # wall time of the build's steps; `shard_tasks` sums the shard task bodies


# --- inputs --------------------------------------------------------------------------------------


def resolve_models(config: BuildConfig, root: str) -> BuildModels:
    """Pin every model to an exact registered id / weights file: the build's identity."""
    mask = resolve_model(root, MASK_GENERATOR_KIND, config.mask_model)
    image = resolve_model(root, IMAGE_GENERATOR_KIND, config.image_model)
    enabled = config.filter.enabled()
    classifier = resolve_choice(config.classifier, PATHOLOGY_CLASSIFIER_KIND, root) if "classifier" in enabled else config.classifier
    segmenter = resolve_choice(config.segmenter, ANATOMY_SEGMENTER_KIND, root) if "anatomy" in enabled else config.segmenter
    fidelity = resolve_choice(config.fidelity, LESION_SEGMENTER_KIND, root) if "fidelity" in enabled else config.fidelity
    return BuildModels(
        registry_root=str(root),
        mask_model_id=mask.id,
        mask_model_dir=str(mask.path),
        image_model_id=image.id,
        image_model_dir=str(image.path),
        classifier=classifier,
        segmenter=segmenter,
        fidelity=fidelity,
        device=resolve_device(config.device),
    )


@dataclass
class PromptPlan:
    """The build's prompts before generation: one per slot, the prior behind them, the target share per finding,
    and (prompts from reports) each slot's report text with identifiers scrubbed (else None per slot), plus the
    reports file's texts and findings, which the top-up draws from."""

    prompts: list[Prompt]
    prior: FindingPrior
    targets: dict[str, float]
    reports: list[str | None]
    pool: list[tuple[str, Prompt]] = field(default_factory=list)
    source: str = "source"  # what the prompts come from, for the lineage


def plan_prompts(config: BuildConfig, source: DatasetVersion) -> PromptPlan:
    """The prompts of every slot (`config.prompts`): sampled from the prior its `prior` names (the source
    dataset's labels by default, `tasks.priors`), or read from the reports of its `reports` file. Reports go
    to the slots in a seeded random order, cycled (`report_slots`); frequency targets do not apply, so the
    target share of a finding is its share among the slots' prompts, and the prior (for the lineage and the
    co-occurrence report) is the reports' own."""
    from storage.sources.records import scrub_identifiers
    from tasks.priors import load_prior, prior_fingerprint

    seed = derive_seed(config.seed, "prompts")
    if config.prompts.reports is not None:
        texts = read_reports(config.prompts.reports)
        pool = [(scrub_identifiers(text), findings_from_report(text)) for text in texts]
        picks = report_slots(len(pool), config.n_samples, seed)
        prompts = [pool[i][1] for i in picks]
        n = len(prompts)
        targets = {label: sum(any(f.label == label for f in p) for p in prompts) / n for label in PATHOLOGIES}
        return PromptPlan(prompts, estimate_prior(p for _, p in pool), targets, [pool[i][0] for i in picks], pool,
                          f"reports {config.prompts.reports} ({len(pool)} reports, sha256 {_file_sha256(config.prompts.reports)})")

    def source_findings():
        frame = source.to_pandas()
        return [list(f) for f in frame.query("split == 'train'")["findings"]] if "split" in frame.columns else []

    prior = load_prior(config.prompts.prior, source_findings)
    prompts = sample_prompts(config.n_samples, prior, config.prompts, seed)
    where = (f"prior of {source.name}/{source.version}" if config.prompts.prior == "source"
             else f"prior {config.prompts.prior} (sha256 {prior_fingerprint(config.prompts.prior)})")
    return PromptPlan(prompts, prior, label_targets(config, prior), [None] * len(prompts), source=where)


def _file_sha256(path: str) -> str:
    import hashlib

    return hashlib.sha256(reports_file(path).read_bytes()).hexdigest()


def prompt_source_identity(config: BuildConfig) -> dict[str, Any]:
    """What a build's prompts come from beyond the config, for its id: the content of a prior file or a
    reports file (empty for the default, the source dataset's prior, so those build ids stay as they were)."""
    from tasks.priors import prior_fingerprint

    identity: dict[str, Any] = {}
    if config.prompts.prior != "source":
        identity["prior"] = {"spec": config.prompts.prior, "sha256": prior_fingerprint(config.prompts.prior)}
    if config.prompts.reports is not None:
        identity["reports"] = {"path": config.prompts.reports, "sha256": _file_sha256(config.prompts.reports)}
    return identity


def label_targets(config: BuildConfig, prior) -> dict[str, float]:
    """Per-finding share of prompts the sampler aims at (the tilted prior's marginals)."""
    combos, p = tilted_weights(prior, config.prompts)
    return {label: float(sum(w for c, w in zip(combos, p) if label in c)) for label in PATHOLOGIES}


def plan_shards(
    config: BuildConfig, prompts: list[tuple[Finding, ...]], bank: DatasetVersion, staged: StagedVersion, shards: list[int],
    prior: FindingPrior | None = None, phase: tuple[int, int] | None = None, reports: list[str | None] | None = None,
) -> list[ShardPlan]:
    """Pair every slot with a prompt and an accepted anatomy-bank sample that fits it, and draw the prompts a
    slot tries when its first one keeps being rejected (`config.prompt_redraws`: the same findings with
    attributes drawn again from `prior`, seeded by the slot's index, so a resumed shard draws the same).
    With prompts from reports (`reports`: each slot's report text) a redraw only fills in the attributes the
    report left unspecified (`redraw_unstated`), so what the report says stays true of the sample.

    Cardiomegaly is a finding of the anatomy itself (an enlarged heart), so prompts with cardiomegaly draw
    anatomy whose cardiothoracic ratio exceeds `config.cardiomegaly_ctr`, and the others draw normal hearts.
    Each pool is a seeded permutation, cycled when the build needs more samples than the pool holds, over the
    slots of one `phase` (a slot range: the main shards, or the top-up shards planned after them), so the
    top-up's prompts never move the main shards' anatomy.
    """
    accepted = np.flatnonzero(np.asarray(bank.manifest.column("accepted").to_pylist(), dtype=bool))
    if accepted.size == 0:
        raise ValueError(f"anatomy bank {bank.name}/{bank.version} has no accepted anatomy to draw from")
    ctr = bank_cardiothoracic_ratios(bank, accepted)
    pools = {True: accepted[ctr > config.cardiomegaly_ctr], False: accepted[ctr <= config.cardiomegaly_ctr]}
    first, last = phase or (0, len(prompts))
    wants = np.array([any(f.label == "cardiomegaly" for f in prompt) for prompt in prompts])
    assignment = np.empty(len(prompts), dtype=np.int64)
    for enlarged, pool in pools.items():
        slots = first + np.flatnonzero(wants[first:last] == enlarged)
        if slots.size == 0:
            continue
        if pool.size == 0:
            kind = f"an enlarged heart (CTR > {config.cardiomegaly_ctr})" if enlarged else f"a normal heart (CTR <= {config.cardiomegaly_ctr})"
            raise ValueError(
                f"anatomy bank {bank.name}/{bank.version} has no accepted anatomy with {kind} for {slots.size} prompts; "
                "segment more images into the bank or change the prompt targets"
            )
        rng = np.random.default_rng(derive_seed(config.seed, "anatomy-bank", int(enlarged), *([first] if first else [])))
        rounds = -(-slots.size // pool.size)
        assignment[slots] = np.concatenate([rng.permutation(pool) for _ in range(rounds)])[: slots.size]
    plans = []

    def redraw(i: int, r: int) -> Prompt:
        seed = derive_seed(config.seed, "redraw", i, r)
        if config.prompts.reports is not None:
            return redraw_unstated(prompts[i], seed)
        return redraw_attributes(prompts[i], prior, config.prompts, seed) if prior else prompts[i]

    for k in shards:
        start, stop = staged.shard_bounds(k)
        redraws = [[redraw(i, r) for r in range(config.prompt_redraws)] for i in range(start, stop)]
        plans.append(ShardPlan(shard=k, start=start, prompts=prompts[start:stop], bank_indices=assignment[start:stop].tolist(),
                               redraws=redraws, source_reports=list(reports[start:stop]) if reports else []))
    return plans


def topup_prompts(prior: FindingPrior, config: BuildConfig, targets: dict[str, float], main: Any, n: int, seed: int) -> list[Prompt]:
    """Prompts for the `n` top-up slots, from the main shards' manifest rows `main`: a finding the filter
    left short of its target share among the accepted samples gets prompts that hold it (drawn from the
    prior's combinations with it, so its companions come along), as many as its measured acceptance rate
    says close the gap; the other slots are drawn from the prior like the main shards."""
    from tasks.prompts import Combination

    wanted = _topup_wanted(targets, main, n)
    rng = np.random.default_rng(seed)
    sampler = PromptSamplerConfig(unspecified_rate=config.prompts.unspecified_rate, max_findings=config.prompts.max_findings)
    out: list[Prompt] = []
    for label, count in wanted.items():
        with_label = tuple(c for c in prior.combinations if label in c.labels) or (Combination(labels=(label,), weight=1.0),)
        conditional = prior.model_copy(update={"combinations": with_label})
        out += sample_prompts(count, conditional, sampler, derive_seed(seed, "topup", label))
    out += sample_prompts(n - len(out), prior, config.prompts, derive_seed(seed, "topup", "rest")) if n > len(out) else []
    return [out[i] for i in rng.permutation(len(out))]


def _topup_wanted(targets: dict[str, float], main: Any, n: int) -> dict[str, int]:
    """Top-up prompts per finding the main shards left short, as many as its acceptance rate says close the gap."""
    import math

    has = lambda frame, label: frame["findings"].map(lambda fs: any(f["label"] == label for f in fs))  # noqa: E731
    accepted = main[main["accepted"]]
    expected_total = len(accepted) + n * (len(accepted) / max(len(main), 1))
    wanted: dict[str, int] = {}
    for label, target in targets.items():
        held, prompted = int(has(accepted, label).sum()), int(has(main, label).sum())
        short = math.ceil(target * expected_total) - held
        if short > 0:
            rate = max(held / prompted, 0.1) if prompted else 0.5
            wanted[label] = math.ceil(short / rate)
    total = sum(wanted.values())
    if total > n:  # more gaps than slots: each finding gets its share
        wanted = {label: math.floor(count * n / total) for label, count in wanted.items()}
    return wanted


def topup_reports(pool: list[tuple[str, Prompt]], targets: dict[str, float], main: Any, n: int,
                  seed: int) -> tuple[list[Prompt], list[str]]:
    """`topup_prompts` for prompts from reports: a finding left short gets reports that hold it (drawn at
    random from the reports file, so its companions come along as the reports have them); the other slots
    take reports drawn at random. Returns the prompts and their report texts."""
    wanted = _topup_wanted(targets, main, n)
    picks: list[int] = []
    for label, count in wanted.items():
        holding = [i for i, (_, prompt) in enumerate(pool) if any(f.label == label for f in prompt)]
        if holding and count:
            picks += np.random.default_rng(derive_seed(seed, "topup", label)).choice(holding, size=count).tolist()
    rest = n - len(picks)
    if rest > 0:
        picks += np.random.default_rng(derive_seed(seed, "topup", "rest")).choice(len(pool), size=rest).tolist()
    picks = [picks[i] for i in np.random.default_rng(seed).permutation(len(picks))][:n]
    return [pool[i][1] for i in picks], [pool[i][0] for i in picks]


def check_planned_anatomy(bank: DatasetVersion, plans: list[ShardPlan], quality: QualityConfig) -> None:
    """The shard anatomy gate on every planned shard's anatomy, at planning time: a shard the gate would
    stop fails the build before anything is generated, naming the shard and the settings that govern it."""
    failed = []
    for plan in plans:
        indices = np.asarray(plan.bank_indices)
        anatomy = np.asarray(bank.anatomy.get_orthogonal_selection((np.sort(indices),)))
        gate = anatomy_gate(anatomy_stats(anatomy), quality)
        if not gate.success:
            gate.gate = f"anatomy, shard {plan.shard:05d}, bank {bank.name}/{bank.version}"
            gate.failures.append("set by build.quality.lung_area_range, heart_area_range and anatomy_mostly "
                                 f"({quality.anatomy_mostly}); or re-run the anatomy bank's QC")
            failed.append(gate)
    raise_on_failure(failed)


def bank_cardiothoracic_ratios(bank: DatasetVersion, indices: np.ndarray) -> np.ndarray:
    """Cardiothoracic ratio of each bank sample, from its heart and lung masks."""
    anatomy = np.asarray(bank.anatomy.get_orthogonal_selection((indices,)))
    return np.array([cardiothoracic_ratio(a) for a in anatomy])


def build_id_of(config: BuildConfig, models: BuildModels, source: DatasetVersion, bank: DatasetVersion) -> str:
    """Same settings, models and inputs -> same build id (resume); anything else -> a new build."""
    identity = {
        "config": config.model_dump(mode="json", exclude={**dict.fromkeys(("root", "task_runner", "workers", "dask_address", "device",
                                                          "gpu_concurrency_limit", "cpu_threads", "release"), True),
                                                          "prompts": {"prior": True, "reports": True}}),
        "mask_model": models.mask_model_id,
        "image_model": models.image_model_id,
        "classifier": models.classifier.model_dump(mode="json", exclude={"device", "batch_size"}),
        "segmenter": models.segmenter.model_dump(mode="json", exclude={"device", "batch_size"}),
        "fidelity": models.fidelity.model_dump(mode="json", exclude={"device", "batch_size"}),
        "source": f"{source.name}/{source.version}",
        "bank": f"{bank.name}/{bank.version}",
        **({"prompt_source": extra} if (extra := prompt_source_identity(config)) else {}),
    }
    return f"build-{config_hash(identity)[:16]}"


@dataclass(frozen=True)
class ShardContext:
    """What every shard of one build shares (small: it travels to each shard task with its plan)."""

    staged: StagedVersion
    models: BuildModels
    reference: ImageStatsReference
    config: BuildConfig
    bank_root: str
    bank_version: str
    cpu_threads: int = 1  # torch CPU threads of every shard (resolved once: the same in every worker)


ShardStage = Callable[[ShardContext, list[ShardPlan]], list["ShardReport"]]


def run_build(config: BuildConfig, shard_stage: ShardStage, logger: Any) -> BuildResult:
    """The build's steps, given how to run the shard stage (Prefect fan-out or a plain loop)."""
    root = config.root
    started = time.perf_counter()

    # 1. Inputs, each pinned to an exact version.
    source = open_dataset(root, config.source_dataset, config.source_version)
    bank = open_dataset(root, config.anatomy_bank, config.anatomy_bank_version)
    models = resolve_models(config, root)
    build_id = build_id_of(config, models, source, bank)
    with build_lock(root, config.dataset, build_id, on_wait=logger.warning):  # an identical build waits for this one
        return _run_build(config, shard_stage, logger, source, bank, models, build_id, started)


def _run_build(config: BuildConfig, shard_stage: ShardStage, logger: Any, source: DatasetVersion, bank: DatasetVersion,
               models: BuildModels, build_id: str, started: float) -> BuildResult:
    root = config.root
    published = find_published_build(root, config.dataset, build_id)
    if published is not None:
        logger.info("this build is already published as %s/%s", config.dataset, published)
        if config.release:  # a candidate of the same build (a test run) is released now, not built again
            promote(root, config.dataset, published)
        return _existing_result(root, config.dataset, published, build_id)
    logger.info("build %s: %d samples of %s from %s, models %s + %s", build_id, config.n_samples, config.dataset,
                bank.path, models.mask_model_id, models.image_model_id)

    # 2. Prompts, checked before any generation.
    prompt_plan = plan_prompts(config, source)
    prompts, prior, targets, source_reports = prompt_plan.prompts, prompt_plan.prior, prompt_plan.targets, prompt_plan.reports
    prompts_gate = prompt_gate(prompts, targets, config.quality)
    raise_on_failure([prompts_gate])
    reference = image_stats_reference_from_dataset(source, split="train")

    # 3. Generate the shards not finished yet (a resumed build reuses the others).
    image_size = int(bank.images.shape[-1])
    spec = ArraySpec(image_size=image_size, pathology_channels=PATHOLOGIES, anatomy_channels=ANATOMY_STRUCTURES)
    staged = stage_version(root, config.dataset, build_id, config.n_samples, config.shard_size, spec)
    for damage in staged.release_damaged_shards():
        logger.warning("staged build %s: %s; regenerating that shard", build_id, damage)
    finished = staged.finished_shards()
    pending = sorted(set(range(staged.n_shards)) - finished)
    logger.info("%d shards to generate, %d reused from an earlier run", len(pending), len(finished))
    seconds = {"inputs_and_prompts": time.perf_counter() - started}
    tick = time.perf_counter()
    cpu_threads = config.cpu_threads or len(os.sched_getaffinity(0))
    context = ShardContext(staged, models, reference, config, root, bank.version, cpu_threads)
    # The main shards, then the top-up shards with prompts for what the main ones left short.
    n_topup = min(round(config.topup_share * staged.n_shards), staged.n_shards - 1)
    main_shards = list(range(staged.n_shards - n_topup))
    split = staged.shard_bounds(main_shards[-1])[1]
    plans = plan_shards(config, prompts, bank, staged, [k for k in pending if k in main_shards], prior, (0, split), source_reports)
    check_planned_anatomy(bank, plans, config.quality)
    reports = shard_stage(context, plans) if plans else []
    topup = [k for k in pending if k not in main_shards]
    if topup:
        main_rows = staged.read_manifest().to_pandas()
        if prompt_plan.pool:
            prompts[split:], source_reports[split:] = topup_reports(prompt_plan.pool, targets, main_rows.iloc[:split],
                                                                    len(prompts) - split, derive_seed(config.seed, "topup"))
        else:
            prompts[split:] = topup_prompts(prior, config, targets, main_rows.iloc[:split], len(prompts) - split,
                                            derive_seed(config.seed, "topup"))
        logger.info("top-up: %d samples for the findings the main shards left short", len(prompts) - split)
        topup_plans = plan_shards(config, prompts, bank, staged, topup, prior, (split, len(prompts)), source_reports)
        check_planned_anatomy(bank, topup_plans, config.quality)
        reports += shard_stage(context, topup_plans)
    seconds["shards"] = time.perf_counter() - tick
    seconds["shard_tasks"] = sum(r.seconds["total"] for r in reports)
    tick = time.perf_counter()

    # 4. Dataset-level gates and quotas on the staged manifest; nothing is published if one fails.
    manifest = staged.read_manifest().to_pandas()
    frequencies = accepted_frequencies(manifest, targets)
    gates = [prompts_gate, manifest_gate(manifest, config.quality)]
    if config.quality.min_class_coverage > 0:
        gates.append(coverage_gate(frequencies, config.quality))
    quotas = quota_report(manifest, config)
    lineage = _lineage(config, models, source, bank, build_id, targets, reports, quotas, started)
    lineage["inputs"]["prompts"] = prompt_plan.source
    report_path = _write_quality(staged, gates, manifest, frequencies, reports, quotas, config, lineage, prior)
    if config.quotas.required and not quotas["met"]:
        gates.append(GateResult("quotas", False, [f"quota missed: {m}" for m in quotas["missed"]], {}, len(manifest)))
    try:
        raise_on_failure(gates)
    except QualityGateFailed:
        logger.error("data-quality gates failed; the staged build stays at %s for inspection, nothing is published", staged.path)
        raise

    # 5. Publish atomically.
    version = staged.publish(lineage, release=config.release)
    seconds["gates_and_publish"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started
    logger.info("published %s/%s: %d samples, %d accepted (%.0f s)", config.dataset, version, len(manifest),
                int(manifest["accepted"].sum()), seconds["total"])
    return BuildResult(
        dataset=config.dataset,
        version=version,
        build_id=build_id,
        n_samples=len(manifest),
        accepted=int(manifest["accepted"].sum()),
        generated_shards=pending,
        reused_shards=sorted(finished),
        quotas=quotas,
        report=f"{open_dataset(root, config.dataset, version).path}/{report_path}",
        status=RELEASED if config.release else CANDIDATE,
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )


def quota_report(manifest, config: BuildConfig) -> dict[str, Any]:
    """Accepted samples overall and per finding against the quotas."""
    accepted = manifest[manifest["accepted"]]
    per_finding = {label: int(accepted["findings"].map(lambda fs: any(f["label"] == label for f in fs)).sum()) for label in PATHOLOGIES}
    wanted = {"accepted": config.quotas.accepted} if config.quotas.accepted is not None else {}
    wanted.update({f"finding:{k}": v for k, v in config.quotas.per_finding.items()})
    produced = {"accepted": len(accepted), **{f"finding:{k}": v for k, v in per_finding.items()}}
    missed = [f"{k}: {produced.get(k, 0)} of {v}" for k, v in wanted.items() if produced.get(k, 0) < v]
    return {"wanted": wanted, "produced": produced, "met": not missed, "missed": missed}


def _acceptance(manifest) -> dict[str, Any]:
    verdicts = {}
    for scores in manifest["scores"]:
        for key, value in dict(scores).items():
            if key.startswith("accept."):
                verdicts.setdefault(key.removeprefix("accept."), []).append(value)
    return {
        "n": len(manifest),
        "accepted": int(manifest["accepted"].sum()),
        "rate": float(manifest["accepted"].mean()) if len(manifest) else None,
        "per_expert": {name: float(np.mean(v)) for name, v in verdicts.items()},
        "tries": manifest["attempt_seeds"].map(len).value_counts().sort_index().to_dict(),
    }


def _write_quality(staged, gates, manifest, accepted, reports, quotas, config, lineage, prior=None) -> str:
    """GE results, a readable gate page, the build report: all inside the version before it is published.
    Finding frequencies count *accepted* samples (`accepted`: `tasks.quality.accepted_frequencies`)."""
    shard_gates = [{**g, "gate": f"{g['gate']} (shard {r.shard:05d})"} for r in reports for g in r.gates]
    staged.write_file("quality/gates.json", json.dumps([g.to_json() for g in gates], indent=1, default=str))
    staged.write_file("quality/gates.html", render_quality_html(gates, f"{config.dataset}: data-quality gates"))
    for gate in gates:
        if gate.data_doc:
            staged.write_file(f"quality/data_docs/{gate.gate}.html", gate.data_doc)
    pages = [name for name in staged.list_files("quality/data_docs") if name.endswith(".html") and name != "index.html"]
    outcomes = {g.gate: g.success for g in gates} | {f"shard-{r.shard:05d}-{g['gate']}": g["success"] for r in reports for g in r.gates}
    staged.write_file("quality/data_docs/index.html", data_docs_index(
        [(name, name.removesuffix(".html"), outcomes.get(name.removesuffix(".html"), True)) for name in pages],
        f"{config.dataset} (build {staged.build_id}): great-expectations Data Docs"))
    frequencies = [{"label": r["label"], "target": r["target"], "produced": r["accepted_share"], "accepted": r["accepted"],
                    "prompted": r["prompted"], "coverage": r["coverage"]} for r in accepted.to_dict(orient="records")]
    acceptance = _acceptance(manifest)
    cooccurrence = _cooccurrence(prior, manifest, lineage["inputs"].get("prompts"))
    staged.write_file("quality/build.json", json.dumps({"frequencies": frequencies, "acceptance": acceptance, "quotas": quotas,
                                                       "cooccurrence": cooccurrence,
                                                       "shards": [r.__dict__ for r in reports]}, indent=1, default=str))
    arrays = staged.arrays()
    show = np.flatnonzero(manifest["accepted"].to_numpy())[:16]
    if show.size == 0:
        show = np.arange(min(16, len(manifest)))
    from aurad_models.pixels import stored_to_unit

    html = render_version_report(
        title=f"{config.dataset} (build {staged.build_id})",
        images=stored_to_unit(np.asarray(arrays["images"].get_orthogonal_selection((show,)))),
        pathology=np.asarray(arrays["masks"].get_orthogonal_selection((show,))),
        anatomy=np.asarray(arrays["anatomy"].get_orthogonal_selection((show,))),
        captions=manifest["prompt"].iloc[show].tolist(),
        summary={"dataset": config.dataset, "build": staged.build_id, "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "status": RELEASED if config.release else f"{CANDIDATE} (aurad datasets promote releases it)",
                 "seed": config.seed, "source": lineage["inputs"]["source"], "anatomy bank": lineage["inputs"]["anatomy_bank"],
                 "mask generator": lineage["models"]["mask_generator"]["id"],
                 "image generator": lineage["models"]["image_generator"]["id"],
                 "samples": len(manifest), "accepted": acceptance["accepted"], "acceptance rate": acceptance["rate"],
                 "quotas met": quotas["met"], "gates": "gates.html; great-expectations Data Docs: data_docs/index.html (results: gates.json)",
                 "evaluation": f"{config.dataset}/_evaluations/<this version>/index.html, once `aurad evaluate` has run "
                 "(beside the version, never written into it)"},
        finding_samples=finding_samples_of(arrays["images"], arrays["masks"], manifest),
        frequencies=frequencies,
        acceptance=acceptance,
        gates=[{"gate": g.gate, "success": g.success, "failures": g.failures} for g in gates] + shard_gates,
        cooccurrence=cooccurrence,
    )
    staged.write_file("quality/report.html", html)
    staged.write_file("README.md", dataset_card(config.dataset, staged.build_id, lineage, frequencies, acceptance,
                                                int(arrays["images"].shape[-1]), config.quality.min_class_coverage))
    return "quality/report.html"


def _cooccurrence(prior: FindingPrior | None, manifest, name: str | None = None) -> dict[str, Any] | None:
    """The accepted samples' pairwise co-occurrence against the build's prior (`tasks.priors.compare_cooccurrence`)."""
    accepted = manifest[manifest["accepted"]]
    if prior is None or accepted.empty:
        return None
    from tasks.priors import compare_cooccurrence

    return {**compare_cooccurrence(prior, [list(f) for f in accepted["findings"]]), "prior": name}


def _lineage(config, models, source, bank, build_id, targets, reports, quotas, started) -> dict[str, Any]:
    from aurad_models.registry import resolve_model as _resolve

    return {
        "kind": "synthetic",
        "config": config.model_dump(mode="json"),
        "config_hash": config_hash(config),
        "models": {
            "mask_generator": {"id": models.mask_model_id, "sha256": _resolve(models.registry_root, MASK_GENERATOR_KIND, models.mask_model_id, verify=False).sha256},
            "image_generator": {"id": models.image_model_id, "sha256": _resolve(models.registry_root, IMAGE_GENERATOR_KIND, models.image_model_id, verify=False).sha256},
            "classifier": models.classifier.model_dump(mode="json"),
            "segmenter": models.segmenter.model_dump(mode="json"),
            "fidelity": models.fidelity.model_dump(mode="json"),
        },
        "inputs": {"source": f"{source.name}/{source.version}", "anatomy_bank": f"{bank.name}/{bank.version}"},
        "code_version": code_version(),
        "finding_targets": targets,
        "quotas": quotas,
        "stages": {"shards": [{"shard": r.shard, "accepted": r.accepted, "seconds": r.seconds} for r in reports]},
        "wall_seconds": time.perf_counter() - started,
    }


def code_version() -> dict[str, str | None]:
    import subprocess
    from importlib.metadata import version
    from pathlib import Path

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"package": version("aurad"), "git_commit": commit}


def _existing_result(root: str, dataset: str, version: str, build_id: str) -> BuildResult:
    ds = open_dataset(root, dataset, version)
    manifest = ds.to_pandas()
    return BuildResult(
        dataset=dataset,
        version=version,
        build_id=build_id,
        n_samples=len(manifest),
        accepted=int(manifest["accepted"].sum()),
        generated_shards=[],
        reused_shards=[],
        quotas=ds.lineage.get("quotas", {}),
        report=f"{ds.path}/quality/report.html",
        already_published=True,
        status=ds.status,
    )


def build_summary_markdown(root: str, dataset: str, version: str) -> str:
    """The build at a glance, for the Prefect UI: accepted samples per finding against the targets (a finding
    no accepted sample holds is flagged), acceptance per expert, tries, gates."""
    ds = open_dataset(root, dataset, version)
    build = json.loads(ds.root.read_bytes(f"{ds.root.path(dataset, version)}/quality/build.json"))
    gates = json.loads(ds.root.read_bytes(f"{ds.root.path(dataset, version)}/quality/gates.json"))
    acceptance = build["acceptance"]
    lines = [f"# {dataset}/{version}", "",
             f"**{acceptance['accepted']} of {acceptance['n']} samples accepted** ({acceptance['rate']:.0%}); "
             f"build `{ds.lineage.get('build_id')}`, models `{ds.lineage.get('models', {}).get('mask_generator', {}).get('id')}` + "
             f"`{ds.lineage.get('models', {}).get('image_generator', {}).get('id')}`.", "",
             "| finding | target share | accepted share | accepted samples | prompted samples |", "|---|---|---|---|---|"]
    for row in build["frequencies"]:
        flag = " **(none accepted)**" if row.get("target") and not row.get("accepted") else ""
        lines.append(f"| {row['label']}{flag} | {row['target']:.3f} | {row['produced']:.3f} | {row.get('accepted', '')} | "
                     f"{row.get('prompted', '')} |")
    lines += ["", "| expert | pass rate |", "|---|---|"]
    lines += [f"| {name} | {rate:.0%} |" for name, rate in acceptance["per_expert"].items()]
    lines += ["", "Tries per sample: " + ", ".join(f"{k}: {v}" for k, v in acceptance["tries"].items()), "",
              "Gates: " + ", ".join(f"{g['gate']} {'passed' if g['success'] else 'FAILED'}" for g in gates)]
    return "\n".join(lines)
