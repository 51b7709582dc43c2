"""The whole pipeline as one flow: source -> experts -> anatomy bank -> generators -> build -> evaluation.

`aurad demo` runs it on the embedded default. Every step reuses what an earlier run made with the same
settings and inputs: datasets find their published build, and trainings are looked up in a small ledger
(`<root>/runs/<step>-<fingerprint>.json`) whose models must still be in the registry.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from prefect import flow, get_run_logger
from pydantic import BaseModel

from aurad_models.hashing import config_hash
from aurad_models.registry import RegistryError, resolve_model
from flows.anatomy import anatomy_bank_flow
from flows.build import IMAGE_GENERATOR_KIND, MASK_GENERATOR_KIND, BuildResult, build_flow
from flows.config import AuradConfig
from flows.evaluate import evaluate_flow
from flows.experts import train_experts_flow
from flows.source import phantom_source_flow
from flows.train import train_flow
from aurad_models.experts import ANATOMY_SEGMENTER_KIND, PATHOLOGY_CLASSIFIER_KIND

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
    return Path(root) / "runs" / f"{step}-{fingerprint[:16]}.json"


def reuse_or_run(root: str, step: str, settings: dict[str, Any], kinds: dict[str, str], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a training step unless the ledger says these settings already produced models still registered.

    `kinds` maps a key of the step's output (a model id) to its registry kind.
    """
    path = _ledger_path(root, step, config_hash(settings))
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
    output = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**output, "settings": settings}, indent=1, default=str))
    return {**output, "reused": False}


@flow(name="aurad-pipeline")
def pipeline_flow(config: AuradConfig = AuradConfig()) -> PipelineResult:
    """Run every stage in order (see the module docstring); returns where the results are."""
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
    pinned = {"source": f"{config.source.dataset}/{source_version}"}

    # 2. Experts trained on it (reused when already trained on this version with these settings).
    experts_params = config.experts.model_copy(update={"version": source_version})
    experts = timed("experts", lambda: reuse_or_run(
        root, "experts", {**pinned, "params": experts_params.model_dump(mode="json", exclude={"root", "device"})},
        {"classifier_id": PATHOLOGY_CLASSIFIER_KIND, "segmenter_id": ANATOMY_SEGMENTER_KIND},
        lambda: train_experts_flow(experts_params).model_dump(mode="json"),
    ))

    # 3. The anatomy bank, segmented from the source's unlabelled split by the segmenter just trained.
    bank_params = config.anatomy_bank.model_copy(update={"source_version": source_version})
    bank = timed("anatomy_bank", lambda: anatomy_bank_flow(bank_params))

    # 4. The generators.
    train_params = config.train.model_copy(update={"version": source_version})
    generators = timed("train", lambda: reuse_or_run(
        root, "generators", {**pinned, "params": train_params.model_dump(mode="json", exclude={"root", "resume"})},
        {"mask_generator_id": MASK_GENERATOR_KIND, "image_generator_id": IMAGE_GENERATOR_KIND},
        lambda: train_flow(train_params).model_dump(mode="json"),
    ))

    # 5. The build, with exactly these models and inputs.
    build_config = config.build.model_copy(update={
        "source_version": source_version,
        "anatomy_bank_version": bank.version,
        "mask_model": generators["mask_generator_id"],
        "image_model": generators["image_generator_id"],
    })
    build = timed("build", lambda: build_flow(build_config))

    # 6. Downstream evaluation of the new version against the held-out real split.
    evaluation = None
    evaluation_report = None
    headline = [f"{build.accepted} of {build.n_samples} samples accepted ({build.accepted / max(build.n_samples, 1):.0%})"]
    if config.evaluate.evaluate.tasks:
        evaluate_params = config.evaluate.model_copy(update={"real_version": source_version, "synthetic_version": build.version})
        result = timed("evaluate", lambda: evaluate_flow(evaluate_params))
        evaluation = result.model_dump(mode="json")
        evaluation_report = next((f"{result.output}/{f}" for f in result.files if f.endswith(".html")), None)
        for task, rows in result.gains.items():
            for row in rows:
                headline.append(_gain_line(task, row))
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


def _gain_line(task: str, row: dict[str, Any]) -> str:
    parts = [f"{task} at {row.get('real_fraction', '?'):.0%} real:" if isinstance(row.get("real_fraction"), float) else f"{task}:"]
    for key, value in row.items():
        if key != "real_fraction" and isinstance(value, (int, float)):
            parts.append(f"{key}={value:.3f}")
    return " ".join(parts)
