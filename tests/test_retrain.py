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
    data = labelled(range(4), [(Finding(label="effusion", size="large"),)] * 4)
    # an image that *is* its effusion mask: after augmentation the two must still coincide
    channel = pathology_index("effusion")
    probe = retrain.LabelledImages(data.masks[:, channel].astype(np.float32), data.masks)
    transform = retrain.make_augmentation(seed=5, image_size=SIZE)
    images, masks = retrain._batch(probe, np.arange(4), transform)
    moved = (images[:, 0] + 1) / 2  # back from the model range
    assert not torch.equal(masks, torch.from_numpy(data.masks.astype(np.float32)))  # something moved
    agreement = ((moved > 0.5) == (masks[:, channel] > 0.5)).float().mean()
    assert agreement > 0.97
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}  # nearest-neighbour: masks stay binary
    again, _ = retrain._batch(probe, np.arange(4), retrain.make_augmentation(seed=5, image_size=SIZE))
    other, _ = retrain._batch(probe, np.arange(4), retrain.make_augmentation(seed=6, image_size=SIZE))
    assert torch.equal(images, again) and not torch.equal(images, other)


def test_training_stream_is_the_same_in_a_worker_process():
    data = labelled(range(6))
    inline = list(retrain.training_batches(data, 3, 4, seed=9, augment=True, workers=0))
    worker = list(retrain.training_batches(data, 3, 4, seed=9, augment=True, workers=1))
    for (a_img, a_mask), (b_img, b_mask) in zip(inline, worker, strict=True):
        torch.testing.assert_close(a_img, b_img)
        torch.testing.assert_close(a_mask, b_mask)


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
    config = retrain.SegmentationConfig(steps=60, batch_size=8, augment=False, loader_workers=0, learning_rate=1e-2)
    with retrain.torch_threads(1):  # as run_downstream trains: tiny models crawl with threads on a busy machine
        untrained = retrain.evaluate_segmenter(retrain.train_segmenter(data, config.model_copy(update={"steps": 1}), seed=0), data)
        trained = retrain.evaluate_segmenter(retrain.train_segmenter(data, config, seed=0), data)
    assert untrained["per_class"]["effusion"] < 0.2
    assert trained["per_class"]["effusion"] > 0.5


def test_training_is_reproducible_for_a_seed():
    data = labelled(range(8))
    config = retrain.SegmentationConfig(steps=3, batch_size=4)
    a, b = (retrain.train_segmenter(data, config, seed=1) for _ in range(2))
    c = retrain.train_segmenter(data, config, seed=2)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_detector_trains_and_scores_map():
    data = labelled(range(8))
    model = retrain.train_detector(data, retrain.DetectionConfig(steps=2, batch_size=4), seed=0)
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
    config = retrain.DetectionConfig(steps=100, batch_size=8, augment=False, loader_workers=0)
    with retrain.torch_threads(1):
        result = retrain.evaluate_detector(retrain.train_detector(data, config, seed=0), data)
    assert result["per_class"]["cardiomegaly"] > 0.8


# --- the evaluation document -----------------------------------------------------------------------


def test_run_downstream_writes_the_documented_shape():
    real, test, synthetic = labelled(range(40)), labelled(range(1000, 1010)), labelled(range(2000, 2012))
    config = retrain.DownstreamConfig(
        real_fractions=(0.1, 0.25), seeds=2, min_real=2,
        segmentation=retrain.SegmentationConfig(steps=2, batch_size=4, loader_workers=0),
    )
    document = retrain.run_downstream("segmentation", real, test, synthetic, config, {"real": "phantom/v0001"})
    json.dumps(document, allow_nan=True)  # plain JSON types throughout
    assert document["task"] == "segmentation" and document["metric"] == "dice" and document["classes"] == list(PATHOLOGIES)
    assert [(r["real_fraction"], r["train_set"]) for r in document["regimes"]] == [
        (0.1, "real"), (0.1, "real+synthetic"), (0.25, "real"), (0.25, "real+synthetic"), (0.0, "synthetic")]
    rows = {(r["real_fraction"], r["train_set"]): r for r in document["regimes"]}
    assert rows[(0.1, "real")]["n_real"] == 4 and rows[(0.1, "real")]["n_synthetic"] == 0
    assert rows[(0.1, "real+synthetic")]["n_real"] == 4 and rows[(0.1, "real+synthetic")]["n_synthetic"] == 12
    assert rows[(0.0, "synthetic")]["n_real"] == 0 and rows[(0.25, "real")]["n_real"] == 10
    for row in document["regimes"]:
        assert row["seeds"] == 2 and len(row["values"]) == 2 and set(row["per_class"]) == set(PATHOLOGIES)
        assert row["mean"] is None or (0 <= row["mean"] <= 1 and row["std"] >= 0)
    gain = document["gains"][0]
    assert gain["real_fraction"] == 0.1 and set(gain) == {"real_fraction", "real", "real+synthetic", "gain", "gain_std", "improved"}
    assert document["test"] == {"n": 10} and document["synthetic"] == {"n": 12} and document["sources"] == {"real": "phantom/v0001"}
    # without synthetic data: real regimes only, no gains
    alone = retrain.run_downstream("segmentation", real, test, None, config.model_copy(update={"seeds": 1}))
    assert {r["train_set"] for r in alone["regimes"]} == {"real"} and alone["gains"] == [] and alone["synthetic"] is None


