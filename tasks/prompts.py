"""Stage 1, prompt sampling: realistic combinations of findings, with rare findings oversampled on purpose.

The prior (`FindingPrior`, JSON-serialisable) has two parts, both estimated from a source dataset's labels
(`estimate_prior`, e.g. from a manifest's `findings` column) or written in config (`prior_from_weights`):

* the **empirical joint over label combinations**: how often each multiset of labels occurs together
  (`()` = a normal study, `("cardiomegaly", "effusion")`, `("nodule", "nodule")`, ...);
* per label, the **joint of its attributes** (side, zone, size; None = unspecified in the source).

Sampling draws a combination, then attributes for each of its findings.

**Frequency targets** (`PromptSamplerConfig.label_targets`: the share of prompts that should contain a label;
`normal_fraction`: the share of normal prompts) are met by *exponential tilting* of the joint: the
combination weights are rescaled by iterative proportional fitting until every targeted marginal is met.
This is the distribution closest to the source joint (minimum KL divergence) with those marginals, so
co-occurrence survives oversampling: among the prompts containing a rare finding, its companions occur in
the same proportions as in the source (if an effusion came with cardiomegaly in 40% of the source samples
that have an effusion, it still does after effusion is oversampled). Labels without a target keep their
conditional structure but their marginal moves with the labels they co-occur with. A target for a label the
source never shows adds that label alone as a combination (with uniform attributes unless the prior has
some). Targets that cannot be met together (e.g. two labels that never co-occur, both at 0.8) raise
`PromptSamplerError`.

**Where the prior comes from** (`PromptSamplerConfig.prior`): `source` (the default) estimates it from the
source dataset's manifest; `nih`, `chexpert`, `padchest` learn it from the real label tables shipped with
torchxrayvision, and a path reads a JSON prior or a label CSV (`tasks.priors`, which also measures how well a
set of samples keeps a prior's co-occurrence: `cooccurrence_lift`, `compare_cooccurrence`).

**Prompts from real reports** (`PromptSamplerConfig.reports`): a build reads each report into findings
(`aurad_models.findings.findings_from_report`) and prompts with those; see `read_reports`, `report_slots`.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aurad_models.findings import Finding
from aurad_models.vocabulary import LATERAL_FINDINGS, PATHOLOGIES, SIDES, SIZES, ZONED_FINDINGS, ZONES

logger = logging.getLogger(__name__)

Prompt = tuple[Finding, ...]

# `PromptSamplerConfig.prior`: these names, or a path to a JSON prior / label CSV (these endings).
PRIOR_NAMES: tuple[str, ...] = ("source", "nih", "chexpert", "padchest")
PRIOR_FILE_SUFFIXES: tuple[str, ...] = (".json", ".csv", ".csv.gz")
# `PromptSamplerConfig.reports` CSV: the report text is the first of these columns present (case-insensitive);
# without one, the "findings" and "impression" columns joined (sectioned reports); else an error.
REPORT_COLUMNS: tuple[str, ...] = ("report", "report_text", "text")
REPORT_SECTION_COLUMNS: tuple[str, ...] = ("findings", "impression")


class PromptSamplerError(ValueError):
    """A prior or a set of frequency targets that cannot be sampled from."""


def _check_label(label: str) -> str:
    if label not in PATHOLOGIES:
        raise ValueError(f"unknown finding {label!r}; known findings: {', '.join(PATHOLOGIES)}")
    return label


class Combination(BaseModel):
    """A multiset of labels (sorted, in vocabulary order) and its weight in the joint."""

    model_config = ConfigDict(frozen=True)

    labels: tuple[str, ...]
    weight: float = Field(ge=0)

    @field_validator("labels")
    @classmethod
    def _sorted_known(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted((_check_label(l) for l in labels), key=PATHOLOGIES.index))


class AttributeChoice(BaseModel):
    """One (side, zone, size) of a label and its weight; None = unspecified."""

    model_config = ConfigDict(frozen=True)

    side: str | None = None
    zone: str | None = None
    size: str | None = None
    weight: float = Field(ge=0)


class FindingPrior(BaseModel):
    """Co-occurrence prior over findings: the joint over label combinations, attributes per label."""

    model_config = ConfigDict(frozen=True)

    n_samples: int = Field(0, ge=0, description="how many samples it was estimated from (0: set by hand)")
    combinations: tuple[Combination, ...]
    attributes: dict[str, tuple[AttributeChoice, ...]] = {}

    @model_validator(mode="after")
    def _check(self) -> "FindingPrior":
        if not self.combinations or sum(c.weight for c in self.combinations) <= 0:
            raise ValueError("a prior needs at least one combination with positive weight")
        for label, choices in self.attributes.items():
            _check_label(label)
            for choice in choices:
                Finding(label=label, side=choice.side, zone=choice.zone, size=choice.size)  # validates
        return self

    def label_frequencies(self) -> dict[str, float]:
        """Share of samples that contain each label (at least once)."""
        total = sum(c.weight for c in self.combinations)
        return {
            label: sum(c.weight for c in self.combinations if label in c.labels) / total for label in PATHOLOGIES
        }


class PromptSamplerConfig(BaseModel):
    """How prompts are drawn from a prior: frequency targets and how specific the prompts are."""

    model_config = ConfigDict(extra="forbid")

    label_targets: dict[str, float] = Field(
        default_factory=dict, description="share of prompts that contain each label, e.g. {pneumothorax: 0.2}"
    )
    normal_fraction: float | None = Field(None, ge=0, le=1, description="share of prompts with no finding")
    max_findings: int | None = Field(None, ge=0, description="drop combinations with more findings than this")
    unspecified_rate: float = Field(0.0, ge=0, le=1, description="chance each attribute is left unspecified")
    tolerance: float = Field(1e-4, gt=0, description="how closely the tilted joint must meet the targets")
    prior: str = Field(
        "source", description="where the co-occurrence prior comes from: 'source' (estimated from the source dataset's "
        "manifest), 'nih', 'chexpert' or 'padchest' (the real label tables torchxrayvision ships, `tasks.priors`), or a "
        "path to a JSON prior (FindingPrior) or a label CSV in one of those three layouts")
    reports: str | None = Field(
        None, description="a file of real radiology reports to take the prompts from instead of sampling: a CSV with a "
        "'report', 'report_text' or 'text' column (else 'findings' + 'impression'), or a text file with one report per "
        "line. Each report is read with findings_from_report; one with no finding is a normal prompt. Reports are used "
        "in a seeded random order, cycled when n_samples exceeds them; frequency targets do not apply (the reports are "
        "the distribution)")

    @field_validator("prior")
    @classmethod
    def _check_prior(cls, prior: str) -> str:
        if prior in PRIOR_NAMES or prior.lower().endswith(PRIOR_FILE_SUFFIXES):
            return prior
        raise ValueError(f"unknown prior {prior!r}; use one of {', '.join(PRIOR_NAMES)}, or a path to a JSON prior or a "
                         f"label CSV ({', '.join(PRIOR_FILE_SUFFIXES)})")

    @model_validator(mode="after")
    def _reports_alone(self) -> "PromptSamplerConfig":
        if self.reports is not None:
            clashing = [name for name, value in (("label_targets", self.label_targets), ("normal_fraction", self.normal_fraction),
                                                 ("max_findings", self.max_findings)) if value not in (None, {})]
            if self.prior != "source":
                clashing.append("prior")
            if clashing:
                raise ValueError(f"prompts taken from reports ({self.reports}) follow the reports, so {', '.join(clashing)} "
                                 "cannot apply; remove them or `reports`")
        return self

    @field_validator("label_targets")
    @classmethod
    def _check_targets(cls, targets: dict[str, float]) -> dict[str, float]:
        for label, value in targets.items():
            _check_label(label)
            if not 0 <= value <= 1:
                raise ValueError(f"target for {label} must be a share in [0, 1], got {value}")
        return targets


def _finding(record: Finding | Mapping[str, Any]) -> Finding:
    return record if isinstance(record, Finding) else Finding(**{k: record.get(k) for k in ("label", "side", "zone", "size")})


def estimate_prior(findings_per_sample: Iterable[Sequence[Finding | Mapping[str, Any]]]) -> FindingPrior:
    """Estimate the prior from per-sample findings (Findings or manifest records with label/side/zone/size)."""
    combos: Counter[tuple[str, ...]] = Counter()
    attributes: dict[str, Counter[tuple]] = {label: Counter() for label in PATHOLOGIES}
    n = 0
    for sample in findings_per_sample:
        findings = [_finding(f) for f in (sample if sample is not None else ())]
        combos[tuple(sorted((f.label for f in findings), key=PATHOLOGIES.index))] += 1
        for f in findings:
            attributes[f.label][(f.side, f.zone, f.size)] += 1
        n += 1
    if n == 0:
        raise PromptSamplerError("cannot estimate a prior from no samples")
    return FindingPrior(
        n_samples=n,
        combinations=tuple(Combination(labels=k, weight=v) for k, v in sorted(combos.items(), key=lambda kv: (len(kv[0]), kv[0]))),
        attributes={
            label: tuple(AttributeChoice(side=s, zone=z, size=sz, weight=w) for (s, z, sz), w in sorted(counts.items(), key=str))
            for label, counts in attributes.items()
            if counts
        },
    )


def prior_from_weights(weights: Mapping[str, float], attributes: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> FindingPrior:
    """A prior written in config: {"effusion+cardiomegaly": 0.1, "nodule": 0.3, "": 0.6}; attributes per
    label as [{side, zone, size, weight}, ...] (uniform over the valid ones where not given)."""
    combinations = tuple(
        Combination(labels=tuple(l.strip() for l in key.split("+") if l.strip()), weight=w) for key, w in weights.items()
    )
    return FindingPrior(
        combinations=combinations,
        attributes={label: tuple(AttributeChoice(**c) for c in choices) for label, choices in (attributes or {}).items()},
    )


def uniform_attributes(label: str) -> tuple[AttributeChoice, ...]:
    """Every fully specified (side, zone, size) a label can carry, equally weighted."""
    sides = SIDES if label in LATERAL_FINDINGS else (None,)
    zones = ZONES if label in ZONED_FINDINGS else (None,)
    return tuple(AttributeChoice(side=s, zone=z, size=sz, weight=1.0) for s in sides for z in zones for sz in SIZES)


def tilted_weights(prior: FindingPrior, config: PromptSamplerConfig) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The combinations and their probabilities after applying the frequency targets (see module doc)."""
    weights: dict[tuple[str, ...], float] = {}
    for c in prior.combinations:
        if config.max_findings is None or len(c.labels) <= config.max_findings:
            weights[c.labels] = weights.get(c.labels, 0.0) + c.weight
    for label, target in config.label_targets.items():
        if target > 0 and not any(label in combo and w > 0 for combo, w in weights.items()):
            logger.info("target for %s, which the prior never shows: adding it as a finding on its own", label)
            weights[(label,)] = 1e-9 * sum(weights.values())
    combos = list(weights)
    p = np.array([weights[c] for c in combos], dtype=np.float64)
    if p.sum() <= 0:
        raise PromptSamplerError("no combination left to sample (max_findings too small?)")
    p /= p.sum()
    constraints = [(np.array([label in c for c in combos]), t, label) for label, t in config.label_targets.items()]
    if config.normal_fraction is not None:
        constraints.append((np.array([len(c) == 0 for c in combos]), config.normal_fraction, "normal"))
    for _ in range(2000):  # iterative proportional fitting on the indicator of each constraint
        worst = 0.0
        for member, target, _name in constraints:
            current = p[member].sum()
            worst = max(worst, abs(current - target))
            if 0 < current < 1:
                p[member] *= target / current
                p[~member] *= (1 - target) / (1 - current)
            p /= p.sum()
        if worst < config.tolerance * 0.1:
            break
    for member, target, name in constraints:
        achieved = p[member].sum()
        if abs(achieved - target) > config.tolerance:
            raise PromptSamplerError(
                f"cannot meet the target share {target:.3f} for {name} together with the other targets "
                f"(best reached: {achieved:.3f}); the prior's co-occurrences make them incompatible"
            )
    return combos, p


