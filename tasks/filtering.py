"""Stage 5, the multi-expert filter: several experts vote on each synthetic sample; every score is kept.

    results = filter_batch(images01, anatomy, pathology, findings, experts, config, reference)
    results[i].scores        {"classifier.effusion": 0.81, "anatomy_dice.Left Lung": 0.93,
                              "mask_inside.effusion": 1.0, "mask_pixels.effusion": 212, "image_mean": 0.47, ...}
    results[i].accepted      True only if every enabled expert accepts
    results[i].reject_reason "classifier: effusion prompted but not detected (p=0.12 < 0.50); masks: ..."

The experts:
  classifier   each prompted finding detected (p >= threshold); each absent one not clearly detected
               (p < absent_threshold); only findings the expert resolves on validation data vote (min_auroc)
  anatomy      the anatomy re-segmented from the synthetic image agrees with the conditioning anatomy
               (Dice per structure present in the conditioning >= threshold)
  masks        each prompted finding's mask is non-empty and lies in its allowed region
               (`anatomy_rules.allowed_region`); absent findings' masks are empty
  image_stats  the image's mean and standard deviation lie in the source data's range (`ImageStatsReference`)
  fidelity     a lesion segmenter trained on real images re-segments the synthetic image: each prompted
               finding must be re-found about as well as on real images (Dice >= the calibrated per-finding
               value), and an absent one must not show more than real images without it do

Rejected samples are recorded with their reason, never dropped: acceptance is the manifest's business.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from aurad_models.anatomy_rules import REGION_NAMES, allowed_region, inside_fraction
from aurad_models.experts.base import AnatomyExpert, PathologyExpert, check_images01
from aurad_models.experts.metrics import dice
from aurad_models.experts.trained import TrainedLesionExpert
from aurad_models.findings import Finding
from aurad_models.pixels import stored_to_unit
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES, PATHOLOGY

logger = logging.getLogger(__name__)

EXPERTS: tuple[str, ...] = ("classifier", "anatomy", "masks", "image_stats", "fidelity")


# --- configuration ---------------------------------------------------------------------------------


class ClassifierCheck(BaseModel):
    """Expert (a): the pathology classifier must find the prompted findings and not the absent ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="let the pathology classifier vote (false: it is not loaded)")
    threshold: float = Field(0.5, gt=0, lt=1, description="detection threshold on the expert's probability")
    thresholds: dict[str, float] = Field(default_factory=dict, description="per-finding overrides of threshold")
    check_absent: bool = Field(True, description="also reject when a finding that was not prompted is detected")
    absent_threshold: float | None = Field(
        0.8,
        gt=0,
        lt=1,
        description="probability from which a finding that was not prompted counts as detected (None: the "
        "detection threshold); higher = fewer real images rejected for a co-occurring finding",
    )
    min_auroc: float | None = Field(
        0.75,
        ge=0,
        le=1,
        description="a finding votes only if the expert's validation AUROC for it reaches this (experts without "
        "validation AUROC, e.g. torchxrayvision's, vote on every finding); None: every finding votes",
    )

    @field_validator("thresholds")
    @classmethod
    def _known(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(PATHOLOGIES))
        if unknown:
            raise ValueError(f"unknown findings {unknown}; known: {', '.join(PATHOLOGIES)}")
        return value

    def threshold_for(self, label: str) -> float:
        return self.thresholds.get(label, self.threshold)

    def voting(self, validation_auroc: dict[str, float | None] | None) -> frozenset[str]:
        """Findings that vote, given the expert's validation AUROC per finding (None: unknown, all vote)."""
        if self.min_auroc is None or validation_auroc is None:
            return frozenset(PATHOLOGIES)
        return frozenset(
            label for label in PATHOLOGIES
            if (value := validation_auroc.get(label)) is not None and value == value and value >= self.min_auroc
        )


