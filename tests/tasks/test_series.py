"""Pretraining on time series through real Lightning runs on the seasonal GeoTIFF catalog."""

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from geodino.datamodules import GeoDINODataModule
from geodino.datasets import PairedDataset, TimeSeries
from geodino.demo.series import (
    SeriesCatalog,
    SeriesSentinel1,
    SeriesSentinel2,
    write_series_catalog,
)
from geodino.errors import ConfigError
from geodino.evaluation import extract_features
from geodino.tasks import DINOv2Task

TINY = {"img_size": 28, "embed_dim": 32, "depth": 1, "num_heads": 2}
MULTICROP = {"global_crops_size": 28, "local_crops_size": 14, "local_crops_number": 2}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> SeriesCatalog:
    return write_series_catalog(tmp_path_factory.mktemp("series"), scene_size=64, dates=7)


def data(dataset: Any, catalog: SeriesCatalog, **kwargs: Any) -> GeoDINODataModule:
    return GeoDINODataModule(
        dataset,
        aoi=catalog.parcels,
        chip_size=kwargs.pop("chip_size", 32),
        batch_size=2,
        statistics_chips=4,
        multicrop=kwargs.pop("multicrop", MULTICROP),
        **kwargs,
    )


def task(modalities: dict[str, int], **kwargs: Any) -> DINOv2Task:
    return DINOv2Task(
        in_chans=sum(modalities.values()),
        modalities=modalities,
        model_kwargs=TINY,
        head_out_dim=64,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        lr_reference_batch=2,
        **{"checkpoint_every_n_steps": 10**6, **kwargs},
    )


def trainer(tmp_path: Path, steps: int, callbacks: list[Callback] | None = None) -> Trainer:
    return Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )


class Batches(Callback):
    """Keeps the shapes of the training batches the task receives."""

    def __init__(self) -> None:
        self.shapes: list[dict[str, tuple[int, ...]]] = []

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.shapes.append({k: tuple(v.shape) for k, v in batch.items()})


def test_an_s2_series_pretrains_with_padding(catalog: SeriesCatalog, tmp_path: Path) -> None:
    # 8 steps per sample for 7 dates: the last step is padding (NaN image, day of year 0)
    series = TimeSeries(SeriesSentinel2(catalog.root), length=8, modality="s2")
    module = data(series, catalog)
    model = task({"s2": 13}, fusion_kwargs={"temporal_pool": "attention"})
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    seen = Batches()
    trainer(tmp_path, 2, [seen]).fit(model, module)
    assert seen.shapes[0]["global_crops"] == (4, 8, 13, 28, 28)
    assert seen.shapes[0]["local_crops"] == (4, 8, 13, 14, 14)
    assert seen.shapes[0]["doy"] == (2, 8)
    after = model.student.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    # the temporal pool and the day-of-year path are trained
    query = "backbone.temporal_query"
    assert not torch.equal(before[query], after[query])
    assert math.isfinite(trainer_loss(model))


def trainer_loss(model: DINOv2Task) -> float:
    return float(model.trainer.callback_metrics["train_loss"])


def test_an_s1_s2_series_of_pairs_pretrains(catalog: SeriesCatalog, tmp_path: Path) -> None:
    pairs = PairedDataset(
        {"s2": SeriesSentinel2(catalog.root), "s1": SeriesSentinel1(catalog.root)},
        max_gap_days=5,
    )
    series = TimeSeries(pairs, length=7)
    assert series.band_groups == {"s2": 13, "s1": 2}
    module = data(series, catalog, multicrop={**MULTICROP, "preset": "s1s2"})
    model = task({"s2": 13, "s1": 2}, modality_dropout=0.25)
    seen = Batches()
    trainer(tmp_path, 2, [seen]).fit(model, module)
    assert seen.shapes[0]["global_crops"] == (4, 7, 15, 28, 28)
    assert math.isfinite(trainer_loss(model))


def test_a_single_date_model_refuses_series(catalog: SeriesCatalog, tmp_path: Path) -> None:
    series = TimeSeries(SeriesSentinel2(catalog.root), length=7, modality="s2")
    model = DINOv2Task(in_chans=13, model_kwargs=TINY, head_out_dim=64, head_hidden_dim=32)
    with pytest.raises(ConfigError, match=r"single-modality ViT; set model\.init_args\.modalities"):
        trainer(tmp_path, 1).fit(model, data(series, catalog))


def test_features_of_series_are_the_teachers_pooled_tokens(catalog: SeriesCatalog) -> None:
    model = task({"s2": 13}, fusion_kwargs={"temporal_pool": "attention"})
    model.configure_models()
    backbone = model.model
    images = torch.randn(3, 7, 13, 28, 28)
    doy = torch.tensor([[10, 60, 110, 160, 210, 260, 0]]).expand(3, -1)
    features = extract_features(backbone, images, doy=doy, batch_size=2)
    with torch.no_grad():
        expected = backbone.eval().forward_features({"s2": images, "s2_doy": doy})[:, 0]
    torch.testing.assert_close(features, expected)
    # the dates matter: the same images on other days embed differently
    shifted = extract_features(backbone, images, doy=torch.where(doy > 0, doy + 90, 0))
    assert not torch.allclose(features, shifted)


def test_labelled_series_of_dated_rasters(catalog: SeriesCatalog) -> None:
    from geodino.evaluation import read_labelled_source

    data = read_labelled_source(
        catalog.parcels,
        [catalog.s2],
        28,
        split_column="split",
        date_regex=r"^S2_(?P<date>\d{8})",
    )
    assert data.images.shape == (4, 7, 13, 28, 28)  # the 4 parcels, every date
    assert data.doy is not None and data.doy.shape == (4, 7)
    assert data.doy[0].tolist() == sorted(data.doy[0].tolist()) and (data.doy > 0).all()
    single = read_labelled_source(catalog.parcels, [catalog.s2], 28, split_column="split")
    assert single.images.shape == (4, 13, 28, 28) and single.doy is None
