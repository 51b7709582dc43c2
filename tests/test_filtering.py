"""The multi-expert filter on real phantom images and masks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from aurad_models.experts.trained import (
    AnatomySegmenter,
    LesionSegmenter,
    PathologyClassifier,
    TrainedAnatomyExpert,
    TrainedLesionExpert,
    TrainedPathologyExpert,
)
from aurad_models.findings import Finding
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES, anatomy_index, pathology_index
from bench.world import cycle_findings, phantom_batch
from tasks.filtering import (
    AnatomyCheck,
    ClassifierCheck,
    FidelityCheck,
    FilterConfig,
    FilterExperts,
    ImageStatsCheck,
    ImageStatsReference,
    acceptance_report,
    filter_batch,
    vote_anatomy,
    vote_classifier,
    vote_fidelity,
)

N = 16
MODEL_FREE = FilterConfig(classifier=ClassifierCheck(enabled=False), anatomy=AnatomyCheck(enabled=False),
                          fidelity=FidelityCheck(enabled=False))


@pytest.fixture(scope="module")
def phantoms():
    return phantom_batch(range(100, 100 + N), size=64, findings=cycle_findings(N))


@pytest.fixture(scope="module")
def reference():
    return ImageStatsReference.from_images(phantom_batch(range(200, 264), size=64).images, source="phantom test")


def _filter(phantoms, reference, findings=None, images=None, pathology=None, config=MODEL_FREE, experts=None):
    return filter_batch(
        phantoms.images if images is None else images,
        phantoms.anatomy,
        phantoms.pathology if pathology is None else pathology,
        phantoms.findings if findings is None else findings,
        experts or FilterExperts(),
        config,
        reference,
    )


def test_phantoms_pass_for_their_own_findings(phantoms, reference):
    results = _filter(phantoms, reference)
    assert [r.reject_reason for r in results] == [None] * N
    assert all(r.accepted and r.verdicts == {"masks": True, "image_stats": True} for r in results)
    nodule = results[1]  # cycle_findings: sample 1 has a left upper nodule
    assert nodule.scores["mask_inside.nodule"] >= 0.9 and nodule.scores["mask_pixels.nodule"] > 0
    assert nodule.scores["mask_pixels.mass"] == 0.0
    assert {"image_mean", "image_std"} <= set(nodule.scores)


def test_prompt_without_matching_masks_is_rejected(phantoms, reference):
    normal = 0  # cycle_findings: sample 0 is a normal study
    findings = list(phantoms.findings)
    findings[normal] = (Finding(label="effusion", side="right"),)
    result = _filter(phantoms, reference, findings=findings)[normal]
    assert not result.accepted
    assert result.verdicts == {"masks": False, "image_stats": True}
    assert "effusion prompted but its mask is empty" in result.reject_reason
    assert result.reject_reason.startswith("masks:")

    unprompted = 4  # has an effusion mask, prompt claims a normal study
    findings[unprompted] = ()
    result = _filter(phantoms, reference, findings=findings)[unprompted]
    assert not result.accepted and "effusion not prompted but its mask has" in result.reject_reason


def test_masks_outside_their_allowed_region_are_rejected(phantoms, reference):
    i = 1  # left upper nodule
    pathology = phantoms.pathology.copy()
    nodule = pathology[i, pathology_index("nodule")]
    outside = ~(phantoms.anatomy[i, anatomy_index("Left Lung")] | phantoms.anatomy[i, anatomy_index("Right Lung")]).astype(bool)
    rows, cols = np.nonzero(outside)
    moved = np.zeros_like(nodule)
    moved[rows[: nodule.sum()], cols[: nodule.sum()]] = 1  # as many pixels, none in a lung
    pathology[i, pathology_index("nodule")] = moved
    result = _filter(phantoms, reference, pathology=pathology)[i]
    assert not result.accepted
    assert result.scores["mask_inside.nodule"] == 0.0
    assert "nodule mask 0% inside its allowed region (left lung field)" in result.reject_reason

    # a right-sided prompt for the left nodule: the mask is in the wrong lung
    findings = list(phantoms.findings)
    findings[i] = (Finding(label="nodule", side="right", zone="upper"),)
    result = _filter(phantoms, reference, findings=findings)[i]
    assert not result.accepted and "(right lung field)" in result.reject_reason


def test_image_statistics_outside_the_source_range_are_rejected(phantoms, reference):
    images = phantoms.images.copy()
    images[2] = 0.0  # a blank frame
    images[3] = (images[3] > 0.5).astype(np.float32)  # saturated: far too much contrast
    results = _filter(phantoms, reference, images=images)
    assert "image mean 0.000 outside the source range" in results[2].reject_reason
    assert "image std" in results[3].reject_reason
    assert results[2].verdicts["image_stats"] is False and results[2].verdicts["masks"] is True
    assert ImageStatsCheck().margin > 0 and all(r.accepted for k, r in enumerate(results) if k not in (2, 3))


def test_classifier_vote_detects_missing_and_unprompted_findings():
    check = ClassifierCheck(threshold=0.5, thresholds={"mass": 0.8}, absent_threshold=None)
    probs = np.full(len(PATHOLOGIES), 0.1, dtype=np.float32)
    probs[pathology_index("effusion")] = 0.3  # prompted, too low
    probs[pathology_index("cardiomegaly")] = 0.9  # not prompted, detected
    probs[pathology_index("mass")] = 0.7  # prompted, under its own 0.8
    probs[pathology_index("nodule")] = np.nan  # the model does not predict it: neither pass nor fail
    scores: dict[str, float] = {}
    problems = vote_classifier(probs, {"effusion": "left", "mass": None, "nodule": None}, check, scores)
    assert problems == [
        "mass prompted but not detected (p=0.70 < 0.80)",
        "effusion prompted but not detected (p=0.30 < 0.50)",
        "cardiomegaly detected but not prompted (p=0.90 >= 0.50)",
    ]
    assert "classifier.nodule" not in scores and scores["classifier.cardiomegaly"] == pytest.approx(0.9)
    relaxed = ClassifierCheck(check_absent=False, threshold=0.25)
    assert vote_classifier(probs, {"effusion": "left"}, relaxed, {}) == []
    lenient = ClassifierCheck(threshold=0.25, absent_threshold=0.95)  # only a clear detection of an absent finding
    assert vote_classifier(probs, {"effusion": "left"}, lenient, {}) == []
    assert vote_classifier(probs, {"effusion": "left"}, lenient.model_copy(update={"absent_threshold": 0.85}), {}) == [
        "cardiomegaly detected but not prompted (p=0.90 >= 0.85)"
    ]

    # findings the expert does not resolve on validation data are scored but do not vote
    auroc = {label: 0.9 for label in PATHOLOGIES} | {"cardiomegaly": 0.6, "mass": float("nan")}
    voting = check.voting(auroc)
    assert voting == frozenset(PATHOLOGIES) - {"cardiomegaly", "mass"}
    assert check.voting(None) == frozenset(PATHOLOGIES) == ClassifierCheck(min_auroc=None).voting(auroc)
    scores = {}
    problems = vote_classifier(probs, {"effusion": "left", "mass": None}, check, scores, voting)
    assert problems == ["effusion prompted but not detected (p=0.30 < 0.50)"] and "classifier.cardiomegaly" in scores


def test_anatomy_vote_compares_with_the_conditioning(phantoms):
    anatomy = phantoms.anatomy[5]
    scores: dict[str, float] = {}
    assert vote_anatomy(anatomy, anatomy, AnatomyCheck(), scores) == []
    present = {name for c, name in enumerate(ANATOMY_STRUCTURES) if anatomy[c].sum() >= AnatomyCheck().min_pixels}
    assert {k.split(".", 1)[1] for k in scores} == present and set(scores.values()) == {1.0}
    broken = anatomy.copy()
    broken[anatomy_index("Left Lung")] = 0
    broken[anatomy_index("Left Clavicle")] = 0  # scored, but does not vote by default
    scores = {}
    assert vote_anatomy(broken, anatomy, AnatomyCheck(), scores) == ["Dice Left Lung 0.00 < 0.60"]
    assert scores["anatomy_dice.Left Clavicle"] == 0.0
    assert len(vote_anatomy(broken, anatomy, AnatomyCheck(structures=None), {})) == 2


def test_filter_runs_model_experts_and_records_every_score(phantoms, reference):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        experts = FilterExperts(
            classifier=TrainedPathologyExpert(PathologyClassifier(init_features=8, growth_rate=4, block_config=(2, 2))),
            anatomy=TrainedAnatomyExpert(AnatomySegmenter(channels=(8, 16), strides=(2,), num_res_units=0)),
            fidelity=TrainedLesionExpert(LesionSegmenter(channels=(8, 16), strides=(2,))),
        )
    results = _filter(phantoms, reference, config=FilterConfig(), experts=experts)
    for result in results:
        assert {f"classifier.{label}" for label in PATHOLOGIES} <= set(result.scores)
        assert "anatomy_dice.Left Lung" in result.scores and "anatomy_dice.Heart" in result.scores
        assert set(result.verdicts) == {"classifier", "anatomy", "masks", "image_stats", "fidelity"}
        assert result.accepted == all(result.verdicts.values())
        for name, ok in result.verdicts.items():
            assert ok or result.reject_reason and f"{name}:" in result.reject_reason
    again = _filter(phantoms, reference, config=FilterConfig(), experts=experts)
    assert [r.scores for r in again] == [r.scores for r in results]
    with pytest.raises(ValueError, match="no anatomy segmenter"):
        _filter(phantoms, reference, config=FilterConfig(), experts=FilterExperts(classifier=experts.classifier))
    with pytest.raises(ValueError, match="no lesion segmenter"):
        _filter(phantoms, reference, config=FilterConfig(), experts=replace(experts, fidelity=None))
    with pytest.raises(ValueError, match="ImageStatsReference"):
        filter_batch(phantoms.images, phantoms.anatomy, phantoms.pathology, phantoms.findings, FilterExperts(), MODEL_FREE, None)


def test_bilateral_prompts_need_masks_on_both_sides(phantoms, reference):
    i = 1  # a left upper nodule: claim it is bilateral
    findings = list(phantoms.findings)
    findings[i] = (Finding(label="nodule", side="bilateral", zone="upper"),)
    result = _filter(phantoms, reference, findings=findings)[i]
    assert not result.accepted and "bilateral nodule prompted but its right side is empty (0 px)" in result.reject_reason
    assert result.scores["mask_pixels.nodule.left"] > 0 and result.scores["mask_pixels.nodule.right"] == 0


def test_fidelity_vote_uses_what_real_images_look_like_to_the_expert():
    masks = np.zeros((len(PATHOLOGIES), 16, 16), np.uint8)
    effusion, consolidation, nodule = (pathology_index(x) for x in ("effusion", "consolidation", "nodule"))
    masks[effusion, 10:, 2:8] = 1
    found = masks.copy()
    found[effusion, 10:, 5:8] = 0  # half re-found: Dice 2/3
    found[consolidation, 2:6, 2:6] = 1  # 16 px of consolidation the prompt does not ask for
    found[nodule, 3, 3] = 1  # the nodule channel the expert cannot judge
    calibration = {
        "effusion": {"dice": 0.7, "min_dice": 0.5, "max_absent_pixels": 3.0},
        "consolidation": {"dice": 0.5, "min_dice": 0.3, "max_absent_pixels": 10.0},
        "nodule": {"dice": 0.05, "min_dice": 0.0, "max_absent_pixels": 0.0},
    }
    check = FidelityCheck(absent_min_pixels=5)
    voting = check.voting(calibration)
    assert voting == {"effusion", "consolidation"}  # nodule: validation Dice under min_expert_dice
    scores: dict[str, float] = {}
    problems = vote_fidelity(found, masks, {"effusion": "right"}, check, calibration, voting, scores)
    assert scores["fidelity_dice.effusion"] == pytest.approx(2 / 3) and scores["fidelity_pixels.consolidation"] == 16
    assert problems == ["consolidation not prompted but shows (16 px re-segmented > 10 on real images)"]
    strict = vote_fidelity(found, masks, {"effusion": "right"}, FidelityCheck(min_dice=0.8, check_absent=False), calibration, voting, {})
    lenient = vote_fidelity(found, masks, {"effusion": "right"}, FidelityCheck(absent_min_pixels=20), calibration, voting, {})
    assert lenient == []  # 16 stray pixels are under the floor
    assert strict == ["effusion re-found with Dice 0.67 < 0.80 (real images reach it)"]


def test_acceptance_report_counts(phantoms, reference):
    findings = list(phantoms.findings)
    findings[0] = (Finding(label="effusion", side="right"),)  # normal image, prompt says effusion: masks reject
    images = phantoms.images.copy()
    images[9] = 0.0  # sample 9 has a nodule (cycle of 8): image statistics reject
    results = _filter(phantoms, reference, findings=findings, images=images)
    report = acceptance_report(results, findings)
    assert report["samples"] == N and report["accepted"] == N - 2
    assert report["acceptance_rate"] == pytest.approx((N - 2) / N)
    assert report["per_expert"]["masks"] == {"evaluated": N, "passed": N - 1, "pass_rate": (N - 1) / N}
    assert report["per_expert"]["image_stats"]["passed"] == N - 1
    assert "classifier" not in report["per_expert"]
    # cycle_findings over 16: two samples per finding, two normals; sample 0 now prompts effusion
    assert report["per_finding"]["effusion"] == {
        "samples": 3, "accepted": 2, "acceptance_rate": 2 / 3, "passed_by_expert": {"masks": 2, "image_stats": 3},
    }
    assert report["per_finding"]["nodule"]["accepted"] == 1 and report["per_finding"]["mass"]["accepted"] == 2 and report["per_finding"]["normal"]["samples"] == 1
    assert report["rejected_by"] == {"masks": 1, "image_stats": 1}
    with pytest.raises(ValueError):
        acceptance_report(results, findings[:-1])


@pytest.mark.slow
def test_demo_experts_accept_real_phantoms_and_reject_mismatched_prompts(tmp_path):
    """End to end on held-out phantoms with experts trained at the demo budget: the images' own findings
    mostly pass every expert; another sample's findings mostly fail the classifier."""
    from aurad_models.experts import ExpertChoice, load_anatomy_expert, load_pathology_expert
    from bench.world import write_phantom_version
    from tasks.experts import SourceRef, train_and_register_classifier, train_and_register_segmenter, ExpertsTrainingConfig
    from tasks.filtering import image_stats_reference_from_dataset

    write_phantom_version(tmp_path, {"train": 600, "val": 200}, shard_size=100, cycle=False)
    source = SourceRef(root=str(tmp_path), dataset="phantom")
    preset = ExpertsTrainingConfig()
    train_and_register_classifier(source, tmp_path, preset.classifier, device="cpu")
    train_and_register_segmenter(source, tmp_path, preset.segmenter, device="cpu")
    choice = ExpertChoice(source="project", device="cpu")
    experts = FilterExperts(load_pathology_expert(choice, tmp_path), load_anatomy_expert(choice, tmp_path))
    reference = image_stats_reference_from_dataset(source.open(), "train")

    held_out = phantom_batch(range(10_000, 10_096), size=64)
    no_fidelity = FilterConfig(fidelity={"enabled": False})
    own = filter_batch(held_out.images, held_out.anatomy, held_out.pathology, held_out.findings, experts, no_fidelity, reference)
    own_report = acceptance_report(own, held_out.findings)
    assert own_report["per_expert"]["anatomy"]["pass_rate"] >= 0.9, own_report
    assert own_report["per_expert"]["masks"]["pass_rate"] == 1.0
    assert own_report["acceptance_rate"] >= 0.65, own_report

    # the same images and masks, with the findings of another sample whose labels differ
    order = np.roll(np.arange(len(held_out)), 1)
    swapped = [held_out.findings[j] for j in order]
    differ = [i for i in range(len(held_out)) if {f.label for f in swapped[i]} != {f.label for f in held_out.findings[i]}]
    no_masks = FilterConfig(masks={"enabled": False}, fidelity={"enabled": False})  # judge the classifier alone
    mismatched = filter_batch(
        held_out.images[differ], held_out.anatomy[differ], held_out.pathology[differ], [swapped[i] for i in differ],
        experts, no_masks, reference,
    )
    mismatched_report = acceptance_report(mismatched, [swapped[i] for i in differ])
    own_rate = own_report["per_expert"]["classifier"]["pass_rate"]
    mismatched_rate = mismatched_report["per_expert"]["classifier"]["pass_rate"]
    assert own_rate >= 0.7 and mismatched_rate <= 0.5 and own_rate - mismatched_rate >= 0.3, (own_report, mismatched_report)


