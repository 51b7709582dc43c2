"""A contact sheet of phantoms for a person to look at: each image next to its masks and report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from aurad_models.findings import Finding
from aurad_models.phantom.config import PhantomConfig
from aurad_models.phantom.generate import generate_phantoms
from aurad_models.phantom.sampling import sample_findings
from aurad_models.visualize import save_overlay_grid
from aurad_models.vocabulary import PATHOLOGIES

logger = logging.getLogger(__name__)


def showcase_findings(n: int, seed: int, config: PhantomConfig) -> list[tuple[Finding, ...]]:
    """Mixed findings for a sheet: each pathology alone first, some normals, then sampled mixtures."""
    out: list[tuple[Finding, ...]] = []
    for i in range(n):
        if i < len(PATHOLOGIES):
            out.append((Finding(label=PATHOLOGIES[i]),))
        elif i % 4 == 3:
            out.append(())
        else:
            rng = np.random.default_rng([seed, i])
            drawn = ()
            while not drawn:
                drawn = sample_findings(rng, config)
            out.append(drawn)
    return out


def write_contact_sheet(path: str | Path, n: int = 32, size: int = 256, seed: int = 0, ncols: int = 8) -> Path:
    """Write a PNG of `n` phantoms (seeds seed..seed+n-1), each shown plain and with its pathology
    masks filled, anatomy outlined and its report as the title."""
    config = PhantomConfig(size=size)
    seeds = list(range(seed, seed + n))
    batch = generate_phantoms(seeds, config, showcase_findings(n, seed, config))
    images = np.repeat(batch.images, 2, axis=0)
    pathology = np.repeat(batch.pathology, 2, axis=0)
    pathology[0::2] = 0
    anatomy = np.repeat(batch.anatomy, 2, axis=0)
    anatomy[0::2] = 0
    titles = []
    for s, report in zip(batch.seeds, batch.reports):
        titles += [f"seed {s}", report]
    path = save_overlay_grid(path, images, pathology=pathology, anatomy=anatomy, titles=titles, ncols=ncols)
    logger.info("wrote a contact sheet of %d phantoms to %s", n, path)
    return path
