"""The `aurad` command line: every flow from a profile with overrides, plus dataset and model listings.

    aurad demo                                  the whole pipeline on the embedded default
    aurad build -p demo -s build.n_samples=512  one flow with overrides
    aurad datasets show synthetic@latest        a published version's summary

Heavy imports (Prefect, torch) happen inside the commands so `--help` stays quick.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="AURAD: synthetic chest X-rays with pathology masks, built by Prefect flows.", no_args_is_help=True)
datasets_app = typer.Typer(help="Published datasets: list them, show one version.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
console = Console()
errors = Console(stderr=True)  # errors go to stderr, so `aurad config ... > cfg.yaml` never writes one into the file

def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        console.print(f"aurad {version('aurad')}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit")) -> None:
    """AURAD: synthetic chest X-rays with pathology masks, built by Prefect flows."""


ProfileOption = typer.Option("demo", "--profile", "-p", help="a profile name in configs/ or a YAML file")
SetOption = typer.Option(None, "--set", "-s", help="override a setting: section.key=value (repeatable)")
RootOption = typer.Option(None, "--root", "-r", help="storage root (default: the profile's storage.root)")


def _config(profile: str, overrides: Optional[list[str]], root: Optional[str]):
    import flows  # noqa: F401  (offline, quiet defaults before Prefect loads)
    from flows.config import load_config
    from flows.profiles import ConfigError

    try:
        return load_config(profile, overrides or [], root)
    except ConfigError as error:
        errors.print(str(error), style="red", markup=False)
        raise typer.Exit(2) from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _run(what: str, call) -> Any:
    """Run a flow; a known failure prints its message (not a traceback) and exits non-zero."""
    from aurad_models.embedded import EmbeddedModelError
    from aurad_models.experts import ExpertWeightsError
    from storage import StorageError
    from tasks.quality import QualityGateFailed

    started = time.perf_counter()
    try:
        result = call()
    except QualityGateFailed as error:
        errors.print(f"{what}: {error}", style="red", markup=False)
        raise typer.Exit(3) from None
    except (StorageError, OSError, LookupError, ValueError, ExpertWeightsError, EmbeddedModelError) as error:  # OSError: EROFS, ENOSPC, permissions
        errors.print(f"{what} failed: {type(error).__name__}: {error}" if isinstance(error, OSError) else f"{what} failed: {error}",
                     style="red", markup=False)
        raise typer.Exit(1) from None
    console.print(f"[green]{what} done[/green] in {time.perf_counter() - started:.0f} s")
    return result


def _show(result: Any) -> None:
    data = result.model_dump(mode="json") if hasattr(result, "model_dump") else result
    console.print_json(json.dumps(data, default=str))


# --- the pipeline --------------------------------------------------------------------------------


@app.command()
def demo(
    root: Optional[str] = typer.Option(None, "--root", "-r", help="storage root (default: ./aurad-data)"),
    profile: str = ProfileOption,
    set_: Optional[list[str]] = SetOption,
    retrain: bool = typer.Option(False, "--retrain", help="train the experts and generators from scratch instead of "
                                 "using the models the repository ships (hours on 2 CPU cores)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the whole pipeline on the embedded default: phantom -> experts -> anatomy bank -> generators ->
    build -> evaluation. Uses the shipped models where they were trained with the profile's settings, and
    reuses what an earlier run already made."""
    _logging(verbose)
    config = _config(profile, set_, root)
    from flows.pipeline import pipeline_flow

    result = _run("demo", lambda: pipeline_flow(config, retrain=retrain))
    console.print(f"dataset:    [bold]{result.dataset_path}[/bold]")
    console.print(f"report:     [bold]{result.report}[/bold]")
    if result.evaluation_report:
        console.print(f"evaluation: [bold]{result.evaluation_report}[/bold]")
    for line in result.headline:
        console.print(f"  {line}")


