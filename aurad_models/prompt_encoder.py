"""Structured findings -> conditioning tensors for the mask generator.

Two complementary encodings of a prompt (a tuple of `Finding`s):

* **Spatial prior maps** (no weights): per pathology class one channel marking where the finding is
  requested, derived from the anatomy with `anatomy_rules` (the zone of the side for lung lesions, the lower
  lung for an effusion (its hint region), the lung for a pneumothorax, the heart for cardiomegaly) and valued by size
  (small 1/3, moderate 2/3, large 1, unspecified 1/2). An unspecified side or zone gives the union over the
  possibilities. These go into the UNet by channel concatenation: the model does not have to learn
  anatomy-aware placement from a vector, which is what makes a small CPU-trained model place findings in
  the right place.
* **A learned token embedding**: each finding contributes the tokens `label`, `label.side=..`,
  `label.zone=..`, `label.size=..` ("any" when unspecified); their embeddings are summed
  (`nn.EmbeddingBag`) and passed through an MLP to the UNet's time-embedding width, where
  `UNet2DModel(class_embed_type="identity")` adds it to the time embedding.

Two special prompts: the *normal* prompt (no findings, a token of its own: every mask empty) and the
*null* prompt (`None`: no conditioning at all, zero maps and a learned null token) used for
classifier-free guidance. They differ on purpose: "normal" is a statement, "null" is silence.

Extension point, a pretrained text encoder: a class with the same `forward(prompts, anatomy) ->
EncodedPrompt` that encodes `render_prompt(findings)` with a local text model (e.g. a CXR-BERT loaded from a
directory with `transformers`, never downloaded), pools it, and projects it to `embed_dim`, keeping
`prior_maps` for the spatial channels. Not built here: `transformers` is not in the stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from aurad_models import anatomy_rules
from aurad_models.findings import Finding
from aurad_models.vocabulary import (
    LATERAL_FINDINGS,
    PATHOLOGIES,
    SIDES,
    SIZES,
    ZONED_FINDINGS,
    ZONES,
    pathology_index,
)

Prompt = tuple[Finding, ...]

SIZE_VALUES: dict[str | None, float] = {"small": 1 / 3, "moderate": 2 / 3, "large": 1.0, None: 0.5}
NULL_TOKEN = "<null>"
NORMAL_TOKEN = "<normal>"


def _build_vocabulary() -> tuple[str, ...]:
    tokens = [NULL_TOKEN, NORMAL_TOKEN]
    for label in PATHOLOGIES:
        tokens.append(label)
        if label in LATERAL_FINDINGS:
            tokens += [f"{label}.side={s}" for s in (*SIDES, "any")]
        if label in ZONED_FINDINGS:
            tokens += [f"{label}.zone={z}" for z in (*ZONES, "any")]
        tokens += [f"{label}.size={s}" for s in (*SIZES, "any")]
    return tuple(tokens)


TOKENS: tuple[str, ...] = _build_vocabulary()
_TOKEN_INDEX = {token: i for i, token in enumerate(TOKENS)}


def finding_tokens(finding: Finding) -> list[str]:
    """The tokens one finding contributes (its label, and each attribute it can carry, 'any' if unset)."""
    label = finding.label
    tokens = [label]
    if label in LATERAL_FINDINGS:
        tokens.append(f"{label}.side={finding.side or 'any'}")
    if label in ZONED_FINDINGS:
        tokens.append(f"{label}.zone={finding.zone or 'any'}")
    tokens.append(f"{label}.size={finding.size or 'any'}")
    return tokens


def prompt_token_ids(prompt: Prompt | None) -> list[int]:
    """Token ids of a prompt: the null token for `None`, the normal token for no findings."""
    if prompt is None:
        return [_TOKEN_INDEX[NULL_TOKEN]]
    if len(prompt) == 0:
        return [_TOKEN_INDEX[NORMAL_TOKEN]]
    return [_TOKEN_INDEX[t] for finding in prompt for t in finding_tokens(finding)]


def finding_region(finding: Finding, anatomy: np.ndarray, hint: bool = False) -> np.ndarray:
    """Where a finding may lie as requested (bool H x W): its allowed region narrowed by side and zone; with
    `hint`, where the prior map marks it (`anatomy_rules.hint_region` for an unzoned request)."""
    if finding.label in ZONED_FINDINGS and finding.zone is not None:
        return anatomy_rules.zone_mask(anatomy, finding.side, finding.zone)
    region = anatomy_rules.hint_region if hint else anatomy_rules.allowed_region
    return region(finding.label, anatomy, finding.side)


def requested_regions(prompt: Prompt, anatomy: np.ndarray) -> np.ndarray:
    """Per class (7, H, W) bool, where the prompt's findings of that class may lie."""
    regions = np.zeros((len(PATHOLOGIES), *anatomy.shape[1:]), dtype=bool)
    for finding in prompt:
        regions[pathology_index(finding.label)] |= finding_region(finding, anatomy)
    return regions


def prior_maps(prompt: Prompt | None, anatomy: np.ndarray) -> np.ndarray:
    """Spatial prior maps (7, H, W) float32 for one prompt and its anatomy (14, H, W); zeros for None."""
    maps = np.zeros((len(PATHOLOGIES), *anatomy.shape[1:]), dtype=np.float32)
    for finding in prompt or ():
        channel = maps[pathology_index(finding.label)]
        region = finding_region(finding, anatomy, hint=True)
        np.maximum(channel, np.where(region, SIZE_VALUES[finding.size], 0.0).astype(np.float32), out=channel)
    return maps


@dataclass
class EncodedPrompt:
    """A batch of encoded prompts: `embedding` (B, embed_dim) for the time embedding, `spatial`
    (B, 7, H, W) prior maps for channel concatenation."""

    embedding: torch.Tensor
    spatial: torch.Tensor


class PromptEncoder(ModelMixin, ConfigMixin):
    """Findings -> (summed token embedding -> MLP, spatial prior maps). See the module docstring."""

    @register_to_config
    def __init__(self, embed_dim: int = 256, hidden_dim: int = 64, num_tokens: int = len(TOKENS)):
        super().__init__()
        if num_tokens != len(TOKENS):
            raise ValueError(f"this encoder was built for {num_tokens} tokens, the vocabulary has {len(TOKENS)}")
        self.tokens = nn.EmbeddingBag(num_tokens, hidden_dim, mode="sum")
        self.mlp = nn.Sequential(nn.Linear(hidden_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def embed(self, prompts: Sequence[Prompt | None]) -> torch.Tensor:
        """(B, embed_dim) vectors for a batch of prompts."""
        ids = [prompt_token_ids(p) for p in prompts]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long, device=self.device)
        offsets = torch.tensor(np.cumsum([0] + [len(row) for row in ids[:-1]]), dtype=torch.long, device=self.device)
        return self.mlp(self.tokens(flat, offsets))

    def forward(self, prompts: Sequence[Prompt | None], anatomy: torch.Tensor | np.ndarray) -> EncodedPrompt:
        anatomy_np = anatomy.detach().cpu().numpy() if isinstance(anatomy, torch.Tensor) else np.asarray(anatomy)
        if anatomy_np.ndim != 4 or len(anatomy_np) != len(prompts):
            raise ValueError(f"need anatomy (B, 14, H, W) for {len(prompts)} prompts, got shape {anatomy_np.shape}")
        spatial = np.stack([prior_maps(p, a > 0.5) for p, a in zip(prompts, anatomy_np)])
        return EncodedPrompt(
            embedding=self.embed(prompts),
            spatial=torch.from_numpy(spatial).to(device=self.device, dtype=self.dtype),
        )
