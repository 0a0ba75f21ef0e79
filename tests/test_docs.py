"""The documentation site builds with ``mkdocs build --strict`` (broken links and cross-references
fail) and its API reference has an entry for every public name of ``mondeq``."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mondeq

MODULES = (
    "operators",
    "activations",
    "solvers",
    "layer",
    "stats",
    "gradients",
    "reuse",
    "models",
    "train",
    "data",
    "checkpoint",
    "files",
    "robust",
    "export",
    "errors",
)
ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("mkdocs") is None or not (ROOT / "mkdocs.yml").exists(),
        reason="mkdocs is not installed (pip install -e '.[docs]') or no mkdocs.yml beside the sources",
    ),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_api_page_has_every_public_name(site: Path) -> None:
    html = (site / "api" / "index.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'\bid="([^"]+)"', html))
    missing = [name for name in mondeq.__all__ if f"mondeq.{name}" not in ids]
    assert not missing, f"no API entry for {missing}"


def test_module_pages_and_math(site: Path) -> None:
    for module in MODULES:
        html = (site / "api" / module / "index.html").read_text(encoding="utf-8")
        assert f'id="mondeq.{module}' in html, module
    layer = (site / "api" / "layer" / "index.html").read_text(encoding="utf-8")
    assert '<span class="math"><math' in layer  # :math: roles became MathML, drawn without a script
    assert ":math:" not in layer and ":class:" not in layer and "arithmatex" not in layer
    math = (site / "math" / "index.html").read_text(encoding="utf-8")
    assert math.count("<math") > 20 and "\\(" not in math and "cdn.jsdelivr" not in math
    examples = (site / "examples" / "index.html").read_text(encoding="utf-8")
    assert "--8&lt;--" not in examples and "ignore_convergence_warnings" in examples  # the scripts are included
