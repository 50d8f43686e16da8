"""Fixtures of the evaluation tests."""

from pathlib import Path

import numpy as np
import pytest

from tests.evaluation.scenes import CLASS_MEANS, chip, write_tif


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "folders"
    for name in CLASS_MEANS:
        for i in range(10):
            write_tif(root / name / f"{i}.tif", chip(rng, name).astype("uint16"))
    (root / "labels.txt").write_text("\n".join(f"{i},{n}" for i, n in enumerate(CLASS_MEANS)))
    return root
