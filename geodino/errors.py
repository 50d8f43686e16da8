"""Exceptions that geodino raises for bad input.

Each message names the culprit (file, band, CRS, key or value) and says how to fix it.
"""


class GeoDINOError(Exception):
    """Base class of every error geodino raises on purpose."""


class DataError(GeoDINOError, ValueError):
    """A data source (raster, array, image, annotation or AOI file) cannot be used as given."""


class ConfigError(GeoDINOError, ValueError):
    """A configuration value disagrees with the data, the model or another value."""


class WeightsError(GeoDINOError, ValueError):
    """A weights or checkpoint file cannot be loaded into the requested model."""


class CollapseError(GeoDINOError, RuntimeError):
    """Pretraining collapsed (the collapse guard stopped it); training on would waste compute."""
