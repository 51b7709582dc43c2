"""Data-quality gates: great-expectations suites run between the build's stages.

Each gate turns a stage's output into a small table (one row per sample: areas, intensities, scores),
validates it with a great-expectations suite, and returns a `GateResult` holding GE's own validation
result plus readable failure lines. `raise_on_failure` stops the build: nothing is published when a
gate fails, and the failing expectations are named in the error (and so in the Prefect UI logs).
"""

from __future__ import annotations

import html
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aurad_models.anatomy_rules import allowed_region, heart_components, inside_fraction
from aurad_models.findings import Finding
from aurad_models.vocabulary import PATHOLOGIES, anatomy_index

logger = logging.getLogger(__name__)


class QualityConfig(BaseModel):
    """Thresholds of the data-quality gates."""

    model_config = ConfigDict(extra="forbid")

    frequency_tolerance: float = Field(0.05, ge=0, description="allowed |produced - target| finding frequency, added to a 3-sigma binomial allowance")
    lung_area_range: tuple[float, float] = Field((0.03, 0.40), description="each lung's area as a fraction of the image")
    heart_area_range: tuple[float, float] = Field((0.01, 0.30), description="heart area as a fraction of the image")
    anatomy_mostly: float = Field(0.98, ge=0, le=1, description="share of samples that must pass the anatomy checks")
    mask_inside_min: float = Field(0.90, ge=0, le=1, description="least share of a mask's pixels inside its allowed region")
    mask_area_max: float = Field(0.45, gt=0, le=1, description="largest pathology mask area as a fraction of the image")
    mask_mostly: float = Field(0.95, ge=0, le=1, description="share of masks that must pass the mask checks")
    image_mean_range: tuple[float, float] = Field((0.05, 0.95), description="per-image mean intensity in [0, 1]")
    image_std_range: tuple[float, float] = Field((0.02, 0.45), description="per-image intensity standard deviation")
    image_mostly: float = Field(0.95, ge=0, le=1, description="share of images that must be in the intensity ranges")
    min_acceptance_rate: float = Field(0.2, ge=0, le=1, description="least share of samples the expert filter accepts")
    @model_validator(mode="after")
    def _ranges(self) -> "QualityConfig":
        for name, value in self:
            if name.endswith("_range") and value[0] > value[1]:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {value}")
        return self

    min_class_coverage: float = Field(
        0.8, ge=0, le=1, description="each prompted finding's share among the *accepted* samples must reach this "
        "multiple of its target share (0: off); a class the filter lets collapse fails the build")


class QualityGateFailed(RuntimeError):
    """A data-quality gate failed; the message lists the failing expectations."""

    def __init__(self, results: Sequence["GateResult"]):
        self.results = list(results)
        lines = ["data-quality gate failed, nothing is published:"]
        for result in self.results:
            if not result.success:
                lines.extend(f"  [{result.gate}] {line}" for line in result.failures)
        super().__init__("\n".join(lines))


@dataclass
class GateResult:
    """One gate's outcome: GE's validation result (JSON) and readable failure lines."""

    gate: str
    success: bool
    failures: list[str]
    validation: dict[str, Any]
    rows: int
    details: dict[str, Any] = field(default_factory=dict)
    data_doc: str = ""  # the validation result as a page by great-expectations' own Data Docs renderer

    def to_json(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "success": self.success,
            "failures": self.failures,
            "rows": self.rows,
            "details": self.details,
            "validation": self.validation,
        }


# --- running a suite -----------------------------------------------------------------------------


def validate_frame(gate: str, frame: pd.DataFrame, expectations: list[Any]) -> GateResult:
    """Validate a DataFrame against GE expectations in an ephemeral (in-memory, offline) context."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GE announces a temporary docs folder at INFO on every ephemeral context: once per gate, noise.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas(f"{gate}-source").add_dataframe_asset(name=gate)
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=f"aurad-{gate}", expectations=expectations)
    result = batch.validate(suite)
    failures = [_describe_failure(r) for r in result.results if not r.success]
    return GateResult(gate=gate, success=bool(result.success), failures=failures, validation=result.to_json_dict(), rows=len(frame),
                      data_doc=data_doc_page(result))


def data_doc_page(result: Any) -> str:
    """One validation result as an HTML page, rendered by great-expectations' Data Docs renderer and view
    (what `context.build_data_docs()` writes per validation). Observed values become plain Python numbers
    first: GE's own column-mean metric returns a numpy float64, which its renderer's number formatting
    refuses (an ERROR with a traceback, and a blank cell)."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    for expectation in result.results:
        outcome = expectation.result or {}
        for key, value in outcome.items():
            if isinstance(value, np.generic):
                outcome[key] = value.item()
    return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))


