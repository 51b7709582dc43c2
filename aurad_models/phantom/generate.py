"""Generate phantom batches: one seed, one independent random stream, one image with its masks.

Per sample: `np.random.default_rng(seed)` is split into four child streams (patient, finding sampling,
lesion placement, quantum noise), so the patient does not depend on which findings are drawn, and an
image depends only on its own seed, never on the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from aurad_models.findings import Finding, render_prompt
from aurad_models.phantom.anatomy import build_anatomy, make_grid, silhouette
from aurad_models.phantom.calibration import PhantomCalibration
from aurad_models.phantom.config import PhantomConfig
from aurad_models.phantom.pathology import adjust_patient, draw_findings
from aurad_models.phantom.patient import sample_patient
from aurad_models.phantom.render import attenuation, display, expose
from aurad_models.phantom.sampling import complete_finding, sample_findings
from aurad_models.phantom.vessels import splat_segments, vessel_segments
from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES


@dataclass
class PhantomBatch:
    """Images with their exact anatomy and pathology masks, the findings drawn and their report."""

    images: np.ndarray  # (N, H, W) float32 in [0, 1], brighter = more attenuation
    anatomy: np.ndarray  # (N, 14, H, W) uint8 in {0, 1}, ANATOMY_STRUCTURES order
    pathology: np.ndarray  # (N, 7, H, W) uint8 in {0, 1}, PATHOLOGIES order
    findings: list[tuple[Finding, ...]]  # fully specified findings actually drawn
    reports: list[str]  # render_prompt(findings) per image
    seeds: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.seeds)


@dataclass
class Phantom:
    """One generated sample (what `generate_phantoms` stacks into a batch)."""

    image: np.ndarray
    anatomy: np.ndarray
    pathology: np.ndarray
    findings: tuple[Finding, ...]


def generate_phantom(seed: int, config: PhantomConfig, findings: Sequence[Finding] | None = None,
                     calibration: PhantomCalibration | None = None) -> Phantom:
    """One phantom from its seed. `findings=None` samples them from the config's prior. `calibration`
    (opt-in, `aurad_models.phantom.calibration`) replaces the findings' placement and size tables; None
    draws the default phantom."""
    streams = np.random.default_rng(seed).spawn(4)
    patient_rng, finding_rng, lesion_rng, noise_rng = streams
    # 1. The patient, independent of the findings.
    patient = sample_patient(patient_rng, config.patient, config.imaging)
    # 2. The findings: sampled, or requested and completed.
    if findings is None:
        drawn = sample_findings(finding_rng, config, calibration)
    else:
        drawn = tuple(complete_finding(lesion_rng, f, config, calibration) for f in findings)
    # 3. Anatomy, adjusted by the findings that change it.
    patient = adjust_patient(patient, drawn, lesion_rng, calibration)
    grid = make_grid(config.size, patient)
    sil = silhouette(patient)
    anatomy = build_anatomy(patient, grid, sil)
    vessels = splat_segments(grid, vessel_segments(patient, sil, np.random.default_rng(patient.vessel_seed)))
    # 4. Findings on the anatomy, then the radiograph.
    bronchograms = config.air_bronchogram_probability
    pathology, lesions = draw_findings(patient, grid, sil, anatomy, drawn, lesion_rng, bronchograms, calibration)
    a = attenuation(patient, anatomy, vessels, lesions)
    d = expose(patient, a, grid, noise_rng, config.imaging.noise_scale)
    image = display(patient, d, grid)
    return Phantom(image, anatomy.masks.astype(np.uint8), pathology.astype(np.uint8), drawn)


def generate_phantoms(
    seeds: Sequence[int], config: PhantomConfig, findings: Sequence[tuple[Finding, ...]] | None = None,
    calibration: PhantomCalibration | None = None,
) -> PhantomBatch:
    """Phantoms for the given seeds at `config.size`.

    `findings=None`: each image's findings are sampled from `config.prevalence`. Otherwise one tuple
    per seed (empty for a normal image); unspecified side / zone / size are filled at random, and the
    returned `findings` are the fully specified ones. `calibration`: see `generate_phantom`.
    """
    seeds = [int(s) for s in seeds]
    if findings is not None and len(findings) != len(seeds):
        raise ValueError(f"findings must have one entry per seed: {len(findings)} findings for {len(seeds)} seeds")
    n, size = len(seeds), config.size
    images = np.empty((n, size, size), dtype=np.float32)
    anatomy = np.empty((n, len(ANATOMY_STRUCTURES), size, size), dtype=np.uint8)
    pathology = np.empty((n, len(PATHOLOGIES), size, size), dtype=np.uint8)
    drawn: list[tuple[Finding, ...]] = []
    for i, seed in enumerate(seeds):
        one = generate_phantom(seed, config, None if findings is None else tuple(findings[i]), calibration)
        images[i], anatomy[i], pathology[i] = one.image, one.anatomy, one.pathology
        drawn.append(one.findings)
    return PhantomBatch(
        images=images,
        anatomy=anatomy,
        pathology=pathology,
        findings=drawn,
        reports=[render_prompt(f) for f in drawn],
        seeds=np.asarray(seeds, dtype=np.int64),
    )
