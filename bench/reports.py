"""How well `findings_from_report` reads report texts it was never tuned on: label-level precision and
recall per finding, and exact-set accuracy, on a fixed set of reports written for this bench (in the styles
radiologists use: terse, structured, hedged, comparative, dictated) after the extractor was finished.
The extractor's own tests (tests/test_findings_report.py) are its tuning set and are not counted here.

    python -m bench.reports
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aurad_models.findings import findings_from_report
from aurad_models.vocabulary import PATHOLOGIES
from bench.record import write_results

# (report, the labels a reader indexing it onto our 7 classes would give; weak hedges count as absent)
REPORTS: tuple[tuple[str, frozenset[str]], ...] = tuple((text, frozenset(labels)) for text, labels in (
    ("PA and lateral views of the chest. The cardiomediastinal silhouette is within normal limits. The lungs are clear "
     "without focal airspace disease. No pleural effusion or pneumothorax.", ()),
    ("Heart is mildly enlarged. Small bilateral pleural effusions with adjacent compressive atelectasis.",
     ("cardiomegaly", "effusion", "atelectasis")),
    ("Interval resolution of the previously seen right lower lobe pneumonia. No new consolidation.", ()),
    ("Large right-sided pneumothorax with partial collapse of the right lung.", ("pneumothorax", "atelectasis")),
    ("Stable 6 mm nodule in the left upper lobe. No acute process.", ("nodule",)),
    ("IMPRESSION: 1. Left lower lobe consolidation, compatible with pneumonia. 2. Trace left effusion.",
     ("consolidation", "effusion")),
    ("Cardiac size is normal. Lungs clear. No effusion.", ()),
    ("There is a 4.5 cm spiculated mass in the right upper lobe, suspicious for malignancy.", ("mass",)),
    ("Mild cardiomegaly, unchanged. Pulmonary vasculature is normal.", ("cardiomegaly",)),
    ("Subsegmental atelectasis at the left lung base. Otherwise clear.", ("atelectasis",)),
    ("No pneumothorax following line removal.", ()),
    ("Possible tiny left apical pneumothorax, recommend follow-up radiograph.", ()),
    ("Moderate right pleural effusion has increased since prior.", ("effusion",)),
    ("Patchy opacities in both lower lobes likely representing consolidation.", ("consolidation",)),
    ("Enlarged cardiac silhouette. Bibasilar linear atelectasis. No pneumothorax.", ("cardiomegaly", "atelectasis")),
    ("Chest: normal study.", ()),
    ("Multiple bilateral pulmonary nodules, the largest measuring 1.2 cm in the right lower lobe.", ("nodule",)),
    ("Left hilar mass with associated left upper lobe collapse.", ("mass", "atelectasis")),
    ("Findings: no focal consolidation. There is blunting of the left costophrenic angle consistent with a small "
     "effusion.", ("effusion",)),
    ("The previously noted right pneumothorax has resolved.", ()),
    ("Cannot exclude a small right pleural effusion. Heart size is upper limits of normal.", ()),
    ("Right middle lobe consolidation. Cardiomegaly. Small right effusion.", ("consolidation", "cardiomegaly", "effusion")),
    ("No radiographic evidence of acute cardiopulmonary disease. Stable calcified granuloma.", ()),
    ("Persistent left basilar opacity, which may reflect atelectasis or pneumonia.", ()),
    ("Tension pneumothorax on the left with mediastinal shift to the right.", ("pneumothorax",)),
    ("Lungs are hyperinflated. A 2 cm nodule projects over the left mid lung zone.", ("nodule",)),
    ("Large left pleural effusion, increased. No pneumothorax. Stable cardiomegaly.", ("effusion", "cardiomegaly")),
    ("Mass-like consolidation in the right upper lobe.", ("consolidation",)),
    ("Plate-like atelectasis in the right mid zone. No effusion or pneumothorax.", ("atelectasis",)),
    ("Impression: Unremarkable chest radiograph.", ()),
))


def score(reports: tuple[tuple[str, frozenset[str]], ...] = REPORTS) -> dict[str, Any]:
    """Per finding: true/false positives and false negatives over the reports; exact-set accuracy."""
    counts = {label: {"tp": 0, "fp": 0, "fn": 0} for label in PATHOLOGIES}
    exact, misses = 0, []
    for text, expected in reports:
        found = frozenset(f.label for f in findings_from_report(text))
        exact += found == expected
        if found != expected:
            misses.append({"report": text, "expected": sorted(expected), "read": sorted(found)})
        for label in PATHOLOGIES:
            counts[label]["tp"] += label in found and label in expected
            counts[label]["fp"] += label in found and label not in expected
            counts[label]["fn"] += label not in found and label in expected
    rows = []
    for label, c in counts.items():
        precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else None
        recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else None
        rows.append({"finding": label, **c, "precision": precision, "recall": recall})
    tp, fp, fn = (sum(c[k] for c in counts.values()) for k in ("tp", "fp", "fn"))
    return {"reports": len(reports), "exact_set_accuracy": exact / len(reports), "micro_precision": tp / (tp + fp) if tp + fp else None,
            "micro_recall": tp / (tp + fn) if tp + fn else None, "per_finding": rows, "misses": misses}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__)
    parser.add_argument("--out", default=None, help="results folder (default: bench/results)")
    args = parser.parse_args(argv)
    results = score()
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    table = [f"{results['reports']} reports written for this bench; exact label set read for "
             f"{results['exact_set_accuracy']:.0%}; micro precision {fmt(results['micro_precision'])}, recall "
             f"{fmt(results['micro_recall'])}.", "",
             "| finding | tp | fp | fn | precision | recall |", "|---|---|---|---|---|---|"]
    table += [f"| {r['finding']} | {r['tp']} | {r['fp']} | {r['fn']} | {fmt(r['precision'])} | {fmt(r['recall'])} |"
              for r in results["per_finding"]]
    if results["misses"]:
        table += ["", "Misread reports:", ""] + [f"- \"{m['report']}\": expected {m['expected']}, read {m['read']}"
                                                  for m in results["misses"]]
    out = write_results("reports", results, table, "Report extractor on reports it was not tuned on",
                        out=Path(args.out) / "reports.json" if args.out else None)
    print("\n".join(table))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
