"""Real co-occurrence priors for the prompt sampler, and how well a set of samples keeps a prior's co-occurrence.

`load_prior(spec, source_findings)` is the prior `PromptSamplerConfig.prior` names:

* `source`: estimated from the source dataset's findings (`tasks.prompts.estimate_prior`);
* `nih`, `chexpert`, `padchest`: learnt from the label table that torchxrayvision ships in its wheel
  (`<torchxrayvision>/data/`, found at run time; no row of it is copied into this repository);
* a path: a JSON `FindingPrior`, or a label CSV in the NIH, CheXpert or PadChest layout (told apart by its
  columns), e.g. the full tables of a downloaded release.

Each table's labels are mapped onto PATHOLOGIES through its relabel table (`storage.sources.nih.NIH_RELABEL`,
`storage.sources.label_tables`); a class outside our vocabulary is dropped from the combination (never turned
into another class), so an image with only such classes counts as a normal combination. Per table:

* NIH (`Data_Entry_2017_v2020.csv.gz`, 112,120 images, every one frontal): "Finding Labels" split on "|";
  "No Finding" is a normal image. One combination per image.
* CheXpert (`chexpert_train.csv.gz`): **frontal images only** (our generator draws frontal films, and a
  study's labels repeat on its lateral image, which would count those studies twice). 1.0 is positive; **-1.0
  (uncertain) counts as not positive (U-Zeros)**, as blank (unmentioned) and 0.0 do: the same rule as
  `findings_from_report`, where only findings a radiologist commits to become prompts. CheXpert has no nodule
  or mass class ("Lung Lesion" is either), so its prior never shows them; a frequency target for one adds it
  as a finding on its own (`tasks.prompts`).
* PadChest (`PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz`): frontal projections only (PA, AP,
  AP supine); rows without labels and rows marked "exclude" are dropped; labels from physicians and from the
  report-reading network both count. Side and zone come from the "loc ..." entries that follow the finding's
  name in its report sentence (`PADCHEST_LOCATIONS`; left and right: bilateral; two zones: none); size is
  never given.

Attributes: NIH and CheXpert give none, so their priors carry no attributes and the sampler draws each
label's (side, zone, size) uniformly from the valid ones (`tasks.prompts.uniform_attributes`). PadChest's
attributes keep None where the report did not say (an unspecified attribute in the prompt).

A parsed table is cached in-process (`functools.lru_cache`, keyed by the file's path, size and mtime): the
first parse takes a few seconds of pandas.

Co-occurrence: `cooccurrence_lift` tabulates each pair's lift P(a, b) / (P(a) P(b)) among samples (a label
counts once per sample), `prior_lift` the same for a prior's joint, and `compare_cooccurrence` sets samples
against a prior: per pair the two lifts and one summary, the **mean absolute log-lift difference** over the
pairs with support (the prior expects at least `min_expected` co-occurrences among the samples). Observed
counts get half a count added before the log, so a supported pair never seen together scores finitely.
Sampling noise alone gives a pair about 0.8 / sqrt(expected count) (6,000 draws from the NIH prior: 0.13-0.16
over its 17 supported pairs; 20,000: 0.06-0.08; labels drawn independently with NIH's marginals: 0.56).
Frequency targets move lifts on purpose (oversampling a rare label changes P(a)); they keep odds ratios,
which the comparison also reports (`mean_abs_log_odds_ratio_diff`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import html
import importlib.util
import logging
import math
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from aurad_models.findings import Finding
from aurad_models.vocabulary import LATERAL_FINDINGS, PATHOLOGIES, ZONED_FINDINGS
from storage.sources.label_tables import (
    CHEXPERT_COLUMNS,
    CHEXPERT_RELABEL,
    PADCHEST_ALSO,
    PADCHEST_EXCLUDE,
    PADCHEST_FRONTAL,
    PADCHEST_LOCATIONS,
    PADCHEST_RELABEL,
)
from storage.sources.nih import NIH_RELABEL
from tasks.prompts import (
    PRIOR_NAMES,
    AttributeChoice,
    Combination,
    FindingPrior,
    PromptSamplerError,
    estimate_prior,
)

logger = logging.getLogger(__name__)

REAL_TABLES: dict[str, str] = {
    "nih": "Data_Entry_2017_v2020.csv.gz",
    "chexpert": "chexpert_train.csv.gz",
    "padchest": "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
}


# --- where the tables are ------------------------------------------------------------------------


def xrv_data_dir() -> Path:
    """torchxrayvision's `data/` folder, found without importing it (its import loads torch and more)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        raise PromptSamplerError("the real label priors (nih, chexpert, padchest) read torchxrayvision's shipped tables, "
                                 "but torchxrayvision is not installed")
    return Path(spec.origin).parent / "data"


