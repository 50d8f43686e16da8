"""The demo: a synthetic Sentinel-1/2 catalog with land-cover labels, and ``geodino demo``.

- :mod:`~geodino.demo.catalog`: writes and reads the synthetic catalog (scenes, labels, AOI)
  and its TorchGeo datasets (:class:`DemoSentinel2`, :class:`DemoSentinel1`,
  :class:`DemoLandCover`).
- :mod:`~geodino.demo.run`: the demo run (pretrain, k-NN against random init, export,
  embeddings and maps).
"""

from geodino.demo.catalog import (
    LABEL_NODATA,
    DemoCatalog,
    DemoLandCover,
    DemoSentinel1,
    DemoSentinel2,
    write_demo_catalog,
)
from geodino.demo.run import DEMO_CONFIG, downstream, evaluate_knn, run_demo

__all__ = [
    "DEMO_CONFIG",
    "LABEL_NODATA",
    "DemoCatalog",
    "DemoLandCover",
    "DemoSentinel1",
    "DemoSentinel2",
    "downstream",
    "evaluate_knn",
    "run_demo",
    "write_demo_catalog",
]
