"""Mixed-sensor pretraining: one-source batches, weights, sharding, resume, fit and export."""

from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from lightning.pytorch import Callback, Trainer

from geodino.bands import band_identities
from geodino.cli import main
from geodino.datamodules import MixedGeoDataModule, MixedSampleStream
from geodino.datasets import MultiBandGeoTIFF
from geodino.datasets.sentinel import S2_BANDS
from geodino.demo import DemoSentinel1, DemoSentinel2, write_demo_catalog
from geodino.demo.eightband import (
    EIGHT_BANDS,
    DemoWorldView3,
    resampling_matrix,
    write_eightband_scenes,
)
from geodino.errors import ConfigError
from geodino.export import export_backbone, load_backbone
from geodino.models import DofaViT, PanopticonViT
from geodino.tasks import DINOv2Task
from geodino.tasks.spectral import SpectralBatch
from geodino.transforms.spectral import draw_band_masks, sensor_band_sets

MULTICROP = {"global_crops_size": 28, "local_crops_size": 14, "local_crops_number": 2}
MODEL_KWARGS = {
    "img_size": 28,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "attn_dim": 32,
    "attn_heads": 2,
    "sensors": ["sentinel2", "sentinel1", "worldview3"],
}


def source_draw(source: int):
    def draw(position: int) -> dict[str, torch.Tensor]:
        return {"image": torch.full((source + 1, 2, 2), float(position))}

    return draw


