"""geodino export: the files load unchanged into TorchGeo, timm and geodino."""

import functools
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from lightning.pytorch import Trainer
from safetensors.torch import load_file
from torchgeo.tasks import Classification

from geodino.cli import main
from geodino.datamodules import FolderDINODataModule
from geodino.errors import WeightsError
from geodino.export import export_backbone, load_backbone, write_export
from geodino.models import build_backbone
from geodino.tasks import DINOv2Task

BANDS = ["B02", "B03", "B04", "B08"]
#: timm's own architectures, as TorchGeo builds them, by patch size.
TIMM_MODELS = {14: "vit_small_patch14_reg4_dinov2", 16: "vit_tiny_patch16_224"}
#: a backbone narrower and shallower than timm's build of its name.
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


class Blobs(torch.utils.data.Dataset):
    """Small 4-band images with structure, deterministic."""

    band_names = BANDS

    def __init__(self, n: int = 16, size: int = 28) -> None:
        g = torch.Generator().manual_seed(0)
        base = torch.rand(n, 4, size // 4, size // 4, generator=g)
        self.images = torch.nn.functional.interpolate(base, size=size, mode="bilinear") * 1000

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


def dinov2_task(model: str, **model_kwargs: Any) -> DINOv2Task:
    """A DINOv2Task with tiny heads."""
    return DINOv2Task(
        model=model,
        in_chans=4,
        band_names=BANDS,
        model_kwargs=model_kwargs,
        head_out_dim=32,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        head_nlayers=2,
        lr_reference_batch=4,
        checkpoint_every_n_steps=2,
    )


def pretrain(root: Path, model: str, crop: int, steps: int = 2, **model_kwargs: Any) -> Path:
    """Train a DINOv2Task at ``crop`` px with a real Trainer for a few steps; its checkpoint."""
    torch.manual_seed(0)
    task = dinov2_task(model, img_size=crop, **model_kwargs)
    data = FolderDINODataModule(
        Blobs(size=crop),
        batch_size=2,
        seed=0,
        statistics_chips=8,
        multicrop={
            "global_crops_size": crop,
            "local_crops_size": crop // 2,
            "local_crops_number": 1,
        },
    )
    Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    ).fit(task, data)
    return root / "checkpoints" / "last.ckpt"


def task_checkpoint(root: Path, model: str) -> Path:
    """A checkpoint of a DINOv2Task built at timm's default size, as Lightning lays it out.

    Training timm's full ViT-S for even one step costs tens of seconds on two cores, so the
    TorchGeo-compatible backbones are saved untrained; the trained path is
    :func:`pretrain`'s (narrow backbones).
    """
    torch.manual_seed(0)
    task = dinov2_task(model)
    with torch.no_grad():  # teacher and student differ, as after training
        for p in task.student.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = root / "task.ckpt"
    torch.save(
        {
            "hyper_parameters": dict(task.hparams),
            "state_dict": task.state_dict(),
            "global_step": 0,
            "FolderDINODataModule": {
                "samples_seen": 0,
                "seed": 0,
                "statistics": {
                    "band_names": BANDS,
                    "mean": [1.0, 2.0, 3.0, 4.0],
                    "std": [0.5, 1.0, 1.5, 2.0],
                },
            },
        },
        path,
    )
    return path


