"""Quality and downstream metrics: pure functions over arrays and feature sets.

Image-set metrics (is the synthetic set like the real one?):
    frechet_distance / fxd   Fréchet distance between Gaussian fits of two feature sets; FXD when the
                             features are torchxrayvision DenseNet `features2` (see `xrv_features`).
    inception_fid            the classic FID, only where Inception weights are present locally.
    prdc                     precision / recall / density / coverage on k-NN balls (Naeem et al. 2020).
    ms_ssim_diversity        mean MS-SSIM between samples of the same prompt (lower = more diverse).
Label metrics (are the masks and images consistent with the prompt?):
    mask_anatomy_consistency share of each mask inside the anatomy it is allowed in.
    expert_agreement         share of prompted findings a classifier detects.
Downstream metrics (how good is a model trained on the data?):
    dice_per_class           Dice of binary masks, per class, with the empty-empty rule documented there.
    mean_average_precision   mAP@0.5 of boxes (VOC all-point interpolation).

Nothing here downloads weights: a feature extractor is passed in, or loaded from a local file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from aurad_models.anatomy_rules import allowed_region, inside_fraction
from aurad_models.findings import Finding
from aurad_models.vocabulary import PATHOLOGIES

logger = logging.getLogger(__name__)

XRV_INPUT_SIZE = 224
INCEPTION_INPUT_SIZE = 299
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales


# --- feature sets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSet:
    """Features of a set of images, (N, D), and the name of the extractor that made them.

    Distances are only comparable between feature sets of the same extractor, so the name travels with
    the values and ends up in every result.
    """

    values: np.ndarray
    extractor: str

    def __post_init__(self) -> None:
        if self.values.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {self.values.shape}")

    @property
    def is_xrv(self) -> bool:
        """torchxrayvision features (`xrv-...` from `xrv_features`, `xrv:...` from an xrv expert): FXD."""
        return self.extractor.startswith("xrv")


def _check_images01(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W) floats in [0, 1], got shape {images.shape}")
    if images.size and (np.nanmin(images) < -1e-4 or np.nanmax(images) > 1 + 1e-4):
        raise ValueError(
            f"images must be in [0, 1] (the pixel contract), got [{np.nanmin(images):.3f}, {np.nanmax(images):.3f}]"
        )
    return images


def xrv_extractor_name(model: torch.nn.Module) -> str:
    """`xrv-<weights>/features2`, e.g. xrv-densenet121-res224-all/features2; `untrained` for weights=None."""
    weights = getattr(model, "weights", None) or "untrained"
    return f"xrv-{weights}/features2"


@torch.no_grad()
def xrv_features(model: torch.nn.Module, images01: np.ndarray, batch_size: int = 32, size: int = XRV_INPUT_SIZE) -> FeatureSet:
    """FXD features: a torchxrayvision DenseNet's `features2` (1024-d) after xrv's own preprocessing
    (grayscale in [-1024, 1024], `XRayCenterCrop`, `XRayResizer` to 224; `experts.xrv.xrv_preprocess`)."""
    from aurad_models.experts.xrv import xrv_preprocess

    images01 = _check_images01(images01)
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(images01), batch_size):
        batch = xrv_preprocess(images01[start : start + batch_size], size).to(device)
        chunks.append(model.features2(batch).float().cpu().numpy())
    values = np.concatenate(chunks) if chunks else np.zeros((0, 1024), np.float32)
    return FeatureSet(values.astype(np.float64), xrv_extractor_name(model))


def expert_features(expert: Any, images01: np.ndarray, name: str | None = None) -> FeatureSet:
    """Features from a `PathologyExpert` (`expert.features(images01) -> (N, D)`), named after the expert
    (`expert.name`, or `name`) so the result says which extractor was used. An expert wrapping an xrv
    DenseNet should be named `xrv-...` for its distances to be reported as FXD."""
    values = np.asarray(expert.features(_check_images01(images01)), dtype=np.float64)
    return FeatureSet(values, name or str(getattr(expert, "name", type(expert).__name__)))


# --- Fréchet distance ------------------------------------------------------------------------------


def frechet_distance_gaussians(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), the closed form between two Gaussians.

    Tr((S1 S2)^1/2) is computed as the sum of square roots of the eigenvalues of S1^1/2 S2 S1^1/2, which is
    symmetric positive semi-definite: stable for the rank-deficient covariances of few samples in many
    dimensions, where `scipy.linalg.sqrtm` of S1 S2 goes complex.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    evals, evecs = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    middle = root1 @ sigma2 @ root1
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
    return max(value, 0.0)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits (mean, covariance) of two feature sets (N, D).

    Measures how far apart two image distributions are in a feature space: 0 for identical statistics,
    growing with any shift in mean or spread. Biased upwards for small N; compare values at equal N.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples per set for a covariance, got {len(a)} and {len(b)}")
    return frechet_distance_gaussians(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def fxd(real: FeatureSet, synthetic: FeatureSet) -> dict[str, Any]:
    """Fréchet distance of two feature sets, recording the extractor: `FXD` on xrv DenseNet features,
    `FD-<extractor>` otherwise (e.g. the project classifier's penultimate features)."""
    if real.extractor != synthetic.extractor:
        raise ValueError(f"feature sets come from different extractors: {real.extractor!r} vs {synthetic.extractor!r}")
    return {
        "metric": "FXD" if real.is_xrv else "FD",
        "value": frechet_distance(real.values, synthetic.values),
        "extractor": real.extractor,
        "n_real": len(real.values),
        "n_synthetic": len(synthetic.values),
        "dim": int(real.values.shape[1]),
    }


# --- Inception FID (only with local weights) -------------------------------------------------------


INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"  # torchvision's IMAGENET1K_V1 weights, as torch.hub names them


def cached_inception_weights() -> Path | None:
    """torchvision's Inception-v3 weights where torch.hub keeps them, if some earlier run put them there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return path if path.is_file() else None


def load_local_inception(weights_path: str | Path | None) -> tuple[torch.nn.Module | None, str | None]:
    """torchvision inception_v3 from a local state-dict file (safetensors or a torch weights-only file);
    with no path given, torch.hub's cache is looked in (`cached_inception_weights`).

    Returns (model, None) or (None, reason): never downloads. The head is replaced by the identity so the
    model outputs the 2048-d pool features FID uses.
    """
    if weights_path is None:
        weights_path = cached_inception_weights()
    if weights_path is None:
        return None, (f"no Inception weights: none configured (metrics.inception_weights) and no {INCEPTION_FILE} in "
                      f"{Path(torch.hub.get_dir()) / 'checkpoints'}; FID skipped")
    path = Path(weights_path)
    if not path.is_file():
        return None, f"Inception weights file {path} not found; FID skipped (put torchvision inception_v3 weights there)"
    from torchvision.models import inception_v3

    # transform_input: the Google weights expect [-1, 1] inputs; this maps ImageNet-normalised ones there,
    # as torchvision does when it loads these weights itself
    model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.fc = torch.nn.Identity()
    return model.eval(), None


@torch.no_grad()
def inception_features(model: torch.nn.Module, images01: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """2048-d pool features of grayscale [0, 1] images: repeated to RGB, resized to 299, ImageNet-normalised."""
    images01 = _check_images01(images01)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    chunks = []
    for start in range(0, len(images01), batch_size):
        x = torch.from_numpy(images01[start : start + batch_size])[:, None].repeat(1, 3, 1, 1)
        x = torch.nn.functional.interpolate(x, size=(INCEPTION_INPUT_SIZE,) * 2, mode="bilinear", align_corners=False)
        chunks.append(model((x - mean) / std).cpu().numpy())
    return np.concatenate(chunks).astype(np.float64)


def inception_fid(real01: np.ndarray, synthetic01: np.ndarray, weights_path: str | Path | None) -> dict[str, Any]:
    """FID with torchvision's Inception-v3 where its weights are a local file, else a recorded skip.

    Note: torchvision's Inception is not the TF-FID graph, so values are comparable within this project
    only. FXD is the headline image metric for CXRs; FID is reported for readers who expect it.
    """
    model, reason = load_local_inception(weights_path)
    if model is None:
        logger.info(reason)
        return {"metric": "FID", "value": None, "skipped": reason}
    value = frechet_distance(inception_features(model, real01), inception_features(model, synthetic01))
    name = Path(weights_path).name if weights_path is not None else INCEPTION_FILE
    return {"metric": "FID", "value": value, "extractor": f"torchvision-inception_v3:{name}",
            "n_real": len(real01), "n_synthetic": len(synthetic01)}


# --- precision / recall / density / coverage -------------------------------------------------------


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.spatial.distance import cdist

    return cdist(a, b, metric="euclidean")


def prdc(real: np.ndarray, synthetic: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of a synthetic feature set against a real one (Naeem et al. 2020).

    Each real sample gets a ball reaching its k-th nearest real neighbour (each synthetic sample likewise
    among the synthetic ones).
    - precision: share of synthetic samples inside some real ball (fidelity);
    - recall: share of real samples inside some synthetic ball (diversity);
    - density: mean number of real balls holding a synthetic sample, / k (fidelity, robust to real outliers;
      about 1 when the sets match, can exceed 1);
    - coverage: share of real balls holding at least one synthetic sample (diversity, robust to outliers).
    """
    real, synthetic = np.asarray(real, np.float64), np.asarray(synthetic, np.float64)
    if real.ndim != 2 or synthetic.ndim != 2 or real.shape[1] != synthetic.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {real.shape} and {synthetic.shape}")
    if len(real) <= k or len(synthetic) <= k:
        raise ValueError(f"need more than k={k} samples per set, got {len(real)} real and {len(synthetic)} synthetic")
    real_real = _pairwise_distances(real, real)
    fake_fake = _pairwise_distances(synthetic, synthetic)
    real_fake = _pairwise_distances(real, synthetic)
    # k-th neighbour excluding self: index k in the sorted row (index 0 is the sample itself)
    real_radii = np.partition(real_real, k, axis=1)[:, k]
    fake_radii = np.partition(fake_fake, k, axis=1)[:, k]
    inside_real_balls = real_fake < real_radii[:, None]  # (real, synthetic)
    return {
        "precision": float(inside_real_balls.any(axis=0).mean()),
        "recall": float((real_fake < fake_radii[None, :]).any(axis=1).mean()),
        "density": float(inside_real_balls.sum(axis=0).mean() / k),
        "coverage": float((real_fake.min(axis=1) < real_radii).mean()),
        "k": k,
        "n_real": len(real),
        "n_synthetic": len(synthetic),
    }


# --- MS-SSIM ---------------------------------------------------------------------------------------


def ms_ssim_scales(size: int, kernel_size: int = 11, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """How many MS-SSIM scales an image side allows: the coarsest scale must still hold the kernel.

    The standard 5 scales need >= 161 px (11-px kernel); 64 px allows 3, 128 and 256 px allow 4 and 5.
    """
    scales = 1
    while scales < max_scales and size // 2**scales >= kernel_size and size // scales**2 > kernel_size - 1:
        scales += 1
    return scales


def ms_ssim(images_a: np.ndarray, images_b: np.ndarray, data_range: float = 1.0, kernel_size: int = 11) -> tuple[np.ndarray, int]:
    """Per-pair MS-SSIM of two stacks of images (N, H, W) in [0, `data_range`], with MONAI's implementation.

    Uses as many of the 5 standard scales as the image size allows (`ms_ssim_scales`), with the standard
    weights truncated and renormalised to sum to 1. Returns (values (N,), scales used).
    """
    from monai.metrics.regression import compute_ms_ssim

    a = torch.as_tensor(np.asarray(images_a, np.float32))[:, None]
    b = torch.as_tensor(np.asarray(images_b, np.float32))[:, None]
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"image stacks must be (N, H, W) of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    scales = ms_ssim_scales(min(a.shape[-2:]), kernel_size)
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales]) / sum(MS_SSIM_WEIGHTS[:scales])
    values = compute_ms_ssim(a, b, spatial_dims=2, data_range=data_range, kernel_size=kernel_size, weights=tuple(weights.tolist()))
    return values.view(-1).numpy().astype(np.float64), scales