def sample_prompts(n: int, prior: FindingPrior, config: PromptSamplerConfig, seed: int) -> list[Prompt]:
    """Draw n prompts (tuples of Findings, in vocabulary order); the same seed gives the same prompts."""
    rng = np.random.default_rng(seed)
    combos, p = tilted_weights(prior, config)
    choices = {label: prior.attributes.get(label) or uniform_attributes(label) for label in PATHOLOGIES}
    attribute_p = {label: np.array([c.weight for c in cs]) / sum(c.weight for c in cs) for label, cs in choices.items()}
    prompts = []
    for index in rng.choice(len(combos), size=n, p=p):
        findings = []
        for label in combos[index]:
            choice = choices[label][rng.choice(len(choices[label]), p=attribute_p[label])]
            values = {k: getattr(choice, k) for k in ("side", "zone", "size")}
            if config.unspecified_rate > 0:
                values = {k: (None if rng.random() < config.unspecified_rate else v) for k, v in values.items()}
            findings.append(Finding(label=label, **values))
        prompts.append(tuple(findings))
    return prompts


def redraw_attributes(prompt: Prompt, prior: FindingPrior, config: PromptSamplerConfig, seed: int) -> Prompt:
    """The same findings with new attributes (side, zone, size) drawn from the prior: what a build tries
    when a prompt keeps being rejected. The labels, and so the class mix and the co-occurrence, stay."""
    rng = np.random.default_rng(seed)
    findings = []
    for finding in prompt:
        choices = prior.attributes.get(finding.label) or uniform_attributes(finding.label)
        weights = np.array([c.weight for c in choices], dtype=np.float64)
        choice = choices[rng.choice(len(choices), p=weights / weights.sum())]
        values = {k: getattr(choice, k) for k in ("side", "zone", "size")}
        if config.unspecified_rate > 0:
            values = {k: (None if rng.random() < config.unspecified_rate else v) for k, v in values.items()}
        findings.append(Finding(label=finding.label, **values))
    return tuple(findings)