def test_mixing_weights_give_the_synthetic_share_of_each_batch():
    weights = retrain.mixing_weights([10, 90], synthetic_share=0.5)
    assert weights.sum() == pytest.approx(1.0) and weights[:10].sum() == pytest.approx(0.5)
    assert retrain.mixing_weights([10, 90], None) is None and retrain.mixing_weights([10], 0.5) is None
    data = labelled(range(4))
    stream = retrain.TrainingBatches(data, steps=50, batch_size=8, seed=0, augment=False, weights=np.array([1.0, 0, 0, 3.0]))
    drawn = np.concatenate([images.numpy().reshape(8, -1) for images, _ in stream])
    # only samples 0 and 3 are ever drawn, about 1:3
    originals = (data.images * 2 - 1).reshape(4, -1)
    matches = [int(np.argmin(np.abs(originals - row).sum(axis=1))) for row in drawn]
    counts = np.bincount(matches, minlength=4)
    assert counts[1] == counts[2] == 0 and 0.15 < counts[0] / len(matches) < 0.35


def test_torch_threads_are_restored():
    before = torch.get_num_threads()
    with retrain.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with retrain.torch_threads(None):
        assert torch.get_num_threads() == before


def test_regime_plan():
    config = retrain.DownstreamConfig(real_fractions=(0.1, 0.05), seeds=1)
    assert [(r.real_fraction, r.train_set) for r in retrain.plan_regimes(config, with_synthetic=True)] == [
        (0.05, "real"), (0.05, "real+synthetic"), (0.1, "real"), (0.1, "real+synthetic"), (0.0, "synthetic")]
    full = config.model_copy(update={"full_real": True, "synthetic_only": False})
    assert [(r.real_fraction, r.train_set) for r in retrain.plan_regimes(full, False)] == [(0.05, "real"), (0.1, "real"), (1.0, "real")]


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
    store(root, "phantom", range(60), splits=["train"] * 40 + ["test"] * 20)
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
    with pytest.raises(ValueError, match="no samples"):
        retrain.load_labelled(real, "val")


def test_evaluate_flow_writes_the_documents_and_the_report(stored_root, tmp_path, prefect_harness):
    from flows.evaluate import EvaluateConfig, EvaluateParameters, MetricsConfig, evaluate_flow
    from test_report import Page

    config = EvaluateConfig(
        tasks=("segmentation", "detection"), real_fractions=(0.1,), seeds=2, min_real=2,
        segmentation=retrain.SegmentationConfig(steps=2, batch_size=4, loader_workers=0),
        detection=retrain.DetectionConfig(steps=1, batch_size=2, loader_workers=0),
        metrics=MetricsConfig(max_images=20, k=3),
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
        assert [r["train_set"] for r in document["regimes"]] == ["real", "real+synthetic", "synthetic"]
        assert document["synthetic"] == {"n": 20} and document["test"] == {"n": 20} and document["real_train"] == {"n": 40}
        assert document["sources"]["real"] == "phantom/v0001" and document["sources"]["synthetic"] == "synthetic/v0001"
    assert set(result.gains) == {"segmentation", "detection"}
    quality = json.loads((out / "quality_metrics.json").read_text())
    # no expert registered and no xrv weights here: feature metrics are skipped with the reason
    assert "skipped" in quality["frechet"] and "skipped" in quality["fid"]
    assert quality["diversity"]["prompts"] >= 1 and quality["mask_anatomy"]["all"]["mean_inside"] > 0.9
    page = Page((out / "evaluation.html").read_text())
    assert "downstream-segmentation" in page.tables and "downstream-detection" in page.tables
    assert len(page.png_images()) == 4


def test_evaluate_flow_uses_a_registered_classifier_for_feature_metrics(stored_root, tmp_path, prefect_harness):
    from aurad_models.experts.trained import PATHOLOGY_CLASSIFIER_KIND, PathologyClassifier
    from aurad_models.registry import register_model
    from flows.evaluate import EvaluateConfig, EvaluateParameters, MetricsConfig, evaluate_flow

    registry = tmp_path / "registry"
    PathologyClassifier(image_size=SIZE).save_pretrained(tmp_path / "classifier")
    record = register_model(registry, PATHOLOGY_CLASSIFIER_KIND, tmp_path / "classifier", {}, {})
    config = EvaluateConfig(tasks=(), metrics=MetricsConfig(max_images=20, k=3))
    root = tmp_path / "root"
    import shutil

    shutil.copytree(stored_root, root)
    shutil.copytree(registry / "models", root / "models")
    result = evaluate_flow(EvaluateParameters(root=str(root), evaluate=config))
    quality_file = root / "synthetic" / "v0001" / "quality" / "quality_metrics.json"
    assert result.output.endswith("quality") and quality_file.is_file()  # default: into the synthetic version
    quality = json.loads(quality_file.read_text())
    assert quality["frechet"]["metric"] == "FD" and quality["frechet"]["extractor"] == f"project:{record.id}"
    assert quality["frechet"]["value"] >= 0 and 0 <= quality["prdc"]["precision"] <= 1
    assert "all" in quality["expert_agreement"]


def test_evaluate_profiles_load_and_round_trip_through_yaml():
    import yaml

    from flows.config import load_config
    from flows.evaluate import EvaluateConfig

    demo, quality = load_config("demo").evaluate.evaluate, load_config("quality").evaluate.evaluate
    assert demo.tasks == ("segmentation",) and demo.real_fractions == (0.05, 0.10) and demo.synthetic_only
    assert quality.tasks == ("segmentation", "detection") and quality.seeds == 3
    assert quality.segmentation.steps == 1000 and quality.real_fractions == (0.05, 0.10, 0.25)
    for section in (demo, quality):  # what a profile's `evaluate:` section holds validates back to the same
        assert EvaluateConfig.model_validate(yaml.safe_load(yaml.safe_dump(section.model_dump(mode="json")))) == section
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        EvaluateConfig.model_validate({"segmentation": {"stepz": 10}})  # a typo is an error, not ignored
