"""geodino.tasks.Segmentation: a ViT from a geodino export inside TorchGeo's task."""

import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from geodino.config import run_lightning_cli
from geodino.errors import ConfigError, WeightsError
from geodino.models import forward_tokens, split_tokens
from geodino.tasks import DINOv2Task, Segmentation

Export = Callable[[int], tuple[Path, DINOv2Task]]


def chips(n: int, bands: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, bands, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("patch", [14, 16])
@pytest.mark.parametrize("decoder", ["upernet", "linear"])
def test_encoder_is_the_export_and_features_match(
    geodino_export: Export, patch: int, decoder: str
) -> None:
    export, pretrained = geodino_export(patch)
    task = Segmentation(weights=export, model=decoder, num_classes=3, decoder_channels=16)
    assert (
        task.hparams["in_channels"] == 5 and task.hparams["backbone"] == pretrained.hparams["model"]
    )
    saved = load_file(str(export / "backbone.safetensors"))
    encoder = task.model.encoder.state_dict()
    assert set(encoder) == set(saved)
    for key, value in saved.items():
        assert torch.equal(encoder[key], value), key

    # any chip size the patch divides, square or not: the pretrained teacher's features
    x = chips(2, 5, 3 * patch)[..., : 2 * patch]
    teacher = pretrained.teacher["backbone"]
    with torch.no_grad():
        _, _, patches = split_tokens(teacher, forward_tokens(teacher, x))
        maps = task.features(x)
        depth = len(teacher.blocks)
        expected = teacher.forward_intermediates(
            x, indices=task.model.layers, norm=True, intermediates_only=True
        )
        logits = task(x)
    assert len(maps) == (4 if decoder == "upernet" else 1)
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert task.model.layers[-1] == depth - 1  # the last map is the final tokens on the grid
    torch.testing.assert_close(maps[-1].flatten(2).transpose(1, 2), patches)
    assert logits.shape == (2, 3, 3 * patch, 2 * patch)


def test_img_size_resamples_the_grid_once(geodino_export: Export) -> None:
    export, _ = geodino_export(14)
    fixed = Segmentation(weights=export, model="linear", num_classes=2, img_size=56)
    dynamic = Segmentation(weights=export, model="linear", num_classes=2)
    assert fixed.model.encoder.pos_embed.shape[1] == 4 * 4
    assert dynamic.model.encoder.pos_embed.shape[1] == 37 * 37
    x = chips(2, 5, 56)
    torch.testing.assert_close(fixed.features(x), dynamic.features(x))


class RandomMasks(Dataset[dict[str, torch.Tensor]]):
    """Chips whose mask is where band 0 is positive (with -1 nodata pixels)."""

    def __init__(self, n: int, size: int) -> None:
        self.images = chips(n, 5, size, seed=3)
        self.masks = (self.images[:, 0] > 0).long()
        self.masks[:, 0, :] = -1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "mask": self.masks[index]}


def test_frozen_backbone_trains_decoder_and_reloads_without_the_export(
    geodino_export: Export, tmp_path: Path
) -> None:
    export, _ = geodino_export(16)
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    torch.manual_seed(0)
    task = Segmentation(
        weights=copy, num_classes=2, ignore_index=-1, freeze_backbone=True, decoder_channels=16
    )
    assert not any(p.requires_grad for p in task.model.encoder.parameters())
    assert all(p.requires_grad for p in task.model.decoder.parameters())
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    data = DataLoader(RandomMasks(8, 32), batch_size=4)
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, data, data)
    after = task.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    # TorchGeo's metrics, with nodata ignored
    assert 0 <= float(trainer.callback_metrics["val_AverageJaccardIndex"]) <= 1

    shutil.rmtree(copy)  # the checkpoint holds the architecture: no export needed to reload
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    reloaded = Segmentation.load_from_checkpoint(ckpt).eval()
    x = chips(2, 5, 48)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), task.eval()(x))


def test_freeze_decoder_trains_the_classifier_only(geodino_export: Export) -> None:
    export, _ = geodino_export(14)
    task = Segmentation(
        weights=export, model="linear", num_classes=2, freeze_backbone=True, freeze_decoder=True
    )
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable == {"segmentation_head.weight", "segmentation_head.bias"}