class AnatomyCheck(BaseModel):
    """Expert (b): the anatomy segmented from the synthetic image matches the conditioning anatomy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="let the anatomy segmenter vote (false: it is not loaded)")
    dice_threshold: float = Field(0.6, ge=0, le=1, description="least Dice per checked structure")
    structures: tuple[str, ...] | None = Field(
        ("Left Lung", "Right Lung", "Heart"),
        description="structures that vote (None = all 14); every structure present in the conditioning "
        "anatomy is scored, and only present ones vote",
    )
    min_pixels: int = Field(4, ge=1, description="a conditioning structure with fewer pixels is not checked")

    @field_validator("structures")
    @classmethod
    def _known(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        unknown = sorted(set(value or ()) - set(ANATOMY_STRUCTURES))
        if unknown:
            raise ValueError(f"unknown anatomy structures {unknown}; known: {', '.join(ANATOMY_STRUCTURES)}")
        return value


class MaskCheck(BaseModel):
    """Expert (c): pathology masks are where the prompt and the anatomy say they may be."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="check that pathology masks lie in the regions prompt and anatomy allow")
    inside_threshold: float = Field(0.9, ge=0, le=1, description="least share of a mask inside its allowed region")
    min_pixels: int = Field(1, ge=1, description="a prompted finding's mask needs at least this many pixels")
    absent_max_pixels: int = Field(0, ge=0, description="an absent finding's mask may have at most this many pixels")


class ImageStatsCheck(BaseModel):
    """Expert (d): image mean / std inside the source data's range, widened by `margin` of its width."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="check image mean and std against the source data's range")
    margin: float = Field(0.1, ge=0, description="fraction of each reference range's width added on both sides")


class FidelityCheck(BaseModel):
    """Expert (e): the lesions show where their masks are, judged by a segmenter trained on real images."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="let the fidelity expert (lesion segmenter) vote (false: it is not loaded)")
    min_expert_dice: float = Field(0.3, ge=0, le=1, description="a finding votes only if the segmenter's pooled "
                                   "validation Dice on real images reaches this")
    min_dice: float | None = Field(None, ge=0, le=1, description="least Dice between the re-segmentation and a prompted "
                                   "mask; None: the value the expert calibrated on real validation images")
    check_absent: bool = Field(True, description="reject when a finding that was not prompted shows up larger than on "
                               "real images without it (the calibrated area)")
    absent_min_pixels: float = Field(12.0, ge=0, description="an absent finding's re-segmented area below this is never "
                                     "held against a sample (pixels at the expert's size: real negatives are mostly 0, "
                                     "so the calibrated area alone would reject a single stray pixel)")

    def voting(self, calibration: dict[str, dict[str, Any]]) -> frozenset[str]:
        return frozenset(label for label, c in calibration.items() if (c.get("dice") or 0.0) >= self.min_expert_dice)


class FilterConfig(BaseModel):
    """Which experts vote and their thresholds. A sample is accepted only if every enabled expert accepts.
    The built-in experts have a section each; an expert registered by another module (`filter_expert`) is
    configured by its name under `experts`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    classifier: ClassifierCheck = Field(
        default_factory=ClassifierCheck, description="expert (a): the classifier finds the prompted findings only"
    )
    anatomy: AnatomyCheck = Field(
        default_factory=AnatomyCheck,
        description="expert (b): the anatomy segmented from the image matches the conditioning anatomy",
    )
    masks: MaskCheck = Field(
        default_factory=MaskCheck, description="expert (c): pathology masks lie where the prompt and the anatomy allow"
    )
    image_stats: ImageStatsCheck = Field(
        default_factory=ImageStatsCheck, description="expert (d): image mean / std within the source data's range"
    )
    fidelity: FidelityCheck = Field(
        default_factory=FidelityCheck,
        description="expert (e): lesions show where their masks are, judged by a segmenter trained on real images",
    )
    experts: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="registered plug-in experts: name -> its settings (see tasks.filtering.filter_expert)")

    @field_validator("experts")
    @classmethod
    def _registered(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out = {}
        for name, settings in value.items():
            if name not in FILTER_EXPERTS or name in EXPERTS:
                plug_ins = sorted(set(FILTER_EXPERTS) - set(EXPERTS))
                raise ValueError(f"no registered plug-in expert {name!r} (registered: {', '.join(plug_ins) or 'none'}; the "
                                 f"built-in ones, {', '.join(EXPERTS)}, have their own sections)")
            out[name] = FILTER_EXPERTS[name].check.model_validate(settings).model_dump(mode="json")
        return out

    def checks(self) -> list[tuple[str, BaseModel]]:
        """(name, settings) of every enabled expert, built-in ones first."""
        built_in = [(name, getattr(self, name)) for name in EXPERTS]
        plug_ins = [(name, FILTER_EXPERTS[name].check.model_validate(settings)) for name, settings in self.experts.items()]
        return [(name, check) for name, check in built_in + plug_ins if check.enabled]

    def enabled(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.checks())


class ImageStatsReference(BaseModel):
    """Range of per-image mean and standard deviation in the source data (low-high percentiles)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean_range: tuple[float, float]
    std_range: tuple[float, float]
    percentiles: tuple[float, float] = (1.0, 99.0)
    n_images: int = 0
    source: str = ""

    @classmethod
    def from_images(
        cls, images01: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0), source: str = ""
    ) -> "ImageStatsReference":
        images = check_images01(images01)
        if len(images) == 0:
            raise ValueError("an image-statistics reference needs at least one image")
        means, stds = image_statistics(images)
        lo, hi = percentiles
        return cls(
            mean_range=(float(np.percentile(means, lo)), float(np.percentile(means, hi))),
            std_range=(float(np.percentile(stds, lo)), float(np.percentile(stds, hi))),
            percentiles=(lo, hi),
            n_images=len(images),
            source=source,
        )