@app.command()
def embed(
    root: Optional[str] = typer.Option(None, "--root", "-r", help="storage root the pipeline trained in"),
    profile: str = ProfileOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Ship the models a pipeline run trained with this profile: copy them into aurad_models/embedded/ with a
    model card each and record their settings fingerprint (run `aurad demo --retrain` with the same
    profile and root first)."""
    config = _config(profile, set_, root)
    from aurad_models import embedded
    from flows.pipeline import EXPERT_KINDS, GENERATOR_KINDS, export_trained_step

    for step, kinds in (("experts", EXPERT_KINDS), ("generators", GENERATOR_KINDS)):
        try:
            entry = export_trained_step(config, step, kinds, profile)
        except FileNotFoundError as error:
            errors.print(f"embed failed: {error}", style="red", markup=False)
            raise typer.Exit(1) from None
        console.print(f"{step}: shipped {', '.join(m['id'] for m in entry['models'].values())}")
    console.print(f"{embedded.shipped_size() / 1e6:.1f} MB of weights in {embedded.EMBEDDED_DIR}")


@app.command()
def source(profile: str = ProfileOption, set_: Optional[list[str]] = SetOption, root: Optional[str] = RootOption,
           verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Generate and publish the phantom source dataset."""
    _logging(verbose)
    config = _config(profile, set_, root)
    from flows.source import phantom_source_flow

    version = _run("source", lambda: phantom_source_flow(config.source))
    console.print(f"{config.source.dataset}/{version} under {config.storage.root}")


@app.command()
def experts(profile: str = ProfileOption, set_: Optional[list[str]] = SetOption, root: Optional[str] = RootOption,
            verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Train the project's expert classifier and anatomy segmenter on the source dataset."""
    _logging(verbose)
    config = _config(profile, set_, root)
    from flows.experts import train_experts_flow

    _show(_run("experts", lambda: train_experts_flow(config.experts)))


@app.command("anatomy-bank")
def anatomy_bank(profile: str = ProfileOption, set_: Optional[list[str]] = SetOption, root: Optional[str] = RootOption,
                 verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Segment unlabelled CXRs into the anatomy bank that builds draw from."""
    _logging(verbose)
    config = _config(profile, set_, root)
    from flows.anatomy import anatomy_bank_flow

    _show(_run("anatomy bank", lambda: anatomy_bank_flow(config.anatomy_bank)))


@app.command()
def train(profile: str = ProfileOption, set_: Optional[list[str]] = SetOption, root: Optional[str] = RootOption,
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Train the mask and image generators on the source dataset."""
    _logging(verbose)
    config = _config(profile, set_, root)
    from flows.train import train_flow

    _show(_run("train", lambda: train_flow(config.train)))


@app.command()
def build(profile: str = ProfileOption, set_: Optional[list[str]] = SetOption, root: Optional[str] = RootOption,
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Build and publish a synthetic dataset version (resumes a build that died)."""
    _logging(verbose)
    config = _config(profile, set_, root)
    from flows.build import build_flow

    result = _run("build", lambda: build_flow(config.build))
    _show(result)


@app.command()
def evaluate(profile: str = ProfileOption, set_: Optional[list[str]] = SetOption, root: Optional[str] = RootOption,
             verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Retrain downstream models on real vs real+synthetic data and write the evaluation report."""
    _logging(verbose)
    config = _config(profile, set_, root)
    from flows.evaluate import evaluate_flow

    _show(_run("evaluate", lambda: evaluate_flow(config.evaluate)))


@app.command("import")
def import_(
    adapter: str = typer.Argument(..., help="vindr-cxr, chestx-det, siim-acr, jsrt, nih-chestxray14 or generic"),
    path: Path = typer.Argument(..., help="the dataset's folder"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="name to publish it as"),
    image_size: int = typer.Option(256, "--image-size"),
    shard_size: int = typer.Option(64, "--shard-size", help="samples per shard"),
    split: Optional[str] = typer.Option(None, "--split", help="split for every record (default: the dataset's own)"),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="an adapter option key=value (value as "
                                               "YAML), e.g. -o keep_names=true -o 'class_map={Effusion: effusion}'"),
    root: Optional[str] = RootOption,
    profile: str = ProfileOption,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Import a real dataset into a versioned source dataset (bad records are quarantined, not fatal)."""
    _logging(verbose)
    config = _config(profile, None, root)
    import yaml

    from flows.sources import ImportSourceParameters, import_source_flow

    options = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            errors.print(f"--option {item!r} is not key=value", style="red", markup=False)
            raise typer.Exit(2)
        options[key.strip()] = yaml.safe_load(value)
    params = ImportSourceParameters(adapter=adapter, path=str(path), root=config.storage.root, dataset=dataset,
                                    image_size=image_size, shard_size=shard_size, split=split, options=options)
    _show(_run("import", lambda: import_source_flow(params)))


@app.command("config")
def show_config(profile: str = ProfileOption, set_: Optional[list[str]] = SetOption, root: Optional[str] = RootOption) -> None:
    """Print the resolved configuration (profile + overrides) as YAML."""
    import yaml

    config = _config(profile, set_, root)
    typer.echo(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))  # plain: pipeable YAML


# --- datasets and models -------------------------------------------------------------------------


@datasets_app.command("list")
def datasets_list(root: Optional[str] = RootOption, profile: str = ProfileOption) -> None:
    """Every published dataset and its versions."""
    import storage

    root = root or _config(profile, None, None).storage.root
    try:
        names = storage.list_datasets(root)
    except storage.StorageError as error:
        errors.print(str(error), style="red", markup=False)
        raise typer.Exit(1) from None
    from storage.catalog import released_versions
    from storage.layout import Root

    table = Table("dataset", "versions", "latest (released)", "samples", "accepted")
    damaged = False
    for name in names:
        versions = storage.list_versions(root, name)
        try:
            released = released_versions(Root(root), name)
            shown = ", ".join(v if v in released else f"{v} (candidate)" for v in versions)
            latest = released[-1] if released else None
            summary = storage.open_dataset(root, name, latest or versions[-1]).summary()
        except storage.StorageError as error:  # one damaged version: list the rest, mark this one
            damaged = True
            table.add_row(name, ", ".join(versions), versions[-1], "DAMAGED", str(error))
            continue
        table.add_row(name, shown, latest or "none: candidates only", str(summary["n_samples"]), str(summary["accepted"]))
    console.print(table if names else f"no published datasets under {root}")
    if damaged:
        raise typer.Exit(1)


@datasets_app.command("verify")
def datasets_verify(
    name: str = typer.Argument(..., help="NAME or NAME@VERSION (default version: latest)"),
    root: Optional[str] = RootOption,
    profile: str = ProfileOption,
    sample: Optional[int] = typer.Option(None, "--sample", help="check a seeded sample of this many (default: every sample)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Re-hash every sample's stored arrays against its manifest checksums (masks must hold 0 and 1); exit 1
    naming the damaged samples and files."""
    import storage
    from tqdm import tqdm

    root = root or _config(profile, None, None).storage.root
    dataset, _, version = name.partition("@")
    try:
        ds = storage.open_dataset(root, dataset, version or "latest")
        with tqdm(total=min(sample or len(ds), len(ds)), desc=f"verify {ds.name}/{ds.version}", unit="sample") as bar:
            report = ds.verify(sample=sample, seed=seed, progress=bar.update)
    except storage.StorageError as error:
        errors.print(str(error), style="red", markup=False)
        raise typer.Exit(1) from None
    if report.ok:
        console.print(f"[green]{ds.name}/{ds.version}: {report.checked} samples verified[/green]")
        return
    for line in report.problems:
        errors.print(line, style="red", markup=False)
    errors.print(f"{ds.name}/{ds.version}: {len(report.problems)} problems in {report.checked} samples checked", style="red")
    raise typer.Exit(1)


@datasets_app.command("promote")
def datasets_promote(
    name: str = typer.Argument(..., help="NAME@VERSION: the candidate to release"),
    root: Optional[str] = RootOption,
    profile: str = ProfileOption,
) -> None:
    """Release a candidate version: `latest` (and the dataset's LATEST pointer file) then mean it, if it is
    the newest released version."""
    import storage

    root = root or _config(profile, None, None).storage.root
    dataset, _, version = name.partition("@")
    if not version:
        errors.print(f"name the version to promote: {dataset}@VERSION", style="red", markup=False)
        raise typer.Exit(2)
    try:
        promoted = storage.promote(root, dataset, version)
        latest = storage.open_dataset(root, dataset).version
    except storage.StorageError as error:
        errors.print(str(error), style="red", markup=False)
        raise typer.Exit(1) from None
    console.print(f"{dataset}/{promoted} released; latest is {dataset}/{latest}")


@datasets_app.command("show")
def datasets_show(
    name: str = typer.Argument(..., help="NAME or NAME@VERSION (default version: latest)"),
    root: Optional[str] = RootOption,
    profile: str = ProfileOption,
) -> None:
    """One version's summary: counts per finding, acceptance, lineage, and where its report is."""
    import storage

    root = root or _config(profile, None, None).storage.root
    dataset, _, version = name.partition("@")
    try:
        ds = storage.open_dataset(root, dataset, version or "latest")
    except storage.StorageError as error:
        errors.print(str(error), style="red", markup=False)
        raise typer.Exit(1) from None
    summary = ds.summary()
    console.print(f"[bold]{ds.name}/{ds.version}[/bold]  {ds.path}")
    table = Table("", "value")
    for key in ("status", "n_samples", "accepted", "acceptance_rate", "image_size", "splits", "mask_sources"):
        if key in summary:
            table.add_row(key, f"{summary[key]:.1%}" if key == "acceptance_rate" else str(summary[key]))
    console.print(table)
    if summary.get("reject_reasons"):
        rejected = Table("rejected for (kind of problem)", "samples")
        for kind, count in summary["reject_reasons"].items():
            rejected.add_row(kind, str(count))
        console.print(rejected)
    from aurad_models.vocabulary import PATHOLOGIES

    findings = Table("finding", "accepted samples")
    held = summary.get("findings_accepted", {})
    for label in PATHOLOGIES:  # every class, a missing one flagged
        count = held.get(label, 0)
        findings.add_row(label, str(count) if count else "[red]0[/red]")
    console.print(findings)
    lineage = ds.lineage
    keep = {k: lineage[k] for k in ("kind", "build_id", "created", "config_hash", "models", "inputs", "code_version") if k in lineage}
    console.print_json(json.dumps(keep, default=str))
    for report in ("quality/report.html", "quality/data_docs/index.html"):
        path = Path(str(ds.path)) / report
        if path.exists():
            console.print(f"report: {path}")
    from storage.evaluations import list_evaluations

    for run in list_evaluations(ds.root, ds.name, ds.version):
        console.print(f"evaluation {run['run']} ({run['created']}): {run['folder']}/{run.get('report') or ''}")
        for line in run.get("headline", [])[:2]:
            console.print(f"  {line}")


@models_app.command("list")
def models_list(kind: Optional[str] = typer.Argument(None), root: Optional[str] = RootOption, profile: str = ProfileOption) -> None:
    """Registered models (optionally of one kind), oldest first."""
    from aurad_models.registry import CARD_NAME, list_models

    root = root or _config(profile, None, None).storage.root
    records = list_models(root)
    known = sorted({r.kind for r in records})
    if kind is not None and kind not in known:
        errors.print(f"no registered models of kind {kind!r} under {root}; kinds here: {', '.join(known) or 'none'}",
                     style="red", markup=False)
        raise typer.Exit(1)
    table = Table("kind", "id", "created", "metrics", "card")
    for record in (r for r in records if kind is None or r.kind == kind):
        metrics = [f"{k} {v}" if isinstance(v, int) else f"{k} {v:.3g}" for k, v in record.metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        shown = ", ".join(metrics[:4]) + (f", ... ({len(metrics) - 4} more in record.json)" if len(metrics) > 4 else "")
        card = record.path.parent / CARD_NAME
        table.add_row(record.kind, record.id, record.created.isoformat(timespec="seconds"), shown, str(card) if card.is_file() else "")
    console.print(table)
    console.print(f"kinds: {', '.join(known) or 'none'}")


if __name__ == "__main__":
    app()
