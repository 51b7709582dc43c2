"""The procedural CXR phantom: determinism, shapes, anatomy, placement rules, findings, image statistics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter

from aurad_models.anatomy_rules import allowed_region, located_side, located_zone, lung_mask
from aurad_models.findings import Finding, parse_prompt, render_prompt
from aurad_models.phantom import PhantomConfig, generate_phantoms, sample_findings, write_contact_sheet
from aurad_models.vocabulary import (
    ANATOMY_STRUCTURES,
    LATERAL_FINDINGS,
    PATHOLOGIES,
    SIDES,
    SIZES,
    ZONED_FINDINGS,
    ZONES,
    anatomy_index,
    pathology_index,
)

SMALL = PhantomConfig(size=64)


def ctr(anatomy: np.ndarray) -> float:
    """Cardiothoracic ratio from masks: heart width over the lungs' outer width."""
    heart = np.flatnonzero(anatomy[anatomy_index("Heart")].any(axis=0))
    lungs = np.flatnonzero(lung_mask(anatomy).any(axis=0))
    return (heart[-1] - heart[0] + 1) / (lungs[-1] - lungs[0] + 1)


def channel(batch, i: int, label: str) -> np.ndarray:
    return batch.pathology[i, pathology_index(label)].astype(bool)


# --- configuration -------------------------------------------------------------------------------


def test_config_defaults_validate_and_round_trip_through_plain_data():
    config = PhantomConfig()
    assert config.size == 128
    assert set(config.prevalence) == set(PATHOLOGIES)
    again = PhantomConfig.model_validate(config.model_dump(mode="json"))
    assert again == config
    custom = PhantomConfig.model_validate({"size": 96, "prevalence": {"nodule": 0.5}, "patient": {"zoom": [0.95, 1.0]}})
    assert custom.patient.zoom == (0.95, 1.0)


@pytest.mark.parametrize("size", [32, 63, 1025, 4096])
def test_invalid_size_raises_a_clear_error(size):
    with pytest.raises(ValidationError, match="between 64 and 1024"):
        PhantomConfig(size=size)


def test_unknown_finding_in_prevalence_is_rejected():
    with pytest.raises(ValidationError, match="lesion"):
        PhantomConfig(prevalence={"lesion": 0.1})
    with pytest.raises(ValidationError, match=r"\[0, 1\]"):
        PhantomConfig(prevalence={"nodule": 1.5})


# --- shapes and determinism ----------------------------------------------------------------------


def test_batch_shapes_dtypes_and_value_ranges():
    batch = generate_phantoms([0, 1, 2], PhantomConfig(size=80))
    assert batch.images.shape == (3, 80, 80) and batch.images.dtype == np.float32
    assert batch.anatomy.shape == (3, len(ANATOMY_STRUCTURES), 80, 80) and batch.anatomy.dtype == np.uint8
    assert batch.pathology.shape == (3, len(PATHOLOGIES), 80, 80) and batch.pathology.dtype == np.uint8
    assert batch.seeds.dtype == np.int64 and batch.seeds.tolist() == [0, 1, 2]
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    assert batch.images.std() > 0.1  # a picture, not a flat field
    assert set(np.unique(batch.anatomy)) <= {0, 1} and set(np.unique(batch.pathology)) <= {0, 1}
    assert len(batch.findings) == len(batch.reports) == len(batch) == 3


def test_same_seed_same_arrays_and_independent_of_the_batch():
    pair = generate_phantoms([5, 9], SMALL)
    again = generate_phantoms([5, 9], SMALL)
    alone = generate_phantoms([9], SMALL)
    np.testing.assert_array_equal(pair.images, again.images)
    np.testing.assert_array_equal(pair.anatomy, again.anatomy)
    np.testing.assert_array_equal(pair.pathology, again.pathology)
    np.testing.assert_array_equal(pair.images[1], alone.images[0])
    np.testing.assert_array_equal(pair.anatomy[1], alone.anatomy[0])
    np.testing.assert_array_equal(pair.pathology[1], alone.pathology[0])
    assert pair.findings[1] == alone.findings[0]
    assert not np.array_equal(pair.images[0], pair.images[1])


