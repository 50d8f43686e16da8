"""Former home of the synthetic demo catalog, now :mod:`geodino.demo.catalog`.

Kept so that configs and scripts naming ``geodino.datasets.synthetic.DemoSentinel2`` (and the
other names) keep working; new code imports from :mod:`geodino.demo`.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    """A name of :mod:`geodino.demo.catalog`, imported on first use.

    Args:
        name: attribute asked for.

    Returns:
        the attribute.

    Raises:
        AttributeError: if the demo catalog has no such attribute.
    """
    from geodino.demo import catalog

    try:
        return getattr(catalog, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
