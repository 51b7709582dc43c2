"""torchxrayvision experts: its DenseNet pathology classifier and its ChestX-Det PSPNet anatomy segmenter.

The architectures, label orders and preprocessing are torchxrayvision's own; the weights come from local
files only. torchxrayvision itself downloads missing weights from its GitHub release page and unpickles
its DenseNet files with `weights_only=False` (arbitrary code execution for a tampered file), so this module
never calls its `DenseNet(weights=...)` / `PSPNet()` constructors. Instead:

1. build the bare architecture (`xrv.models.DenseNet(weights=None)`, `chestx_det.ptsemseg.pspnet.pspnet(14)`);
2. find the weights file in the cache folder torchxrayvision uses (`~/.torchxrayvision/models_data/`, from
   HOME) or a configured `cache_dir` / explicit `path`: `<stem of the release file>.safetensors` if present,
   else the release file name itself; a missing file raises `MissingWeightsError` saying what to run on a
   connected machine and where to put the result; nothing is ever downloaded;
3. read it without a full unpickle. `.safetensors`: safetensors. Otherwise `torch.load(weights_only=True)`:
   the PSPNet release file is a plain (DataParallel, `module.`-prefixed) state dict and loads so (xrv itself
   reads it that way). The DenseNet release files are whole pickled modules (xrv calls `.modules()` on what
   it unpickles, and patches attributes missing from modules pickled by torch < 1.6, so they were written in
   the legacy, pre-zip format). `weights_only=True` reads a whole module in the current format when the
   module classes it names are allowlisted (`torch.serialization.safe_globals`: the restricted unpickler may
   only instantiate those classes and set their attributes); we copy out the tensors and drop the object.
   A legacy-format module pickle (or one naming any other class) cannot be read that way and is refused with
   `UnsafeWeightsError`, whose message gives the one-line conversion to `.safetensors` to run with
   torchxrayvision on a connected, trusting machine;
4. load the tensors strictly into the architecture; wrong architecture -> `WeightsMismatchError`.

Preprocessing follows torchxrayvision: [0, 1] -> [-1024, 1024], centre crop to a square
(`XRayCenterCrop`), resize to the model's resolution (`XRayResizer`: 224 for the DenseNet, 512 for PSPNet).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from aurad_models.experts.base import batches, check_images01, default_device
from aurad_models.pixels import unit_to_xrv
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES, XRV_PATHOLOGY_NAMES

logger = logging.getLogger(__name__)

_RELEASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"


@dataclass(frozen=True)
class XrvWeights:
    """One torchxrayvision weights file as data. The URL is documentation: it is never fetched here."""

    name: str
    architecture: str  # "densenet121" or "pspnet"
    url: str
    labels: tuple[str, ...]
    input_size: int
    op_threshs: tuple[float, ...] | None = None
    sha256: str | None = None  # checked when set
    description: str = ""

    @property
    def file_name(self) -> str:
        """The name torchxrayvision stores the file under in its cache folder (the URL's last part)."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def safetensors_name(self) -> str:
        return Path(self.file_name).stem + ".safetensors"

    def fetch_instructions(self, folder: Path) -> str:
        """What to run on a connected machine to get a file this module loads, and where to put it."""
        download = f"`curl -L -o {self.file_name} {self.url}` and copy the file to {folder / self.file_name}"
        if self.architecture != "densenet121":
            return f"On a connected machine run {download}."
        convert = (
            "`python -c \"import torchxrayvision as xrv, safetensors.torch as st; "
            f"m = xrv.models.DenseNet(weights='{self.name}'); st.save_file({{k: v.contiguous() for k, v in "
            f"m.state_dict().items() if k != 'op_threshs'}}, '{self.safetensors_name}')\"`"
        )
        return (
            f"On a connected machine with torchxrayvision installed run {convert} and copy "
            f"{self.safetensors_name} to {folder / self.safetensors_name} (recommended: the release file "
            f"{self.file_name} is a whole pickled module, probably in the pre-1.6 torch format that "
            f"torch.load(weights_only=True) cannot read; this project will not unpickle it fully). "
            f"Or run {download}: it is used if torch.load(weights_only=True) can read it."
        )


_XRV_18_LABELS = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
    "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion",
    "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)

# Copied from torchxrayvision 1.5.7 (`models.model_urls`, `chestx_det.PSPNet`); a test checks they agree.
XRV_WEIGHTS: Mapping[str, XrvWeights] = MappingProxyType(
    {
        "densenet121-res224-all": XrvWeights(
            name="densenet121-res224-all",
            architecture="densenet121",
            url=_RELEASE
            + "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
            labels=_XRV_18_LABELS,
            input_size=224,
            op_threshs=(
                0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074, 0.0022490358, 0.010060724,
                0.103246614, 0.056810737, 0.026791653, 0.050318155, 0.023985857, 0.01939503, 0.042889766,
                0.053369623, 0.035975814, 0.20204692, 0.05015312,
            ),
            description="DenseNet-121 trained on NIH, PadChest, CheXpert, MIMIC-CXR, Google, OpenI, RSNA "
            "(arXiv:2002.02497); outputs calibrated so 0.5 is each label's operating point.",
        ),
        "chestx_det-pspnet": XrvWeights(
            name="chestx_det-pspnet",
            architecture="pspnet",
            url=_RELEASE + "pspnet_chestxray_best_model_4.pth",
            labels=ANATOMY_STRUCTURES,
            input_size=512,
            description="PSPNet trained on ChestX-Det for 14 anatomy structures (Lian et al., IEEE TMI 2021).",
        ),
    }
)
DEFAULT_CLASSIFIER_WEIGHTS = "densenet121-res224-all"
DEFAULT_SEGMENTER_WEIGHTS = "chestx_det-pspnet"

# ImageNet normalisation that chestx_det.PSPNet applies after mapping [-1024, 1024] to [0, 1].
_PSPNET_MEAN = (0.485, 0.456, 0.406)
_PSPNET_STD = (0.229, 0.224, 0.225)


class ExpertWeightsError(RuntimeError):
    """Pretrained weights that cannot be used as asked; the message says what to do."""


class MissingWeightsError(ExpertWeightsError, FileNotFoundError):
    """The weights file is not on this machine. Names the file, the folder looked in and the source URL."""


class WeightsMismatchError(ExpertWeightsError, ValueError):
    """The file holds weights of another architecture (or is no weights file at all)."""


class UnsafeWeightsError(ExpertWeightsError):
    """The file would need a full (code-executing) unpickle; convert it to a state dict on a trusted machine."""


class WeightsChecksumError(ExpertWeightsError, ValueError):
    """The file's sha256 is not the one configured."""


# --- torchxrayvision itself ------------------------------------------------------------------------


def import_xrv() -> ModuleType:
    """Import torchxrayvision without keeping the process-wide `warnings.filterwarnings("ignore")` its
    import runs (it would silence every warning of the whole pipeline)."""
    with warnings.catch_warnings():
        import torchxrayvision

    return torchxrayvision


def default_cache_dir() -> Path:
    """torchxrayvision's weights folder, derived from HOME exactly as `xrv.utils.get_cache_dir` does."""
    return Path(os.path.expanduser(os.path.join("~", ".torchxrayvision", "models_data")))


def xrv_weights(name: str) -> XrvWeights:
    """The registry entry for a weights name; other torchxrayvision DenseNet names are read from its table."""
    if name in XRV_WEIGHTS:
        return XRV_WEIGHTS[name]
    xrv = import_xrv()
    entry = xrv.models.model_urls.get(name)
    if entry is None or not name.startswith("densenet"):
        known = sorted(set(XRV_WEIGHTS) | {k for k in xrv.models.model_urls if k.startswith("densenet")})
        raise KeyError(f"unknown torchxrayvision weights {name!r}; known: {', '.join(known)}")
    return XrvWeights(
        name=name,
        architecture="densenet121",
        url=entry["weights_url"],
        labels=tuple(entry["labels"]),
        input_size=int(entry.get("input_resolution", 224)),
        op_threshs=tuple(float(t) for t in entry["op_threshs"]) if "op_threshs" in entry else None,
        description=entry.get("description", ""),
    )


def find_weights(spec: XrvWeights, cache_dir: str | Path | None = None, path: str | Path | None = None) -> Path:
    """Where the weights file is, or `MissingWeightsError` saying what to fetch and where to put it."""
    if path is not None:
        path = Path(path).expanduser()
        if path.is_file():
            return path
        raise MissingWeightsError(
            f"torchxrayvision weights {spec.name!r}: the configured file {path} does not exist. Nothing is "
            f"downloaded here. {spec.fetch_instructions(path.parent)}"
        )
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    for candidate in (folder / spec.safetensors_name, folder / spec.file_name):  # a converted file wins
        if candidate.is_file():
            return candidate
    raise MissingWeightsError(
        f"torchxrayvision weights {spec.name!r} not found: no file {spec.file_name} (or {spec.safetensors_name}) "
        f"in {folder}. Nothing is downloaded here. {spec.fetch_instructions(folder)} "
        "(Or set cache_dir to the folder holding the file, or path to the file.)"
    )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- reading weights safely ------------------------------------------------------------------------


def _densenet_classes() -> list[type]:
    """Classes a pickled torchxrayvision DenseNet names; the only ones its unpickling may build."""
    xrv = import_xrv()
    import torchvision.models.densenet as tv_densenet

    return [
        xrv.models.DenseNet, xrv.models._DenseBlock, xrv.models._DenseLayer, xrv.models._Transition,
        tv_densenet.DenseNet, tv_densenet._DenseBlock, tv_densenet._DenseLayer, tv_densenet._Transition,
        nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Linear, nn.Dropout,
    ]


def _module_tensors(module: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of an unpickled module, read from its attributes only: no method
    of the object is called (old pickles may lack attributes newer torch methods expect)."""
    attributes = vars(module)
    skip = attributes.get("_non_persistent_buffers_set") or set()
    out: dict[str, torch.Tensor] = {}
    for name, value in (attributes.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value.detach()
    for name, value in (attributes.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in (attributes.get("_modules") or {}).items():
        if child is not None:
            out.update(_module_tensors(child, f"{prefix}{name}."))
    return out


def _refusal_reason(error: Exception) -> str:
    """What torch's weights-only unpickler refused ("unsupported GLOBAL posix.system ..."), without its
    advice to retry with weights_only=False, which this project never follows."""
    lines = [line.strip().removeprefix("WeightsUnpickler error:").strip() for line in str(error).splitlines()]
    useful = [line for line in lines if line and "weights_only" not in line and not line.startswith("Check the documentation")
              and not line.startswith("Weights only load failed")]
    return useful[0] if useful else "a pickled object outside the allowed tensor types"


def read_weights(
    path: str | Path, allowed_classes: Sequence[type] = (), instructions: str = ""
) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a safetensors file, a state-dict file or a pickled module file,
    never unpickling beyond `weights_only=True` (plus `allowed_classes`). `instructions` say how to get a
    file that loads when this one cannot be read safely."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with torch.serialization.safe_globals(list(allowed_classes)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = _refusal_reason(error)
        if "persistent_load" in detail:
            detail += " (a whole module pickled by torch < 1.6, the legacy format)"
        raise UnsafeWeightsError(
            f"{path} cannot be read with torch.load(weights_only=True): {detail}. This project never unpickles "
            "arbitrary objects. "
            + (instructions or f"Convert it to a state dict (.safetensors) on a machine where you trust it, and put "
               f"{path.with_suffix('.safetensors').name} beside it.")
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise WeightsMismatchError(f"{path} is not a readable torch weights file: {error}") from None
    if isinstance(obj, nn.Module):
        return _module_tensors(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            return dict(tensors)
    raise WeightsMismatchError(f"{path} holds a {type(obj).__name__}, not a state dict or a torch module")


def load_weights_into(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Strictly load tensors into a model; a clear error naming what differs when they do not fit."""
    if tensors and all(k.startswith("module.") for k in tensors):  # saved from DataParallel
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    expected = model.state_dict()
    tensors = {k: v for k, v in tensors.items() if k != "op_threshs"}  # thresholds come from the registry
    missing = [k for k in expected if k not in tensors and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in tensors if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} of the wrong shape (e.g. {'; '.join(wrong_shape[:3])})")
        raise WeightsMismatchError(f"{path} does not hold {what} weights: {', '.join(parts)}")
    for key in expected:  # BatchNorm counters absent from old checkpoints: unused in eval
        tensors.setdefault(key, expected[key])
    model.load_state_dict(tensors, strict=True)


def _checked_sha256(path: Path, spec: XrvWeights, sha256: str | None) -> str:
    actual = file_sha256(path)
    wanted = sha256 or spec.sha256
    if wanted and actual.lower() != wanted.lower():
        raise WeightsChecksumError(f"{path}: sha256 {actual} is not the configured {wanted} for {spec.name}")
    return actual


# --- the experts -----------------------------------------------------------------------------------


def center_crop_box(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of `XRayCenterCrop`'s square crop of an image of this size."""
    side = min(height, width)
    return height // 2 - side // 2, width // 2 - side // 2, side


def xrv_preprocess(images01: np.ndarray, size: int) -> torch.Tensor:
    """torchxrayvision's input from [0, 1] images: [-1024, 1024], centre-cropped square (`XRayCenterCrop`),
    resized to `size` (`XRayResizer`); (N, 1, size, size) float32."""
    xrv = import_xrv()
    images = check_images01(images01)
    crop = xrv.datasets.XRayCenterCrop()
    resize = xrv.datasets.XRayResizer(size)
    out = np.empty((images.shape[0], 1, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = resize(crop(unit_to_xrv(image)[None]))
    return torch.from_numpy(out)


@dataclass
class XrvPathologyExpert:
    """torchxrayvision's DenseNet as a PathologyExpert. Probabilities are its operating-point-calibrated
    outputs (0.5 = the label's operating point); labels the weights do not predict come back NaN."""

    model: nn.Module
    spec: XrvWeights
    weights_path: Path
    weights_sha256: str
    batch_size: int = 32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def name(self) -> str:
        return f"xrv:{self.spec.name}"

    def _columns(self) -> list[int | None]:
        columns: list[int | None] = []
        for label in PATHOLOGIES:
            xrv_name = XRV_PATHOLOGY_NAMES[label]
            index = self.spec.labels.index(xrv_name) if xrv_name in self.spec.labels else None
            if index is not None and self.spec.op_threshs is not None and np.isnan(self.spec.op_threshs[index]):
                index = None  # op_norm gives a constant 0.5 there: not a prediction
            columns.append(index)
        return columns

    def _run(self, images01: np.ndarray, head: bool) -> np.ndarray:
        images = check_images01(images01)
        outputs = []
        with torch.inference_mode():
            for part in batches(len(images), self.batch_size):
                batch = xrv_preprocess(images[part], self.spec.input_size).to(self.device)
                out = self.model(batch) if head else self.model.features2(batch)
                outputs.append(out.float().cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)

    def predict(self, images01: np.ndarray) -> np.ndarray:
        raw = self._run(images01, head=True)
        probs = np.full((raw.shape[0], len(PATHOLOGIES)), np.nan, dtype=np.float32)
        for j, column in enumerate(self._columns()):
            if column is not None:
                probs[:, j] = raw[:, column]
        return probs

    def features(self, images01: np.ndarray) -> np.ndarray:
        """1024-d `features2` (ReLU + global average pool of the last dense block), as FXD uses."""
        return self._run(images01, head=False)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "torchxrayvision",
            "weights": self.spec.name,
            "file": self.weights_path.name,
            "sha256": self.weights_sha256,
        }


class XrvPSPNetForward(nn.Module):
    """`chestx_det.PSPNet.forward` without its constructor's download: [-1024, 1024] grey (N, 1, 512, 512)
    -> 3 channels in [0, 1] -> ImageNet normalisation -> the ptsemseg `pspnet` -> logits (N, 14, 512, 512)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(_PSPNET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_PSPNET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.repeat(1, 3, 1, 1)
        x = (x + 1024) / 2048
        x = (x - self.mean) / self.std
        with warnings.catch_warnings():  # ptsemseg calls the deprecated F.upsample
            warnings.simplefilter("ignore", UserWarning)
            return self.model(x)


@dataclass
class XrvAnatomyExpert:
    """torchxrayvision's ChestX-Det PSPNet as an AnatomyExpert: sigmoid > threshold per structure, as in
    torchxrayvision's segmentation notebook; masks resized back to the input's resolution."""

    model: XrvPSPNetForward
    spec: XrvWeights
    weights_path: Path
    weights_sha256: str
    threshold: float = 0.5
    batch_size: int = 2
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def name(self) -> str:
        return f"xrv:{self.spec.name}"

    def logits(self, images01: np.ndarray) -> torch.Tensor:
        """Raw PSPNet output for the centre crop at the model's resolution: (N, 14, 512, 512)."""
        images = check_images01(images01)
        outputs = []
        with torch.inference_mode():
            for part in batches(len(images), self.batch_size):
                x = xrv_preprocess(images[part], self.spec.input_size).to(self.device)
                outputs.append(self.model(x).float().cpu())
        return torch.cat(outputs)

    def segment(self, images01: np.ndarray) -> np.ndarray:
        images = check_images01(images01)
        n, h, w = images.shape
        top, left, side = center_crop_box(h, w)
        out = np.zeros((n, len(ANATOMY_STRUCTURES), h, w), dtype=np.uint8)
        for part in batches(n, self.batch_size):
            logits = torch.nn.functional.interpolate(
                self.logits(images[part]), size=(side, side), mode="bilinear", align_corners=False
            )
            out[part, :, top : top + side, left : left + side] = (torch.sigmoid(logits) > self.threshold).numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "torchxrayvision",
            "weights": self.spec.name,
            "file": self.weights_path.name,
            "sha256": self.weights_sha256,
        }


def build_xrv_densenet(spec: XrvWeights) -> nn.Module:
    """The bare torchxrayvision DenseNet for a weights entry (no weights, no download)."""
    xrv = import_xrv()
    model = xrv.models.DenseNet(weights=None, num_classes=len(spec.labels))
    model.targets = list(spec.labels)
    model.pathologies = model.targets
    return model


def build_xrv_pspnet(spec: XrvWeights | None = None) -> nn.Module:
    """The bare ChestX-Det PSPNet (ptsemseg `pspnet` with 14 classes): `chestx_det.PSPNet` has no
    weights-free constructor."""
    import_xrv()
    from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet

    return pspnet(len((spec or XRV_WEIGHTS[DEFAULT_SEGMENTER_WEIGHTS]).labels))


def load_xrv_classifier(
    weights: str = DEFAULT_CLASSIFIER_WEIGHTS,
    cache_dir: str | Path | None = None,
    path: str | Path | None = None,
    sha256: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
) -> XrvPathologyExpert:
    """torchxrayvision's DenseNet with local weights (cache folder or explicit path), as a PathologyExpert."""
    spec = xrv_weights(weights)
    if spec.architecture != "densenet121":
        raise ValueError(f"{weights!r} is a {spec.architecture}, not a DenseNet classifier")
    file = find_weights(spec, cache_dir, path)
    digest = _checked_sha256(file, spec, sha256)
    model = build_xrv_densenet(spec)
    tensors = read_weights(file, _densenet_classes(), spec.fetch_instructions(file.parent))
    load_weights_into(model, tensors, file, f"torchxrayvision DenseNet-121 ({spec.name})")
    if spec.op_threshs is not None:  # as xrv does after loading: outputs rescaled so 0.5 = operating point
        model.op_threshs = torch.tensor(spec.op_threshs, dtype=torch.float32)
    device = default_device(device)
    model.to(device).eval()
    logger.info("loaded torchxrayvision %s from %s", spec.name, file)
    return XrvPathologyExpert(model, spec, file, digest, batch_size=batch_size, device=device)


def load_xrv_segmenter(
    cache_dir: str | Path | None = None,
    path: str | Path | None = None,
    sha256: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 2,
    threshold: float = 0.5,
    weights: str = DEFAULT_SEGMENTER_WEIGHTS,
) -> XrvAnatomyExpert:
    """torchxrayvision's ChestX-Det PSPNet with local weights, as an AnatomyExpert."""
    spec = xrv_weights(weights)
    if spec.architecture != "pspnet":
        raise ValueError(f"{weights!r} is a {spec.architecture}, not the PSPNet segmenter")
    file = find_weights(spec, cache_dir, path)
    digest = _checked_sha256(file, spec, sha256)
    net = build_xrv_pspnet(spec)
    load_weights_into(net, read_weights(file, (), spec.fetch_instructions(file.parent)), file, "ChestX-Det PSPNet (14 anatomy structures)")
    device = default_device(device)
    model = XrvPSPNetForward(net).to(device).eval()
    logger.info("loaded torchxrayvision %s from %s", spec.name, file)
    return XrvAnatomyExpert(model, spec, file, digest, threshold=threshold, batch_size=batch_size, device=device)
