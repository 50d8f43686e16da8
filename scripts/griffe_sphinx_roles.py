"""Griffe extension for the API reference: Sphinx roles in docstrings become links.

geodino's docstrings name other objects with Sphinx roles (``:class:`~geodino.x.Y```), as
TorchGeo's do. mkdocstrings renders docstrings as Markdown, where a role would show up raw;
this extension, named in mkdocs.yml, turns each role into an optional cross-reference: a link
when the target is documented on the site, inline code otherwise (e.g. torch or Lightning).
"""

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")
TITLED = re.compile(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>")


def _qualify(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` as seen from ``obj``, or ``target`` when it is not known."""
    target = target.lstrip(".").removesuffix("()")
    head, _, rest = target.partition(".")
    try:
        path = obj.resolve(head)
    except (griffe.NameResolutionError, KeyError, AttributeError):
        return target
    return f"{path}.{rest}" if rest else path


def convert(obj: griffe.Object, text: str) -> str:
    """``text`` with every Sphinx role replaced by an optional autorefs cross-reference."""

    def link(match: re.Match[str]) -> str:
        short, target = match.group(1) == "~", match.group(2).strip()
        titled = TITLED.fullmatch(target)
        if titled:
            title, target = titled["title"], titled["target"]
        else:
            title = target.rsplit(".", 1)[-1] if short else target
        identifier = _qualify(obj, target)
        return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'

    return ROLE.sub(link, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Convert the roles of ``obj``'s docstring."""
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = convert(obj, obj.docstring.value)