def test_same_seed_is_the_same_patient_at_every_size():
    seed = 3
    small = generate_phantoms([seed], PhantomConfig(size=64))
    large = generate_phantoms([seed], PhantomConfig(size=256))
    assert small.findings == large.findings
    # Block-average the large masks down to 64 px and compare with the small ones.
    down = large.anatomy[0].reshape(len(ANATOMY_STRUCTURES), 64, 4, 64, 4).mean(axis=(2, 4)) >= 0.5
    for name in ("Left Lung", "Right Lung", "Heart", "Spine", "Mediastinum"):
        a, b = down[anatomy_index(name)], small.anatomy[0, anatomy_index(name)].astype(bool)
        assert (a & b).sum() / (a | b).sum() > 0.85, name
    thumb = large.images[0].reshape(64, 4, 64, 4).mean(axis=(1, 3))
    assert np.corrcoef(thumb.ravel(), small.images[0].ravel())[0, 1] > 0.9


def test_the_patient_does_not_depend_on_the_findings_drawn():
    plain = generate_phantoms([11], SMALL, [()])
    with_nodule = generate_phantoms([11], SMALL, [(Finding(label="nodule", side="left", zone="upper"),)])
    np.testing.assert_array_equal(plain.anatomy, with_nodule.anatomy)
    changed = np.abs(plain.images[0] - with_nodule.images[0]) > 1e-6
    assert changed.any() and changed.mean() < 0.2  # only around the nodule (processing spreads it a little)


# --- anatomy -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def normals():
    return generate_phantoms(range(200, 212), PhantomConfig(size=96), [()] * 12)


def test_every_anatomy_structure_is_drawn_for_normal_patients(normals):
    counts = normals.anatomy.reshape(len(normals), len(ANATOMY_STRUCTURES), -1).sum(axis=2)
    for k, name in enumerate(ANATOMY_STRUCTURES):
        assert (counts[:, k] > 0).all(), f"{name} is empty in some normal patient"
    assert not normals.pathology.any()
    assert all(f == () for f in normals.findings)
    assert set(normals.reports) == {render_prompt(())}


def test_anatomy_lies_where_a_pa_film_shows_it(normals):
    width = normals.images.shape[-1]
    cols = np.arange(width)
    for i in range(len(normals)):
        a = normals.anatomy[i].astype(bool)

        def centre(name):
            m = a[anatomy_index(name)]
            return (m.sum(axis=0) * cols).sum() / m.sum(), (m.sum(axis=1) * cols).sum() / m.sum()

        (left_x, _), (right_x, _) = centre("Left Lung"), centre("Right Lung")
        assert left_x > width / 2 > right_x  # the patient's left is the image's right
        heart_x, heart_y = centre("Heart")
        assert heart_x > (left_x + right_x) / 2  # the heart bulges to the patient's left
        _, clavicle_y = centre("Left Clavicle")
        _, trachea_y = centre("Weasand")
        _, diaphragm_y = centre("Facies Diaphragmatica")
        assert clavicle_y < heart_y < diaphragm_y and trachea_y < heart_y
        assert not (a[anatomy_index("Left Lung")] & a[anatomy_index("Right Lung")]).any()
        assert not (lung_mask(a) & a[anatomy_index("Heart")]).any()
        assert ctr(normals.anatomy[i]) < 0.52


def test_image_is_dark_in_the_lungs_and_bright_over_the_heart(normals):
    for i in range(len(normals)):
        image, a = normals.images[i], normals.anatomy[i].astype(bool)
        lungs = image[lung_mask(a)].mean()
        heart = image[a[anatomy_index("Heart")]].mean()
        spine_below = image[a[anatomy_index("Spine")] & ~a[anatomy_index("Mediastinum")]].mean()
        assert lungs + 0.2 < heart, (i, lungs, heart)
        assert lungs < spine_below
        assert image[0, 0] < 0.25 or image[0, -1] < 0.25  # air outside the patient at a top corner


# --- findings: placement rules -------------------------------------------------------------------


