"""Orchestration overhead: the same build through Prefect (flow, subflow, one task per shard) and as the
same stage functions in a plain loop, with the overhead accounted inside each run.

    python -m bench.orchestration [--n-samples 2000] [--shard-size 200] [--inference-steps 4] [--root DIR]

Both runs execute `tasks.build.run_build` with identical configs except the dataset name; the only
difference is the shard stage: `generate_shards_with_prefect` (a Prefect subflow submitting one task per
shard to a thread pool) or `generate_shards_in_loop`. A warm-up build first starts Prefect's ephemeral
server and loads the models, so neither timed run pays for them; the server start is reported on its own.
The tiny world (bench/world.py) keeps the stage work small, and few denoising steps make it smaller still,
so the overhead ratio is a pessimistic one: with the demo's 10-step sampling the same absolute overhead is
a smaller share. Two figures: the A/B difference of the two runners' medians (what a user sees, but at the
mercy of the machine's load), and the in-run accounting (`accounting`), which times what lies outside the
stage functions within the same run and so does not depend on load. Target: < 5 %.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import markdown_table, write_results


def run(n_samples: int, shard_size: int, inference_steps: int, root: Path, repeats: int) -> dict[str, Any]:
    import flows  # noqa: F401  (offline, quiet defaults before Prefect loads)
    from bench.world import make_build_world, tiny_build_config
    from flows.build import build_flow, generate_shards_in_loop
    from tasks.build import run_build

    if not (root / "models").is_dir():
        make_build_world(root)

    def config(dataset: str):
        base = tiny_build_config(root, dataset=dataset, n_samples=n_samples, shard_size=shard_size, max_tries=1)
        steps = {"num_inference_steps": inference_steps}
        return base.model_copy(update={
            "mask_sampling": base.mask_sampling.model_copy(update=steps),
            "image_sampling": base.image_sampling.model_copy(update=steps),
        })

    began = time.perf_counter()
    build_flow(config("warmup").model_copy(update={"n_samples": shard_size}))
    warmup = time.perf_counter() - began

    runs: dict[str, list[dict[str, float]]] = {"loop": [], "prefect": []}
    plain_logger = logging.getLogger("bench.orchestration")
    for r in range(repeats):  # alternate, so that both meet the same machine load
        began = time.perf_counter()
        result = run_build(config(f"loop{r}"), generate_shards_in_loop, plain_logger)
        runs["loop"].append(accounting(time.perf_counter() - began, result.seconds))
        began = time.perf_counter()
        result = build_flow(config(f"prefect{r}"))
        runs["prefect"].append(accounting(time.perf_counter() - began, result.seconds))

    def median(runner: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[runner])

    loop, prefect = median("loop", "wall_s"), median("prefect", "wall_s")
    shards = -(-n_samples // shard_size)
    return {
        "n_samples": n_samples,
        "shard_size": shard_size,
        "shard_tasks": shards,
        "inference_steps": inference_steps,
        "repeats": repeats,
        "cpus": len(os.sched_getaffinity(0)),
        "warmup_build_with_server_start_s": round(warmup, 2),
        "runs": runs,
        "plain_loop_s": [run["wall_s"] for run in runs["loop"]],
        "prefect_s": [run["wall_s"] for run in runs["prefect"]],
        "ab_overhead_s": round(prefect - loop, 2),
        "ab_overhead_fraction": round((prefect - loop) / loop, 4),
        "in_run_overhead_s": round(median("prefect", "overhead_s"), 3),
        "in_run_overhead_fraction": round(median("prefect", "overhead_fraction"), 5),
        "per_shard_overhead_s": round(median("prefect", "fanout_overhead_s") / shards, 4),
        "loop_in_run_overhead_s": round(median("loop", "overhead_s"), 3),
        "samples_per_s_prefect": round(n_samples / prefect, 1),
        "target_overhead_fraction": 0.05,
    }


def accounting(wall_s: float, seconds: dict[str, float]) -> dict[str, float]:
    """Where one build's wall time went, measured inside the run: outside `run_build` (the flow engine:
    creating and finishing flow runs), and inside the shard stage but outside the shard task bodies
    (the subflow, task runs, futures; exact with one worker, where shards run one after another)."""
    engine = wall_s - seconds["total"]
    fanout = seconds["shards"] - seconds["shard_tasks"]
    return {"wall_s": round(wall_s, 3), "engine_overhead_s": round(engine, 3), "fanout_overhead_s": round(fanout, 3),
            "overhead_s": round(engine + fanout, 3), "overhead_fraction": round((engine + fanout) / wall_s, 5),
            "shard_tasks_s": round(seconds["shard_tasks"], 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=200)
    parser.add_argument("--inference-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--root", type=Path, default=None, help="a world to reuse (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aurad-bench-orch-") as scratch:
        results = run(args.n_samples, args.shard_size, args.inference_steps, args.root or Path(scratch), args.repeats)
    rows = [{"runner": name, "runs": [run["wall_s"] for run in results["runs"][key]],
             "median": statistics.median(run["wall_s"] for run in results["runs"][key]),
             "overhead": statistics.median(run["overhead_s"] for run in results["runs"][key]),
             "fraction": statistics.median(run["overhead_fraction"] for run in results["runs"][key])}
            for key, name in (("loop", "plain loop"), ("prefect", "Prefect (flow + subflow + task per shard)"))]
    table = markdown_table(rows, {"runner": "runner", "median": "median wall s", "runs": "runs s",
                                  "overhead": "in-run overhead s", "fraction": "overhead / wall"})
    table += ["", f"{results['n_samples']} samples in {results['shard_tasks']} shard tasks (one worker), "
              f"{results['inference_steps']} denoising steps, runs alternating. In-run overhead: wall time outside "
              "`run_build` plus shard-stage time outside the shard task bodies, measured inside each run: "
              f"{results['in_run_overhead_fraction']:.2%} of the build for Prefect ({results['per_shard_overhead_s'] * 1000:.0f} ms "
              f"per shard task; target < 5%). A/B difference of the medians, which carries the machine's load noise: "
              f"{results['ab_overhead_fraction']:+.1%}. Warm-up build with server start: {results['warmup_build_with_server_start_s']} s."]
    print("\n".join(table))
    write_results("orchestration", results, table, "Orchestration overhead of the build flow", out=args.output)
    return results


if __name__ == "__main__":
    main()
