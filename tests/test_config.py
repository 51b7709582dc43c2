"""Profiles, overrides and the CLI's handling of configuration mistakes."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.config import load_config
from flows.profiles import ConfigError


def test_profiles_extend_each_other_and_keep_what_they_do_not_change():
    demo, quality, production = load_config("demo"), load_config("quality"), load_config("production")
    assert quality.source.phantom.size == demo.source.phantom.size == 64  # inherited from demo
    assert quality.train == demo.train and quality.experts == demo.experts  # the demo's (shipped) models
    assert quality.build == demo.build and quality.evaluate.evaluate.tasks == ("segmentation", "detection")
    assert production.train.mask_generator.image_size == 256 and production.train.mask_training.device == "cuda"
    assert production.build.n_samples == 2000 and production.evaluate.evaluate.tasks == ("segmentation", "detection")  # from quality
    assert demo.build.mask_sampling.scheduler == "dpm-solver++" and demo.build.mask_sampling.restrict_to_region


def test_root_and_dataset_names_are_set_once_for_every_section():
    config = load_config("demo", ["source.dataset=cxr", "build.n_samples=512"], root="/data/x")
    for section in ("source", "experts", "anatomy_bank", "train", "build", "evaluate"):
        assert getattr(config, section).root == "/data/x"
    assert config.build.source_dataset == config.train.dataset == config.evaluate.real_dataset == "cxr"
    assert config.build.n_samples == 512


def test_configuration_mistakes_name_the_setting():
    with pytest.raises(ConfigError, match=r"build\.n_sampels"):
        load_config("demo", ["build.n_sampels=5"])
    with pytest.raises(ConfigError, match=r"build\.n_samples"):
        load_config("demo", ["build.n_samples=-3"])
    with pytest.raises(ConfigError, match="differs from storage.root"):
        load_config("demo", ["build.root=/elsewhere"])
    with pytest.raises(ConfigError, match="not one of .*demo.*production.*quality"):
        load_config("no-such-profile")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("demo", ["build"])


def test_cli_prints_the_resolved_config_and_exits_2_on_a_bad_override():
    runner = CliRunner()
    shown = runner.invoke(app, ["config", "-s", "build.n_samples=7", "-r", "/tmp/somewhere"])
    assert shown.exit_code == 0, shown.output
    resolved = yaml.safe_load(shown.output)
    assert resolved["build"]["n_samples"] == 7 and resolved["storage"]["root"] == "/tmp/somewhere"

    bad = runner.invoke(app, ["build", "-s", "build.max_tries=zero"])
    assert bad.exit_code == 2 and "build.max_tries" in bad.output
    redirected = runner.invoke(app, ["config", "-s", "build.max_tries=zero"])  # `aurad config ... > cfg.yaml`
    assert redirected.exit_code == 2 and redirected.stdout == "" and "build.max_tries" in redirected.stderr


def test_every_configuration_model_forbids_unknown_keys_and_suggests_the_closest():
    """Walk every pydantic model a profile holds: none may ignore a misspelt key."""
    import typing

    from pydantic import BaseModel

    from flows.config import AuradConfig

    seen: dict[type, str] = {}

    def walk(model: type[BaseModel], where: str) -> None:
        if model in seen:
            return
        seen[model] = where
        for name, field in model.model_fields.items():
            for candidate in (field.annotation, *typing.get_args(field.annotation)):
                for inner in (candidate, *typing.get_args(candidate)):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        walk(inner, f"{where}.{name}")

    walk(AuradConfig, "config")
    assert len(seen) > 30  # the walk reaches the nested sections
    lenient = [f"{model.__name__} ({where})" for model, where in seen.items() if model.model_config.get("extra") != "forbid"]
    assert lenient == []
    with pytest.raises(ConfigError, match=r"build\.quality\.min_acceptence_rate: .*did you mean 'min_acceptance_rate'"):
        load_config("demo", ["build.quality.min_acceptence_rate=1.0"])


def test_every_setting_a_deployment_form_shows_has_a_description():
    """The Prefect UI form of a deployment is generated from its flow's pydantic parameter model: every field
    of every model it reaches (through lists, dicts, tuples and optionals too) says what it means."""
    import typing

    from pydantic import BaseModel

    from flows.anatomy import AnatomyBankParameters
    from flows.config import AuradConfig
    from flows.experts import TrainExpertsParameters
    from flows.sources import ImportSourceParameters
    from flows.train import TrainFlowParameters
    from tasks.build import BuildConfig
    from tasks.evaluate import EvaluateParameters
    from tasks.source import SourceConfig

    def models_in(annotation: object) -> list[type[BaseModel]]:
        found = [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []
        for argument in typing.get_args(annotation):
            found += models_in(argument)
        return found

    seen: set[type[BaseModel]] = set()
    undescribed: list[str] = []

    def walk(model: type[BaseModel], where: str) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            if not (field.description or "").strip():
                undescribed.append(f"{model.__module__}.{model.__name__}.{name} ({where}.{name})")
            for inner in models_in(field.annotation):
                walk(inner, f"{where}.{name}")

    roots = (AuradConfig, BuildConfig, TrainFlowParameters, TrainExpertsParameters, AnatomyBankParameters,
             EvaluateParameters, SourceConfig, ImportSourceParameters)
    for root in roots:
        walk(root, root.__name__)
    assert len(seen) > 30  # the walk reaches the nested sections
    assert undescribed == [], f"{len(undescribed)} settings without a description:\n" + "\n".join(undescribed)


def test_datasets_verify_and_list_name_the_damage(tmp_path):
    """`aurad datasets verify` exits 1 naming the damaged sample and file; `datasets list` still lists the
    other datasets and marks the damaged one."""
    import numpy as np
    import zarr
    from typer.testing import CliRunner

    from bench.world import write_phantom_version
    from flows.cli import app

    write_phantom_version(tmp_path, {"train": 8}, 64, shard_size=8)
    write_phantom_version(tmp_path, {"train": 4}, 64, dataset="other", shard_size=4)
    runner = CliRunner()
    ok = runner.invoke(app, ["datasets", "verify", "phantom", "-r", str(tmp_path)])
    assert ok.exit_code == 0 and "8 samples verified" in ok.output
    images = zarr.open_array(str(tmp_path / "phantom" / "v0001" / "images.zarr"), mode="r+")
    damaged = np.asarray(images[2]).copy()
    damaged[0, 0] += 1
    images[2] = damaged
    bad = runner.invoke(app, ["datasets", "verify", "phantom@v0001", "-r", str(tmp_path)])
    assert bad.exit_code == 1 and "phantom-000002 (index 2)" in bad.output and "images.zarr" in bad.output
    (tmp_path / "phantom" / "catalog" / "v0001.json").write_text("[]")
    listing = runner.invoke(app, ["datasets", "list", "-r", str(tmp_path)])
    assert listing.exit_code == 1 and "DAMAGED" in listing.output and "other" in listing.output


@pytest.mark.parametrize("override, message", [
    ("build.device=quantum", r"build\.device"),
    ("build.quotas.per_finding={nodul: 3}", r"unknown findings \['nodul'\]"),
    ("build.quotas.per_finding={nodule: -3}", r"per_finding\.nodule"),
    ("build.quality.lung_area_range=[0.5, 0.1]", r"lung_area_range must be \(low, high\)"),
    ("build.dataset=models", r"'models' cannot name a dataset"),
    ("build.mask_sampling.class_thresholds={nodul: 0.2}", r"unknown findings \['nodul'\]"),
])
def test_settings_that_would_fail_later_fail_at_load_time(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [override])


def test_registry_references_are_ids_of_their_kind():
    from aurad_models.registry import RegistryError, resolve_model

    for reference in ("../../x", "image-generator-0123456789ab", "mask-generator-XYZ"):
        with pytest.raises(RegistryError, match="is not a mask-generator model id"):
            resolve_model("/nonexistent", "mask-generator", reference)


def test_the_calibrated_profile_draws_a_world_of_its_own_and_leaves_the_demos_alone(tmp_path):
    """`source.calibration: calibrated` writes the calibrated phantom into the source dataset under a new build
    id (so nothing trained on the demo's world is reused for it); the default keeps the demo's build id,
    which the shipped models' fingerprints name."""
    import numpy as np

    from aurad_models.embedded import read_manifest
    from aurad_models.phantom import generate_phantoms
    from aurad_models.phantom.calibration import CALIBRATED
    from aurad_models.pixels import to_stored
    from aurad_models.seeding import derive_seed
    from storage import open_dataset
    from tasks.source import source_build_id, stage_source, write_phantom_shard

    demo, calibrated = load_config("demo"), load_config("calibrated", root=str(tmp_path))
    assert calibrated.source.calibration == "calibrated" and calibrated.train.dataset == "phantom-calibrated"
    shipped = {step["how"]["source_build"] for step in read_manifest()["steps"].values()}
    assert shipped == {source_build_id(demo.source)}
    assert source_build_id(calibrated.source) != source_build_id(demo.source)
    import tasks.source

    retuned, before = CALIBRATED.model_copy(update={"effusion_meniscus_power": 1.0}), source_build_id(calibrated.source)
    with pytest.MonkeyPatch.context() as patch:  # new tables, a new world: no build on disk is reused for it
        patch.setattr(tasks.source, "CALIBRATED", retuned)
        assert source_build_id(calibrated.source) != before
    config = calibrated.source.model_copy(update={"n_samples": 6, "shard_size": 6})
    staged = stage_source(config)
    write_phantom_shard(staged, 0, config)
    version = staged.publish({"kind": "source"})
    seeds = [derive_seed(config.seed, i) for i in range(6)]
    drawn = generate_phantoms(seeds, config.phantom, calibration=CALIBRATED)
    stored = open_dataset(tmp_path, "phantom-calibrated", version)
    np.testing.assert_array_equal(stored.images[:], to_stored(drawn.images))
    np.testing.assert_array_equal(stored.masks[:], drawn.pathology)
    assert not np.array_equal(drawn.pathology, generate_phantoms(seeds, config.phantom).pathology)
