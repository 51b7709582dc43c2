"""Downstream retraining: data plumbing, augmentation, a segmenter that learns, the evaluation document,
and the evaluate flow end to end on small stored datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aurad_models.findings import Finding
from aurad_models.phantom import PhantomConfig, generate_phantoms
from aurad_models.vocabulary import PATHOLOGIES, pathology_index
from tasks import retrain

SIZE = 64


def labelled(seeds, findings=None) -> retrain.LabelledImages:
    batch = generate_phantoms(list(seeds), PhantomConfig(size=SIZE), findings)
    return retrain.LabelledImages(batch.images, batch.pathology)


# --- data ------------------------------------------------------------------------------------------


def test_real_subsets_are_seeded_nested_and_never_too_small():
    a5, a10 = retrain.real_subset(400, 0.05, seed=1), retrain.real_subset(400, 0.10, seed=1)
    assert len(a5) == 20 and len(a10) == 40 and set(a5) <= set(a10)
    np.testing.assert_array_equal(a5, retrain.real_subset(400, 0.05, seed=1))
    assert not np.array_equal(a5, retrain.real_subset(400, 0.05, seed=2))
    assert len(retrain.real_subset(40, 0.01, seed=1, min_count=4)) == 4
    assert len(retrain.real_subset(3, 0.5, seed=1, min_count=4)) == 3
    with pytest.raises(ValueError, match="fraction"):
        retrain.real_subset(10, 0.0, seed=1)


def test_boxes_from_mask_components():
    masks = np.zeros((3, 16, 16), np.uint8)
    masks[0, 2:5, 3:9] = 1  # one nodule box
    masks[1, 10:14, 1:4] = 1  # two separate components of class 1
    masks[1, 10:12, 10:15] = 1
    masks[2, 0, 0] = 1  # speckle: below min_area
    found = retrain.boxes_from_masks(masks, min_area=4)
    order = np.lexsort((found["boxes"][:, 0], found["labels"]))
    np.testing.assert_array_equal(found["labels"][order], [0, 1, 1])
    np.testing.assert_array_equal(found["boxes"][order], [[3, 2, 9, 5], [1, 10, 4, 14], [10, 10, 15, 12]])
    empty = retrain.boxes_from_masks(np.zeros((7, 8, 8), np.uint8))
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_augmentation_moves_image_and_masks_together_and_is_seeded():
    from aurad_models.augmentation import AugmentationConfig, PairedAugmentation

    data = labelled(range(4), [(Finding(label="effusion", size="large"),)] * 4)
    # an image that *is* its effusion mask: after augmentation the two must still coincide
    channel = pathology_index("effusion")
    probe = torch.from_numpy(data.masks[:, channel : channel + 1].astype(np.float32))
    masks = torch.from_numpy(data.masks.astype(np.float32))
    config = AugmentationConfig(affine_prob=1.0, rotate_degrees=8, scale=0.08, translate_fraction=0.05, noise_prob=0.0,
                                contrast_prob=0.0)
    images, moved = PairedAugmentation(config, seed=5)(probe, masks)
    assert not torch.equal(moved, masks)  # something moved
    agreement = ((images[:, 0] > 0.5) == (moved[:, channel] > 0.5)).float().mean()
    assert agreement > 0.97
    assert set(torch.unique(moved).tolist()) <= {0.0, 1.0}  # nearest-neighbour: masks stay binary
    again, _ = PairedAugmentation(config, seed=5)(probe, masks)
    other, _ = PairedAugmentation(config, seed=6)(probe, masks)
    assert torch.equal(images, again) and not torch.equal(images, other)
    with pytest.raises(ValueError, match="masks must be"):
        PairedAugmentation(config, seed=5)(probe, masks[:2])


def test_augmentation_grid_is_monais_affine_transform_pixel_for_pixel():
    """One grid shared by image and masks must sample exactly what MONAI's AffineTransform (row, column
    affines, reverse indexing) samples for each of them."""
    from monai.networks.layers import AffineTransform

    from aurad_models.augmentation import AugmentationConfig, PairedAugmentation

    data = labelled(range(4), [(Finding(label="nodule", side="left", zone="upper"), Finding(label="cardiomegaly"))] * 4)
    images, masks = torch.from_numpy(data.images)[:, None], torch.from_numpy(data.masks.astype(np.float32))
    config = AugmentationConfig(affine_prob=1.0, rotate_degrees=8, scale=0.08, translate_fraction=0.05, noise_prob=0.0,
                                contrast_prob=0.0)
    ours_images, ours_masks = PairedAugmentation(config, seed=9)(images, masks)
    theta = PairedAugmentation(config, seed=9)._theta(len(images))
    image_warp = AffineTransform(normalized=True, mode="bilinear", padding_mode="border", align_corners=False)
    mask_warp = AffineTransform(normalized=True, mode="nearest", padding_mode="zeros", align_corners=False)
    assert torch.equal(ours_masks, mask_warp(masks, theta))
    assert torch.equal(ours_images, image_warp(images, theta).clamp(0, 1))
    assert not torch.equal(ours_masks, masks)


@pytest.mark.parametrize("batch_dice", [True, False])
def test_the_fused_segmentation_loss_matches_monai_dice_plus_torch_bce_in_value_and_gradient(batch_dice):
    from monai.losses import DiceLoss

    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(4, len(PATHOLOGIES), 16, 16, generator=generator) * 6).double()
    logits[0, 0, :2] = torch.tensor([-120.0, 120.0]).double()[:, None]  # saturated pixels stay finite
    target = (torch.rand(logits.shape, generator=generator) > 0.9).double()
    target[:, 3] = 0  # a class absent from the batch
    dice = DiceLoss(sigmoid=True, batch=batch_dice, smooth_nr=1e-5, smooth_dr=1e-5)
    reference_input = logits.clone().requires_grad_()
    reference = dice(reference_input, target) + torch.nn.functional.binary_cross_entropy_with_logits(reference_input, target)
    reference.backward()
    fused_input = logits.clone().requires_grad_()
    fused = retrain.multilabel_segmentation_loss(batch_dice)(fused_input, target)
    fused.backward()
    assert torch.isfinite(fused) and abs(fused.item() - reference.item()) < 1e-10
    torch.testing.assert_close(fused_input.grad, reference_input.grad, rtol=1e-8, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: retrain.multilabel_segmentation_loss(batch_dice)(x, target[:1, :2, :4, :4]),
                                    logits[:1, :2, :4, :4].clone().div(6).requires_grad_())


def test_seeded_init_is_reproducible_and_leaves_the_global_rng_alone():
    config = retrain.SegmentationConfig()
    state = torch.random.get_rng_state()
    a = retrain.seeded_init(retrain.build_segmenter(config), 3)
    after_build = torch.random.get_rng_state()  # building draws from the global RNG (torch's own init) ...
    b = retrain.seeded_init(retrain.build_segmenter(config), 3)
    c = retrain.seeded_init(retrain.build_segmenter(config), 4)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=name)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))
    # ... but our re-initialisation itself does not: same weights whatever the global state was
    assert not torch.equal(state, after_build)


# --- training --------------------------------------------------------------------------------------


def test_a_tiny_segmenter_learns_effusions():
    """Trained on 24 phantoms with a large effusion, the UNet outlines them: Dice on the training images
    from ~0 at initialisation to above 0.5."""
    findings = [(Finding(label="effusion", size="large"),)] * 24
    data = labelled(range(24), findings)
    config = retrain.SegmentationConfig(max_steps=80, batch_size=8, augment=False, learning_rate=1e-2)
    with retrain.torch_threads(1):  # as run_downstream trains: tiny models crawl with threads on a busy machine
        untrained = retrain.evaluate_segmenter(retrain.train_segmenter(data, config.model_copy(update={"max_steps": 1}), seed=0), data)
        trained = retrain.evaluate_segmenter(retrain.train_segmenter(data, config, seed=0), data)
    assert untrained["per_class"]["effusion"] < 0.2
    assert trained["per_class"]["effusion"] > 0.5


def test_the_segmentation_loss_punishes_false_alarms_on_pixels_with_no_finding():
    """Independent sigmoids: a pixel with no finding that the model calls positive costs BCE. MONAI's
    DiceCELoss (softmax CE across channels) gives such pixels no CE term at all, so both predictions below
    would cost about the same Dice and nothing else."""
    loss = retrain.multilabel_segmentation_loss(batch_dice=True)
    empty = torch.zeros(4, len(PATHOLOGIES), 16, 16)
    alarm, quiet = torch.full_like(empty, 5.0).requires_grad_(), torch.full_like(empty, -5.0)
    assert loss(alarm, empty).item() > loss(quiet, empty).item() + 4.0
    loss(alarm, empty).backward()
    assert alarm.grad is not None and alarm.grad.abs().min() > 0  # every pixel is pushed down
    target = empty.clone()
    target[:, 0, 4:8, 4:8] = 1.0
    right = torch.where(target > 0, 5.0, -5.0)
    assert loss(right, target).item() + 4.0 < loss(-right, target).item()


def test_validation_picks_the_best_checkpoint_and_stops_early():
    findings = [(Finding(label="effusion", size="large"),)] * 16
    data, val = labelled(range(16), findings), labelled(range(100, 108), findings[:8])
    config = retrain.SegmentationConfig(max_steps=400, eval_every=10, patience=2, batch_size=8, augment=False, learning_rate=1e-2)
    task = retrain.downstream_model("segmentation", retrain.DownstreamConfig(segmentation=config))
    with retrain.torch_threads(1):
        result = retrain.fit(task, data, val, seed=0)
    history = [v for v in result.val_history if v is not None]
    assert result.steps < 400  # stopped: `patience` checks without a better validation score
    assert result.best_step % 10 == 0 and result.steps - result.best_step == 2 * 10
    assert task.score(result.model, val)["mean"] == pytest.approx(max(history))  # the best checkpoint is kept


def test_training_is_reproducible_for_a_seed():
    data = labelled(range(8))
    config = retrain.SegmentationConfig(max_steps=3, batch_size=4)
    a, b = (retrain.train_segmenter(data, config, seed=1) for _ in range(2))
    c = retrain.train_segmenter(data, config, seed=2)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_detector_trains_and_scores_map():
    data = labelled(range(8))
    model = retrain.train_detector(data, retrain.DetectionConfig(max_steps=2, batch_size=4), seed=0)
    found = retrain.predict_boxes(model, data.images[:2])
    assert len(found) == 2 and found[0]["boxes"].shape[1:] == (4,)
    assert all(((f["labels"] >= 0) & (f["labels"] < len(PATHOLOGIES))).all() for f in found)
    result = retrain.evaluate_detector(model, data)
    assert set(result["per_class"]) == set(PATHOLOGIES) and 0.0 <= result["mean"] <= 1.0


@pytest.mark.slow
def test_a_tiny_detector_learns_cardiomegaly():
    """Trained on 24 phantoms with marked cardiomegaly, the detector finds the heart box: AP@0.5 on the
    training images above 0.8 (it reaches ~1.0 in 100 steps; ~13 core-seconds)."""
    findings = [(Finding(label="cardiomegaly", size="large"),)] * 24
    data = labelled(range(24), findings)
    config = retrain.DetectionConfig(max_steps=100, batch_size=8, augment=False)
    with retrain.torch_threads(1):
        result = retrain.evaluate_detector(retrain.train_detector(data, config, seed=0), data)
    assert result["per_class"]["cardiomegaly"] > 0.8


# --- regimes, statistics, the evaluation document ---------------------------------------------------


def test_oracle_takes_real_samples_outside_the_subset_with_the_synthetic_class_mix():
    rng = np.random.default_rng(0)
    present = rng.random((200, 7)) < 0.2
    subset = retrain.real_subset(200, 0.1, seed=1)
    pool = np.setdiff1d(np.arange(200), subset)
    wanted = present[rng.choice(pool, 60, replace=False)]  # a synthetic set whose label sets all occur in the pool
    oracle = retrain.oracle_subset(present, subset, wanted, seed=3)
    assert len(oracle) == 60 and len(set(oracle)) == 60 and not set(oracle) & set(subset)
    key = lambda rows: sorted(map(tuple, rows.astype(int)))  # noqa: E731
    assert key(present[oracle]) == key(wanted)  # the same label sets, one for one
    np.testing.assert_array_equal(oracle, retrain.oracle_subset(present, subset, wanted, seed=3))
    # more wanted than the pool holds: the whole pool, nothing twice
    assert len(retrain.oracle_subset(present, subset, np.repeat(wanted, 10, axis=0), seed=3)) == 200 - len(subset)


def test_paired_comparison_is_a_paired_t_test():
    from scipy import stats

    base = [0.10, 0.12, 0.09, 0.11, 0.13, 0.10, 0.08, 0.12]
    better = [b + d for b, d in zip(base, [0.03, 0.05, 0.04, 0.02, 0.04, 0.03, 0.05, 0.04])]
    out = retrain.paired_comparison(base, better)
    assert out["gain"] == pytest.approx(0.0375) and out["significant"] and out["seeds"] == 8
    assert out["p_value"] == pytest.approx(stats.ttest_rel(better, base).pvalue)
    assert out["ci95"][0] < out["gain"] < out["ci95"][1]
    noise = retrain.paired_comparison(base, [b + d for b, d in zip(base, [0.02, -0.03, 0.01, -0.02, 0.03, -0.01, 0.0, 0.01])])
    assert not noise["significant"] and noise["p_value"] > 0.5
    assert not retrain.paired_comparison(base[:2], better[:2])["significant"]  # too few seeds to call it


def test_sample_weights_give_the_added_share_of_each_batch():
    weights = retrain.sample_weights([10, 90], added_share=0.5)
    assert weights.sum() == pytest.approx(1.0) and weights[:10].sum() == pytest.approx(0.5)
    assert retrain.sample_weights([10, 90], None) is None and retrain.sample_weights([10], 0.5) is None


def test_torch_threads_are_restored():
    before = torch.get_num_threads()
    with retrain.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with retrain.torch_threads(None):
        assert torch.get_num_threads() == before


def test_fidelity_summary_counts_masks_a_real_segmenter_re_finds():
    masks = np.zeros((4, 7, 8, 8), np.uint8)
    masks[0, 3, 4:, :] = 1  # re-found exactly
    masks[1, 3, 4:, :] = 1  # missed
    masks[2, 0, 1:3, 1:3] = 1  # half re-found
    predicted = masks.copy()
    predicted[1] = 0
    predicted[2, 0, 1:3, 1:2] = 0
    out = retrain.fidelity_summary(predicted, masks, useful_dice=0.5)
    assert out["samples_with_findings"] == 3 and out["useful_share"] == pytest.approx(2 / 3)
    assert out["pooled_per_class"]["effusion"] == pytest.approx(2 * 32 / (32 + 64))


def test_run_downstream_writes_the_documented_shape():
    real, val, test, synthetic = labelled(range(40)), labelled(range(500, 506)), labelled(range(1000, 1010)), labelled(range(2000, 2012))
    config = retrain.DownstreamConfig(
        real_fractions=(0.1, 0.25), seeds=3, min_real=2, workers=0, full_real_seeds=1, pretrain_fractions=(0.1,),
        segmentation=retrain.SegmentationConfig(max_steps=4, eval_every=2, batch_size=4),
    )
    document = retrain.run_downstream("segmentation", real, test, synthetic, config, {"real": "phantom/v0001"}, real_val=val)
    json.dumps(document, allow_nan=True)  # plain JSON types throughout
    assert document["task"] == "segmentation" and document["metric"] == "dice" and document["classes"] == list(PATHOLOGIES)
    assert [(r["real_fraction"], r["train_set"]) for r in document["regimes"]] == [
        (0.1, "real"), (0.1, "real+synthetic"), (0.1, "real+oracle"), (0.1, "synthetic->real"),
        (0.25, "real"), (0.25, "real+synthetic"), (0.25, "real+oracle"), (0.0, "synthetic"), (1.0, "full-real")]
    rows = {(r["real_fraction"], r["train_set"]): r for r in document["regimes"]}
    assert rows[(0.1, "real")]["n_real"] == 4 and rows[(0.1, "real")]["n_added"] == 0
    assert rows[(0.1, "real+synthetic")]["n_real"] == 4 and rows[(0.1, "real+synthetic")]["n_synthetic"] == 12
    assert rows[(0.1, "real+oracle")]["n_added"] == 12 and rows[(0.1, "real+oracle")]["n_synthetic"] == 0
    assert rows[(0.0, "synthetic")]["n_real"] == 0 and rows[(0.25, "real")]["n_real"] == 10
    assert rows[(1.0, "full-real")]["n_real"] == 40 and rows[(1.0, "full-real")]["seeds"] == 1
    for row in document["regimes"]:
        assert len(row["values"]) == row["seeds"] and set(row["per_class"]) == set(PATHOLOGIES)
        assert row["mean"] is None or (0 <= row["mean"] <= 1 and row["std"] >= 0)
        assert all(1 <= b <= s <= 4 for b, s in zip(row["best_steps"], row["steps"]))
    assert {(c["real_fraction"], c["train_set"]) for c in document["comparisons"]} == {
        (0.1, "real+synthetic"), (0.1, "real+oracle"), (0.1, "synthetic->real"), (0.25, "real+synthetic"), (0.25, "real+oracle")}
    gain = document["gains"][0]
    assert gain["real_fraction"] == 0.1 and gain["seeds"] == 3
    assert {"gain", "se", "p_value", "significant", "oracle_gain", "oracle_share", "pretrain_gain"} <= set(gain)
    assert document["fidelity"]["synthetic"]["samples_with_findings"] > 0 and "real_test" in document["fidelity"]
    assert document["test"] == {"n": 10} and document["val"] == {"n": 6} and document["synthetic"]["n"] == 12
    assert document["sources"] == {"real": "phantom/v0001"}
    # without synthetic data: real regimes only, no comparisons
    alone = retrain.run_downstream("segmentation", real, test, None, config.model_copy(update={"seeds": 1, "full_real_seeds": 0}),
                                   real_val=val)
    assert {r["train_set"] for r in alone["regimes"]} == {"real"} and alone["gains"] == [] and alone["synthetic"] is None


def test_run_downstream_is_the_same_in_worker_processes():
    real, val, test, synthetic = labelled(range(24)), labelled(range(500, 504)), labelled(range(1000, 1006)), labelled(range(2000, 2006))
    config = retrain.DownstreamConfig(real_fractions=(0.25,), seeds=2, min_real=2, full_real_seeds=0, workers=0,
                                      segmentation=retrain.SegmentationConfig(max_steps=3, eval_every=1, batch_size=4))
    inline = retrain.run_downstream("segmentation", real, test, synthetic, config, real_val=val)
    spread = retrain.run_downstream("segmentation", real, test, synthetic, config.model_copy(update={"workers": 2}), real_val=val)
    strip = lambda doc: [(r["train_set"], r["values"], r["best_steps"]) for r in doc["regimes"]]  # noqa: E731
    assert strip(inline) == strip(spread)


# --- the flow, end to end on stored datasets ---------------------------------------------------------


def store(root, name: str, seeds, splits=None, accepted=None, prompts_repeat: int = 1) -> None:
    """Publish phantoms as a dataset version: `splits` per sample, `accepted` flags (default all)."""
    from aurad_models.pixels import to_stored
    from storage import ArraySpec, stage_version

    seeds = list(seeds)
    # groups of `prompts_repeat` samples share their findings (and so their prompt), as a build's
    # several samples per prompt do
    base = generate_phantoms(seeds[::prompts_repeat], PhantomConfig(size=SIZE))
    findings = [f for f in base.findings for _ in range(prompts_repeat)][: len(seeds)]
    batch = generate_phantoms(seeds, PhantomConfig(size=SIZE), findings)
    n = len(seeds)
    rows = []
    for i in range(n):
        ok = True if accepted is None else bool(accepted[i])
        rows.append({
            "sample_id": f"{name}-{i:04d}", "split": None if splits is None else splits[i], "prompt": batch.reports[i],
            "findings": [f.as_record() for f in batch.findings[i]], "seed": seeds[i], "attempt_seeds": [seeds[i]],
            "attempt_reject_reasons": [None if ok else "classifier"], "source": None, "mask_source": "exact",
            "mask_model_id": None, "image_model_id": None, "scores": {}, "accepted": ok,
            "reject_reason": None if ok else "classifier", "metadata": {},
        })
    staged = stage_version(root, name, f"{name}-build", n, n, ArraySpec(image_size=SIZE))
    staged.write_shard(0, to_stored(batch.images), batch.pathology, batch.anatomy, rows)
    staged.publish({"config_hash": name})


@pytest.fixture(scope="module")
def stored_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-root")
    store(root, "phantom", range(66), splits=["train"] * 40 + ["test"] * 20 + ["val"] * 6)
    store(root, "synthetic", range(5000, 5024), accepted=[i % 6 != 5 for i in range(24)], prompts_repeat=4)
    return root


def test_load_labelled_reads_splits_and_accepted_samples(stored_root):
    from storage import open_dataset

    real, synthetic = open_dataset(stored_root, "phantom"), open_dataset(stored_root, "synthetic")
    train = retrain.load_labelled(real, "train", accepted_only=False)
    assert len(train) == 40 and train.images.dtype == np.float32 and 0 <= train.images.min() and train.images.max() <= 1
    assert len(retrain.load_labelled(synthetic, None, accepted_only=True)) == 20
    expected = generate_phantoms(list(range(40, 60)), PhantomConfig(size=SIZE))
    np.testing.assert_array_equal(retrain.load_labelled(real, "test", accepted_only=False).masks, expected.pathology)
    assert len(retrain.load_labelled(real, "val", accepted_only=False)) == 6
    with pytest.raises(ValueError, match="no samples"):
        retrain.load_labelled(real, "unlabelled")


def test_evaluate_flow_writes_the_documents_and_the_report(stored_root, tmp_path, prefect_harness):
    from flows.evaluate import evaluate_flow
    from tasks.evaluate import EvaluateConfig, EvaluateParameters, MetricsConfig
    from test_report import Page

    config = EvaluateConfig(
        tasks=("segmentation", "detection"), real_fractions=(0.1,), seeds=2, min_real=2, workers=0, full_real_seeds=1,
        oracle=False, pretrain_fractions=(),
        segmentation=retrain.SegmentationConfig(max_steps=2, eval_every=1, batch_size=4),
        detection=retrain.DetectionConfig(max_steps=1, batch_size=2),
        metrics=MetricsConfig(max_images=20, k=3, c2st_steps=5),
    )
    params = EvaluateParameters(root=str(stored_root), output=str(tmp_path / "out"), evaluate=config)
    result = evaluate_flow(params)
    out = tmp_path / "out"
    assert sorted(result.files) == sorted(["evaluation.json", "evaluation_detection.json", "quality_metrics.json", "evaluation.html"])
    segmentation = json.loads((out / "evaluation.json").read_text())
    detection = json.loads((out / "evaluation_detection.json").read_text())
    assert (segmentation["task"], segmentation["metric"]) == ("segmentation", "dice")
    assert (detection["task"], detection["metric"]) == ("detection", "map50")
    for document in (segmentation, detection):
        assert [r["train_set"] for r in document["regimes"]] == ["real", "real+synthetic", "synthetic", "full-real"]
        assert document["synthetic"]["n"] == 20 and document["test"] == {"n": 20} and document["real_train"] == {"n": 40}
        assert document["val"] == {"n": 6}
        assert document["sources"]["real"] == "phantom/v0001" and document["sources"]["synthetic"] == "synthetic/v0001"
    assert set(result.gains) == {"segmentation", "detection"}
    quality = json.loads((out / "quality_metrics.json").read_text())
    # no expert registered and no xrv weights here: feature metrics are skipped with the reason
    assert "skipped" in quality["frechet"] and "skipped" in quality["fid"]
    assert quality["diversity"]["prompts"] >= 1 and quality["mask_anatomy"]["all"]["mean_inside"] > 0.9
    assert 0 <= quality["c2st"]["accuracy"] <= 1 and quality["c2st"]["n_per_set"] == 20
    locations = quality["locations"]["rows"]  # both datasets' findings against the real annotations
    assert {r["dataset"] for r in locations} == {"synthetic (accepted)", "real test split"}
    page = Page((out / "evaluation.html").read_text())
    assert "downstream-segmentation" in page.tables and "downstream-detection" in page.tables
    assert "locations-table" in page.tables
    assert len(page.png_images()) == 4

    # the same settings and versions again: reused, nothing retrained or rewritten; rerun=True makes it again
    written = (out / "evaluation.json").stat().st_mtime_ns
    again = evaluate_flow(params)
    assert again.headline == result.headline and sorted(again.files) == sorted(result.files)
    assert (out / "evaluation.json").stat().st_mtime_ns == written
    evaluate_flow(params, rerun=True)
    assert (out / "evaluation.json").stat().st_mtime_ns != written


def test_evaluate_flow_uses_a_registered_classifier_for_feature_metrics(stored_root, tmp_path, prefect_harness):
    from aurad_models.experts.trained import PATHOLOGY_CLASSIFIER_KIND, PathologyClassifier
    from aurad_models.registry import register_model
    from flows.evaluate import evaluate_flow
    from tasks.evaluate import EvaluateConfig, EvaluateParameters, MetricsConfig

    registry = tmp_path / "registry"
    PathologyClassifier(image_size=SIZE).save_pretrained(tmp_path / "classifier")
    record = register_model(registry, PATHOLOGY_CLASSIFIER_KIND, tmp_path / "classifier", {}, {})
    config = EvaluateConfig(tasks=(), metrics=MetricsConfig(max_images=20, k=3, c2st_steps=5))
    root = tmp_path / "root"
    import shutil

    shutil.copytree(stored_root, root)
    shutil.copytree(registry / "models", root / "models")
    version_dir = root / "synthetic" / "v0001"
    before = {p: p.stat().st_mtime_ns for p in version_dir.rglob("*")}
    result = evaluate_flow(EvaluateParameters(root=str(root), evaluate=config))
    # beside the published version, in a run folder of its own; nothing inside the version is written
    runs = root / "synthetic" / "_evaluations" / "v0001"
    quality_file = runs / "e0001" / "quality_metrics.json"
    assert result.output.endswith("_evaluations/v0001/e0001") and quality_file.is_file()
    assert {p: p.stat().st_mtime_ns for p in version_dir.rglob("*")} == before
    record_file = json.loads((runs / "e0001" / "evaluation-record.json").read_text())
    assert record_file["synthetic"] == "synthetic/v0001" and record_file["files"] == ["quality_metrics.json"]
    assert evaluate_flow(EvaluateParameters(root=str(root), evaluate=config)).output == result.output  # reused
    first_written = quality_file.stat().st_mtime_ns
    rerun = evaluate_flow(EvaluateParameters(root=str(root), evaluate=config), rerun=True)
    assert rerun.output.endswith("e0002") and quality_file.stat().st_mtime_ns == first_written  # a new run, a new folder
    index = (runs / "index.html").read_text()
    assert index.index(">e0002<") < index.index(">e0001<")  # newest first
    quality = json.loads(quality_file.read_text())
    assert quality["frechet"]["metric"] == "FD" and quality["frechet"]["extractor"] == f"project:{record.id}"
    assert quality["frechet"]["value"] >= 0 and 0 <= quality["prdc"]["precision"] <= 1
    assert "all" in quality["expert_agreement"]


def test_evaluate_profiles_load_and_round_trip_through_yaml():
    import yaml

    from flows.config import load_config
    from tasks.evaluate import EvaluateConfig

    demo, quality = load_config("demo").evaluate.evaluate, load_config("quality").evaluate.evaluate
    assert demo.tasks == ("segmentation",) and demo.real_fractions == (0.05, 0.10) and demo.synthetic_only
    assert demo.seeds == 8 and demo.oracle and demo.full_real_seeds >= 1  # power, the oracle and the ceiling
    assert quality.tasks == ("segmentation", "detection") and quality.seeds == 8
    assert quality.segmentation.max_steps == 2000 and quality.segmentation.channels == (16, 32, 64, 128)
    for section in (demo, quality):  # what a profile's `evaluate:` section holds validates back to the same
        assert EvaluateConfig.model_validate(yaml.safe_load(yaml.safe_dump(section.model_dump(mode="json")))) == section
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        EvaluateConfig.model_validate({"segmentation": {"stepz": 10}})  # a typo is an error, not ignored


def test_a_fixed_labelled_subset_is_every_seeds_scarce_subset_and_lies_in_the_larger_ones():
    labelled = retrain.LabelledSubset(fraction=0.05, seed=7)
    config = retrain.DownstreamConfig(labelled_subset=labelled, min_real=2)
    core = labelled.indices(400)
    for seed in (1, 2, 3):
        np.testing.assert_array_equal(retrain._subset(400, 0.05, seed, config), core)
        larger = retrain._subset(400, 0.10, seed, config)
        assert len(larger) == 40 and set(core) <= set(larger)
    assert not np.array_equal(retrain._subset(400, 0.10, 1, config), retrain._subset(400, 0.10, 2, config))