def ms_ssim_diversity(groups: np.ndarray) -> dict[str, Any]:
    """Within-prompt diversity: mean MS-SSIM over all pairs of samples generated from the same prompt.

    `groups` is (P, S, H, W): P prompts, S samples each (4 gives all 6 pairs). High MS-SSIM (near 1) means
    the generator gives the same image whatever the seed (mode collapse); `diversity` = 1 - mean MS-SSIM.
    Small images use fewer scales; the number used is recorded.
    """
    groups = np.asarray(groups, np.float32)
    if groups.ndim != 4 or groups.shape[1] < 2:
        raise ValueError(f"groups must be (prompts, samples >= 2, H, W), got shape {groups.shape}")
    pairs = list(combinations(range(groups.shape[1]), 2))
    first = np.concatenate([groups[:, i] for i, _ in pairs])
    second = np.concatenate([groups[:, j] for _, j in pairs])
    values, scales = ms_ssim(first, second)
    note = "" if scales == len(MS_SSIM_WEIGHTS) else f"{scales} of 5 scales at {groups.shape[-1]} px (weights renormalised)"
    return {
        "ms_ssim": float(values.mean()),
        "ms_ssim_std": float(values.std()),
        "diversity": float(1.0 - values.mean()),
        "prompts": int(groups.shape[0]),
        "pairs_per_prompt": len(pairs),
        "scales": scales,
        "note": note,
    }


