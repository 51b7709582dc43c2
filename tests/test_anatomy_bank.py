"""The anatomy bank: QC of segmented anatomy, and the bank as a stored, resumable dataset version."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aurad_models.experts.trained import ANATOMY_SEGMENTER_KIND, AnatomySegmenter, TrainedAnatomyExpert
from aurad_models.pixels import stored_to_unit
from aurad_models.registry import register_model
from aurad_models.vocabulary import PATHOLOGIES, anatomy_index
from bench.world import cycle_findings, phantom_batch, write_phantom_version
from tasks.anatomy import AnatomyBankConfig, AnatomyQCConfig, anatomy_qc, build_anatomy_bank
from tasks.experts import SourceRef

QC = AnatomyQCConfig()
HEART = anatomy_index("Heart")


@pytest.fixture(scope="module")
def phantoms():
    return phantom_batch(range(300, 324), size=64, findings=cycle_findings(24))


def test_qc_accepts_true_phantom_anatomy(phantoms):
    """The default thresholds accept every exact phantom anatomy, with each finding (cardiomegaly,
    effusion, pneumothorax, atelectasis with volume loss...) and at 64 px."""
    for anatomy, findings in zip(phantoms.anatomy, phantoms.findings):
        scores, reason = anatomy_qc(anatomy, QC)
        assert reason is None, (findings, scores)
        assert scores["qc.heart_components"] == 1.0 and 0 < scores["qc.left_lung_area"] < 1


def test_qc_rejects_broken_masks(phantoms):
    anatomy = phantoms.anatomy[0]

    no_lung = anatomy.copy()
    no_lung[anatomy_index("Left Lung")] = 0
    assert anatomy_qc(no_lung, QC)[1] == "anatomy QC: left lung missing"

    split_heart = anatomy.copy()
    columns = np.flatnonzero(split_heart[HEART].any(axis=0))
    middle = columns[len(columns) // 2]
    split_heart[HEART][:, middle - 1 : middle + 2] = 0  # a 3-pixel gap: two halves, 8-connected or not
    scores, reason = anatomy_qc(split_heart, QC)
    assert scores["qc.heart_components"] == 2.0 and reason == "anatomy QC: heart in 2 separate pieces (at most 1)"

    speck = anatomy.copy()
    speck[HEART][0, 0] = 1  # a one-pixel speck is not a second heart
    assert anatomy_qc(speck, QC)[1] is None

    tiny = anatomy.copy()
    tiny[anatomy_index("Right Lung")] = 0
    tiny[anatomy_index("Right Lung"), 30:33, 10:13] = 1
    no_heart = anatomy.copy()
    no_heart[HEART] = 0
    assert "right lung area 0.002 outside [0.030, 0.350]" in anatomy_qc(tiny, QC)[1]
    assert anatomy_qc(no_heart, QC)[1] == "anatomy QC: heart missing"
    with pytest.raises(ValueError):
        anatomy_qc(anatomy[:3], QC)


@pytest.fixture()
def source(tmp_path):
    write_phantom_version(tmp_path, {"train": 4, "val": 12}, shard_size=8)
    return SourceRef(root=str(tmp_path), dataset="phantom")


def _segmenter() -> TrainedAnatomyExpert:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TrainedAnatomyExpert(AnatomySegmenter(channels=(8, 16), strides=(2,), num_res_units=0))


def test_bank_stores_segmented_anatomy_and_qc_verdicts(tmp_path, source):
    from storage import open_dataset

    expert = _segmenter()
    config = AnatomyBankConfig(source_split="val", batch_size=5, shard_size=8)
    version = build_anatomy_bank(source, tmp_path, "anatomy-bank", expert, config, progress=False)
    bank = open_dataset(tmp_path, "anatomy-bank", version)
    src = source.open()
    val = src.select(split="val")
    assert len(bank) == len(val) == 12

    # images: the source's; anatomy: what the segmenter said, never the source's own; pathology: empty
    np.testing.assert_array_equal(bank.images[:], src.images.get_orthogonal_selection((val, slice(None), slice(None))))
    segmented = expert.segment(stored_to_unit(bank.images[:]))
    np.testing.assert_array_equal(bank.anatomy[:], segmented)
    assert not np.array_equal(bank.anatomy[:], src.anatomy.get_orthogonal_selection((val, slice(None), slice(None), slice(None))))
    assert bank.masks[:].sum() == 0

    rows = bank.manifest.to_pylist()
    assert [r["source"] for r in rows] == src.manifest.take(val).column("sample_id").to_pylist()
    for row, anatomy in zip(rows, segmented):
        scores, reason = anatomy_qc(anatomy, config.qc)
        assert row["reject_reason"] == reason and row["accepted"] == (reason is None)
        assert dict(row["scores"]) == pytest.approx(scores)
        metadata = dict(row["metadata"])
        assert row["mask_source"] == "none" and row["findings"] == [] and metadata["anatomy"] == "segmented"
        assert metadata["anatomy_model"] == expert.name and metadata["label.effusion"] == "nan"
    summary = bank.lineage["qc_summary"]
    assert summary["samples"] == 12 and summary["accepted"] == sum(r["accepted"] for r in rows)
    assert bank.lineage["segmenter"] == expert.describe()

    # a rerun of the same build returns the published version instead of building another
    assert build_anatomy_bank(source, tmp_path, "anatomy-bank", expert, config, progress=False) == version


@pytest.mark.slow
def test_bank_keeps_good_masks_from_a_trained_segmenter(tmp_path):
    """A segmenter trained on the phantom's train split gives masks the QC accepts on the held-out split."""
    from storage import open_dataset
    from tasks.experts import SegmenterTrainingConfig, load_expert_data, train_anatomy_segmenter

    write_phantom_version(tmp_path, {"train": 96, "val": 16}, shard_size=32, cycle=False)
    source = SourceRef(root=str(tmp_path), dataset="phantom")
    config = SegmenterTrainingConfig(steps=250, batch_size=16)
    model = train_anatomy_segmenter(load_expert_data(source.open(), "train"), config, device="cpu").model
    version = build_anatomy_bank(source, tmp_path, "bank", TrainedAnatomyExpert(model), AnatomyBankConfig(), progress=False)
    bank = open_dataset(tmp_path, "bank", version)
    assert len(bank.select(accepted_only=True)) >= 14, bank.manifest.column("reject_reason").to_pylist()