@pytest.fixture(scope="module", params=sorted(TIMM_MODELS), ids=lambda p: f"patch{p}")
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Path]:
    """(timm name, task checkpoint, export folder) of a timm ViT as TorchGeo builds it."""
    name = TIMM_MODELS[request.param]
    root = tmp_path_factory.mktemp(f"patch{request.param}")
    ckpt = task_checkpoint(root, name)
    export_backbone(ckpt, root / "export")
    return name, ckpt, root / "export"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, export folder) of a narrow backbone trained at 28 px with a real Trainer."""
    root = tmp_path_factory.mktemp("trained")
    ckpt = pretrain(root, TIMM_MODELS[14], 28, **TINY)
    export_backbone(ckpt, root / "export")
    return ckpt, root / "export"


@functools.cache
def teacher_backbone(ckpt: Path) -> torch.nn.Module:
    """The teacher backbone exactly as the training checkpoint holds it."""
    state = torch.load(ckpt, weights_only=True)
    hp = state["hyper_parameters"]
    model = build_backbone(hp["model"], hp["in_chans"], **(hp["model_kwargs"] or {}))
    prefix = "teacher.backbone."
    model.load_state_dict(
        {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    )
    return model.eval()


def features(model: torch.nn.Module, size: int, seed: int = 1) -> torch.Tensor:
    """Final-norm tokens of ``model`` on a fixed random 4-band input."""
    x = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval().forward_features(x)


def test_torchgeo_classification_loads_every_tensor(exported: tuple[str, Path, Path]) -> None:
    name, ckpt, out = exported
    saved = load_file(str(out / "backbone.safetensors"))
    task = Classification(
        model=name, weights=str(out / "backbone.ckpt"), in_channels=4, num_classes=3
    )
    built = task.model.state_dict()
    assert set(built) - set(saved) == {"head.weight", "head.bias"}
    assert set(saved) <= set(built)
    for key, value in saved.items():
        torch.testing.assert_close(built[key], value, rtol=0, atol=0, msg=key)
    # TorchGeo builds at timm's default size only: the same features as the trained backbone
    size = task.model.patch_embed.img_size[0]
    assert [size, size] == json.loads((out / "backbone.json").read_text())["img_size"]
    torch.testing.assert_close(features(task.model, size), features(teacher_backbone(ckpt), size))


def test_safetensors_load_into_timm_and_geodino_unchanged(
    exported: tuple[str, Path, Path],
) -> None:
    name, ckpt, out = exported
    saved = load_file(str(out / "backbone.safetensors"))
    model = timm.create_model(name, in_chans=4, num_classes=0, dynamic_img_size=True)
    model.load_state_dict(saved, strict=True)
    # the .ckpt holds the same tensors under TorchGeo's `model.` prefix
    ckpt_file = torch.load(out / "backbone.ckpt", weights_only=True)
    assert set(ckpt_file["state_dict"]) == {f"model.{k}" for k in saved}
    for key, value in saved.items():
        assert torch.equal(ckpt_file["state_dict"][f"model.{key}"], value), key
    backbone = load_backbone(out)
    assert backbone.band_names == BANDS and backbone.statistics is not None
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    # any input size a patch multiple: timm, geodino and the trained teacher agree
    size = 2 * backbone.patch_size
    teacher = features(teacher_backbone(ckpt), size)
    torch.testing.assert_close(features(model, size), teacher)
    torch.testing.assert_close(features(backbone.model, size), teacher)


def test_sidecar_describes_the_backbone(exported: tuple[str, Path, Path]) -> None:
    name, _, out = exported
    meta = json.loads((out / "backbone.json").read_text())
    model = timm.create_model(name, in_chans=4)
    assert meta["model"] == name and meta["in_chans"] == 4 and meta["bands"] == BANDS
    assert meta["patch_size"] == model.patch_embed.patch_size[0]
    assert meta["embed_dim"] == model.embed_dim
    assert meta["num_prefix_tokens"] == model.num_prefix_tokens
    assert meta["torchgeo_compatible"] is True and meta["model_kwargs"] == {}
    assert meta["statistics"]["std"] == [0.5, 1.0, 1.5, 2.0]
    assert meta["which"] == "teacher" and meta["geodino_version"]
    # TorchGeo reads the model name and the band count from the checkpoint's hyper-parameters
    hp = torch.load(out / "backbone.ckpt", weights_only=True)["hyper_parameters"]
    assert hp["model"] == name and hp["in_channels"] == 4


def test_trained_backbone_is_resampled_to_the_default_grid(trained: tuple[Path, Path]) -> None:
    ckpt, out = trained
    meta = json.loads((out / "backbone.json").read_text())
    # trained with fewer, narrower blocks than timm's build of its name: geodino loads it,
    # TorchGeo's Classification (which builds timm's default architecture) cannot
    assert meta["torchgeo_compatible"] is False and meta["model_kwargs"] == TINY
    assert meta["train_img_size"] == 28 and meta["img_size"] == [518, 518]
    assert meta["bands"] == BANDS and meta["global_step"] == 2
    stats = meta["statistics"]
    assert stats["band_names"] == BANDS and all(s > 0 for s in stats["std"])
    saved = load_file(str(out / "backbone.safetensors"))
    assert saved["pos_embed"].shape == (1, 37 * 37, 32)
    timm.create_model(TIMM_MODELS[14], in_chans=4, **TINY).load_state_dict(saved, strict=False)
    # at timm's default size both grids resample the same way: the trained teacher's features
    backbone = load_backbone(out)
    assert len(backbone.model.blocks) == 2 and backbone.embed_dim == 32
    torch.testing.assert_close(features(backbone.model, 518), features(teacher_backbone(ckpt), 518))
    # TorchGeo refuses its checkpoint rather than loading part of it; geodino reads it
    with pytest.raises(ValueError, match="Unknown checkpoint task"):
        Classification(
            model=TIMM_MODELS[14], in_channels=4, num_classes=2, weights=str(out / "backbone.ckpt")
        )
    from_ckpt = build_backbone(TIMM_MODELS[14], 4, weights=out / "backbone.ckpt", **TINY)
    assert all(torch.equal(v, saved[k]) for k, v in from_ckpt.state_dict().items())


def test_shallower_backbone_is_not_half_loaded_by_torchgeo(tmp_path: Path) -> None:
    # same width as timm's vit_tiny, 2 blocks of 12: TorchGeo (strict=False) would load two
    # blocks and keep ten random ones; the export keeps it from doing so
    vit = timm.create_model("vit_tiny_patch16_224", in_chans=3, depth=2, num_classes=0)
    write_export(vit.state_dict(), tmp_path, "vit_tiny_patch16_224", 3, model_kwargs={"depth": 2})
    assert json.loads((tmp_path / "backbone.json").read_text())["torchgeo_compatible"] is False
    with pytest.raises(ValueError, match="Unknown checkpoint task"):
        Classification(
            model="vit_tiny_patch16_224",
            in_channels=3,
            num_classes=2,
            weights=str(tmp_path / "backbone.ckpt"),
        )


def test_student_export_differs_from_teacher(trained: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, out = trained
    export_backbone(ckpt, tmp_path, which="student")
    student = load_file(str(tmp_path / "backbone.safetensors"))
    teacher = load_file(str(out / "backbone.safetensors"))
    assert student.keys() == teacher.keys()
    assert any(not torch.equal(student[k], teacher[k]) for k in student)
    assert json.loads((tmp_path / "backbone.json").read_text())["which"] == "student"


def test_cli_export_writes_the_three_files(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, out = trained
    assert main(["export", str(ckpt), str(tmp_path / "cli")]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == [
        "backbone.ckpt",
        "backbone.json",
        "backbone.safetensors",
    ]
    assert "backbone.safetensors" in capsys.readouterr().out
    a = load_file(str(tmp_path / "cli" / "backbone.safetensors"))
    b = load_file(str(out / "backbone.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)


# --- bad input ----------------------------------------------------------------------------
def test_checkpoint_of_another_task_is_refused(tmp_path: Path) -> None:
    other = Classification(model="resnet18", in_channels=4, num_classes=2)
    path = tmp_path / "resnet.ckpt"
    torch.save(
        {
            "hyper_parameters": dict(other.hparams),
            "state_dict": {f"model.{k}": v for k, v in other.model.state_dict().items()},
        },
        path,
    )
    with pytest.raises(WeightsError, match="geodino hyper-parameters"):
        export_backbone(path, tmp_path / "out")
    # a geodino-looking checkpoint without the backbone
    torch.save(
        {
            "hyper_parameters": {"model": "vit_small_patch14_dinov2", "in_chans": 4},
            "state_dict": {"student.dino_head.last_layer.weight": torch.zeros(2, 2)},
        },
        path,
    )
    with pytest.raises(WeightsError, match=r"no 'teacher\.backbone"):
        export_backbone(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


class Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("code ran while loading",))


def test_pickled_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as handle:
        pickle.dump(
            {"hyper_parameters": {"model": "x", "in_chans": 4}, "payload": Payload()},
            handle,
            protocol=2,
        )
    torch.save({"state_dict": {}, "payload": Payload()}, tmp_path / "evil_torch.ckpt")
    for file in (path, tmp_path / "evil_torch.ckpt"):
        with pytest.raises(WeightsError, match="would run code"):
            export_backbone(file, tmp_path / "out")
    assert "code ran" not in capsys.readouterr().out


def test_missing_and_empty_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        export_backbone(tmp_path / "nope.ckpt", tmp_path / "out")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        export_backbone(tmp_path / "empty.ckpt", tmp_path / "out")


def test_cli_bad_checkpoint_exits_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
