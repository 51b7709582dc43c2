"""The dataset card written into every synthetic version (`README.md` at its root), in the Hugging Face
dataset-card format: YAML metadata, then what the data is, how it was made, what is in it, what it
cannot be used for, and the limitations measured on this very version."""

from __future__ import annotations

from typing import Any

import yaml

from aurad_models.vocabulary import ANATOMY_STRUCTURES, PATHOLOGIES
from storage.schema import COLUMN_MEANINGS, MANIFEST_SCHEMA


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def dataset_card(dataset: str, build_id: str, lineage: dict[str, Any], frequencies: list[dict[str, Any]],
                 acceptance: dict[str, Any], image_size: int, min_class_coverage: float) -> str:
    """README.md of one synthetic version, from its lineage and the build's measurements."""
    accepted, n = acceptance["accepted"], acceptance["n"]
    metadata = {
        "pretty_name": f"AURAD synthetic chest X-rays: {dataset}",
        "license": "other",
        "license_details": "Synthetic images made by AURAD (Apache-2.0) from the source named below; the source's "
                           "terms apply to anything derived from it.",
        "task_categories": ["image-segmentation", "object-detection", "image-classification"],
        "tags": ["medical", "chest-x-ray", "synthetic", "aurad"],
        "size_categories": [_size_category(accepted)],
    }
    models = lineage.get("models", {})
    inputs = lineage.get("inputs", {})
    weak = [f for f in frequencies if f.get("coverage") is not None and f["coverage"] < 1.0]
    rows = "\n".join(f"| `{field.name}` | `{field.type}` | {COLUMN_MEANINGS.get(field.name, '').replace('|', chr(92) + '|')} |"
                     for field in MANIFEST_SCHEMA)
    findings = "\n".join(f"| {f['label']} | {f.get('accepted', 0)} | {f.get('prompted', 0)} | {_share(f.get('target'))} | "
                         f"{_share(f.get('produced'))} | {_num(f.get('coverage'))} |" for f in frequencies)
    experts = ", ".join(f"{name} {_share(rate)}" for name, rate in acceptance.get("per_expert", {}).items())
    limits = [
        f"{n - accepted} of {n} samples ({_share(1 - accepted / n if n else 0)}) were rejected by the expert filter and "
        "stay in the manifest with `accepted = false` and the reason: train on accepted rows only.",
        *(f"{f['label']}: {f.get('accepted', 0)} accepted samples, {_num(f['coverage'])}x its target share "
          f"(the build fails below {min_class_coverage}x)." for f in weak),
        "The experts that filter the samples are only as good as their validation scores (see the models' cards): a "
        "finding they cannot judge is not checked by them.",
        "Realism and downstream worth are measured by `aurad evaluate` (in `../_evaluations/<version>/index.html`, beside this version, once it has run), "
        "not at build time.",
    ]
    body = f"""# {dataset} (build `{build_id}`)

Synthetic chest X-rays with **pixel-exact pathology masks** and anatomy masks, made by the AURAD pipeline:
prompts drawn from the source's label statistics, masks from a mask diffusion model inside real-looking
anatomy, images rendered from those masks, filtered by expert models, checked by great-expectations gates.

**Synthetic data for research and for training models, not for diagnosis.** No image shows a real patient;
masks are the ground truth of their images by construction, not a radiologist's reading.

## Contents

- {n} samples ({accepted} accepted), {image_size} x {image_size} px, 16-bit images (`images.zarr`, N x H x W uint16)
- pathology masks (`masks.zarr`, N x {len(PATHOLOGIES)} x H x W, {{0, 1}}): {", ".join(PATHOLOGIES)}
- anatomy masks (`anatomy.zarr`, N x {len(ANATOMY_STRUCTURES)} x H x W, {{0, 1}}): {", ".join(ANATOMY_STRUCTURES)}
- the manifest (`manifest/`, Parquet, one row per sample; row i is array index i), columns:

| column | type | meaning |
|---|---|---|
{rows}

## Findings (accepted samples against the prompt sampler's targets)

| finding | accepted | prompted | target share | accepted share | coverage |
|---|---|---|---|---|---|
{findings}

Acceptance per expert: {experts or "n/a"}.

## Known limitations, measured on this version

{chr(10).join(f"- {line}" for line in limits)}

## Lineage

- source: `{inputs.get("source", "?")}`, anatomy bank: `{inputs.get("anatomy_bank", "?")}`
- mask generator: `{models.get("mask_generator", {}).get("id", "?")}` (sha256 `{str(models.get("mask_generator", {}).get("sha256", "?"))[:16]}...`)
- image generator: `{models.get("image_generator", {}).get("id", "?")}` (sha256 `{str(models.get("image_generator", {}).get("sha256", "?"))[:16]}...`)
- build seed `{lineage.get("config", {}).get("seed", "?")}`; every sample's seed is in the manifest; the full settings are in `version.json`
- code: {lineage.get("code_version", {})}

## Reading it

With plain pyarrow and zarr (see the AURAD README, "Reading a dataset without this package"), or
`storage.open_dataset(root, "{dataset}", VERSION)` with the package.

## Citation

```bibtex
@software{{aurad,
  title = {{AURAD: controllable chest X-ray synthesis with pathology masks}},
  note = {{build {build_id}}}
}}
```
"""
    return f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n{body}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
