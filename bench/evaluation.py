"""The proof of worth as a recorded figure: the downstream evaluation of a published synthetic version
(every regime, paired seeds, oracle, fidelity, C2ST), its headline and its cost, into bench/results.

    python -m bench.evaluation --root aurad-data [--profile demo] [--name evaluation_demo] [-s section.key=value ...]

It runs the profile's `evaluate` section (`flows.evaluate.evaluate_flow`) on the root's latest source and
synthetic versions (the profile names the datasets), writing the evaluation into a folder of its own
beside bench/results, and records the comparisons and the cost of every regime.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import markdown_table, progress_logging, write_results
from flows.config import load_config


def summary_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per regime: mean, spread, paired gain and test against real-only, cost."""
    comparisons = {(c["real_fraction"], c["train_set"]): c for c in document.get("comparisons", [])}
    rows = []
    for row in document["regimes"]:
        c = comparisons.get((row["real_fraction"], row["train_set"]), {})
        rows.append({
            "regime": row["train_set"], "real": f"{100 * row['real_fraction']:g}%", "n_real": row["n_real"], "n_added": row["n_added"],
            "mean": row["mean"], "std": row["std"], "seeds": row["seeds"], "gain": c.get("gain"), "se": c.get("se"),
            "p": c.get("p_value"), "significant": c.get("significant"), "best_step": sorted(row["best_steps"])[len(row["best_steps"]) // 2],
            "seconds": row["seconds"],
        })
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--name", default=None, help="results name (default: evaluation_<profile>)")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    progress_logging()
    from flows.evaluate import evaluate_flow
    from tasks.report import headline_lines, metrics_headline

    config = load_config(args.profile, args.overrides, root=str(args.root))
    output = Path(tempfile.mkdtemp(prefix="aurad-bench-evaluation-"))
    params = config.evaluate.model_copy(update={"output": str(output)})
    started = time.perf_counter()
    result = evaluate_flow(params)
    seconds = time.perf_counter() - started
    documents = {name: json.loads((output / f).read_text()) for name, f in
                 (("segmentation", "evaluation.json"), ("detection", "evaluation_detection.json"), ("metrics", "quality_metrics.json"))
                 if (output / f).is_file()}
    table: list[str] = []
    results: dict[str, Any] = {"profile": args.profile, "overrides": args.overrides, "root": str(args.root), "seconds": round(seconds, 1),
                               "headline": result.headline, "report": str(output / "evaluation.html")}
    for task in ("segmentation", "detection"):
        if task not in documents:
            continue
        document = documents[task]
        rows = summary_rows(document)
        results[task] = {"rows": rows, "gains": document["gains"], "fidelity": document.get("fidelity"),
                         "labels_seen": document.get("labels_seen"), "sources": document.get("sources")}
        table += [f"## {task} ({document['metric']})", "", *[f"- {line}" for line in headline_lines(document)], ""]
        table += markdown_table(rows, {"regime": "regime", "real": "real", "n_real": "real images", "n_added": "added",
                                       "mean": document["metric"], "std": "± std", "seeds": "seeds", "gain": "gain",
                                       "se": "± se", "p": "p", "significant": "significant", "best_step": "median best step",
                                       "seconds": "train s"})
        table.append("")
    if "metrics" in documents:
        results["metrics"] = {k: documents["metrics"].get(k) for k in ("c2st", "frechet", "prdc")}
        table += ["## realism", "", *[f"- {line}" for line in metrics_headline(documents["metrics"])], ""]
    table += [f"Profile {args.profile!r}{' with ' + ', '.join(args.overrides) if args.overrides else ''}; root {args.root}; "
              f"{seconds:.0f} s wall for the whole evaluation (quality metrics included)."]
    print("\n".join(table))
    write_results(args.name or f"evaluation_{args.profile}", results, table,
                  f"Downstream evaluation ({args.profile} profile): the proof of worth", out=args.out)
    return results


if __name__ == "__main__":
    main()
