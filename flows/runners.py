"""Where the build's shard tasks run: a thread pool in the flow's process, a Dask LocalCluster, or an
existing Dask cluster (one worker per GPU or per CPU box).

Two things bite with Dask and are handled here:
- A Dask worker puts its scratch directory first on `sys.path` and, when memory spilling is on, creates a
  `storage/` folder in it. In an editable install that empty folder shadows this project's `storage`
  package (a namespace package found by the path finder wins over setuptools' editable finder) and every
  task fails to unpickle. The LocalCluster's workers keep task results in a plain dict (shard tasks
  return small reports; nothing to spill), so no such folder exists.
- Workers of an existing cluster must run the same code: `check_dask_workers` asks each one which aurad
  it imports before any shard is submitted, and fails with the fix instead of letting tasks crash.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from tasks.build import BuildConfig


def shard_task_runner(config: BuildConfig):
    """The task runner of the shard stage for `config.task_runner` / `workers` / `dask_address`."""
    if config.task_runner != "dask":
        return ThreadPoolTaskRunner(max_workers=config.workers)
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        check_dask_workers(config.dask_address)
        return DaskTaskRunner(address=config.dask_address)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": config.workers,
        "threads_per_worker": 1,  # one shard (one batch on one device) per worker at a time
        "processes": True,
        "data": dict,  # no spill directory (see the module docstring)
        "dashboard_address": None,
    })


def worker_identity() -> dict[str, Any]:
    """What a Dask worker imports: the aurad version and where its `storage` package lives."""
    import storage

    return {"aurad": version("aurad"), "storage": getattr(storage, "__file__", None)}


def check_dask_workers(address: str, timeout_s: float = 30) -> dict[str, dict[str, Any]]:
    """Every worker at `address` imports the same aurad as this process, or a `RuntimeError` that says
    which workers differ and how to fix them. Returns each worker's identity."""
    from distributed import Client

    fix = ("install aurad on every worker with a regular `pip install -c requirements.lock .` of the same "
           "commit (an editable install on a worker can be shadowed by the worker's `storage/` spill folder)")
    with Client(address, timeout=timeout_s, set_as_default=False) as client:
        if not client.scheduler_info().get("workers"):
            raise RuntimeError(f"the Dask cluster at {address} has no workers; start some with `dask worker {address}`")
        try:
            identities = client.run(worker_identity)
        except Exception as error:  # the worker could not import or run the probe
            raise RuntimeError(f"a Dask worker at {address} cannot import aurad ({type(error).__name__}: {error}); {fix}") from error
    expected = version("aurad")
    wrong = {worker: who for worker, who in identities.items() if who["aurad"] != expected or not who["storage"]}
    if wrong:
        raise RuntimeError(f"Dask workers at {address} run a different aurad than this flow ({expected}): {wrong}; {fix}")
    return identities
