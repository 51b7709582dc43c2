"""How visible each finding is in the phantom's images, per image size: why no model learns nodules at 64 px.

    python -m bench.visibility [--per-finding 80] [--sizes 64 128 256]

For each finding, phantoms with that one finding (sides, zones and sizes drawn as the phantom draws them):
the mask's area in pixels, and its contrast to the surround: (mean inside the mask - mean of a ring 1-3 px
around it) / the ring's standard deviation. Below about 0.5 a lesion is hidden in the texture of ribs,
vessels and noise around it; the share above 1 is the share a reader (or a model) can pick out. Writes
bench/results/visibility.json and visibility.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.record import RESULTS, markdown_table, progress_logging, write_results


def contrast_to_surround(image: np.ndarray, mask: np.ndarray, ring_px: int = 3) -> float:
    """(mean inside - mean of the ring around) / the ring's std, the ring 1..ring_px px outside the mask."""
    from scipy import ndimage

    inside = mask.astype(bool)
    ring = ndimage.binary_dilation(inside, iterations=ring_px) & ~ndimage.binary_dilation(inside, iterations=1)
    around = image[ring]
    return float((image[inside].mean() - around.mean()) / (around.std() + 1e-6))


def visibility_rows(size: int, per_finding: int, seed: int = 0) -> list[dict[str, Any]]:
    from aurad_models.findings import Finding
    from aurad_models.phantom import PhantomConfig, generate_phantoms
    from aurad_models.vocabulary import PATHOLOGIES

    rows = []
    for c, label in enumerate(PATHOLOGIES):
        seeds = [seed + 10_000 * c + i for i in range(per_finding)]
        batch = generate_phantoms(seeds, PhantomConfig(size=size), [(Finding(label=label),)] * per_finding)
        shown = [(img, m) for img, m in zip(batch.images, batch.pathology[:, c]) if m.any()]
        contrast = np.array([contrast_to_surround(img, m) for img, m in shown])
        area = np.array([m.sum() for _, m in shown])
        rows.append({"size": size, "finding": label, "n": len(shown), "area_px": float(np.median(area)),
                     "contrast": float(np.median(contrast)), "contrast_q25": float(np.percentile(contrast, 25)),
                     "contrast_q75": float(np.percentile(contrast, 75)), "visible_share": float(np.mean(np.abs(contrast) > 1.0))})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.visibility", description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-finding", type=int, default=80)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--out", type=Path, default=RESULTS / "visibility.json")
    args = parser.parse_args(argv)
    progress_logging()
    began = time.perf_counter()
    rows = [row for size in args.sizes for row in visibility_rows(size, args.per_finding)]
    table = markdown_table(rows, {"size": "px", "finding": "finding", "n": "phantoms", "area_px": "median mask px",
                                  "contrast": "median contrast to surround", "contrast_q25": "q25", "contrast_q75": "q75",
                                  "visible_share": "share |contrast| > 1"})
    results = {"rows": rows, "per_finding": args.per_finding, "seconds": round(time.perf_counter() - began, 1)}
    print("\n".join(table))
    write_results("visibility", results, table, "Finding visibility in the phantom, per image size", args.out)
    return results


if __name__ == "__main__":
    main()
