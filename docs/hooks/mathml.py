"""A mkdocs hook: the site's math rendered to MathML when the site is built.

pymdownx.arithmatex (generic mode) wraps the TeX of each formula in ``<span class="arithmatex">\\(...\\)</span>``
(inline) or ``<div class="arithmatex">\\[...\\]</div>`` (display); this hook replaces the TeX by the
MathML that latex2mathml writes for it, which browsers draw natively: the pages need no script and
no network to show their math. A formula latex2mathml cannot read fails the build, naming it.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

_MATH = re.compile(r'<(span|div) class="arithmatex">\s*\\([\(\[])(.*?)\\[\)\]]\s*</\1>', re.S)


def _render(match: re.Match) -> str:
    tag, opening, tex = match.group(1), match.group(2), html.unescape(match.group(3))
    display = "block" if opening == "[" else "inline"
    try:
        mathml = convert(tex.strip(), display=display)
    except Exception as error:  # the converter raises many kinds for TeX it cannot read
        raise ValueError(f"cannot render the formula {tex.strip()!r}: {error}") from error
    return f'<{tag} class="math">{mathml}</{tag}>'


def on_page_content(content: str, **kwargs) -> str:
    return _MATH.sub(_render, content)
