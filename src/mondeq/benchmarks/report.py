"""Run the benchmarks and write ``docs/benchmarks.md`` with tables, plots and the machine's facts."""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

from . import BENCHMARKS
from .common import machine_info

TITLES = {
    "solvers": "1. Solver comparison: FB, PR, DR, with and without Anderson acceleration",
    "resolvent": "2. Resolvent cost against its FFT floor",
    "training_step": "3. Training step against a reference-style implementation",
    "peers": "4. Peers on the same problem",
    "memory": "5. Memory against solver iterations",
    "scaling": "6. Scaling",
    "data_parallel": "7. Data-parallel training: 1 against 2 processes",
}


def load_notes(path: Path) -> dict[str, str]:
    """Hand-written analysis per section: ``### NAME`` headings in ``path``, each followed by its text."""
    notes: dict[str, str] = {}
    if not path.is_file():
        return notes
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("### ") and line[4:].strip() in TITLES:
            current = line[4:].strip()
            notes[current] = ""
        elif current is not None:
            notes[current] += line + "\n"
    return {k: v.strip() for k, v in notes.items()}


def run_all(names: list[str] | None = None, tiny: bool = False, out: Path = Path("docs"), report_only: bool = False) -> Path:
    """Run ``names`` (default all) and write ``out/benchmarks.md`` (``benchmarks-tiny.md`` for ``tiny``).

    With ``report_only``, run nothing: rewrite the page from the stored ``results.json``.
    """
    names = [] if report_only else (names or BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"unknown benchmarks {sorted(unknown)}; choose from {BENCHMARKS}")
    figures = out / ("bench-tiny" if tiny else "bench")
    figures.mkdir(parents=True, exist_ok=True)
    results_path = figures / "results.json"
    stored = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in names:
        module = importlib.import_module(f"mondeq.benchmarks.{name}")
        start = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        result = module.run(tiny=tiny)
        result["_seconds"] = time.perf_counter() - start
        result["_machine"] = machine_info()
        stored[name] = json.loads(json.dumps(result, default=str))
        if hasattr(module, "plot"):
            module.plot(stored[name], figures)
        results_path.write_text(json.dumps(stored, indent=1))
    notes = {} if tiny else load_notes(out / "benchmark-notes.md")
    return write_markdown(stored, out, figures, tiny, notes)


def write_markdown(stored: dict, out: Path, figures: Path, tiny: bool, notes: dict) -> Path:
    machine = machine_info()
    lines = [
        "# Benchmarks" + (" (toy sizes, smoke run)" if tiny else ""),
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}, Python {machine['python']}, {machine['platform']}. float32 throughout.",
        "",
        f"Command: `mondeq bench{' --tiny' if tiny else ''}` (or one section: `mondeq bench --only NAME`, "
        "`python benchmarks/NAME.py`). Raw numbers: "
        f"[`{figures.name}/results.json`]({figures.name}/results.json). Times are wall-clock on a shared 2-core "
        "machine: compare ratios within a table, not absolute times across tables.",
        "",
    ]
    for name in BENCHMARKS:
        if name not in stored:
            continue
        module = importlib.import_module(f"mondeq.benchmarks.{name}")
        lines += [f"## {TITLES[name]}", "", module.markdown(stored[name]), ""]
        for png in sorted(figures.glob(f"{name.split('_')[0]}*.png")):
            lines.append(f"![{png.stem}]({figures.name}/{png.name})")
        if name in notes:
            lines += ["", "**Targets and analysis.** " + notes[name]]
        lines += ["", f"_Section ran in {stored[name]['_seconds']:.0f} s._", ""]
    path = out / ("benchmarks-tiny.md" if tiny else "benchmarks.md")
    path.write_text("\n".join(lines))
    return path
