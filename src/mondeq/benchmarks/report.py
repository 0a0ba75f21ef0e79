"""Run the benchmark sections and write their pages: ``benchmarks.md`` (tables, plots, the
machine's facts) and the pages of sections that have their own (``robustness.md``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..devices import tune_allocator
from ..errors import ConfigError
from ..files import output_dir, write_atomic
from . import Section, sections
from .common import machine_info, source_commit

NOTES = "benchmark-notes.md"
#: The heading in :data:`NOTES` whose text opens ``benchmarks.md``: what is faster than what, by how much.
SUMMARY = "summary"


def load_notes(path: Path, names: list[str]) -> dict[str, str]:
    """Hand-written analysis per section: ``### NAME`` headings in ``path``, each followed by its text
    (its first paragraph: the section's takeaway)."""
    notes: dict[str, str] = {}
    if not path.is_file():
        return notes
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("### ") and line[4:].strip() in names:
            current = line[4:].strip()
            notes[current] = ""
        elif current is not None:
            notes[current] += line + "\n"
    return {k: v.strip() for k, v in notes.items()}


def run_all(names: list[str] | None = None, tiny: bool = False, out: Path = Path("docs"), report_only: bool = False) -> Path:
    """Run ``names`` (default all) and write ``out/benchmarks.md`` (``benchmarks-tiny.md`` for ``tiny``)
    and the pages of sections that have their own. Returns the path of ``benchmarks.md``.

    With ``report_only``, run nothing: rewrite the pages from the stored ``results.json``.
    """
    registry = sections()
    names = [] if report_only else (names or list(registry))
    unknown = set(names) - set(registry)
    if unknown:
        raise ConfigError(f"unknown benchmark sections {sorted(unknown)}; choose from {list(registry)}")
    tune_allocator()  # measure with the same malloc settings as the mondeq command
    figures = output_dir(output_dir(out) / ("bench-tiny" if tiny else "bench"))  # out: refused when not a folder
    results_path = figures / "results.json"
    stored = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in names:
        section = registry[name]
        start = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        result = section.run(tiny=tiny)
        result["_seconds"] = time.perf_counter() - start
        result["_machine"] = machine_info()
        result["_commit"] = source_commit()
        stored[name] = json.loads(json.dumps(result, default=str))
        if section.plot is not None:
            section.plot(stored[name], figures)
        write_atomic(results_path, json.dumps(stored, indent=1))
    notes = {} if tiny else load_notes(out / NOTES, [*registry, SUMMARY])
    suffix = "-tiny" if tiny else ""
    for page in {s.page for s in registry.values() if s.page}:
        own = {n: s for n, s in registry.items() if s.page == page and n in stored}
        if own:
            write_page(out / page.replace(".md", f"{suffix}.md"), own, stored, figures, tiny, notes)
    shared = {n: s for n, s in registry.items() if s.page is None and n in stored}
    return write_page(out / f"benchmarks{suffix}.md", shared, stored, figures, tiny, notes)


def _section_text(name: str, section: Section, result: dict, figures: Path, notes: dict, heading: bool = True) -> list[str]:
    """A section on its page: the takeaway (the notes' first paragraph), the table, the plots, and a
    link to the rest of the analysis on the notes page; its title as a heading unless the page has it."""
    takeaway, _, details = notes.get(name, "").partition("\n\n")
    lines = [f"## {section.title}", ""] if heading else []
    if takeaway:
        lines += [f"**{takeaway.strip()}**", ""]
    lines += [section.markdown(result), ""]
    for png in sorted(figures.glob(f"{name.split('_')[0]}*.png")):
        lines.append(f"![{png.stem}]({figures.name}/{png.name})")
    if details.strip():
        lines += ["", f"Targets, analysis and the search: [benchmark notes]({NOTES}#{name})."]
    if "_seconds" in result:
        commit = f" at commit `{result['_commit']}`" if result.get("_commit") else ""
        lines += ["", f"_Section ran in {result['_seconds']:.0f} s{commit}._"]
    return [*lines, ""]


def write_page(path: Path, chosen: dict[str, Section], stored: dict, figures: Path, tiny: bool, notes: dict) -> Path:
    """One page holding the sections ``chosen``, from their ``stored`` results."""
    measured = [stored[name]["_machine"] for name in chosen if "_machine" in stored[name]]
    machine = measured[0] if measured else machine_info()  # where the numbers were taken
    own_page = any(s.page for s in chosen.values())
    title = next(iter(chosen.values())).title if own_page else "Benchmarks"
    lines = [
        f"# {title}" + (" (toy sizes, smoke run)" if tiny else ""),
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}, Python {machine['python']}, {machine['platform']}. float32 throughout.",
        "",
        f"Command: `mondeq bench{' --tiny' if tiny else ''}` (or one section: `mondeq bench --only NAME`). "
        f"Raw numbers: [`{figures.name}/results.json`]({figures.name}/results.json). Times are wall-clock on a "
        f"shared {machine['cores']}-core machine: compare ratios within a table, not absolute times across tables.",
        "",
    ]
    if not own_page and notes.get(SUMMARY):
        lines += ["## In short", "", notes[SUMMARY], ""]
    for name, section in chosen.items():
        if section.introduction:
            lines += [section.introduction, ""]
        lines += _section_text(name, section, stored[name], figures, notes, heading=not own_page or len(chosen) > 1)
    write_atomic(path, "\n".join(lines))
    return path
