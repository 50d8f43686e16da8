"""``geodino knn`` and ``geodino probe`` end to end on real files: class folders, JSON
annotations and labelled points over a GeoTIFF, with group-aware splits and bad input."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.errors import NotGeoreferencedWarning

from geodino.cli import main
from geodino.errors import DataError
from geodino.evaluation.protocols import split_features
from geodino.evaluation.sources import read_labelled_source
from tests.evaluation.scenes import chip, write_labelled_scene, write_tif


def test_knn_and_probe_on_class_folders(
    tiny_export: Path, class_folders: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "knn"
    assert main(["knn", str(tiny_export), str(class_folders), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "knn.json").read_text())
    assert report["protocol"] == "knn" and report["temperature"] == 0.07
    assert set(report["results"]) == {"10", "20", "100"}
    assert report["train_samples"] + report["test_samples"] == 30
    # stratified: every class on both sides
    for result in report["results"].values():
        assert all(v["support"] > 0 for v in result["per_class"].values())
        assert sum(map(sum, result["confusion_matrix"])) == report["test_samples"]
        for key in ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro"):
            assert 0 <= result[key] <= 1
    # k=100 is capped at the 21 training samples
    assert report["results"]["100"]["k_used"] == report["train_samples"]
    # the classes differ in their spectra: even random features separate them
    assert report["results"]["10"]["accuracy"] > 0.8
    for k in (10, 20, 100):
        assert (out / f"knn_k{k}_confusion.png").stat().st_size > 1000
        assert (out / f"knn_k{k}_per_class.png").stat().st_size > 1000
    assert "k=10" in printed and "accuracy" in printed

    out = tmp_path / "probe"
    assert (
        main(
            ["probe", str(tiny_export), str(class_folders), "--out", str(out), "--cs", "[0.1, 1.0]"]
        )
        == 0
    )
    report = json.loads((out / "probe.json").read_text())
    assert report["protocol"] == "logistic_regression"
    assert report["sweep"]["best_C"] in (0.1, 1.0) and set(report["sweep"]["cv_accuracy"]) == {
        "0.1",
        "1.0",
    }
    assert report["accuracy"] > 0.8 and len(report["per_class"]) == 3
    assert (out / "probe_confusion.png").is_file() and (out / "probe_per_class.png").is_file()


def test_knn_on_labelled_points_keeps_groups_apart(tiny_export: Path, tmp_path: Path) -> None:
    raster, gdf = write_labelled_scene(tmp_path)
    labels = tmp_path / "points.gpkg"
    gdf.to_file(labels)
    out = tmp_path / "knn"
    assert (
        main(
            [
                "knn",
                str(tiny_export),
                str(labels),
                "--rasters",
                f"[{raster}]",
                "--out",
                str(out),
                "--chip_size",
                "28",
                "--test_fraction",
                "0.5",
            ]
        )
        == 0
    )
    report = json.loads((out / "knn.json").read_text())
    assert report["grouped"] and report["train_samples"] + report["test_samples"] == 24
    assert report["classes"] == ["crop", "urban", "water"]

    data = read_labelled_source(labels, [raster], 28)
    assert data.images.shape == (24, 4, 28, 28) and data.band_names == ["B02", "B03", "B04", "B08"]
    features = torch.randn(len(data), 8)
    train_x, train_y, _, _ = split_features(data, features, test_fraction=0.5)
    train_rows = {tuple(r) for r in train_x.tolist()}
    train_groups = {
        g for g, f in zip(data.groups, features.tolist(), strict=True) if tuple(f) in train_rows
    }
    test_groups = {
        g for g, f in zip(data.groups, features.tolist(), strict=True) if tuple(f) not in train_rows
    }
    assert train_groups and test_groups and not train_groups & test_groups
    # each class keeps one field on each side
    assert len(set(train_y.tolist())) == 3


def test_bad_labels_are_refused(
    tiny_export: Path, tmp_path: Path, class_folders: Path, capsys
) -> None:
    # one class only
    rng = np.random.default_rng(2)
    single = tmp_path / "single"
    for i in range(6):
        write_tif(single / "water" / f"{i}.tif", chip(rng, "water").astype("uint16"))
    (single / "labels.txt").write_text("0,water\n")
    assert main(["knn", str(tiny_export), str(single), "--out", str(tmp_path / "o")]) == 2
    assert "single class ('water'" in capsys.readouterr().err

    # a class that only the test split has (the split is fixed by a column)
    raster, gdf = write_labelled_scene(tmp_path)
    gdf["split"] = [
        "test" if label == "urban" or field.endswith("1") else "train"
        for label, field in zip(gdf["label"], gdf["group_id"], strict=True)
    ]
    labels = tmp_path / "split.geojson"
    gdf.to_file(labels)
    assert (
        main(
            [
                "probe",
                str(tiny_export),
                str(labels),
                "--rasters",
                f"[{raster}]",
                "--split_column",
                "split",
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 2
    )
    assert "classes ['urban'] occur in the test split but never in training" in (
        capsys.readouterr().err
    )

    with pytest.raises(DataError, match="has no column 'landcover'"):
        read_labelled_source(labels, [raster], 28, label_column="landcover")
    # RGB-like 3-band images for a 4-band backbone
    three = tmp_path / "three"
    for name in ("a", "b"):
        for i in range(3):
            write_tif(three / name / f"{i}.tif", chip(rng, "water")[:3].astype("uint16"))
    (three / "labels.txt").write_text("0,a\n1,b\n")
    assert main(["knn", str(tiny_export), str(three), "--out", str(tmp_path / "t")]) == 2
    assert "has 3 bands but the backbone" in capsys.readouterr().err


def test_evaluation_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    monkeypatch.chdir(tmp_path)
    page = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
    assert blocks
    namespace: dict = {"__name__": "docs"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for number, block in enumerate(blocks, 1):
            exec(compile(block, f"docs/evaluation.md snippet {number}", "exec"), namespace)
    assert namespace["knn"]["results"]["20"]["accuracy"] > 0.8