def group_by_prompt(prompts: Sequence[str], per_prompt: int = 4) -> list[list[int]]:
    """Indices of samples sharing a prompt, `per_prompt` each, for prompts that have that many (in order)."""
    by_prompt: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_prompt.setdefault(prompt, []).append(index)
    return [indices[:per_prompt] for indices in by_prompt.values() if len(indices) >= per_prompt]


# --- label consistency -----------------------------------------------------------------------------


def mask_anatomy_consistency(
    pathology: np.ndarray,
    anatomy: np.ndarray,
    findings: Sequence[Sequence[Finding]] | None = None,
    inside_min: float = 0.9,
) -> dict[str, dict[str, float]]:
    """Per finding: the share of mask pixels inside the region the anatomy allows for it.

    For each non-empty mask channel, `inside_fraction(mask, allowed_region(label, anatomy, side))` with the
    prompted side when the findings are given. Reports the mean share, and the share of masks with at
    least `inside_min` of their pixels inside (usable as labels). Empty masks are not counted.
    """
    if pathology.ndim != 4 or pathology.shape[1] != len(PATHOLOGIES) or anatomy.ndim != 4 or len(anatomy) != len(pathology):
        raise ValueError(f"pathology must be (N, {len(PATHOLOGIES)}, H, W) and anatomy (N, A, H, W), got {pathology.shape}, {anatomy.shape}")
    inside: dict[str, list[float]] = {label: [] for label in PATHOLOGIES}
    for i in range(len(pathology)):
        sides = {f.label: f.side for f in findings[i]} if findings is not None else {}
        for c, label in enumerate(PATHOLOGIES):
            mask = pathology[i, c].astype(bool)
            if mask.any():
                inside[label].append(inside_fraction(mask, allowed_region(label, anatomy[i], sides.get(label))))
    out: dict[str, dict[str, float]] = {}
    for label, values in inside.items():
        if values:
            arr = np.asarray(values)
            out[label] = {"n_masks": len(arr), "mean_inside": float(arr.mean()), "share_usable": float((arr >= inside_min).mean())}
    all_values = np.asarray([v for values in inside.values() for v in values])
    if all_values.size:
        out["all"] = {"n_masks": int(all_values.size), "mean_inside": float(all_values.mean()),
                      "share_usable": float((all_values >= inside_min).mean())}
    return out


