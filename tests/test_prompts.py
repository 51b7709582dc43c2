"""Prompts: the grammar (parse / render), the co-occurrence prior and the sampler."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from aurad_models.findings import Finding, PromptError, parse_prompt, render_prompt
from aurad_models.prompt_encoder import TOKENS, prior_maps, prompt_token_ids
from tasks.prompts import (
    FindingPrior,
    PromptSamplerConfig,
    PromptSamplerError,
    estimate_prior,
    prior_from_weights,
    sample_prompts,
    tilted_weights,
)

F = Finding


# --- grammar -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "findings",
    [
        (),
        (F(label="effusion", side="right", size="moderate"),),
        (F(label="nodule", side="left", zone="upper", size="small"), F(label="cardiomegaly", size="large")),
        (F(label="mass", side="bilateral", zone="lower"),),
        (F(label="pneumothorax", side="left", size="large"), F(label="atelectasis")),
        (F(label="consolidation", zone="middle", size="small"), F(label="effusion", side="bilateral")),
    ],
)
def test_render_parse_round_trip(findings):
    assert parse_prompt(render_prompt(findings)) == findings


def test_parse_synonyms_and_negation():
    parsed = parse_prompt("Large right-sided hydrothorax, no pneumothorax; enlarged heart")
    assert parsed == (F(label="effusion", side="right", size="large"), F(label="cardiomegaly"))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("small nodule in the left upper zone; granuloma", "granuloma"),
        ("nodule and effusion in one clause", "unknown term 'one'"),
        ("left right nodule", "two different sides"),
        ("pneumothorax in the upper zone", "cannot be placed in a zone"),
        ("moderate left", "no finding named"),
    ],
)
def test_parse_errors_name_the_problem(text, fragment):
    with pytest.raises(PromptError, match=fragment):
        parse_prompt(text)


def test_every_sampled_prompt_renders_and_parses_back():
    prior = estimate_prior(_source())
    for prompt in sample_prompts(300, prior, PromptSamplerConfig(label_targets={"mass": 0.2}), seed=3):
        assert parse_prompt(render_prompt(prompt)) == prompt


# --- prior estimation ----------------------------------------------------------------------------


def _source() -> list[tuple[Finding, ...]]:
    """1000 samples: 60% normal; effusion with cardiomegaly; effusion alone; nodules; rare pneumothorax."""
    return (
        [()] * 600
        + [(F(label="effusion", side="right", size="moderate"), F(label="cardiomegaly", size="large"))] * 100
        + [(F(label="effusion", side="left", size="small"),)] * 150
        + [(F(label="nodule", side="left", zone="upper", size="small"),)] * 120
        + [(F(label="nodule", side="right", zone="lower", size="moderate"),) * 2] * 20
        + [(F(label="pneumothorax", side="right", size="small"),)] * 10
    )


def test_estimate_prior_counts_combinations_and_attributes():
    prior = estimate_prior(_source())
    assert prior.n_samples == 1000
    weights = {c.labels: c.weight for c in prior.combinations}
    assert weights[()] == 600
    assert weights[("effusion", "cardiomegaly")] == 100  # vocabulary order, not alphabetical
    assert weights[("nodule", "nodule")] == 20
    freq = prior.label_frequencies()
    assert freq["effusion"] == pytest.approx(0.25)
    assert freq["pneumothorax"] == pytest.approx(0.01)
    assert freq["mass"] == 0
    nodule = {(a.side, a.zone, a.size): a.weight for a in prior.attributes["nodule"]}
    assert nodule == {("left", "upper", "small"): 120, ("right", "lower", "moderate"): 40}


def test_estimate_prior_reads_manifest_records():
    records = [[{"label": "effusion", "side": "left", "zone": None, "size": "small"}], []]
    prior = estimate_prior(records)
    assert prior.label_frequencies()["effusion"] == pytest.approx(0.5)


def test_prior_json_round_trip():
    prior = estimate_prior(_source())
    again = FindingPrior.model_validate_json(prior.model_dump_json())
    assert again == prior
    assert json.loads(prior.model_dump_json())["n_samples"] == 1000


def test_prior_rejects_bad_labels_and_attributes():
    with pytest.raises(ValueError, match="unknown finding 'granuloma'"):
        prior_from_weights({"granuloma": 1.0})
    with pytest.raises(ValueError, match="cannot be placed in a zone"):
        prior_from_weights({"pneumothorax": 1.0}, {"pneumothorax": [{"side": "left", "zone": "upper", "weight": 1}]})
    with pytest.raises(PromptSamplerError):
        estimate_prior([])


# --- sampler -------------------------------------------------------------------------------------


def _label_shares(prompts) -> dict[str, float]:
    counts = Counter(label for p in prompts for label in {f.label for f in p})
    return {label: counts[label] / len(prompts) for label in counts}


def test_sampler_without_targets_follows_the_prior():
    prompts = sample_prompts(5000, estimate_prior(_source()), PromptSamplerConfig(), seed=0)
    shares = _label_shares(prompts)
    assert shares["effusion"] == pytest.approx(0.25, abs=0.02)
    assert shares["nodule"] == pytest.approx(0.14, abs=0.015)
    assert sum(1 for p in prompts if not p) / 5000 == pytest.approx(0.6, abs=0.02)


def test_sampler_meets_frequency_targets_and_keeps_cooccurrence():
    config = PromptSamplerConfig(label_targets={"pneumothorax": 0.2, "nodule": 0.3}, normal_fraction=0.3)
    prompts = sample_prompts(6000, estimate_prior(_source()), config, seed=1)
    shares = _label_shares(prompts)
    assert shares["pneumothorax"] == pytest.approx(0.2, abs=0.02)  # oversampled 20x
    assert shares["nodule"] == pytest.approx(0.3, abs=0.02)
    assert sum(1 for p in prompts if not p) / len(prompts) == pytest.approx(0.3, abs=0.02)
    with_effusion = [p for p in prompts if any(f.label == "effusion" for f in p)]
    with_both = sum(any(f.label == "cardiomegaly" for f in p) for p in with_effusion)
    assert with_both / len(with_effusion) == pytest.approx(100 / 250, abs=0.05)  # P(cardiomegaly | effusion) kept


def test_target_for_a_label_the_prior_never_shows():
    prompts = sample_prompts(4000, estimate_prior(_source()), PromptSamplerConfig(label_targets={"mass": 0.25}), seed=2)
    masses = [p for p in prompts if any(f.label == "mass" for f in p)]
    assert len(masses) / 4000 == pytest.approx(0.25, abs=0.02)
    assert all(len(p) == 1 and p[0].side and p[0].zone and p[0].size for p in masses)  # alone, uniform attributes


def test_incompatible_targets_raise():
    config = PromptSamplerConfig(label_targets={"pneumothorax": 0.8, "nodule": 0.8})
    with pytest.raises(PromptSamplerError, match="cannot meet the target share"):
        tilted_weights(estimate_prior(_source()), config)


def test_sampler_is_deterministic_for_a_seed():
    prior, config = estimate_prior(_source()), PromptSamplerConfig(label_targets={"pneumothorax": 0.1})
    assert sample_prompts(200, prior, config, seed=7) == sample_prompts(200, prior, config, seed=7)
    assert sample_prompts(200, prior, config, seed=7) != sample_prompts(200, prior, config, seed=8)


def test_unspecified_rate_and_max_findings():
    prior = estimate_prior(_source())
    prompts = sample_prompts(2000, prior, PromptSamplerConfig(unspecified_rate=0.5, max_findings=1), seed=4)
    assert max(len(p) for p in prompts) == 1
    sides = [f.side for p in prompts for f in p if f.label != "cardiomegaly"]
    assert sum(s is None for s in sides) / len(sides) == pytest.approx(0.5, abs=0.06)


# --- prompt encoding (no weights) ----------------------------------------------------------------


def test_token_ids_distinguish_null_normal_and_attributes():
    assert prompt_token_ids(None) != prompt_token_ids(())
    a = prompt_token_ids((F(label="nodule", side="left", zone="upper", size="small"),))
    b = prompt_token_ids((F(label="nodule", side="left", zone="upper"),))
    assert a != b and len(a) == len(b) == 4
    assert TOKENS[b[-1]] == "nodule.size=any"


def test_prior_maps_follow_the_anatomy(toy_anatomy):
    anatomy = toy_anatomy[0]
    maps = prior_maps((F(label="nodule", side="left", zone="upper", size="small"), F(label="cardiomegaly", size="large")), anatomy)
    nodule, heart = maps[0], maps[5]
    left_lung, heart_mask = anatomy[4].astype(bool), anatomy[8].astype(bool)
    assert nodule.max() == pytest.approx(1 / 3) and (nodule > 0).sum() > 0
    assert not (nodule > 0)[~left_lung].any()  # inside the left lung only
    rows = (nodule > 0).any(axis=1).nonzero()[0]
    lung_rows = left_lung.any(axis=1).nonzero()[0]
    assert rows.max() < lung_rows.min() + (lung_rows.max() - lung_rows.min()) / 3 + 1  # upper third
    assert ((heart > 0) == heart_mask).all() and heart.max() == 1.0
    assert maps[[1, 2, 3, 4, 6]].sum() == 0
    unspecified = prior_maps((F(label="nodule"),), anatomy)[0]
    assert ((unspecified > 0) == (anatomy[4] | anatomy[5]).astype(bool)).all()  # union of both lungs
    assert prior_maps(None, anatomy).sum() == 0


@pytest.fixture
def toy_anatomy():
    from toy_cxr import toy_batch

    return toy_batch(1, size=48)[1]


def test_an_effusion_may_lie_above_the_lower_half_its_prior_map_marks(toy_anatomy):
    """The hard rule (filter, quality suite, clipping) is the lung below its apex; the prior map, the mask
    generator's conditioning, stays the lower half the shipped model learnt."""
    from aurad_models.anatomy_rules import allowed_region, hint_region
    from aurad_models.prompt_encoder import requested_regions

    anatomy = toy_anatomy[0].astype(bool)
    allowed, hint = allowed_region("effusion", anatomy, "left"), hint_region("effusion", anatomy, "left")
    assert hint.any() and not (hint & ~allowed).any() and (allowed & ~hint).sum() > 0.4 * hint.sum()
    prompt = (F(label="effusion", side="left", size="large"),)
    assert ((prior_maps(prompt, anatomy)[3] > 0) == hint).all()
    assert (requested_regions(prompt, anatomy)[3] == allowed).all()
    assert allowed_region("nodule", anatomy, "left").tolist() == hint_region("nodule", anatomy, "left").tolist()
