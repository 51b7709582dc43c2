"""Human-readable reports: one self-contained HTML page per dataset version and per evaluation run.

Everything is inline (CSS, PNG figures as base64 data URIs), so a page can be mailed, attached to a Prefect
artifact or opened from object storage without its folder. Inputs are plain arrays and dicts, so the
build flow, the evaluate flow and a notebook can all render one:

    render_version_report(title=..., images=..., pathology=..., anatomy=..., frequencies=...,
                          acceptance=..., gates=..., metrics=..., evaluation=...)
    render_evaluation_report(evaluation, detection=None)

Figures are drawn on `matplotlib.figure.Figure` objects directly (no pyplot, no global figure state).
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from aurad_models.pixels import stored_to_unit
from aurad_models.vocabulary import PATHOLOGIES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from storage import DatasetVersion

TRAIN_SET_STYLE = {
    "real": {"color": "#4c72b0", "marker": "o", "label": "real only"},
    "real+synthetic": {"color": "#dd8452", "marker": "s", "label": "real + synthetic"},
    "real+oracle": {"color": "#8172b3", "marker": "D", "label": "real + real stand-ins (oracle)"},
    "synthetic->real": {"color": "#c44e52", "marker": "v", "label": "synthetic pre-train, real fine-tune"},
    "synthetic": {"color": "#55a868", "marker": "^", "label": "synthetic only"},
    "full-real": {"color": "#937860", "marker": "*", "label": "all real data (ceiling)"},
}
METRIC_NAMES = {"dice": "Dice", "map50": "mAP@0.5"}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em} h2{margin-top:2em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:.6em 0 1.2em} caption{caption-side:bottom;text-align:left;color:#555;font-size:.9em;padding-top:.3em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f5f5f5} td.text,th.text{text-align:left}
figure{margin:1em 0} figcaption{color:#555;font-size:.9em} img{max-width:100%}
.ok{color:#1a7f37} .bad{color:#cf222e} .muted{color:#888}
"""