def expert_agreement(
    probabilities: np.ndarray,
    findings: Sequence[Sequence[Finding]],
    thresholds: float | Sequence[float] = 0.5,
) -> dict[str, dict[str, Any]]:
    """Per finding: how often the classifier detects it when prompted (sensitivity on the synthetic set),
    and how often it fires when not prompted (false-alarm rate).

    `probabilities` is (N, 7) in the PATHOLOGIES order (e.g. `expert.predict(images01)`). NaN means the
    expert does not predict that finding: such entries are unknown and left out (a finding the expert
    cannot see at all is missing from the result), never counted as "not detected".
    """
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.shape != (len(findings), len(PATHOLOGIES)):
        raise ValueError(f"probabilities must be ({len(findings)}, {len(PATHOLOGIES)}), got {probabilities.shape}")
    known = ~np.isnan(probabilities)
    detected = np.nan_to_num(probabilities, nan=-np.inf) >= np.broadcast_to(np.asarray(thresholds, np.float64), (len(PATHOLOGIES),))
    prompted = np.zeros(probabilities.shape, dtype=bool)
    for i, sample in enumerate(findings):
        for finding in sample:
            prompted[i, PATHOLOGIES.index(finding.label)] = True
    positive, negative = prompted & known, ~prompted & known

    def rate(hits: np.ndarray, select: np.ndarray) -> float | None:
        return float(hits[select].mean()) if select.any() else None

    out: dict[str, dict[str, Any]] = {}
    for c, label in enumerate(PATHOLOGIES):
        if not known[:, c].any():
            continue
        out[label] = {"n_prompted": int(positive[:, c].sum()), "detected_rate": rate(detected[:, c], positive[:, c]),
                      "false_alarm_rate": rate(detected[:, c], negative[:, c])}
    if known.any():
        out["all"] = {"n_prompted": int(positive.sum()), "detected_rate": rate(detected, positive),
                      "false_alarm_rate": rate(detected, negative)}
    return out


