"""Exports of small pretrained backbones for the fine-tuning task tests."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from geodino.export import export_backbone
from geodino.tasks import DINOv2Task

#: narrow timm ViTs by patch size (registers at patch 14, class token only at patch 16).
ARCHITECTURES = {14: "vit_small_patch14_reg4_dinov2", 16: "vit_small_patch16_224"}
TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2}
BANDS = ["B02", "B03", "B04", "B08", "B11"]


def _export(root: Path, patch: int) -> tuple[Path, DINOv2Task]:
    torch.manual_seed(patch)
    task = DINOv2Task(
        model=ARCHITECTURES[patch],
        in_chans=len(BANDS),
        band_names=BANDS,
        model_kwargs=TINY,
        head_out_dim=16,
        head_hidden_dim=16,
        head_bottleneck_dim=8,
        head_nlayers=2,
    )
    with torch.no_grad():  # a teacher unlike timm's initialisation, with non-zero registers
        for p in task.teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    root.mkdir(parents=True, exist_ok=True)
    ckpt = root / "task.ckpt"
    torch.save(
        {"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict(), "global_step": 0},
        ckpt,
    )
    export_backbone(ckpt, root / "export")
    return root / "export", task.eval()


@pytest.fixture(scope="session")
def geodino_export(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[int], tuple[Path, DINOv2Task]]:
    """Factory: patch size -> (export folder, the DINOv2Task whose teacher was exported)."""
    cache: dict[int, tuple[Path, DINOv2Task]] = {}

    def make(patch: int) -> tuple[Path, DINOv2Task]:
        if patch not in cache:
            cache[patch] = _export(tmp_path_factory.mktemp(f"export{patch}"), patch)
        return cache[patch]

    return make
