"""Flow: build the phantom source dataset (the embedded default's "real" data)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import wait

from flows.profiles import with_overrides
from storage import find_published_build
from tasks.source import SourceConfig, phantom_shard_task, source_build_id, stage_source


@flow(name="aurad-source", log_prints=False)
def phantom_source_flow(params: SourceConfig = SourceConfig(), overrides: dict[str, Any] | None = None) -> str:
    """Generate and publish the phantom source dataset; returns its version.

    Idempotent: the same config finds its published version instead of building it again, and a build
    that died resumes from its finished shards.
    """
    logger = get_run_logger()
    config = with_overrides(params, overrides)  # a run's few changes, merged (see flows.deployments)
    root = config.root
    published = find_published_build(root, config.dataset, source_build_id(config))
    if published is not None:
        logger.info("source dataset %s/%s already built for this config", config.dataset, published)
        return published
    staged = stage_source(config)
    pending = sorted(set(range(staged.n_shards)) - staged.finished_shards())
    logger.info("phantom source: %d samples, %d of %d shards to generate", config.n_samples, len(pending), staged.n_shards)
    futures = [phantom_shard_task.submit(staged, shard, config) for shard in pending]
    wait(futures)
    for future in futures:
        future.result()  # re-raise the first failure
    version = staged.publish({"kind": "source", "generator": "aurad-phantom", "config": config.model_dump(mode="json")})
    logger.info("published %s/%s", config.dataset, version)
    return version
