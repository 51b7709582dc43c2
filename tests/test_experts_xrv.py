"""torchxrayvision experts: local weights only, safe loading, same outputs as torchxrayvision's own models.

The tests write weights files themselves (randomly initialised models of the right architecture, in the
layout of the release files: a whole pickled DenseNet, a DataParallel state dict for PSPNet) into a tmp
folder used as the cache, then load them through our loaders.
"""

from __future__ import annotations

import inspect
import os
import warnings

import numpy as np
import pytest
import torch

from aurad_models.experts import (
    XRV_WEIGHTS,
    MissingWeightsError,
    UnsafeWeightsError,
    WeightsChecksumError,
    WeightsMismatchError,
    load_xrv_classifier,
    load_xrv_segmenter,
)
from aurad_models.experts.xrv import (
    build_xrv_pspnet,
    default_cache_dir,
    file_sha256,
    import_xrv,
    xrv_preprocess,
)
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES, XRV_PATHOLOGY_NAMES

CLASSIFIER = XRV_WEIGHTS["densenet121-res224-all"]
SEGMENTER = XRV_WEIGHTS["chestx_det-pspnet"]


def _images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def xrv():
    return import_xrv()


@pytest.fixture(scope="module")
def densenet(xrv):
    """A randomly initialised xrv DenseNet with non-trivial BatchNorm statistics."""
    generator = torch.Generator().manual_seed(0)
    model = xrv.models.DenseNet(weights=None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def test_registry_matches_torchxrayvision(xrv):
    entry = xrv.models.model_urls["densenet121-res224-all"]
    assert CLASSIFIER.url == entry["weights_url"]
    assert list(CLASSIFIER.labels) == entry["labels"]
    assert np.allclose(CLASSIFIER.op_threshs, entry["op_threshs"])
    assert CLASSIFIER.input_size == entry["input_resolution"]
    assert CLASSIFIER.file_name == os.path.basename(entry["weights_url"])
    from torchxrayvision.baseline_models.chestx_det import PSPNet

    assert SEGMENTER.url in inspect.getsource(PSPNet.__init__)
    assert tuple(PSPNet.targets) == ANATOMY_STRUCTURES == SEGMENTER.labels
    # every finding of ours has a torchxrayvision name the default weights predict
    assert all(XRV_PATHOLOGY_NAMES[label] in CLASSIFIER.labels for label in PATHOLOGIES)


def test_default_cache_dir_follows_home(monkeypatch, tmp_path, xrv):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".torchxrayvision" / "models_data"
    assert os.path.normpath(xrv.utils.get_cache_dir()) == str(default_cache_dir())


def test_densenet_release_layout_loads_and_matches_torchxrayvision(tmp_path, densenet, xrv):
    torch.save(densenet, tmp_path / CLASSIFIER.file_name)  # the release files are whole pickled modules
    expert = load_xrv_classifier(cache_dir=tmp_path)
    images = _images(3)

    # torchxrayvision's own loader on the same (test-written, trusted) file
    reference = xrv.models.DenseNet(weights="densenet121-res224-all", cache_dir=str(tmp_path))
    with torch.no_grad():
        expected = reference(xrv_preprocess(images, 224)).numpy()
        expected_features = densenet.features2(xrv_preprocess(images, 224)).numpy()
    columns = [CLASSIFIER.labels.index(XRV_PATHOLOGY_NAMES[label]) for label in PATHOLOGIES]

    probs = expert.predict(images)
    assert probs.shape == (3, len(PATHOLOGIES))
    np.testing.assert_allclose(probs, expected[:, columns], rtol=0, atol=1e-6)
    features = expert.features(images)
    assert features.shape == (3, 1024)
    np.testing.assert_allclose(features, expected_features, rtol=1e-5, atol=1e-5)
    assert expert.describe()["sha256"] == file_sha256(tmp_path / CLASSIFIER.file_name)


def test_densenet_state_dict_and_safetensors_files_load(tmp_path, densenet):
    from safetensors.torch import save_file

    images = _images(2, seed=1)
    state_dir, safe_dir = tmp_path / "state", tmp_path / "safe"
    state_dir.mkdir()
    safe_dir.mkdir()
    torch.save(densenet.state_dict(), state_dir / CLASSIFIER.file_name)
    save_file({k: v.contiguous() for k, v in densenet.state_dict().items()}, str(safe_dir / CLASSIFIER.safetensors_name))
    from_state = load_xrv_classifier(cache_dir=state_dir).predict(images)
    from_safe = load_xrv_classifier(cache_dir=safe_dir).predict(images)
    np.testing.assert_array_equal(from_state, from_safe)
    assert not np.isnan(from_state).any()


def test_missing_weights_names_file_folder_and_url_and_downloads_nothing(tmp_path):
    with pytest.raises(MissingWeightsError) as error:
        load_xrv_classifier(cache_dir=tmp_path)
    message = str(error.value)
    assert CLASSIFIER.file_name in message and str(tmp_path) in message and CLASSIFIER.url in message
    with pytest.raises(MissingWeightsError) as error:
        load_xrv_segmenter(cache_dir=tmp_path)
    assert SEGMENTER.file_name in str(error.value) and str(tmp_path) in str(error.value)
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


def test_missing_weights_in_default_cache_names_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match=str(tmp_path / ".torchxrayvision" / "models_data")):
        load_xrv_classifier()


