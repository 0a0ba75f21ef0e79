#!/usr/bin/env python3
"""Write docs/cli.md: every ``mondeq`` command's ``--help``, generated from the parser itself, so the
reference cannot drift from the command (tests/test_docs.py checks that it lists the same options).

    python3 scripts/cli_reference.py            # rewrite docs/cli.md
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "cli.md"

HEADER = """# Command-line reference

Every command of `mondeq` with its options, as `mondeq COMMAND --help` prints them (this page is
generated from the parser by `python3 scripts/cli_reference.py`; the suite checks that it lists
the same options as the command). How-to guides: [train](howto/train.md),
[resume](howto/resume.md), [certify](howto/certify.md), [certified training](howto/certified.md).
"""


def reference() -> str:
    """The page: ``mondeq --help``, then each command's help in a code block."""
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: fix it
    from mondeq.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    parts = [HEADER, "```text", parser.format_help().rstrip(), "```", ""]
    for name in COMMANDS:
        parts += [f"## mondeq {name}", "", "```text", sub.choices[name].format_help().rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    PAGE.write_text(reference())
    print(PAGE, file=sys.stderr)
