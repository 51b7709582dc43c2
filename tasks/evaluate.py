"""The evaluation of a synthetic dataset version: its parameters, the data it reads, the downstream
retraining (`tasks.retrain`), the quality metrics, the labels every model saw, and the documents it writes
(`flows.evaluate.evaluate_flow` wires them as Prefect tasks). Tasks pass dataset references, not arrays:
each loads what it needs from storage.

Writes one evaluation run's folder: beside the synthetic version, never inside it (`storage.evaluations`:
`<root>/<dataset>/_evaluations/<version>/e0001/`, listed in that folder's `index.html`), or into `output`
when given:
    evaluation.json            segmentation (Dice), the shape documented in `tasks.retrain.run_downstream`
    evaluation_detection.json  detection (mAP@0.5), the same shape, when detection is enabled
    quality_metrics.json       C2ST, FXD / FD, PRDC, MS-SSIM diversity, mask-anatomy consistency, expert agreement
    evaluation.html            the evaluation report
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict, Field

from aurad_models import metrics
from aurad_models.vocabulary import PATHOLOGIES
from aurad_models.experts.loading import ExpertChoice
from tasks.report import headline_lines, render_evaluation_report
from tasks.retrain import DownstreamConfig, LabelledImages, load_labelled, run_downstream, torch_threads

logger = logging.getLogger(__name__)

OUTPUT_FILES = {
    "segmentation": "evaluation.json",
    "detection": "evaluation_detection.json",
    "metrics": "quality_metrics.json",
    "report": "evaluation.html",
}


class MetricsConfig(BaseModel):
    """Image-set quality metrics of the synthetic version against the real test split."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="compute the quality metrics (quality_metrics.json); false: skip them")
    max_images: int = Field(200, ge=6, description="images per set used for FXD / PRDC (both sets capped)")
    k: int = Field(5, ge=1, description="neighbours for precision / recall / density / coverage")
    expert: ExpertChoice = Field(default_factory=ExpertChoice, description="feature extractor: xrv DenseNet (FXD) or the project classifier")
    inception_weights: str | None = Field(None, description="local torchvision inception_v3 weights file for FID; none: FID skipped")
    diversity_prompts: int = Field(16, ge=1, description="prompts with 4 samples each used for MS-SSIM diversity")
    c2st_images: int = Field(400, ge=8, description="images per set for the classifier two-sample test (real: the val and test splits)")
    c2st_steps: int = Field(400, ge=1, description="training steps of the two-sample test's CNN")


class EvaluateConfig(DownstreamConfig):
    """The profile's `evaluate` section: regimes, models and metrics."""

    max_test: int | None = Field(None, ge=1, description="cap on real test images scored (None: the whole split)")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="image-set quality metrics against the real test split"
    )


