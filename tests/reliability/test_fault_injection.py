"""SIGKILL real ``geodino fit`` processes mid-step, mid-checkpoint-write and mid-validation.

Each killed run is resumed with ``--ckpt_path last`` and must end with exactly the weights of
an uninterrupted run (24 steps, checkpoints every 6, validation every 8); no complete-looking
checkpoint may ever be truncated, and a truncated file handed to ``--ckpt_path`` must give a
one-paragraph error, not a torch traceback.
"""

from pathlib import Path
from typing import Any

import pytest
import torch
from harness import STEPS, geodino, write_catalog, write_config

from geodino.checkpoints import SafeCheckpointIO
from geodino.errors import WeightsError


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


def assert_same_weights(run: Path, expected: dict[str, torch.Tensor]) -> None:
    got = final_weights(run)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


def kill(tmp: Path, run: str, expected_last: int, *resume: str, **faults: Any) -> None:
    """Run (or resume) with a fault plugin until SIGKILL, then check the leftovers."""
    killed = geodino("fit", "--config", str(write_config(tmp, run, **faults)), *resume)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
    folder = checkpoints(tmp / run)
    assert_no_truncated_checkpoint(folder)
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == expected_last


def test_sigkill_mid_step_then_in_validation_resumes_exactly(straight: tuple) -> None:
    tmp, expected = straight
    run = "mid_step"
    # killed after the backward pass of step 15: last.ckpt is step 12
    kill(tmp, run, 12, callbacks=[{"class_path": "faults.KillMidStep", "init_args": {"step": 15}}])
    # the resumed run is killed inside the validation after step 16: last.ckpt still 12
    kill(
        tmp,
        run,
        12,
        "--ckpt_path",
        "last",
        callbacks=[{"class_path": "faults.KillInValidation", "init_args": {"step": 16}}],
    )
    resumed = geodino("fit", "--config", str(write_config(tmp, run)), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    folder = checkpoints(tmp / run)
    assert not list(folder.glob("*.tmp"))
    assert_no_truncated_checkpoint(folder)
    assert_same_weights(tmp / run, expected)


def test_sigkill_while_writing_a_checkpoint_resumes_exactly(straight: tuple) -> None:
    tmp, expected = straight
    run = "torn_write"
    killed = geodino(
        "fit",
        "--config",
        str(
            write_config(
                tmp,
                run,
                plugins=[{"class_path": "faults.TornWriteCheckpointIO", "init_args": {"step": 12}}],
            )
        ),
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    folder = checkpoints(tmp / run)
    # the kill landed inside the write: a partial temporary file, the real names intact
    torn = list(folder.glob("*.tmp"))
    assert [p.name for p in torn] == ["step00000012.ckpt.tmp"]
    # torch says RuntimeError (zip reader) or OSError (short read), by where the cut fell
    with pytest.raises((RuntimeError, OSError)):
        torch.load(torn[0], weights_only=True)
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["last.ckpt", "step00000006.ckpt"]
    assert_no_truncated_checkpoint(folder)
    resumed = geodino("fit", "--config", str(write_config(tmp, run)), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(folder.glob("*.tmp"))
    assert_no_truncated_checkpoint(folder)
    assert_same_weights(tmp / run, expected)


def test_truncated_checkpoint_gives_a_clear_error(straight: tuple) -> None:
    tmp, _ = straight
    source = checkpoints(tmp / "straight") / "step00000006.ckpt"
    bad = tmp / "cut.ckpt"
    bad.write_bytes(source.read_bytes()[: source.stat().st_size // 3])
    out = geodino("fit", "--config", str(write_config(tmp, "bad_resume")), "--ckpt_path", str(bad))
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"checkpoint {bad} cannot be read" in out.stderr and "truncated" in out.stderr
    assert "Traceback" not in out.stderr
    # a zero-byte file (the same reader, in this process) says so
    bad.write_bytes(b"")
    with pytest.raises(WeightsError, match=r"cut\.ckpt is empty \(0 bytes\)"):
        SafeCheckpointIO().load_checkpoint(bad)
