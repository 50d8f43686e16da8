"""Checkpoints are read without running code and refused clearly when damaged."""

import pickle
from pathlib import Path

import pytest
import torch

from geodino.checkpoints import load_checkpoint
from geodino.errors import WeightsError


class Payload:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {}, "x": Payload(marker)}, handle)
    with pytest.raises(WeightsError, match="run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_empty_checkpoints(tmp_path: Path) -> None:
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, good)
    assert torch.equal(load_checkpoint(good)["state_dict"]["w"], torch.ones(1000))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated"):
        load_checkpoint(cut)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        load_checkpoint(empty)
    with pytest.raises(WeightsError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