def prior_file(spec: str) -> Path | None:
    """The file a prior spec reads (None for `source`); a missing file is an error saying where it looked."""
    if spec == "source":
        return None
    path = xrv_data_dir() / REAL_TABLES[spec] if spec in REAL_TABLES else Path(spec).expanduser()
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise PromptSamplerError(f"prior file not found: looked at {path.resolve()}{where}; a prior is one of "
                                 f"{', '.join(PRIOR_NAMES)} or a path to a JSON prior or label CSV")
    return path


def prior_fingerprint(spec: str) -> str | None:
    """sha256 of the file a prior spec reads (None for `source`): part of a build's identity."""
    path = prior_file(spec)
    if path is None:
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_prior(spec: str, source_findings: Callable[[], Iterable[Sequence[Any]]]) -> FindingPrior:
    """The prior `spec` names (see the module doc); `source_findings` gives the source dataset's per-sample
    findings and is only called for `source`."""
    if spec == "source":
        return estimate_prior(source_findings())
    path = prior_file(spec)
    stat = path.stat()
    return _parsed_prior(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def real_prior(name: str) -> FindingPrior:
    """The prior learnt from one of torchxrayvision's shipped tables: `nih`, `chexpert` or `padchest`."""
    if name not in REAL_TABLES:
        raise PromptSamplerError(f"unknown real prior {name!r}; known: {', '.join(REAL_TABLES)}")
    return load_prior(name, lambda: ())


@functools.lru_cache(maxsize=8)
def _parsed_prior(path: str, size: int, mtime_ns: int) -> FindingPrior:
    del size, mtime_ns  # in the key only: a changed file is parsed again
    if path.lower().endswith(".json"):
        return FindingPrior.model_validate_json(Path(path).read_text())
    import pandas as pd

    columns = list(pd.read_csv(path, nrows=0).columns)
    if "Finding Labels" in columns:
        return nih_prior(path)
    if "Labels" in columns and "Projection" in columns:
        return padchest_prior(path)
    if "Frontal/Lateral" in columns and any(c in columns for c in CHEXPERT_RELABEL.mapped):
        return chexpert_prior(path)
    raise PromptSamplerError(f"label CSV {path} is in no known layout: expected NIH's 'Finding Labels', PadChest's "
                             f"'Labels' + 'Projection', or CheXpert's 'Frontal/Lateral' + observation columns; found "
                             f"{', '.join(columns[:20])}")


# --- the three tables ----------------------------------------------------------------------------


def _combination(labels: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(labels), key=PATHOLOGIES.index))


def _prior(combos: Mapping[tuple[str, ...], float], attributes: Mapping[str, Counter] | None = None) -> FindingPrior:
    n = int(round(sum(combos.values())))
    if n == 0:
        raise PromptSamplerError("the label table has no usable row")
    return FindingPrior(
        n_samples=n,
        combinations=tuple(Combination(labels=k, weight=float(v)) for k, v in sorted(combos.items(), key=lambda kv: (len(kv[0]), kv[0]))),
        attributes={label: tuple(AttributeChoice(side=s, zone=z, size=sz, weight=float(w))
                                 for (s, z, sz), w in sorted(counts.items(), key=str))
                    for label, counts in (attributes or {}).items() if counts},
    )


