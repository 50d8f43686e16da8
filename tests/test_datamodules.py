"""Data modules: seeded resumable streams, nodata redraws, statistics and device transforms."""

from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from lightning.pytorch import LightningModule, Trainer
from rasterio.transform import from_origin

from geodino.datamodules import (
    FolderDINODataModule,
    GeoChipDraw,
    GeoDINODataModule,
    SampleStream,
    collate,
)
from geodino.datasets import MultiBandGeoTIFF
from geodino.errors import ConfigError, DataError
from geodino.transforms.normalize import BandStatistics

MULTICROP = {"global_crops_size": 28, "local_crops_size": 14, "local_crops_number": 2}


class TensorItems(torch.utils.data.Dataset):
    """A map-style dataset of fixed random images whose first pixel encodes the item index."""

    band_names = ("b1", "b2", "b3")

    def __init__(self, n: int = 40, size: int = 32) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, size, size, generator=generator) * 100
        self.images[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index].clone()}


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: str,
    origin: tuple[float, float],
    nodata: float | None = 0,
    res: float = 10.0,
) -> Path:
    """Write a (C, H, W) GeoTIFF."""
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype,
        "crs": crs,
        "transform": from_origin(origin[0], origin[1], res, res),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def ids(batch: dict[str, torch.Tensor]) -> list[int]:
    return batch["image"][:, 0, 0, 0].round().long().tolist()


def test_stream_positions_shard_without_overlap() -> None:
    seen = []
    for rank in range(3):
        stream = SampleStream(lambda g: {"g": g}, batch_size=4, start=10, rank=rank, world_size=3)
        for worker in range(2):
            seen.extend(islice(stream.positions(worker, 2), 8))
    assert sorted(seen) == list(range(10, 10 + 3 * 16))


def test_folder_stream_is_seeded_and_independent_of_workers() -> None:
    data = TensorItems()
    batches = {}
    for workers in (0, 2):
        dm = FolderDINODataModule(
            data, batch_size=4, num_workers=workers, seed=3, multicrop=MULTICROP
        )
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        batches[workers] = [ids(next(loader)) for _ in range(15)]
    assert batches[0] == batches[2]
    flat = [i for b in batches[0] for i in b]
    # a pass over 40 items is a permutation; then a new permutation starts
    assert sorted(flat[:40]) == list(range(40))
    assert flat[:40] != flat[40:60] + flat[:20]
    other = FolderDINODataModule(data, batch_size=4, seed=4, multicrop=MULTICROP)
    other.setup("fit")
    assert ids(next(iter(other.train_dataloader()))) != batches[0][0]


def test_stream_resumes_from_state_dict() -> None:
    data = TensorItems()
    dm = FolderDINODataModule(data, batch_size=4, seed=1, multicrop=MULTICROP)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    straight = [ids(next(loader)) for _ in range(6)]
    resumed = FolderDINODataModule(data, batch_size=4, seed=1, multicrop=MULTICROP)
    resumed.load_state_dict({"samples_seen": 3 * 4, "seed": 1})
    resumed.setup("fit")
    loader = iter(resumed.train_dataloader())
    assert [ids(next(loader)) for _ in range(3)] == straight[3:]


