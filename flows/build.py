"""The dataset build flow: prompts -> (per shard: anatomy -> masks -> images -> filter -> write) -> gates -> publish.

Run it from the CLI (`aurad build`), from the Prefect UI (deployment `nightly-build` in prefect.yaml), or
as a plain call: `build_flow(BuildConfig(...))`. Only the Prefect wiring lives here: the build itself
(`tasks.build.run_build`: planning, identity, gates, publishing) and the shard stage (`tasks.generate`).
With the same config and models it resumes a build that died (finished shards are reused, none
duplicated) and finds a build that is already published instead of making it twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.events import emit_event
from prefect.futures import as_completed
from prefect.states import Failed, State
from tqdm import tqdm

from flows.profiles import with_overrides
from flows.runners import shard_task_runner
from tasks.build import (
    BuildConfig,
    BuildResult,
    ShardContext,
    ShardPlan,
    build_summary_markdown,
    run_build,
)
from tasks.generate import ShardReport, generate_shard, generate_shard_task
from tasks.quality import QualityGateFailed

# --- the generation stage ------------------------------------------------------------------------


@flow(name="aurad-generate-shards")
def generate_shards_flow(context: ShardContext, plans: list[ShardPlan]) -> list[ShardReport]:
    """Fan the shards out over the task runner (threads or a Dask cluster); a progress bar per shard."""
    futures = [generate_shard_task.submit(context, plan) for plan in plans]
    reports = []
    with tqdm(total=sum(len(p.prompts) for p in plans), desc="generate", unit="sample", mininterval=2) as bar:
        for future in as_completed(futures):
            report = future.result()
            reports.append(report)
            bar.update(report.n_samples)
    return sorted(reports, key=lambda r: r.shard)


# --- the flow ------------------------------------------------------------------------------------


def generate_shards_in_loop(context: ShardContext, plans: list[ShardPlan]) -> list[ShardReport]:
    """The same shard stage with no orchestration: a plain loop (the baseline of bench/orchestration.py)."""
    return [generate_shard(context, plan) for plan in plans]


def generate_shards_with_prefect(context: ShardContext, plans: list[ShardPlan]) -> list[ShardReport]:
    """The shard stage as a Prefect subflow on the configured task runner."""
    runner_flow = generate_shards_flow.with_options(task_runner=shard_task_runner(context.config))
    return runner_flow(context, plans)


PUBLISHED_EVENT = "aurad.dataset.published"


def emit_published_event(result: BuildResult) -> None:
    """Tell Prefect a version was published (resource `aurad.dataset.<name>`, payload dataset/version/build):
    the `evaluate` deployment's trigger in prefect.yaml evaluates every version the nightly build makes."""
    emit_event(event=PUBLISHED_EVENT, resource={"prefect.resource.id": f"aurad.dataset.{result.dataset}",
                                                "prefect.resource.name": f"{result.dataset}/{result.version}"},
               payload={"dataset": result.dataset, "version": result.version, "build_id": result.build_id})


@flow(name="aurad-build")
def build_flow(params: BuildConfig = BuildConfig(), overrides: dict[str, Any] | None = None) -> BuildResult | State:
    """Build and publish one dataset version (see the module docstring); the Prefect UI gets a summary and
    a link to the report as artifacts, keyed per dataset so its versions line up. A failed quality gate is
    an expected outcome, not a crash: the run ends Failed with the failing expectations as its message and
    no traceback (a plain call still raises QualityGateFailed)."""
    params = with_overrides(params, overrides)  # a run's few changes, merged (see flows.deployments)
    try:
        result = run_build(params, generate_shards_with_prefect, get_run_logger())
    except QualityGateFailed as error:
        return Failed(message=str(error), data=error)
    if not result.already_published:
        emit_published_event(result)
    key = f"build-{params.dataset}".lower().replace("_", "-").replace(".", "-")
    create_markdown_artifact(build_summary_markdown(params.root, result.dataset, result.version), key=key,
                             description=f"{result.dataset}/{result.version}: what the build made")
    link = result.report if "://" in result.report else Path(result.report).resolve().as_uri()
    create_link_artifact(link, link_text=f"{result.dataset}/{result.version} report", key=f"{key}-report",
                         description="the version's HTML report")
    return result