def data_docs_index(pages: list[tuple[str, str, bool]], title: str) -> str:
    """An index of Data Docs pages: (file name, gate, success) each."""
    rows = "".join(f"<tr><td><a href=\"{html.escape(name)}\">{html.escape(gate)}</a></td><td>{'passed' if ok else 'FAILED'}</td></tr>"
                   for name, gate, ok in pages)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><p>great-expectations validation results, one page per suite run.</p>"
            f"<table><tr><th>suite</th><th>outcome</th></tr>{rows}</table></body></html>")


def _describe_failure(result: Any) -> str:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    column = kwargs.pop("column", None)
    outcome = result.result or {}
    if "observed_value" in outcome:
        seen = f"observed {outcome['observed_value']!r}"
    else:
        examples = outcome.get("partial_unexpected_list", [])[:5]
        seen = (
            f"{outcome.get('unexpected_count', '?')} of {outcome.get('element_count', '?')} values unexpected "
            f"({outcome.get('unexpected_percent', 0):.1f}%), e.g. {examples}"
        )
    if result.exception_info and result.exception_info.get("raised_exception"):
        seen = f"raised {result.exception_info.get('exception_message')}"
    where = f" on {column!r}" if column else ""
    return f"{config.type}{where} {kwargs}: {seen}"


def raise_on_failure(results: Iterable[GateResult]) -> None:
    """Stop the build if any gate failed."""
    results = list(results)
    if not all(r.success for r in results):
        raise QualityGateFailed(results)


# --- per-sample statistics -------------------------------------------------------------------------


