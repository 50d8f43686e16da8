"""The ``geodino`` command: help and exit codes from the installed entry point in a subprocess,
the commands' work through :func:`geodino.cli.main` in this process (a subprocess pays 5-7 s
of imports on CI's two cores)."""

import io
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

from geodino.cli import main
from geodino.config import run_lightning_cli
from geodino.transforms.normalize import BandStatistics

ROOT = Path(__file__).resolve().parents[1]
GEODINO = [sys.executable, "-m", "geodino"]


def run(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GEODINO, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def cli(*args: str) -> subprocess.CompletedProcess:
    """``geodino ARGS`` in this process: its exit status and what it wrote."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["geodino", *args], code, out.getvalue(), err.getvalue())


def test_help_lists_every_command() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in ("fit", "validate", "demo", "demo-data", "stats"):
        assert f"  {command} " in out.stdout
    entry = Path(sys.executable).with_name("geodino")
    assert subprocess.run([str(entry), "--help"], capture_output=True).returncode == 0


def test_tool_help_and_unknown_command() -> None:
    out = run("demo-data", "--help")
    assert out.returncode == 0 and "--seed" in out.stdout and "synthetic demo catalog" in out.stdout
    bad = run("frobnicate")
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr


def test_fit_help_comes_from_lightning() -> None:
    out = run("fit", "--help")
    assert out.returncode == 0 and "--ckpt_path" in out.stdout and "--trainer" in out.stdout


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_parses(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # in this process: a subprocess per config costs the imports (7 s each on CI's 2 cores)
    monkeypatch.setattr(sys, "argv", ["geodino"])
    with pytest.raises(SystemExit) as exited:
        run_lightning_cli(["fit", "--config", str(config), "--print_config"])
    assert exited.value.code in (0, None), capsys.readouterr().err[-2000:]
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("geodino.")
    assert printed["data"]["class_path"].startswith("geodino.")


def test_stats_writes_a_file_the_config_can_use(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(1000, 100, size=(3, 128, 128)).astype("uint16")
    data[:, :10] = 0
    profile = {
        "driver": "GTiff",
        "height": 128,
        "width": 128,
        "count": 3,
        "dtype": "uint16",
        "crs": "EPSG:32631",
        "transform": from_origin(600000, 5000000, 10, 10),
        "nodata": 0,
    }
    (tmp_path / "tiles").mkdir()
    with rasterio.open(tmp_path / "tiles" / "a.tif", "w", **profile) as dst:
        dst.write(data)
    config = {
        "data": {
            "class_path": "geodino.datamodules.GeoDINODataModule",
            "init_args": {
                "dataset": {
                    "class_path": "geodino.datasets.MultiBandGeoTIFF",
                    "init_args": {"paths": str(tmp_path / "tiles")},
                },
                "chip_size": 32,
            },
        }
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = cli("stats", str(cfg), "--out", str(tmp_path / "stats.yaml"), "--chips", "64")
    assert out.returncode == 0, out.stderr[-2000:]
    stats = BandStatistics.load(tmp_path / "stats.yaml")
    valid = data[:, 10:].reshape(3, -1).astype(float)
    np.testing.assert_allclose(stats.mean, valid.mean(1), rtol=0.02)
    np.testing.assert_allclose(stats.std, valid.std(1), rtol=0.1)
    assert all(lo < m < hi for lo, m, hi in zip(stats.p2, stats.mean, stats.p98, strict=True))


def test_bad_input_exits_2_with_a_message(tmp_path: Path) -> None:
    config = {
        "data": {
            "class_path": "geodino.datamodules.GeoDINODataModule",
            "init_args": {
                "dataset": {
                    "class_path": "geodino.datasets.MultiBandGeoTIFF",
                    "init_args": {"paths": str(tmp_path / "nothing")},
                }
            },
        }
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = cli("stats", str(cfg))
    assert out.returncode == 2
    assert "nothing" in out.stderr and "Traceback" not in out.stderr


def test_demo_data_takes_the_folder_as_a_positional_argument(tmp_path: Path) -> None:
    out = cli("demo-data", str(tmp_path / "catalog"), "--scene_size", "128")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "catalog" / "aoi.gpkg").is_file()
    assert len(list((tmp_path / "catalog" / "s2").glob("*.tif"))) == 4


def test_downstream_tools_document_their_inputs() -> None:
    listing = run("--help").stdout
    for command in ("export", "embed", "knn", "probe", "maps", "similar"):
        assert f"  {command} " in listing
    knn = run("knn", "--help")
    assert knn.returncode == 0
    for text in (
        "weights",
        "source",
        "labels.txt",
        "data_list",
        "--rasters",
        "--label_column",
        "--group_column",
        "--split_column",
        "--ks",
        "--temperature",
        "0.07",
    ):
        assert text in knn.stdout, text
    probe = run("probe", "--help")
    assert (
        probe.returncode == 0
        and "--cs" in probe.stdout
        and "logistic regression" in (probe.stdout.lower())
    )
    embed = run("embed", "--help")
    assert embed.returncode == 0 and "--aoi" in embed.stdout and "--pca" in embed.stdout


def test_embed_takes_several_rasters_positionally(tiny_export: Path, tmp_path: Path) -> None:
    import geopandas as gpd

    rasters = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.tif"
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=28,
            height=28,
            count=4,
            dtype="uint16",
            crs="EPSG:32631",
            nodata=0,
            transform=from_origin(600000, 5000000, 10, 10),
        ) as dst:
            dst.write(np.full((4, 28, 28), 1000, dtype="uint16"))
        rasters.append(str(path))
    out = cli(
        "embed",
        str(tiny_export),
        *rasters,
        "--out",
        str(tmp_path / "emb.parquet"),
        "--chip_size",
        "28",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "emb.parquet" in out.stdout and "Traceback" not in out.stderr
    table = gpd.read_parquet(tmp_path / "emb.parquet")
    assert sorted(Path(r).name for r in table["raster"]) == ["a.tif", "b.tif"]


def write_raster(path: Path, descriptions: tuple[str | None, ...] | None = None) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=28,
        height=28,
        count=4,
        dtype="uint16",
        crs="EPSG:32631",
        nodata=0,
        transform=from_origin(600000, 5000000, 10, 10),
    ) as dst:
        dst.write(np.random.default_rng(0).integers(500, 3000, (4, 28, 28), dtype="uint16"))
        if descriptions:
            dst.descriptions = descriptions
    return path


def test_embed_reads_gdal_default_band_descriptions_as_unnamed(
    tiny_export: Path, tmp_path: Path
) -> None:
    raster = write_raster(tmp_path / "a.tif", ("Band 1", "Band 2", "Band 3", "Band 4"))
    out = cli("embed", str(tiny_export), str(raster), "--out", str(tmp_path / "emb.parquet"))
    assert out.returncode == 0, out.stderr[-2000:]
    # real names that differ from the backbone's are still refused
    named = write_raster(tmp_path / "b.tif", ("B04", "B03", "B02", "B08"))
    bad = cli("embed", str(tiny_export), str(named), "--out", str(tmp_path / "bad.parquet"))
    assert bad.returncode == 2 and "['B04', 'B03', 'B02', 'B08']" in bad.stderr


def test_list_options_take_one_or_several_values() -> None:
    from geodino.cli import tool_parser

    parser = tool_parser("knn")
    usage = parser.format_usage()
    assert "--rasters RASTER [RASTER ...]" in usage and "--ks K [K ...]" in usage
    for args, rasters in [
        (["--rasters", "a.tif"], ["a.tif"]),
        (["--rasters", "a.tif", "b.tif"], ["a.tif", "b.tif"]),
        (["--rasters", "[a.tif, b.tif]"], ["a.tif", "b.tif"]),
        (["--rasters=a.tif"], ["a.tif"]),
        (["--rasters+", "a.tif", "--rasters+", "b.tif"], ["a.tif", "b.tif"]),
    ]:
        cfg = parse_tool("knn", ["W", "labels.gpkg", *args, "--ks", "5", "7", "--out", "o"])
        assert [str(p) for p in cfg["rasters"]] == rasters, args
        assert tuple(cfg["ks"]) == (5, 7) and str(cfg["out"]) == "o"
        assert str(cfg["weights"]) == "W" and str(cfg["source"]) == "labels.gpkg"
    # negative numbers are values, not options
    cfg = parse_tool("similar", ["emb.tif", "--bbox", "-10", "5", "-3.5", "7", "--top_k", "3"])
    assert tuple(cfg["bbox"]) == (-10.0, 5.0, -3.5, 7.0) and cfg["top_k"] == 3


def parse_tool(name: str, args: list[str]) -> dict:
    from geodino.cli import parse_tool_args

    return parse_tool_args(name, args)


def test_knn_takes_a_single_raster_path(tiny_export: Path, tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "a.tif", ("B02", "B03", "B04", "B08"))
    out = cli("knn", str(tiny_export), str(tmp_path / "labels.gpkg"), "--rasters", str(raster))
    # the path reaches the command: the (missing) labels file is what it reports
    assert out.returncode == 2, out.stderr[-2000:]
    assert "labels.gpkg does not exist" in out.stderr and "Union" not in out.stderr


def test_stats_takes_data_overrides(tmp_path: Path) -> None:
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    write_raster(tiles / "a.tif")
    config = {
        "data": {
            "class_path": "geodino.datamodules.GeoDINODataModule",
            "init_args": {
                "dataset": {
                    "class_path": "geodino.datasets.MultiBandGeoTIFF",
                    "init_args": {"paths": str(tmp_path / "elsewhere")},
                },
                "chip_size": 28,
            },
        },
        "trainer": {"max_steps": 1},
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = cli(
        "stats",
        str(cfg),
        f"--data.init_args.dataset.init_args.paths={tiles}",
        "--data.init_args.chip_size",
        "16",
        "--out",
        str(tmp_path / "stats.yaml"),
        "--chips",
        "8",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert BandStatistics.load(tmp_path / "stats.yaml").band_names == ["B1", "B2", "B3", "B4"]
