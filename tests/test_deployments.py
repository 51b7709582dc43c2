"""prefect.yaml deploys against a real, local Prefect server started by the test: every deployment is
registered with its work pool, schedule and parameters, and the parameters validate as the flows' models."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")


def _stop(process: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM, then SIGKILL if Prefect's graceful shutdown outlasts `grace` (it did on a loaded CI VM, after
    the run it served had already finished)."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` in a throwaway home; yields the environment that points at it."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_LOGGING_LEVEL": "WARNING"}
    log = open(home / "server.log", "w")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield env
    finally:
        _stop(server)
        log.close()


def _prefect(env: dict, *args: str) -> str:
    done = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def deployed(prefect_server):
    """prefect.yaml deployed as the README says: both work pools, then `prefect deploy --all`."""
    env = prefect_server
    _prefect(env, "work-pool", "create", "aurad-cpu", "--type", "process")
    _prefect(env, "work-pool", "create", "aurad-gpu", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--all")
    api = env["PREFECT_API_URL"]
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
    flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}, timeout=30).json()}
    return env, {(flows[d["flow_id"]], d["name"]): d for d in deployments}


def _evaluate_runs_for(api: str, evaluate: dict, version: str, timeout: float = 120) -> list[dict]:
    """The evaluate deployment's flow runs for one synthetic version, waiting for the trigger to make one."""
    deadline = time.monotonic() + timeout
    while True:
        runs = httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [evaluate["id"]]}}},
                          timeout=30).json()
        runs = [r for r in runs if (r["parameters"].get("overrides") or {}).get("synthetic_version") == version]
        if runs or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def test_prefect_yaml_deploys_with_pools_schedules_and_parameters(deployed):
    env, found = deployed
    api = env["PREFECT_API_URL"]
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert len(found) == len(declared)
    nightly = found[("aurad-build", "nightly-build")]
    assert nightly["work_pool_name"] == "aurad-gpu"
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["schedules"][0]["active"] is True
    assert nightly["schedules"][0]["parameters"] == {"overrides": {"release": True}}  # scheduled: released
    assert nightly["parameters"]["params"]["release"] is False  # a custom run: a candidate
    assert nightly["parameters"]["params"]["n_samples"] == 2000
    assert found[("aurad-evaluate", "evaluate")]["work_pool_name"] == "aurad-cpu"
    assert found[("aurad-train-generators", "train-generators")]["work_pool_name"] == "aurad-gpu"
    # The UI's form is the flow's pydantic model: the schema names BuildConfig's fields.
    schema = nightly["parameter_openapi_schema"]
    definitions = schema.get("definitions") or schema.get("$defs") or {}
    assert "BuildConfig" in definitions and "max_tries" in definitions["BuildConfig"]["properties"]

    # The registered parameters validate as the flow's parameter model (what a worker will run).
    from tasks.build import BuildConfig

    assert BuildConfig.model_validate(nightly["parameters"]["params"]).n_samples == 2000

    # A published version (the event the build flow emits) starts an evaluation of exactly that version.
    evaluate = found[("aurad-evaluate", "evaluate")]
    _prefect(env, "event", "emit", "aurad.dataset.published", "--resource-id", "aurad.dataset.synthetic",
             "--payload", '{"dataset": "synthetic", "version": "v0042", "build_id": "build-test"}')
    runs = _evaluate_runs_for(api, evaluate, "v0042")
    assert len(runs) == 1 and runs[0]["parameters"]["overrides"] == {"synthetic_version": "v0042"}
    assert runs[0]["parameters"]["params"] == evaluate["parameters"]["params"]  # the profile's, merged
    from tasks.evaluate import EvaluateParameters
    from flows.profiles import with_overrides

    params = with_overrides(EvaluateParameters.model_validate(runs[0]["parameters"]["params"]), runs[0]["parameters"]["overrides"])
    assert params.synthetic_version == "v0042"


