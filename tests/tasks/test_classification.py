"""geodino.tasks.Classification: the exported ViT at the chip size trained on."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from geodino.errors import ConfigError, WeightsError
from geodino.models import forward_tokens
from geodino.tasks import Classification, DINOv2Task

Export = Callable[[int], tuple[Path, DINOv2Task]]


def chips(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 5, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("patch", [14, 16])
def test_backbone_is_the_export_at_any_chip_size(geodino_export: Export, patch: int) -> None:
    export, pretrained = geodino_export(patch)
    task = Classification(weights=export, num_classes=3)
    saved = load_file(str(export / "backbone.safetensors"))
    built = task.model.state_dict()
    assert set(built) - set(saved) == {"head.weight", "head.bias"}
    for key, value in saved.items():
        assert torch.equal(built[key], value), key
    # TorchGeo's own Classification only takes 518 px (dinov2) / 224 px inputs; this one
    # takes the chips pretraining used, and its features are the teacher's
    x = chips(2, 2 * patch)
    teacher = pretrained.teacher["backbone"]
    with torch.no_grad():
        torch.testing.assert_close(task.model.forward_features(x), forward_tokens(teacher, x))
        assert task(x).shape == (2, 3)


def test_img_size_builds_for_the_chip(geodino_export: Export) -> None:
    export, _ = geodino_export(14)
    task = Classification(weights=export, num_classes=2, img_size=28)
    assert task.model.patch_embed.img_size == (28, 28)
    assert task.model.pos_embed.shape[1] == 2 * 2  # reg4 models keep no class position
    reference = Classification(weights=export, num_classes=2)
    reference.model.head.load_state_dict(task.model.head.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(task(chips(2, 28)), reference(chips(2, 28)))


class Bright(Dataset[dict[str, torch.Tensor]]):
    """Chips labelled by whether their first band is brighter than average."""

    def __init__(self, n: int) -> None:
        self.images = chips(n, 28, seed=5)
        self.labels = (self.images[:, 0].mean((1, 2)) > 0).long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "label": self.labels[index]}


def test_linear_probe_trains_the_head_only_and_reloads(
    geodino_export: Export, tmp_path: Path
) -> None:
    export, _ = geodino_export(14)
    task = Classification(weights=export, num_classes=2, freeze_backbone=True, img_size=28)
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    data = DataLoader(Bright(8), batch_size=4)
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
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}
    assert 0 <= float(trainer.callback_metrics["val_OverallAccuracy"]) <= 1
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    reloaded = Classification.load_from_checkpoint(ckpt, weights=None).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(chips(2, 28)), task.eval()(chips(2, 28)))


def test_bad_configurations_are_refused(geodino_export: Export, tmp_path: Path) -> None:
    export, _ = geodino_export(16)
    with pytest.raises(WeightsError, match="not a geodino export"):
        Classification(weights=tmp_path / "missing", num_classes=2)
    with pytest.raises(ConfigError, match="in_channels=3 but the export"):
        Classification(weights=export, in_channels=3, num_classes=2)
    with pytest.raises(ConfigError, match="would change the architecture"):
        Classification(weights=export, model_kwargs={"embed_dim": 64}, num_classes=2)
    with pytest.raises(ConfigError, match="holds a 'vit_small_patch16_224'"):
        Classification(weights=export, model="vit_base_patch16_224", num_classes=2)
    with pytest.raises(ConfigError, match="give the timm `model` name and `in_channels`"):
        Classification(in_channels=5, num_classes=2)
    # repeating the export's name is fine; the architecture comes from the export
    task = Classification(weights=export, model="vit_small_patch16_224", num_classes=2)
    assert task.model.embed_dim == 32 and len(task.model.blocks) == 4