def test_a_new_expert_is_one_registered_function_and_its_settings(phantoms, reference):
    """Adding an expert touches one module (the function and its settings) and the profile (its name under
    build.filter.experts): nothing in the filter, the build or the manifest changes."""
    from pydantic import BaseModel, ValidationError

    from tasks.filtering import FILTER_EXPERTS, filter_expert

    class DarkFrameCheck(BaseModel):
        enabled: bool = True
        min_mean: float = 0.1

    @filter_expert("dark_frame", DarkFrameCheck)
    def dark_frame(batch, check):
        means = batch.images.reshape(len(batch), -1).mean(axis=1)
        return [({"dark_frame.mean": float(m)}, [] if m >= check.min_mean else [f"mean {m:.2f} < {check.min_mean}"]) for m in means]

    try:
        images = phantoms.images.copy()
        images[5] = 0.02
        config = MODEL_FREE.model_copy(update={"experts": FilterConfig(experts={"dark_frame": {"min_mean": 0.05}}).experts})
        results = _filter(phantoms, reference, images=images, config=config)
        assert config.enabled() == ("masks", "image_stats", "dark_frame")
        assert not results[5].accepted and "dark_frame: mean 0.02 < 0.05" in results[5].reject_reason
        assert results[0].verdicts["dark_frame"] and "dark_frame.mean" in results[0].scores
        with pytest.raises(ValidationError, match="no registered plug-in expert 'dark_fram'"):
            FilterConfig(experts={"dark_fram": {}})
        with pytest.raises(ValidationError, match="min_mean"):
            FilterConfig(experts={"dark_frame": {"min_mean": "bright"}})
    finally:
        FILTER_EXPERTS.pop("dark_frame")
