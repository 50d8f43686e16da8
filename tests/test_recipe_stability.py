"""The recipe stability matrix (benchmarks/recipe_stability.py) at CI size.

Two generated catalogs (8-band spectral classes, 2-band SAR speckle), the demo recipe, one
seed, 20 steps: the matrix runs end to end on real GeoTIFFs, every figure is in its range,
the k-NN floor of the same ViT at random initialisation is beside the pretrained score, and
the guard calls the demo recipe healthy.
"""

import importlib
import sys
from pathlib import Path

import pytest
import yaml

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_stability_matrix_runs_at_ci_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    stability = importlib.import_module("recipe_stability")
    argv = ["--size", "ci", "--catalogs", "spectral8", "sar2", "--recipes", "demo"]
    argv += ["--steps", "10", "20", "--seeds", "0", "--out", str(tmp_path / "out")]
    rows = stability.main([*argv, "--workdir", str(tmp_path / "work")])
    assert [(r["catalog"], r["step"]) for r in rows] == [
        ("spectral8", 10),
        ("spectral8", 20),
        ("sar2", 10),
        ("sar2", 20),
    ]
    for row in rows:
        assert 0.0 < row["entropy_ratio"] <= 1.0 + 1e-6
        assert 0.0 < row["feature_std"] < 1.0
        assert 0.0 <= row["knn_random_init"] <= 1.0 and 0.0 <= row["knn_pretrained"] <= 1.0
        assert row["final_guard"] == "healthy", row
    # one random-init floor per run, scored once
    assert len({(r["catalog"], r["knn_random_init"]) for r in rows}) == 2
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.count("\n| spectral8 | demo |") == 2 and "k-NN random init" in table
    assert sys.modules["stability_catalogs"].CATALOGS[0] == "spectral8"


def test_matrix_tries_task_and_multicrop_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    stability = importlib.import_module("recipe_stability")
    argv = ["--size", "ci", "--catalogs", "spectral8", "--recipes", "demo", "--steps", "10"]
    argv += ["--seeds", "0", "--set", "koleo_loss_weight=0.1"]
    argv += ["--multicrop", "brightness=0.0", "contrast=0.0", "--workdir", str(tmp_path)]
    (row,) = stability.main(argv)
    assert row["overrides"] == {
        "koleo_loss_weight": 0.1,
        "multicrop.brightness": 0.0,
        "multicrop.contrast": 0.0,
    }
    assert stability.table([row]).count("multicrop.brightness=0.0") == 1


def test_full_size_configs_train_with_the_recipe_the_matrix_measured() -> None:
    # the matrix's `configs` recipe reads configs/sentinel2.yaml; every other full-size config
    # must train from scratch with the same settings, or its stability is unmeasured
    configs = sorted((BENCHMARKS.parent / "configs").glob("*.yaml"))
    full_size = []
    for path in configs:
        config = yaml.safe_load(path.read_text())
        if config["trainer"]["max_steps"] < 10_000 or config["model"]["init_args"].get("weights"):
            continue
        task = config["model"]["init_args"]
        assert task["model_kwargs"].get("init_values") == 1.0, path.name
        assert task.get("teacher_temp") == 0.04, path.name
        assert task.get("warmup_teacher_temp", 0.04) == 0.04, path.name
        full_size.append(path.name)
    assert "sentinel2.yaml" in full_size and len(full_size) >= 5, full_size
