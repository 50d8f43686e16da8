"""The collapse guard during real (tiny) pretraining runs on generated GeoTIFFs.

A recipe that is known to collapse (softmax centring of a teacher without sharpening,
temperature 1 instead of 0.04-0.07: Caron et al. 2021 show that centring without sharpening
gives uniform targets, here from the first steps, and the features shrink too) must make
the guard warn, record the collapse and, when asked, stop the run; the demo recipe at the
same size must leave it silent.
"""

import importlib
import json
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer

from geodino.callbacks import CollapseGuard
from geodino.datamodules import GeoDINODataModule
from geodino.errors import CollapseError, ConfigError
from geodino.tasks import DINOv2Task

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: What makes the demo recipe collapse at CI size: softmax centring without sharpening.
COLLAPSING = {
    "centering": "softmax",
    "teacher_temp": 1.0,
    "warmup_teacher_temp": 1.0,
    "koleo_loss_weight": 0.0,
}
GUARD = {"check_every_n_steps": 2, "patience": 3, "min_step": 4}


def benchmark_module(name: str) -> ModuleType:
    """A module of benchmarks/ (they import each other by bare name)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Any:
    catalogs = benchmark_module("stability_catalogs")
    root = tmp_path_factory.mktemp("spectral8")
    return catalogs.write_catalog("spectral8", root, scenes=1, grid=4, tile=32, chips_per_class=2)


def fit(
    catalog: Any, root: Path, steps: int, guard: CollapseGuard, **overrides: Any
) -> tuple[Trainer, DINOv2Task]:
    stability = benchmark_module("recipe_stability")
    size = stability.SIZES["ci"]
    task_args, data_args = stability.recipe("demo", size, len(catalog.band_names))
    data_args["batch_size"] = 4
    task_args.update(overrides, checkpoint_every_n_steps=4, keep_last_k=1)
    torch.manual_seed(0)
    task = DINOv2Task(**task_args)
    datamodule = GeoDINODataModule(catalog.dataset(), seed=0, **data_args)
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[guard],
    )
    trainer.fit(task, datamodule)
    return trainer, task


def test_guard_warns_and_records_a_collapse(
    catalog: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guard = CollapseGuard(**GUARD)
    with caplog.at_level(logging.WARNING, logger="geodino.callbacks.collapse"):
        trainer, _ = fit(catalog, tmp_path, 12, guard, **COLLAPSING)
    assert guard.collapsed_at is not None and guard.collapsed_at <= 10, guard.checks
    warning = next(r.message for r in caplog.records if "Pretraining collapsed" in r.message)
    assert f"at step {guard.collapsed_at}" in warning and "of its maximum log(32)" in warning
    assert "sinkhorn_knopp" in warning and "base_lr" in warning
    summary = json.loads((Path(trainer.log_dir) / "metrics.json").read_text())["collapse"]
    assert summary["verdict"] == f"collapsed at step {guard.collapsed_at}"
    assert summary["last_check"]["collapsed"]
    assert trainer.global_step == 12  # warned, not stopped


def test_guard_stops_the_run_when_asked(catalog: Any, tmp_path: Path) -> None:
    guard = CollapseGuard(stop_on_collapse=True, **GUARD)
    with pytest.raises(CollapseError, match="Pretraining collapsed at step"):
        fit(catalog, tmp_path, 200, guard, **COLLAPSING)
    assert guard.collapsed_at is not None and guard.collapsed_at <= 10
    run = next((tmp_path / "lightning_logs").iterdir())
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["steps"] == guard.collapsed_at
    assert summary["collapse"]["verdict"] == f"collapsed at step {guard.collapsed_at}"
    # the last checkpoint, from before the collapse was declared, is whole and resumable
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert 0 < checkpoint["global_step"] < guard.collapsed_at
    state = next(v for k, v in checkpoint["callbacks"].items() if "CollapseGuard" in k)
    resumed = CollapseGuard(**GUARD)
    resumed.load_state_dict(state)
    assert [c.step for c in resumed.checks] == [
        c.step for c in guard.checks if c.step <= checkpoint["global_step"]
    ]


def test_guard_stays_silent_on_a_healthy_run(
    catalog: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guard = CollapseGuard(**GUARD)
    with caplog.at_level(logging.WARNING, logger="geodino.callbacks.collapse"):
        trainer, _ = fit(catalog, tmp_path, 20, guard)
    assert guard.collapsed_at is None, guard.checks
    assert not [r for r in caplog.records if r.name == "geodino.callbacks.collapse"]
    summary = json.loads((Path(trainer.log_dir) / "metrics.json").read_text())["collapse"]
    assert summary["verdict"] == "healthy" and len(summary["checks"]) == 10
    # the batch spreads its targets over many prototypes: no prototype wins
    assert all(c["prototypes_used"] > 4 for c in summary["checks"]), summary["checks"]


def test_guard_judges_after_twice_the_warmup(catalog: Any) -> None:
    stability = benchmark_module("recipe_stability")
    task_args, _ = stability.recipe("demo", stability.SIZES["ci"], len(catalog.band_names))
    task = DINOv2Task(**{**task_args, "warmup_fraction": 0.1})
    for max_steps, min_step, judged_from in ((3000, None, 600), (500, None, 200), (3000, 50, 50)):
        task.trainer = Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False)
        guard = CollapseGuard(min_step=min_step)
        guard.setup(task.trainer, task, "fit")
        assert guard.judged_from == judged_from
        assert guard.num_prototypes == task_args["head_out_dim"]


def test_guard_records_a_recovery() -> None:
    guard = CollapseGuard(patience=2, min_step=10, num_prototypes=32)
    verdicts = [(5, True), (10, True), (15, False), (20, True), (25, True), (30, True)]
    changes = [guard._advance(step, collapsed) for step, collapsed in verdicts]
    assert changes == [None, None, None, None, "collapsed", None]  # not judged before 10
    assert guard.collapsed_at == 25 and guard.verdict == "collapsed at step 25"
    assert [guard._advance(s, False) for s in (35, 40)] == [None, "recovered"]
    assert guard.collapsed_at is None
    guard.checks = [guard._check(40, 1.0, 0.1)]
    assert guard.verdict == "healthy (collapsed at step 25, recovered by step 40)"
    resumed = CollapseGuard(patience=2, min_step=10, num_prototypes=32)
    resumed.load_state_dict(guard.state_dict())
    assert resumed.episodes == guard.episodes and resumed.verdict == guard.verdict
    # a checkpoint written before recoveries were tracked
    legacy = CollapseGuard(patience=2, min_step=10, num_prototypes=32)
    legacy.load_state_dict({"checks": [], "peak_spread": 0.1, "streak": 0, "collapsed_at": 25})
    assert legacy.collapsed_at == 25


def test_one_winning_prototype_is_a_collapse() -> None:
    guard = CollapseGuard(num_prototypes=1024)
    healthy = guard._check(300, entropy=3.0, spread=0.1, prototypes_used=40.0)
    dominated = guard._check(325, entropy=0.01, spread=0.1, prototypes_used=1.02)
    assert not healthy.collapsed and dominated.collapsed
    assert "one prototype wins" in guard._usage(dominated)


def test_every_dinov2_run_gets_a_guard_unless_the_trainer_has_one() -> None:
    task = DINOv2Task(
        model_kwargs={"img_size": 28, "embed_dim": 32, "depth": 1, "num_heads": 2},
        head_out_dim=16,
        head_hidden_dim=16,
        head_bottleneck_dim=8,
    )
    task.trainer = Trainer(logger=False, enable_checkpointing=False)
    assert [type(c) for c in task.configure_callbacks() if isinstance(c, CollapseGuard)] == [
        CollapseGuard
    ]
    task.trainer = Trainer(logger=False, callbacks=[CollapseGuard(enabled=False)])
    assert not any(isinstance(c, CollapseGuard) for c in task.configure_callbacks())


def test_guard_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="patience=0"):
        CollapseGuard(patience=0)
    with pytest.raises(ConfigError, match=r"max_entropy_ratio=1\.5"):
        CollapseGuard(max_entropy_ratio=1.5)