def test_anatomy_bank_flow_with_a_registered_segmenter(tmp_path, source, prefect_harness):
    from flows.anatomy import AnatomyBankParameters, anatomy_bank_flow

    model_dir = _segmenter().model.save_pretrained(tmp_path / "segmenter")
    record = register_model(tmp_path, ANATOMY_SEGMENTER_KIND, model_dir, {}, {})
    params = AnatomyBankParameters(
        root=str(tmp_path), bank=AnatomyBankConfig(shard_size=5, segmenter={"source": "project", "device": "cpu"}), progress=False
    )
    result = anatomy_bank_flow(params)
    assert result.samples == 12 and result.version == "v0001"
    assert result.segmenter["model"] == record.id and result.segmenter["source"] == "project"
    assert result.accepted + sum(result.reject_reasons.values()) == 12
    again = anatomy_bank_flow(params)  # the same inputs: the same build, already published
    assert (again.version, again.build_id) == (result.version, result.build_id)
    from storage import open_dataset

    bank = open_dataset(tmp_path, "anatomy-bank")
    assert bank.version == "v0001" and len(bank) == 12 and bank.masks.shape[1] == len(PATHOLOGIES)


def test_bank_qc_and_the_build_gate_count_heart_pieces_the_same_way():
    """A speck beside the heart, or a piece touching it diagonally, is one heart to both: a bank sample the
    QC accepts never trips the build's anatomy gate, whatever the shard size."""
    from aurad_models.anatomy_rules import heart_components
    from tasks.anatomy import AnatomyQCConfig, anatomy_qc
    from tasks.quality import anatomy_stats

    heart = np.zeros((64, 64), bool)
    heart[20:40, 20:40] = True
    heart[40, 40] = True  # touches the corner only: one piece with 8-connectivity
    heart[5, 5] = True  # a speck
    assert heart_components(heart) == 1
    anatomy = np.zeros((1, 14, 64, 64), np.uint8)
    anatomy[0, anatomy_index("Heart")] = heart
    assert anatomy_qc(anatomy[0], AnatomyQCConfig())[0]["qc.heart_components"] == 1
    assert anatomy_stats(anatomy)["heart_components"].tolist() == [1]
    heart[50:60, 50:60] = True  # a second real piece: two to both
    anatomy[0, anatomy_index("Heart")] = heart
    assert anatomy_qc(anatomy[0], AnatomyQCConfig())[0]["qc.heart_components"] == anatomy_stats(anatomy)["heart_components"][0] == 2
