"""SIGKILL a real ``geodino fit`` on time series mid-step; the resumed run ends exactly equal.

The series variant of ``test_fault_injection``: an S2 time series of the seasonal GeoTIFF
catalog (7 dates, padded to 8 steps) through ``TimeSeries``, the time-series multi-crop and a
FusionViT with the attention pool and learned day-of-year embedding, 8 steps with checkpoints
every 4 and a validation at step 8.
"""

from pathlib import Path

import pytest
import torch
import yaml
from harness import geodino, write_config

from geodino.demo.series import write_series_catalog

STEPS = 8
EVERY = 4


def series_config(tmp: Path, run: str, **faults: object) -> Path:
    """The harness's tiny config, reading the seasonal catalog's S2 series instead."""
    path = write_config(tmp, run, max_steps=STEPS, **faults)  # type: ignore[arg-type]
    cfg = yaml.safe_load(path.read_text())
    model = cfg["model"]["init_args"]
    model["in_chans"] = 13
    model["checkpoint_every_n_steps"] = EVERY
    model["modalities"] = {"s2": 13}
    model["fusion_kwargs"] = {"temporal_pool": "attention", "doy_embedding": "learned"}
    data = cfg["data"]["init_args"]
    data["dataset"] = {
        "class_path": "geodino.datasets.TimeSeries",
        "init_args": {
            "dataset": {
                "class_path": "geodino.demo.series.SeriesSentinel2",
                "init_args": {"paths": str(tmp / "series")},
            },
            "length": 8,
            "modality": "s2",
        },
    }
    data["aoi"] = str(tmp / "series" / "parcels.gpkg")
    data["chip_size"] = 28
    data["batch_size"] = 2
    path.write_text(yaml.safe_dump(cfg))
    return path


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    tmp = tmp_path_factory.mktemp("series_faults")
    write_series_catalog(tmp / "series", scene_size=64, dates=7)
    out = geodino("fit", "--config", str(series_config(tmp, "straight")))
    assert out.returncode == 0, out.stderr[-3000:]
    state = last(tmp / "straight")
    assert state["global_step"] == STEPS
    return tmp, state["state_dict"]


def test_sigkill_mid_step_on_series_resumes_exactly(straight: tuple) -> None:
    tmp, expected = straight
    run = "killed"
    kill = [{"class_path": "faults.KillMidStep", "init_args": {"step": 6}}]
    killed = geodino("fit", "--config", str(series_config(tmp, run, callbacks=kill)))
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
    assert last(tmp / run)["global_step"] == EVERY
    resumed = geodino("fit", "--config", str(series_config(tmp, run)), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = last(tmp / run)
    assert state["global_step"] == STEPS
    got = state["state_dict"]
    assert got.keys() == expected.keys()
    assert any("doy_embed" in name for name in got)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