# --- downstream: Dice ------------------------------------------------------------------------------


def dice_scores(prediction: np.ndarray, target: np.ndarray, empty_value: float | None = None) -> np.ndarray:
    """Per sample and class Dice, 2|P∩G| / (|P| + |G|), of binary masks (N, C, H, W) -> (N, C).

    Empty-empty rule: where both prediction and target are empty the Dice is undefined; it is
    `empty_value` (NaN by default, so the case is left out of means) - a class that is absent and
    correctly not predicted says nothing about how well lesions are outlined, and counting it as 1 would
    let a model that predicts nothing score high on rare findings. A prediction on an empty target, or a
    missed target, scores 0.
    """
    prediction, target = np.asarray(prediction).astype(bool), np.asarray(target).astype(bool)
    if prediction.shape != target.shape or prediction.ndim != 4:
        raise ValueError(f"prediction and target must be (N, C, H, W) of one shape, got {prediction.shape}, {target.shape}")
    intersection = (prediction & target).sum(axis=(2, 3)).astype(np.float64)
    total = prediction.sum(axis=(2, 3)).astype(np.float64) + target.sum(axis=(2, 3))
    fill = math.nan if empty_value is None else float(empty_value)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * intersection / total, fill)


def dice_per_class(
    prediction: np.ndarray, target: np.ndarray, labels: Sequence[str] = PATHOLOGIES, empty_value: float | None = None
) -> dict[str, Any]:
    """Mean Dice per class over the samples where it is defined (see `dice_scores`), and their mean.

    `per_class[label]` is None where no sample has that class in the prediction or the target; `mean` is
    the mean over the classes that have a value (macro average), None if none has. `counts` are the
    samples each class mean is over.

    Also `pooled`: Dice of each class over the whole set at once, 2 sum|P∩G| / (sum|P| + sum|G|), where a
    few stray pixels on an image without the finding cost little instead of a whole 0. Steadier with small
    test sets; reported beside the per-sample mean, not instead of it.
    """
    prediction, target = np.asarray(prediction).astype(bool), np.asarray(target).astype(bool)
    scores = dice_scores(prediction, target, empty_value)
    if scores.shape[1] != len(labels):
        raise ValueError(f"{scores.shape[1]} mask channels but {len(labels)} labels")
    per_class: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for c, label in enumerate(labels):
        defined = scores[:, c][~np.isnan(scores[:, c])]
        per_class[label] = float(defined.mean()) if defined.size else None
        counts[label] = int(defined.size)
    values = [v for v in per_class.values() if v is not None]
    intersection = (prediction & target).sum(axis=(0, 2, 3)).astype(np.float64)
    total = prediction.sum(axis=(0, 2, 3)).astype(np.float64) + target.sum(axis=(0, 2, 3))
    pooled = {label: (float(2 * intersection[c] / total[c]) if total[c] > 0 else None) for c, label in enumerate(labels)}
    pooled_values = [v for v in pooled.values() if v is not None]
    return {
        "mean": float(np.mean(values)) if values else None,
        "per_class": per_class,
        "counts": counts,
        "pooled": {"mean": float(np.mean(pooled_values)) if pooled_values else None, "per_class": pooled},
    }


