"""The whole pipeline as one flow: source -> experts -> anatomy bank -> generators -> build -> evaluation.

`aurad demo` runs it on the embedded default. Every step reuses what an earlier run made with the same
settings and inputs: datasets find their published build, and trainings are looked up in a small ledger
(`<root>/runs/<step>-<fingerprint>.json`) whose models must still be in the registry, then among the models
the repository ships (`aurad_models.embedded`, trained with exactly these settings); `retrain` skips the
shipped ones and trains everything from scratch.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from prefect import flow, get_run_logger
from prefect.states import State
from pydantic import BaseModel

from aurad_models import embedded
from aurad_models.experts import (
    ANATOMY_SEGMENTER_KIND,
    LESION_SEGMENTER_KIND,
    PATHOLOGY_CLASSIFIER_KIND,
)
from aurad_models.hashing import config_hash
from aurad_models.registry import RegistryError, local_root, resolve_model
from flows.anatomy import anatomy_bank_flow
from flows.build import build_flow
from flows.config import AuradConfig
from flows.evaluate import evaluate_flow
from flows.experts import train_experts_flow
from flows.profiles import with_overrides
from flows.source import phantom_source_flow
from flows.train import train_flow
from tasks.build import IMAGE_GENERATOR_KIND, MASK_GENERATOR_KIND, BuildResult
from tasks.source import source_build_id

logger = logging.getLogger(__name__)


class PipelineResult(BaseModel):
    source_version: str
    experts: dict[str, Any]
    anatomy_bank_version: str
    generators: dict[str, Any]
    build: BuildResult
    evaluation: dict[str, Any] | None
    dataset_path: str
    report: str
    evaluation_report: str | None
    headline: list[str]
    seconds: dict[str, float]


def _ledger_path(root: str, step: str, fingerprint: str) -> Path:
    return local_root(root, "the pipeline's run ledger") / "runs" / f"{step}-{fingerprint[:16]}.json"


# Settings that say where or how fast a step runs, not what it makes: left out of its fingerprint.
MACHINE_SETTINGS = frozenset({"root", "device", "num_threads", "resume", "time_limit_minutes"})

EXPERT_KINDS = {"classifier_id": PATHOLOGY_CLASSIFIER_KIND, "segmenter_id": ANATOMY_SEGMENTER_KIND,
                "lesion_segmenter_id": LESION_SEGMENTER_KIND}
GENERATOR_KINDS = {"mask_generator_id": MASK_GENERATOR_KIND, "image_generator_id": IMAGE_GENERATOR_KIND}


def _without_machine_settings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_machine_settings(v) for k, v in value.items() if k not in MACHINE_SETTINGS}
    return value


def step_settings(config: AuradConfig, step: str) -> dict[str, Any]:
    """What a training step's models depend on: the source's content fingerprint and the step's settings
    (machine settings left out). Its hash keys the run ledger and the shipped models."""
    source = {"source": config.source.dataset, "source_build": source_build_id(config.source)}
    if step == "experts":
        dumped = config.experts.model_dump(mode="json", exclude={"version"})
    else:
        dumped = config.train.model_dump(mode="json", exclude={"version"})
    return {**source, "params": _without_machine_settings(dumped)}


def reuse_or_run(root: str, step: str, settings: dict[str, Any], kinds: dict[str, str], run: Callable[[], dict[str, Any]],
                 shipped: bool = True) -> dict[str, Any]:
    """Run a training step unless its models exist already: the ledger says these settings produced models
    still in the registry, or (`shipped`) the repository ships models trained with exactly these settings
    (`aurad_models.embedded`), which are installed into the registry and verified instead of training.

    `kinds` maps a key of the step's output (a model id) to its registry kind.
    """
    fingerprint = config_hash(settings)
    path = _ledger_path(root, step, fingerprint)
    if path.is_file():
        previous = json.loads(path.read_text())
        try:
            for key, kind in kinds.items():
                if previous.get(key) is not None:
                    resolve_model(root, kind, previous[key])
            logger.info("%s: reusing %s (same settings as %s)", step, {k: previous.get(k) for k in kinds}, path.name)
            return {**previous, "reused": True}
        except RegistryError as error:
            logger.warning("%s: ledger %s names a model that is gone (%s); training again", step, path, error)
    entry = embedded.find_step(step, fingerprint) if shipped else None
    if entry is not None:
        output = {**embedded.install_step(entry, root), "shipped": True}
        logger.warning("%s: using the shipped models %s (trained with these exact settings, weights verified); "
                       "`aurad demo --retrain` trains them again", step, {k: output.get(k) for k in kinds})
    else:
        output = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**output, "settings": settings, "fingerprint": fingerprint}, indent=1, default=str))
    return {**output, "reused": False}


def export_trained_step(config: AuradConfig, step: str, kinds: dict[str, str], profile: str) -> dict[str, Any]:
    """Ship the models the ledger of `config.storage.root` records for this step and these settings."""
    import platform
    from importlib.metadata import version

    from tasks.build import code_version

    settings = step_settings(config, step)
    fingerprint = config_hash(settings)
    path = _ledger_path(config.storage.root, step, fingerprint)
    if not path.is_file():
        raise FileNotFoundError(f"no {step} run with these settings under {config.storage.root} ({path.name}): "
                                f"run `aurad demo --retrain -p {profile} -r {config.storage.root}` first")
    outputs = json.loads(path.read_text())
    how = {"command": f"aurad demo --retrain -p {profile}", "profile": profile, "fingerprint": fingerprint,
           "source_build": settings["source_build"], "package": version("aurad"),
           "git_commit": code_version().get("git_commit"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "seconds": outputs.get("seconds")}
    return embedded.export_step(step, fingerprint, outputs, kinds, config.storage.root, how)


@flow(name="aurad-pipeline")
def pipeline_flow(config: AuradConfig = AuradConfig(), retrain: bool = False, overrides: dict[str, Any] | None = None) -> PipelineResult | State:
    """Run every stage in order (see the module docstring); returns where the results are."""
    config = with_overrides(config, overrides)  # a run's few changes, merged (see flows.deployments)
    run_logger = get_run_logger()
    root = config.storage.root
    seconds: dict[str, float] = {}

    def timed(name: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = call()
        seconds[name] = round(time.perf_counter() - started, 1)
        run_logger.info("%s: %.0f s", name, seconds[name])
        return result

    # 1. The source dataset (the phantom: the embedded default's "real" data).
    source_version = timed("source", lambda: phantom_source_flow(config.source))

    # 2. Experts trained on it (reused when already trained on this source with these settings, or shipped).
    experts_params = config.experts.model_copy(update={"version": source_version})
    experts = timed("experts", lambda: reuse_or_run(
        root, "experts", step_settings(config, "experts"), EXPERT_KINDS,
        lambda: train_experts_flow(experts_params).model_dump(mode="json"), shipped=not retrain,
    ))

    # 3. The anatomy bank, segmented from the source's unlabelled split by the segmenter just trained.
    bank_params = config.anatomy_bank.model_copy(update={"source_version": source_version})
    bank = timed("anatomy_bank", lambda: anatomy_bank_flow(bank_params))

    # 4. The generators.
    train_params = config.train.model_copy(update={"version": source_version})
    generators = timed("train", lambda: reuse_or_run(
        root, "generators", step_settings(config, "generators"), GENERATOR_KINDS,
        lambda: train_flow(train_params).model_dump(mode="json"), shipped=not retrain,
    ))

    # 5. The build, with exactly these models and inputs.
    def pinned_expert(choice, model_id):  # the experts of step 2, unless the profile names other ones
        return choice.model_copy(update={"model": model_id}) if choice.model == "latest" and model_id else choice

    build_config = config.build.model_copy(update={
        "source_version": source_version,
        "anatomy_bank_version": bank.version,
        "mask_model": generators["mask_generator_id"],
        "image_model": generators["image_generator_id"],
        "classifier": pinned_expert(config.build.classifier, experts.get("classifier_id")),
        "segmenter": pinned_expert(config.build.segmenter, experts.get("segmenter_id")),
        "fidelity": pinned_expert(config.build.fidelity, experts.get("lesion_segmenter_id")),
    })
    build = timed("build", lambda: build_flow(build_config, return_state=True))
    if build.is_failed():  # a failed gate: end in the build's clean Failed state, not in a traceback
        return build
    build = build.result()

    # 6. Downstream evaluation of the new version against the held-out real split.
    evaluation = None
    evaluation_report = None
    headline = [_models_line("experts", experts, EXPERT_KINDS), _models_line("generators", generators, GENERATOR_KINDS),
                f"{build.accepted} of {build.n_samples} samples accepted ({build.accepted / max(build.n_samples, 1):.0%})"]
    if config.evaluate.evaluate.tasks:
        evaluate_params = config.evaluate.model_copy(update={"real_version": source_version, "synthetic_version": build.version})
        result = timed("evaluate", lambda: evaluate_flow(evaluate_params))
        evaluation = result.model_dump(mode="json")
        evaluation_report = next((f"{result.output}/{f}" for f in result.files if f.endswith(".html")), None)
        for name, lines in result.headline.items():
            headline.extend(f"{name}: {line}" for line in lines)
    from storage import open_dataset

    dataset = open_dataset(root, build.dataset, build.version)
    return PipelineResult(
        source_version=source_version,
        experts=experts,
        anatomy_bank_version=bank.version,
        generators=generators,
        build=build,
        evaluation=evaluation,
        dataset_path=str(dataset.path),
        report=build.report,
        evaluation_report=evaluation_report,
        headline=headline,
        seconds=seconds,
    )


def _models_line(step: str, output: dict[str, Any], kinds: dict[str, str]) -> str:
    how = ("the shipped models (aurad_models/embedded/, trained with these settings; weights sha256-verified)"
           if output.get("shipped") else "reused from an earlier run" if output.get("reused") else "trained in this run")
    return f"{step}: {how}: {', '.join(str(output.get(k)) for k in kinds if output.get(k))}"
