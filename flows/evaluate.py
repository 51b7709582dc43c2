"""`evaluate_flow`: downstream retraining and quality metrics of a synthetic dataset version, as Prefect
tasks over `tasks.evaluate` (parameters, data, metrics, outputs) and `tasks.retrain` (the regimes)."""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect import flow

from flows.profiles import with_overrides
from tasks.evaluate import (
    OUTPUT_FILES,
    EvaluateParameters,
    EvaluateResult,
    downstream_task,
    evaluation_key,
    previous_outputs,
    quality_metrics_task,
    write_outputs_task,
)
from tasks.report import headline_lines, metrics_headline

logger = logging.getLogger(__name__)


@flow(name="aurad-evaluate", log_prints=False)
def evaluate_flow(params: EvaluateParameters = EvaluateParameters(), overrides: dict[str, Any] | None = None,
                  rerun: bool = False) -> EvaluateResult:
    """Downstream retraining (every regime of `tasks.retrain`) and quality metrics; writes the evaluation
    documents and report (`tasks.evaluate`) and returns where they are, with the headline. An evaluation
    already made with the same settings and versions is reused (`rerun` makes it again)."""
    params = with_overrides(params, overrides)  # a run's few changes, merged (see flows.deployments)
    started = time.perf_counter()
    key = evaluation_key(params)
    previous = None if rerun else previous_outputs(params, key)
    if previous is not None:
        logger.warning("evaluation %s already made with these settings and versions: reusing it (rerun=True makes it again)", key)
        documents, where = previous
        files = [OUTPUT_FILES[name] for name in documents] + [OUTPUT_FILES["report"]]
    else:
        documents = {}
        for name in params.evaluate.tasks:
            documents[name] = downstream_task(params, name)
        if params.evaluate.metrics.enabled:
            documents["metrics"] = quality_metrics_task(params)
        where, files = write_outputs_task(params, documents, key)
    gains = {name: documents[name]["gains"] for name in params.evaluate.tasks}
    headline = {name: headline_lines(documents[name]) for name in params.evaluate.tasks}
    if documents.get("metrics"):
        headline["quality"] = metrics_headline(documents["metrics"])
    for name, lines in headline.items():
        for line in lines:
            logger.info("%s: %s", name, line)
    return EvaluateResult(output=where, files=files, gains=gains, headline=headline, seconds=round(time.perf_counter() - started, 1))
