"""Multimodal pretraining: the S1+S2 fusion config fits, its checkpoint embeds one modality."""

from pathlib import Path

import lightning as L
import pytest
import torch

from geodino.config import run_lightning_cli
from geodino.datamodules import GeoDINODataModule
from geodino.datasets import PairedDataset
from geodino.demo.catalog import DemoSentinel1, DemoSentinel2, write_demo_catalog
from geodino.errors import ConfigError
from geodino.models import FusionViT
from geodino.tasks import DINOv2Task

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "s1s2_fusion.yaml"
TINY = {"img_size": 28, "embed_dim": 64, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory):
    return write_demo_catalog(tmp_path_factory.mktemp("demo") / "data", seed=0, scene_size=256)


def test_fusion_config_fits_and_its_checkpoint_embeds_s1_alone_and_s2_alone(
    catalog, tmp_path: Path
) -> None:
    cli = run_lightning_cli(
        [
            "fit",
            "--config",
            str(CONFIG),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.log_every_n_steps=1",
            "--model.init_args.fusion=xattn",
            "--model.init_args.modality_dropout=0.5",
            "--model.init_args.checkpoint_every_n_steps=1",
            *(f"--model.init_args.model_kwargs.{k}={v}" for k, v in TINY.items()),
            "--model.init_args.head_out_dim=64",
            "--model.init_args.head_hidden_dim=32",
            "--model.init_args.head_bottleneck_dim=16",
            f"--data.init_args.dataset.init_args.datasets.s2.init_args.paths={catalog.root}",
            f"--data.init_args.dataset.init_args.datasets.s1.init_args.paths={catalog.root}",
            f"--data.init_args.aoi={catalog.aoi}",
            "--data.init_args.chip_size=32",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
            "--data.init_args.statistics_chips=8",
            "--data.init_args.multicrop.global_crops_size=28",
            "--data.init_args.multicrop.local_crops_size=14",
            "--data.init_args.multicrop.local_crops_number=2",
        ]
    )
    task, datamodule = cli.model, cli.datamodule
    assert cli.trainer.global_step == 2
    assert isinstance(task.model, FusionViT) and task.model.fusion == "xattn"
    assert datamodule.band_groups == {"s2": 13, "s1": 2}
    assert datamodule.multicrop.band_kinds == ["optical"] * 13 + ["sar"] * 2
    assert torch.isfinite(torch.tensor(float(cli.trainer.callback_metrics["train_loss"])))

    last = next(tmp_path.rglob("last.ckpt"))
    loaded = DINOv2Task.load_from_checkpoint(last, map_location="cpu").eval()
    backbone = loaded.model
    assert isinstance(backbone, FusionViT) and backbone.modalities == {"s2": 13, "s1": 2}
    torch.testing.assert_close(backbone.state_dict(), task.model.state_dict())
    g = torch.Generator().manual_seed(0)
    s2, s1 = torch.randn(2, 13, 28, 28, generator=g), torch.randn(2, 2, 28, 28, generator=g)
    with torch.no_grad():
        both = loaded({"s2": s2, "s1": s1})
        s2_only = loaded({"s2": s2})
        s1_only = loaded({"s1": s1})
        stacked = loaded(torch.cat([s2, s1], 1))
    assert both.shape == s2_only.shape == s1_only.shape == (2, 1 + 4 + 4, 64)
    assert torch.isfinite(s2_only).all() and torch.isfinite(s1_only).all()
    torch.testing.assert_close(stacked, both)
    assert not torch.allclose(s2_only, both) and not torch.allclose(s1_only, s2_only)


def _fit_briefly(task: DINOv2Task, datamodule: GeoDINODataModule, tmp_path: Path) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(task, datamodule)
    return trainer


def _task(**kwargs: object) -> DINOv2Task:
    args = {
        "model": "vit_small_patch14_reg4_dinov2",
        "in_chans": 15,
        "modalities": {"s2": 13, "s1": 2},
        "model_kwargs": TINY,
        "head_out_dim": 32,
        "head_hidden_dim": 16,
        "head_bottleneck_dim": 8,
        **kwargs,
    }
    return DINOv2Task(**args)


def _datamodule(dataset, catalog) -> GeoDINODataModule:
    return GeoDINODataModule(
        dataset,
        aoi=catalog.aoi,
        chip_size=32,
        batch_size=2,
        statistics_chips=4,
        multicrop={"global_crops_size": 28, "local_crops_size": 14, "local_crops_number": 1},
    )


def test_modalities_must_match_the_data_band_groups(catalog, tmp_path: Path) -> None:
    pairs = PairedDataset({"s2": DemoSentinel2(catalog.root), "s1": DemoSentinel1(catalog.root)})
    with pytest.raises(
        ConfigError,
        match=r"modalities=\{'s1': 2, 's2': 13\} but the data "
        r"deliver \{'s2': 13, 's1': 2\}",
    ):
        _fit_briefly(_task(modalities={"s1": 2, "s2": 13}), _datamodule(pairs, catalog), tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"the data deliver the modalities \{'s2': 13, 's1': 2\}"
        r" but the model is a single-modality ViT",
    ):
        _fit_briefly(_task(modalities=None), _datamodule(pairs, catalog), tmp_path)
    with pytest.raises(ConfigError, match="13 bands of one modality"):
        _fit_briefly(_task(), _datamodule(DemoSentinel2(catalog.root), catalog), tmp_path)


def test_bad_fusion_settings_are_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"in_chans=13 but the modalities .* have 15 bands"):
        _task(in_chans=13)
    with pytest.raises(ConfigError, match="fusion mode 'late' does not exist"):
        _task(fusion="late")
    with pytest.raises(ConfigError, match="modality_dropout needs two or more modalities"):
        _task(modalities=None, modality_dropout=0.2)
    with pytest.raises(ConfigError, match=r"modality_dropout=1.0 must lie in \[0, 1\)"):
        _task(modality_dropout=1.0)


def test_fusion_step_trains_the_fused_ibot_masks_and_keeps_lr_decay_groups(
    catalog, tmp_path: Path
) -> None:
    pairs = PairedDataset({"s2": DemoSentinel2(catalog.root), "s1": DemoSentinel1(catalog.root)})
    task = _task(fusion="linear", modality_dropout=0.5, mask_probability=1.0)
    before = {n: p.detach().clone() for n, p in task.student.named_parameters()}
    _fit_briefly(task, _datamodule(pairs, catalog), tmp_path)
    moved = {n for n, p in task.student.named_parameters() if not torch.equal(p, before[n])}
    for name in (
        "backbone.patch_embeds.s1.proj.weight",
        "backbone.patch_embeds.s2.proj.weight",
        "backbone.fuse.s1.weight",
        "backbone.modality_embeds.s2",
        "backbone.blocks.1.attn.qkv.weight",
    ):
        assert name in moved, name
    optimizer = task.optimizers().optimizer
    first = {id(p): g["lr_multiplier"] for g in optimizer.param_groups for p in g["params"]}
    backbone = task.student["backbone"]
    # modality parts sit with the embeddings at the bottom of the layer-wise lr decay
    assert first[id(backbone.fuse["s1"].weight)] == first[id(backbone.cls_token)]
    assert first[id(backbone.fuse["s1"].weight)] < first[id(backbone.blocks[0].attn.qkv.weight)]