def stream_batches(rank: int, world: int, start: int = 0, workers: int = 1, n: int = 40) -> list:
    stream = MixedSampleStream(
        [source_draw(i) for i in range(3)], [2.0, 1.0, 1.0], 7, 4, start, rank, world
    )
    out = []
    for worker in range(workers):
        positions = stream.positions(worker, workers)
        for _ in range(n // workers):
            batch = stream.read_batch(list(islice(positions, 4)))
            out.append((batch["source"], batch["image"][:, 0, 0, 0].long().tolist()))
    return sorted(out, key=lambda b: b[1][0])


def test_stream_batches_hold_one_source_drawn_by_weight() -> None:
    batches = stream_batches(0, 1, n=400)
    for source, _ in batches:
        assert isinstance(source, int)
    # the image's band count is its source's: every batch holds one source
    counts = Counter(source for source, _ in batches)
    assert abs(counts[0] / 400 - 0.5) < 0.08 and abs(counts[1] / 400 - 0.25) < 0.08


def test_stream_shards_ranks_on_one_source_per_step_and_resumes() -> None:
    ranks = [stream_batches(rank, 2) for rank in range(2)]
    positions = [p for batches in ranks for _, chunk in batches for p in chunk]
    assert sorted(positions) == list(range(2 * 40 * 4))
    # at every step all ranks read the same source (same band set, same shapes)
    assert [s for s, _ in ranks[0]] == [s for s, _ in ranks[1]]
    # workers take whole batches: the same batches whatever their number
    assert stream_batches(1, 2, workers=2) == ranks[1]
    # a stream resumed at step 10 continues exactly
    assert stream_batches(1, 2, start=10 * 4 * 2, n=30) == ranks[1][10:]


def test_band_masks_keep_a_random_subset() -> None:
    masks = draw_band_masks(400, 6, 0.5, 2, torch.Generator().manual_seed(0))
    kept = (~masks).sum(1)
    assert kept.min() >= 2 and kept.max() == 6
    assert 0.4 < (kept < 6).float().mean() < 0.6
    assert not draw_band_masks(5, 1, 1.0).any()  # one band: nothing to hide
    with pytest.raises(ConfigError, match="min_bands"):
        draw_band_masks(1, 3, 0.5, 0)
    with pytest.raises(ConfigError, match="sensor share"):
        draw_band_masks(1, 3, 0.5, sensor_share=1.5)


def test_sensor_band_sets_are_what_other_sensors_record() -> None:
    s2 = band_identities(list(S2_BANDS), "sentinel2")
    sets = [[list(S2_BANDS)[i] for i in kept] for kept in sensor_band_sets(s2)]
    # PlanetScope's 4 bands (490, 565, 665, 865 nm) fall on B02, B03, B04 and B8A
    assert ["B02", "B03", "B04", "B8A"] in sets
    # Landsat 8 and 9 record the same bands: one set; thermal and pan bands find none
    assert ["B01", "B02", "B03", "B04", "B8A", "B10", "B11", "B12"] in sets
    assert list(S2_BANDS) not in sets and len(sets) == len({tuple(s) for s in sets})
    wv3 = band_identities(list(EIGHT_BANDS), "worldview3")
    assert [list(EIGHT_BANDS).index(b) for b in ("blue", "green", "red")] in sensor_band_sets(wv3)
    assert all(len(kept) >= 4 for kept in sensor_band_sets(wv3, min_bands=4))
    assert sensor_band_sets([-1.0, -2.0]) == []  # SAR: random subsets only
    assert sensor_band_sets([3000.0, 4000.0]) == []  # no sensor records these bands


def test_band_masks_draw_sensor_subsets() -> None:
    sets = [[0, 1, 2], [3, 4]]
    masks = draw_band_masks(400, 6, 1.0, 1, torch.Generator().manual_seed(0), sets, 0.5)
    kept = [(~row).nonzero().flatten().tolist() for row in masks]
    from_sensors = sum(k in sets for k in kept)
    assert 0.4 < from_sensors / 400 < 0.65  # half the subsets, plus random draws that match
    assert all(0 < len(k) < 6 for k in kept)
    only = draw_band_masks(50, 6, 1.0, 1, torch.Generator().manual_seed(1), sets, 1.0)
    assert all((~row).nonzero().flatten().tolist() in sets for row in only)
    # without sensor sets the draw is the plain random one, whatever the share
    plain = draw_band_masks(50, 6, 0.5, 1, torch.Generator().manual_seed(2))
    assert torch.equal(
        plain, draw_band_masks(50, 6, 0.5, 1, torch.Generator().manual_seed(2), [], 1.0)
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_catalog(tmp_path_factory.mktemp("demo"), seed=0, scene_size=64).root


def data_module(root: Path, **kwargs: object) -> MixedGeoDataModule:
    args = {
        "weights": [2.0, 1.0, 1.0],
        "aoi": root / "aoi.gpkg",
        "aoi_query": "split == 'train'",
        "chip_size": 28,
        "min_coverage": 0.5,
        "max_nodata": 0.5,
        "batch_size": 4,
        "statistics_chips": 4,
        "multicrop": MULTICROP,
        **kwargs,
    }
    sources = [DemoSentinel2(root), DemoSentinel1(root), DemoWorldView3(root)]
    return MixedGeoDataModule(sources, **args)  # type: ignore[arg-type]


def training_batches(dm: MixedGeoDataModule, count: int) -> list[tuple[int, dict[str, Any]]]:
    """The first training batches of a set-up data module as the device sees them, and their
    sources."""
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False)
    dm.trainer = trainer
    trainer.state.stage = "train"  # on_after_batch_transfer multi-crops training batches only
    loader = islice(iter(dm.train_dataloader()), count)
    return [(raw["source"], dm.on_after_batch_transfer(raw, 0)) for raw in loader]


def test_eightband_scenes_resample_the_s2_spectra(demo: Path) -> None:
    matrix = resampling_matrix()
    np.testing.assert_allclose(matrix.sum(1), 1.0)
    folder = write_eightband_scenes(demo)
    assert folder == demo / "wv3" and len(list(folder.glob("*.tif"))) == 4
    with rasterio.open(demo / "s2" / "zone31_north.tif") as s2:
        spectra = s2.read().astype(float)
    with rasterio.open(demo / "wv3" / "zone31_north.tif") as wv3:
        assert wv3.descriptions == EIGHT_BANDS
        eight = wv3.read().astype(float)
    valid = (spectra > 0).all(0)
    expected = np.einsum("es,shw->ehw", matrix, spectra)
    np.testing.assert_allclose(eight[:, valid], expected[:, valid], atol=0.5)


def test_data_module_bands_statistics_and_device_batches(demo: Path) -> None:
    dm = data_module(demo)
    assert dm.band_names[:2] == ["B01", "B02"] and dm.band_names[13:15] == ["VV", "VH"]
    assert len(dm.band_names) == dm.num_bands == 23 and dm.band_groups is None
    assert dm.band_ids[11] == 1613.7 and dm.band_ids[13:15] == [-1.0, -2.0]
    assert dm.band_kinds[13:15] == ["sar", "sar"] and dm.band_kinds[15] == "optical"
    dm.setup("fit")
    assert dm.statistics is not None and dm.statistics.band_names == dm.band_names
    seen = set()
    for source, batch in training_batches(dm, 6):
        seen.add(source)
        bands = len(dm.source_bands[source])
        assert batch["global_crops"].shape == (8, bands, 28, 28)
        assert batch["local_crops"].shape == (8, bands, 14, 14)
        assert batch["global_band_mask"].shape == (8, bands)
        assert not batch["global_band_mask"].all(1).any()
        assert batch["band_ids"].tolist() == pytest.approx(dm.source_ids[source])
        assert torch.isfinite(batch["global_crops"]).all()
    assert len(seen) >= 2


def test_subset_crops_keep_what_other_sensors_record(demo: Path) -> None:
    dm = data_module(demo, spectral_subsets=1.0, sensor_subsets=1.0)
    names = dm.source_bands
    assert [names[0][i] for i in dm.source_subsets[0][2]] == ["B02", "B03", "B04", "B8A"]
    assert dm.source_subsets[1] == []  # Sentinel-1: random subsets
    dm.setup("fit")
    seen = set()
    for source, batch in training_batches(dm, 6):
        seen.add(source)
        for kind in ("global", "local"):
            kept = [(~row).nonzero().flatten().tolist() for row in batch[f"{kind}_band_mask"]]
            if dm.source_subsets[source]:
                assert all(k in dm.source_subsets[source] for k in kept)
            else:
                assert all(0 < len(k) < len(names[source]) for k in kept)
    assert len(seen) >= 2


def test_teacher_all_bands_hides_bands_from_the_student_only(demo: Path) -> None:
    dm = data_module(demo, spectral_subsets=1.0, teacher_all_bands=True)
    dm.setup("fit")
    [(_, batch)] = training_batches(dm, 1)
    bands = SpectralBatch.from_batch(batch)
    assert bands is not None
    crops = batch["global_crops"]
    student = bands.band_mask(crops, "student")
    teacher = bands.band_mask(crops, "teacher")
    assert student is not None and student.any(1).all()  # every student crop sees a subset
    assert teacher is not None and teacher.shape == student.shape and not teacher.any()
    assert bands.band_mask(batch["local_crops"], "student") is not None
    # teacher_all_bands=False: the teacher hides what the student's global crop hides
    batch.pop("teacher_band_mask")
    assert SpectralBatch.from_batch(batch).band_mask(crops, "teacher") is student  # type: ignore[union-attr]


def test_patch_embed_lr_mult_covers_the_whole_channel_attention(demo: Path) -> None:
    # the from-scratch any-sensor recipe trains the band mixing faster than the ViT body
    dm = data_module(demo)
    task = DINOv2Task(
        model="panopticon_vitb14",
        in_chans=23,
        band_names=dm.band_names,
        model_kwargs=MODEL_KWARGS,
        layerwise_decay=1.0,
        patch_embed_lr_mult=4.0,
    )
    groups = task.configure_optimizers().param_groups
    mult = {id(p): g["lr_multiplier"] for g in groups for p in g["params"]}
    named = dict(task.student["backbone"].named_parameters())
    embedding = [n for n in named if n.startswith("patch_embed.")]
    assert any(".chnfus." in n for n in embedding) and any(".conv3d." in n for n in embedding)
    assert {mult[id(named[n])] for n in embedding} == {4.0}
    assert {mult[id(p)] for n, p in named.items() if n.startswith("blocks.")} == {1.0}


def test_sources_must_agree_on_band_identities(demo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"band 'B2' of dataset 0 .*band_wavelengths"):
        MixedGeoDataModule(
            [MultiBandGeoTIFF(demo / "s2", band_names=["B2", *[f"x{i}" for i in range(12)]])]
        )
    # WorldView-3's blue is 482 nm, SuperDove's 490 nm: one name, two bands
    superdove = ["coastal_blue", "blue", "green_i", "green", "yellow", "red", "rededge", "nir"]
    with pytest.raises(ConfigError, match=r"band 'blue' of dataset 1 .* is 490 .* 482"):
        MixedGeoDataModule(
            [DemoWorldView3(demo), MultiBandGeoTIFF(demo / "wv3", band_names=superdove)],
            sensors=[None, "superdove"],
        )


#: a DOFA backbone of the same size
DOFA_KWARGS = {k: v for k, v in MODEL_KWARGS.items() if not k.startswith("attn_")}


def fit(
    root: Path,
    out: Path,
    steps: int,
    ckpt: str | None = None,
    model: str = "panopticon_vitb14",
    model_kwargs: dict[str, object] = MODEL_KWARGS,
    callbacks: list[Callback] | None = None,
) -> Trainer:
    torch.manual_seed(0)  # the initial weights
    dm = data_module(root)
    task = DINOv2Task(
        model=model,
        in_chans=23,
        model_kwargs=model_kwargs,
        source_heads=3,
        head_out_dim=64,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        lr_reference_batch=8,
        koleo_loss_weight=0.0,
        checkpoint_every_n_steps=2,
        keep_last_k=5,
    )
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=out,
        callbacks=callbacks,
    )
    trainer.fit(task, dm, ckpt_path=ckpt)
    return trainer


