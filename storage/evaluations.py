"""Evaluations of a dataset version, kept beside the version and never inside it (a published version is
never rewritten):

    <root>/<dataset>/_evaluations/<version>/e0001/               one evaluation run: its JSON documents and
                                                                 report, then `evaluation-record.json`, written
                                                                 last, which marks the run complete
    <root>/<dataset>/_evaluations/<version>/e0002/ ...           a later run (other settings, or a rerun)
    <root>/<dataset>/_evaluations/<version>/index.html           every complete run, newest first

A run's folder is claimed atomically (`Root.create_exclusive`), so two evaluations at once get two folders;
a folder without its record is a run that died or is still writing, and readers skip it.
"""

from __future__ import annotations

import html
import json
import re
from datetime import datetime, timezone
from typing import Any

from storage.layout import Root, check_name

EVALUATIONS_DIR = "_evaluations"
RECORD_FILE = "evaluation-record.json"
INDEX_FILE = "index.html"
_CLAIM_FILE = ".claimed"
_RUN = re.compile(r"^e(\d{4,})$")


def evaluations_dir(root: Root, dataset: str, version: str) -> str:
    return root.path(check_name(dataset, "dataset"), EVALUATIONS_DIR, check_name(version, "version"))


def list_evaluations(root: Root, dataset: str, version: str) -> list[dict[str, Any]]:
    """The complete evaluation runs of a version, oldest first: each run's record, with `run` (e0001) and
    `folder` (its URL) added."""
    base = evaluations_dir(root, dataset, version)
    runs = sorted((n for n in root.listdir(base) if _RUN.match(n)), key=lambda n: int(_RUN.match(n).group(1)))
    out = []
    for run in runs:
        record_path = f"{base}/{run}/{RECORD_FILE}"
        if root.exists(record_path):
            out.append({**json.loads(root.read_bytes(record_path)), "run": run, "folder": root.url_of(f"{base}/{run}")})
    return out


def claim_evaluation_folder(root: Root, dataset: str, version: str) -> str:
    """A new, empty run folder (the next eNNNN), claimed so no concurrent evaluation writes into it."""
    base = evaluations_dir(root, dataset, version)
    taken = [int(m.group(1)) for n in root.listdir(base) if (m := _RUN.match(n))]
    number = max(taken, default=0) + 1
    while not root.create_exclusive(f"{base}/e{number:04d}/{_CLAIM_FILE}", b""):
        number += 1
    return f"{base}/e{number:04d}"


def finish_evaluation(root: Root, dataset: str, version: str, folder: str, record: dict[str, Any]) -> None:
    """Mark a run complete (its record, written last) and list it in the version's evaluation index."""
    record = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **record}
    root.write_bytes(f"{folder}/{RECORD_FILE}", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    runs = list_evaluations(root, dataset, version)
    root.write_bytes(f"{evaluations_dir(root, dataset, version)}/{INDEX_FILE}", evaluation_index(dataset, version, runs).encode())


def evaluation_index(dataset: str, version: str, runs: list[dict[str, Any]]) -> str:
    """One page listing a version's evaluations, newest first, with each run's headline."""
    items = []
    for run in reversed(runs):
        report = f"{run['run']}/{run['report']}" if run.get("report") else run["run"]
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in run.get("headline", []))
        items.append(f"<li><a href=\"{html.escape(report)}\">{html.escape(run['run'])}</a> {html.escape(run['created'])}, "
                     f"settings key <code>{html.escape(run.get('key', '?'))}</code><ul>{lines}</ul></li>")
    title = f"Evaluations of {dataset}/{version}"
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Newest first. Each run is a folder of its own; the dataset version "
            f"itself is never rewritten.</p><ul>{''.join(items)}</ul></body></html>\n")
