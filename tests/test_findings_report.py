"""Reading radiology free text into findings (`findings_from_report`): negation, hedging, comparisons,
attributes, duplicates, and never raising on a string. Every report text here is written for this test."""

from __future__ import annotations

import random

import pytest

from aurad_models.findings import (
    _FINDING_TERMS,
    _REPORT_ONLY_TERMS,
    _SIDE_WORDS,
    _SIZE_WORDS,
    _ZONE_WORDS,
    Finding,
    PromptError,
    findings_from_report,
    parse_prompt,
)
from aurad_models.vocabulary import PATHOLOGIES, PATHOLOGY_RECORDS


def _read(text: str, **kwargs) -> set[tuple[str, str | None, str | None, str | None]]:
    return {(f.label, f.side, f.zone, f.size) for f in findings_from_report(text, **kwargs)}


CASES = [
    # --- normal studies, terse and structured
    ("terse-normal", "No acute cardiopulmonary process.", set()),
    ("structured-normal",
     "FINDINGS: The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax.\n"
     "IMPRESSION: No acute cardiopulmonary abnormality.",
     set()),
    ("clear-lungs", "Clear lungs. Normal cardiac silhouette. Osseous structures intact.", set()),
    # --- negation
    ("negation-list", "No focal consolidation, pleural effusion, or pneumothorax.", set()),
    ("negation-without", "Lungs are well expanded without evidence of consolidation or effusion.", set()),
    ("negation-negative-free", "Negative for pneumothorax. The lungs are free of consolidation.", set()),
    ("negation-post", "Pleural effusions and pneumothorax are not seen. A nodule is not identified.", set()),
    ("negation-ends-at-but", "No effusion, but there is a right upper lobe nodule.",
     {("nodule", "right", "upper", None)}),
    ("negation-ends-at-with", "Cardiomegaly without effusion. No pneumothorax, with small left apical bulla.",
     {("cardiomegaly", None, None, None)}),
    ("negation-new-clause", "There is no pneumothorax and a small right pleural effusion is present.",
     {("effusion", "right", None, "small")}),
    ("negation-then-comparison", "No pleural effusion and stable left lower lobe mass.",
     {("mass", "left", "lower", None)}),
    ("no-new", "No new consolidation, effusion or pneumothorax.", set()),
    ("rule-out-question", "Rule out pneumothorax. Evaluate for effusion.", set()),
    # --- uncertainty (default: weak hedges are absent, committed ones present)
    ("hedge-weak", "Possible small left pleural effusion. Questionable nodule at the right base. "
     "A right apical pneumothorax cannot be excluded.", set()),
    ("hedge-strong", "Probable small left pleural effusion. Findings suspicious for a left upper lobe mass.",
     {("effusion", "left", None, "small"), ("mass", "left", "upper", None)}),
    ("hedge-concerning-likely", "Right lower lobe consolidation concerning for pneumonia; likely bibasilar atelectasis.",
     {("consolidation", "right", "lower", None), ("atelectasis", "bilateral", "lower", None)}),
    ("hedge-may-represent", "Left basilar opacity may represent atelectasis.", set()),
    ("hedge-differential", "Left lower lobe atelectasis or consolidation.", set()),
    ("hedge-question-mark", "? small right effusion", set()),
    # --- comparisons
    ("comparison-present",
     "Unchanged small left pleural effusion. Stable right upper lobe nodule. Persistent left lower lobe "
     "consolidation. Redemonstrated moderate cardiomegaly.",
     {("effusion", "left", None, "small"), ("nodule", "right", "upper", None),
      ("consolidation", "left", "lower", None), ("cardiomegaly", None, None, "moderate")}),
    ("comparison-absent",
     "Interval resolution of the right pleural effusion. The left pneumothorax has resolved. Interval "
     "clearing of the right lower lobe opacity. The previously seen left upper lobe nodule is no longer seen.",
     set()),
    ("comparison-improving-new",
     "Decreased right pleural effusion. Improving left lower lobe consolidation. New small left apical pneumothorax.",
     {("effusion", "right", None, None), ("consolidation", "left", "lower", None),
      ("pneumothorax", "left", None, "small")}),
    ("comparison-no-change-partial",
     "No significant interval change in the right upper lobe mass. Partially resolved left pleural effusion.",
     {("mass", "right", "upper", None), ("effusion", "left", None, None)}),
    ("comparison-mixed-clause", "The right effusion is unchanged and the pneumothorax has resolved.",
     {("effusion", "right", None, None)}),
    # --- attributes
    ("attributes-lobes-sizes",
     "Small right upper lobe nodule. Large left pleural effusion. Tiny right pneumothorax. Extensive "
     "consolidation in both lungs.",
     {("nodule", "right", "upper", "small"), ("effusion", "left", None, "large"),
      ("pneumothorax", "right", None, "small"), ("consolidation", "bilateral", None, "large")}),
    ("attributes-after-the-finding",
     "There is a nodule in the left mid lung. Pleural effusions, right greater than left. Atelectasis at "
     "the left base. Pleural fluid on the right is moderate in size.",
     {("nodule", "left", "middle", None), ("effusion", "bilateral", None, None),
      ("atelectasis", "left", "lower", None), ("effusion", "right", None, "moderate")}),
    ("attributes-invalid-dropped",
     "Massive cardiomegaly, left greater than right. Apical right pneumothorax. Basilar left effusion.",
     {("cardiomegaly", None, None, "large"), ("pneumothorax", "right", None, None),
      ("effusion", "left", None, None)}),
    ("attributes-report-places", "RLL collapse. Retrocardiac opacity. Bibasal atelectatic changes.",
     {("atelectasis", "right", "lower", None), ("consolidation", "left", "lower", None),
      ("atelectasis", "bilateral", "lower", None)}),
    ("attributes-coordinated", "Right middle lobe and lingular opacities. Small right and moderate left effusions.",
     {("consolidation", "bilateral", "middle", None), ("effusion", "bilateral", None, "moderate")}),
    # --- the heart
    ("heart-enlarged", "The heart is mildly enlarged.", {("cardiomegaly", None, None, "small")}),
    ("heart-silhouette", "Enlarged cardiac silhouette. Enlargement of the cardiac silhouette is stable.",
     {("cardiomegaly", None, None, None)}),
    ("heart-normal", "Heart size is normal. The cardiac silhouette is not enlarged. Normal heart size.", set()),
    ("heart-mediastinum", "The cardiomediastinal silhouette is within normal limits.", set()),
    # --- our classes only
    ("other-classes-ignored",
     "Pulmonary edema. Calcified granuloma. Small pericardial effusion. Mass effect on the trachea. "
     "Degenerative changes of the thoracic spine. Streaky left basilar opacities.",
     set()),
    ("opacity-explained", "Left basilar opacity, likely atelectasis. Right upper lobe opacity consistent with pneumonia.",
     {("atelectasis", "left", "lower", None), ("consolidation", "right", "upper", None)}),
    # --- duplicates
    ("duplicates",
     "FINDINGS: Small right pleural effusion. Effusion. Bilateral nodules.\n"
     "IMPRESSION: Right effusion. Nodules in both upper zones.",
     {("effusion", "right", None, "small"), ("nodule", "bilateral", "upper", None)}),
    # --- longer styles
    ("structured-positive",
     "EXAMINATION: Chest PA and lateral.\nINDICATION: Shortness of breath, rule out effusion.\n"
     "COMPARISON: Radiograph from last month.\n"
     "FINDINGS: The heart is enlarged. There are small bilateral pleural effusions with bibasilar "
     "atelectasis. No pneumothorax.\n"
     "IMPRESSION: 1. Cardiomegaly with small bilateral effusions. 2. No pneumothorax.",
     {("cardiomegaly", None, None, None), ("effusion", "bilateral", None, "small"),
      ("atelectasis", "bilateral", "lower", None)}),
    ("narrative-comparison",
     "Compared with the prior study, the small right apical pneumothorax has resolved after removal of the "
     "chest tube. There is persistent moderate left pleural effusion with adjacent compressive atelectasis, "
     "which is slightly decreased. The previously described right upper lobe opacity has cleared. Heart "
     "size remains at the upper limits of normal. No new focal consolidation is seen, although a small "
     "nodule in the left lower zone is again noted.",
     {("effusion", "left", None, "moderate"), ("atelectasis", None, None, None),
      ("nodule", "left", "lower", "small")}),
    ("telegraphic",
     "Cardiomegaly, small bilateral effusions, bibasilar atelectasis; no ptx\nR upper lobe mass 3 cm",
     {("cardiomegaly", None, None, None), ("effusion", "bilateral", None, "small"),
      ("atelectasis", "bilateral", "lower", None), ("mass", None, "upper", None)}),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_report_findings(text, expected):
    assert _read(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Possible small left pleural effusion.", {("effusion", "left", None, "small")}),
        ("Questionable nodule at the right base.", {("nodule", "right", "lower", None)}),
        ("A right apical pneumothorax cannot be excluded.", {("pneumothorax", "right", None, None)}),
        ("Left basilar opacity may represent atelectasis.", {("atelectasis", "left", "lower", None)}),
        ("Left lower lobe atelectasis or consolidation.",
         {("atelectasis", "left", "lower", None), ("consolidation", None, None, None)}),
        ("Borderline cardiomegaly.", {("cardiomegaly", None, None, None)}),
        # negation still wins over the policy
        ("No definite effusion. No pneumothorax.", set()),
    ],
)
def test_weak_hedges_follow_the_uncertain_policy(text, expected):
    assert _read(text) == set()
    assert _read(text, uncertain="present") == expected


