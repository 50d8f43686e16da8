"""SIGKILL real ``geodino fit`` processes mid-step, mid-checkpoint-write and mid-validation.

Each killed run is resumed with ``--ckpt_path last`` and must end with exactly the weights of
an uninterrupted run; no complete-looking checkpoint may ever be truncated, and a truncated
file handed to ``--ckpt_path`` must give a one-paragraph error, not a torch traceback.
"""

from pathlib import Path
from typing import Any

import pytest
import torch
from harness import STEPS, geodino, write_catalog, write_config


def checkpoints(run: Path) -> Path:
    return run / "checkpoints"


def assert_no_truncated_checkpoint(folder: Path) -> None:
    """Every ``*.ckpt`` reads in full; only ``*.tmp`` files may be partial."""
    for path in folder.glob("*.ckpt"):
        state = torch.load(path, weights_only=True)
        assert "state_dict" in state and "global_step" in state, path


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoints(run) / "last.ckpt", weights_only=True)
    assert state["global_step"] == STEPS
    return state["state_dict"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """The catalog and the final weights of an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("faults")
    write_catalog(tmp / "tiles")
    out = geodino("fit", "--config", str(write_config(tmp, "straight")))
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, final_weights(tmp / "straight")


def kill_then_resume(tmp: Path, run: str, expected_last: int, **faults: Any) -> Path:
    """Run with a fault plugin until SIGKILL, check the leftovers, resume with ``last``."""
    killed = geodino("fit", "--config", str(write_config(tmp, run, **faults)))
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
    folder = checkpoints(tmp / run)
    assert_no_truncated_checkpoint(folder)
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["global_step"] == expected_last
    resumed = geodino("fit", "--config", str(write_config(tmp, run)), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    assert not list(folder.glob("*.tmp"))
    assert_no_truncated_checkpoint(folder)
    return tmp / run


def assert_same_weights(run: Path, expected: dict[str, torch.Tensor]) -> None:
    got = final_weights(run)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


def test_sigkill_mid_step_resumes_exactly(straight: tuple) -> None:
    tmp, expected = straight
    run = kill_then_resume(
        tmp, "mid_step", 12,
        callbacks=[{"class_path": "faults.KillMidStep", "init_args": {"step": 15}}],
    )
    assert_same_weights(run, expected)


def test_sigkill_while_writing_a_checkpoint_resumes_exactly(straight: tuple) -> None:
    tmp, expected = straight
    run = "torn_write"
    killed = geodino("fit", "--config", str(write_config(
        tmp, run,
        plugins=[{"class_path": "faults.TornWriteCheckpointIO", "init_args": {"step": 12}}],
    )))
    assert killed.returncode == -9, killed.stderr[-3000:]
    folder = checkpoints(tmp / run)
    # the kill landed inside the write: a partial temporary file, the real names intact
    torn = list(folder.glob("*.tmp"))
    assert [p.name for p in torn] == ["step00000012.ckpt.tmp"]
    with pytest.raises(Exception):
        torch.load(torn[0], weights_only=True)
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["last.ckpt", "step00000006.ckpt"]
    assert_no_truncated_checkpoint(folder)
    resumed = geodino("fit", "--config", str(write_config(tmp, run)), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(folder.glob("*.tmp"))
    assert_no_truncated_checkpoint(folder)
    assert_same_weights(tmp / run, expected)


def test_sigkill_during_validation_resumes_exactly(straight: tuple) -> None:
    tmp, expected = straight
    run = kill_then_resume(
        tmp, "in_validation", 12,
        callbacks=[{"class_path": "faults.KillInValidation", "init_args": {"step": 16}}],
    )
    assert_same_weights(run, expected)


def test_truncated_checkpoint_gives_a_clear_error(straight: tuple) -> None:
    tmp, _ = straight
    source = checkpoints(tmp / "straight") / "step00000006.ckpt"
    for name, size in (("cut.ckpt", source.stat().st_size // 3), ("empty.ckpt", 0)):
        bad = tmp / name
        bad.write_bytes(source.read_bytes()[:size])
        out = geodino("fit", "--config", str(write_config(tmp, "bad_resume")),
                      "--ckpt_path", str(bad))
        assert out.returncode == 2, out.stderr[-3000:]
        assert f"checkpoint {bad}" in out.stderr
        assert "truncated" in out.stderr or "empty" in out.stderr
        assert "Traceback" not in out.stderr
