"""End-to-end wall time and peak memory of the embedded default: the whole pipeline (`aurad demo`) on a
fresh storage root, stage by stage.

    python -m bench.demo [--profile demo] [--root DIR] [-s section.key=value ...]

Runs `pipeline_flow` in this process with Prefect's ephemeral API (as `aurad demo` does), so the figure
includes Prefect's start-up. Peak memory is the process's maximum resident set size (`ru_maxrss`).
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import markdown_table, progress_logging, write_results
from flows.config import load_config

logger = logging.getLogger("bench.demo")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--root", type=Path, default=None, help="storage root (default: a fresh temporary one, removed after)")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    progress_logging()
    root = args.root or Path(tempfile.mkdtemp(prefix="aurad-bench-demo-"))
    config = load_config(args.profile, args.overrides, root=str(root))
    try:
        from flows.pipeline import pipeline_flow

        started = time.perf_counter()
        result = pipeline_flow(config)
        total = time.perf_counter() - started
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    peak_mib = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    stages = [{"stage": name, "seconds": seconds} for name, seconds in result.seconds.items()]
    stages.append({"stage": "total (with Prefect start-up)", "seconds": round(total, 1)})
    table = markdown_table(stages, {"stage": "stage", "seconds": "seconds"})
    evaluation = evaluation_cost(result.evaluation_report)
    if evaluation:
        table += ["", "Evaluation cost (models trained, their summed training seconds over the worker processes):", ""]
        table += markdown_table(evaluation, {"regime": "regime", "models": "models", "train_seconds": "core-seconds",
                                             "median_best_step": "median best step"})
    table += ["", f"Profile {args.profile!r}{' with ' + ', '.join(args.overrides) if args.overrides else ''}, fresh root; "
              f"peak resident memory {peak_mib:.0f} MiB; {result.build.accepted} of {result.build.n_samples} samples accepted.",
              *[f"- {line}" for line in result.headline]]
    print("\n".join(table))
    results = {"profile": args.profile, "overrides": args.overrides, "seconds": result.seconds, "total_s": round(total, 1),
               "peak_memory_mib": round(peak_mib), "accepted": result.build.accepted, "n_samples": result.build.n_samples,
               "headline": result.headline, "evaluation_cost": evaluation}
    out = write_results("demo", results, table, "End-to-end demo (`aurad demo`) on a fresh root", out=args.out)
    logger.info("wrote %s", out)
    return results


def evaluation_cost(report: str | None) -> list[dict[str, Any]]:
    """Per regime of the segmentation evaluation: how many models trained, their training seconds."""
    import json
    import statistics

    if not report:
        return []
    path = Path(report).with_name("evaluation.json")
    if not path.is_file():
        return []
    rows = []
    for row in json.loads(path.read_text())["regimes"]:
        rows.append({"regime": f"{row['train_set']} at {100 * row['real_fraction']:g}%", "models": row["seeds"],
                     "train_seconds": row["seconds"], "median_best_step": statistics.median(row["best_steps"])})
    return rows


if __name__ == "__main__":
    main()
