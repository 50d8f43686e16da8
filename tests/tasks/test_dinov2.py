"""DINOv2Task with real Lightning Trainers on tiny models."""

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from geodino.datamodules import FolderDINODataModule
from geodino.errors import ConfigError
from geodino.tasks import DINOv2Task
from geodino.tasks.loss_check import DeferredLossCheck
from geodino.tasks.schedules import CosineSchedule
from geodino.transforms.normalize import BandStatistics

TINY = {"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2}
MULTICROP = {"global_crops_size": 28, "local_crops_size": 14, "local_crops_number": 2}


class Blobs(torch.utils.data.Dataset):
    """Small 4-band images with structure, deterministic."""

    band_names: ClassVar[list[str]] = ["b1", "b2", "b3", "b4"]

    def __init__(self, n: int = 64, size: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        base = torch.rand(n, 4, size // 4, size // 4, generator=g)
        self.images = torch.nn.functional.interpolate(base, size=size, mode="bilinear") * 1000

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


def task(**overrides: Any) -> DINOv2Task:
    args: dict[str, Any] = dict(
        model="vit_small_patch14_reg4_dinov2",
        in_chans=4,
        model_kwargs=TINY,
        head_out_dim=64,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        head_nlayers=2,
        checkpoint_every_n_steps=5,
        keep_last_k=2,
        lr_reference_batch=8,
    )
    args.update(overrides)
    return DINOv2Task(**args)


def datamodule(**overrides: Any) -> FolderDINODataModule:
    args: dict[str, Any] = dict(batch_size=4, seed=0, multicrop=MULTICROP, statistics_chips=16)
    args.update(overrides)
    return FolderDINODataModule(Blobs(), **args)


def trainer(root: Path, max_steps: int, **overrides: Any) -> Trainer:
    args: dict[str, Any] = dict(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        log_every_n_steps=1,
    )
    args.update(overrides)
    return Trainer(**args)


def test_schedule_warmup_then_cosine() -> None:
    s = CosineSchedule(1.0, 0.0, total_steps=110, warmup_steps=10, freeze_steps=0)
    assert s(0) == 0.0 and s(5) == pytest.approx(0.5) and s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5) and s(109) < 0.01 and s(500) == 0.0
    frozen = CosineSchedule(1.0, 0.0, total_steps=110, warmup_steps=10, freeze_steps=3)
    assert frozen(2) == 0.0 and frozen(3) == 0.0 and frozen(8) == pytest.approx(0.5)


def test_fit_trains_teacher_and_writes_summary(tmp_path: Path) -> None:
    model = task()
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    fit = trainer(tmp_path, 6)
    fit.fit(model, datamodule())
    assert fit.global_step == 6
    after = model.teacher.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # teacher lags the student (EMA), it is not a copy
    s = dict(model.student.named_parameters())
    t = dict(model.teacher.named_parameters())
    assert any(not torch.equal(s[k], t[k]) for k in s)
    metrics = fit.callback_metrics
    for key in (
        "train_loss",
        "train/dino_loss",
        "train/ibot_loss",
        "train/koleo_loss",
        "train/teacher_entropy",
        "train/teacher_feature_std",
    ):
        assert torch.isfinite(metrics[key]), key
    run = Path(fit.log_dir)
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["steps"] == 6 and len(summary["history"]) == 6
    assert (run / "training_curves.png").stat().st_size > 0
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and not any(n.endswith(".tmp") for n in ckpts)


def test_last_layer_frozen_then_trained(tmp_path: Path) -> None:
    model = task(freeze_last_layer_fraction=1.0)
    start = {k: v.clone() for k, v in model.student["dino_head"].last_layer.state_dict().items()}
    fit = trainer(tmp_path, 4, enable_checkpointing=False, logger=False)
    fit.fit(model, datamodule())
    mid = model.student["dino_head"].last_layer.state_dict()
    assert all(torch.equal(start[k], mid[k]) for k in start)
    fit = trainer(tmp_path, 2, enable_checkpointing=False, logger=False)
    model2 = task(freeze_last_layer_fraction=0.0)
    start2 = {k: v.clone() for k, v in model2.student["dino_head"].last_layer.state_dict().items()}
    fit.fit(model2, datamodule())
    after2 = model2.student["dino_head"].last_layer.state_dict()
    assert any(not torch.equal(start2[k], after2[k]) for k in start2)


class Crash(Callback):
    """Stops the process-like run abruptly after a given step (checkpoints already written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_after_crash_matches_straight_run(tmp_path: Path) -> None:
    steps = 300
    torch.manual_seed(0)
    straight = task(checkpoint_every_n_steps=50)
    trainer(tmp_path / "a", steps, logger=False).fit(straight, datamodule())

    torch.manual_seed(0)
    crashed = task(checkpoint_every_n_steps=50)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer(tmp_path / "b", steps, logger=False, callbacks=[Crash(130)]).fit(
            crashed, datamodule()
        )
    torch.manual_seed(123)  # a resumed process starts with other RNG state and weights
    resumed = task(checkpoint_every_n_steps=50)
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 100
    trainer(tmp_path / "b", steps, logger=False).fit(resumed, datamodule(), ckpt_path=last)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_in_chans_must_match_the_data(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="in_chans=3 but the data deliver 4 bands"):
        trainer(tmp_path, 1, logger=False).fit(task(in_chans=3), datamodule())


def test_crop_size_must_divide_by_patch(tmp_path: Path) -> None:
    dm = datamodule(multicrop={**MULTICROP, "local_crops_size": 15})
    with pytest.raises(ConfigError, match="local_crops_size=15 is not divisible"):
        trainer(tmp_path, 1, logger=False).fit(task(), dm)


def test_koleo_needs_two_samples(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KoLeo"):
        trainer(tmp_path, 1, logger=False).fit(task(), datamodule(batch_size=1))


def test_non_finite_loss_names_the_step(tmp_path: Path) -> None:
    stats = BandStatistics(Blobs.band_names, [0.0] * 4, [1e-35] * 4)
    path = stats.save(tmp_path / "stats.yaml")
    fit = trainer(tmp_path, 3, logger=False)
    with pytest.raises(FloatingPointError, match="step 0"):
        fit.fit(task(), datamodule(statistics=path))
    assert not list(tmp_path.rglob("*.ckpt"))


def test_deferred_loss_check_keeps_a_non_finite_loss_out_of_checkpoints(tmp_path: Path) -> None:
    # as on an accelerator: the losses are read back every 100 steps only, yet the first
    # checkpoint (step 2) reads them first and names step 0
    stats = BandStatistics(Blobs.band_names, [0.0] * 4, [1e-35] * 4)
    path = stats.save(tmp_path / "stats.yaml")
    model = task(checkpoint_every_n_steps=2)
    model._loss_check = DeferredLossCheck(every_n_steps=100, every_step_on_cpu=False)
    with pytest.raises(FloatingPointError, match="step 0"):
        trainer(tmp_path, 4, logger=False).fit(model, datamodule(statistics=path))
    assert not list(tmp_path.rglob("*.ckpt"))


def test_deferred_loss_check_reads_in_batches() -> None:
    check = DeferredLossCheck(every_n_steps=3, every_step_on_cpu=False)
    assert not check.due and check.read() is None
    for step, value in enumerate([1.0, 2.0]):
        check.push(step, {"loss": torch.tensor(value), "dino_loss": torch.tensor(value / 2)})
        assert not check.due
    check.push(2, {"loss": torch.tensor(3.0)})
    assert check.due and check.read() == 3.0 and not check.due
    for step, value in [(3, 1.0), (4, float("inf")), (5, float("nan"))]:
        check.push(step, {"loss": torch.tensor(value), "ibot_loss": torch.tensor(value)})
    with pytest.raises(FloatingPointError, match=r"step 4: \{'loss': inf, 'ibot_loss': inf\}"):
        check.read()
    assert check.read() is None  # what was read is forgotten


def test_max_steps_required(tmp_path: Path) -> None:
    fit = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ConfigError, match="max_steps"):
        fit.fit(task(), datamodule())


def test_inf_in_a_batch_names_the_band(tmp_path: Path) -> None:
    data = Blobs()
    data.images[3, 2, 5, 5] = float("inf")
    dm = FolderDINODataModule(
        data,
        batch_size=4,
        seed=0,
        multicrop=MULTICROP,
        statistics=BandStatistics(Blobs.band_names, [0.0] * 4, [1.0] * 4).save(tmp_path / "s.yaml"),
    )
    with pytest.raises(Exception, match=r"inf values in bands \['b3'\]"):
        trainer(tmp_path, 20, logger=False, enable_checkpointing=False).fit(task(), dm)


def test_wandb_offline_run_keeps_the_key_out_of_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch.loggers import WandbLogger

    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="geodino-test", save_dir=str(tmp_path), offline=True)
    fit = trainer(tmp_path, 2, logger=logger)
    fit.fit(task(), datamodule())
    logger.experiment.finish()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