def _warn_unknown(table: str, unknown: Counter) -> None:
    if unknown:
        logger.warning("%s: class names the relabel table does not know, left out of the prior: %s", table,
                       ", ".join(f"{name!r} ({count})" for name, count in unknown.most_common(10)))


def nih_prior(path: str | Path) -> FindingPrior:
    """The NIH ChestX-ray14 prior: one combination per image from "Finding Labels" (see the module doc)."""
    import pandas as pd

    labels = pd.read_csv(path, usecols=["Finding Labels"])["Finding Labels"].fillna("No Finding")
    combos: Counter[tuple[str, ...]] = Counter()
    unknown: Counter[str] = Counter()
    for text, count in labels.value_counts().items():
        result = NIH_RELABEL.relabel(name.strip() for name in str(text).split("|"))
        combos[_combination(label for label, value in result.labels.items() if value == 1.0)] += int(count)
        unknown.update({name: int(count) for name in result.unknown})
    _warn_unknown("NIH", unknown)
    return _prior(combos)


def chexpert_prior(path: str | Path) -> FindingPrior:
    """The CheXpert prior: frontal images, 1.0 positive, -1.0 / 0.0 / blank not (U-Zeros; see the module doc)."""
    import pandas as pd

    header = list(pd.read_csv(path, nrows=0).columns)
    observations = [c for c in header if c in CHEXPERT_COLUMNS or CHEXPERT_RELABEL.lookup(c)]
    unknown = [c for c in header[header.index("AP/PA") + 1:] if c not in observations] if "AP/PA" in header else []
    _warn_unknown("CheXpert", Counter(unknown))
    table = pd.read_csv(path, usecols=["Frontal/Lateral", *observations])
    table = table[table["Frontal/Lateral"] == "Frontal"]
    mapped = {column: CHEXPERT_RELABEL.lookup(column) for column in observations if CHEXPERT_RELABEL.lookup(column)}
    positive = (table[list(mapped)] == 1.0)
    positive.columns = [mapped[c] for c in positive.columns]
    positive = positive.T.groupby(level=0).any().T  # two columns of one label: either
    combos: Counter[tuple[str, ...]] = Counter()
    for row, count in positive.value_counts(sort=False).items():
        row = row if isinstance(row, tuple) else (row,)
        combos[_combination(label for label, on in zip(positive.columns, row) if on)] += int(count)
    return _prior(combos)


def _padchest_list(text: str) -> list[Any]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return value if isinstance(value, list) else []


def padchest_prior(path: str | Path) -> FindingPrior:
    """The PadChest prior: frontal images, mapped labels, side / zone from the sentence locations (module doc)."""
    import pandas as pd

    table = pd.read_csv(path, usecols=["Projection", "Labels", "LabelsLocalizationsBySentence"], dtype=str)
    table = table[table["Projection"].isin(PADCHEST_FRONTAL) & table["Labels"].notna()]
    combos: Counter[tuple[str, ...]] = Counter()
    attributes: dict[str, Counter] = {label: Counter() for label in PATHOLOGIES}
    unknown: Counter[str] = Counter()
    grouped = table.fillna({"LabelsLocalizationsBySentence": "[]"}).value_counts(["Labels", "LabelsLocalizationsBySentence"], sort=False)
    for (labels_text, sentences_text), count in grouped.items():
        names = [str(n).strip() for n in _padchest_list(labels_text)]
        if PADCHEST_EXCLUDE in names:
            continue
        result = PADCHEST_RELABEL.relabel(names, [also for n in names for also in PADCHEST_ALSO.get(n.casefold(), ())])
        unknown.update({name: int(count) for name in result.unknown})
        present = _combination(label for label, value in result.labels.items() if value == 1.0)
        combos[present] += int(count)
        places = _padchest_places(_padchest_list(sentences_text))
        for label in present:
            sides, zones = places.get(label, (set(), set()))
            side = ("bilateral" if "bilateral" in sides or len(sides) > 1 else next(iter(sides))) if sides else None
            zone = next(iter(zones)) if len(zones) == 1 else None
            attributes[label][(side if label in LATERAL_FINDINGS else None, zone if label in ZONED_FINDINGS else None, None)] += int(count)
    _warn_unknown("PadChest", unknown)
    return _prior(combos, attributes)


