"""Weights and configs never run code, and secrets stay out of what a run writes.

The malicious checkpoint is a real pickle whose ``__reduce__`` creates a marker file when
unpickled; every geodino path that reads weights must refuse it and leave no marker.
"""

import pathlib
import re
from pathlib import Path

import pytest
import torch
from harness import geodino, write_catalog, write_config

from geodino.errors import WeightsError
from geodino.models.backbones import build_backbone

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this object touches ``marker``: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint-shaped pickle with the payload, and the marker it would create."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    state = {
        "state_dict": {"teacher.backbone.blocks.0.norm1.weight": torch.ones(4)},
        "global_step": 3,
        "hyper_parameters": {"payload": Payload(marker)},
    }
    torch.save(state, path)
    # the payload is live: a plain unpickling runs it
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_resume_refuses_a_malicious_checkpoint(tmp_path: Path, evil: tuple[Path, Path]) -> None:
    path, marker = evil
    write_catalog(tmp_path / "tiles")
    out = geodino("fit", "--config", str(write_config(tmp_path, "run")), "--ckpt_path", str(path))
    assert out.returncode == 2, out.stderr[-3000:]
    assert str(path) in out.stderr and "refuses" in out.stderr
    assert not marker.exists()


def test_build_backbone_refuses_a_malicious_checkpoint(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    with pytest.raises(WeightsError, match="would run code"):
        build_backbone(
            "vit_small_patch14_reg4_dinov2",
            4,
            weights=path,
            img_size=28,
            embed_dim=32,
            depth=1,
            num_heads=2,
        )
    assert not marker.exists()


def test_export_refuses_a_malicious_checkpoint(tmp_path: Path, evil: tuple[Path, Path]) -> None:
    path, marker = evil
    out = geodino("export", str(path), str(tmp_path / "out"))
    assert out.returncode == 2, out.stderr[-3000:]
    assert str(path) in out.stderr and "refuses" in out.stderr
    assert not marker.exists() and not (tmp_path / "out" / "backbone.ckpt").exists()


def test_embed_refuses_a_malicious_checkpoint(tmp_path: Path, evil: tuple[Path, Path]) -> None:
    path, marker = evil
    write_catalog(tmp_path / "tiles")
    out = geodino(
        "embed",
        str(path),
        str(tmp_path / "tiles" / "scene0.tif"),
        "--out",
        str(tmp_path / "emb.tif"),
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert str(path) in out.stderr and "refuses" in out.stderr
    assert not marker.exists() and not (tmp_path / "emb.tif").exists()


def test_every_torch_load_is_weights_only() -> None:
    calls = []
    for path in sorted((ROOT / "geodino").rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            calls.append((path.name, match.group(1)))
        assert "allow_pickle=True" not in text, path
    assert calls, "geodino reads checkpoints somewhere"
    for name, args in calls:
        assert "weights_only=True" in args, (name, args)


def test_wandb_key_stays_out_of_configs_hparams_logs_and_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "0123456789abcdef0123456789abcdef0badc0de"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    write_catalog(tmp_path / "tiles")
    logger = {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {
            "project": "geodino-test",
            "save_dir": str(tmp_path / "wandb"),
            "offline": True,
        },
    }
    cfg = write_config(tmp_path, "run", logger=logger, max_steps=6, log_every_n_steps=1)
    out = geodino("fit", "--config", str(cfg))
    assert out.returncode == 0, out.stderr[-3000:]
    assert secret not in out.stdout + out.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert "config.yaml" in names and "last.ckpt" in names
    assert any(p.suffix == ".wandb" for p in written)
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
    hparams = torch.load(next(p for p in written if p.name == "last.ckpt"), weights_only=True)[
        "hyper_parameters"
    ]
    assert secret not in repr(hparams)
