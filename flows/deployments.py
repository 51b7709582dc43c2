"""The parameters of the deployments in prefect.yaml, resolved from profiles, so a deployment runs (and its
UI form shows) exactly what its profile says, never the code's bare defaults.

    python -m flows.deployments           rewrite the `parameters:` block of every deployment in prefect.yaml
    python -m flows.deployments --check   exit 1, naming the deployments, if prefect.yaml differs from its profiles

Each block holds the profile's settings that differ from the code defaults (pydantic fills in the rest, so
the run and the form agree), with the storage root the workers use. To change a few settings for one run,
pass them as `overrides` (a top-level flow parameter, merged into the deployment's settings, dotted keys
allowed): `prefect deployment run aurad-build/nightly-build -p overrides='{"n_samples": 32}'`. Passing
`params` instead replaces the whole block, as Prefect merges parameters at the top level only.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from flows.config import load_config
from flows.profiles import ConfigError

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"
DEPLOYMENT_ROOT = "aurad-data"  # relative to the directory the workers run in

# deployment name -> (profile, section of the profile the flow takes; None = the whole configuration)
DEPLOYMENTS: dict[str, tuple[str, str | None]] = {
    "nightly-build": ("production", "build"),
    "train-generators": ("production", "train"),
    "train-experts": ("production", "experts"),
    "anatomy-bank": ("production", "anatomy_bank"),
    "evaluate": ("production", "evaluate"),
    "phantom-source": ("production", "source"),
    "pipeline": ("demo", None),
}

def deployment_parameters(name: str) -> dict[str, Any]:
    """The flow parameters of one deployment: its profile's section, as far as it differs from the defaults."""
    profile, section = DEPLOYMENTS[name]
    config = load_config(profile, root=DEPLOYMENT_ROOT)
    if section is None:
        settings = config.model_dump(mode="json", exclude_defaults=True)
        return {"config": {"storage": {"root": DEPLOYMENT_ROOT}, **settings, "profile": profile}}
    settings = getattr(config, section).model_dump(mode="json", exclude_defaults=True)
    return {"params": {"root": DEPLOYMENT_ROOT, **settings}}


def render(text: str) -> str:
    """prefect.yaml with every deployment's `parameters:` block written from its profile."""
    out = text
    for name in DEPLOYMENTS:
        block = yaml.safe_dump({"parameters": deployment_parameters(name)}, sort_keys=False, width=110, default_flow_style=None)
        block = "".join(f"    {line}\n" for line in block.splitlines())
        pattern = re.compile(rf"(  - name: {re.escape(name)}\n(?:    (?!parameters:).*\n)*)(    parameters:\n(?:      .*\n)*)?")
        out, count = pattern.subn(lambda m, b=block: m.group(1) + b, out, count=1)
        if count != 1:
            raise ConfigError(f"deployment {name!r} is not in {PREFECT_YAML}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that prefect.yaml matches its profiles")
    args = parser.parse_args(argv)
    text = PREFECT_YAML.read_text()
    rendered = render(text)
    if args.check:
        stale = [name for name in DEPLOYMENTS if _deployment(text, name) != _deployment(rendered, name)]
        if stale:
            print(f"prefect.yaml parameters differ from their profiles: {', '.join(stale)}; run python -m flows.deployments",
                  file=sys.stderr)
            return 1
        return 0
    PREFECT_YAML.write_text(rendered)
    print(f"wrote the parameters of {len(DEPLOYMENTS)} deployments into {PREFECT_YAML}")
    return 0


def _deployment(text: str, name: str) -> dict[str, Any]:
    return next(d for d in yaml.safe_load(text)["deployments"] if d["name"] == name)


if __name__ == "__main__":
    raise SystemExit(main())