def _padchest_places(sentences: list[Any]) -> dict[str, tuple[set[str], set[str]]]:
    """Our label -> (sides, zones) its "loc ..." entries give. Within a sentence, a run of finding names is
    followed by the locations of that run; the rows labelled by the network hold one flat list instead of one
    list per sentence, read the same way (so a location never reaches a finding of another run)."""
    places: dict[str, tuple[set[str], set[str]]] = {}
    if sentences and not any(isinstance(s, list) for s in sentences):
        sentences = [sentences]
    for sentence in sentences:
        if not isinstance(sentence, list):
            continue
        runs: list[tuple[list[str], list[str]]] = []
        for word in (str(w).strip() for w in sentence):
            if word.startswith("loc "):
                if runs:
                    runs[-1][1].append(word)
            elif not runs or runs[-1][1]:
                runs.append(([word], []))
            else:
                runs[-1][0].append(word)
        for names, locs in runs:
            located = [PADCHEST_LOCATIONS[w] for w in locs if w in PADCHEST_LOCATIONS]
            labels = {PADCHEST_RELABEL.lookup(w) for w in names} | {a for w in names for a in PADCHEST_ALSO.get(w.casefold(), ())}
            for label in labels - {None}:
                sides, zones = places.setdefault(label, (set(), set()))
                sides.update(side for side, _ in located if side)
                zones.update(zone for _, zone in located if zone)
    return places


# --- co-occurrence -------------------------------------------------------------------------------


def _label_set(sample: Any) -> frozenset[str]:
    if sample is None:
        return frozenset()
    return frozenset(f.label if isinstance(f, Finding) else (f if isinstance(f, str) else f["label"]) for f in sample)


def _lift_rows(weights: Mapping[frozenset[str], float], n: float) -> list[dict[str, Any]]:
    total = sum(weights.values())
    single = {label: sum(w for s, w in weights.items() if label in s) for label in PATHOLOGIES}
    rows = []
    for a, b in combinations(PATHOLOGIES, 2):
        both = sum(w for s, w in weights.items() if a in s and b in s)
        p_a, p_b, p_ab = single[a] / total, single[b] / total, both / total
        rows.append({"a": a, "b": b, "p_a": p_a, "p_b": p_b, "p_ab": p_ab, "count_ab": p_ab * n,
                     "lift": p_ab / (p_a * p_b) if p_a > 0 and p_b > 0 else None})
    return rows


def cooccurrence_lift(findings_per_sample: Iterable[Any]) -> list[dict[str, Any]]:
    """Per pair of labels (a, b) in vocabulary order: P(a), P(b), P(a, b), the count of samples with both and
    the lift P(a, b) / (P(a) P(b)) (None when a label never occurs). A sample is a sequence of Findings, of
    manifest finding records or of label names; a label counts once per sample."""
    counts: Counter[frozenset[str]] = Counter(_label_set(sample) for sample in findings_per_sample)
    n = sum(counts.values())
    if n == 0:
        raise PromptSamplerError("co-occurrence needs at least one sample")
    return _lift_rows(counts, n)


def prior_lift(prior: FindingPrior) -> list[dict[str, Any]]:
    """`cooccurrence_lift` of a prior's joint (counts scaled to its `n_samples`)."""
    weights: Counter[frozenset[str]] = Counter()
    for c in prior.combinations:
        weights[frozenset(c.labels)] += c.weight
    return _lift_rows(weights, prior.n_samples or sum(weights.values()))


