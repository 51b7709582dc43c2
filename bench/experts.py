"""The shipped experts on the source's two held-out splits: how well they judge what the filter asks them.

    python -m bench.experts --root aurad-data [--bootstrap 2000]

For each finding: the pathology classifier's AUROC on `val` (the split its registration recorded and its
voting gate, `filter.classifier.min_auroc`, reads) and on `test` (never used to choose anything), with the
number of positives and a bootstrap 95% interval, so a figure resting on 8 positives reads as what it is;
beside it the AUROC of the lesion segmenter (the fidelity expert) read as a classifier, its largest
per-pixel probability for the finding, and the mean of the two probabilities (an ensemble the filter does
not use: is a second opinion worth having?). And the anatomy segmenter's mean Dice per split. Needs a root where
`aurad demo` has built the phantom source. Writes bench/results/experts.json and experts.md.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.record import RESULTS, markdown_table, progress_logging, write_results

SPLITS = ("val", "test")


def auroc_interval(scores: np.ndarray, labels: np.ndarray, draws: int, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of the AUROC (images resampled with replacement; draws without both classes skipped)."""
    from aurad_models.experts.metrics import auroc

    rng = np.random.default_rng(seed)
    values = [auroc(scores[pick], labels[pick]) for pick in (rng.integers(0, len(labels), len(labels)) for _ in range(draws))]
    values = [v for v in values if not math.isnan(v)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def lesion_presence(model: Any, images01: np.ndarray) -> np.ndarray:
    """(N, 7) the lesion segmenter's largest per-pixel probability per finding (NaN where it has no channel)."""
    import torch

    from aurad_models.experts.trained import model_input
    from aurad_models.vocabulary import PATHOLOGIES

    with torch.inference_mode():
        probs = torch.sigmoid(model(model_input(images01, model.image_size, torch.device("cpu")))).flatten(2).amax(2).numpy()
    out = np.full((len(images01), len(PATHOLOGIES)), np.nan, dtype=np.float32)
    for j, label in enumerate(model.labels):
        out[:, PATHOLOGIES.index(label)] = probs[:, j]
    return out


def expert_rows(root: Path, draws: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from aurad_models.embedded import shipped_models
    from aurad_models.experts.metrics import auroc
    from aurad_models.experts.trained import AnatomySegmenter, LesionSegmenter, PathologyClassifier, TrainedPathologyExpert
    from aurad_models.vocabulary import PATHOLOGIES
    from storage import open_dataset
    from tasks.experts import evaluate_anatomy_segmenter, load_expert_data

    shipped = {m["kind"]: m for m in shipped_models()}
    classifier = TrainedPathologyExpert(PathologyClassifier.from_pretrained(shipped["pathology-classifier"]["path"]))
    lesion = LesionSegmenter.from_pretrained(shipped["lesion-segmenter"]["path"]).eval()
    anatomy = AnatomySegmenter.from_pretrained(shipped["anatomy-segmenter"]["path"])
    source = open_dataset(root, "phantom")
    rows, summary = [], {"models": {kind: shipped[kind]["id"] for kind in shipped}}
    for split in SPLITS:
        data = load_expert_data(source, split)
        scores = {"classifier": classifier.predict(data.images, calibrated=False), "lesion": lesion_presence(lesion, data.images)}
        scores["mean_of_both"] = (scores["classifier"] + scores["lesion"]) / 2  # NaN where the segmenter has no channel
        split_rows = []
        for j, label in enumerate(PATHOLOGIES):
            known = data.known[:, j]
            y = data.labels[known, j]
            row: dict[str, Any] = {"split": split, "finding": label, "n": int(known.sum()), "positives": int(y.sum())}
            for name, s in scores.items():
                row[name] = auroc(s[known, j], y)
                row[f"{name}_low"], row[f"{name}_high"] = auroc_interval(s[known, j], y, draws) if not math.isnan(row[name]) else (None, None)
            split_rows.append(row)
        rows += split_rows
        summary[split] = {
            **{f"{name}_auroc_mean": float(np.nanmean([r[name] for r in split_rows])) for name in scores},
            "anatomy_dice_mean": evaluate_anatomy_segmenter(anatomy, data)["dice_mean"],
            "n": len(data),
        }
    return rows, summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.experts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("aurad-data"), help="storage root of `aurad demo` (its phantom source)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws per interval")
    parser.add_argument("--out", type=Path, default=RESULTS / "experts.json")
    args = parser.parse_args(argv)
    if not (args.root / "phantom").is_dir():
        parser.error(f"{args.root} has no phantom source; run `aurad demo -r {args.root}` first")
    progress_logging()
    began = time.perf_counter()
    rows, summary = expert_rows(args.root, args.bootstrap)
    table = markdown_table(rows, {"split": "split", "finding": "finding", "n": "images", "positives": "positives",
                                  "classifier": "classifier AUROC", "classifier_low": "95% low", "classifier_high": "95% high",
                                  "lesion": "lesion segmenter AUROC", "lesion_low": "95% low", "lesion_high": "95% high",
                                  "mean_of_both": "mean of both AUROC"})
    table += ["", *(f"- {split} ({summary[split]['n']} images): classifier AUROC mean {summary[split]['classifier_auroc_mean']:.3f}, "
                    f"lesion segmenter as a classifier {summary[split]['lesion_auroc_mean']:.3f}, the mean of both "
                    f"{summary[split]['mean_of_both_auroc_mean']:.3f}, anatomy segmenter Dice "
                    f"{summary[split]['anatomy_dice_mean']:.3f}" for split in SPLITS),
              f"- models: {', '.join(f'{kind} {model}' for kind, model in summary['models'].items())}; source {args.root}/phantom"]
    results = {"rows": rows, **summary, "bootstrap": args.bootstrap, "seconds": round(time.perf_counter() - began, 1)}
    print("\n".join(table))
    write_results("experts", results, table, "The shipped experts on the source's held-out splits", args.out)
    return results


if __name__ == "__main__":
    main()