def redraw_unstated(prompt: Prompt, seed: int) -> Prompt:
    """The same findings with the attributes left unspecified (None) drawn uniformly from those the label can
    carry; stated attributes stay. What a build with prompts from reports tries when a prompt keeps being
    rejected: the report's own words (a left effusion) stay true of the sample."""
    rng = np.random.default_rng(seed)
    findings = []
    for finding in prompt:
        values = {}
        for key, allowed, carries in (("side", SIDES, finding.label in LATERAL_FINDINGS),
                                      ("zone", ZONES, finding.label in ZONED_FINDINGS), ("size", SIZES, True)):
            value = getattr(finding, key)
            values[key] = value if value is not None or not carries else allowed[rng.integers(len(allowed))]
        findings.append(Finding(label=finding.label, **values))
    return tuple(findings)


# --- prompts from real reports -------------------------------------------------------------------


def reports_file(path: str | Path) -> Path:
    """The reports file at `path`; a missing one is an error saying where it looked."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PromptSamplerError(f"reports file not found: looked at {file.resolve()}"
                                 + ("" if file.is_absolute() else f" (relative to the working directory {Path.cwd()})"))
    return file


def read_reports(path: str | Path) -> list[str]:
    """The report texts of a reports file (see `PromptSamplerConfig.reports`), in file order, blank ones
    dropped. A CSV (.csv, .csv.gz) needs a column of `REPORT_COLUMNS` or `REPORT_SECTION_COLUMNS`; any
    other file is plain text, one report per line."""
    file = reports_file(path)
    if file.name.lower().endswith((".csv", ".csv.gz")):
        import pandas as pd

        table = pd.read_csv(file, dtype=str, keep_default_na=False)
        columns = {c.strip().lower(): c for c in table.columns}
        column = next((columns[c] for c in REPORT_COLUMNS if c in columns), None)
        if column is not None:
            texts = table[column].tolist()
        elif any(c in columns for c in REPORT_SECTION_COLUMNS):
            sections = [table[columns[c]] for c in REPORT_SECTION_COLUMNS if c in columns]
            texts = [" ".join(part.strip() for part in parts if part.strip()) for parts in zip(*sections)]
        else:
            raise PromptSamplerError(f"reports CSV {file} has no report column: expected one of "
                                     f"{', '.join(REPORT_COLUMNS + REPORT_SECTION_COLUMNS)}, found {', '.join(table.columns)}")
    else:
        texts = file.read_text(encoding="utf-8", errors="replace").splitlines()
    reports = [t.strip() for t in texts if t and t.strip()]
    if not reports:
        raise PromptSamplerError(f"reports file {file} holds no report")
    return reports


def report_slots(n_reports: int, n: int, seed: int) -> list[int]:
    """Which report each of `n` slots takes: a seeded permutation of the reports, cycled (every report is used
    once before any is used twice; fewer slots than reports take a random subset)."""
    rng = np.random.default_rng(seed)
    rounds = -(-n // n_reports)
    return np.concatenate([rng.permutation(n_reports) for _ in range(rounds)])[:n].tolist()
