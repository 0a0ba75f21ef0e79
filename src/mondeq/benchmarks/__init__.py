"""Benchmarks behind ``mondeq bench``: one module a section, found by :func:`sections`.

A section is a module of this package that defines ``SECTION``, a :class:`Section`: its title,
its place in the report, ``run(tiny) -> dict`` (the measurement, JSON-serialisable), ``markdown(result)``
(its table) and optionally ``plot(result, folder)`` (its figures) and ``page`` (a page of its own
instead of ``benchmarks.md``). Adding a section is adding such a module. ``mondeq bench`` runs
them all and writes ``docs/benchmarks.md``; ``mondeq bench --only NAME`` runs one; ``--tiny``
runs every section on toy sizes in seconds (what the smoke test does).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Section", "markdown_table", "sections"]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a markdown table: ``header``, its rule, and one line per row (cells as ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


@dataclass(frozen=True)
class Section:
    title: str
    order: int
    run: Callable[..., dict]
    markdown: Callable[[dict], str]
    plot: Callable[[dict, Path], list] | None = None
    #: Markdown file of its own (beside benchmarks.md), with this introduction, or ``None``.
    page: str | None = None
    introduction: str = ""


def sections() -> dict[str, Section]:
    """Every section of this package by name, in report order."""
    found = {}
    for module in pkgutil.iter_modules(__path__):
        section = getattr(importlib.import_module(f"{__name__}.{module.name}"), "SECTION", None)
        if isinstance(section, Section):
            found[module.name] = section
    return dict(sorted(found.items(), key=lambda item: item[1].order))
