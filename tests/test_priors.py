"""Real co-occurrence priors (NIH, CheXpert, PadChest tables shipped with torchxrayvision), the co-occurrence
comparison, and prompts taken from real reports. Every report text here is written for this test."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import math
import re
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from aurad_models.experts import ExpertChoice
from aurad_models.findings import Finding, findings_from_report
from aurad_models.vocabulary import PATHOLOGIES
from tasks.priors import (
    REAL_TABLES,
    compare_cooccurrence,
    cooccurrence_lift,
    cooccurrence_section,
    load_prior,
    prior_lift,
    real_prior,
    xrv_data_dir,
)
from tasks.prompts import (
    PromptSamplerConfig,
    PromptSamplerError,
    estimate_prior,
    prior_from_weights,
    read_reports,
    redraw_unstated,
    report_slots,
    sample_prompts,
)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchxrayvision") is None, reason="needs torchxrayvision's tables")
F = Finding


def _table(name: str) -> Path:
    return xrv_data_dir() / REAL_TABLES[name]


def _lift(findings, a: str, b: str) -> float:
    return next(r["lift"] for r in cooccurrence_lift(findings) if {r["a"], r["b"]} == {a, b})


# --- the real tables -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nih", "chexpert", "padchest"])
def test_each_real_table_parses_into_a_prior_on_our_vocabulary_only(name):
    prior = real_prior(name)
    assert prior.n_samples > 50_000
    assert math.isclose(sum(c.weight for c in prior.combinations), prior.n_samples)
    assert {label for c in prior.combinations for label in c.labels} <= set(PATHOLOGIES)
    assert set(prior.attributes) <= set(PATHOLOGIES)
    frequencies = prior.label_frequencies()
    normal = sum(c.weight for c in prior.combinations if not c.labels) / prior.n_samples
    assert 0.2 < normal < 0.9 and 0.03 < frequencies["effusion"] < 0.5
    if name == "chexpert":  # no nodule or mass column: "Lung Lesion" is either, so it is unmapped
        assert frequencies["nodule"] == frequencies["mass"] == 0.0
    else:
        assert min(frequencies.values()) > 0
    assert real_prior(name) is prior  # parsed once per process


def test_nih_marginals_match_a_direct_count_of_the_csv():
    with gzip.open(_table("nih"), "rt", newline="") as handle:
        rows = [row["Finding Labels"].split("|") for row in csv.DictReader(handle)]
    ours = {"Effusion", "Cardiomegaly", "Nodule", "Mass", "Atelectasis", "Consolidation", "Pneumothorax"}
    prior = real_prior("nih")
    assert prior.n_samples == len(rows)
    assert prior.label_frequencies()["effusion"] == pytest.approx(sum("Effusion" in r for r in rows) / len(rows), abs=1e-12)
    assert prior.label_frequencies()["cardiomegaly"] == pytest.approx(sum("Cardiomegaly" in r for r in rows) / len(rows), abs=1e-12)
    normal = sum(c.weight for c in prior.combinations if not c.labels)
    assert normal == sum(not (set(r) & ours) for r in rows)  # "No Finding" and rows with only other classes


def test_chexpert_counts_frontal_images_and_uncertain_labels_as_not_positive():
    with gzip.open(_table("chexpert"), "rt", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Frontal/Lateral"] == "Frontal"]
    prior = real_prior("chexpert")
    assert prior.n_samples == len(rows)  # frontal only
    sure = sum(r["Pleural Effusion"] == "1.0" for r in rows) / len(rows)
    unsure = sum(r["Pleural Effusion"] == "-1.0" for r in rows) / len(rows)
    assert unsure > 0.01  # the table has uncertain effusions, so the rule below is tested
    assert prior.label_frequencies()["effusion"] == pytest.approx(sure, abs=1e-12)  # U-Zeros, not U-Ones


def test_a_small_chexpert_csv_follows_the_same_rules(tmp_path):
    path = tmp_path / "chexpert_like.csv"
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Lung Lesion,Pleural Effusion,Pneumothorax,Atelectasis,Consolidation"
    path.write_text("\n".join([
        header,
        "a.jpg,F,60,Frontal,PA,,1.0,,1.0,,,",        # cardiomegaly + effusion
        "b.jpg,F,60,Frontal,AP,,1.0,,-1.0,,,",       # uncertain effusion: cardiomegaly only
        "c.jpg,F,60,Lateral,,,1.0,,1.0,1.0,,",       # a lateral view: left out
        "d.jpg,M,70,Frontal,PA,1.0,,,,,,",           # no finding
        "e.jpg,M,70,Frontal,PA,,0.0,1.0,,,,",        # lung lesion: not nodule nor mass
    ]) + "\n")
    prior = load_prior(str(path), lambda: pytest.fail("a file prior never reads the source"))
    assert prior.n_samples == 4
    assert {c.labels: c.weight for c in prior.combinations} == {("effusion", "cardiomegaly"): 1, ("cardiomegaly",): 1, (): 2}


def test_padchest_marginals_match_a_direct_count_and_locations_give_sides():
    import pandas as pd

    table = pd.read_csv(_table("padchest"), usecols=["Projection", "Labels"], dtype=str).dropna()
    table = table[table["Projection"].isin(["PA", "AP", "AP_horizontal"]) & ~table["Labels"].str.contains(r"'\s*exclude\s*'")]
    prior = real_prior("padchest")
    assert prior.n_samples == len(table)
    direct = table["Labels"].str.contains(r"'\s*cardiomegaly\s*'").mean()
    assert prior.label_frequencies()["cardiomegaly"] == pytest.approx(direct, abs=1e-12)
    effusion_sides = {c.side: c.weight for c in prior.attributes["effusion"]}
    assert effusion_sides.get("left", 0) > effusion_sides.get(None, 0)  # most effusions are located
    assert {c.size for c in prior.attributes["effusion"]} == {None}  # PadChest never grades size


def test_a_small_padchest_csv_reads_sides_and_zones_from_its_sentences(tmp_path):
    path = tmp_path / "padchest_like.csv"
    rows = [
        ("PA", "['pleural effusion', 'cardiomegaly']", "[['pleural effusion', 'loc pleural', 'loc left'], ['cardiomegaly', 'loc cardiac']]"),
        ("PA", "['nodule', 'pleural effusion']", "['nodule', 'loc right upper lobe', 'pleural effusion', 'loc left']"),  # flat list
        ("AP", "['hydropneumothorax']", "[['hydropneumothorax', 'loc right']]"),  # two of our classes
        ("L", "['nodule']", "[['nodule', 'loc left']]"),  # lateral: left out
        ("PA", "['exclude']", "[['exclude']]"),  # unusable: left out
        ("PA", "['pseudonodule', 'normal']", "[['pseudonodule'], ['normal']]"),  # a look-alike: normal
    ]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageID", "Projection", "Labels", "LabelsLocalizationsBySentence"])
        writer.writerows([(f"{i}.png", *row) for i, row in enumerate(rows)])
    prior = load_prior(str(path), lambda: ())
    assert {c.labels: c.weight for c in prior.combinations} == {
        ("effusion", "cardiomegaly"): 1, ("nodule", "effusion"): 1, ("effusion", "pneumothorax"): 1, (): 1}
    attributes = {label: {(c.side, c.zone): c.weight for c in choices} for label, choices in prior.attributes.items()}
    assert attributes["effusion"] == {("left", None): 2, ("right", None): 1}
    assert attributes["nodule"] == {("right", "upper"): 1}  # the effusion's "loc left" does not reach the nodule
    assert attributes["pneumothorax"] == {("right", None): 1}


def test_an_unknown_prior_name_and_a_misspelt_path_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="unknown prior 'nhi'.*source, nih, chexpert, padchest"):
        PromptSamplerConfig(prior="nhi")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PromptSamplerError, match=re.escape(f"looked at {tmp_path / 'priors' / 'nih_pror.json'}") + ".*working directory"):
        load_prior("priors/nih_pror.json", lambda: ())
    (tmp_path / "odd.csv").write_text("a,b\n1,2\n")
    with pytest.raises(PromptSamplerError, match="no known layout.*Finding Labels"):
        load_prior("odd.csv", lambda: ())


def test_a_json_prior_file_and_the_source_prior_load(tmp_path):
    prior = prior_from_weights({"effusion+cardiomegaly": 0.2, "": 0.8})
    (tmp_path / "prior.json").write_text(prior.model_dump_json())
    assert load_prior(str(tmp_path / "prior.json"), lambda: ()) == prior
    source = [[{"label": "nodule", "side": "left", "zone": "upper", "size": "small"}], []]
    assert load_prior("source", lambda: source) == estimate_prior(source)


# --- co-occurrence -------------------------------------------------------------------------------


def test_cooccurrence_lift_on_a_hand_counted_table():
    samples = [("effusion", "cardiomegaly")] * 2 + [("effusion",)] * 2 + [()] * 4 + [("nodule", "nodule")]
    lift = {(r["a"], r["b"]): r for r in cooccurrence_lift(samples)}
    row = lift[("effusion", "cardiomegaly")]
    assert row["count_ab"] == pytest.approx(2) and row["lift"] == pytest.approx((2 / 9) / ((4 / 9) * (2 / 9)))
    assert lift[("nodule", "effusion")]["lift"] == 0.0
    assert lift[("mass", "effusion")]["lift"] is None  # mass never occurs
    assert lift[("effusion", "cardiomegaly")]["lift"] == pytest.approx(
        next(r["lift"] for r in prior_lift(estimate_prior([[{"label": l} for l in s] for s in samples]))
             if (r["a"], r["b"]) == ("effusion", "cardiomegaly")))


def test_samples_from_a_prior_keep_its_cooccurrence_and_shuffled_labels_do_not():
    import numpy as np

    prior = real_prior("nih")
    drawn = sample_prompts(6000, prior, PromptSamplerConfig(), seed=4)
    kept = compare_cooccurrence(prior, drawn)
    assert kept["pairs"] >= 15 and kept["mean_abs_log_lift_diff"] < 0.2  # sampling noise (module doc)
    # the same marginals, labels drawn independently: the co-occurrence is gone
    rng = np.random.default_rng(0)
    shares = prior.label_frequencies()
    independent = [[label for label in PATHOLOGIES if rng.random() < shares[label]] for _ in range(6000)]
    lost = compare_cooccurrence(prior, independent)
    assert lost["mean_abs_log_lift_diff"] > 2.5 * kept["mean_abs_log_lift_diff"]
    html = cooccurrence_section({**kept, "prior": "prior nih"})
    assert "cooccurrence-table" in html and "prior nih" in html and "effusion + cardiomegaly" in html


def test_prompts_drawn_with_the_nih_prior_keep_its_cooccurrence_under_frequency_targets():
    config = PromptSamplerConfig(prior="nih", label_targets={"pneumothorax": 0.2, "cardiomegaly": 0.15, "nodule": 0.15})
    prior = load_prior(config.prior, lambda: ())
    prompts = sample_prompts(5000, prior, config, seed=1)
    share = lambda label: sum(any(f.label == label for f in p) for p in prompts) / len(prompts)  # noqa: E731
    assert share("cardiomegaly") == pytest.approx(0.15, abs=0.02)
    nih_lift = _lift([c.labels for c in prior.combinations for _ in range(int(c.weight))], "cardiomegaly", "effusion")
    assert nih_lift > 2.5  # NIH: effusion is three times as common with cardiomegaly
    assert _lift(prompts, "cardiomegaly", "effusion") > 1.8
    comparison = compare_cooccurrence(prior, prompts)
    assert comparison["mean_abs_log_odds_ratio_diff"] < 0.25  # tilting keeps odds ratios


# --- prompts from real reports -------------------------------------------------------------------

REPORTS = [
    "FINDINGS: Moderate cardiomegaly. Small bilateral pleural effusions. No pneumothorax.\n"
    "IMPRESSION: Cardiomegaly with small bilateral effusions.",
    "PA and lateral views of the chest. The lungs are clear. Heart size is normal. No effusion or pneumothorax.",
    "There is a 1.2 cm nodule in the right upper lobe, unchanged. No focal consolidation.",
    "Right lower lobe airspace opacity concerning for pneumonia. Trace right pleural effusion.",
    "Patient DOE^JANE MRN: 12345678. Left basilar atelectasis. Otherwise no acute abnormality.",
    "No acute cardiopulmonary process.",
]


def test_reports_are_read_from_a_csv_column_a_sectioned_csv_or_a_text_file(tmp_path):
    with (tmp_path / "reports.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study", "Report"])
        writer.writerows([(i, text) for i, text in enumerate(REPORTS)] + [(99, "  ")])
    assert read_reports(tmp_path / "reports.csv") == [r.strip() for r in REPORTS]  # blank rows dropped
    with (tmp_path / "sectioned.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "findings", "impression"])
        writer.writerow([1, "Small left pleural effusion.", "Effusion."])
        writer.writerow([2, "", "No acute process."])
    assert read_reports(tmp_path / "sectioned.csv") == ["Small left pleural effusion. Effusion.", "No acute process."]
    (tmp_path / "reports.txt").write_text("Large left pneumothorax.\n\nMild cardiomegaly.\n")
    assert read_reports(tmp_path / "reports.txt") == ["Large left pneumothorax.", "Mild cardiomegaly."]
    (tmp_path / "bad.csv").write_text("id,notes\n1,x\n")
    with pytest.raises(PromptSamplerError, match="no report column: expected one of report, report_text, text"):
        read_reports(tmp_path / "bad.csv")
    with pytest.raises(PromptSamplerError, match=re.escape(f"looked at {tmp_path / 'missing.csv'}")):
        read_reports(tmp_path / "missing.csv")


def test_report_slots_use_every_report_once_before_any_twice_and_are_seeded():
    slots = report_slots(6, 20, seed=3)
    assert [sorted(slots[k:k + 6]) for k in (0, 6, 12)] == [list(range(6))] * 3 and sorted(slots[18:]) != []
    assert slots == report_slots(6, 20, seed=3) and slots != report_slots(6, 20, seed=4)
    assert len(set(report_slots(100, 10, seed=0))) == 10  # fewer slots than reports: a subset, no repeats


def test_prompts_from_reports_take_no_frequency_targets_or_prior():
    with pytest.raises(ValidationError, match="label_targets, prior cannot apply"):
        PromptSamplerConfig(reports="r.csv", label_targets={"nodule": 0.3}, prior="nih")
    assert PromptSamplerConfig(reports="r.csv").reports == "r.csv"


def test_a_build_plans_its_prompts_from_reports_with_their_scrubbed_text(tmp_path):
    from tasks.build import BuildConfig, plan_prompts

    (tmp_path / "reports.txt").write_text("\n".join(r.replace("\n", " ") for r in REPORTS) + "\n")
    config = BuildConfig(root=str(tmp_path), n_samples=9, prompts={"reports": str(tmp_path / "reports.txt")})
    plan = plan_prompts(config, source=None)
    assert len(plan.prompts) == len(plan.reports) == 9
    for prompt, text in zip(plan.prompts, plan.reports):
        assert "12345678" not in text and "DOE^JANE" not in text
        assert prompt == findings_from_report(text)
    assert () in plan.prompts  # a normal report is a normal prompt
    assert plan.targets["cardiomegaly"] == pytest.approx(sum(any(f.label == "cardiomegaly" for f in p) for p in plan.prompts) / 9)
    assert plan == plan_prompts(config, source=None)  # seeded
    sampled = plan_prompts(BuildConfig(root=str(tmp_path), n_samples=50, prompts={"prior": "nih"}), source=None)
    assert sampled.reports == [None] * 50 and "prior nih" in sampled.source and sampled.prior is real_prior("nih")


def test_a_redraw_of_a_report_prompt_keeps_what_the_report_says():
    prompt = (F(label="effusion", side="left"), F(label="cardiomegaly"), F(label="nodule", zone="upper", size="small"))
    redrawn = redraw_unstated(prompt, seed=5)
    assert [f.label for f in redrawn] == ["effusion", "cardiomegaly", "nodule"]
    assert redrawn[0].side == "left" and redrawn[0].zone is None and redrawn[0].size is not None
    assert redrawn[2].zone == "upper" and redrawn[2].size == "small" and redrawn[2].side is not None
    assert redrawn[1].side is None and redrawn[1].size is not None


def test_the_manifest_has_a_nullable_source_report_column_old_parts_read_it_null():
    from storage.schema import COLUMN_MEANINGS, MANIFEST_SCHEMA, check_manifest_table, manifest_rows_to_table

    row = {"sample_id": "s", "split": None, "prompt": "normal", "findings": [], "seed": 1, "attempt_seeds": [1],
           "attempt_reject_reasons": [None], "source": None, "mask_source": "generated", "mask_model_id": None,
           "image_model_id": None, "scores": {}, "accepted": True, "reject_reason": None, "metadata": {}}
    assert manifest_rows_to_table([row]).column("source_report").to_pylist() == [None]
    assert manifest_rows_to_table([{**row, "source_report": "No acute process."}]).column("source_report").to_pylist() == [
        "No acute process."]
    assert MANIFEST_SCHEMA.field("source_report").nullable and "source_report" in COLUMN_MEANINGS
    full = manifest_rows_to_table([row])
    version_1 = pa.schema([f for f in MANIFEST_SCHEMA if f.name != "source_report"])
    stored = pa.Table.from_arrays(
        [*full.drop_columns(["source_report"]).columns, pa.array([0], pa.int32()), pa.array([0], pa.int32()),
         pa.array(["a"]), pa.array(["b"])], schema=version_1)
    read = check_manifest_table(stored, "a version 1 part")
    assert read.schema.names == MANIFEST_SCHEMA.names and read.column("source_report").to_pylist() == [None]


def test_a_default_build_keeps_its_build_id_and_a_prior_or_reports_file_changes_it(tmp_path):
    from types import SimpleNamespace

    from aurad_models.hashing import config_hash
    from tasks.build import BuildConfig, BuildModels, build_id_of

    models = BuildModels("r", "mask-1", "m", "image-1", "i", ExpertChoice(), ExpertChoice(), "cpu")
    source, bank = SimpleNamespace(name="phantom", version="v0001"), SimpleNamespace(name="anatomy-bank", version="v0001")
    config = BuildConfig()
    dump = config.model_dump(mode="json", exclude={"root", "task_runner", "workers", "dask_address", "device",
                                                   "gpu_concurrency_limit", "cpu_threads", "release"})
    for key in ("prior", "reports"):  # the settings added with real priors / reports: not there before
        dump["prompts"].pop(key)
    before = {"config": dump, "mask_model": "mask-1", "image_model": "image-1",
              **{name: getattr(models, name).model_dump(mode="json", exclude={"device", "batch_size"})
                 for name in ("classifier", "segmenter", "fidelity")},
              "source": "phantom/v0001", "bank": "anatomy-bank/v0001"}
    assert build_id_of(config, models, source, bank) == f"build-{config_hash(before)[:16]}"
    (tmp_path / "a.txt").write_text("Small left pleural effusion.\n")
    with_reports = BuildConfig(prompts={"reports": str(tmp_path / "a.txt")})
    first = build_id_of(with_reports, models, source, bank)
    assert first != build_id_of(config, models, source, bank)
    (tmp_path / "a.txt").write_text("Large right pneumothorax.\n")  # same path, other reports: another build
    assert build_id_of(with_reports, models, source, bank) != first
    assert build_id_of(BuildConfig(prompts={"prior": "nih"}), models, source, bank) != build_id_of(config, models, source, bank)
    with pytest.raises(PromptSamplerError, match="reports file not found: looked at"):
        build_id_of(BuildConfig(prompts={"reports": str(tmp_path / "b.txt")}), models, source, bank)
