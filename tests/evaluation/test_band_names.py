"""Band names of evaluation sources: GDAL's default descriptions name nothing, and
``--band_names`` names the bands of every source, vector labels over rasters included."""

from pathlib import Path

import pytest

from geodino.cli import main
from geodino.errors import DataError
from geodino.evaluation.sources import read_labelled_source
from tests.evaluation.scenes import write_labelled_scene

GDAL_DEFAULT = ("Band 1", "Band 2", "Band 3", "Band 4")


def knn_args(export: Path, labels: Path, raster: Path, out: Path) -> list[str]:
    return [
        "knn",
        str(export),
        str(labels),
        "--rasters",
        str(raster),
        "--out",
        str(out),
        "--chip_size",
        "28",
        "--baselines",
        "false",
    ]


@pytest.mark.parametrize("descriptions", [GDAL_DEFAULT, (None, None, None, None)])
def test_unnamed_bands_evaluate_on_a_named_backbone(
    tiny_export: Path, tmp_path: Path, descriptions: tuple[str | None, ...]
) -> None:
    raster, gdf = write_labelled_scene(tmp_path, descriptions)
    labels = tmp_path / "points.gpkg"
    gdf.to_file(labels)
    data = read_labelled_source(labels, [raster], 28)
    assert data.band_names is None
    assert main(knn_args(tiny_export, labels, raster, tmp_path / "knn")) == 0


def test_band_names_apply_to_vector_labels(tiny_export: Path, tmp_path: Path, capsys) -> None:
    raster, gdf = write_labelled_scene(tmp_path, GDAL_DEFAULT)
    labels = tmp_path / "points.gpkg"
    gdf.to_file(labels)
    data = read_labelled_source(labels, [raster], 28, band_names=["B02", "B03", "B04", "B08"])
    assert data.band_names == ["B02", "B03", "B04", "B08"]
    # names in another order than the backbone's are refused, not silently ignored
    args = knn_args(tiny_export, labels, raster, tmp_path / "knn")
    assert main([*args, "--band_names", "B04", "B03", "B02", "B08"]) == 2
    assert "['B04', 'B03', 'B02', 'B08']" in capsys.readouterr().err
    with pytest.raises(DataError, match="4 bands"):
        read_labelled_source(labels, [raster], 28, band_names=["B02", "B03"])
