"""The user guide stays in step with the code."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "scripts" / "config_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = (ROOT / "docs" / "configuration.md").read_text()
    assert current == module.render(), "run `.venv/bin/python scripts/config_reference.py`"


def test_every_docs_link_resolves() -> None:
    for page in (ROOT / "docs").rglob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"


def test_readme_gives_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def _build_site(config: Path, out: Path) -> str:
    """Build the documentation site strictly; returns the build log."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=config.parent,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"`make docs` fails:\n{result.stdout}\n{result.stderr}"
    return result.stderr


def test_site_builds_strictly_with_every_api_page_filled(tmp_path: Path) -> None:
    log = _build_site(ROOT / "mkdocs.yml", tmp_path / "site")
    assert "WARNING" not in log, log
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        directives = page.read_text().count("\n::: ")
        text = (tmp_path / "site" / "api" / f"{page.stem}.html").read_text()
        # every directive rendered its object, and no docstring shows a raw Sphinx role
        assert text.count('class="doc doc-object') >= directives, page.name
        assert ":::" not in text and not re.search(r":(class|func|mod|meth|attr):`", text)
    assert (tmp_path / "site" / "objects.inv").is_file()


def test_a_broken_reference_fails_the_build(tmp_path: Path) -> None:
    for name in ("geodino", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    page = tmp_path / "docs" / "api" / "losses.md"
    page.write_text(page.read_text() + "\nSee [the loss][geodino.losses.NoSuchLoss].\n")
    with pytest.raises(AssertionError, match=r"geodino\.losses\.NoSuchLoss"):
        _build_site(tmp_path / "mkdocs.yml", tmp_path / "site")
