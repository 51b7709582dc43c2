"""prefect.yaml deploys against a real, local Prefect server started by the test: every deployment is
registered with its work pool, schedule and parameters, and the parameters validate as the flows' models."""

from __future__ import annotations

import os
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
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _prefect(env: dict, *args: str) -> str:
    done = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_prefect_yaml_deploys_with_pools_schedules_and_parameters(prefect_server):
    env = prefect_server
    _prefect(env, "work-pool", "create", "aurad-cpu", "--type", "process")
    _prefect(env, "work-pool", "create", "aurad-gpu", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--all")

    api = env["PREFECT_API_URL"]
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
    flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}, timeout=30).json()}
    found = {(flows[d["flow_id"]], d["name"]): d for d in deployments}

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
    deadline = time.monotonic() + 120
    while not (runs := httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [evaluate["id"]]}}},
                                  timeout=30).json()):
        assert time.monotonic() < deadline, "the published event started no evaluate run"
        time.sleep(1)
    assert len(runs) == 1 and runs[0]["parameters"]["overrides"] == {"synthetic_version": "v0042"}
    assert runs[0]["parameters"]["params"] == evaluate["parameters"]["params"]  # the profile's, merged
    from tasks.evaluate import EvaluateParameters
    from flows.profiles import with_overrides

    params = with_overrides(EvaluateParameters.model_validate(runs[0]["parameters"]["params"]), runs[0]["parameters"]["overrides"])
    assert params.synthetic_version == "v0042"


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