def test_wrong_architecture_is_a_clear_error(tmp_path, xrv):
    small = xrv.models.DenseNet(weights=None, block_config=(2, 2, 2, 2))
    torch.save(small.state_dict(), tmp_path / CLASSIFIER.file_name)
    with pytest.raises(WeightsMismatchError, match="DenseNet-121") as error:
        load_xrv_classifier(cache_dir=tmp_path)
    assert CLASSIFIER.file_name in str(error.value) and "wrong shape" in str(error.value)

    torch.save({"module." + k: v for k, v in small.state_dict().items()}, tmp_path / SEGMENTER.file_name)
    with pytest.raises(WeightsMismatchError, match="PSPNet") as error:
        load_xrv_segmenter(cache_dir=tmp_path)
    assert "missing" in str(error.value)


class _Payload:
    """Pickles to a call of os.system: what a tampered weights file could hold."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_executing_pickles_are_refused(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"weight": torch.zeros(1), "payload": _Payload(str(marker))}, tmp_path / CLASSIFIER.file_name)
    with pytest.raises(UnsafeWeightsError, match="weights_only") as refused:
        load_xrv_classifier(cache_dir=tmp_path)
    assert not marker.exists()
    assert "GLOBAL posix.system" in str(refused.value)  # what was refused, in torch's words
    assert "weights_only` set to `False" not in str(refused.value) and "will likely succeed" not in str(refused.value)

    torch.save(torch.nn.GRU(2, 2), tmp_path / CLASSIFIER.file_name)  # a module class outside the allowlist
    with pytest.raises(UnsafeWeightsError, match="GRU"):
        load_xrv_classifier(cache_dir=tmp_path)


def test_legacy_module_pickles_are_refused_with_the_conversion_recipe(tmp_path, densenet):
    """The release DenseNet files are whole modules pickled by torch < 1.6: weights_only cannot read them."""
    torch.save(densenet, tmp_path / CLASSIFIER.file_name, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeWeightsError, match="legacy format") as error:
        load_xrv_classifier(cache_dir=tmp_path)
    assert "xrv.models.DenseNet(weights='densenet121-res224-all')" in str(error.value)
    assert CLASSIFIER.safetensors_name in str(error.value)
    # the converted file, once beside it, is the one loaded
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in densenet.state_dict().items()}, str(tmp_path / CLASSIFIER.safetensors_name))
    assert load_xrv_classifier(cache_dir=tmp_path).weights_path.name == CLASSIFIER.safetensors_name


def test_checksum_is_checked_when_configured(tmp_path, densenet):
    torch.save(densenet.state_dict(), tmp_path / CLASSIFIER.file_name)
    with pytest.raises(WeightsChecksumError, match=CLASSIFIER.file_name):
        load_xrv_classifier(cache_dir=tmp_path, sha256="0" * 64)
    actual = file_sha256(tmp_path / CLASSIFIER.file_name)
    assert load_xrv_classifier(cache_dir=tmp_path, sha256=actual).weights_sha256 == actual


def test_import_keeps_the_process_warning_filters():
    before = list(warnings.filters)
    import_xrv()
    assert list(warnings.filters) == before


@pytest.fixture(scope="module")
def pspnet_cache(tmp_path_factory):
    """A randomly initialised PSPNet saved like the release file: a DataParallel (`module.`) state dict."""
    folder = tmp_path_factory.mktemp("pspnet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_xrv_pspnet().eval()
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, folder / SEGMENTER.file_name)
    return folder, net


def test_pspnet_loads_from_cache(pspnet_cache):
    folder, net = pspnet_cache
    expert = load_xrv_segmenter(cache_dir=folder)
    loaded = expert.model.model.state_dict()
    original = net.state_dict()
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # small: the full 512 run is slow
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ptsemseg's F.upsample deprecation
        torch.testing.assert_close(expert.model.model(x), net(x), rtol=0, atol=0)


@pytest.mark.slow
def test_pspnet_matches_torchxrayvision_and_segments_at_input_size(pspnet_cache):
    from torchxrayvision.baseline_models.chestx_det import PSPNet

    folder, _ = pspnet_cache
    expert = load_xrv_segmenter(cache_dir=folder)
    reference = PSPNet(cache_dir=str(folder)).eval()  # xrv's own loader (weights_only=True for this file)
    images = _images(1, size=48)
    with torch.no_grad():
        expected = reference(xrv_preprocess(images, 512))
    torch.testing.assert_close(expert.logits(images), expected, rtol=0, atol=1e-5)
    masks = expert.segment(images)
    assert masks.shape == (1, len(ANATOMY_STRUCTURES), 48, 48) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
