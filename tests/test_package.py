"""The version has one source (pyproject.toml, through the package metadata) and ``mondeq --version`` prints it.

Building the sdist and wheel and running the wheel from a fresh virtual environment is
``scripts/check_package.sh`` (run by .ci/run); these checks are the fast part.
"""

import importlib.metadata
import re
from pathlib import Path

import pytest

import mondeq
from mondeq.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)[1]
    return tomllib.loads(text)["project"]["version"]


def test_version_is_the_one_in_pyproject():
    version = pyproject_version()
    assert mondeq.__version__ == version
    assert importlib.metadata.version("mondeq") == version, "stale install: rerun scripts/setup.sh"


def test_version_is_read_from_the_metadata_not_written_twice():
    source = (ROOT / "src" / "mondeq" / "__init__.py").read_text(encoding="utf-8")
    assert pyproject_version() not in source
    assert 'metadata.version("mondeq")' in source


def test_mondeq_version_prints_it(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"mondeq {pyproject_version()}"


def test_version_is_listed_in_the_help():
    assert "--version" in build_parser().format_help()


def test_console_script_and_changelog_entry():
    scripts = importlib.metadata.distribution("mondeq").entry_points.select(group="console_scripts")
    assert [(s.name, s.value) for s in scripts] == [("mondeq", "mondeq.cli:main")]
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[?{re.escape(pyproject_version())}\]? - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M), (
        "CHANGELOG.md has no section for the version in pyproject.toml"
    )
