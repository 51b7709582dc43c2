"""Generators and their plumbing: save / load, determinism per sample seed, input checks, mask ablation,
training (loss drops, resume), the model registry, ControlNet over a tiny base."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from aurad_models.findings import Finding
from aurad_models.vocabulary import PATHOLOGIES
from aurad_models.image_generator import (
    ControlNetImageGenerator,
    ImageGenerator,
    ImageGeneratorConfig,
    ImageSamplingConfig,
    ablation_flags,
)
from aurad_models.mask_generator import MaskGenerator, MaskGeneratorConfig, MaskSamplingConfig
from aurad_models.registry import ModelChecksumError, RegistryError, list_models, register_model, resolve_model
from aurad_models.serialization import (
    MissingModelFileError,
    ModelFormatError,
    load_module,
    save_module,
    weights_sha256,
)
from tasks.train import TrainingConfig, TrainingData, train_generator, validation_loss
from toy_cxr import toy_batch

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and threads oversubscribe a busy machine badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
TINY_MASK = MaskGeneratorConfig(image_size=SIZE, block_out_channels=(8, 16), norm_num_groups=4, prompt_hidden_dim=16)
TINY_IMAGE = ImageGeneratorConfig(image_size=SIZE, block_out_channels=(8, 16), norm_num_groups=4)
FAST_MASK = MaskSamplingConfig(num_inference_steps=4)
FAST_IMAGE = ImageSamplingConfig(num_inference_steps=4)


def _seeded(cls, config, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)


@pytest.fixture(scope="module")
def toy():
    return toy_batch(6, size=SIZE)


@pytest.fixture(scope="module")
def mask_model():
    return _seeded(MaskGenerator, TINY_MASK)


@pytest.fixture(scope="module")
def image_model():
    return _seeded(ImageGenerator, TINY_IMAGE)


# --- serialization -------------------------------------------------------------------------------


class Head(torch.nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = torch.nn.Linear(n_in, n_out)


def test_plain_module_round_trip(tmp_path):
    head = _seeded(lambda cfg: Head(**cfg), {"n_in": 3, "n_out": 2})
    save_module(head, tmp_path / "head", {"n_in": 3, "n_out": 2})
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["_class_name"].endswith("Head") and config["_format_version"] == 1
    again = load_module(Head, tmp_path / "head")
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(head.linear(x), again.linear(x))


def test_plain_module_errors(tmp_path):
    save_module(Head(3, 2), tmp_path / "head", {"n_in": 3, "n_out": 2})
    with pytest.raises(ModelFormatError, match="not a"):
        load_module(torch.nn.Identity, tmp_path / "head")
    (tmp_path / "head" / "model.safetensors").unlink()
    with pytest.raises(MissingModelFileError, match=r"'model.safetensors' not found in .*head"):
        load_module(Head, tmp_path / "head")
    with pytest.raises(MissingModelFileError, match="does not exist"):
        load_module(Head, tmp_path / "nowhere")


# --- registry ------------------------------------------------------------------------------------


def test_registry_round_trip_and_checksum(tmp_path, mask_model):
    model_dir = mask_model.save_pretrained(tmp_path / "mask")
    record = register_model(tmp_path / "root", "mask-generator", model_dir, {"val_loss": 0.1}, {"dataset": "toy"})
    assert record.id == f"mask-generator-{weights_sha256(model_dir)[:12]}"
    assert record.sha256 == weights_sha256(record.path)
    assert register_model(tmp_path / "root", "mask-generator", model_dir, {}, {}).id == record.id  # idempotent
    assert resolve_model(tmp_path / "root", "mask-generator").id == record.id
    assert resolve_model(tmp_path / "root", "mask-generator", record.id).metrics == {"val_loss": 0.1}
    assert [r.id for r in list_models(tmp_path / "root")] == [record.id]
    loaded = MaskGenerator.from_pretrained(record.path)
    assert loaded.config == mask_model.config
    with pytest.raises(RegistryError, match="no mask-generator model 'mask-generator-000000000000'"):
        resolve_model(tmp_path / "root", "mask-generator", "mask-generator-000000000000")
    with pytest.raises(RegistryError, match="no image-generator models"):
        resolve_model(tmp_path / "root", "image-generator")
    weights = record.path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # tamper with the last weights
    with pytest.raises(ModelChecksumError, match="does not match"):
        resolve_model(tmp_path / "root", "mask-generator", record.id)


def test_registry_rejects_bad_kind(tmp_path):
    with pytest.raises(ValueError, match="lower-case"):
        register_model(tmp_path, "Mask Generator", tmp_path, {}, {})


# --- mask generator ------------------------------------------------------------------------------


def test_mask_generator_save_load_identical(tmp_path, toy, mask_model):
    _, anatomy, _, findings = toy
    before = mask_model.sample(anatomy[:3], findings[:3], [1, 2, 3], FAST_MASK)
    mask_model.save_pretrained(tmp_path / "m")
    after = MaskGenerator.from_pretrained(tmp_path / "m").sample(anatomy[:3], findings[:3], [1, 2, 3], FAST_MASK)
    assert np.array_equal(before.soft, after.soft)
    assert before.masks.shape == (3, len(PATHOLOGIES), SIZE, SIZE) and before.masks.dtype == np.uint8


@pytest.mark.parametrize("scheduler", ["ddim", "dpm-solver++"])
def test_mask_sample_alone_equals_batch(toy, mask_model, scheduler):
    _, anatomy, _, findings = toy
    sampling = MaskSamplingConfig(num_inference_steps=4, scheduler=scheduler, batch_size=4)
    batch = mask_model.sample(anatomy, findings, [10, 11, 12, 13, 14, 15], sampling)
    alone = mask_model.sample(anatomy[4:5], findings[4:5], [14], sampling)
    np.testing.assert_allclose(alone.soft[0], batch.soft[4], atol=1e-5)
    other = mask_model.sample(anatomy[4:5], findings[4:5], [99], sampling)
    assert not np.allclose(other.soft[0], batch.soft[4], atol=1e-3)


def test_mask_eta_noise_is_per_sample(toy, mask_model):
    _, anatomy, _, findings = toy
    sampling = MaskSamplingConfig(num_inference_steps=4, eta=1.0)
    batch = mask_model.sample(anatomy[:3], findings[:3], [5, 6, 7], sampling)
    alone = mask_model.sample(anatomy[2:3], findings[2:3], [7], sampling)
    np.testing.assert_allclose(alone.soft[0], batch.soft[2], atol=1e-5)


def test_mask_input_validation(toy, mask_model):
    _, anatomy, _, findings = toy
    with pytest.raises(ValueError, match="anatomy must have 14 channels, got 13"):
        mask_model.sample(anatomy[:, :13], findings, range(6), FAST_MASK)
    with pytest.raises(ValueError, match="must be 32x32"):
        mask_model.sample(np.zeros((1, 14, 48, 48), np.uint8), [()], [0], FAST_MASK)
    with pytest.raises(ValueError, match="binary"):
        mask_model.sample(anatomy[:1] * 0.5, findings[:1], [0], FAST_MASK)
    with pytest.raises(ValueError, match="one prompt per sample"):
        mask_model.sample(anatomy[:2], findings[:1], [0, 1], FAST_MASK)
    with pytest.raises(ValueError, match="one seed per sample"):
        mask_model.sample(anatomy[:2], findings[:2], [0], FAST_MASK)
    with pytest.raises(TypeError, match="parse_prompt"):
        mask_model.sample(anatomy[:1], ["nodule"], [0], FAST_MASK)


def test_restrict_to_prompt_is_reported(toy, mask_model):
    _, anatomy, _, _ = toy
    prompts = [(Finding(label="effusion"),)] * 2
    loose = mask_model.sample(anatomy[:2], prompts, [1, 2], MaskSamplingConfig(num_inference_steps=2, threshold=0.01, restrict_to_prompt=False, restrict_to_region=False))
    strict = mask_model.sample(anatomy[:2], prompts, [1, 2], MaskSamplingConfig(num_inference_steps=2, threshold=0.01, restrict_to_region=False))
    others = [0, 1, 2, 4, 5, 6]
    assert strict.masks[:, others].sum() == 0
    assert strict.removed_by_restriction.sum() == loose.masks[:, others].sum() > 0  # an untrained model fills everything
    assert np.array_equal(strict.masks[:, 3], loose.masks[:, 3])


def test_missing_weights_file_names_the_path(tmp_path, mask_model, image_model):
    mask_model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MissingModelFileError, match=r"'diffusion_pytorch_model.safetensors' not found in .*m/unet"):
        MaskGenerator.from_pretrained(tmp_path / "m")
    image_model.save_pretrained(tmp_path / "i")
    shutil.rmtree(tmp_path / "i" / "condition_embedding")
    with pytest.raises(MissingModelFileError, match="condition_embedding"):
        ImageGenerator.from_pretrained(tmp_path / "i")
    with pytest.raises(MissingModelFileError, match="model_index.json"):
        ImageGenerator.from_pretrained(tmp_path / "empty")


# --- image generator -----------------------------------------------------------------------------


def test_image_generator_save_load_identical(tmp_path, toy, image_model):
    _, anatomy, pathology, _ = toy
    before = image_model.sample(anatomy[:3], pathology[:3], [4, 5, 6], FAST_IMAGE)
    image_model.save_pretrained(tmp_path / "i")
    after = ImageGenerator.from_pretrained(tmp_path / "i").sample(anatomy[:3], pathology[:3], [4, 5, 6], FAST_IMAGE)
    assert np.array_equal(before.images, after.images)
    assert before.images.shape == (3, SIZE, SIZE) and 0 <= before.images.min() and before.images.max() <= 1


def test_image_sample_alone_equals_batch_with_guidance(toy, image_model):
    _, anatomy, pathology, _ = toy
    sampling = ImageSamplingConfig(num_inference_steps=4, guidance_scale=2.0, batch_size=4)
    batch = image_model.sample(anatomy, pathology, [20, 21, 22, 23, 24, 25], sampling)
    alone = image_model.sample(anatomy[5:], pathology[5:], [25], sampling)
    np.testing.assert_allclose(alone.images[0], batch.images[5], atol=1e-5)


def test_image_input_validation(toy, image_model):
    _, anatomy, pathology, _ = toy
    with pytest.raises(ValueError, match=f"pathology must have {len(PATHOLOGIES)} channels"):
        image_model.sample(anatomy, anatomy[:, :6], range(6), FAST_IMAGE)
    with pytest.raises(ValueError, match=r"must be \(N, 14, H, W\)"):
        image_model.sample(anatomy[0], pathology, range(6), FAST_IMAGE)
    with pytest.raises(ValueError, match="one seed per sample"):
        image_model.sample(anatomy, pathology, range(5), FAST_IMAGE)
    with pytest.raises(ValueError, match="values must lie in"):
        image_model.sample(anatomy * 3, pathology, range(6), FAST_IMAGE)
    with pytest.raises(ValueError, match="no masks were passed"):
        image_model.sample(None, pathology, range(6), FAST_IMAGE, anatomy_available=np.ones(14, bool))


def test_ablation_flags_rates():
    config = ImageGeneratorConfig(anatomy_dropout=0.2, anatomy_channel_dropout=0.1, pathology_dropout=0.3, pathology_channel_dropout=0.0)
    flags = ablation_flags(20000, config, np.random.default_rng(0))
    anatomy, pathology = flags[:, :14], flags[:, 14:]
    assert set(np.unique(flags)) == {0.0, 1.0}
    assert (anatomy.sum(1) == 0).mean() == pytest.approx(0.2, abs=0.015)
    assert 1 - anatomy[anatomy.sum(1) > 0].mean() == pytest.approx(0.1, abs=0.01)
    assert (pathology.sum(1) == 0).mean() == pytest.approx(0.3, abs=0.015)
    assert set(pathology.sum(1)) == {0.0, float(len(PATHOLOGIES))}  # no single-channel drops at rate 0


def test_dropped_differs_from_absent(toy, image_model):
    """A dropped channel's content is ignored (flag 0), while an empty channel that is given (flag 1) is
    a statement of absence: different conditioning, different image."""
    _, anatomy, pathology, _ = toy
    seeds = [1, 2]
    dropped = image_model.sample(anatomy[:2], pathology[:2], seeds, FAST_IMAGE, pathology_available=np.zeros(len(PATHOLOGIES), bool))
    dropped_empty = image_model.sample(anatomy[:2], np.zeros_like(pathology[:2]), seeds, FAST_IMAGE, pathology_available=np.zeros(len(PATHOLOGIES), bool))
    absent = image_model.sample(anatomy[:2], np.zeros_like(pathology[:2]), seeds, FAST_IMAGE)
    none_given = image_model.sample(anatomy[:2], None, seeds, FAST_IMAGE)
    assert np.array_equal(dropped.images, dropped_empty.images)
    assert np.array_equal(dropped.images, none_given.images)
    assert not np.allclose(dropped.images, absent.images, atol=1e-4)
    assert not none_given.pathology_available.any() and none_given.anatomy_available.all()


# --- ControlNet extension point ------------------------------------------------------------------


def _tiny_base(tmp_path):
    from diffusers import UNet2DConditionModel

    base = _seeded(lambda _: UNet2DConditionModel(
        sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    ), None)
    base.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_controlnet_over_a_local_base(tmp_path, toy):
    images, anatomy, pathology, _ = toy
    model = ControlNetImageGenerator.from_base(_tiny_base(tmp_path), TINY_IMAGE)
    base_before = {k: v.clone() for k, v in model.base_unet.state_dict().items()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.controlnet.parameters()}
    loss = model.training_loss(torch.from_numpy(images), torch.from_numpy(anatomy).float(), torch.from_numpy(pathology).float(), seed=0)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, model.base_unet.state_dict()[k]) for k, v in base_before.items())  # base frozen
    before = model.sample(anatomy[:2], pathology[:2], [1, 2], FAST_IMAGE)
    model.save_pretrained(tmp_path / "cn")
    assert (tmp_path / "cn" / "base_unet").is_dir() and (tmp_path / "cn" / "controlnet").is_dir()
    after = ControlNetImageGenerator.from_pretrained(tmp_path / "cn").sample(anatomy[:2], pathology[:2], [1, 2], FAST_IMAGE)
    assert np.array_equal(before.images, after.images)


def test_controlnet_missing_base_names_the_path(tmp_path):
    (tmp_path / "base").mkdir()
    with pytest.raises(MissingModelFileError, match=r"base UNet config 'config.json' not found in .*base"):
        ControlNetImageGenerator.from_base(tmp_path / "base")


# --- training ------------------------------------------------------------------------------------


def _toy_data(n=8, seed=0):
    images, anatomy, pathology, findings = toy_batch(n, size=SIZE, seed=seed)
    return TrainingData(images, anatomy, pathology, findings, {"dataset": "toy"})


@pytest.mark.parametrize("kind, cls, config", [("mask-generator", MaskGenerator, TINY_MASK), ("image-generator", ImageGenerator, TINY_IMAGE)])
def test_tiny_model_overfits_a_handful_of_samples(tmp_path, kind, cls, config):
    """60 steps on 8 samples cut the (fixed-seed) loss on those samples at least 3x."""
    data = _toy_data()
    training = TrainingConfig(steps=60, batch_size=8, learning_rate=3e-3, warmup_steps=5, ema_decay=0.9,
                              checkpoint_every=1000, n_validation_samples=0, validation_batches=3, num_threads=1)
    model = _seeded(cls, config)
    before = validation_loss(kind, model, data, training, torch.device("cpu"))
    result = train_generator(kind, model, data, None, training, tmp_path / "run")
    trained = cls.from_pretrained(result.model_dir)
    after = validation_loss(kind, trained, data, training, torch.device("cpu"))
    assert after < before / 3, (before, after)
    logged = [json.loads(line) for line in result.loss_log.read_text().splitlines()]
    assert [r["step"] for r in logged] == [20, 40, 60]


def test_training_resumes_from_the_last_checkpoint(tmp_path):
    data = _toy_data()
    training = TrainingConfig(steps=6, batch_size=4, checkpoint_every=3, n_validation_samples=0, validation_batches=1, log_every=1, num_threads=1)
    straight = train_generator("image-generator", _seeded(ImageGenerator, TINY_IMAGE), data, None, training, tmp_path / "a",
                               registry_root=tmp_path / "root")
    first = train_generator("image-generator", _seeded(ImageGenerator, TINY_IMAGE), data, None,
                            training.model_copy(update={"steps": 3}), tmp_path / "b")
    assert first.steps == 3 and (tmp_path / "b" / "checkpoints" / "step-000003" / "state.safetensors").is_file()
    resumed = train_generator("image-generator", _seeded(ImageGenerator, TINY_IMAGE, seed=123), data, None, training, tmp_path / "b",
                              registry_root=tmp_path / "root")
    assert resumed.resumed_from == 3 and resumed.steps == 6
    assert resumed.model_id == straight.model_id  # identical weights, identical checksum
    assert resolve_model(tmp_path / "root", "image-generator").lineage["data"] == {"dataset": "toy"}


# --- the Prefect flow on a stored dataset ---------------------------------------------------------


def _store_toy_dataset(root, n=12):
    """A tiny source dataset version (train / val splits) written through the storage API."""
    from aurad_models.findings import render_prompt
    from aurad_models.pixels import to_stored
    from storage.arrays import ArraySpec
    from storage.staging import stage_version

    images, anatomy, pathology, findings = toy_batch(n, size=SIZE, seed=5)
    staged = stage_version(root, "toy-source", "build-1", n_samples=n, shard_size=n, spec=ArraySpec(image_size=SIZE))
    rows = [
        {"sample_id": f"toy-{i}", "split": "val" if i >= n - 4 else "train", "prompt": render_prompt(findings[i]),
         "findings": [f.as_record() for f in findings[i]], "seed": i, "attempt_seeds": [i], "attempt_reject_reasons": [None],
         "source": None, "mask_source": "exact", "mask_model_id": None, "image_model_id": None, "scores": {},
         "accepted": True, "reject_reason": None, "metadata": {}}
        for i in range(n)
    ]
    staged.write_shard(0, to_stored(images), pathology, anatomy, rows)
    return staged.publish({"config": {"toy": True}})


@pytest.mark.slow
def test_train_flow_registers_both_generators(tmp_path, prefect_harness):
    from flows.train import TrainFlowParameters, train_flow
    from tasks.train import load_training_data

    version = _store_toy_dataset(tmp_path)
    data = load_training_data(tmp_path, "toy-source", "latest", split="train")
    assert len(data) == 8 and data.findings[0] == toy_batch(12, size=SIZE, seed=5)[3][0]
    tiny = TrainingConfig(steps=4, batch_size=4, checkpoint_every=2, n_validation_samples=2, validation_batches=1,
                          validation_inference_steps=2, num_threads=1)
    params = TrainFlowParameters(root=str(tmp_path), dataset="toy-source", mask_generator=TINY_MASK, image_generator=TINY_IMAGE,
                                 mask_training=tiny, image_training=tiny)
    result = train_flow(params)
    assert result.mask_generator_id.startswith("mask-generator-") and result.image_generator_id.startswith("image-generator-")
    record = resolve_model(tmp_path, "mask-generator", result.mask_generator_id)
    assert record.lineage["dataset"] == "toy-source" and record.lineage["version"] == version
    assert MaskGenerator.from_pretrained(record.path).config == TINY_MASK
    again = train_flow(params)  # a rerun resumes the finished runs: same weights, same ids
    assert again.mask_generator_id == result.mask_generator_id and again.image_generator_id == result.image_generator_id


def test_restrict_to_region_clips_to_the_requested_region(toy, mask_model):
    from aurad_models.prompt_encoder import prior_maps

    _, anatomy, _, _ = toy
    prompts = [(Finding(label="nodule", side="left", zone="upper"),)] * 2
    loose = mask_model.sample(anatomy[:2], prompts, [1, 2], MaskSamplingConfig(num_inference_steps=2, threshold=0.01, restrict_to_prompt=False, restrict_to_region=False))
    clipped = mask_model.sample(anatomy[:2], prompts, [1, 2], MaskSamplingConfig(num_inference_steps=2, threshold=0.01, restrict_to_prompt=False))
    region = np.stack([prior_maps(p, a > 0)[0] > 0 for p, a in zip(prompts, anatomy[:2])])
    assert not (clipped.masks[:, 0].astype(bool) & ~region).any()
    assert clipped.removed_by_restriction[:, 0].sum() == (loose.masks[:, 0].astype(bool) & ~region).sum() > 0
    assert np.array_equal(clipped.masks[:, 1:], loose.masks[:, 1:])  # other classes untouched without restrict_to_prompt


def test_mask_config_checks():
    with pytest.raises(ValueError, match="needs prediction_type 'sample'"):
        MaskGeneratorConfig(prediction_type="epsilon")
    with pytest.raises(ValueError, match="divisible by 8"):
        MaskGeneratorConfig(image_size=36)
    model = MaskGenerator(MaskGeneratorConfig(image_size=SIZE, block_out_channels=(8, 16), norm_num_groups=4,
                                              prediction_type="v_prediction", mask_loss="mse", shortcut=False))
    assert model.shortcut is None
    _, anatomy, pathology, findings = toy_batch(2, size=SIZE)
    loss = model.training_loss(torch.from_numpy(anatomy).float(), torch.from_numpy(pathology).float(), findings, seed=0)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_channels_last_sampling_matches_contiguous(toy, mask_model, image_model):
    """The memory format is a speed setting only: same samples up to float rounding, weights unchanged."""
    _, anatomy, pathology, findings = toy
    weights = {k: v.clone() for k, v in image_model.unet.state_dict().items()}
    contiguous, nhwc_image = ({"channels_last": flag, "mixed_precision": "no"} for flag in (False, True))  # fp32: exact
    plain = image_model.sample(anatomy[:3], pathology[:3], [4, 5, 6], FAST_IMAGE.model_copy(update=contiguous))
    nhwc = image_model.sample(anatomy[:3], pathology[:3], [4, 5, 6], FAST_IMAGE.model_copy(update=nhwc_image))
    np.testing.assert_allclose(nhwc.images, plain.images, atol=1e-4)
    assert any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in image_model.unet.parameters() if p.ndim == 4)
    assert all(torch.equal(weights[k], v) for k, v in image_model.unet.state_dict().items())
    plain_masks = mask_model.sample(anatomy[:3], findings[:3], [1, 2, 3], FAST_MASK.model_copy(update=contiguous))
    nhwc_masks = mask_model.sample(anatomy[:3], findings[:3], [1, 2, 3], FAST_MASK.model_copy(update=nhwc_image))
    np.testing.assert_allclose(nhwc_masks.soft, plain_masks.soft, atol=1e-4)
    bf16 = image_model.sample(anatomy[:3], pathology[:3], [4, 5, 6], FAST_IMAGE.model_copy(update={"mixed_precision": "bf16"}))
    np.testing.assert_allclose(bf16.images, plain.images, atol=0.05)  # bf16 (on CPUs with native bf16): close, not exact
    image_model.sample(anatomy[:1], pathology[:1], [4], FAST_IMAGE.model_copy(update=contiguous))  # back again
    assert all(p.is_contiguous() for p in image_model.unet.parameters())


@pytest.mark.slow
def test_compiled_sampling_matches_eager_and_saves_the_same(tmp_path, toy, image_model):
    """torch.compile (Inductor on CPU here) gives the eager samples up to rounding; the saved model is the
    plain one (no compiled wrapper in its state)."""
    _, anatomy, pathology, _ = toy
    eager = image_model.sample(anatomy[:2], pathology[:2], [4, 5], FAST_IMAGE)
    compiled = image_model.sample(anatomy[:2], pathology[:2], [4, 5], FAST_IMAGE.model_copy(update={"compile": "default"}))
    np.testing.assert_allclose(compiled.images, eager.images, atol=1e-3)
    assert set(image_model._compiled) == {"default"}
    image_model.save_pretrained(tmp_path / "i")
    reloaded = ImageGenerator.from_pretrained(tmp_path / "i").sample(anatomy[:2], pathology[:2], [4, 5], FAST_IMAGE)
    assert np.array_equal(reloaded.images, eager.images)


def test_scarce_labels_keep_the_images_and_hide_the_other_masks():
    from tasks.retrain import LabelledSubset
    from tasks.train import TrainingData

    images, anatomy, pathology, findings = toy_batch(12, size=SIZE, seed=5)
    data = TrainingData(images, anatomy, pathology, findings)
    subset = LabelledSubset(fraction=0.25, seed=1, min_count=1)
    scarce = data.with_scarce_labels(subset)
    keep = subset.indices(12)
    assert len(scarce) == 12 and scarce.labelled.sum() == len(keep) == 3 and scarce.labelled[keep].all()
    np.testing.assert_array_equal(scarce.images, images)
    assert scarce.pathology[~scarce.labelled].sum() == 0 and all(f == () for f, k in zip(scarce.findings, scarce.labelled) if not k)
    np.testing.assert_array_equal(scarce.pathology[keep], pathology[keep])
    only = scarce.labelled_only()
    assert len(only) == 3 and only.source["labelled_subset"]["fraction"] == 0.25


def test_unlabelled_images_train_the_image_generator_with_pathology_unknown(toy):
    from aurad_models.image_generator import ImageGenerator, ImageGeneratorConfig

    images, anatomy, pathology, _ = toy
    model = ImageGenerator(ImageGeneratorConfig(image_size=SIZE, block_out_channels=(8, 16), norm_num_groups=4,
                                                pathology_dropout=0.0, pathology_channel_dropout=0.0))
    x, a, p = torch.from_numpy(images), torch.from_numpy(anatomy).float(), torch.from_numpy(pathology).float()
    known = torch.tensor([True] * 3 + [False] * (len(images) - 3))
    with_known = model.training_loss(x, a, p, seed=3, pathology_known=known)
    # the unlabelled samples' masks are never seen: changing them changes nothing
    scrambled = p.clone()
    scrambled[3:] = 1 - scrambled[3:]
    assert torch.equal(with_known, model.training_loss(x, a, scrambled, seed=3, pathology_known=known))
    assert not torch.equal(model.training_loss(x, a, p, seed=3), model.training_loss(x, a, scrambled, seed=3))


def test_a_url_storage_root_is_refused_by_the_model_registry_naming_the_setting():
    from aurad_models.registry import RegistryError, list_models, models_root

    with pytest.raises(RegistryError, match=r"storage.root is 's3://bucket/aurad': mount the bucket"):
        models_root("s3://bucket/aurad")
    with pytest.raises(RegistryError, match="storage.root"):
        list_models("gs://bucket/aurad")
    assert str(models_root("file:///data/aurad")) == "/data/aurad/models"
