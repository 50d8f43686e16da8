"""Every private API of torch, timm, TorchGeo and Lightning that geodino uses still exists.

pyproject.toml bounds these libraries to the versions tested; a test here fails, naming the
private API and where geodino uses it, when a lifted bound meets a release without it.
"""

import inspect
from collections.abc import Callable

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from torchgeo.datasets import RasterDataset


def _parameters(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


def _check(ok: bool, api: str, user: str) -> None:
    if not ok:
        pytest.fail(
            f"private API {api} (used by {user}) is gone or changed in the installed version; "
            "adapt geodino or restore the upper bound in pyproject.toml."
        )


def test_torch_privates() -> None:
    # geodino/tasks/dinov2.py: the EMA teacher update, as the official DINOv2 does it
    params, others = [torch.ones(2)], [torch.full((2,), 3.0)]
    for name in ("_foreach_mul_", "_foreach_add_"):
        _check(callable(getattr(torch, name, None)), f"torch.{name}", "DINOv2Task._update_teacher")
    torch._foreach_mul_(params, 0.5)
    torch._foreach_add_(params, others, alpha=0.5)
    _check(torch.equal(params[0], torch.full((2,), 2.0)), "torch._foreach_*_", "DINOv2Task")
    # geodino/datamodules.py: shared-memory batch slots of the loader workers
    like = torch.zeros(3)
    typed = getattr(like, "_typed_storage", None)
    _check(callable(typed), "Tensor._typed_storage", "geodino.datamodules")
    storage = like._typed_storage()
    new_shared = getattr(storage, "_new_shared", None)
    _check(callable(new_shared), "TypedStorage._new_shared", "geodino.datamodules")
    shared = storage._new_shared(4, device=like.device)
    _check(shared.size() == 4, "TypedStorage._new_shared", "geodino.datamodules")


def test_lightning_privates() -> None:
    # geodino/checkpoints.py: AtomicModelCheckpoint overrides the save and keeps the state
    save = getattr(ModelCheckpoint, "_save_checkpoint", None)
    _check(
        save is not None and _parameters(save) == ["self", "trainer", "filepath"],
        "ModelCheckpoint._save_checkpoint(trainer, filepath)",
        "geodino.checkpoints.AtomicModelCheckpoint",
    )
    callback = ModelCheckpoint()
    for name in ("_last_global_step_saved", "_last_checkpoint_saved"):
        _check(hasattr(callback, name), f"ModelCheckpoint.{name}", "AtomicModelCheckpoint")
    # geodino/tasks/dinov2.py: a task built outside a Trainer has no trainer yet
    _check(LightningModule()._trainer is None, "LightningModule._trainer", "DINOv2Task.setup")
    # geodino/config.py: the CLI explains unreadable --ckpt_path files
    parse = getattr(LightningCLI, "_parse_ckpt_path", None)
    _check(
        parse is not None and _parameters(parse) == ["self"],
        "LightningCLI._parse_ckpt_path()",
        "geodino.config.GeoDINOCLI",
    )


def test_torchgeo_privates() -> None:
    # geodino/datasets/geotiff.py and sentinel.py override or call RasterDataset's file reads
    expected = {
        "_load_warp_file": ["self", "filepath", "crs"],
        "_cached_load_warp_file": ["self", "filepath", "crs"],
        "_update_filepath": ["self", "band", "filepath"],
    }
    for name, parameters in expected.items():
        method = getattr(RasterDataset, name, None)
        found = None if method is None else _parameters(getattr(method, "__wrapped__", method))
        _check(
            found == parameters,
            f"torchgeo RasterDataset.{name}({', '.join(parameters[1:])})",
            "geodino.datasets.geotiff / geodino.datasets.sentinel",
        )
    # geodino/datasets/stac.py sets what RasterDataset.__init__ would (its index opens every
    # file) and reads queries as GeoDataset does
    disambiguate = getattr(RasterDataset, "_disambiguate_slice", None)
    _check(
        disambiguate is not None and _parameters(disambiguate) == ["self", "index"],
        "torchgeo GeoDataset._disambiguate_slice(index)",
        "geodino.datasets.stac.STACCatalog",
    )
    _check(
        RasterDataset._res == (0.0, 0.0) and "_res" in inspect.getsource(RasterDataset),
        "torchgeo GeoDataset._res (what the res property returns)",
        "geodino.datasets.stac.STACCatalog",
    )


def test_timm_uses_public_apis_only() -> None:
    # geodino/models/timm_adapter.py and backbones.py: these come from timm's public modules
    import timm.models
    from timm.layers import pos_embed

    for name in ("VisionTransformer", "checkpoint_seq", "adapt_input_conv"):
        _check(hasattr(timm.models, name), f"timm.models.{name}", "geodino.models")
    _check(
        hasattr(pos_embed, "resample_abs_pos_embed"),
        "timm.layers.pos_embed.resample_abs_pos_embed",
        "geodino.models",
    )
