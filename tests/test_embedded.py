"""The shipped models: export a trained step, install it into a registry with verified weights, refuse a
tampered file; and the models the repository ships load with today's code and match the demo profile."""

from __future__ import annotations

import json

import pytest

from aurad_models import embedded
from aurad_models.experts.trained import PATHOLOGY_CLASSIFIER_KIND, PathologyClassifier
from aurad_models.registry import list_models, register_model


def _registered_classifier(tmp_path):
    model_dir = tmp_path / "classifier"
    PathologyClassifier(init_features=8, growth_rate=4, block_config=(2, 2)).save_pretrained(model_dir)
    return register_model(tmp_path / "trained", PATHOLOGY_CLASSIFIER_KIND, model_dir, {"auroc_mean": 0.5},
                          {"source": {"dataset": "phantom", "version": "v0001", "train_split": "train", "n": 10}})


def test_export_then_install_gives_the_same_verified_models(tmp_path):
    record = _registered_classifier(tmp_path)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    kinds = {"classifier_id": PATHOLOGY_CLASSIFIER_KIND}
    entry = embedded.export_step("experts", "f" * 64, {"classifier_id": record.id, "seconds": 1.0}, kinds, tmp_path / "trained",
                                 {"command": "aurad demo --retrain -p demo", "profile": "demo"}, directory=shipped)
    assert entry["models"]["classifier_id"]["sha256"] == record.sha256
    card = (shipped / PATHOLOGY_CLASSIFIER_KIND / record.id / embedded.CARD_NAME).read_text()
    assert "aurad demo --retrain -p demo" in card and record.sha256 in card and "not for diagnosis" in card
    assert embedded.find_step("experts", "e" * 64, shipped) is None  # other settings: train, do not ship
    found = embedded.find_step("experts", "f" * 64, shipped)
    outputs = embedded.install_step(found, tmp_path / "fresh", shipped)
    assert outputs == {"classifier_id": record.id}
    assert [m.id for m in list_models(tmp_path / "fresh", PATHOLOGY_CLASSIFIER_KIND)] == [record.id]
    assert embedded.install_step(found, tmp_path / "fresh", shipped) == outputs  # idempotent
    installed = list_models(tmp_path / "fresh", PATHOLOGY_CLASSIFIER_KIND)[0].path.parent / embedded.CARD_NAME
    assert installed.read_text() == card  # the registry's copy keeps the card that says how it was made


def test_a_tampered_shipped_model_is_refused(tmp_path):
    record = _registered_classifier(tmp_path)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    entry = embedded.export_step("experts", "f" * 64, {"classifier_id": record.id}, {"classifier_id": PATHOLOGY_CLASSIFIER_KIND},
                                 tmp_path / "trained", {}, directory=shipped)
    weights = next((shipped / PATHOLOGY_CLASSIFIER_KIND / record.id / "model").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(embedded.EmbeddedModelError, match="does not match the manifest"):
        embedded.install_step(entry, tmp_path / "fresh", shipped)
    assert not (tmp_path / "fresh" / "models").exists()  # nothing installed


SHIPPED = embedded.shipped_models()


@pytest.mark.skipif(not SHIPPED, reason="this checkout ships no trained models")
def test_shipped_models_load_with_todays_code_and_match_the_demo_profile():
    from aurad_models.hashing import config_hash
    from aurad_models.serialization import weights_sha256
    from flows.config import load_config
    from flows.pipeline import step_settings
    from aurad_models.experts.trained import AnatomySegmenter, LesionSegmenter
    from aurad_models.image_generator import ImageGenerator
    from aurad_models.mask_generator import MaskGenerator

    loaders = {"pathology-classifier": PathologyClassifier, "anatomy-segmenter": AnatomySegmenter,
               "lesion-segmenter": LesionSegmenter, "mask-generator": MaskGenerator, "image-generator": ImageGenerator}
    for model in SHIPPED:
        assert weights_sha256(model["path"]) == model["sha256"], model["id"]
        loaders[model["kind"]].from_pretrained(model["path"])  # strict: today's architecture takes every tensor
    assert embedded.shipped_size() <= 60e6  # the budget for weights in the repository
    demo = load_config("demo")
    manifest = embedded.read_manifest()
    for step in ("experts", "generators"):  # the demo finds them: same settings fingerprint
        assert manifest["steps"][step]["fingerprint"] == config_hash(step_settings(demo, step)), step
    generators = manifest["steps"]["generators"]["models"]
    trained = {m["key"]: m["record"] for m in SHIPPED}
    assert trained["image_generator_id"]["lineage"]["model_config"] == json.loads(json.dumps(
        demo.train.image_generator.model_dump(mode="json")))
    assert set(generators) == {"mask_generator_id", "image_generator_id"}


def test_every_registered_model_has_a_card_and_models_list_shows_it_with_whole_numbers(tmp_path):
    from typer.testing import CliRunner

    from aurad_models.registry import CARD_NAME
    from flows.cli import app

    record = _registered_classifier(tmp_path)
    card = (record.path.parent / CARD_NAME).read_text()
    assert card.startswith(f"# {record.id}") and record.sha256 in card and "not for diagnosis" in card
    assert "`phantom/v0001`, split `train`, 10 images" in card and "- auroc_mean: 0.5" in card

    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list", "--root", str(tmp_path / "trained")], env={"COLUMNS": "400"})
    assert listed.exit_code == 0, listed.output
    assert "auroc_mean 0.5" in listed.output and CARD_NAME in listed.output
    assert f"kinds: {PATHOLOGY_CLASSIFIER_KIND}" in listed.output
    unknown = runner.invoke(app, ["models", "list", "mask-generatr", "--root", str(tmp_path / "trained")], env={"COLUMNS": "400"})
    assert unknown.exit_code == 1 and f"kinds here: {PATHOLOGY_CLASSIFIER_KIND}" in unknown.output
