"""The Prefect wrapper of the source import: parameters validate, the flow publishes a version."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import ValidationError

from storage import open_dataset


def test_parameters_reject_an_unknown_adapter():
    from flows.sources import ImportSourceParameters

    with pytest.raises(ValidationError, match="unknown adapter 'mimic'"):
        ImportSourceParameters(adapter="mimic", path=".", dataset="d")


def test_import_source_flow(tmp_path, prefect_harness):
    from flows.sources import ImportSourceParameters, import_source_flow

    image = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))
    mask = np.zeros((32, 32), np.uint8)
    mask[4:8, 20:30] = 1
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(mask * 255).save(tmp_path / "a_mass.png")
    (tmp_path / "b.png").write_bytes(b"not a png")
    pd.DataFrame([{"image": "a.png", "mask_mass": "a_mass.png"}, {"image": "b.png", "mask_mass": ""}]).to_csv(
        tmp_path / "index.csv", index=False
    )
    params = ImportSourceParameters(
        adapter="generic", path=str(tmp_path), root=str(tmp_path / "store"), dataset="folder", image_size=32
    )
    result = import_source_flow(params)
    assert result.imported == 1 and len(result.quarantined) == 1 and result.counts["mass"] == 1
    ds = open_dataset(tmp_path / "store", "folder")
    assert ds.version == result.version and len(ds) == 2
    np.testing.assert_array_equal(ds.masks[ds.select()[0], 1], mask)
