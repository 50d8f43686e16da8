"""Checkpoints written before the encoder interface load unchanged and give the same tokens.

``data/pre_restructuring_tasks.pt`` holds, for a single-modality task (with and without
registers) and two fusion tasks, the hyper-parameters, the full ``state_dict`` and the
teacher's tokens of one input, as the code before the restructuring of issue 13 wrote them.
"""

import json
from pathlib import Path

import pytest
import torch

from geodino.export import export_backbone, load_backbone
from geodino.tasks import DINOv2Task

DATA = Path(__file__).parent / "data" / "pre_restructuring_tasks.pt"
CASES = ["single", "single_cls", "fusion_xattn", "fusion_linear"]


@pytest.fixture(scope="module")
def saved() -> dict[str, dict[str, object]]:
    return torch.load(DATA, weights_only=True)


@pytest.mark.parametrize("case", CASES)
def test_old_state_dict_loads_strictly_with_the_same_keys(
    saved: dict[str, dict[str, object]], case: str
) -> None:
    entry = saved[case]
    state = entry["state_dict"]
    assert isinstance(state, dict)
    task = DINOv2Task(**entry["hyper_parameters"])  # type: ignore[arg-type]
    assert list(task.state_dict()) == list(state)
    task.load_state_dict(state, strict=True)
    with torch.no_grad():
        tokens = task.eval()(entry["input"])  # type: ignore[arg-type]
    torch.testing.assert_close(tokens, entry["tokens"], rtol=0, atol=0)


@pytest.mark.parametrize("case", ["single", "single_cls"])
def test_old_checkpoint_exports_and_embeds_the_same(
    saved: dict[str, dict[str, object]], case: str, tmp_path: Path
) -> None:
    entry = saved[case]
    ckpt = tmp_path / "task.ckpt"
    torch.save(
        {"hyper_parameters": entry["hyper_parameters"], "state_dict": entry["state_dict"]}, ckpt
    )
    x = entry["input"]
    assert isinstance(x, torch.Tensor)
    trained = load_backbone(ckpt)
    with torch.no_grad():
        # no statistics: the input is taken as normalised
        torch.testing.assert_close(trained.tokens(x), entry["tokens"], rtol=0, atol=0)
    # the export holds the grid resampled to timm's default size, where both agree
    export_backbone(ckpt, tmp_path / "export")
    exported = load_backbone(tmp_path / "export")
    size = exported.meta["img_size"][0]
    big = torch.nn.functional.interpolate(x, size=(size, size))
    with torch.no_grad():
        torch.testing.assert_close(exported.tokens(big), trained.tokens(big))


def test_parameter_groups_are_unchanged() -> None:
    # layer-wise lr decay and weight decay groups as DINOv2Task formed them before (3 blocks)
    saved = json.loads((DATA.parent / "pre_restructuring_param_groups.json").read_text())
    kwargs = {"embed_dim": 16, "depth": 3, "num_heads": 2, "img_size": 28}
    cases = {
        "single": {},
        "fusion_xattn": {"modalities": {"s1": 1, "s2": 2}, "fusion": "xattn"},
        "fusion_linear_ibot": {
            "modalities": {"s1": 1, "s2": 2},
            "fusion": "linear",
            "ibot_separate_head": True,
        },
    }
    for name, extra in cases.items():
        task = DINOv2Task(
            model="vit_small_patch14_reg4_dinov2",
            in_chans=3,
            model_kwargs=kwargs,
            head_out_dim=8,
            head_hidden_dim=8,
            head_bottleneck_dim=4,
            head_nlayers=2,
            **extra,  # type: ignore[arg-type]
        )
        names = {id(p): n for n, p in task.named_parameters()}
        groups = [
            {
                "lr_multiplier": g["lr_multiplier"],
                "wd_multiplier": g["wd_multiplier"],
                "is_last_layer": g["is_last_layer"],
                "params": [names[id(p)] for p in g["params"]],
            }
            for g in task.configure_optimizers().param_groups
        ]
        assert groups == saved[name], name


def test_a_fusion_checkpoint_loads_like_a_fusion_export(
    saved: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    # both sources go through one BackboneSpec: a training checkpoint of a FusionViT is read
    # as that FusionViT, not as a plain ViT with a random patch embedding
    entry = saved["fusion_linear"]
    ckpt = tmp_path / "fusion.ckpt"
    torch.save(
        {"hyper_parameters": entry["hyper_parameters"], "state_dict": entry["state_dict"]}, ckpt
    )
    export_backbone(ckpt, tmp_path / "export")
    state = entry["state_dict"]
    assert isinstance(state, dict)
    for source in (ckpt, tmp_path / "export"):
        backbone = load_backbone(source)
        assert backbone.model.modalities is not None
        loaded = backbone.model.state_dict()
        for key in loaded.keys() - {"pos_embed"}:  # an export holds timm's default grid
            torch.testing.assert_close(loaded[key], state[f"teacher.backbone.{key}"])
