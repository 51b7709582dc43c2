"""A small phantom source dataset published through `storage`, for the expert, filter and bank tests."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from aurad_models.findings import Finding
from aurad_models.phantom import PhantomBatch, PhantomConfig, generate_phantoms
from aurad_models.pixels import to_stored
from storage import ArraySpec, stage_version

# One of each finding and a normal study: every label gets positives even in a dozen samples.
EACH_FINDING: tuple[tuple[Finding, ...], ...] = (
    (),
    (Finding(label="nodule", side="left", zone="upper"),),
    (Finding(label="mass", side="right"),),
    (Finding(label="consolidation", side="right", zone="lower"),),
    (Finding(label="effusion", side="left", size="moderate"),),
    (Finding(label="pneumothorax", side="right", size="large"),),
    (Finding(label="cardiomegaly", size="moderate"),),
    (Finding(label="atelectasis", side="left", zone="lower"),),
)


def cycle_findings(n: int) -> list[tuple[Finding, ...]]:
    return [EACH_FINDING[i % len(EACH_FINDING)] for i in range(n)]


def phantom_batch(seeds: Sequence[int], size: int = 64, findings: Sequence[tuple[Finding, ...]] | None = None) -> PhantomBatch:
    return generate_phantoms(list(seeds), PhantomConfig(size=size), findings)


def write_phantom_version(
    root: str | Path,
    splits: dict[str, int],
    size: int = 64,
    dataset: str = "phantom",
    shard_size: int = 16,
    first_seed: int = 0,
    cycle: bool = True,
) -> str:
    """Publish phantoms as a source dataset version (splits in order, seeds consecutive); `cycle` gives
    every finding in turn (else the phantom's own prior). Returns the version id."""
    plan = [split for split, count in splits.items() for _ in range(count)]
    seeds = list(range(first_seed, first_seed + len(plan)))
    batch = phantom_batch(seeds, size, cycle_findings(len(plan)) if cycle else None)
    staged = stage_version(root, dataset, f"test-{first_seed}-{len(plan)}-{size}", len(plan), shard_size, ArraySpec(image_size=size))
    for k in range(staged.n_shards):
        start, stop = staged.shard_bounds(k)
        rows = [
            {
                "sample_id": f"phantom-{seeds[i]:06d}",
                "split": plan[i],
                "prompt": batch.reports[i],
                "findings": [f.as_record() for f in batch.findings[i]],
                "seed": seeds[i],
                "attempt_seeds": [seeds[i]],
                "attempt_reject_reasons": [None],
                "source": None,
                "mask_source": "exact",
                "mask_model_id": None,
                "image_model_id": None,
                "scores": {},
                "accepted": True,
                "reject_reason": None,
                "metadata": {"anatomy": "present"},
            }
            for i in range(start, stop)
        ]
        staged.write_shard(
            k, to_stored(batch.images[start:stop]), batch.pathology[start:stop], batch.anatomy[start:stop], rows
        )
    return staged.publish({"kind": "test-phantom"})