def _wait_for_final_state(api: str, run_id: str, worker: subprocess.Popen, log: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        assert worker.poll() is None, f"the worker died:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the run is still {run['state']['name']}:\n{log.read_text()[-3000:]}"
        time.sleep(2)


def test_a_custom_nightly_build_runs_on_a_worker_and_the_ui_shows_it(deployed, tmp_path):
    """A user's "Custom run" of the nightly build with small parameters: a process worker on the GPU pool
    runs it to completion, and the server then holds what the UI shows: the summary and report artifacts
    under the dataset's keys, the shard tasks by number, the evaluation the published version triggered,
    and a version that is a candidate (a test run does not become `latest`)."""
    from bench.world import make_build_world, tiny_build_config
    from storage import open_dataset
    from storage.catalog import CANDIDATE, version_status
    from storage.layout import Root

    env, found = deployed
    api = env["PREFECT_API_URL"]
    root = make_build_world(tmp_path / "root")
    parameters = {"params": tiny_build_config(root).model_dump(mode="json"),
                  "overrides": {"n_samples": 8, "shard_size": 4, "release": False}}
    created = _prefect(env, "deployment", "run", "aurad-build/nightly-build", "--params", json.dumps(parameters))
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", created).group(1)

    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "aurad-gpu", "--limit", "1"], env=env,
                                  cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            run = _wait_for_final_state(api, run_id, worker, log_path, timeout=600)
        finally:
            _stop(worker)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{log_path.read_text()[-4000:]}"

    version = "v0001"
    assert version_status(Root(str(root)), "synthetic", version) == CANDIDATE
    assert len(open_dataset(root, "synthetic", version)) == 8

    artifacts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}},
                           timeout=30).json()
    by_key = {a["key"]: a for a in artifacts}
    assert set(by_key) == {"build-synthetic", "build-synthetic-report"}
    summary = by_key["build-synthetic"]
    assert summary["type"] == "markdown" and summary["data"].startswith(f"# synthetic/{version}")
    assert "samples accepted" in summary["data"] and "| expert | pass rate |" in summary["data"]
    report = by_key["build-synthetic-report"]
    assert report["type"] == "markdown" and f"synthetic/{version}/quality/report.html" in report["data"]

    shard_runs = httpx.post(f"{api}/task_runs/filter", json={"task_runs": {"name": {"like_": "shard-"}}}, timeout=30).json()
    assert sorted(t["name"] for t in shard_runs) == ["shard-00000", "shard-00001"]
    assert all(t["state"]["type"] == "COMPLETED" for t in shard_runs)

    evaluations = _evaluate_runs_for(api, found[("aurad-evaluate", "evaluate")], version)
    assert len(evaluations) == 1, "the published version triggered no evaluation"
    assert evaluations[0]["parameters"]["overrides"] == {"synthetic_version": version}


def test_every_deployment_runs_its_profile_and_prefect_yaml_is_up_to_date():
    """prefect.yaml's parameter blocks are what `python -m flows.deployments` writes from the profiles, and
    the flow built from them equals the profile's section (the form and the run show the profile, not the
    code defaults: DPM-Solver++ 10 steps in the nightly build, not DDIM 20)."""
    from flows.config import AuradConfig, load_config
    from flows.deployments import DEPLOYMENTS, PREFECT_YAML, main, render
    from tasks.build import BuildConfig

    assert main(["--check"]) == 0, "run python -m flows.deployments"
    declared = {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
    assert set(declared) == set(DEPLOYMENTS)
    nightly = BuildConfig.model_validate(declared["nightly-build"]["parameters"]["params"])
    production = load_config("production", root="aurad-data").build
    assert nightly == production and nightly.mask_sampling.scheduler == "dpm-solver++"
    pipeline = AuradConfig.model_validate(declared["pipeline"]["parameters"]["config"])
    assert pipeline == load_config("demo", root="aurad-data")
    assert render(PREFECT_YAML.read_text()) == PREFECT_YAML.read_text()


def test_run_overrides_merge_into_the_deployment_parameters_and_a_misspelt_one_is_named():
    from flows.profiles import ConfigError, with_overrides
    from tasks.build import BuildConfig

    deployed = BuildConfig.model_validate({"n_samples": 2000, "shard_size": 200, "mask_sampling": {"scheduler": "dpm-solver++"}})
    run = with_overrides(deployed, {"n_samples": 32, "mask_sampling.threshold": 0.4})
    assert (run.n_samples, run.shard_size, run.mask_sampling.scheduler, run.mask_sampling.threshold) == (32, 200, "dpm-solver++", 0.4)
    with pytest.raises(ConfigError, match="n_sample: Extra inputs are not permitted; did you mean 'n_samples'"):
        with_overrides(deployed, {"n_sample": 32})
