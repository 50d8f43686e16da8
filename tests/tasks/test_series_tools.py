"""`geodino export`, `embed` and `knn` on a time-series checkpoint, on the seasonal catalog."""

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from lightning.pytorch import Trainer

from geodino.cli import main
from geodino.datamodules import GeoDINODataModule
from geodino.datasets import TimeSeries
from geodino.demo.series import SeriesCatalog, SeriesSentinel2, write_series_catalog
from geodino.errors import DataError
from geodino.evaluation import extract_features, read_labelled_source
from geodino.export import export_backbone, load_backbone
from geodino.inference.series import embed_series
from geodino.models import FusionViT
from geodino.tasks import DINOv2Task

DATES = r"^S2_(?P<date>\d{8})"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> SeriesCatalog:
    return write_series_catalog(tmp_path_factory.mktemp("series"), scene_size=96, dates=7)


@pytest.fixture(scope="module")
def checkpoint(catalog: SeriesCatalog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny series model after one step of `fit`, saved as `geodino fit` saves it."""
    series = TimeSeries(SeriesSentinel2(catalog.root), length=7, modality="s2")
    data = GeoDINODataModule(
        series,
        aoi=catalog.parcels,
        chip_size=32,
        batch_size=2,
        statistics_chips=4,
        multicrop={"global_crops_size": 28, "local_crops_size": 14, "local_crops_number": 2},
    )
    task = DINOv2Task(
        in_chans=13,
        modalities={"s2": 13},
        fusion_kwargs={"temporal_pool": "attention", "temporal_layers": 1},
        model_kwargs={"img_size": 28, "embed_dim": 32, "depth": 1, "num_heads": 2},
        head_out_dim=64,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        lr_reference_batch=2,
        checkpoint_every_n_steps=10**6,
    )
    folder = tmp_path_factory.mktemp("run")
    trainer = Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    trainer.fit(task, data)
    path = folder / "series.ckpt"
    trainer.save_checkpoint(path)
    return path


def labelled(catalog: SeriesCatalog) -> tuple[torch.Tensor, torch.Tensor]:
    data = read_labelled_source(
        catalog.parcels, [catalog.s2], 28, split_column="split", date_regex=DATES
    )
    assert data.doy is not None
    return data.images, data.doy


def test_a_series_checkpoint_loads_and_exports(
    catalog: SeriesCatalog, checkpoint: Path, tmp_path: Path
) -> None:
    backbone = load_backbone(checkpoint)
    assert isinstance(backbone.model, FusionViT) and backbone.takes_series
    assert backbone.model.temporal_layers == 1 and backbone.statistics is not None
    images, doy = labelled(catalog)
    tokens = backbone.tokens(images, doy)
    task = DINOv2Task.load_from_checkpoint(checkpoint)
    expected = extract_features(task.model, images, backbone.normalize, doy=doy)
    torch.testing.assert_close(tokens[:, 0], expected)
    # the dates matter to the loaded backbone
    assert not torch.allclose(tokens[:, 0], backbone.tokens(images, doy.roll(1, dims=1))[:, 0])
    # the export folder holds the same backbone
    export_backbone(checkpoint, tmp_path / "export")
    exported = load_backbone(tmp_path / "export")
    assert isinstance(exported.model, FusionViT) and exported.model.temporal_layers == 1
    state, trained = exported.model.state_dict(), backbone.model.state_dict()
    assert state.keys() == trained.keys()
    # every tensor but the position grid, which the export holds at timm's default size
    for key in trained.keys() - {"pos_embed"}:
        torch.testing.assert_close(state[key], trained[key])
    torch.testing.assert_close(exported.tokens(images, doy), tokens, atol=0.1, rtol=0)


def test_embed_a_date_stack_one_row_per_window(
    catalog: SeriesCatalog, checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "series.gpkg"
    args = ["embed", str(checkpoint), str(catalog.s2), "--out", str(out), "--date_regex", DATES]
    assert main(args) == 0
    table = gpd.read_file(out)
    # a 96 px scene in 28 px windows of 14 px patches: 4 x 4 windows (the last moved back)
    assert len(table) == 16 and (table["dates"] == 7).all()
    columns = [c for c in table.columns if c.startswith("emb_")]
    assert len(columns) == 32 and np.isfinite(table[columns].to_numpy()).all()
    # the first window, read by hand on every date, through the backbone
    files = sorted(catalog.s2.glob("S2_*.tif"))
    stack = []
    for path in files:
        with rasterio.open(path) as src:
            stack.append(src.read(window=((0, 28), (0, 28))).astype(np.float32))
    images = torch.from_numpy(np.stack(stack))[None]
    doy = torch.tensor([[d.timetuple().tm_yday for d in catalog.dates]], dtype=torch.float32)
    expected = load_backbone(checkpoint).tokens(images, doy)[0, 0].numpy()
    first = table[(table["row"] == 0) & (table["col"] == 0)][columns].to_numpy()[0]
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-5)


def test_knn_on_labelled_series(catalog: SeriesCatalog, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "knn"
    args = ["knn", str(checkpoint), str(catalog.parcels), "--rasters", str(catalog.s2)]
    args += ["--split_column", "split", "--date_regex", DATES, "--ks", "1", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "knn.json").read_text())
    assert report["results"]["1"]["accuracy"] >= 0.0
    assert {"random_init", "rcf", "band_stats"} <= set(report["baselines"])


def test_a_date_stack_needs_a_series_backbone_and_one_grid(
    catalog: SeriesCatalog, checkpoint: Path, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match="does not match --date_regex"):
        embed_series(checkpoint, [catalog.s2], tmp_path / "a.gpkg", r"^S1_(?P<date>\d{8})")
    moved = tmp_path / "stack"
    moved.mkdir()
    for path in sorted(catalog.s2.glob("S2_*.tif"))[:2]:
        (moved / path.name).write_bytes(path.read_bytes())
    with rasterio.open(next(moved.glob("*.tif")), "r+") as dst:
        dst.transform = dst.transform * dst.transform.translation(1, 0)
    with pytest.raises(DataError, match="not on the grid"):
        embed_series(checkpoint, [moved], tmp_path / "b.gpkg", DATES)


def test_a_window_without_any_valid_date_embeds_as_nan(
    catalog: SeriesCatalog, checkpoint: Path, tmp_path: Path
) -> None:
    stack = tmp_path / "stack"
    stack.mkdir()
    for path in sorted(catalog.s2.glob("S2_*.tif"))[:3]:
        copy = stack / path.name
        copy.write_bytes(path.read_bytes())
        with rasterio.open(copy, "r+") as dst:  # nodata (0) under the first window
            dst.write(np.zeros((13, 28, 28), np.uint16), window=((0, 28), (0, 28)))
    table = gpd.read_file(embed_series(checkpoint, [stack], tmp_path / "a.gpkg", DATES))
    columns = [c for c in table.columns if c.startswith("emb_")]
    first = (table["row"] == 0) & (table["col"] == 0)
    assert table.loc[first, columns].isna().all(axis=None)
    assert np.isfinite(table.loc[~first, columns].to_numpy()).all()
