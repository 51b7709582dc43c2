"""Quality and downstream metrics on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from aurad_models import metrics
from aurad_models.findings import Finding
from aurad_models.vocabulary import PATHOLOGIES, anatomy_index, pathology_index
from toy_cxr import toy_batch


def gaussian(n: int, dim: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, scale, size=(n, dim))


# --- Fréchet distance ------------------------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = gaussian(300, 8, 0)
    assert metrics.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_grows_with_the_shift():
    real = gaussian(500, 8, 0)
    distances = [metrics.frechet_distance(real, gaussian(500, 8, 1, shift=s)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances)
    # a pure mean shift s in 8 dimensions adds about 8 s^2
    assert distances[-1] == pytest.approx(8 * 2.0**2, rel=0.1)
    assert distances[0] < 0.5


def test_frechet_distance_matches_the_closed_form_between_gaussians():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    sigma1, sigma2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    # reference: the textbook formula with scipy's matrix square root
    reference = float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * scipy.linalg.sqrtm(sigma1 @ sigma2).real))
    assert metrics.frechet_distance_gaussians(mu1, sigma1, mu2, sigma2) == pytest.approx(reference, rel=1e-6)
    # and from samples of those Gaussians, the estimate approaches it
    x = rng.multivariate_normal(mu1, sigma1, size=20000)
    y = rng.multivariate_normal(mu2, sigma2, size=20000)
    assert metrics.frechet_distance(x, y) == pytest.approx(reference, rel=0.05)


def test_frechet_distance_of_diagonal_gaussians():
    # closed form with diagonal covariances: |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    s1, s2 = np.array([1.0, 4.0]), np.array([9.0, 1.0])
    value = metrics.frechet_distance_gaussians(np.zeros(2), np.diag(s1), np.array([3.0, 0.0]), np.diag(s2))
    assert value == pytest.approx(9.0 + (1 - 3) ** 2 + (2 - 1) ** 2)


def test_frechet_distance_is_stable_with_fewer_samples_than_dimensions():
    real, synthetic = gaussian(20, 64, 0), gaussian(20, 64, 1, shift=1.0)
    value = metrics.frechet_distance(real, synthetic)
    assert np.isfinite(value) and value > metrics.frechet_distance(real, gaussian(20, 64, 2))


def test_fxd_records_the_extractor_and_refuses_mixed_extractors():
    real = metrics.FeatureSet(gaussian(50, 4, 0), "xrv:densenet121-res224-all")
    result = metrics.fxd(real, metrics.FeatureSet(gaussian(50, 4, 1, shift=1.0), "xrv:densenet121-res224-all"))
    assert result["metric"] == "FXD" and result["extractor"] == "xrv:densenet121-res224-all" and result["value"] > 1
    project = metrics.fxd(metrics.FeatureSet(real.values, "project:c1"), metrics.FeatureSet(real.values, "project:c1"))
    assert project["metric"] == "FD" and project["value"] == pytest.approx(0, abs=1e-8)
    with pytest.raises(ValueError, match="different extractors"):
        metrics.fxd(real, metrics.FeatureSet(real.values, "project:c1"))


def test_xrv_features_give_1024_features_per_image_and_name_the_extractor():
    import torchxrayvision as xrv

    model = xrv.models.DenseNet(weights=None)  # the architecture only: no weights are downloaded
    images = np.random.default_rng(0).random((3, 48, 64)).astype(np.float32)  # not square: centre-cropped
    images[2] = 1.0
    features = metrics.xrv_features(model, images, batch_size=2, size=64)  # 64 px to keep the test fast
    assert features.values.shape == (3, 1024)
    assert features.extractor == "xrv-untrained/features2" and features.is_xrv
    again = metrics.xrv_features(model, images[:1], size=64)
    np.testing.assert_allclose(again.values[0], features.values[0], rtol=1e-3, atol=1e-3)
    assert not np.allclose(features.values[0], features.values[2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.xrv_features(model, images * 1024)


def test_xrv_preprocessing_is_the_xrv_contract():
    from aurad_models.experts.xrv import xrv_preprocess

    images = np.zeros((2, 48, 64), np.float32)
    images[:, :, 32:] = 1.0  # right half white
    x = xrv_preprocess(images, 224)
    assert tuple(x.shape) == (2, 1, 224, 224)
    assert float(x.min()) == pytest.approx(-1024) and float(x.max()) == pytest.approx(1024)
    # centre crop of the 64-wide image keeps columns 8..56: the edge between halves stays in the middle
    assert float(x[0, 0, 100, 100]) == pytest.approx(-1024) and float(x[0, 0, 100, 124]) == pytest.approx(1024)


@pytest.mark.slow
def test_xrv_features_at_the_xrv_input_size():
    import torchxrayvision as xrv

    images = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    features = metrics.xrv_features(xrv.models.DenseNet(weights=None), images)
    assert features.values.shape == (2, 1024) and np.isfinite(features.values).all()


def test_inception_fid_is_skipped_with_a_reason_without_local_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch.hub cache
    images = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    skipped = metrics.inception_fid(images, images, None)
    assert skipped["value"] is None and "no Inception weights" in skipped["skipped"]
    missing = metrics.inception_fid(images, images, tmp_path / "inception.safetensors")
    assert missing["value"] is None and "not found" in missing["skipped"]


@pytest.mark.slow
def test_inception_fid_with_a_local_weights_file(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=True, init_weights=True)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    rng = np.random.default_rng(0)
    real = rng.random((8, 64, 64)).astype(np.float32)
    result = metrics.inception_fid(real, real, path)
    assert result["value"] == pytest.approx(0.0, abs=1e-3) and "inception_v3" in result["extractor"]
    assert metrics.inception_fid(real, np.clip(real * 0.2, 0, 1), path)["value"] > 0


# --- PRDC ------------------------------------------------------------------------------------------


def test_prdc_of_identical_sets_is_one():
    features = gaussian(200, 6, 0)
    result = metrics.prdc(features, features, k=5)
    assert result["precision"] == 1.0 and result["recall"] == 1.0 and result["coverage"] == 1.0
    assert result["density"] == pytest.approx(1.0, abs=0.01)


def test_prdc_of_samples_of_the_same_distribution_is_high():
    result = metrics.prdc(gaussian(400, 4, 0), gaussian(400, 4, 1), k=5)
    assert result["precision"] > 0.8 and result["recall"] > 0.8 and result["coverage"] > 0.8
    assert 0.7 < result["density"] < 1.3


def test_prdc_of_disjoint_sets_is_zero():
    result = metrics.prdc(gaussian(200, 6, 0), gaussian(200, 6, 1, shift=50.0), k=5)
    assert result == {**result, "precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_separates_fidelity_from_diversity():
    # a collapsed generator: every sample near the real mean -> precision high, recall / coverage low
    real = gaussian(300, 2, 0)
    collapsed = gaussian(300, 2, 1, scale=0.05)
    result = metrics.prdc(real, collapsed, k=5)
    assert result["precision"] > 0.9
    assert result["recall"] < 0.2 and result["coverage"] < 0.3


# --- MS-SSIM ---------------------------------------------------------------------------------------


def test_ms_ssim_of_identical_images_is_one_and_lower_for_different_ones():
    rng = np.random.default_rng(0)
    images = rng.random((3, 64, 64)).astype(np.float32)
    values, scales = metrics.ms_ssim(images, images)
    np.testing.assert_allclose(values, 1.0, atol=1e-5)
    assert scales == 3  # 64 px: 3 of the 5 standard scales
    different, _ = metrics.ms_ssim(images, rng.random((3, 64, 64)).astype(np.float32))
    assert (different < 0.5).all()


@pytest.mark.parametrize(("size", "scales"), [(32, 2), (64, 3), (128, 4), (256, 5), (512, 5)])
def test_ms_ssim_uses_as_many_scales_as_the_size_allows(size, scales):
    assert metrics.ms_ssim_scales(size) == scales


def test_ms_ssim_diversity_over_all_six_pairs():
    rng = np.random.default_rng(0)
    base = rng.random((2, 1, 64, 64)).astype(np.float32)
    collapsed = np.repeat(base, 4, axis=1)  # 4 identical samples per prompt
    result = metrics.ms_ssim_diversity(collapsed)
    assert result["pairs_per_prompt"] == 6 and result["prompts"] == 2
    assert result["ms_ssim"] == pytest.approx(1.0, abs=1e-5) and result["diversity"] == pytest.approx(0.0, abs=1e-5)
    assert "3 of 5 scales" in result["note"]
    varied = metrics.ms_ssim_diversity(rng.random((2, 4, 64, 64)).astype(np.float32))
    assert varied["diversity"] > 0.5


def test_group_by_prompt_keeps_prompts_with_enough_samples():
    prompts = ["a", "b", "a", "a", "c", "a", "b", "a"]
    assert metrics.group_by_prompt(prompts, per_prompt=4) == [[0, 2, 3, 5]]


# --- label consistency -----------------------------------------------------------------------------


def test_mask_anatomy_consistency_counts_pixels_outside_the_allowed_region():
    images, anatomy, pathology, findings = toy_batch(6, size=32, seed=0)
    inside = metrics.mask_anatomy_consistency(pathology, anatomy, findings)
    assert inside["nodule"]["mean_inside"] > 0.95 and inside["nodule"]["share_usable"] == 1.0
    # move every nodule mask outside the lungs (onto the spine): nothing inside any more
    moved = np.zeros_like(pathology)
    spine = anatomy[:, anatomy_index("Spine")] & ~(anatomy[:, anatomy_index("Left Lung")] | anatomy[:, anatomy_index("Right Lung")])
    moved[:, pathology_index("nodule")] = spine & pathology[:, pathology_index("nodule")].any(axis=(1, 2))[:, None, None]
    outside = metrics.mask_anatomy_consistency(moved, anatomy, findings)
    assert outside["nodule"]["mean_inside"] == 0.0 and outside["nodule"]["share_usable"] == 0.0
    assert outside["nodule"]["n_masks"] == inside["nodule"]["n_masks"] == 4
    assert "mass" not in inside  # empty masks are not counted


def test_expert_agreement_per_finding_with_unknown_outputs():
    findings = [(Finding(label="effusion"),), (Finding(label="effusion"), Finding(label="nodule")), ()]
    probabilities = np.full((3, len(PATHOLOGIES)), 0.1)
    probabilities[0, pathology_index("effusion")] = 0.9  # detected
    probabilities[1, pathology_index("effusion")] = 0.2  # missed
    probabilities[2, pathology_index("cardiomegaly")] = 0.8  # false alarm
    probabilities[:, pathology_index("nodule")] = np.nan  # this expert does not predict nodules
    result = metrics.expert_agreement(probabilities, findings)
    assert result["effusion"]["detected_rate"] == 0.5 and result["effusion"]["n_prompted"] == 2
    assert result["cardiomegaly"]["detected_rate"] is None and result["cardiomegaly"]["false_alarm_rate"] == pytest.approx(1 / 3)
    assert "nodule" not in result  # unknown, not "missed"
    assert result["all"]["n_prompted"] == 2 and result["all"]["detected_rate"] == 0.5


# --- Dice ------------------------------------------------------------------------------------------


def _masks(*channels: np.ndarray) -> np.ndarray:
    return np.stack(channels)[None]


def test_dice_of_known_masks():
    target = np.zeros((8, 8), bool)
    target[2:6, 2:6] = True  # 16 px
    half = np.zeros((8, 8), bool)
    half[2:6, 2:4] = True  # 8 px inside the target
    scores = metrics.dice_scores(_masks(target, half, np.zeros((8, 8))), _masks(target, target, target))
    np.testing.assert_allclose(scores, [[1.0, 2 * 8 / (8 + 16), 0.0]])


def test_dice_empty_cases():
    empty, blob = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    blob[1:3, 1:3] = True
    # channels: empty-empty (undefined), false positive on empty target (0), missed target (0)
    scores = metrics.dice_scores(_masks(empty, blob, empty), _masks(empty, empty, blob))
    assert math.isnan(scores[0, 0]) and scores[0, 1] == 0.0 and scores[0, 2] == 0.0
    assert metrics.dice_scores(_masks(empty), _masks(empty), empty_value=1.0)[0, 0] == 1.0


def test_dice_per_class_leaves_undefined_cases_out_of_the_means():
    n, size = 4, 8
    target = np.zeros((n, 2, size, size), bool)
    prediction = np.zeros_like(target)
    target[0, 0, :4] = prediction[0, 0, :4] = True  # class a: one perfect sample, three empty-empty
    target[1, 1, :2] = True  # class b: one missed sample, three empty-empty
    result = metrics.dice_per_class(prediction, target, labels=("a", "b"))
    assert result["per_class"] == {"a": 1.0, "b": 0.0} and result["counts"] == {"a": 1, "b": 1}
    assert result["mean"] == 0.5
    none = metrics.dice_per_class(np.zeros_like(target), np.zeros_like(target), labels=("a", "b"))
    assert none["mean"] is None and none["per_class"] == {"a": None, "b": None}


def test_pooled_dice_counts_pixels_over_the_whole_set():
    target = np.zeros((2, 1, 8, 8), bool)
    prediction = np.zeros_like(target)
    target[0, 0, :4] = prediction[0, 0, :4] = True  # 32 px found exactly
    prediction[1, 0, 0, 0] = True  # one stray pixel on an image without the finding
    result = metrics.dice_per_class(prediction, target, labels=("a",))
    assert result["per_class"]["a"] == 0.5  # per image: 1 and 0
    assert result["pooled"]["per_class"]["a"] == pytest.approx(2 * 32 / (33 + 32))  # pooled: barely dented
    assert result["pooled"]["mean"] == result["pooled"]["per_class"]["a"]


# --- mAP -------------------------------------------------------------------------------------------


def _gt(boxes, labels):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "labels": np.asarray(labels, int)}


def _pred(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float), "labels": np.asarray(labels, int)}


def test_box_iou():
    iou = metrics.box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


def test_map_of_perfect_predictions_is_one():
    targets = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1]), _gt([[5, 5, 15, 15]], [0])]
    predictions = [_pred([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 1]), _pred([[5, 5, 15, 15]], [0.7], [0])]
    result = metrics.mean_average_precision(predictions, targets, labels=("a", "b", "c"))
    assert result["mean"] == 1.0 and result["per_class"] == {"a": 1.0, "b": 1.0, "c": None}


def test_map_with_a_missed_and_a_misplaced_prediction():
    targets = [_gt([[0, 0, 10, 10]], [0]), _gt([[0, 0, 10, 10]], [0])]
    # image 0 found; image 1 missed entirely
    missed = metrics.mean_average_precision([_pred([[0, 0, 10, 10]], [0.9], [0]), _pred([], [], [])], targets, labels=("a",))
    assert missed["mean"] == pytest.approx(0.5)
    # a confident wrong box ranked first, then the right ones: precision 1/2 at recall 1/2, 2/3 at recall 1
    ranked = [_pred([[50, 50, 60, 60], [0, 0, 10, 10]], [0.95, 0.9], [0, 0]), _pred([[0, 0, 10, 10]], [0.8], [0])]
    assert metrics.mean_average_precision(ranked, targets, labels=("a",))["mean"] == pytest.approx(0.5 * 2 / 3 + 0.5 * 2 / 3)
    # a box with IoU < 0.5 does not count, and the wrong class does not count either
    shifted = [_pred([[6, 0, 16, 10]], [0.9], [0]), _pred([[0, 0, 10, 10]], [0.9], [1])]
    assert metrics.mean_average_precision(shifted, targets, labels=("a", "b"))["mean"] == 0.0


def test_map_counts_a_duplicate_detection_as_a_false_positive():
    targets = [_gt([[0, 0, 10, 10]], [0])]
    duplicate = [_pred([[0, 0, 10, 10], [0, 0, 10, 9]], [0.9, 0.8], [0, 0])]
    assert metrics.average_precision(duplicate, targets, label=0) == 1.0  # found first, duplicate after recall 1
    duplicate_first = [_pred([[0, 0, 10, 10], [0, 0, 10, 9]], [0.8, 0.9], [0, 0])]
    assert metrics.average_precision(duplicate_first, targets, label=0) == 1.0  # either box matches, the other is the FP


# --- all at once -----------------------------------------------------------------------------------


def test_quality_metrics_records_what_was_skipped():
    images, anatomy, pathology, findings = toy_batch(8, size=32, seed=1)
    result = metrics.quality_metrics(synthetic_pathology=pathology, synthetic_anatomy=anatomy, findings=findings)
    assert "skipped" in result["frechet"] and "skipped" in result["expert_agreement"] and "skipped" in result["diversity"]
    assert result["mask_anatomy"]["nodule"]["mean_inside"] > 0.95
    features = metrics.FeatureSet(gaussian(40, 4, 0), "project:test")
    full = metrics.quality_metrics(features, features, k=5)
    assert full["frechet"]["value"] == pytest.approx(0, abs=1e-8) and full["prdc"]["precision"] == 1.0
    assert full["prdc"]["extractor"] == "project:test"


# --- classifier two-sample test ---------------------------------------------------------------------


def test_c2st_threshold_is_fitted_on_the_training_half_not_fixed_at_zero():
    """Logits that separate the sets perfectly but all sit above 0 (BatchNorm drift in eval mode) must still
    score as separating: the demo once read 0.50 accuracy at a held-out AUROC of 0.999."""
    truth = np.array([False] * 50 + [True] * 50)
    scores = np.where(truth, 6.0, 4.0) + np.linspace(0, 0.5, 100)
    threshold = metrics.fitted_threshold(scores, truth)
    assert 4.5 < threshold < 6.0
    assert ((scores > threshold) == truth).all()
    assert metrics.fitted_threshold(np.array([1.0, 2.0]), np.array([True, True])) < 1.0  # all synthetic
    assert metrics.fitted_threshold(np.array([1.0, 2.0]), np.array([False, False])) >= 2.0  # all real
    noisy = np.array([0.1, 0.2, 0.3, 0.4, 0.5]), np.array([False, True, False, True, True])
    assert ((noisy[0] > metrics.fitted_threshold(*noisy)) == noisy[1]).mean() == 0.8


def test_c2st_cannot_tell_two_draws_of_one_distribution_apart_and_tells_blurred_images():
    """Phantoms against other phantoms: accuracy near chance. Against the same phantoms blurred (what an
    undertrained generator makes): near 1."""
    from scipy.ndimage import gaussian_filter

    from bench.world import phantom_batch

    a, b = phantom_batch(range(0, 80), size=64).images, phantom_batch(range(500, 580), size=64).images
    same = metrics.classifier_two_sample_test(a, b, seed=0, steps=150, width=8)
    blurred = np.stack([gaussian_filter(x, 1.2) for x in b]).astype(np.float32)
    apart = metrics.classifier_two_sample_test(a, blurred, seed=0, steps=150, width=8)
    assert same["n_per_set"] == 80 and same["held_out"] == 80
    assert same["accuracy"] < 0.7, same
    assert apart["accuracy"] > 0.9 and apart["ci95"][0] <= apart["accuracy"] <= apart["ci95"][1], apart
    assert metrics.classifier_two_sample_test(a[:4], b[:4])["skipped"]
