"""The HTML reports: self-contained pages with the tables and embedded PNG figures a person needs."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import numpy as np
import pytest

from aurad_models import metrics
from aurad_models.phantom import PhantomConfig, generate_phantoms
from aurad_models.vocabulary import PATHOLOGIES
from tasks.report import render_evaluation_report, render_version_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Collects what the tests look at: images, tables (id -> rows of cell texts, with the row's class),
    headings and every text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables: dict[str, list[tuple[str | None, list[str]]]] = {}
        self.headings: list[str] = []
        self.external: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._row_class: str | None = None
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self.text = text
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag in ("link", "script") and (attrs.get("href") or attrs.get("src")):
            self.external.append(attrs.get("href") or attrs.get("src"))
        if tag == "table":
            self._table = attrs.get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr":
            self._row, self._row_class = [], attrs.get("class")
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h1", "h2", "h3"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append((self._row_class, self._row))
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._heading is not None:
            self._heading.append(data)

    def png_images(self) -> list[bytes]:
        prefix = "data:image/png;base64,"
        return [base64.b64decode(img["src"][len(prefix):]) for img in self.images if img.get("src", "").startswith(prefix)]


def evaluation_document(task: str = "segmentation", metric: str = "dice") -> dict:
    """An evaluation.json document as `run_downstream` writes it: `retrain.summarise` over made-up results."""
    from tasks import retrain

    per_class = {label: (0.1 * (i + 1) if label != "pneumothorax" else None) for i, label in enumerate(PATHOLOGIES)}
    results = []
    for fraction, train_set, mean, n_real, added in [(0.05, "real", 0.31, 20, 0), (0.05, "real+synthetic", 0.42, 20, 300),
                                                     (0.05, "real+oracle", 0.47, 20, 300), (0.1, "real", 0.38, 40, 0),
                                                     (0.1, "real+synthetic", 0.47, 40, 300), (0.0, "synthetic", 0.35, 0, 300)]:
        for seed, delta in enumerate((-0.02, 0.0, 0.02)):
            score = {"mean": mean + delta + (0.01 * seed if train_set != "real" else 0), "per_class": per_class}
            if metric == "dice":
                score["pooled"] = {"mean": mean + 0.1}
            results.append(retrain.JobResult(train_set, fraction, seed, n_real, added, score, 100, 300, 10.0))
    document = retrain.summarise(task, results, retrain.DownstreamConfig(seeds=3))
    document.update(test={"n": 200}, val={"n": 50}, real_train={"n": 400}, synthetic={"n": 300}, config={"seeds": 3},
                    sources={"real": "phantom/v0001", "synthetic": "synthetic/v0003"}, seconds=95.0,
                    labels_seen={"image_generator": {"model": "image-generator-1", "dataset": "phantom", "n": 400}})
    return document


def test_evaluation_report_has_the_downstream_tables_and_plots():
    page = Page(render_evaluation_report(evaluation_document(), evaluation_document("detection", "map50")))
    segmentation = page.tables["downstream-segmentation"]
    header = segmentation[0][1]
    assert header[:7] == ["train set", "real", "real images", "added images", "Dice", "± std", "seeds"]
    assert header[7:10] == ["pooled", "± std", "best step (median)"] and header[10:] == list(PATHOLOGIES)
    regimes = [cells for cls, cells in segmentation if cls == "regime"]
    assert [(r[0], r[1]) for r in regimes] == [("real", "5%"), ("real+synthetic", "5%"), ("real+oracle", "5%"), ("real", "10%"),
                                              ("real+synthetic", "10%"), ("synthetic", "0%")]
    assert regimes[1][4] == "0.430" and regimes[1][3] == "300" and regimes[1][7] == "0.520"
    assert regimes[0][10 + PATHOLOGIES.index("pneumothorax")] == "–"  # never occurs: a dash, not 0
    detection_header = page.tables["downstream-detection"][0][1]
    assert detection_header[4] == "mAP@0.5" and detection_header[7:8] == ["best step (median)"]  # no pooled column
    gains = [cells for cls, cells in page.tables["gains-segmentation"] if cls == "gain"]
    assert gains[0][:5] == ["5%", "0.310", "0.430", "0.120", "yes"] and gains[0][5] == "0.170"
    assert gains[0][6] == "0.706"  # 0.12 of the oracle's 0.17
    comparisons = [cells for cls, cells in page.tables["comparisons-segmentation"] if cls == "gain"]
    assert [c[:2] for c in comparisons] == [["5%", "real+synthetic"], ["5%", "real+oracle"], ["10%", "real+synthetic"]]
    assert "distillation bound" in page.text and "synthetic reaches 71% of it" in page.text
    # per task: metric-vs-real-data plot and per-class plot, all inline PNGs
    pngs = page.png_images()
    assert len(pngs) == 4 and all(png.startswith(PNG_MAGIC) for png in pngs)
    assert any("vs amount of real data" in h or "Downstream segmentation" in h for h in page.headings)
    assert page.external == []  # self-contained


def test_evaluation_report_without_synthetic_data_says_so():
    document = evaluation_document()
    document["regimes"] = [r for r in document["regimes"] if r["train_set"] == "real"]
    document["gains"], document["comparisons"], document["synthetic"] = [], [], None
    text = render_evaluation_report(document)
    page = Page(text)
    assert len([c for c, _ in page.tables["downstream-segmentation"] if c == "regime"]) == 2
    assert "no synthetic data given" in text and len(page.png_images()) == 2


@pytest.fixture(scope="module")
def phantoms():
    return generate_phantoms(list(range(12)), PhantomConfig(size=64))


def test_version_report_has_every_section(phantoms):
    frequencies = {label: {"target": 0.1 + 0.01 * i, "produced": 0.12} for i, label in enumerate(PATHOLOGIES)}
    acceptance = {
        "overall_rate": 0.7,
        "per_expert": {"classifier": {"accepted": 70, "rejected": 30, "rate": 0.7}, "anatomy": {"accepted": 90, "rejected": 10, "rate": 0.9}},
        "per_finding": {label: {"samples": 10, "accepted": 7, "rate": 0.7} for label in PATHOLOGIES},
    }
    gates = [{"gate": "prompts", "success": True, "failures": []},
             {"gate": "masks", "success": False, "failures": ["ExpectColumnValuesToBeBetween on 'inside': 3 of 40 unexpected"]}]
    rng = np.random.default_rng(0)
    features = metrics.FeatureSet(rng.normal(size=(30, 4)), "project:test")
    quality = metrics.quality_metrics(
        features, metrics.FeatureSet(rng.normal(size=(30, 4)) + 0.5, "project:test"),
        synthetic_pathology=phantoms.pathology, synthetic_anatomy=phantoms.anatomy, findings=phantoms.findings,
        diversity_groups=np.stack([phantoms.images[:4], phantoms.images[4:8]]),
        fid=metrics.inception_fid(phantoms.images, phantoms.images, None),
    )
    text = render_version_report(
        title="synthetic v0001", images=phantoms.images, pathology=phantoms.pathology, anatomy=phantoms.anatomy,
        captions=phantoms.reports, summary={"dataset": "synthetic", "version": "v0001", "n_samples": 100},
        frequencies=frequencies, acceptance=acceptance, gates=gates, metrics=quality, evaluations=[evaluation_document()],
    )
    page = Page(text)
    assert page.headings[0] == "synthetic v0001"
    for heading in ("Samples", "Finding frequencies (accepted samples)", "Acceptance by the expert filter", "Data-quality gates",
                    "Quality metrics"):
        assert heading in page.headings
    # the overall grid, one grid per finding present in the phantoms, the frequency bar chart, 2 downstream plots
    present = [label for c, label in enumerate(PATHOLOGIES) if phantoms.pathology[:, c].any()]
    assert set(present) <= set(page.headings)
    pngs = page.png_images()
    assert len(pngs) == 1 + len(present) + 1 + 2 and all(p.startswith(PNG_MAGIC) for p in pngs)
    assert [cells[0] for _, cells in page.tables["frequency-table"][1:]] == list(PATHOLOGIES)
    assert page.tables["acceptance-per_expert"][1][1] == ["classifier", "70", "30", "0.700"]
    gate_rows = [cells for cls, cells in page.tables["gates-table"] if cls == "gate"]
    assert gate_rows[0][:2] == ["prompts", "passed"] and gate_rows[1][1] == "FAILED" and "inside" in gate_rows[1][2]
    metric_rows = {cells[0]: cells for _, cells in page.tables["metrics-table"][1:]}
    assert metric_rows["fid"][1] == "skipped" and "FD" in metric_rows["frechet"][2]
    assert "3 of 5 scales" in metric_rows["diversity"][2]
    assert page.tables["metrics-mask_anatomy"][0][1][:3] == ["finding", "n_masks", "mean_inside"]
    assert "downstream-segmentation" in page.tables


def test_version_report_leaves_out_sections_without_input(phantoms):
    page = Page(render_version_report(title="bare", images=phantoms.images[:2]))
    assert page.headings == ["bare", "Samples"] and len(page.png_images()) == 1


def test_version_report_from_a_stored_version(tmp_path):
    from storage import open_dataset
    from test_retrain import store

    store(tmp_path, "synthetic", range(10), accepted=[i != 0 for i in range(10)])
    version = open_dataset(tmp_path, "synthetic")
    page = Page(render_version_report(title="synthetic v0001", version=version, n_samples=4))
    summary = {cells[0]: cells[1] for _, cells in page.tables["summary-table"][1:]}
    assert summary["dataset"] == "synthetic" and summary["n_samples"] == "10" and summary["accepted"] == "9"
    assert "Samples" in page.headings and page.png_images()[0].startswith(PNG_MAGIC)


def test_evaluation_report_shows_the_cooccurrence_and_location_tables_the_metrics_hold():
    from aurad_models.findings import Finding
    from tasks.priors import compare_cooccurrence
    from tasks.prompts import prior_from_weights

    prior = prior_from_weights({"cardiomegaly+effusion": 0.3, "cardiomegaly": 0.2, "effusion": 0.2, "": 0.3})
    accepted = [[Finding(label="cardiomegaly"), Finding(label="effusion")]] * 20 + [[Finding(label="effusion")]] * 30 + [[]] * 50
    locations = {"distance": "energy distance", "real": "NIH boxes", "rows": [
        {"dataset": "synthetic (accepted)", "finding": "nodule", "reference": "nih", "n_real": 79, "n_ours": 12, "distance": 0.25,
         "real_x": 0.5, "ours_x": 0.4, "real_y": 0.45, "ours_y": 0.5, "real_area_share": 0.01, "ours_area_share": 0.02}]}
    metrics = {"cooccurrence": {**compare_cooccurrence(prior, accepted), "prior": "nih"}, "locations": locations}
    page = Page(render_evaluation_report(evaluation_document(), metrics=metrics))
    assert "Co-occurrence" in page.headings and "Finding locations against real annotations" in page.headings
    assert [cells[:3] for cls, cells in page.tables["locations-table"][1:]] == [["synthetic (accepted)", "nodule", "nih"]]
    without = Page(render_evaluation_report(evaluation_document(), metrics={}))
    assert "Co-occurrence" not in without.headings and "locations-table" not in without.tables