def _check_rules(batch, i: int) -> None:
    anatomy = batch.anatomy[i]
    present = {f.label for f in batch.findings[i]}
    for label in PATHOLOGIES:
        mask = channel(batch, i, label)
        if label not in present:
            assert not mask.any(), f"{label} mask drawn but not in findings {batch.findings[i]}"
            continue
        assert mask.any(), f"{label} in findings but its mask is empty"
        for f in (f for f in batch.findings[i] if f.label == label):
            region = allowed_region(label, anatomy, f.side)
            assert not (mask & ~region).any(), f"{label} pixels outside the allowed region"
            if label != "cardiomegaly":
                assert located_side(mask, anatomy) == f.side, (f, located_side(mask, anatomy))
            if label in ZONED_FINDINGS:
                assert located_zone(mask, anatomy) == f.zone, (f, located_zone(mask, anatomy))


def test_sampled_findings_obey_the_anatomy_rules():
    config = PhantomConfig(size=64, prevalence={label: 0.35 for label in PATHOLOGIES})
    batch = generate_phantoms(range(1000, 1060), config)
    assert sum(len(f) for f in batch.findings) > 60
    for i in range(len(batch)):
        _check_rules(batch, i)


ALL_REQUESTS = [
    Finding(label=label, side=side, zone=zone, size=size)
    for label in PATHOLOGIES
    for side, zone, size in itertools.product(
        SIDES if label in LATERAL_FINDINGS else (None,), ZONES if label in ZONED_FINDINGS else (None,), SIZES
    )
]


def test_every_requested_finding_is_drawn_where_asked():
    batch = generate_phantoms(range(300, 300 + len(ALL_REQUESTS)), SMALL, [(f,) for f in ALL_REQUESTS])
    for i, finding in enumerate(ALL_REQUESTS):
        assert batch.findings[i] == (finding,)
        assert batch.reports[i] == render_prompt((finding,))
        _check_rules(batch, i)
        others = np.delete(batch.pathology[i], pathology_index(finding.label), axis=0)
        assert not others.any()


def test_several_findings_coexist_and_unspecified_attributes_are_filled():
    request = (
        Finding(label="effusion"),
        Finding(label="nodule", zone="upper"),
        Finding(label="cardiomegaly"),
        Finding(label="pneumothorax", side="left"),
    )
    batch = generate_phantoms([7, 8, 9], PhantomConfig(size=96), [request] * 3)
    for i in range(3):
        drawn = batch.findings[i]
        assert [f.label for f in drawn] == [f.label for f in request]
        for f in drawn:
            assert f.size in SIZES
            assert (f.side in SIDES) == (f.label in LATERAL_FINDINGS)
            assert (f.zone in ZONES) == (f.label in ZONED_FINDINGS)
        assert drawn[1].zone == "upper" and drawn[3].side == "left"
        _check_rules(batch, i)
        assert parse_prompt(batch.reports[i]) == drawn


def test_reports_round_trip_through_the_parser():
    batch = generate_phantoms(range(40, 70), SMALL)
    for findings, report in zip(batch.findings, batch.reports):
        assert report == render_prompt(findings)
        assert parse_prompt(report) == findings


def test_small_effusion_and_pneumothorax_are_not_empty_at_64_pixels():
    requests = [(Finding(label="effusion", side=side, size="small"),) for side in ("left", "right")] * 6
    requests += [(Finding(label="pneumothorax", side=side, size="small"),) for side in ("left", "right")] * 6
    batch = generate_phantoms(range(500, 500 + len(requests)), SMALL, requests)
    for i, (f,) in enumerate(requests):
        assert channel(batch, i, f.label).sum() >= 3, f


def test_findings_length_must_match_seeds():
    with pytest.raises(ValueError, match="one entry per seed"):
        generate_phantoms([1, 2], SMALL, [()])


# --- findings: what they do to the image ---------------------------------------------------------


def _with_and_without(finding: Finding, seeds: range, size: int = 96):
    config = PhantomConfig(size=size)
    plain = generate_phantoms(seeds, config, [()] * len(seeds))
    sick = generate_phantoms(seeds, config, [(finding,)] * len(seeds))
    return plain, sick


