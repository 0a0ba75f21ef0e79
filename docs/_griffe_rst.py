"""Griffe extension for the documentation site: mondeq's docstrings use a few reST constructs
inside Google-style sections; this rewrites them to the Markdown that mkdocstrings renders.

- ``:math:`x``` becomes ``$x$`` (pymdownx.arithmatex; docs/hooks/mathml.py renders it to MathML);
- ``.. math::`` and its indented block become a ``$$ ... $$`` display;
- ``:class:`~mondeq.x.Y``` and the other Python roles become a cross-reference ``[`Y`][mondeq.x.Y]``
  when the target is a dotted ``mondeq.`` path, else inline code;
- ``Examples::`` becomes the Google ``Examples:`` section; any other ``text::`` followed by an
  indented block becomes ``text:`` and a fenced Python block.

Loaded by mkdocstrings through ``extensions: [docs/_griffe_rst.py]`` in ``mkdocs.yml``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(math|class|meth|func|attr|data|mod|exc|obj|const):`([^`]+)`")


def _role(match: re.Match[str]) -> str:
    kind, text = match.groups()
    if kind == "math":
        return f"${text.strip()}$"
    target = text.lstrip("~").removesuffix("()")
    title = target.rsplit(".", 1)[-1] if text.startswith("~") else target
    if kind in ("meth", "func"):
        title += "()"
    if target.startswith("mondeq."):
        return f"[`{title}`][{target}]"
    return f"`{title}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """The indented block (deeper than ``base``) from ``start`` on, skipping leading blank lines;
    returns its dedented lines and the index after it."""
    i = start
    while i < len(lines) and not lines[i].strip():
        i += 1
    body: list[str] = []
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
        body.append(lines[i])
        i += 1
    while body and not body[-1].strip():
        body.pop()
    depth = min((_indent(line) for line in body if line.strip()), default=0)
    return [line[depth:] for line in body], i


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with its reST roles, math blocks and literal blocks in Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        pad = " " * _indent(line)
        if stripped.startswith(".. math::"):
            body, i = _block(lines, i + 1, _indent(line))
            inline = stripped.removeprefix(".. math::").strip()
            out += ["", pad + "$$", *[pad + b for b in ([inline] if inline else []) + body], pad + "$$", ""]
            continue
        if stripped in ("Examples::", "Example::"):
            out.append(pad + stripped[:-1])
            i += 1
            continue
        if stripped.endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            body, after = _block(lines, i + 1, _indent(line))
            if body:
                head = line.rstrip()[:-1]  # "text::" reads "text:"
                if head.strip() != ":":
                    out.append(_ROLE.sub(_role, head))
                out += ["", pad + "```python", *[pad + b if b else "" for b in body], pad + "```", ""]
                i = after
                continue
        out.append(_ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrites every docstring of the loaded package (aliases are left to their targets)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = rst_to_markdown(obj.docstring.value)
            stack.extend(member for member in obj.members.values() if not member.is_alias)