def test_committed_hedges_do_not_depend_on_the_policy():
    text = "Probable small left pleural effusion. Likely right lower lobe consolidation."
    expected = {("effusion", "left", None, "small"), ("consolidation", "right", "lower", None)}
    assert _read(text) == _read(text, uncertain="present") == expected


def test_findings_are_findings_in_report_order_one_per_label_and_side():
    found = findings_from_report("Left effusion. Right upper lobe nodule. Right effusion. Left effusion, small.")
    assert all(isinstance(f, Finding) for f in found)
    assert [(f.label, f.side) for f in found] == [("effusion", "left"), ("nodule", "right"), ("effusion", "right")]
    assert found[0].size == "small"  # the more specific mention of (effusion, left)


def test_bad_input_types_and_policy():
    with pytest.raises(TypeError):
        findings_from_report(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        findings_from_report(b"no effusion")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        findings_from_report("no effusion", uncertain="maybe")  # type: ignore[arg-type]


def test_never_raises_on_random_strings():
    rng = random.Random(20240601)
    words = (
        list(_FINDING_TERMS) + list(_REPORT_ONLY_TERMS) + list(_SIDE_WORDS) + list(_ZONE_WORDS)
        + list(_SIZE_WORDS) + list(PATHOLOGIES)
        + "no not without possible likely cannot be excluded resolved unchanged new heart is enlarged normal "
          "findings: impression: indication: comparison: lobe the and or with but".split()
    )
    pieces = [".", ",", ";", ":", "?", "!", "/", "-", "\n", " ", "(", ")", "1.5", "42", "é", "ß", "—", "…",
              "肺", "🫁", "\u200b", "\x00", "\t", "NO", "EFFUSION"]
    for _ in range(200):
        parts = [rng.choice(words) if rng.random() < 0.6 else rng.choice(pieces) for _ in range(rng.randint(0, 60))]
        text = "".join(p + rng.choice(["", " ", " ", "  "]) for p in parts)
        for uncertain in ("absent", "present"):
            found = findings_from_report(text, uncertain=uncertain)
            assert isinstance(found, tuple) and all(isinstance(f, Finding) for f in found)
            keys = [(f.label, f.side) for f in found]
            assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    "text",
    ["", "   ", "12345", "....;;;\n\n", "é" * 1000, "effusion" * 500, "no " * 5000 + "effusion",
     "small right pleural effusion, " * 5000],
)
def test_degenerate_strings(text):
    found = findings_from_report(text)
    assert isinstance(found, tuple)
    assert len(found) <= len(PATHOLOGIES) * 4


def test_report_only_terms_are_not_vocabulary_synonyms_and_prompts_stay_strict():
    vocabulary = {s for p in PATHOLOGY_RECORDS for s in p.synonyms}
    attribute_words = set(_SIDE_WORDS) | set(_ZONE_WORDS) | set(_SIZE_WORDS)
    assert not (set(_REPORT_ONLY_TERMS) & (vocabulary | attribute_words))  # one place for each fact
    for report_only in ("small right opacity", "left lower lobe collapse", "possible effusion"):
        with pytest.raises(PromptError):
            parse_prompt(report_only)
