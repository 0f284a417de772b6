"""adt_fast/data/datasets.py's run records (read_source / check_source)."""
import json

import numpy as np
import pytest

from adt_fast.data import DatasetFileError, check_source, from_arrays, read_source


def test_record_without_kind_is_refused(tmp_path):
    """read_source: a record must name its 'kind' (named, npz, image-folder, arrays)."""
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "cifar10"}))
    with pytest.raises(DatasetFileError, match="kind"):
        read_source(tmp_path)


def test_record_without_a_hash_is_not_refused():
    """check_source refuses data whose hash differs from the one recorded; with none recorded there
    is nothing to differ from (a named dataset's record has no sha256)."""
    rng = np.random.default_rng(0)
    loaded = from_arrays(rng.random((4, 1, 8, 8), dtype=np.float32), np.array([0, 1, 0, 1]),
                         rng.random((2, 1, 8, 8), dtype=np.float32), np.array([0, 1]))
    assert loaded.source.get("sha256")
    check_source(loaded, {"kind": "npz", "path": "/somewhere/d.npz"})
    check_source(loaded, dict(loaded.source))
    with pytest.raises(DatasetFileError, match="changed"):
        check_source(loaded, {**loaded.source, "sha256": "0" * 64})
