#!/usr/bin/env bash
# Check the packages the way PyPI and a user see them (run by .ci/run after the tests):
#   1. `python -m build`: the sdist, then the wheel built from that sdist, into a temporary folder;
#   2. what the sdist and the wheel hold (README, LICENSE, the whole package; no docs, runs or caches);
#   3. `twine check --strict`;
#   4. the wheel installed into a fresh virtual environment, and `mondeq --version` and
#      `mondeq demo --batch-size 2` run from that environment's bin/.
# The environment is made with --system-site-packages and the wheel installed with
# --no-index --no-deps: torch and the other dependencies already installed are reused and nothing is
# downloaded (never a multi-GB CUDA torch); the wheel's requirements are then checked against them.
#   scripts/check_package.sh     PYTHON=... picks the interpreter; KEEP=1 keeps the temporary folder
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mondeq-package.XXXXXX")
if [ -n "${KEEP:-}" ]; then echo "keeping $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
fail() {
    echo "check_package: FAIL: $*" >&2
    exit 1
}

VERSION=$("$PY" -c 'import re; print(re.search(r"^version\s*=\s*\"([^\"]+)\"", open("pyproject.toml").read(), re.M)[1])')
echo "== mondeq $VERSION (pyproject.toml)"

echo "== python -m build"
if ! "$PY" -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1; then
    # Without network the isolated build cannot fetch setuptools: use the installed one instead.
    echo "isolated build failed; retrying with --no-isolation (installed setuptools)"
    "$PY" -m build --no-isolation --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || {
        tail -40 "$WORK/build.log"
        fail "python -m build"
    }
fi
grep -iE "warning|deprecat" "$WORK/build.log" | sort -u | sed 's/^/  build: /' || true
SDIST="$WORK/dist/mondeq-$VERSION.tar.gz"
WHEEL="$WORK/dist/mondeq-$VERSION-py3-none-any.whl"
[ -f "$SDIST" ] && [ -f "$WHEEL" ] || fail "expected $(basename "$SDIST") and $(basename "$WHEEL"), got: $(ls "$WORK/dist")"

echo "== contents"
"$PY" - "$SDIST" "$WHEEL" "$VERSION" <<'EOF' || fail "package contents"
import sys, tarfile, zipfile
from email.parser import Parser
from pathlib import Path

sdist, wheel, version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
errors = []
package = sorted(str(p.relative_to("src")) for p in Path("src/mondeq").rglob("*.py") if "__pycache__" not in p.parts)

with tarfile.open(sdist) as tar:
    members = {m.name.split("/", 1)[1]: m.size for m in tar.getmembers() if m.isfile()}
for name in ["PKG-INFO", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "CITATION.cff", "tests/conftest.py"]:
    if name not in members:
        errors.append(f"sdist lacks {name}")
errors += [f"sdist lacks src/{name}" for name in package if f"src/{name}" not in members]
for name, size in members.items():
    if name.split("/")[0] in {"docs", "runs", ".ci", ".git", "build", "dist"} or "__pycache__" in name or name.endswith(".pyc"):
        errors.append(f"sdist holds {name}")
    elif size > 256_000:
        errors.append(f"sdist holds a large file: {name} ({size / 1000:.0f} kB)")

info = f"mondeq-{version}.dist-info"
with zipfile.ZipFile(wheel) as zf:
    names = set(zf.namelist())
    metadata = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
    entry_points = zf.read(f"{info}/entry_points.txt").decode()
errors += [f"wheel lacks {name}" for name in package if name not in names]
errors += [f"wheel holds {name}" for name in names if not name.startswith(("mondeq/", info + "/")) or name.endswith(".pyc")]
if f"{info}/licenses/LICENSE" not in names:
    errors.append("wheel lacks its LICENSE")
if metadata["Version"] != version:
    errors.append(f"wheel metadata version {metadata['Version']} != {version}")
if "mondeq = mondeq.cli:main" not in entry_points:
    errors.append("wheel lacks the mondeq console script")
if metadata["License-Expression"] != "MIT":
    errors.append(f"wheel License-Expression is {metadata['License-Expression']!r}")

tests = sum(name.startswith("tests/") for name in members)
print(f"sdist {sdist.name}: {sdist.stat().st_size / 1000:.1f} kB, {len(members)} files "
      f"({len(package)} package modules, {tests} test files, {sum(members.values()) / 1000:.0f} kB unpacked)")
print(f"wheel {wheel.name}: {wheel.stat().st_size / 1000:.1f} kB, {len(names)} files")
for error in errors:
    print(f"  {error}")
sys.exit(1 if errors else 0)
EOF

echo "== twine check --strict"
"$PY" -m twine check --strict "$SDIST" "$WHEEL" || fail "twine check"

echo "== install the wheel into a fresh virtual environment"
"$PY" -m venv --system-site-packages "$WORK/venv"
VENV_PY="$WORK/venv/bin/python"
"$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --ignore-installed "$WHEEL" \
    || fail "pip install of the wheel"
cd "$WORK" # away from the source tree: what runs is the installed wheel
"$VENV_PY" - "$WORK/venv" <<'EOF' || fail "the installed wheel"
import importlib.metadata as md
import sys
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

import mondeq
import torch

where = Path(mondeq.__file__).resolve()
if Path(sys.argv[1]).resolve() not in where.parents:
    sys.exit(f"mondeq was imported from {where}, not from the virtual environment")
unmet = []
for line in md.distribution("mondeq").requires or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an extra's requirement
    try:
        installed = md.version(req.name)
    except md.PackageNotFoundError:
        unmet.append(f"{req} (not installed)")
        continue
    if not req.specifier.contains(installed, prereleases=True):
        unmet.append(f"{req} (installed: {installed})")
if unmet:
    sys.exit("requirements of the wheel not met: " + "; ".join(unmet))
print(f"mondeq {mondeq.__version__} from {where.parent}; torch {torch.__version__} from {Path(torch.__file__).parent.parent}")
EOF
OUT=$("$WORK/venv/bin/mondeq" --version) || fail "mondeq --version"
echo "$ mondeq --version"
echo "$OUT"
[ "$OUT" = "mondeq $VERSION" ] || fail "mondeq --version printed '$OUT', expected 'mondeq $VERSION'"
echo "$ mondeq demo --batch-size 2"
"$WORK/venv/bin/mondeq" demo --batch-size 2 >"$WORK/demo.txt" 2>&1 || {
    cat "$WORK/demo.txt"
    fail "mondeq demo"
}
head -1 "$WORK/demo.txt"
grep -E '"(forward|backward)_(iterations|converged)"' "$WORK/demo.txt"
[ "$(grep -cE '"(forward|backward)_converged": true' "$WORK/demo.txt")" -eq 2 ] || fail "mondeq demo did not converge"
echo "check_package: OK (mondeq $VERSION: sdist and wheel built, twine check passed, wheel runs from a fresh venv)"
