"""Baselines beside every score: per-band statistics, random convolutional features and the
architecture at random init, scored by ``geodino knn``/``probe`` on the same split(s), on a
real tiny export and real GeoTIFF chips and vector labels."""

import json
from pathlib import Path

import torch

from geodino.cli import main
from geodino.evaluation.baselines import (
    band_statistics_features,
    random_conv_features,
    random_init_twin,
)
from geodino.export import load_backbone
from tests.evaluation.scenes import write_labelled_scene

BASELINE_NAMES = {"random_init", "rcf", "band_stats"}


def test_knn_and_probe_report_the_baselines_beside_the_backbone(
    tiny_export: Path, class_folders: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "knn"
    assert main(["knn", str(tiny_export), str(class_folders), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "knn.json").read_text())
    assert set(report["baselines"]) == BASELINE_NAMES
    for scores in report["baselines"].values():
        assert set(scores) == {"10", "20", "100"}
        assert all(0 <= s["accuracy"] <= 1 for s in scores.values())
    # the classes differ in their mean spectra: the band statistics separate them
    assert report["baselines"]["band_stats"]["10"]["accuracy"] > 0.9
    table = printed[printed.index("accuracy (same split)") :]
    for name in ("backbone", *BASELINE_NAMES):
        assert f"  {name}" in table, printed

    out = tmp_path / "probe"
    assert main(["probe", str(tiny_export), str(class_folders), "--out", str(out)]) == 0
    report = json.loads((out / "probe.json").read_text())
    assert set(report["baselines"]) == BASELINE_NAMES
    assert report["baselines"]["band_stats"]["accuracy"] > 0.9
    assert "band_stats" in capsys.readouterr().out

    out = tmp_path / "bare"
    args = ["knn", str(tiny_export), str(class_folders), "--out", str(out), "--baselines", "false"]
    assert main(args) == 0
    assert json.loads((out / "knn.json").read_text())["baselines"] == {}
    assert "band_stats" not in capsys.readouterr().out


def test_random_init_twin_keeps_bands_and_statistics(tiny_export: Path, tmp_path: Path) -> None:
    backbone = load_backbone(tiny_export)
    state = torch.random.get_rng_state()
    twin = random_init_twin(backbone, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is left alone
    again = random_init_twin(backbone, seed=3)
    other = random_init_twin(backbone, seed=4)
    weights = backbone.model.blocks[0].attn.qkv.weight
    twin_weights = twin.model.blocks[0].attn.qkv.weight
    assert not torch.equal(twin_weights, weights)
    assert torch.equal(twin_weights, again.model.blocks[0].attn.qkv.weight)
    assert not torch.equal(twin_weights, other.model.blocks[0].attn.qkv.weight)
    assert twin.band_names == backbone.band_names and twin.statistics == backbone.statistics
    assert twin.meta["random_init"] and twin.chip_size == backbone.chip_size

    # `geodino export --random_init` writes the twin that knn scores as its random_init floor
    out = tmp_path / "twin"
    assert main(["export", str(tiny_export), str(out), "--random_init", "true", "--seed", "3"]) == 0
    written = load_backbone(out)
    assert written.band_names == backbone.band_names and written.statistics == backbone.statistics
    assert json.loads((out / "backbone.json").read_text())["random_init"] is True
    for name, tensor in twin.model.state_dict().items():
        assert torch.equal(tensor, written.model.state_dict()[name]), name


def test_random_init_baseline_is_the_exported_twin(
    tiny_export: Path, class_folders: Path, tmp_path: Path
) -> None:
    twin = tmp_path / "twin"
    assert (
        main(["export", str(tiny_export), str(twin), "--random_init", "true", "--seed", "5"]) == 0
    )
    args = ["--seed", "5", "--ks", "10"]
    assert (
        main(["knn", str(tiny_export), str(class_folders), "--out", str(tmp_path / "a"), *args])
        == 0
    )
    assert main(["knn", str(twin), str(class_folders), "--out", str(tmp_path / "b"), *args]) == 0
    pretrained = json.loads((tmp_path / "a" / "knn.json").read_text())
    random = json.loads((tmp_path / "b" / "knn.json").read_text())
    assert (
        pretrained["baselines"]["random_init"]["10"]["accuracy"]
        == random["results"]["10"]["accuracy"]
    )


def test_repeated_grouped_splits_report_mean_and_std(
    tiny_export: Path, tmp_path: Path, capsys
) -> None:
    raster, gdf = write_labelled_scene(tmp_path)
    # twelve fields (groups) of two points each
    gdf["group_id"] = [f"field{i // 2}" for i in range(len(gdf))]
    labels = tmp_path / "points.gpkg"
    gdf.to_file(labels)
    out = tmp_path / "probe"
    args = ["probe", str(tiny_export), str(labels), "--rasters", str(raster), "--out", str(out)]
    assert main([*args, "--chip_size", "28", "--repeats", "3", "--cs", "[1.0]"]) == 0
    report = json.loads((out / "probe.json").read_text())
    repeats = report["repeats"]
    assert repeats["count"] == 3 and repeats["different_splits"] == 3
    assert set(repeats["scores"]) == {"backbone", *BASELINE_NAMES}
    for spread in repeats["scores"].values():
        assert 0 <= spread["accuracy_mean"] <= 1 and spread["accuracy_std"] >= 0
    printed = capsys.readouterr().out
    assert "mean +- std over 3 splits" in printed and " +- " in printed


def test_few_groups_say_that_seeds_cannot_change_the_split(
    tiny_export: Path, tmp_path: Path, caplog
) -> None:
    raster, gdf = write_labelled_scene(tmp_path)
    gdf["group_id"] = ["north" if g.endswith("0") else "south" for g in gdf["group_id"]]
    labels = tmp_path / "points.gpkg"
    gdf.to_file(labels)
    args = ["knn", str(tiny_export), str(labels), "--rasters", str(raster), "--chip_size", "28"]
    assert (
        main([*args, "--out", str(tmp_path / "k"), "--repeats", "3", "--baselines", "false"]) == 0
    )
    assert "2 groups allow 2 different split(s)" in caplog.text


def test_baseline_features() -> None:
    images = torch.randn(6, 4, 16, 16) * torch.arange(1, 5).view(1, 4, 1, 1)
    stats = band_statistics_features(images)
    assert stats.shape == (6, 8)
    torch.testing.assert_close(stats[:, :4], images.mean((2, 3)))
    rcf = random_conv_features(images, seed=0, features=32)
    assert rcf.shape == (6, 32)
    assert torch.equal(rcf, random_conv_features(images, seed=0, features=32))
    assert not torch.equal(rcf, random_conv_features(images, seed=1, features=32))