def test_statistics_ignore_nodata_and_normalise_on_device(tmp_path: Path) -> None:
    data = TensorItems(n=8)
    data.images[:, :, :4, :4] = float("nan")  # nodata corner
    dm = FolderDINODataModule(data, batch_size=4, seed=0, multicrop=MULTICROP)
    dm.setup("fit")
    stats = dm.statistics
    assert stats is not None
    valid = data.images[:, :, 4:, :]
    flat = torch.cat(
        [
            valid.permute(1, 0, 2, 3).reshape(3, -1),
            data.images[:, :, :4, 4:].permute(1, 0, 2, 3).reshape(3, -1),
        ],
        1,
    )
    np.testing.assert_allclose(stats.mean, flat.double().mean(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats.std, flat.double().std(1, unbiased=False).numpy(), rtol=1e-5)
    path = stats.save(tmp_path / "stats.yaml")
    assert BandStatistics.load(path) == stats
    batch = dm.on_after_batch_transfer({"image": data.images[:4].clone()}, 0)
    assert torch.isfinite(batch["image"]).all()
    assert torch.all(batch["image"][:, :, :4, :4] == 0)  # nodata -> band mean -> 0


def test_geo_chips_with_too_much_nodata_are_redrawn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 1000, size=(4, 200, 200), dtype=np.uint16)
    data[:, :, :120] = 0  # 60 % of the scene is nodata
    write_raster(tmp_path / "scene.tif", data, "EPSG:32631", (500000, 5000000))
    ds = MultiBandGeoTIFF(tmp_path)
    # ~30 % of placements qualify: 100 redraws make a failure (0.7 ** 101) impossible in practice
    dm = GeoDINODataModule(
        ds, chip_size=32, batch_size=8, seed=0, max_nodata=0.1, max_redraws=100, multicrop=MULTICROP
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 4, 32, 32)
    nodata_fraction = (batch["image"] == 0).all(1).float().mean((1, 2))
    assert (nodata_fraction <= 0.1).all()


def test_geo_all_nodata_raises_naming_the_fix(tmp_path: Path) -> None:
    data = np.zeros((2, 64, 64), dtype=np.uint16)
    write_raster(tmp_path / "empty.tif", data, "EPSG:32631", (500000, 5000000))
    dm = GeoDINODataModule(
        MultiBandGeoTIFF(tmp_path),
        chip_size=16,
        batch_size=2,
        max_redraws=3,
        statistics_chips=4,
        multicrop=MULTICROP,
    )
    with pytest.raises(DataError, match="max_nodata"):
        dm.setup("fit")


class CaptureSteps(LightningModule):
    """Records the multi-crop batches a Trainer feeds to training_step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.shapes.append((tuple(batch["global_crops"].shape), tuple(batch["local_crops"].shape)))
        return self.layer(batch["global_crops"].mean().reshape(1, 1)).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_receives_normalised_multicrop_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(100, 3000, size=(3, 128, 128), dtype=np.uint16)
    write_raster(tmp_path / "a.tif", data, "EPSG:32632", (400000, 5100000))
    dm = GeoDINODataModule(
        MultiBandGeoTIFF(tmp_path),
        chip_size=48,
        batch_size=4,
        multicrop=MULTICROP,
        statistics_chips=8,
    )
    model = CaptureSteps()
    trainer = Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    assert model.shapes == [((8, 3, 28, 28), (8, 3, 14, 14))] * 3
    assert dm.state_dict()["samples_seen"] == 12


def test_main_process_collate_equals_pytorch_collate() -> None:
    from torch.utils.data import default_collate

    g = torch.Generator().manual_seed(0)
    samples = [
        {
            "image": torch.rand(3, 8, 8, generator=g) * 1000,
            "bounds": torch.rand(9, generator=g, dtype=torch.float64),
        }
        for _ in range(4)
    ]
    got, expected = collate(samples), default_collate(samples)
    assert got.keys() == expected.keys()
    for key in got:
        assert got[key].dtype == expected[key].dtype
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    labelled = [{"image": s["image"], "label": i} for i, s in enumerate(samples)]
    assert collate(labelled)["label"].tolist() == [0, 1, 2, 3]


# --- raw chips: files' dtype to the device, the same pixels as float32 reads --------------


class FloatReads:
    """A dataset read only through ``__getitem__`` (float32), as every chip was before raw reads."""

    def __init__(self, dataset: MultiBandGeoTIFF) -> None:
        self.dataset = dataset
        self.index = dataset.index
        self.crs = dataset.crs
        self.band_names = dataset.band_names

    def __getitem__(self, query: Any) -> dict[str, Any]:
        return self.dataset[query]


class CountingSampler:
    """Records every (index, attempt) a draw asks its sampler for."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.calls: list[tuple[int, int]] = []

    def sample(self, index: int, attempt: int = 0) -> Any:
        self.calls.append((index, attempt))
        return self.sampler.sample(index, attempt)