class EvaluateParameters(BaseModel):
    """What to evaluate and where to write; shown as a form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field("aurad-data", description="storage root (datasets and the model registry)")
    real_dataset: str = Field("phantom", description="the real (source) dataset: its train split is the scarce real data")
    real_version: str = Field("latest", description="version of the real dataset: 'latest' or a version id")
    train_split: str = Field("train", description="real training split: the scarce subsets and the full-real ceiling")
    val_split: str | None = Field("val", description="real split that picks each model's checkpoint (None: the last one)")
    test_split: str = Field("test", description="held-out real split every model is scored on")
    synthetic_dataset: str | None = Field("synthetic", description="the synthetic dataset (accepted samples); None: real regimes only")
    synthetic_version: str = Field("latest", description="version of the synthetic dataset: 'latest' or a version id")
    output: str | None = Field(None, description="output folder; default: a new run folder beside the synthetic version "
                               "(<dataset>/_evaluations/<version>/eNNNN), never inside it")
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig, description="downstream regimes, models, seeds and quality metrics"
    )


class EvaluateResult(BaseModel):
    """Where the outputs went and the headline: the gain from synthetic data at each real fraction."""

    output: str
    files: list[str]
    gains: dict[str, list[dict[str, Any]]]
    headline: dict[str, list[str]] = {}
    seconds: float


def _open(root: str, dataset: str, version: str):
    from storage import open_dataset

    return open_dataset(root, dataset, version)


def _sources(params: EvaluateParameters) -> dict[str, Any]:
    real = _open(params.root, params.real_dataset, params.real_version)
    out: dict[str, Any] = {"real": f"{real.name}/{real.version}", "train_split": params.train_split, "test_split": params.test_split}
    if params.synthetic_dataset:
        synthetic = _open(params.root, params.synthetic_dataset, params.synthetic_version)
        out["synthetic"] = f"{synthetic.name}/{synthetic.version}"
    return out


@dataclass
class EvaluationData:
    """The real splits (every sample of each) and the synthetic accepted samples."""

    train: LabelledImages
    val: LabelledImages | None
    test: LabelledImages
    synthetic: LabelledImages | None


def load_evaluation_data(params: EvaluateParameters) -> EvaluationData:
    """Real train, val and test splits and the synthetic accepted samples. A val split named but absent
    from the real dataset is an error (a missing one would silently turn checkpoint selection off)."""
    real = _open(params.root, params.real_dataset, params.real_version)
    train = load_labelled(real, params.train_split, accepted_only=False)
    val = load_labelled(real, params.val_split, accepted_only=False) if params.val_split else None
    test = load_labelled(real, params.test_split, accepted_only=False, limit=params.evaluate.max_test)
    synthetic = None
    if params.synthetic_dataset:
        version = _open(params.root, params.synthetic_dataset, params.synthetic_version)
        synthetic = load_labelled(version, None, accepted_only=True, limit=params.evaluate.max_synthetic)
    return EvaluationData(train, val, test, synthetic)


def labels_seen(params: EvaluateParameters) -> dict[str, Any]:
    """Which labelled real data every model behind the synthetic version learnt from (from the registry's
    lineage), beside what the scarce downstream regimes get: a generator or expert that saw more labels
    than the scarce regime makes the comparison a distillation bound, not a scarce-data result."""
    from aurad_models.registry import RegistryError, resolve_model

    if not params.synthetic_dataset:
        return {}
    version = _open(params.root, params.synthetic_dataset, params.synthetic_version)
    models = version.lineage.get("models", {})
    out: dict[str, Any] = {}
    for name, kind, reference in (
        ("mask_generator", "mask-generator", models.get("mask_generator", {}).get("id")),
        ("image_generator", "image-generator", models.get("image_generator", {}).get("id")),
        ("classifier", "pathology-classifier", models.get("classifier", {}).get("model")),
        ("segmenter", "anatomy-segmenter", models.get("segmenter", {}).get("model")),
        ("fidelity", "lesion-segmenter", models.get("fidelity", {}).get("model")),
    ):
        if not reference:
            continue
        try:
            record = resolve_model(params.root, kind, reference, verify=False)
        except RegistryError as error:
            out[name] = {"model": reference, "unknown": str(error)}
            continue
        data = record.lineage.get("data") or record.lineage.get("source") or {}
        out[name] = {"model": record.id, **{k: data.get(k) for k in ("dataset", "version", "split", "train_split", "n",
                                                                     "labelled", "labelled_subset") if k in data}}
    return out


def downstream_evaluation(params: EvaluateParameters, task_name: str, log: Any = None) -> dict[str, Any]:
    """Train and score every regime x seed of one task (segmentation or detection)."""
    data = load_evaluation_data(params)
    return run_downstream(task_name, data.train, data.test, data.synthetic, params.evaluate, _sources(params),  # type: ignore[arg-type]
                          real_val=data.val, labels_seen=labels_seen(params), log=log)


def quality_metrics(params: EvaluateParameters) -> dict[str, Any]:
    """FXD (or FD on the project classifier), PRDC, diversity, mask-anatomy consistency and expert agreement
    of the synthetic accepted samples against the real test split. A missing expert is a recorded skip."""
    from aurad_models.experts.loading import load_pathology_expert
    from aurad_models.findings import Finding
    from aurad_models.pixels import stored_to_unit

    config = params.evaluate.metrics
    if not params.synthetic_dataset:
        return {"skipped": "no synthetic dataset"}
    real = _open(params.root, params.real_dataset, params.real_version)
    synthetic = _open(params.root, params.synthetic_dataset, params.synthetic_version)
    real_test = load_labelled(real, params.test_split, accepted_only=False, limit=config.max_images)
    real_images = real_test.images
    chosen = synthetic.select(accepted_only=True)
    subset = chosen[: config.max_images]
    synthetic_images = stored_to_unit(np.asarray(synthetic.images.oindex[subset]))
    order = [list(synthetic.pathology_channels).index(label) for label in PATHOLOGIES]
    pathology = np.asarray(synthetic.masks.oindex[subset])[:, order]
    anatomy = np.asarray(synthetic.anatomy.oindex[subset])
    rows = synthetic.manifest.take(subset).column("findings").to_pylist()
    findings = [tuple(Finding(**f) for f in (row or [])) for row in rows]
    prompts = synthetic.manifest.column("prompt").to_pylist()
    groups = metrics.group_by_prompt([prompts[i] for i in chosen], per_prompt=4)[: config.diversity_prompts]
    diversity = (
        np.stack([stored_to_unit(np.asarray(synthetic.images.oindex[chosen[g]])) for g in groups]) if groups else None
    )
    real_features = synthetic_features = probabilities = None
    try:
        expert = load_pathology_expert(config.expert, registry_root=params.root)
        real_features = metrics.expert_features(expert, real_images)
        synthetic_features = metrics.expert_features(expert, synthetic_images)
        probabilities = expert.predict(synthetic_images)
    except (LookupError, FileNotFoundError, RuntimeError) as error:
        logger.warning("no pathology expert for the quality metrics: %s", error)
    fid = metrics.inception_fid(real_images, synthetic_images, config.inception_weights)
    out = metrics.quality_metrics(
        real_features, synthetic_features, synthetic_pathology=pathology, synthetic_anatomy=anatomy, findings=findings,
        expert_probabilities=probabilities, diversity_groups=diversity, fid=fid, k=config.k,
    )
    held_out = [split for split in (params.val_split, params.test_split) if split]  # real images no generator saw
    c2st_real = np.concatenate([load_labelled(real, split, accepted_only=False).images for split in held_out])[: config.c2st_images]
    c2st_synthetic = stored_to_unit(np.asarray(synthetic.images.oindex[chosen[: config.c2st_images]]))
    with torch_threads(1):
        out["c2st"] = metrics.classifier_two_sample_test(c2st_real, c2st_synthetic, seed=params.evaluate.base_seed,
                                                         steps=config.c2st_steps)
    if real_features is None:
        out["frechet"] = out["prdc"] = out["expert_agreement"] = {"skipped": "no pathology expert available (see the flow log)"}
    build_file = synthetic.root.path(synthetic.name, synthetic.version, "quality", "build.json")
    if synthetic.root.exists(build_file):  # the build's co-occurrence against its prompt prior, shown beside the rest
        out["cooccurrence"] = json.loads(synthetic.root.read_bytes(build_file)).get("cooccurrence")
    from tasks.grounding import location_document

    real_test_indices = real.select(accepted_only=False, split=params.test_split)[: config.max_images]
    out["locations"] = location_document({
        "synthetic (accepted)": (pathology, anatomy),
        "real test split": (real_test.masks, np.asarray(real.anatomy.oindex[real_test_indices]))})
    return out


def _evaluated_version(params: EvaluateParameters):
    if not params.synthetic_dataset:
        raise ValueError("no output folder given and no synthetic dataset to write beside: set `output`")
    return _open(params.root, params.synthetic_dataset, params.synthetic_version)


def evaluation_key(params: EvaluateParameters) -> str:
    """Same settings and the same (resolved) real and synthetic versions -> same key: an evaluation that
    already ran is reused instead of training its models again."""
    from aurad_models.hashing import config_hash

    real = _open(params.root, params.real_dataset, params.real_version).version
    synthetic = _open(params.root, params.synthetic_dataset, params.synthetic_version).version if params.synthetic_dataset else None
    settings = params.model_dump(mode="json", exclude={"root", "output", "real_version", "synthetic_version"})
    settings["evaluate"].pop("workers", None)
    return config_hash({"settings": settings, "real": real, "synthetic": synthetic})[:16]


def _wanted(params: EvaluateParameters) -> list[str]:
    return list(params.evaluate.tasks) + (["metrics"] if params.evaluate.metrics.enabled else [])


def _read_documents(read, names: list[str], key: str) -> dict[str, dict[str, Any]] | None:
    documents = {}
    for name in names:
        data = read(OUTPUT_FILES[name])
        try:
            document = json.loads(data) if data is not None else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            document = None
        if not isinstance(document, dict) or document.get("evaluation_key") != key:
            return None
        documents[name] = document
    return documents


def previous_outputs(params: EvaluateParameters, key: str) -> tuple[dict[str, dict[str, Any]], str] | None:
    """The documents of the newest complete earlier run with the same `evaluation_key`, and its folder; or None."""
    if params.output is not None:
        folder = Path(params.output)
        documents = _read_documents(lambda n: (folder / n).read_bytes() if (folder / n).is_file() else None, _wanted(params), key)
        return (documents, str(folder)) if documents is not None else None
    from storage.evaluations import evaluations_dir, list_evaluations

    version = _evaluated_version(params)
    for run in reversed(list_evaluations(version.root, version.name, version.version)):
        if run.get("key") != key:
            continue
        base = f"{evaluations_dir(version.root, version.name, version.version)}/{run['run']}"
        documents = _read_documents(lambda n: version.root.read_bytes(f"{base}/{n}") if version.root.exists(f"{base}/{n}") else None,
                                    _wanted(params), key)
        if documents is not None:
            return documents, run["folder"]
    return None


def _documents_as_files(documents: dict[str, dict[str, Any]], key: str | None) -> dict[str, bytes]:
    """Every output file's bytes: the JSON documents (each with the run's `evaluation_key`) and the report."""
    files = {}
    for name, document in documents.items():
        document = {**document, "evaluation_key": key} if key else document
        files[OUTPUT_FILES[name]] = (json.dumps(document, indent=2, sort_keys=True, allow_nan=False, default=_json_default) + "\n").encode()
    main = documents.get("segmentation") or documents.get("detection")
    if main is not None:
        detection = documents.get("detection") if main is not documents.get("detection") else None
        files[OUTPUT_FILES["report"]] = render_evaluation_report(main, detection, metrics=documents.get("metrics")).encode()
    return files


def write_outputs(params: EvaluateParameters, documents: dict[str, dict[str, Any]], key: str | None = None) -> tuple[str, list[str]]:
    """Write one run's files into a new run folder beside the synthetic version (or into `output`); returns
    (folder, file names)."""
    files = _documents_as_files(documents, key)
    if params.output is not None:
        folder = Path(params.output)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return str(folder), list(files)
    from storage.evaluations import claim_evaluation_folder, finish_evaluation

    version = _evaluated_version(params)
    folder = claim_evaluation_folder(version.root, version.name, version.version)
    for name, data in files.items():
        version.root.write_bytes(f"{folder}/{name}", data)
    headline = [line for name in params.evaluate.tasks if name in documents for line in headline_lines(documents[name])]
    finish_evaluation(version.root, version.name, version.version, folder, {
        "key": key, "files": list(files), "report": OUTPUT_FILES["report"] if OUTPUT_FILES["report"] in files else None,
        "headline": headline, "real": f"{params.real_dataset}/{_open(params.root, params.real_dataset, params.real_version).version}",
        "synthetic": f"{version.name}/{version.version}"})
    return version.root.url_of(folder), list(files)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean_nans(value: Any) -> Any:
    """NaN -> None, so the JSON is strict (readable by any script) and None means "not defined"."""
    if isinstance(value, dict):
        return {k: _clean_nans(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_nans(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


# --- Prefect tasks: thin wrappers ------------------------------------------------------------------


@task(name="downstream-retraining")
def downstream_task(params: EvaluateParameters, task_name: str) -> dict[str, Any]:
    return _clean_nans(downstream_evaluation(params, task_name, get_run_logger()))


@task(name="quality-metrics")
def quality_metrics_task(params: EvaluateParameters) -> dict[str, Any]:
    return _clean_nans(quality_metrics(params))


@task(name="write-evaluation")
def write_outputs_task(params: EvaluateParameters, documents: dict[str, dict[str, Any]], key: str | None = None) -> tuple[str, list[str]]:
    return write_outputs(params, documents, key)