def test_random_init_without_an_export() -> None:
    task = Segmentation(
        backbone="vit_small_patch16_224",
        in_channels=7,
        num_classes=4,
        backbone_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2},
        decoder_channels=8,
    )
    assert task.model.layers == [0, 0, 1, 1]
    assert task(chips(2, 7, 32)).shape == (2, 4, 32, 32)


def test_bad_configurations_are_refused(geodino_export: Export, tmp_path: Path) -> None:
    export, _ = geodino_export(14)
    with pytest.raises(WeightsError, match="not a geodino export"):
        Segmentation(weights=tmp_path, num_classes=2)
    with pytest.raises(ConfigError, match="in_channels=13 but the export"):
        Segmentation(weights=export, in_channels=13, num_classes=2)
    with pytest.raises(ConfigError, match="would change the architecture"):
        Segmentation(weights=export, backbone_kwargs={"depth": 12}, num_classes=2)
    with pytest.raises(ConfigError, match="reads 4 blocks"):
        Segmentation(weights=export, layers=[1, 3], num_classes=2)
    with pytest.raises(ConfigError, match="do not fit an encoder of 4 blocks"):
        Segmentation(weights=export, model="linear", layers=[7], num_classes=2)
    with pytest.raises(ConfigError, match="give the timm `backbone` name and `in_channels`"):
        Segmentation(in_channels=5, num_classes=2)
    task = Segmentation(weights=export, model="linear", num_classes=2)
    with pytest.raises(ConfigError, match="multiple of 14"):
        task(chips(1, 5, 50))