# --- downstream: mAP@0.5 ---------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes (x1, y1, x2, y2), (K, 4) x (M, 4) -> (K, M)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def average_precision(
    predictions: Sequence[Mapping[str, np.ndarray]],
    targets: Sequence[Mapping[str, np.ndarray]],
    label: int,
    iou_threshold: float = 0.5,
) -> float | None:
    """AP of one class: all-point interpolated area under the precision-recall curve (PASCAL VOC 2010+).

    Predictions of all images are ranked by score; each is a true positive if it overlaps a not yet
    matched ground-truth box of its image with IoU >= `iou_threshold`. None when the class has no
    ground-truth box (AP undefined; left out of mAP).
    """
    records: list[tuple[float, int, np.ndarray]] = []
    gt_boxes: list[np.ndarray] = []
    for image, (pred, gt) in enumerate(zip(predictions, targets, strict=True)):
        gt_boxes.append(np.asarray(gt["boxes"], np.float64).reshape(-1, 4)[np.asarray(gt["labels"]).reshape(-1) == label])
        keep = np.asarray(pred["labels"]).reshape(-1) == label
        boxes = np.asarray(pred["boxes"], np.float64).reshape(-1, 4)[keep]
        scores = np.asarray(pred["scores"], np.float64).reshape(-1)[keep]
        records.extend((float(s), image, box) for s, box in zip(scores, boxes))
    n_gt = sum(len(g) for g in gt_boxes)
    if n_gt == 0:
        return None
    records.sort(key=lambda r: -r[0])
    matched = [np.zeros(len(g), dtype=bool) for g in gt_boxes]
    tp = np.zeros(len(records))
    for rank, (_, image, box) in enumerate(records):
        if len(gt_boxes[image]) == 0:
            continue
        ious = box_iou(box[None], gt_boxes[image])[0]
        ious[matched[image]] = -1.0
        best = int(np.argmax(ious))
        if ious[best] >= iou_threshold:
            matched[image][best] = True
            tp[rank] = 1.0
    cum_tp = np.cumsum(tp)
    recall = cum_tp / n_gt
    precision = cum_tp / np.arange(1, len(records) + 1)
    # precision envelope, then area under the step curve at the recall changes
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def mean_average_precision(
    predictions: Sequence[Mapping[str, np.ndarray]],
    targets: Sequence[Mapping[str, np.ndarray]],
    labels: Sequence[str] = PATHOLOGIES,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """mAP@`iou_threshold`: mean of per-class AP over the classes with ground truth in `targets`.

    Each element of `predictions` is {"boxes" (K, 4) x1 y1 x2 y2, "scores" (K,), "labels" (K,) class
    indices into `labels`}; each target {"boxes", "labels"}. Classes without ground truth get None.
    """
    per_class = {name: average_precision(predictions, targets, c, iou_threshold) for c, name in enumerate(labels)}
    values = [v for v in per_class.values() if v is not None]
    return {"mean": float(np.mean(values)) if values else None, "per_class": per_class, "iou_threshold": iou_threshold}


# --- classifier two-sample test -------------------------------------------------------------------


def fitted_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The score threshold with the best accuracy on the classifier's own training half.

    A fixed 0 is not the decision rule the CNN learnt: BatchNorm's running statistics lag its last weight
    updates, so eval-mode logits can all shift to one side. The demo then read 0.50 accuracy with a held-out
    AUROC of 0.999 (a CNN that separates the sets, scored as if it could not).
    """
    order = np.argsort(scores)
    sorted_scores, sorted_truth = scores[order], truth[order].astype(bool)
    # cut after position k: the k lowest say "real", the rest "synthetic"
    correct = (np.concatenate([[0], np.cumsum(~sorted_truth)]) + np.concatenate([np.cumsum(sorted_truth[::-1])[::-1], [0]]))
    k = int(np.argmax(correct))
    if k == 0:
        return float(sorted_scores[0] - 1.0)
    if k == len(sorted_scores):
        return float(sorted_scores[-1])
    return float((sorted_scores[k - 1] + sorted_scores[k]) / 2)


def classifier_two_sample_test(
    real01: np.ndarray, synthetic01: np.ndarray, seed: int = 0, steps: int = 400, batch_size: int = 32, width: int = 16,
) -> dict[str, Any]:
    """Can a small CNN tell synthetic images from real ones (C2ST, Lopez-Paz & Oquab 2017)?

    Equal numbers of real and synthetic images are split in halves; a 4-block CNN trains on one half to
    say which set an image comes from and is scored on the other. Held-out accuracy 0.5 means the sets
    are indistinguishable to it, 1.0 that every synthetic image gives itself away; its score threshold is
    fitted on the training half too (`fitted_threshold`). The 95% interval is the normal approximation
    for the held-out count. Seeded, and the global random state is untouched.
    """
    from aurad_models.seeding import torch_generator

    real, synthetic = _check_images01(real01), _check_images01(synthetic01)
    n = min(len(real), len(synthetic))
    if n < 8:
        return {"skipped": f"need at least 8 images per set, got {len(real)} real and {len(synthetic)} synthetic"}
    rng = np.random.default_rng(seed)
    real, synthetic = real[rng.permutation(len(real))[:n]], synthetic[rng.permutation(len(synthetic))[:n]]
    half = n // 2
    images = np.concatenate([real[:half], synthetic[:half], real[half:], synthetic[half:]]).astype(np.float32)
    labels = np.concatenate([np.zeros(half), np.ones(half), np.zeros(n - half), np.ones(n - half)]).astype(np.float32)
    train, test = np.arange(2 * half), np.arange(2 * half, 2 * n)

    def block(i: int, o: int) -> list[torch.nn.Module]:
        return [torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(*block(1, width), *block(width, 2 * width), *block(2 * width, 4 * width),
                                    *block(4 * width, 4 * width), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                    torch.nn.Linear(4 * width, 1))
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    x_all = torch.from_numpy(images)[:, None] * 2 - 1
    y_all = torch.from_numpy(labels)
    generator = torch_generator(seed)
    model.train()
    for _ in range(steps):
        index = torch.from_numpy(rng.choice(train, min(batch_size, len(train))))
        x = x_all[index]
        x = torch.where(torch.rand(len(x), 1, 1, 1, generator=generator) < 0.5, x, torch.roll(x, 1, dims=-1))  # small shifts
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y_all[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(x_all[i : i + 256])[:, 0] for i in range(0, len(x_all), 256)]).numpy()
    truth = labels[test].astype(bool)
    threshold = fitted_threshold(scores[train], labels[train].astype(bool))
    accuracy = float(((scores[test] > threshold) == truth).mean())
    half_width = 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / len(test))
    from aurad_models.experts.metrics import auroc

    return {
        "metric": "C2ST accuracy",
        "accuracy": accuracy,
        "ci95": [max(0.0, accuracy - half_width), min(1.0, accuracy + half_width)],
        "auroc": auroc(scores[test], truth),
        "threshold": threshold,
        "n_per_set": n,
        "held_out": len(test),
        "classifier": f"4-block CNN, width {width}, {steps} steps of {batch_size}",
    }


# --- all image-set metrics of a dataset version, in one dict ----------------------------------------


def quality_metrics(
    real_features: FeatureSet | None = None,
    synthetic_features: FeatureSet | None = None,
    *,
    synthetic_pathology: np.ndarray | None = None,
    synthetic_anatomy: np.ndarray | None = None,
    findings: Sequence[Sequence[Finding]] | None = None,
    expert_probabilities: np.ndarray | None = None,
    diversity_groups: np.ndarray | None = None,
    fid: Mapping[str, Any] | None = None,
    k: int = 5,
) -> dict[str, Any]:
    """The quality metrics of a synthetic set, from whatever inputs are given; each missing input gives an
    entry {"skipped": reason} instead of a value, so the report says what was not measured and why.

    Features (same extractor) -> Fréchet distance and PRDC; masks + anatomy (+ findings) -> mask-anatomy
    consistency; expert probabilities + findings -> expert agreement; (prompts, 4, H, W) groups -> MS-SSIM
    diversity; `fid` is passed through from `inception_fid`.
    """
    out: dict[str, Any] = {}
    if real_features is not None and synthetic_features is not None:
        out["frechet"] = fxd(real_features, synthetic_features)
        n = min(len(real_features.values), len(synthetic_features.values))
        out["prdc"] = prdc(real_features.values, synthetic_features.values, k) if n > k else {"skipped": f"need more than k={k} samples per set, got {n}"}
        out["prdc"]["extractor"] = real_features.extractor
    else:
        out["frechet"] = out["prdc"] = {"skipped": "no feature extractor given"}
    out["fid"] = dict(fid) if fid is not None else {"metric": "FID", "value": None, "skipped": "not computed"}
    if diversity_groups is not None and len(diversity_groups):
        out["diversity"] = ms_ssim_diversity(diversity_groups)
    else:
        out["diversity"] = {"skipped": "no prompt with 4 samples"}
    if synthetic_pathology is not None and synthetic_anatomy is not None:
        out["mask_anatomy"] = mask_anatomy_consistency(synthetic_pathology, synthetic_anatomy, findings)
    else:
        out["mask_anatomy"] = {"skipped": "no masks or anatomy given"}
    if expert_probabilities is not None and findings is not None:
        out["expert_agreement"] = expert_agreement(expert_probabilities, findings)
    else:
        out["expert_agreement"] = {"skipped": "no expert predictions given"}
    return out