class SourceLog(Callback):
    """The source of every training batch."""

    def __init__(self) -> None:
        self.sources: list[int] = []

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: object, batch: dict, i: int
    ) -> None:
        self.sources.append(batch["source"])


def small_task(source_heads: int) -> DINOv2Task:
    """The task of :func:`fit` as it starts."""
    return DINOv2Task(
        model="panopticon_vitb14",
        in_chans=23,
        model_kwargs=MODEL_KWARGS,
        source_heads=source_heads,
        head_out_dim=64,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
    )


def test_each_source_trains_heads_of_its_own(demo: Path, tmp_path: Path) -> None:
    log = SourceLog()
    trainer = fit(demo, tmp_path / "heads", 6, callbacks=[log])
    task = trainer.lightning_module
    torch.manual_seed(0)
    initial = small_task(3)
    learnt = set(log.sources[1:])  # the warm-up's first step has a learning rate of 0
    assert 0 < len(learnt) < 3, log.sources  # some heads trained, one not (seed 0)
    for source, key in enumerate(("dino_head", "dino_head_1", "dino_head_2")):
        trained = task.student[key].mlp[0].weight
        changed = not torch.equal(trained, initial.student[key].mlp[0].weight)
        assert changed == (source in learnt), (key, log.sources)
        # the teacher follows the student's head of that source only
        teacher = task.teacher[key].mlp[0].weight
        kept = torch.allclose(teacher, initial.teacher[key].mlp[0].weight, rtol=0, atol=1e-6)
        assert kept != (source in learnt), key


