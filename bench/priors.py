"""How well prompts keep real co-occurrence: for each real prior (NIH, CheXpert, PadChest, learnt from the
label tables torchxrayvision ships; `tasks.priors`), the co-occurrence error of

- prompts the sampler draws from that prior, without frequency targets (the sampling-noise floor) and with
  the targets below (lifts move by design under targets; odds ratios should not);
- the phantom source's findings (what a build prompts with by default, `prior: source`), drawn from the
  phantom's own finding prior (`aurad_models.phantom.sampling.sample_findings`, the demo's phantom config).

Error: mean |log lift difference| over the pairs the prior expects at least 10 times among the samples
(`tasks.priors.compare_cooccurrence`), and the same for log odds ratios.

    python -m bench.priors [--n 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from aurad_models.seeding import derive_seed
from aurad_models.vocabulary import PATHOLOGIES
from bench.record import markdown_table, progress_logging, write_results
from tasks.priors import REAL_TABLES, compare_cooccurrence, prior_lift, real_prior
from tasks.prompts import PromptSamplerConfig, estimate_prior, sample_prompts

TARGETS = {"pneumothorax": 0.15, "nodule": 0.15, "mass": 0.1, "cardiomegaly": 0.15}


def phantom_findings(n: int, seed: int) -> list[tuple]:
    """`n` samples of the phantom source's findings (the demo profile's phantom: `SourceConfig().phantom`)."""
    from aurad_models.phantom.sampling import sample_findings
    from tasks.source import SourceConfig

    config = SourceConfig().phantom
    return [sample_findings(np.random.default_rng(derive_seed(seed, "phantom", i)), config) for i in range(n)]


def _row(prior_name: str, samples: str, comparison: dict[str, Any]) -> dict[str, Any]:
    return {"prior": prior_name, "samples": samples, "pairs": comparison["pairs"],
            "log_lift_error": comparison["mean_abs_log_lift_diff"],
            "log_odds_ratio_error": comparison["mean_abs_log_odds_ratio_diff"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.priors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="samples per comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    progress_logging()
    phantom = phantom_findings(args.n, args.seed)
    priors = {name: real_prior(name) for name in REAL_TABLES}
    priors["phantom"] = estimate_prior(phantom)
    rows = []
    for name, prior in priors.items():
        plain = sample_prompts(args.n, prior, PromptSamplerConfig(), derive_seed(args.seed, name, "plain"))
        rows.append(_row(name, "sampler, no targets", compare_cooccurrence(prior, plain)))
        tilted = sample_prompts(args.n, prior, PromptSamplerConfig(label_targets=TARGETS), derive_seed(args.seed, name, "targets"))
        rows.append(_row(name, "sampler, targets", compare_cooccurrence(prior, tilted)))
        if name != "phantom":
            rows.append(_row(name, "phantom source", compare_cooccurrence(prior, phantom)))
    lifts = {name: {(r["a"], r["b"]): r["lift"] for r in prior_lift(prior)} for name, prior in priors.items()}
    pairs = [{"pair": f"{a} + {b}", **{name: lifts[name][(a, b)] for name in priors}}
             for i, a in enumerate(PATHOLOGIES) for b in PATHOLOGIES[i + 1:]]
    table = markdown_table(rows, {"prior": "prior", "samples": "samples", "pairs": "pairs",
                                  "log_lift_error": "mean abs log-lift diff", "log_odds_ratio_error": "mean abs log-OR diff"})
    table += ["", f"{args.n} samples per row; pairs: those the prior expects at least 10 times among them. Targets: "
              + ", ".join(f"{k} {v}" for k, v in TARGETS.items()) + ". 'phantom' is the phantom source's prior estimated "
              "from the same phantom samples (its rows are the sampler's noise floor on it).", "",
              "Lift P(a, b) / (P(a) P(b)) of every pair in each prior (- : a label the prior never shows):", ""]
    table += markdown_table(pairs, {"pair": "pair", **{name: name for name in priors}})
    table += ["", "Priors: " + ", ".join(f"{name} {prior.n_samples} samples" for name, prior in priors.items()) + "."]
    print("\n".join(table))
    results = {"n": args.n, "seed": args.seed, "targets": TARGETS, "rows": rows, "lifts": pairs,
               "priors": {name: {"n_samples": p.n_samples, "frequencies": p.label_frequencies()} for name, p in priors.items()}}
    from pathlib import Path

    write_results("priors", results, table, "Co-occurrence of prompts against real priors",
                  out=Path(args.out) if args.out else None)
    return results


if __name__ == "__main__":
    main()