def test_the_fine_tuning_guide_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "fine-tuning.md"
    text = page.read_text()
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs"}
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 5
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/fine-tuning.md snippet {number}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "torch.Size([2, 10])" in printed and "torch.Size([2, 2, 112, 84])" in printed
    assert "val_AverageJaccardIndex" in printed

    # the YAML config parses with geodino's LightningCLI
    config = tmp_path / "finetune.yaml"
    config.write_text(re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)[0])
    monkeypatch.setattr(sys, "argv", ["geodino"])
    with pytest.raises(SystemExit) as done:
        run_lightning_cli(["fit", "--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "geodino.tasks.Segmentation"
    assert printed["model"]["init_args"]["weights"] == "exported"


# --- fine-tuning on a real flood scene ------------------------------------------------------
class Tiles(Dataset[dict[str, torch.Tensor]]):
    """Square tiles cut from one scene and its label raster."""

    def __init__(
        self, image: torch.Tensor, mask: torch.Tensor, index: list[int], size: int
    ) -> None:
        n = image.shape[-1] // size
        grid = image[:, : n * size, : n * size].unfold(1, size, size).unfold(2, size, size)
        self.images = grid.permute(1, 2, 0, 3, 4).reshape(n * n, -1, size, size)[index]
        labels = mask[: n * size, : n * size].unfold(0, size, size).unfold(1, size, size)
        self.masks = labels.reshape(n * n, size, size)[index]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "mask": self.masks[index]}


def test_flood_fine_tuning_beats_a_frozen_random_backbone(
    shared_data: Path, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    import rasterio
    import timm

    from geodino.export import write_export

    folder = shared_data / "sen1floods11_sample"
    with rasterio.open(folder / "Spain_7370579_S2Hand.tif") as src:  # 13 bands, L1C x 10000
        image = torch.from_numpy(src.read().astype("float32"))
        bands = list(src.descriptions)
    with rasterio.open(folder / "Spain_7370579_LabelHand.tif") as src:  # -1 / 0 dry / 1 water
        mask = torch.from_numpy(src.read(1).astype("int64"))
    assert image.shape == (13, 512, 512) and set(mask.unique().tolist()) == {-1, 0, 1}
    image = (image - image.mean((1, 2), keepdim=True)) / image.std((1, 2), keepdim=True)
    size = 56  # 4 x 4 patches of 14 px; 9 x 9 tiles, a checkerboard quarter held out
    n = 512 // size
    held_out = [(i // n + i % n) % 4 == 0 for i in range(n * n)]
    train = Tiles(image, mask, [i for i in range(n * n) if not held_out[i]], size)
    val = Tiles(image, mask, [i for i in range(n * n) if held_out[i]], size)

    # one randomly initialised backbone, exported; fine-tuned vs kept frozen
    torch.manual_seed(0)
    arch = {"embed_dim": 64, "depth": 2, "num_heads": 2}
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", in_chans=13, num_classes=0, **arch)
    write_export(
        vit.state_dict(),
        tmp_path / "random",
        "vit_small_patch14_reg4_dinov2",
        13,
        model_kwargs=arch,
        bands=bands,
    )
    water_iou = {}
    for frozen in (True, False):
        torch.manual_seed(0)
        task = Segmentation(
            weights=tmp_path / "random",
            model="linear",
            num_classes=2,
            ignore_index=-1,
            lr=1e-3,
            freeze_backbone=frozen,
        )
        trainer = Trainer(
            max_epochs=5,
            accelerator="cpu",
            logger=False,
            deterministic=True,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        loader = DataLoader(
            train, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        trainer.fit(task, loader, DataLoader(val, batch_size=32))
        scores = trainer.validate(task, DataLoader(val, batch_size=32), verbose=False)[0]
        water_iou["frozen" if frozen else "fine-tuned"] = scores["val_ClasswiseJaccardIndex_1"]
        if frozen:
            encoder = load_file(str(tmp_path / "random" / "backbone.safetensors"))
            assert all(
                torch.equal(v, encoder[k]) for k, v in task.model.encoder.state_dict().items()
            )
    record_property("water_iou", water_iou)
    print(f"held-out water IoU: {water_iou}")
    assert water_iou["fine-tuned"] > water_iou["frozen"] > 0.2


@pytest.mark.parametrize("fusion", ["early", "xattn"])
def test_fusion_backbone_from_its_export(tmp_path: Path, fusion: str) -> None:
    from geodino.export import export_backbone, load_backbone
    from geodino.models import FusionViT
    from geodino.tasks import Classification

    torch.manual_seed(0)
    pretrained = DINOv2Task(
        model="vit_small_patch14_reg4_dinov2",
        in_chans=5,
        modalities={"s1": 2, "s2": 3},
        fusion=fusion,
        model_kwargs={"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2},
        head_out_dim=16,
        head_hidden_dim=16,
        head_bottleneck_dim=8,
        head_nlayers=2,
    )
    with torch.no_grad():
        for p in pretrained.teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(
        {"hyper_parameters": dict(pretrained.hparams), "state_dict": pretrained.state_dict()},
        tmp_path / "fusion.ckpt",
    )
    export_backbone(tmp_path / "fusion.ckpt", tmp_path / "export")
    meta = json.loads((tmp_path / "export" / "backbone.json").read_text())
    assert meta["model_kwargs"]["modalities"] == {"s1": 2, "s2": 3}
    assert meta["torchgeo_compatible"] is False and meta["img_size"] == [518, 518]

    task = Segmentation(weights=tmp_path / "export", num_classes=2, decoder_channels=8)
    assert isinstance(task.model.encoder, FusionViT)
    saved = load_file(str(tmp_path / "export" / "backbone.safetensors"))
    encoder = task.model.encoder.state_dict()
    assert set(encoder) == set(saved)
    assert all(torch.equal(encoder[k], v) for k, v in saved.items())
    # at timm's default size the export's grid and the teacher's resample alike
    x = chips(1, 5, 518, seed=4)
    teacher = pretrained.teacher["backbone"].eval()
    with torch.no_grad():
        tokens = teacher.forward_features(x)
        maps = task.features(x)
    torch.testing.assert_close(
        maps[-1].flatten(2).transpose(1, 2), tokens[:, teacher.num_prefix_tokens :]
    )
    # chips of the training size, with the grid built for them
    sized = Segmentation(
        weights=tmp_path / "export", num_classes=2, img_size=28, decoder_channels=8
    )
    with torch.no_grad():
        torch.testing.assert_close(sized.features(chips(2, 5, 28)), task.features(chips(2, 5, 28)))
        assert task(chips(2, 5, 28)).shape == (2, 2, 28, 28)
    with pytest.raises(ConfigError, match="multimodal FusionViT"):
        Classification(weights=tmp_path / "export", num_classes=2)
    # embeddings and evaluation read the fusion export as the FusionViT it is
    assert load_backbone(tmp_path / "export").model.modalities == {"s1": 2, "s2": 3}
