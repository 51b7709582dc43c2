"""The project-trained experts: models, save/load, training on phantoms, augmentation, registry, flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aurad_models.experts import (
    ExpertChoice,
    load_anatomy_expert,
    load_pathology_expert,
)
from aurad_models.experts.trained import (
    ANATOMY_SEGMENTER_KIND,
    LESION_SEGMENTER_KIND,
    PATHOLOGY_CLASSIFIER_KIND,
    AnatomySegmenter,
    LesionSegmenter,
    PathologyClassifier,
    TrainedAnatomyExpert,
    TrainedPathologyExpert,
    operating_point_norm,
    operating_points,
)
from aurad_models.registry import RegistryError, register_model
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES, anatomy_index
from aurad_models.augmentation import AugmentationConfig, PairedAugmentation
from bench.world import cycle_findings, phantom_batch, write_phantom_version
from tasks.experts import (
    ClassifierTrainingConfig,
    ExpertData,
    ExpertsTrainingConfig,
    LesionSegmenterTrainingConfig,
    SegmenterTrainingConfig,
    evaluate_anatomy_segmenter,
    labels_from_findings,
    load_expert_data,
    train_anatomy_segmenter,
    train_pathology_classifier,
)

NO_AUGMENTATION = AugmentationConfig(affine_prob=0, noise_prob=0, contrast_prob=0)


@pytest.fixture(scope="module")
def phantoms():
    return phantom_batch(range(16), size=64, findings=cycle_findings(16))


def _data(batch) -> ExpertData:
    return ExpertData(batch.images, batch.anatomy, labels_from_findings(batch.findings))


def _tiny_classifier() -> PathologyClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PathologyClassifier(init_features=8, growth_rate=4, block_config=(2, 2), operating_points=[0.3] * 7)


def _tiny_segmenter() -> AnatomySegmenter:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AnatomySegmenter(channels=(8, 16, 32), strides=(2, 2), num_res_units=0)


# --- models and their directories ----------------------------------------------------------------


def test_classifier_save_load_round_trip(tmp_path, phantoms):
    model = _tiny_classifier()
    model.save_pretrained(tmp_path / "classifier")
    loaded = PathologyClassifier.from_pretrained(tmp_path / "classifier")
    assert loaded.config == model.config and loaded.operating_points == (0.3,) * 7
    before = TrainedPathologyExpert(model).predict(phantoms.images)
    after = TrainedPathologyExpert(loaded).predict(phantoms.images)
    np.testing.assert_array_equal(before, after)
    assert before.shape == (16, len(PATHOLOGIES)) and np.all((before >= 0) & (before <= 1))
    features = TrainedPathologyExpert(loaded).features(phantoms.images)
    assert features.shape[0] == 16 and features.ndim == 2
    assert {p.name for p in (tmp_path / "classifier").iterdir()} == {"config.json", "model.safetensors", "metadata.json"}


def test_segmenter_save_load_round_trip_and_any_input_size(tmp_path, phantoms):
    model = _tiny_segmenter()
    model.save_pretrained(tmp_path / "segmenter")
    loaded = AnatomySegmenter.from_pretrained(tmp_path / "segmenter")
    before = TrainedAnatomyExpert(model).segment(phantoms.images)
    after = TrainedAnatomyExpert(loaded).segment(phantoms.images)
    np.testing.assert_array_equal(before, after)
    resized = TrainedAnatomyExpert(loaded).segment(phantoms.images[:2, ::2, ::2])  # 32 px in, 32 px out
    assert resized.shape == (2, len(ANATOMY_STRUCTURES), 32, 32) and resized.dtype == np.uint8


def test_registered_experts_load_through_the_choice(tmp_path, phantoms):
    classifier, segmenter = _tiny_classifier(), _tiny_segmenter()
    classifier.save_pretrained(tmp_path / "c")
    segmenter.save_pretrained(tmp_path / "s")
    c_record = register_model(tmp_path, PATHOLOGY_CLASSIFIER_KIND, tmp_path / "c", {"auroc_mean": 0.5}, {})
    s_record = register_model(tmp_path, ANATOMY_SEGMENTER_KIND, tmp_path / "s", {"dice_mean": 0.5}, {})
    empty_cache = tmp_path / "xrv-cache"
    empty_cache.mkdir()
    choice = ExpertChoice(source="auto", xrv_cache_dir=str(empty_cache), device="cpu")  # no xrv weights: project
    expert = load_pathology_expert(choice, tmp_path)
    assert expert.describe()["model_id"] == c_record.id
    np.testing.assert_array_equal(expert.predict(phantoms.images), TrainedPathologyExpert(classifier).predict(phantoms.images))
    anatomy = load_anatomy_expert(choice, tmp_path)
    assert anatomy.describe()["model_id"] == s_record.id
    with pytest.raises(RegistryError, match="xrv cache folder"):
        load_pathology_expert(choice, tmp_path / "no-registry-here")


def test_operating_points_map_to_one_half():
    probs = np.array([[0.1], [0.2], [0.6], [0.9]], dtype=np.float32)
    labels = np.array([[0], [0], [1], [1]], dtype=np.float32)
    point = operating_points(probs, labels, names=["x"])["x"]
    assert 0.2 < point < 0.6  # halfway between the best-separating scores
    normed = operating_point_norm(probs, [point])
    assert np.all((normed[:2] < 0.5) & (normed[:2] >= 0)) and np.all((normed[2:] >= 0.5) & (normed[2:] <= 1))
    assert operating_points(probs, np.zeros_like(labels), names=["x"])["x"] is None  # no positives: no point


# --- data and augmentation -----------------------------------------------------------------------


def test_load_expert_data_reads_split_labels_and_anatomy(tmp_path):
    write_phantom_version(tmp_path, {"train": 10, "val": 6})
    from storage import open_dataset

    version = open_dataset(tmp_path, "phantom")
    val = load_expert_data(version, "val")
    assert len(val) == 6 and val.images.dtype == np.float32 and val.anatomy.shape == (6, 14, 64, 64)
    expected = phantom_batch(range(10, 16), findings=cycle_findings(16)[10:])
    np.testing.assert_array_equal(val.labels, labels_from_findings(expected.findings))
    np.testing.assert_array_equal(val.anatomy, expected.anatomy)
    assert np.abs(val.images - expected.images).max() < 1e-4  # uint16 storage round trip
    assert val.known.all() and val.has_anatomy.all()


def test_augmentation_moves_image_and_masks_together():
    lung = np.zeros((1, 14, 64, 64), np.float32)
    lung[0, anatomy_index("Left Lung"), 16:48, 36:52] = 1
    image = torch.from_numpy(lung[:, anatomy_index("Left Lung")][:, None].copy())
    config = AugmentationConfig(affine_prob=1.0, rotate_degrees=10, scale=0.1, translate_fraction=0.1, noise_prob=0, contrast_prob=0)
    out_image, masks = PairedAugmentation(config, seed=3)(image, torch.from_numpy(lung))
    out_image, masks = out_image.numpy()[0, 0], masks.numpy()[0]
    assert set(np.unique(masks)) <= {0.0, 1.0}  # nearest for masks
    assert len(np.unique(out_image)) > 2  # bilinear for the image
    assert not np.array_equal(masks, lung[0])  # it moved
    moved = masks[anatomy_index("Left Lung")].astype(bool)
    assert np.mean((out_image > 0.5) == moved) > 0.98  # ...and the image moved with it
    _, again = PairedAugmentation(config, seed=3)(image, torch.from_numpy(lung))
    np.testing.assert_array_equal(again.numpy()[0], masks)  # seeded


# --- training ------------------------------------------------------------------------------------


def test_classifier_overfits_a_few_phantoms(phantoms):
    """Loss must fall at least 4x on 16 phantoms, and the classifier must then rank them right."""
    config = ClassifierTrainingConfig(
        init_features=16, growth_rate=8, block_config=(2, 4), steps=80, batch_size=16, learning_rate=5e-3,
        augmentation=NO_AUGMENTATION, log_every=40,
    )
    state = torch.random.get_rng_state()
    result = train_pathology_classifier(_data(phantoms), config, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # no global reseeding
    summary = result.loss_summary(window=10)
    assert summary["loss_end"] < summary["loss_start"] / 4, summary
    probs = TrainedPathologyExpert(result.model).predict(phantoms.images, calibrated=False)
    labels = labels_from_findings(phantoms.findings)
    assert np.mean((probs > 0.5) == (labels > 0.5)) > 0.9


def test_segmenter_overfits_a_few_phantoms(phantoms):
    """Loss must fall at least 2x, and lungs and heart must then be segmented on the training images."""
    config = SegmenterTrainingConfig(
        channels=(16, 32, 64), strides=(2, 2), num_res_units=1, steps=80, batch_size=8, learning_rate=1e-2,
        augmentation=NO_AUGMENTATION, log_every=40,
    )
    data = _data(phantoms)
    result = train_anatomy_segmenter(data, config, device="cpu")
    summary = result.loss_summary(window=10)
    assert summary["loss_end"] < summary["loss_start"] / 2, summary
    dice = evaluate_anatomy_segmenter(result.model, data, device="cpu")["dice"]
    assert min(dice["Left Lung"], dice["Right Lung"]) > 0.85 and dice["Heart"] > 0.7, dice


def test_training_is_reproducible(phantoms):
    config = ClassifierTrainingConfig(init_features=8, growth_rate=4, block_config=(2, 2), steps=4, batch_size=8, log_every=4)
    first = train_pathology_classifier(_data(phantoms), config, device="cpu")
    second = train_pathology_classifier(_data(phantoms), config, device="cpu")
    assert first.losses == second.losses
    other = train_pathology_classifier(_data(phantoms), config.model_copy(update={"seed": 1}), device="cpu")
    assert other.losses != first.losses


def test_unknown_labels_are_left_out_of_the_loss(phantoms):
    """A label marked unknown must not be learnt as absent: with every label unknown there is nothing to learn."""
    data = _data(phantoms)
    data.known = np.zeros_like(data.known)
    config = ClassifierTrainingConfig(init_features=8, growth_rate=4, block_config=(2, 2), steps=3, batch_size=8, log_every=3)
    assert train_pathology_classifier(data, config, device="cpu").losses == [0.0] * 3


# --- the flow ------------------------------------------------------------------------------------


def test_train_experts_flow_registers_both_with_metrics(tmp_path, prefect_harness):
    from aurad_models.registry import list_models
    from flows.experts import TrainExpertsParameters, train_experts_flow

    write_phantom_version(tmp_path, {"train": 16, "val": 8})
    training = ExpertsTrainingConfig(
        classifier=ClassifierTrainingConfig(init_features=8, growth_rate=4, block_config=(2, 2), steps=3, batch_size=8, log_every=3),
        segmenter=SegmenterTrainingConfig(channels=(8, 16), strides=(2,), num_res_units=0, steps=3, batch_size=4, log_every=3),
        lesion_segmenter=LesionSegmenterTrainingConfig(channels=(8, 16), strides=(2,), max_steps=4, eval_every=2, batch_size=4),
    )
    result = train_experts_flow(TrainExpertsParameters(root=str(tmp_path), training=training, device="cpu"))
    assert result.source.version == "v0001"
    (classifier,) = list_models(tmp_path, PATHOLOGY_CLASSIFIER_KIND)
    (segmenter,) = list_models(tmp_path, ANATOMY_SEGMENTER_KIND)
    (lesions,) = list_models(tmp_path, LESION_SEGMENTER_KIND)
    assert (classifier.id, segmenter.id, lesions.id) == (result.classifier_id, result.segmenter_id, result.lesion_segmenter_id)
    assert set(classifier.metrics["auroc"]) == set(PATHOLOGIES)
    assert set(segmenter.metrics["dice"]) == set(ANATOMY_STRUCTURES)
    assert set(lesions.metrics["fidelity"]) == set(PATHOLOGIES)  # calibrated on the val split, per finding
    assert LesionSegmenter.from_pretrained(lesions.path).fidelity == lesions.metrics["fidelity"]
    assert classifier.lineage["source"] == {
        "dataset": "phantom", "version": "v0001", "path": str(tmp_path / "phantom" / "v0001"),
        "train_split": "train", "val_split": "val", "n": 16, "labelled_subset": None,
    }
    assert PathologyClassifier.from_pretrained(classifier.path).operating_points is not None
