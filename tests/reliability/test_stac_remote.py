"""``geodino fit`` on a STAC-GeoParquet catalog of COGs served by a real S3 server on 127.0.0.1.

The same catalog pointing at local copies of the files is the reference: the chips drawn
through the data module (inside an AOI, under the nodata rule) must be equal pixel for pixel;
a run SIGKILLed mid-step resumes with ``--ckpt_path last`` to the weights of an uninterrupted
one; credentials from the environment appear in nothing the run writes.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
import torch
import yaml
from geopandas import GeoDataFrame
from harness import STEPS, geodino, write_config

from geodino.datamodules import GeoDINODataModule
from geodino.datasets import RemoteSettings, STACCatalog
from tests.servers import TEST_CREDENTIALS
from tests.stac_catalogs import two_zone_scenes, write_items

BANDS = ["B02", "red", "nir", "swir16"]
#: seconds a fit may take: every chip is a request to the local server (slow on a loaded CI)
FIT_TIMEOUT = 900


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory, s3_server) -> tuple[Path, Path, Path]:
    """A folder, and the same catalog with local hrefs and with s3:// hrefs."""
    tmp = tmp_path_factory.mktemp("stac_fit")
    scenes = two_zone_scenes(tmp / "cogs")
    local = write_items(scenes, tmp / "local.parquet")

    def href(path: Path) -> str:
        return s3_server.upload(path, "geodino-fit", str(path.relative_to(tmp / "cogs")))

    return tmp, local, write_items(scenes, tmp / "s3.parquet", href)


def settings(s3_server) -> dict:
    return {"endpoint": s3_server.endpoint, "https": False, "virtual_hosting": False}


def stac_config(tmp: Path, run: str, catalog: Path, remote: dict | None, **kw) -> Path:
    """The reliability harness's tiny config, reading the STAC catalog."""
    path = write_config(tmp, run, **kw)
    cfg = yaml.safe_load(path.read_text())
    init = {"catalog": str(catalog), "bands": BANDS}
    if remote is not None:
        init["remote"] = remote
    cfg["data"]["init_args"]["dataset"] = {
        "class_path": "geodino.datasets.STACCatalog",
        "init_args": init,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == STEPS
    return state["state_dict"]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0, msg=name)


def test_s3_chips_follow_the_aoi_and_nodata_rules_and_equal_local_ones(
    catalogs: tuple[Path, Path, Path], s3_server
) -> None:
    _, local, s3 = catalogs
    reference = STACCatalog(local, bands=BANDS)
    x, y, _ = reference.bounds
    # an L-shaped AOI over the 31N items and the west nodata strip of the first
    aoi = shapely.Polygon(
        [
            (x.start, y.stop),
            (x.start + 900, y.stop),
            (x.start + 900, y.stop - 500),
            (x.start + 1500, y.stop - 500),
            (x.start + 1500, y.stop - 1500),
            (x.start, y.stop - 1500),
        ]
    )
    frame = GeoDataFrame({"split": ["train"]}, geometry=[aoi], crs=reference.crs)

    def batches(dataset: STACCatalog) -> list[dict]:
        module = GeoDINODataModule(
            dataset, aoi=frame, chip_size=16, batch_size=8, max_nodata=0.1, seed=2
        )
        module.setup_draws()
        return [module.train_draw.raw(i) for i in range(24)]

    remote = STACCatalog(s3, bands=BANDS, remote=RemoteSettings(**settings(s3_server)))
    for got, want in zip(batches(remote), batches(reference), strict=True):
        torch.testing.assert_close(got["image"], want["image"], rtol=0, atol=0)
        x0, x1, _, y0, y1 = got["bounds"][:5].tolist()
        assert aoi.buffer(1e-6).contains(shapely.box(x0, y0, x1, y1))
        invalid = (got["image"] == 0).any(0).float().mean()
        assert invalid <= 0.1


def test_fit_from_s3_resumes_exactly_after_sigkill(
    catalogs: tuple[Path, Path, Path], s3_server
) -> None:
    # the reference is an uninterrupted run on the local copies: the S3 chips equal theirs
    # pixel for pixel (the test above), so a resumed S3 run must end on the same weights
    tmp, local, s3 = catalogs
    out = geodino("fit", "--config", str(stac_config(tmp, "local", local, None)))
    assert out.returncode == 0, out.stderr[-3000:]
    expected = final_weights(tmp / "local")
    remote = settings(s3_server)
    kill = [{"class_path": "faults.KillMidStep", "init_args": {"step": 15}}]
    killed = geodino(
        "fit",
        "--config",
        str(stac_config(tmp, "cut", s3, remote, callbacks=kill)),
        timeout=FIT_TIMEOUT,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = geodino(
        "fit",
        "--config",
        str(stac_config(tmp, "cut", s3, remote)),
        "--ckpt_path",
        "last",
        timeout=FIT_TIMEOUT,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(final_weights(tmp / "cut"), expected)
    # credentials come from the environment and are written nowhere
    secret = TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"].encode()
    for run in (killed, resumed):
        assert secret not in (run.stdout + run.stderr).encode()
    for path in (tmp / "cut").rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path


def test_fit_names_an_object_that_stays_unreadable(
    catalogs: tuple[Path, Path, Path], s3_server
) -> None:
    tmp, _, s3 = catalogs
    rows = pq.read_table(s3).to_pylist()
    rows[0]["assets"]["red"]["href"] = rows[0]["assets"]["red"]["href"].replace("B04", "B0X")
    broken = tmp / "broken.parquet"
    pq.write_table(pa.Table.from_pylist(rows), broken)
    remote = settings(s3_server) | {"max_retry": 0}
    out = geodino(
        "fit", "--config", str(stac_config(tmp, "broken", broken, remote)), timeout=FIT_TIMEOUT
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "s3://geodino-fit/S2A_31_a/B0X.tif (item S2A_31_a" in out.stderr
    assert "gone" in out.stderr and "Traceback" not in out.stderr