@pytest.mark.parametrize(
    "finding, brighter",
    [
        (Finding(label="effusion", side="right", size="moderate"), True),
        (Finding(label="consolidation", side="left", zone="middle", size="moderate"), True),
        (Finding(label="mass", side="right", zone="upper", size="moderate"), True),
        (Finding(label="nodule", side="left", zone="middle", size="large"), True),
        (Finding(label="atelectasis", side="right", zone="lower", size="large"), True),
        (Finding(label="pneumothorax", side="left", size="moderate"), False),
    ],
)
def test_a_finding_changes_the_image_inside_its_mask(finding, brighter):
    plain, sick = _with_and_without(finding, range(60, 66))
    for i in range(len(plain)):
        mask = channel(sick, i, finding.label)
        delta = sick.images[i][mask].mean() - plain.images[i][mask].mean()
        if brighter:
            assert delta > 0.05, (i, delta)
        else:
            assert delta < -0.02, (i, delta)
        far = ~binary_dilation(mask, iterations=10)  # well away from the finding: barely touched
        assert np.abs(sick.images[i][far] - plain.images[i][far]).mean() < 0.02


def test_pneumothorax_removes_lung_markings():
    """Without quantum noise, what a pneumothorax takes away inside its mask has fine structure (the
    vessels), not just a smooth darkening."""
    finding = Finding(label="pneumothorax", side="right", size="large")
    config = PhantomConfig(size=128, imaging={"noise_scale": 0.0})
    seeds = range(80, 84)
    plain = generate_phantoms(seeds, config, [()] * len(seeds))
    sick = generate_phantoms(seeds, config, [(finding,)] * len(seeds))
    for i in range(len(seeds)):
        mask = binary_erosion(channel(sick, i, "pneumothorax"), iterations=2)
        lost = plain.images[i] - sick.images[i]
        fine = lost - gaussian_filter(lost, 2.0)
        assert mask.sum() > 100
        assert np.abs(fine[mask]).mean() > 0.004


def test_cardiomegaly_widens_the_heart_beyond_ctr_055_and_its_mask_is_the_heart():
    for size in ("small", "moderate", "large"):
        plain, sick = _with_and_without(Finding(label="cardiomegaly", size=size), range(90, 96), size=64)
        for i in range(len(sick)):
            assert ctr(sick.anatomy[i]) > 0.55 > ctr(plain.anatomy[i])
            heart = sick.anatomy[i, anatomy_index("Heart")].astype(bool)
            np.testing.assert_array_equal(channel(sick, i, "cardiomegaly"), heart)


# --- the finding prior ---------------------------------------------------------------------------


def test_sample_findings_follows_the_prior_with_cooccurrence():
    config = PhantomConfig()
    rng = np.random.default_rng(0)
    draws = [sample_findings(rng, config) for _ in range(3000)]
    normal = np.mean([d == () for d in draws])
    assert 0.25 < normal < 0.45
    labels = [{f.label for f in d} for d in draws]
    cardio = [s for s in labels if "cardiomegaly" in s]
    no_cardio = [s for s in labels if "cardiomegaly" not in s]
    assert np.mean(["effusion" in s for s in cardio]) > 1.5 * np.mean(["effusion" in s for s in no_cardio])
    for d in draws[:300]:
        assert [f.label for f in d] == sorted({f.label for f in d}, key=PATHOLOGIES.index)
        for f in d:
            assert f.size is not None
            assert (f.side is not None) == (f.label in LATERAL_FINDINGS)
            assert (f.zone is not None) == (f.label in ZONED_FINDINGS)
    only = PhantomConfig(prevalence={"nodule": 1.0})
    assert all([f.label for f in sample_findings(rng, only)] == ["nodule"] for _ in range(20))


# --- contact sheet -------------------------------------------------------------------------------


def test_write_contact_sheet_writes_a_png(tmp_path):
    path = write_contact_sheet(tmp_path / "sheet.png", n=4, size=64, ncols=4)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        width, height = image.size
    assert width >= 4 * 64 and height >= 2 * 64