def _log_odds_ratio(p_a: float, p_b: float, p_ab: float, n: float, smooth: float) -> float:
    cells = [p_ab * n + smooth, (p_a - p_ab) * n + smooth, (p_b - p_ab) * n + smooth, (1 - p_a - p_b + p_ab) * n + smooth]
    if min(cells) <= 0:
        return math.nan
    return math.log(cells[0] * cells[3] / (cells[1] * cells[2]))


def compare_cooccurrence(prior: FindingPrior, findings_per_sample: Iterable[Any], min_expected: float = 10.0) -> dict[str, Any]:
    """Samples' co-occurrence against a prior's (module doc). Returns `rows` (per pair: lift_prior,
    lift_samples, count_ab, expected_ab = samples x P_prior(a, b), supported), `pairs` (supported pairs),
    `mean_abs_log_lift_diff` and `mean_abs_log_odds_ratio_diff` over them (None without any), `n_samples`."""
    samples = list(findings_per_sample)
    observed = cooccurrence_lift(samples)
    expected = prior_lift(prior)
    n = len(samples)
    rows, lift_errors, odds_errors = [], [], []
    for seen, want in zip(observed, expected):
        count_ab = seen["p_ab"] * n
        expected_ab = want["p_ab"] * n
        prior_support = prior.n_samples == 0 or want["count_ab"] >= min_expected
        supported = bool(want["lift"] and expected_ab >= min_expected and prior_support and seen["p_a"] > 0 and seen["p_b"] > 0)
        row = {"a": seen["a"], "b": seen["b"], "lift_prior": want["lift"], "lift_samples": seen["lift"],
               "count_ab": int(round(count_ab)), "expected_ab": expected_ab, "supported": supported}
        if supported:
            smoothed = (count_ab + 0.5) * n / ((seen["p_a"] * n + 0.5) * (seen["p_b"] * n + 0.5))
            lift_errors.append(abs(math.log(smoothed) - math.log(want["lift"])))
            odds_prior = _log_odds_ratio(want["p_a"], want["p_b"], want["p_ab"], 1.0, 0.0)
            odds_seen = _log_odds_ratio(seen["p_a"], seen["p_b"], seen["p_ab"], n, 0.5)
            if math.isfinite(odds_prior) and math.isfinite(odds_seen):
                odds_errors.append(abs(odds_seen - odds_prior))
        rows.append(row)
    mean = lambda values: float(sum(values) / len(values)) if values else None  # noqa: E731
    return {"n_samples": n, "min_expected": min_expected, "pairs": len(lift_errors), "rows": rows,
            "mean_abs_log_lift_diff": mean(lift_errors), "mean_abs_log_odds_ratio_diff": mean(odds_errors)}


def cooccurrence_section(comparison: Mapping[str, Any]) -> str:
    """The build report's co-occurrence section: the supported pairs' lifts, prior against accepted samples
    (`comparison` from `compare_cooccurrence`; its optional "prior" names the prior)."""
    from tasks.report import fmt, table_html

    prior_name = comparison.get("prior") or "the prior"
    rows = [r for r in comparison["rows"] if r["supported"]]
    summary = (f"Pairwise lift P(a, b) / (P(a) P(b)) among the {comparison['n_samples']} accepted samples against "
               f"{prior_name}, over the {comparison['pairs']} pairs the prior expects at least "
               f"{comparison['min_expected']:g} times: mean |log lift difference| "
               f"{fmt(comparison['mean_abs_log_lift_diff'])}, mean |log odds-ratio difference| "
               f"{fmt(comparison['mean_abs_log_odds_ratio_diff'])} (frequency targets move lifts, not odds ratios).")
    parts = ["<h2 id=\"cooccurrence\">Co-occurrence</h2>", f"<p>{html.escape(summary)}</p>"]
    if rows:
        parts.append(table_html(["pair", "lift in prior", "lift accepted", "accepted with both", "expected"],
                                ([f"{r['a']} + {r['b']}", r["lift_prior"], r["lift_samples"], r["count_ab"], r["expected_ab"]]
                                 for r in rows), None, "cooccurrence-table"))
    return "".join(parts)