def image_statistics(images01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean and standard deviation, (N,) each."""
    flat = np.asarray(images01, dtype=np.float64).reshape(len(images01), -1)
    return flat.mean(axis=1), flat.std(axis=1)


def image_stats_reference_from_dataset(
    version: Any,
    split: str | None = "train",
    max_images: int | None = 2000,
    percentiles: tuple[float, float] = (1.0, 99.0),
    seed: int = 0,
) -> ImageStatsReference:
    """The reference from a source dataset version (a `storage.DatasetVersion`): one split, at most
    `max_images` (an evenly seeded random subset), read one zarr block of indices at a time."""
    indices = version.select(accepted_only=False, split=split)
    if len(indices) == 0:
        raise ValueError(f"{version.path} has no samples in split {split!r} for an image-statistics reference")
    if max_images is not None and len(indices) > max_images:
        indices = np.sort(np.random.default_rng(seed).choice(indices, size=max_images, replace=False))
    images = stored_to_unit(np.asarray(version.images.get_orthogonal_selection((indices, slice(None), slice(None)))))
    return ImageStatsReference.from_images(
        images, percentiles, source=f"{version.name}/{version.version} split={split}"
    )


# --- the filter ------------------------------------------------------------------------------------


@dataclass
class FilterExperts:
    """The loaded model experts (the mask and image-statistics experts need no model)."""

    classifier: PathologyExpert | None = None
    anatomy: AnatomyExpert | None = None
    fidelity: TrainedLesionExpert | None = None


@dataclass
class FilterResult:
    """One sample's verdict: every score, the per-expert votes, and a readable reason when rejected."""

    scores: dict[str, float]
    accepted: bool
    reject_reason: str | None
    verdicts: dict[str, bool] = field(default_factory=dict)  # enabled expert -> accepted
    reasons: dict[str, list[str]] = field(default_factory=dict)  # rejecting expert -> why


def prompted_sides(findings: Sequence[Finding]) -> dict[str, str | None]:
    """label -> side to check the mask against: the prompted side if all findings of that label agree,
    else None (either lung)."""
    sides: dict[str, set[str | None]] = {}
    for finding in findings:
        sides.setdefault(finding.label, set()).add(finding.side)
    return {label: (next(iter(s)) if len(s) == 1 else None) for label, s in sides.items()}


def vote_classifier(
    probs: np.ndarray,
    prompted: dict[str, str | None],
    check: ClassifierCheck,
    scores: dict[str, float],
    voting: frozenset[str] = frozenset(PATHOLOGIES),
) -> list[str]:
    """Expert (a) on one sample's (7,) probabilities: adds `classifier.<finding>` scores, returns the
    problems (empty = accept). Only `voting` findings can reject; NaN probabilities (finding not predicted
    by the model) neither pass nor fail."""
    problems = []
    for j, label in enumerate(PATHOLOGIES):
        p = float(probs[j])
        if np.isnan(p):
            continue  # the model does not predict this finding: unknown, not absent
        scores[f"classifier.{label}"] = p
        if label not in voting:
            continue
        threshold = check.threshold_for(label)
        if label in prompted and p < threshold:
            problems.append(f"{label} prompted but not detected (p={p:.2f} < {threshold:.2f})")
        elif label not in prompted and check.check_absent:
            absent = max(threshold, check.absent_threshold or threshold)
            if p >= absent:
                problems.append(f"{label} detected but not prompted (p={p:.2f} >= {absent:.2f})")
    return problems


def vote_anatomy(
    segmented: np.ndarray, conditioning: np.ndarray, check: AnatomyCheck, scores: dict[str, float]
) -> list[str]:
    """Expert (b) on one sample: the Dice of every structure present in the conditioning anatomy is scored
    (`anatomy_dice.<structure>`); those in `check.structures` vote."""
    voting = set(check.structures or ANATOMY_STRUCTURES)
    problems = []
    for c, name in enumerate(ANATOMY_STRUCTURES):
        if int(conditioning[c].sum()) < check.min_pixels:
            continue
        value = dice(segmented[c], conditioning[c])
        scores[f"anatomy_dice.{name}"] = value
        if name in voting and value < check.dice_threshold:
            problems.append(f"Dice {name} {value:.2f} < {check.dice_threshold:.2f}")
    return problems


def vote_masks(
    pathology: np.ndarray,
    anatomy: np.ndarray,
    prompted: dict[str, str | None],
    check: MaskCheck,
    scores: dict[str, float],
) -> list[str]:
    """Expert (c) on one sample: `mask_pixels.<finding>` for every channel, `mask_inside.<finding>` (share
    inside `anatomy_rules.allowed_region`) for prompted ones; prompted masks must be non-empty and inside,
    absent ones empty."""
    problems = []
    for j, label in enumerate(PATHOLOGIES):
        mask = pathology[j].astype(bool)
        pixels = int(mask.sum())
        scores[f"mask_pixels.{label}"] = float(pixels)
        if label in prompted:
            if pixels < check.min_pixels:
                problems.append(f"{label} prompted but its mask is empty ({pixels} px)")
                continue
            share = inside_fraction(mask, allowed_region(label, anatomy, prompted[label]))
            scores[f"mask_inside.{label}"] = share
            if share < check.inside_threshold:
                where = f"{prompted[label]} " if prompted[label] else ""
                problems.append(
                    f"{label} mask {share:.0%} inside its allowed region ({where}{REGION_NAMES[PATHOLOGY[label].region]})"
                    f" < {check.inside_threshold:.0%}"
                )
            if prompted[label] == "bilateral":
                for side in ("left", "right"):
                    side_pixels = int((mask & allowed_region(label, anatomy, side)).sum())
                    scores[f"mask_pixels.{label}.{side}"] = float(side_pixels)
                    if side_pixels < check.min_pixels:
                        problems.append(f"bilateral {label} prompted but its {side} side is empty ({side_pixels} px)")
        elif pixels > check.absent_max_pixels:
            problems.append(f"{label} not prompted but its mask has {pixels} px")
    return problems


def vote_image_stats(
    mean: float, std: float, reference: ImageStatsReference, check: ImageStatsCheck, scores: dict[str, float]
) -> list[str]:
    """Expert (d): `image_mean` / `image_std` inside the reference ranges, widened by the margin."""
    scores["image_mean"], scores["image_std"] = mean, std
    problems = []
    for what, value, (lo, hi) in (("mean", mean, reference.mean_range), ("std", std, reference.std_range)):
        pad = check.margin * (hi - lo)
        if not lo - pad <= value <= hi + pad:
            problems.append(f"image {what} {value:.3f} outside the source range [{lo - pad:.3f}, {hi + pad:.3f}]")
    return problems


def vote_fidelity(
    segmented: np.ndarray, pathology: np.ndarray, prompted: dict[str, str | None], check: FidelityCheck,
    calibration: dict[str, dict[str, Any]], voting: frozenset[str], scores: dict[str, float], pixel_scale: float = 1.0,
) -> list[str]:
    """Expert (e) on one sample: `fidelity_dice.<finding>` for prompted findings and `fidelity_pixels.<finding>`
    for absent ones (re-segmented area, in pixels at the expert's calibration size); `fidelity_dice` pools
    the prompted ones. Only `voting` findings can reject."""
    problems = []
    hits = total = 0
    for j, label in enumerate(PATHOLOGIES):
        found, mask = segmented[j].astype(bool), pathology[j].astype(bool)
        if label in prompted:
            value = dice(found, mask)
            scores[f"fidelity_dice.{label}"] = value
            hits, total = hits + int((found & mask).sum()), total + int(found.sum() + mask.sum())
            limit = check.min_dice if check.min_dice is not None else calibration.get(label, {}).get("min_dice")
            if label in voting and limit is not None and value < limit:
                problems.append(f"{label} re-found with Dice {value:.2f} < {limit:.2f} (real images reach it)")
        else:
            pixels = float(found.sum()) * pixel_scale
            scores[f"fidelity_pixels.{label}"] = pixels
            calibrated = calibration.get(label, {}).get("max_absent_pixels")
            limit = None if calibrated is None else max(calibrated, check.absent_min_pixels)
            if check.check_absent and label in voting and limit is not None and pixels > limit:
                problems.append(f"{label} not prompted but shows ({pixels:.0f} px re-segmented > {limit:.0f} on real images)")
    if total:
        scores["fidelity_dice"] = 2 * hits / total
    return problems


# --- the experts behind one protocol ----------------------------------------------------------------


@dataclass
class FilterBatch:
    """What the experts judge, once per batch: images (N, H, W) in [0, 1], the conditioning anatomy
    (N, 14, H, W), the generated masks (N, 7, H, W), each sample's prompted finding -> side, the loaded
    model experts and the image-statistics reference."""

    images: np.ndarray
    anatomy: np.ndarray
    pathology: np.ndarray
    prompted: list[dict[str, str | None]]
    models: FilterExperts
    reference: ImageStatsReference | None

    def __len__(self) -> int:
        return len(self.images)


Vote = tuple[dict[str, float], list[str]]  # one sample: its scores, and its problems (none: accepted)


@dataclass(frozen=True)
class RegisteredExpert:
    check: type[BaseModel]  # its settings (a pydantic model with an `enabled` field)
    vote: Callable[[FilterBatch, Any], list[Vote]]  # runs once per batch: one Vote per sample


FILTER_EXPERTS: dict[str, RegisteredExpert] = {}


def filter_expert(name: str, check: type[BaseModel]) -> Callable[[Callable[[FilterBatch, Any], list[Vote]]], Callable]:
    """Register a filter expert: a function (batch, settings) -> one (scores, problems) per sample. Its
    settings class needs an `enabled` field; configure it as `build.filter.experts.<name>`."""
    if "enabled" not in check.model_fields:
        raise TypeError(f"{check.__name__} needs an `enabled` field to be a filter expert's settings")

    def add(vote: Callable[[FilterBatch, Any], list[Vote]]) -> Callable[[FilterBatch, Any], list[Vote]]:
        FILTER_EXPERTS[name] = RegisteredExpert(check, vote)
        return vote

    return add


def _require(value: Any, what: str, expert: str) -> Any:
    if value is None:
        raise ValueError(f"the {expert} expert is enabled but no {what} was given")
    return value


@filter_expert("classifier", ClassifierCheck)
def classifier_votes(batch: FilterBatch, check: ClassifierCheck) -> list[Vote]:
    model = _require(batch.models.classifier, "pathology classifier", "classifier")
    probs = model.predict(batch.images)
    voting = check.voting(getattr(model, "validation_auroc", None))
    if voting != frozenset(PATHOLOGIES):
        silent = [label for label in PATHOLOGIES if label not in voting]
        logger.info("classifier: %s scored but not voting (validation AUROC < %s)", ", ".join(silent), check.min_auroc)
    return [_scored(lambda scores: vote_classifier(probs[i], batch.prompted[i], check, scores, voting)) for i in range(len(batch))]


@filter_expert("anatomy", AnatomyCheck)
def anatomy_votes(batch: FilterBatch, check: AnatomyCheck) -> list[Vote]:
    segmented = _require(batch.models.anatomy, "anatomy segmenter", "anatomy").segment(batch.images)
    return [_scored(lambda scores: vote_anatomy(segmented[i], batch.anatomy[i], check, scores)) for i in range(len(batch))]


@filter_expert("masks", MaskCheck)
def mask_votes(batch: FilterBatch, check: MaskCheck) -> list[Vote]:
    return [_scored(lambda scores: vote_masks(batch.pathology[i], batch.anatomy[i], batch.prompted[i], check, scores))
            for i in range(len(batch))]


@filter_expert("image_stats", ImageStatsCheck)
def image_stats_votes(batch: FilterBatch, check: ImageStatsCheck) -> list[Vote]:
    reference = _require(batch.reference, "ImageStatsReference", "image-statistics")
    means, stds = image_statistics(batch.images)
    return [_scored(lambda scores: vote_image_stats(float(means[i]), float(stds[i]), reference, check, scores))
            for i in range(len(batch))]


@filter_expert("fidelity", FidelityCheck)
def fidelity_votes(batch: FilterBatch, check: FidelityCheck) -> list[Vote]:
    expert = _require(batch.models.fidelity, "lesion segmenter", "fidelity")
    lesions = expert.segment(batch.images)
    calibration = expert.fidelity
    voting = check.voting(calibration)
    h, w = batch.images.shape[1:]
    scale = expert.model.image_size**2 / (h * w)
    return [_scored(lambda scores: vote_fidelity(lesions[i], batch.pathology[i], batch.prompted[i], check, calibration, voting,
                                                 scores, scale)) for i in range(len(batch))]


def _scored(vote: Callable[[dict[str, float]], list[str]]) -> Vote:
    """Run one sample's vote, collecting the scores it records."""
    scores: dict[str, float] = {}
    problems = vote(scores)
    return scores, problems


def filter_batch(
    images01: np.ndarray,
    anatomy: np.ndarray,
    pathology: np.ndarray,
    findings: Sequence[Sequence[Finding]],
    experts: FilterExperts,
    config: FilterConfig,
    reference: ImageStatsReference | None = None,
) -> list[FilterResult]:
    """Score a batch with every enabled expert and decide each sample.

    images01 (N, H, W) in [0, 1]; anatomy (N, 14, H, W) the conditioning anatomy; pathology (N, 7, H, W) the
    generated masks; findings: the prompted findings of each sample. Each expert runs once per batch; an
    enabled expert without what it needs is a configuration error, not a pass.
    """
    # 1. Check inputs.
    images = check_images01(images01)
    n, h, w = images.shape
    if anatomy.shape != (n, len(ANATOMY_STRUCTURES), h, w):
        raise ValueError(f"anatomy must be {(n, len(ANATOMY_STRUCTURES), h, w)}, got {anatomy.shape}")
    if pathology.shape != (n, len(PATHOLOGIES), h, w):
        raise ValueError(f"pathology masks must be {(n, len(PATHOLOGIES), h, w)}, got {pathology.shape}")
    if len(findings) != n:
        raise ValueError(f"{n} images but findings for {len(findings)} samples")
    batch = FilterBatch(images, anatomy, pathology, [prompted_sides(f) for f in findings], experts, reference)

    # 2. Every enabled expert over the whole batch.
    votes = {name: FILTER_EXPERTS[name].vote(batch, check) for name, check in config.checks()}

    # 3. Decide per sample; every score is kept.
    means, stds = image_statistics(images)
    results = []
    for i in range(n):
        scores = {"image_mean": float(means[i]), "image_std": float(stds[i])}
        reasons: dict[str, list[str]] = {}
        for name, per_sample in votes.items():
            sample_scores, reasons[name] = per_sample[i]
            scores.update(sample_scores)
        verdicts = {name: not problems for name, problems in reasons.items()}
        rejecting = {name: problems for name, problems in reasons.items() if problems}
        reason = "; ".join(f"{name}: {', '.join(problems)}" for name, problems in rejecting.items()) or None
        results.append(FilterResult(scores, not rejecting, reason, verdicts, rejecting))
    logger.info("filter: %d of %d samples accepted", sum(r.accepted for r in results), n)
    return results


def acceptance_report(results: Sequence[FilterResult], findings: Sequence[Sequence[Finding]]) -> dict[str, Any]:
    """Acceptance overall, per expert, and per prompted finding (normal studies under 'normal'), plus how
    often each expert (or combination) rejected."""
    if len(results) != len(findings):
        raise ValueError(f"{len(results)} results but findings for {len(findings)} samples")

    def rate(k: int, n: int) -> float | None:
        return k / n if n else None

    n = len(results)
    accepted = sum(r.accepted for r in results)
    per_expert = {}
    for name in EXPERTS:
        evaluated = [r for r in results if name in r.verdicts]
        if evaluated:
            passed = sum(r.verdicts[name] for r in evaluated)
            per_expert[name] = {"evaluated": len(evaluated), "passed": passed, "pass_rate": rate(passed, len(evaluated))}

    groups: dict[str, list[FilterResult]] = {}
    for result, sample_findings in zip(results, findings):
        labels = {f.label for f in sample_findings} or {"normal"}
        for label in labels:
            groups.setdefault(label, []).append(result)
    per_finding = {}
    for label in (*PATHOLOGIES, "normal"):
        group = groups.get(label, [])
        k = sum(r.accepted for r in group)
        per_finding[label] = {
            "samples": len(group),
            "accepted": k,
            "acceptance_rate": rate(k, len(group)),
            "passed_by_expert": {
                name: sum(r.verdicts.get(name, False) for r in group) for name in per_expert
            },
        }
    rejected_by = Counter(" + ".join(sorted(r.reasons)) for r in results if not r.accepted)
    return {
        "samples": n,
        "accepted": accepted,
        "acceptance_rate": rate(accepted, n),
        "per_expert": per_expert,
        "per_finding": per_finding,
        "rejected_by": dict(rejected_by.most_common()),
    }