def uint16_catalog(root: Path) -> MultiBandGeoTIFF:
    """Two overlapping uint16 scenes, one with a nodata stripe: native chips, mosaics, redraws."""
    rng = np.random.default_rng(0)
    a = rng.integers(1, 4000, size=(3, 96, 160), dtype=np.uint16)
    a[:, :, :30] = 0  # nodata stripe: chips there are redrawn
    a[1, 60:70, 40:50] = 0  # nodata in one band only: still a nodata pixel
    write_raster(root / "a.tif", a, "EPSG:32631", (500000, 5000000))
    b = rng.integers(1, 4000, size=(3, 96, 96), dtype=np.uint16)
    write_raster(root / "b.tif", b, "EPSG:32631", (501280, 5000000))  # 32 px overlap
    return MultiBandGeoTIFF(root)


@pytest.mark.parametrize("nodata", [0, 0.0, 7, 0.5, -1, 70000, float("nan"), None])
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8])
def test_integer_nodata_fraction_equals_float_fraction(nodata: float | None, dtype: Any) -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 20, size=(3, 16, 16)).astype(dtype)
    if np.issubdtype(dtype, np.signedinteger):
        array[0, :4] = -1
    draw = GeoChipDraw(None, None, nodata)
    raw = torch.from_numpy(array)
    assert draw._nodata_fraction(None, raw) == draw._nodata_fraction(None, raw.float())


def test_raw_draws_equal_float_draws_with_the_same_redraws(tmp_path: Path) -> None:
    ds = uint16_catalog(tmp_path)
    dm = GeoDINODataModule(
        ds,
        chip_size=32,
        batch_size=4,
        seed=0,
        max_nodata=0.05,
        multicrop=MULTICROP,
        statistics_chips=8,
    )
    dm.setup_draws()
    sampler = dm.train_draw.sampler
    raw = GeoChipDraw(ds, CountingSampler(sampler), ds.nodata, 0.05)
    old = GeoChipDraw(FloatReads(ds), CountingSampler(sampler), ds.nodata, 0.05)
    dtypes = set()
    for position in range(40):
        got, expected = raw.raw(position), old(position)
        dtypes.add(got["image"].dtype)
        assert expected["image"].dtype == torch.float32
        for key in expected:
            torch.testing.assert_close(
                got[key].to(expected[key].dtype), expected[key], rtol=0, atol=0, msg=key
            )
    assert raw.sampler.calls == old.sampler.calls
    assert any(attempt > 0 for _, attempt in old.sampler.calls)  # some chips were redrawn
    assert dtypes == {torch.uint16, torch.float32}  # native reads and mosaics
    for position in range(40):  # calling the draw (statistics, scripts) still gives float32
        assert torch.equal(raw(position)["image"], old(position)["image"])


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_batches_cast_on_the_device_equal_float_batches(
    tmp_path: Path, workers: int
) -> None:
    ds = uint16_catalog(tmp_path)
    dm = GeoDINODataModule(
        ds,
        chip_size=32,
        batch_size=4,
        seed=0,
        max_nodata=0.3,
        num_workers=workers,
        multicrop=MULTICROP,
        statistics_chips=8,
    )
    dm.setup("fit")
    old = GeoChipDraw(FloatReads(ds), dm.train_draw.sampler, ds.nodata, 0.3)
    loader = iter(dm.train_dataloader())
    dtypes = set()
    for step in range(8):
        batch = next(loader)
        dtypes.add(batch["image"].dtype)
        expected = collate([old(p) for p in range(4 * step, 4 * step + 4)])
        torch.testing.assert_close(batch["image"].float(), expected["image"], rtol=0, atol=0)
        torch.testing.assert_close(batch["bounds"], expected["bounds"], rtol=0, atol=0)
        # what the model sees: cast, nodata filled and normalised on the device
        got = dm.on_after_batch_transfer(batch, 0)["image"]
        want = dm.on_after_batch_transfer(expected, 0)["image"]
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.uint16 in dtypes  # batches of native reads stay uint16 through the loader
    assert torch.float32 in dtypes  # a batch with a mosaic chip is promoted, not refused


