"""How big the phantom's findings are against real annotations: per finding, the median box of each mask
component (width and height as a share of the image width) against the real NIH ChestX-ray14 boxes
(`BBox_List_2017.csv.gz`, 984 boxes on 1024 px, shipped in the torchxrayvision wheel), and one distance per
finding: the 1-D Wasserstein distance between the log box sizes (log sqrt(w h)), in log units.

    python -m bench.grounding [--size 256] [--per-finding 60]

NIH names: our consolidation is compared with its Pneumonia boxes (the closest airspace-opacity label it
boxes). NIH boxes are drawn loosely around a finding, so a ratio a little under 1 is expected.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from bench.record import markdown_table, progress_logging, write_results

NIH_NAMES = {"nodule": "Nodule", "mass": "Mass", "consolidation": "Pneumonia", "effusion": "Effusion",
             "pneumothorax": "Pneumothorax", "cardiomegaly": "Cardiomegaly", "atelectasis": "Atelectasis"}

# Measured with this script's method at commit a38d2f6 (the phantom before the calibration of PHANTOM_VERSION 2):
# median box width and height as a share of the image width, 256 px, 60 phantoms per finding.
BEFORE = {"nodule": (0.031, 0.031), "mass": (0.090, 0.090), "effusion": (0.059, 0.064)}


def nih_boxes() -> dict[str, np.ndarray]:
    """Real boxes per NIH label as (w, h) shares of the 1024 px image, from the installed torchxrayvision."""
    import pandas as pd

    data = Path(importlib.util.find_spec("torchxrayvision").origin).parent / "data" / "BBox_List_2017.csv.gz"
    table = pd.read_csv(data)
    table.columns = ["image", "label", "x", "y", "w", "h", *table.columns[6:]]
    return {label: group[["w", "h"]].to_numpy(np.float64) / 1024 for label, group in table.groupby("label")}


def phantom_boxes(label: str, size: int, n: int) -> np.ndarray:
    """(w, h) shares of the image width of every mask component of `n` phantoms with the finding."""
    from scipy import ndimage

    from aurad_models.findings import Finding
    from aurad_models.phantom import PhantomConfig
    from aurad_models.phantom.generate import generate_phantom
    from aurad_models.vocabulary import PATHOLOGIES

    config = PhantomConfig(size=size)
    boxes = []
    for seed in range(n):
        mask = generate_phantom(1000 + seed, config, (Finding(label=label),)).pathology[PATHOLOGIES.index(label)]
        components, _ = ndimage.label(mask, structure=np.ones((3, 3)))
        for found in ndimage.find_objects(components):
            if found is not None:
                h, w = found[0].stop - found[0].start, found[1].stop - found[1].start
                if h * w >= 2:
                    boxes.append((w / size, h / size))
    return np.asarray(boxes, np.float64).reshape(-1, 2)


def log_size_distance(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(np.log(np.sqrt(a[:, 0] * a[:, 1])), np.log(np.sqrt(b[:, 0] * b[:, 1]))))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.grounding", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--per-finding", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    progress_logging()
    from aurad_models.phantom.config import PHANTOM_VERSION

    real = nih_boxes()
    rows = []
    for label, nih in NIH_NAMES.items():
        ours = phantom_boxes(label, args.size, args.per_finding)
        theirs = real[nih]
        before = BEFORE.get(label)
        rows.append({
            "finding": label, "nih_label": nih, "nih_boxes": len(theirs), "phantom_boxes": len(ours),
            "phantom_w": float(np.median(ours[:, 0])), "phantom_h": float(np.median(ours[:, 1])),
            "nih_w": float(np.median(theirs[:, 0])), "nih_h": float(np.median(theirs[:, 1])),
            "ratio_w": float(np.median(ours[:, 0]) / np.median(theirs[:, 0])),
            "before_ratio_w": before[0] / float(np.median(theirs[:, 0])) if before else None,
            "log_size_w1": log_size_distance(ours, theirs),
        })
    table = markdown_table(rows, {"finding": "finding", "nih_label": "NIH label", "phantom_w": "phantom w", "phantom_h": "phantom h",
                                  "nih_w": "NIH w", "nih_h": "NIH h", "ratio_w": "w ratio", "before_ratio_w": "w ratio before",
                                  "log_size_w1": "W1 log size"})
    table += ["", f"Phantom version {PHANTOM_VERSION} at {args.size} px, {args.per_finding} phantoms per finding; boxes of every "
              "mask component; median width / height as a share of the image width. 'before': the phantom of commit a38d2f6 "
              "(nodule, mass and effusion sizes were calibrated against these boxes since)."]
    print("\n".join(table))
    results = {"size": args.size, "per_finding": args.per_finding, "phantom_version": PHANTOM_VERSION, "rows": rows}
    write_results("grounding", results, table, "Phantom finding sizes against real NIH ChestX-ray14 boxes", out=args.out)
    return results


if __name__ == "__main__":
    main()