def test_source_heads_must_cover_the_sources() -> None:
    task = small_task(2)
    batch = SpectralBatch(torch.tensor([-1.0, -2.0]), {}, source=2)
    with pytest.raises(ConfigError, match=r"source_heads=2.*source 2.*number of the data"):
        task._branch("student", bands=batch)
    with pytest.raises(ConfigError, match="source None"):
        task._branch("student")
    assert (
        task._branch("teacher", bands=SpectralBatch(batch.band_ids, {}, source=1)).dino_head
        is (task.teacher["dino_head_1"])
    )
    with pytest.raises(ConfigError, match="source_heads must be >= 1"):
        DINOv2Task(
            model="panopticon_vitb14", in_chans=23, model_kwargs=MODEL_KWARGS, source_heads=0
        )


def test_fit_resumes_exactly_and_exports_a_backbone_for_any_band_subset(
    demo: Path, tmp_path: Path
) -> None:
    straight = fit(demo, tmp_path / "straight", 4)
    expected = straight.lightning_module.state_dict()
    # the same run resumed from its step-2 checkpoint ends with the same weights
    middle = tmp_path / "straight" / "checkpoints" / "step00000002.ckpt"
    resumed = fit(demo, tmp_path / "resumed", 4, str(middle))
    got = resumed.lightning_module.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)

    paths = export_backbone(
        tmp_path / "straight" / "checkpoints" / "last.ckpt", tmp_path / "export"
    )
    backbone = load_backbone(paths["json"].parent)
    assert isinstance(backbone.model, PanopticonViT) and backbone.in_chans == 23
    images = {
        ("B04", "B03", "B02", "B08"): torch.rand(2, 4, 28, 28) * 3000,
        ("VV",): -torch.rand(2, 1, 28, 28) * 20,
        tuple(EIGHT_BANDS): torch.rand(2, 8, 28, 28) * 3000,
    }
    for names, image in images.items():
        view = backbone.for_bands(list(names), len(names), "chips")
        tokens = view.tokens(image)
        assert tokens.shape == (2, 5, 32) and torch.isfinite(tokens).all()

    # the commands take each source and a 4-band S2 subset, named in the files' descriptions
    subset = tmp_path / "s2_rgbn.tif"
    with rasterio.open(demo / "s2" / "zone31_north.tif") as src:
        profile = {**src.profile, "count": 4}
        data = src.read([4, 3, 2, 8])
        labels_path = demo / "labels" / "zone31_north.tif"
    with rasterio.open(subset, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = ("B04", "B03", "B02", "B08")
    out = tmp_path / "rgbn.gpkg"
    assert main(["embed", str(paths["json"].parent), str(subset), "--out", str(out)]) == 0
    assert len(gpd.read_file(out)) > 0
    with rasterio.open(labels_path) as src:
        classes = src.read(1)
        transform, crs = src.transform, src.crs
    rows, cols = np.mgrid[8:56:6, 8:56:6]
    points = gpd.GeoDataFrame(
        {"label": classes[rows, cols].ravel()},
        geometry=[
            shapely.Point(transform * (c + 0.5, r + 0.5))
            for r, c in zip(rows.ravel(), cols.ravel(), strict=True)
        ],
        crs=crs,
    )
    points[points.label != 255].to_file(tmp_path / "points.gpkg")
    for raster in (demo / "s1" / "zone31_north.tif", subset):
        report = tmp_path / raster.stem
        argv = ["knn", str(paths["json"].parent), str(tmp_path / "points.gpkg"), "--rasters"]
        argv += [str(raster), "--out", str(report), "--chip_size", "14", "--baselines", "false"]
        assert main(argv) == 0
        assert (report / "knn.json").is_file()


def test_dofa_pretrains_on_mixed_sources_and_embeds_each(demo: Path, tmp_path: Path) -> None:
    """DOFA's generated kernels train from one-source batches with spectral multi-crop."""
    kwargs = {**DOFA_KWARGS, "patch_size": 14}
    trainer = fit(demo, tmp_path / "dofa", 3, model="dofa_base_patch16_224", model_kwargs=kwargs)
    torch.manual_seed(0)
    initial = DINOv2Task(model="dofa_base_patch16_224", in_chans=23, model_kwargs=kwargs)
    key = "patch_embed.weight_generator.fc_weight.weight"
    trained = trainer.lightning_module.student["backbone"].state_dict()[key]
    assert not torch.equal(trained, initial.student["backbone"].state_dict()[key])
    paths = export_backbone(tmp_path / "dofa" / "checkpoints" / "last.ckpt", tmp_path / "export")
    backbone = load_backbone(paths["json"].parent)
    assert isinstance(backbone.model, DofaViT) and backbone.in_chans == 23
    for names in (["B04", "B03", "B02", "B08"], ["VV"], list(EIGHT_BANDS)):
        view = backbone.for_bands(names, len(names), "chips")
        tokens = view.tokens(torch.rand(2, len(names), 28, 28) * 3000)
        assert tokens.shape == (2, 5, 32) and torch.isfinite(tokens).all()