class MixedDraw:
    """Images of the dtypes and sizes given per position, as a draw without ``raw``."""

    def __init__(self, dtypes: list[torch.dtype], sizes: list[int] | None = None) -> None:
        self.dtypes, self.sizes = dtypes, sizes or [4] * len(dtypes)

    def __call__(self, position: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(position)
        size = self.sizes[position]
        image = torch.randint(0, 4000, (2, size, size), generator=g)
        return {"image": image.to(self.dtypes[position]), "bounds": torch.full((9,), position)}


@pytest.mark.parametrize("workers", [0, 1])
def test_stream_batches_promote_mixed_image_dtypes(workers: int) -> None:
    draw = MixedDraw([torch.uint16, torch.float32, torch.uint16, torch.uint16])
    stream = SampleStream(draw, batch_size=3, length=4)
    assert len(stream) == 2  # batches, the last one partial
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    batches = list(loader)
    assert [b["image"].dtype for b in batches] == [torch.float32, torch.uint16]
    expected = torch.stack([draw(p)["image"].float() for p in range(4)])
    assert torch.equal(torch.cat([b["image"].float() for b in batches]), expected)
    assert torch.cat([b["bounds"][:, 0] for b in batches]).tolist() == [0, 1, 2, 3]


def test_stream_refuses_images_of_different_sizes() -> None:
    stream = SampleStream(MixedDraw([torch.uint16] * 3, [4, 4, 5]), batch_size=3, start=0)
    with pytest.raises(
        DataError,
        match=r"stream position 2 has an image of shape \(2, 5, 5\)"
        r".*\(2, 4, 4\).*one size",
    ):
        next(iter(stream))
    masks = SampleStream(lambda p: {"mask": torch.zeros(4, 4)}, batch_size=2)
    with pytest.raises(DataError, match=r"position 0 has no image tensor \(keys \['mask'\]\)"):
        next(iter(masks))


def test_block_aligned_reaches_the_samplers(tmp_path: Path) -> None:
    ds = uint16_catalog(tmp_path)
    dm = GeoDINODataModule(
        ds,
        chip_size=32,
        batch_size=4,
        seed=0,
        max_nodata=0.3,
        val_length=4,
        block_aligned=True,
        multicrop=MULTICROP,
        statistics_chips=4,
    )
    dm.setup("fit")
    for draw in (dm.train_draw, dm.val_draw):
        assert draw.sampler.blocks is not None and len(draw.sampler.blocks) == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert GeoDINODataModule(ds, chip_size=32)._sampler(None, 0).blocks is None  # off by default


def test_data_modules_and_sources_meet_their_protocols(tmp_path: Path) -> None:
    from geodino.datamodules import DINODataModule, PretrainingData
    from geodino.datasets.protocols import HasNodata, NamedBands, RawSampleSource

    module = FolderDINODataModule(TensorItems(8), batch_size=2)
    assert isinstance(module, PretrainingData)
    assert isinstance(TensorItems(8), NamedBands) and not isinstance(TensorItems(8), HasNodata)
    assert module.nodata is None and module.band_groups is None
    assert module.band_kinds == ["optical"] * 3
    data = np.ones((2, 16, 16), dtype=np.uint16)
    write_raster(tmp_path / "a.tif", data, "EPSG:32631", (500000, 5000000))
    geotiff = MultiBandGeoTIFF(tmp_path)
    assert isinstance(geotiff, RawSampleSource) and isinstance(geotiff, HasNodata)
    assert not isinstance(TensorItems(8), RawSampleSource)
    with pytest.raises(TypeError, match="abstract"):
        DINODataModule()  # type: ignore[abstract]
    with pytest.raises(ConfigError, match="_Unnamed does not name its bands"):
        _ = FolderDINODataModule(_Unnamed(8)).band_names


class _Unnamed(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.zeros(3, 8, 8)}