def image_stats(images: np.ndarray) -> pd.DataFrame:
    """Per-image intensity statistics of float images in [0, 1], (N, H, W)."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    return pd.DataFrame(
        {
            "image_mean": np.nanmean(flat, axis=1),
            "image_std": np.nanstd(flat, axis=1),
            "image_nan": np.isnan(flat).sum(axis=1),
            "image_min": np.nanmin(flat, axis=1),
            "image_max": np.nanmax(flat, axis=1),
        }
    )


def anatomy_stats(anatomy: np.ndarray) -> pd.DataFrame:
    """Per-sample lung and heart areas (fraction of the image) and the heart's connected components
    (`anatomy_rules.heart_components`, as the anatomy bank's QC counts them)."""
    pixels = anatomy.shape[-1] * anatomy.shape[-2]
    heart = anatomy[:, anatomy_index("Heart")].astype(bool)
    return pd.DataFrame(
        {
            "left_lung_area": anatomy[:, anatomy_index("Left Lung")].reshape(len(anatomy), -1).sum(1) / pixels,
            "right_lung_area": anatomy[:, anatomy_index("Right Lung")].reshape(len(anatomy), -1).sum(1) / pixels,
            "heart_area": heart.reshape(len(anatomy), -1).sum(1) / pixels,
            "heart_components": [heart_components(h) for h in heart],
        }
    )


def mask_stats(pathology: np.ndarray, anatomy: np.ndarray, findings: Sequence[Sequence[Finding]]) -> pd.DataFrame:
    """One row per (sample, pathology class) that is prompted or non-empty: area, share inside allowed anatomy."""
    pixels = pathology.shape[-1] * pathology.shape[-2]
    rows = []
    for i, sample_findings in enumerate(findings):
        prompted = {f.label: f for f in sample_findings}
        for c, label in enumerate(PATHOLOGIES):
            mask = pathology[i, c].astype(bool)
            area = mask.sum() / pixels
            if label not in prompted and area == 0:
                continue
            side = prompted[label].side if label in prompted else None
            rows.append(
                {
                    "sample": i,
                    "label": label,
                    "prompted": label in prompted,
                    "area": float(area),
                    "inside": inside_fraction(mask, allowed_region(label, anatomy[i], side)),
                }
            )
    return pd.DataFrame(rows, columns=["sample", "label", "prompted", "area", "inside"])


# --- the gates -----------------------------------------------------------------------------------


def prompt_gate(findings: Sequence[Sequence[Finding]], targets: dict[str, float], config: QualityConfig) -> GateResult:
    """Produced finding frequencies within tolerance of the sampler's targets (before any generation)."""
    import great_expectations as gx

    n = max(len(findings), 1)
    counts = Counter(label for sample in findings for label in {f.label for f in sample})
    table = pd.DataFrame(
        [
            {
                "label": label,
                "target": float(target),
                "produced": counts.get(label, 0) / n,
                "allowed_error": config.frequency_tolerance + 3 * math.sqrt(max(target * (1 - target), 1e-12) / n),
            }
            for label, target in sorted(targets.items())
        ]
    )
    table["excess_error"] = (table["produced"] - table["target"]).abs() - table["allowed_error"]
    expectations = [
        gx.expectations.ExpectColumnValuesToBeInSet(column="label", value_set=list(PATHOLOGIES)),
        gx.expectations.ExpectColumnValuesToBeBetween(column="excess_error", max_value=0.0),
    ]
    result = validate_frame("prompts", table, expectations)
    for row in table[table["excess_error"] > 0].itertuples():
        result.failures.append(
            f"{row.label}: produced {row.produced:.3f}, target {row.target:.3f} (allowed error {row.allowed_error:.3f})"
        )
    result.details["frequencies"] = table.drop(columns="excess_error").to_dict(orient="records")
    return result


def anatomy_gate(stats: pd.DataFrame, config: QualityConfig) -> GateResult:
    """Anatomy masks present with plausible areas, one connected heart."""
    import great_expectations as gx

    lo, hi = config.lung_area_range
    hlo, hhi = config.heart_area_range
    mostly = config.anatomy_mostly
    expectations = [
        gx.expectations.ExpectColumnValuesToBeBetween(column="left_lung_area", min_value=lo, max_value=hi, mostly=mostly),
        gx.expectations.ExpectColumnValuesToBeBetween(column="right_lung_area", min_value=lo, max_value=hi, mostly=mostly),
        gx.expectations.ExpectColumnValuesToBeBetween(column="heart_area", min_value=hlo, max_value=hhi, mostly=mostly),
        gx.expectations.ExpectColumnValuesToBeBetween(column="heart_components", min_value=1, max_value=1, mostly=mostly),
    ]
    return validate_frame("anatomy", stats, expectations)


def mask_gate(stats: pd.DataFrame, config: QualityConfig) -> GateResult:
    """Generated masks: prompted ones non-empty, areas in range, inside the allowed anatomy."""
    import great_expectations as gx

    table = stats.assign(prompted_nonempty=np.where(stats["prompted"], stats["area"] > 0, True))
    mostly = config.mask_mostly
    expectations = [
        gx.expectations.ExpectColumnValuesToBeInSet(column="label", value_set=list(PATHOLOGIES)),
        gx.expectations.ExpectColumnValuesToBeBetween(column="area", min_value=0.0, max_value=config.mask_area_max, mostly=mostly),
        gx.expectations.ExpectColumnValuesToBeBetween(column="inside", min_value=config.mask_inside_min, max_value=1.0, mostly=mostly),
        gx.expectations.ExpectColumnValuesToBeInSet(column="prompted_nonempty", value_set=[True], mostly=mostly),
    ]
    return validate_frame("masks", table, expectations)


def image_gate(stats: pd.DataFrame, config: QualityConfig) -> GateResult:
    """Images finite, with intensity mean and spread in the source data's range."""
    import great_expectations as gx

    mostly = config.image_mostly
    expectations = [
        gx.expectations.ExpectColumnValuesToBeBetween(column="image_nan", min_value=0, max_value=0),
        gx.expectations.ExpectColumnValuesToBeBetween(column="image_mean", min_value=config.image_mean_range[0], max_value=config.image_mean_range[1], mostly=mostly),
        gx.expectations.ExpectColumnValuesToBeBetween(column="image_std", min_value=config.image_std_range[0], max_value=config.image_std_range[1], mostly=mostly),
    ]
    return validate_frame("images", stats, expectations)


def accepted_frequencies(manifest: pd.DataFrame, targets: dict[str, float]) -> pd.DataFrame:
    """Per finding: its target share, how many samples prompted it (every try counted once per sample), how
    many accepted samples hold it, and its share among the accepted samples."""
    accepted = manifest[manifest["accepted"]]
    has = lambda frame, label: frame["findings"].map(lambda fs: any(f["label"] == label for f in fs))  # noqa: E731
    rows = []
    for label in PATHOLOGIES:
        target = float(targets.get(label, 0.0))
        kept = int(has(accepted, label).sum()) if len(accepted) else 0
        share = kept / len(accepted) if len(accepted) else 0.0
        rows.append({"label": label, "target": target, "prompted": int(has(manifest, label).sum()), "accepted": kept,
                     "accepted_share": share, "coverage": share / target if target > 0 else None})
    return pd.DataFrame(rows)


def coverage_gate(frequencies: pd.DataFrame, config: QualityConfig) -> GateResult:
    """Every prompted finding reaches the dataset: its share among the accepted samples is at least
    `min_class_coverage` times its target share."""
    import great_expectations as gx

    table = frequencies[frequencies["target"] > 0].assign(coverage=lambda t: t["coverage"].astype(float))
    expectations = [gx.expectations.ExpectColumnValuesToBeBetween(column="coverage", min_value=config.min_class_coverage)]
    result = validate_frame("coverage", table, expectations)
    result.failures = [
        f"{row.label}: {row.accepted} accepted samples hold it ({row.accepted_share:.3f} of the accepted), "
        f"{row.coverage:.2f}x its target share {row.target:.3f} < {config.min_class_coverage:.2f} "
        "(build.quality.min_class_coverage); more tries (build.max_tries, build.prompt_redraws) or better generators"
        for row in table.itertuples() if row.coverage < config.min_class_coverage
    ] or result.failures
    result.details["accepted_frequencies"] = frequencies.to_dict(orient="records")
    return result


def manifest_gate(manifest: pd.DataFrame, config: QualityConfig) -> GateResult:
    """The finished manifest: unique, non-null ids and seeds, an acceptance rate above the floor."""
    import great_expectations as gx

    expectations = [
        gx.expectations.ExpectColumnValuesToBeUnique(column="sample_id"),
        gx.expectations.ExpectColumnValuesToNotBeNull(column="sample_id"),
        gx.expectations.ExpectColumnValuesToNotBeNull(column="seed"),
        gx.expectations.ExpectColumnValuesToNotBeNull(column="prompt"),
        gx.expectations.ExpectColumnMeanToBeBetween(column="accepted", min_value=config.min_acceptance_rate, max_value=1.0),
    ]
    table = manifest[["sample_id", "seed", "prompt"]].assign(accepted=manifest["accepted"].astype(float))
    return validate_frame("manifest", table, expectations)


# --- a page a person can read --------------------------------------------------------------------


def render_quality_html(results: Sequence[GateResult], title: str) -> str:
    """A self-contained HTML page listing every gate and expectation with its outcome."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.ok{color:#1a7f37}.bad{color:#cf222e}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    for result in results:
        status = "<span class='ok'>passed</span>" if result.success else "<span class='bad'>FAILED</span>"
        parts.append(f"<h2 id='gate-{html.escape(result.gate)}'>{html.escape(result.gate)}: {status} ({result.rows} rows)</h2>")
        parts.append("<table><tr><th>expectation</th><th>column</th><th>arguments</th><th>outcome</th></tr>")
        for item in result.validation.get("results", []):
            cfg = item["expectation_config"]
            kwargs = {k: v for k, v in cfg["kwargs"].items() if k not in ("batch_id", "column")}
            outcome = item.get("result", {})
            seen = outcome.get("observed_value", f"{outcome.get('unexpected_count', 0)} unexpected")
            cls = "ok" if item["success"] else "bad"
            parts.append(
                f"<tr class='{cls}'><td>{html.escape(cfg['type'])}</td><td>{html.escape(str(cfg['kwargs'].get('column', '')))}</td>"
                f"<td>{html.escape(str(kwargs))}</td><td>{html.escape(str(seen))}</td></tr>"
            )
        parts.append("</table>")
        frequencies = result.details.get("frequencies")
        if frequencies:
            parts.append("<h3>Finding frequencies</h3><table><tr><th>finding</th><th>target</th><th>produced</th><th>allowed error</th></tr>")
            for row in frequencies:
                parts.append(
                    f"<tr><td>{html.escape(row['label'])}</td><td>{row['target']:.3f}</td>"
                    f"<td>{row['produced']:.3f}</td><td>{row['allowed_error']:.3f}</td></tr>"
                )
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
