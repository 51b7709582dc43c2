"""Orchestration overhead: the same build through Prefect (flow, subflow, one task per shard) and as the
same stage functions in a plain loop.

    python -m bench.orchestration [--n-samples 2000] [--shard-size 200] [--inference-steps 4] [--root DIR]

Both runs execute `flows.build.run_build` with identical configs except the dataset name; the only
difference is the shard stage: `generate_shards_with_prefect` (a Prefect subflow submitting one task per
shard to a thread pool) or `generate_shards_in_loop`. A warm-up build first starts Prefect's ephemeral
server and loads the models, so neither timed run pays for them; the server start is reported on its own.
The tiny world (bench/world.py) keeps the stage work small, and few denoising steps make it smaller still,
so the overhead ratio is a pessimistic one: with the demo's 20-step sampling the same absolute overhead is
a smaller share. Target: < 5 %.
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
    from flows.build import build_flow, generate_shards_in_loop, run_build

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

    loop_seconds, prefect_seconds = [], []
    plain_logger = logging.getLogger("bench.orchestration")
    for r in range(repeats):  # alternate, so that both meet the same machine load
        began = time.perf_counter()
        run_build(config(f"loop{r}"), generate_shards_in_loop, plain_logger)
        loop_seconds.append(time.perf_counter() - began)
        began = time.perf_counter()
        build_flow(config(f"prefect{r}"))
        prefect_seconds.append(time.perf_counter() - began)

    loop, prefect = statistics.median(loop_seconds), statistics.median(prefect_seconds)
    return {
        "n_samples": n_samples,
        "shard_size": shard_size,
        "shard_tasks": -(-n_samples // shard_size),
        "inference_steps": inference_steps,
        "repeats": repeats,
        "cpus": len(os.sched_getaffinity(0)),
        "warmup_build_with_server_start_s": round(warmup, 2),
        "plain_loop_s": [round(s, 2) for s in loop_seconds],
        "prefect_s": [round(s, 2) for s in prefect_seconds],
        "overhead_s": round(prefect - loop, 2),
        "overhead_fraction": round((prefect - loop) / loop, 4),
        "per_shard_overhead_s": round((prefect - loop) / -(-n_samples // shard_size), 3),
        "samples_per_s_prefect": round(n_samples / prefect, 1),
        "target_overhead_fraction": 0.05,
    }


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
    rows = [{"runner": "plain loop", "runs": results["plain_loop_s"], "median": statistics.median(results["plain_loop_s"])},
            {"runner": "Prefect (subflow + task per shard)", "runs": results["prefect_s"], "median": statistics.median(results["prefect_s"])}]
    table = markdown_table(rows, {"runner": "runner", "median": "median s", "runs": "runs s"})
    table += ["", f"{results['n_samples']} samples in {results['shard_tasks']} shard tasks, {results['inference_steps']} denoising "
              f"steps, runs alternating: overhead {results['overhead_fraction']:+.1%} of the plain loop "
              f"({results['per_shard_overhead_s']:+.2f} s per shard; target < 5%). Warm-up build with server start: "
              f"{results['warmup_build_with_server_start_s']} s."]
    print("\n".join(table))
    write_results("orchestration", results, table, "Orchestration overhead of the build flow", out=args.output)
    return results


if __name__ == "__main__":
    main()
