"""Every bad input of scripts/reliability.py's table ends in exit code 2 and one line naming the problem."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest

from mondeq.cli import main

SCRIPT = Path(__file__).parents[1] / "scripts" / "reliability.py"
spec = importlib.util.spec_from_file_location("reliability", SCRIPT)
reliability = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reliability)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    return reliability.prepare(tmp_path_factory.mktemp("bad-inputs"))


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse
        return exit.code


@pytest.mark.parametrize("what, line, fragment", reliability.BAD_INPUTS, ids=[case[0] for case in reliability.BAD_INPUTS])
def test_bad_input_is_one_named_line(places, capsys, what, line, fragment):
    code = run_main(shlex.split(line.format(**places)))
    err = capsys.readouterr().err
    lines = [text for text in err.strip().splitlines() if text.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], err


def test_debug_shows_the_traceback(places):
    with pytest.raises(ValueError, match="unknown device"):
        main(["--debug", "eval", places["run"], "--device", "bogus"])
