"""Band names read from band descriptions: GDAL's stand-ins name nothing."""

import pytest

from geodino.bands import canonical_s2_band, described_band_names


@pytest.mark.parametrize(
    ("descriptions", "names"),
    [
        (("B02", "B03", "B04"), ["B02", "B03", "B04"]),
        ((" red ", "nir"), ["red", "nir"]),
        (("Band 1", "Band 2", "Band 3"), None),
        (("band_1", "BAND2"), None),
        (("B02", "Band 2"), None),
        ((None, None), None),
        (("B02", None), None),
        (("B02", "B02"), None),
        ((), None),
    ],
)
def test_described_band_names(
    descriptions: tuple[str | None, ...], names: list[str] | None
) -> None:
    assert described_band_names(descriptions) == names


def test_bandwidth_is_a_name_not_a_stand_in() -> None:
    assert described_band_names(["bandwidth", "Band 2 nir"]) == ["bandwidth", "Band 2 nir"]
    assert canonical_s2_band("b8a") == "B8A"