# --- small building blocks -----------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    """A cell's text: numbers rounded, None / NaN as an en dash, everything escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return html.escape(str(value))


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(figure: "Figure", dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def rgb_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 array (H, W, 3)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def figure_html(png: bytes, caption: str, alt: str) -> str:
    return (
        f"<figure><img src=\"{png_data_uri(png)}\" alt=\"{html.escape(alt)}\">"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def table_html(
    header: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None,
    table_id: str | None = None, row_class: str | None = None, text_columns: int = 1,
) -> str:
    """An HTML table; the first `text_columns` columns are left-aligned text, the rest formatted numbers."""
    attrs = f" id=\"{html.escape(table_id)}\"" if table_id else ""
    parts = [f"<table{attrs}>"]
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    parts.append("<tr>" + "".join(
        f"<th class=\"text\">{html.escape(h)}</th>" if i < text_columns else f"<th>{html.escape(h)}</th>" for i, h in enumerate(header)
    ) + "</tr>")
    cls = f" class=\"{row_class}\"" if row_class else ""
    for row in rows:
        cells = "".join(f"<td class=\"text\">{fmt(v)}</td>" if i < text_columns else f"<td>{fmt(v)}</td>" for i, v in enumerate(row))
        parts.append(f"<tr{cls}>{cells}</tr>")
    parts.append("</table>")
    return "".join(parts)


def nested_table_html(mapping: Mapping[str, Any], key_name: str, caption: str | None = None, table_id: str | None = None) -> str:
    """A dict of dicts as a table: one row per key, one column per inner key (union, in first-seen order)."""
    rows = {k: v for k, v in mapping.items() if isinstance(v, Mapping)}
    columns: list[str] = []
    for inner in rows.values():
        columns.extend(c for c in inner if c not in columns and not isinstance(inner[c], (Mapping, list)))
    return table_html([key_name, *columns], ([k, *(inner.get(c) for c in columns)] for k, inner in rows.items()), caption, table_id)


def _page(title: str, body: Sequence[str]) -> str:
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>" + "\n".join(body) + "</body></html>"
    )


def _new_figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


# --- the sample grids ----------------------------------------------------------------------------


def sample_grid_section(
    images: np.ndarray,
    pathology: np.ndarray | None = None,
    anatomy: np.ndarray | None = None,
    captions: Sequence[str] | None = None,
    per_finding: int = 8,
    ncols: int = 8,
    finding_samples: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """All samples with their masks overlaid, then one grid per finding (samples having it, only that
    finding's mask drawn) so each class's masks can be checked by eye. `finding_samples` ({label: {"images",
    "pathology", "captions"}}, e.g. from `finding_samples_of`) draws those grids from the whole version;
    without it they come from the samples shown, and a finding none of them holds is named."""
    from aurad_models.visualize import overlay_grid

    shown = _upscaled(images, pathology, anatomy)
    parts = ["<h2 id=\"samples\">Samples</h2>"]
    grid = overlay_grid(shown[0], pathology=shown[1], anatomy=shown[2], titles=list(captions) if captions else None, ncols=ncols)
    parts.append(figure_html(rgb_png(grid), f"{len(images)} samples with pathology masks overlaid (colour per finding)"
                             + ("; anatomy outlined" if anatomy is not None else "") + ".", "sample grid"))
    if finding_samples is None and pathology is None:
        return "".join(parts)
    if finding_samples is None:
        finding_samples = {}
        for c, label in enumerate(PATHOLOGIES):
            having = np.flatnonzero(pathology[:, c].reshape(len(pathology), -1).any(axis=1))[:per_finding]
            finding_samples[label] = {"images": images[having], "pathology": pathology[having],
                                      "captions": [captions[i] for i in having] if captions else None}
    missing = []
    for c, label in enumerate(PATHOLOGIES):
        found = finding_samples.get(label)
        if found is None or len(found["images"]) == 0:
            missing.append(label)
            continue
        found_images, found_masks = _upscaled(np.asarray(found["images"]), np.asarray(found["pathology"]))
        only = np.zeros_like(found_masks)
        only[:, c] = found_masks[:, c]
        grid = overlay_grid(found_images, pathology=only, titles=found.get("captions"), ncols=min(ncols, len(found_images)))
        parts.append(f"<h3 id=\"samples-{label}\">{html.escape(label)}</h3>")
        parts.append(figure_html(rgb_png(grid), f"{len(found_images)} accepted samples with a {label} mask; only the "
                                 f"{label} mask is drawn.", f"{label} samples"))
    if missing:
        parts.append(f"<p class=\"bad\" id=\"samples-missing\">No sample with a mask of: {html.escape(', '.join(missing))}.</p>")
    return "".join(parts)


def finding_samples_of(images: Any, masks: Any, manifest: Any, per_finding: int = 8) -> dict[str, dict[str, Any]]:
    """Per finding, the first `per_finding` accepted samples of the whole version that hold it (zarr arrays
    `images` (stored 16-bit) and `masks`, the manifest as pandas): the report's per-finding grids."""
    from aurad_models.pixels import stored_to_unit

    accepted = manifest[manifest["accepted"]]
    out = {}
    for label in PATHOLOGIES:
        holds = accepted["findings"].map(lambda fs, label=label: any(f["label"] == label for f in fs))
        index = np.sort(accepted.index[holds.to_numpy()].to_numpy()[:per_finding])
        out[label] = {
            "images": stored_to_unit(np.asarray(images.get_orthogonal_selection((index,)))) if index.size else np.zeros((0,)),
            "pathology": np.asarray(masks.get_orthogonal_selection((index,))) if index.size else np.zeros((0,)),
            "captions": manifest["prompt"].iloc[index].tolist(),
        }
    return out


def _upscaled(images: np.ndarray, *masks: np.ndarray | None, min_size: int = 128) -> tuple[np.ndarray | None, ...]:
    """Small images (and their masks) repeated up to at least `min_size` px so tiles and titles are legible."""
    factor = max(1, -(-min_size // images.shape[-1]))
    if factor == 1:
        return (images, *masks)
    grow = lambda a: None if a is None else np.repeat(np.repeat(a, factor, axis=-2), factor, axis=-1)  # noqa: E731
    return (grow(images), *(grow(m) for m in masks))


def version_samples(version: "DatasetVersion", n: int = 16, accepted_only: bool = True) -> dict[str, Any]:
    """The first `n` (accepted) samples of a version as report inputs: images in [0, 1], masks, anatomy,
    captions from the manifest's prompts."""
    indices = version.select(accepted_only=accepted_only)[:n]
    prompts = version.manifest.column("prompt").to_pylist()
    order = [list(version.pathology_channels).index(label) for label in PATHOLOGIES]
    return {
        "images": stored_to_unit(np.asarray(version.images.oindex[indices])),
        "pathology": np.asarray(version.masks.oindex[indices])[:, order],
        "anatomy": np.asarray(version.anatomy.oindex[indices]),
        "captions": [str(prompts[i] or "") for i in indices],
        "summary": version.summary(),
    }


# --- frequencies, acceptance, gates, metrics -----------------------------------------------------


def _frequency_records(frequencies: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """{label: {"target", "produced"}} or the prompt gate's list of {"label", "target", "produced"}."""
    if isinstance(frequencies, Mapping):
        return [{"label": label, **dict(values)} for label, values in frequencies.items()]
    return [dict(row) for row in frequencies]


def frequency_section(frequencies: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    records = _frequency_records(frequencies)
    parts = ["<h2 id=\"frequencies\">Finding frequencies (accepted samples)</h2>"]
    empty = [r["label"] for r in records if r.get("target") and not r.get("accepted", r.get("produced"))]
    if empty:
        parts.append(f"<p class=\"bad\">No accepted sample holds: {html.escape(', '.join(empty))}.</p>")
    parts.append(table_html(
        ["finding", "target", "accepted share", "difference", "accepted samples", "prompted samples", "coverage"],
        ([r["label"], r.get("target"), r.get("produced"),
          None if r.get("target") is None or r.get("produced") is None else r["produced"] - r["target"],
          r.get("accepted"), r.get("prompted"), r.get("coverage")] for r in records),
        "Share of the accepted samples holding each finding against the prompt sampler's target; coverage = accepted "
        "share / target (the build fails below build.quality.min_class_coverage). Prompted samples count every sample "
        "whose final prompt holds the finding, rejected ones too.",
        "frequency-table",
    ))
    figure = _new_figure(7, 3)
    ax = figure.subplots()
    x = np.arange(len(records))
    ax.bar(x - 0.2, [r.get("target") or 0 for r in records], 0.4, label="target", color="#999")
    ax.bar(x + 0.2, [r.get("produced") or 0 for r in records], 0.4, label="produced", color="#4c72b0")
    ax.set_xticks(x, [r["label"] for r in records], rotation=30, ha="right")
    ax.set_ylabel("share of samples")
    ax.legend()
    parts.append(figure_html(figure_png(figure), "Finding frequencies, target (grey) vs share of the accepted samples (blue).", "finding frequencies"))
    return "".join(parts)


def acceptance_section(acceptance: Mapping[str, Any]) -> str:
    """Acceptance by expert and by finding: any dict of dicts per heading, e.g.
    {"per_expert": {name: {"accepted", "rejected", "rate"}}, "per_finding": {label: {...}}, "overall": 0.7}."""
    parts = ["<h2 id=\"acceptance\">Acceptance by the expert filter</h2>"]
    scalars = {k: v for k, v in acceptance.items() if not isinstance(v, (Mapping, list))}
    if scalars:
        parts.append(table_html(["", "value"], scalars.items(), None, "acceptance-summary"))
    for key, value in acceptance.items():
        if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
            name = key.replace("_", " ")
            parts.append(f"<h3>{html.escape(name)}</h3>")
            parts.append(nested_table_html(value, key.removeprefix("per_"), f"Acceptance {name}.", f"acceptance-{key}"))
        elif isinstance(value, Mapping) and value:  # a flat mapping: per expert share, samples per number of tries
            head, caption = _ACCEPTANCE_TABLES.get(key, (["", "value"], None))
            parts.append(f"<h3>{html.escape(key.replace('_', ' '))}</h3>")
            parts.append(table_html(head, ([str(k), v] for k, v in value.items()), caption, f"acceptance-{key}", text_columns=1))
    return "".join(parts)


_ACCEPTANCE_TABLES = {
    "per_expert": (["expert", "share of samples it accepts"], "Each expert's verdict on the final try of every sample "
                   "(a sample is accepted when every expert accepts it)."),
    "tries": (["tries", "samples"], "Samples by the number of tries they took (new seeds, then redrawn prompts); the "
              "last count holds the samples still rejected after every try."),
}


def gates_section(gates: Sequence[Mapping[str, Any]]) -> str:
    """Data-quality gates: [{"gate", "success", "failures": [...]}, ...] (GateResult.to_json() fits)."""
    rows = []
    for gate in gates:
        status = "<span class=\"ok\">passed</span>" if gate.get("success") else "<span class=\"bad\">FAILED</span>"
        failures = "<br>".join(html.escape(str(f)) for f in gate.get("failures") or []) or "<span class=\"muted\">none</span>"
        rows.append(f"<tr class=\"gate\"><td class=\"text\">{html.escape(str(gate.get('gate')))}</td><td class=\"text\">{status}</td>"
                    f"<td class=\"text\">{failures}</td></tr>")
    return ("<h2 id=\"gates\">Data-quality gates</h2><table id=\"gates-table\"><tr><th class=\"text\">gate</th>"
            "<th class=\"text\">outcome</th><th class=\"text\">failing expectations</th></tr>" + "".join(rows) + "</table>")


_METRIC_TEXT = {
    "frechet": "Fréchet distance between Gaussian fits of real and synthetic features (FXD on torchxrayvision "
               "DenseNet features; lower is closer).",
    "fid": "Fréchet Inception Distance (torchvision Inception-v3, only with local weights).",
    "prdc": "Precision / density (fidelity) and recall / coverage (diversity) on k-NN balls (Naeem et al. 2020).",
    "diversity": "Mean MS-SSIM between samples of the same prompt (all pairs); lower = more diverse.",
    "c2st": "Classifier two-sample test: held-out accuracy of a small CNN trained to tell synthetic from held-out real "
            "images (0.5 = indistinguishable, 1.0 = every synthetic image gives itself away).",
}


def metrics_section(metrics: Mapping[str, Any]) -> str:
    """The quality metrics (`aurad_models.metrics.quality_metrics`): scalar metrics in one table, per-finding
    ones (mask-anatomy consistency, expert agreement) in their own tables; skipped ones with the reason."""
    parts = ["<h2 id=\"metrics\">Quality metrics</h2>"]
    rows = []
    for key in ("c2st", "frechet", "fid", "prdc", "diversity"):
        entry = metrics.get(key)
        if not isinstance(entry, Mapping):
            continue
        if entry.get("skipped"):
            rows.append([key, "skipped", entry["skipped"]])
            continue
        values = {k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        detail = ", ".join(f"{k}={fmt(v)}" for k, v in values.items())
        extra = "; ".join(str(entry[k]) for k in ("metric", "extractor", "note") if entry.get(k))
        rows.append([key, detail, f"{_METRIC_TEXT.get(key, '')} {extra}".strip()])
    if rows:
        parts.append(table_html(["metric", "values", "what it measures"], rows, None, "metrics-table", text_columns=3))
    for key, title, caption in (
        ("mask_anatomy", "Mask–anatomy consistency", "Share of each finding's mask pixels inside the anatomy allowed for it; "
         "'share usable' = masks with at least 90% inside. 1.000 by construction when the build clips masks to their "
         "region (build.mask_sampling.restrict_to_region, the default): bench/quality.py measures the raw masks."),
        ("expert_agreement", "Expert agreement", "How often the classifier detects a prompted finding, and fires on an absent one."),
    ):
        entry = metrics.get(key)
        if not isinstance(entry, Mapping):
            continue
        parts.append(f"<h3 id=\"metrics-{key}\">{title}</h3>")
        if entry.get("skipped"):
            parts.append(f"<p class=\"muted\">skipped: {html.escape(str(entry['skipped']))}</p>")
        else:
            parts.append(nested_table_html(entry, "finding", caption, f"metrics-{key}"))
    return "".join(parts)


# --- downstream ----------------------------------------------------------------------------------


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def headline_lines(evaluation: Mapping[str, Any]) -> list[str]:
    """The result in a few sentences: per real fraction, the gain from the synthetic data with its paired
    test, the oracle's gain and the share of it reached, the pre-train/fine-tune gain; the fidelity."""
    metric = METRIC_NAMES.get(evaluation["metric"], evaluation["metric"])
    lines = []
    sizes = {r["real_fraction"]: r.get("n_real") for r in evaluation.get("regimes", []) if r["train_set"] == "real"}
    for g in evaluation.get("gains", []):
        if g.get("gain") is None:
            continue
        verdict = "significant" if g.get("significant") else "NOT significant (within the paired noise)"
        line = (f"{_pct(g['real_fraction'])} real ({sizes.get(g['real_fraction'], '?')} images): {metric} {fmt(g['real'])} -> "
                f"{fmt(g['real+synthetic'])} with synthetic, gain {g['gain']:+.3f} ± {fmt(g.get('se'))} "
                f"(p = {fmt(g.get('p_value'))}, {g.get('seeds')} seeds, {verdict})")
        if g.get("oracle_gain") is not None:
            share = g.get("oracle_share")
            line += f"; oracle gain {g['oracle_gain']:+.3f}" + (f", synthetic reaches {share:.0%} of it" if share is not None else "")
        if g.get("pretrain_gain") is not None:
            line += f"; pre-train on synthetic then fine-tune: {g['pretrain_gain']:+.3f}" + ("" if g.get("pretrain_significant") else " (n.s.)")
        lines.append(line)
    fidelity = evaluation.get("fidelity")
    if fidelity:
        syn, real = fidelity["synthetic"], fidelity["real_test"]
        lines.append(
            f"Fidelity: a segmenter trained on real data re-finds the synthetic masks with pooled Dice {fmt(syn['pooled_dice'])} "
            f"against {fmt(real['pooled_dice'])} on real test images (ratio {fmt(fidelity.get('ratio'))}); masks re-found with "
            f"Dice >= {evaluation.get('config', {}).get('useful_dice', 0.5)}: {fmt(syn.get('useful_share'))} of synthetic samples "
            f"with findings, {fmt(real.get('useful_share'))} of real ones")
    labels = labels_line(evaluation)
    if labels:
        lines.append(labels)
    return lines


def labels_line(evaluation: Mapping[str, Any]) -> str | None:
    """Whether the result is a scarce-data result or a distillation bound, from the labels every model saw."""
    seen = evaluation.get("labels_seen") or {}
    if not seen:
        return None
    scarce = min((r.get("n_real") or 0 for r in evaluation.get("regimes", []) if r["train_set"] == "real"), default=0)
    most = max(((info.get("labelled") or info.get("n") or 0), name) for name, info in seen.items())
    if most[0] > scarce:
        return (f"Labels: the {most[1].replace('_', ' ')} learnt from {most[0]} labelled real images, the scarcest downstream "
                f"model from {scarce}: this is a distillation bound, not a scarce-label result")
    return f"Labels: no model behind the synthetic data saw more than the {scarce} labelled images of the scarcest regime"


def metrics_headline(metrics: Mapping[str, Any] | None) -> list[str]:
    """Realism at a glance: the two-sample test and the Fréchet distance."""
    if not metrics:
        return []
    lines = []
    c2st = metrics.get("c2st") or {}
    if c2st.get("accuracy") is not None:
        lines.append(f"Realism: a small CNN tells accepted synthetic images from held-out real ones at {c2st['accuracy']:.2f} "
                     f"accuracy (95% [{c2st['ci95'][0]:.2f}, {c2st['ci95'][1]:.2f}], 0.5 = indistinguishable)")
    frechet = metrics.get("frechet") or {}
    if frechet.get("value") is not None:
        lines.append(f"{frechet.get('metric', 'FD')} to held-out real images: {frechet['value']:.2f} ({frechet.get('extractor', '')})")
    return lines


def headline_section(evaluation: Mapping[str, Any]) -> str:
    lines = headline_lines(evaluation)
    if not lines:
        return ""
    items = "".join(f"<li class=\"{'ok' if 'NOT' not in line else 'bad'}\">{html.escape(line)}</li>" for line in lines)
    return f"<div id=\"headline-{html.escape(evaluation['task'])}\"><h3>At a glance</h3><ul>{items}</ul></div>"


def downstream_table(evaluation: Mapping[str, Any]) -> str:
    """One row per regime: train set, real fraction, sizes, mean ± std over seeds, steps, per-class means."""
    task, metric = evaluation["task"], evaluation["metric"]
    classes = list(evaluation.get("classes", PATHOLOGIES))
    pooled = any("pooled_mean" in row for row in evaluation["regimes"])
    header = ["train set", "real", "real images", "added images", METRIC_NAMES.get(metric, metric), "± std", "seeds",
              *(["pooled", "± std"] if pooled else []), "best step (median)", *classes]
    rows = []
    for row in evaluation["regimes"]:
        per_class = row.get("per_class", {})
        best = row.get("best_steps") or []
        rows.append([row["train_set"], _pct(row["real_fraction"]), row.get("n_real"), row.get("n_added", row.get("n_synthetic")),
                     row.get("mean"), row.get("std"), row.get("seeds"), *([row.get("pooled_mean"), row.get("pooled_std")] if pooled else []),
                     int(np.median(best)) if best else None, *(per_class.get(c) for c in classes)])
    caption = (f"{task}: {METRIC_NAMES.get(metric, metric)} on the held-out real test split "
               f"({evaluation.get('test', {}).get('n', '?')} images), mean and standard deviation over seeds; each model's "
               f"checkpoint chosen on the real validation split ({evaluation.get('val', {}).get('n', 0)} images). "
               "'added images': synthetic (real+synthetic, synthetic, synthetic->real) or real stand-ins (real+oracle)."
               + (" Dice is per image, images where a class is absent and not predicted left out, then averaged over "
                  "classes; 'pooled' is Dice over all test pixels at once per class, then averaged." if metric == "dice" else ""))
    return table_html(header, rows, caption, f"downstream-{task}", "regime", text_columns=2)


def comparisons_table(evaluation: Mapping[str, Any]) -> str:
    rows = [[_pct(c["real_fraction"]), c["train_set"], c.get("gain"), c.get("se"),
             f"[{fmt(c['ci95'][0])}, {fmt(c['ci95'][1])}]" if c.get("ci95") else None, c.get("p_value"), c.get("significant"),
             c.get("seeds")] for c in evaluation.get("comparisons", [])]
    if not rows:
        return "<p class=\"muted\">No comparison to real-only training (no synthetic data given).</p>"
    return table_html(
        ["real data", "train set", "gain over real only", "± se", "95% interval", "p", "significant", "seeds"], rows,
        f"Paired differences to the real-only model of the same seed (same real subset and initial weights); "
        f"{evaluation.get('test_method', 'paired t-test')}.",
        f"comparisons-{evaluation['task']}", "gain", text_columns=2)


def gains_table(evaluation: Mapping[str, Any]) -> str:
    rows = [[_pct(g["real_fraction"]), g.get("real"), g.get("real+synthetic"), g.get("gain"), g.get("significant"),
             g.get("oracle_gain"), g.get("oracle_share")] for g in evaluation.get("gains", [])]
    if not rows:
        return ""
    return table_html(
        ["real data", "real only", "real + synthetic", "gain", "significant", "oracle gain", "share of oracle gain"], rows,
        "The share of the oracle's gain (real samples used in place of the synthetic ones, same count and class mix) "
        "that the synthetic data reaches: how good the generators are, whatever the downstream model.",
        f"gains-{evaluation['task']}", "gain")


def fidelity_table(evaluation: Mapping[str, Any]) -> str:
    fidelity = evaluation.get("fidelity")
    if not fidelity:
        return ""
    classes = list(evaluation.get("classes", PATHOLOGIES))
    rows = [[name, part.get("pooled_dice"), part.get("useful_share"), part.get("samples_with_findings"),
             *(part.get("pooled_per_class", {}).get(c) for c in classes)]
            for name, part in (("synthetic (accepted)", fidelity["synthetic"]), ("real test", fidelity["real_test"]))]
    return table_html(["images", "pooled Dice", "share re-found", "with findings", *classes], rows,
                      f"Fidelity: {fidelity.get('segmenter', 'a real-trained segmenter')} re-segments each set; Dice against the "
                      f"set's own masks. Ratio synthetic / real: {fmt(fidelity.get('ratio'))}.", f"fidelity-{evaluation['task']}", "fidelity")


def labels_seen_table(evaluation: Mapping[str, Any]) -> str:
    seen = evaluation.get("labels_seen") or {}
    if not seen:
        return ""
    rows = [[name, info.get("model"), info.get("dataset"), info.get("version"), info.get("split") or info.get("train_split"),
             info.get("n"), info.get("labelled_subset") or "the whole split"] for name, info in seen.items()]
    sizes = sorted({r.get("n_real") for r in evaluation.get("regimes", []) if r["train_set"] == "real"})
    return table_html(["model", "id", "dataset", "version", "split", "images", "labelled images"], rows,
                      f"Labels every model behind the synthetic data saw. The scarce downstream regimes see {sizes} labelled "
                      "real images: where a generator or expert saw more, the gain is a distillation bound, not a scarce-data "
                      "result.", f"labels-seen-{evaluation['task']}", "model", text_columns=7)


def downstream_plot(evaluation: Mapping[str, Any]) -> bytes:
    """Metric vs amount of real data, one line per train set; synthetic-only and full-real as horizontal bands."""
    metric = METRIC_NAMES.get(evaluation["metric"], evaluation["metric"])
    figure = _new_figure(6.5, 3.6)
    ax = figure.subplots()
    fractions = sorted({r["real_fraction"] for r in evaluation["regimes"] if r["train_set"] not in ("synthetic", "full-real")})
    for train_set in ("real", "real+synthetic", "real+oracle", "synthetic->real"):
        rows = sorted((r for r in evaluation["regimes"] if r["train_set"] == train_set and r.get("mean") is not None),
                      key=lambda r: r["real_fraction"])
        if rows:
            style = TRAIN_SET_STYLE[train_set]
            ax.errorbar([100 * r["real_fraction"] for r in rows], [r["mean"] for r in rows], yerr=[r.get("std") or 0 for r in rows],
                        color=style["color"], marker=style["marker"], capsize=3, label=style["label"])
    for row in evaluation["regimes"]:
        if row["train_set"] in ("synthetic", "full-real") and row.get("mean") is not None:
            style = TRAIN_SET_STYLE[row["train_set"]]
            ax.axhline(row["mean"], color=style["color"], linestyle="--", label=style["label"])
            ax.axhspan(row["mean"] - (row.get("std") or 0), row["mean"] + (row.get("std") or 0), color=style["color"], alpha=0.15)
    if fractions and max(fractions) / max(min(fractions), 1e-9) >= 4:
        ax.set_xscale("log")
    ax.set_xticks([100 * f for f in fractions], [_pct(f) for f in fractions])
    ax.set_xlabel("real training data used (share of the real training split)")
    ax.set_ylabel(f"{metric} on real test split")
    ax.set_title(f"{evaluation['task']}: {metric} vs amount of real data")
    ax.legend(fontsize=7)
    return figure_png(figure)


def per_class_plot(evaluation: Mapping[str, Any]) -> bytes:
    """Per-class metric at the scarcest real fraction, one bar per train set."""
    classes = list(evaluation.get("classes", PATHOLOGIES))
    real_rows = [r for r in evaluation["regimes"] if r["train_set"] not in ("synthetic", "full-real")]
    scarcest = min((r["real_fraction"] for r in real_rows), default=None)
    chosen = [r for r in evaluation["regimes"] if r["real_fraction"] == scarcest or r["train_set"] in ("synthetic", "full-real")]
    figure = _new_figure(7.5, 3)
    ax = figure.subplots()
    width = 0.8 / max(len(chosen), 1)
    x = np.arange(len(classes))
    for k, row in enumerate(chosen):
        values = [row["per_class"].get(c) for c in classes]
        ax.bar(x + (k - (len(chosen) - 1) / 2) * width, [np.nan if v is None else v for v in values], width,
               color=TRAIN_SET_STYLE[row["train_set"]]["color"], label=TRAIN_SET_STYLE[row["train_set"]]["label"])
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel(METRIC_NAMES.get(evaluation["metric"], evaluation["metric"]))
    ax.set_title(f"per class, {_pct(scarcest or 0)} real data")
    ax.legend(fontsize=7)
    return figure_png(figure)


def downstream_section(evaluation: Mapping[str, Any]) -> str:
    """The headline, tables and plots of one task's `evaluation.json` document."""
    task, metric = evaluation["task"], METRIC_NAMES.get(evaluation["metric"], evaluation["metric"])
    parts = [f"<h2 id=\"downstream-{html.escape(task)}-section\">Downstream {html.escape(task)} ({metric})</h2>"]
    config = evaluation.get("config", {})
    parts.append(
        f"<p>Models trained from scratch on a share of the real training split "
        f"({evaluation.get('real_train', {}).get('n', '?')} images in all) alone, with the "
        f"{(evaluation.get('synthetic') or {}).get('n', 0)} accepted synthetic samples added, with as many real samples "
        f"of the same class mix added instead (the oracle), or pre-trained on the synthetic samples and fine-tuned on the "
        f"real ones; {config.get('seeds', '?')} paired seeds each. Wall time {fmt(evaluation.get('seconds'), 1)} s.</p>"
    )
    parts.append(headline_section(evaluation))
    parts.append(gains_table(evaluation))
    parts.append(comparisons_table(evaluation))
    parts.append(downstream_table(evaluation))
    parts.append(fidelity_table(evaluation))
    parts.append(labels_seen_table(evaluation))
    parts.append(figure_html(downstream_plot(evaluation), f"{metric} on the real test split vs the share of real training data "
                             "(error bars: std over seeds; dashed: synthetic only and the full-real ceiling).", f"{task} {metric} vs real data"))
    parts.append(figure_html(per_class_plot(evaluation), f"Per-class {metric} at the scarcest real fraction.", f"{task} per class"))
    return "".join(parts)


# --- the pages -----------------------------------------------------------------------------------


def render_version_report(
    *,
    title: str,
    version: "DatasetVersion | None" = None,
    n_samples: int = 16,
    images: np.ndarray | None = None,
    pathology: np.ndarray | None = None,
    anatomy: np.ndarray | None = None,
    captions: Sequence[str] | None = None,
    summary: Mapping[str, Any] | None = None,
    frequencies: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    acceptance: Mapping[str, Any] | None = None,
    gates: Sequence[Mapping[str, Any]] | None = None,
    metrics: Mapping[str, Any] | None = None,
    evaluations: Sequence[Mapping[str, Any]] = (),
    finding_samples: Mapping[str, Mapping[str, Any]] | None = None,
    cooccurrence: Mapping[str, Any] | None = None,
) -> str:
    """The page of one dataset version: samples with masks, finding frequencies, acceptance, data-quality
    gates, quality metrics and (if given) downstream results. Sections without input are left out.

    Samples: `images` (N, H, W) in [0, 1] with `pathology` (N, 7, H, W) / `anatomy` (N, 14, H, W), or a
    DatasetVersion `version` whose first `n_samples` accepted samples are shown (`version_samples`).
    `summary` is `DatasetVersion.summary()` (the default with a version) or any flat dict.
    """
    if version is not None and images is None:
        found = version_samples(version, n_samples)
        images, pathology, anatomy, captions = found["images"], found["pathology"], found["anatomy"], found["captions"]
        summary = summary if summary is not None else found["summary"]
    body = []
    if summary:
        flat = {k: v for k, v in summary.items() if not isinstance(v, (Mapping, list))}
        body.append("<h2 id=\"summary\">Summary</h2>" + table_html(["", "value"], flat.items(), None, "summary-table", text_columns=2))
    if images is not None and len(images):
        body.append(sample_grid_section(images, pathology, anatomy, captions, finding_samples=finding_samples))
    if frequencies:
        body.append(frequency_section(frequencies))
    if cooccurrence:  # `tasks.priors.compare_cooccurrence` of the accepted samples against the prompt prior
        from tasks.priors import cooccurrence_section
        body.append(cooccurrence_section(cooccurrence))
    if acceptance:
        body.append(acceptance_section(acceptance))
    if gates:
        body.append(gates_section(gates))
    if metrics:
        body.append(metrics_section(metrics))
    for evaluation in evaluations:
        body.append(downstream_section(evaluation))
    return _page(title, body)


def render_evaluation_report(
    evaluation: Mapping[str, Any],
    detection: Mapping[str, Any] | None = None,
    title: str | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> str:
    """The page of one evaluation run: the downstream table, gains and plots per task, and the quality
    metrics if given. `evaluation` / `detection` are the `evaluation.json` / `evaluation_detection.json`
    documents written by the evaluate flow."""
    sources = evaluation.get("sources", {})
    names = ", ".join(f"{k} {sources[k]}" for k in ("real", "synthetic") if isinstance(sources.get(k), str))
    title = title or f"AURAD downstream evaluation{' – ' + names if names else ''}"
    body = [
        "<p>Does adding the synthetic data help models trained on scarce real data? Every model is scored on "
        "real images it never saw (the held-out test split of the real dataset).</p>"
    ]
    if sources:
        body.append(table_html(["", "value"], ([k, v if not isinstance(v, Mapping) else ", ".join(f"{a}={b}" for a, b in v.items())]
                                                for k, v in sources.items()), "Data used.", "sources-table", text_columns=2))
    realism = metrics_headline(metrics)
    if realism:
        body.append("<ul id=\"realism\">" + "".join(f"<li>{html.escape(line)}</li>" for line in realism) + "</ul>")
    body.append(downstream_section(evaluation))
    if detection is not None:
        body.append(downstream_section(detection))
    if metrics:
        body.append(metrics_section(metrics))
    if metrics and metrics.get("cooccurrence"):  # the build's pairwise lift against its prompt prior (tasks.priors)
        from tasks.priors import cooccurrence_section

        body.append(cooccurrence_section(metrics["cooccurrence"]))
    if metrics and metrics.get("locations"):  # where the findings lie, against real annotations (tasks.grounding)
        from tasks.grounding import location_section

        body.append(location_section(metrics["locations"]))
    return _page(title, body)
