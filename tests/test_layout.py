"""The structure the README promises: each train option declared once, a data reader added in one
file, rooms of bounded complexity, and a command line that answers ``--help`` without torch."""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from mondeq.cli import build_parser
from mondeq.data import READERS, DataReader, DatasetInfo, load_dataset
from mondeq.models import ModelConfig, model_options
from mondeq.train import RESUMABLE_OPTIONS, TrainConfig, Trainer
from mondeq.validation import options_of

ROOT = Path(__file__).resolve().parent.parent

#: The flags of ``mondeq train`` that are no run option: what the command does with the run folder and the bar.
COMMAND_FLAGS = {"help", "resume", "overwrite", "no_progress"}


def train_parser() -> argparse.ArgumentParser:
    parser = build_parser(["train"])
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]


def test_each_train_option_has_exactly_one_flag_and_each_flag_one_option():
    dests = [action.dest for action in train_parser()._actions]
    options = [f.name for f in options_of(TrainConfig)] + [f.name for f in model_options()]
    assert sorted(d for d in dests if d not in COMMAND_FLAGS) == sorted(options)
    assert len(dests) == len(set(dests))  # one flag per option
    unflagged = {f.name for f in fields(TrainConfig)} - {f.name for f in options_of(TrainConfig)}
    assert unflagged == {"model_options"}  # the model's options are ModelConfig's fields, flagged above
    assert {f.name for f in model_options()} <= {f.name for f in fields(ModelConfig)}


def test_resumable_options_are_metadata_of_their_fields():
    assert set(RESUMABLE_OPTIONS) == {
        "epochs",
        "time_budget",
        "eval_every",
        "strict",
        "data_dir",
        "device",
        "threads",
        "checkpoint_every",
    }


def test_flags_validate_as_the_fields_do():
    parse = train_parser().parse_args
    assert parse(["--epochs", "3", "--lr", "0.5", "--no-tune-alpha", "--strict"]).epochs == 3
    for bad in (
        ["--epochs", "0"],
        ["--lr", "nan"],
        ["--label-smoothing", "1"],
        ["--seed", str(2**64)],
        ["--time-budget", "soon"],
    ):
        with pytest.raises(SystemExit):
            parse(bad)


class Toy(DataReader):
    """A data reader defined in one place: eight 4x4 grey images of two classes in one .npz file."""

    name = "toy"
    info = DatasetInfo("toy", 1, 4, ["dark", "bright"], (0.5,), (0.25,))

    def read(self, split, find):
        arrays = np.load(find([f"{split}.npz"]))
        return arrays["images"], arrays["labels"]


@pytest.fixture
def toy_folder(tmp_path):
    labels = np.array([0, 1] * 4)
    images = (labels[:, None, None, None] * 200 + 20).astype(np.uint8).repeat(16).reshape(8, 1, 4, 4)
    for split in ("train", "test"):
        np.savez(tmp_path / f"{split}.npz", images=images, labels=labels)
    yield tmp_path


def test_a_data_reader_is_added_in_one_place(toy_folder, tmp_path):
    assert READERS["toy"].info.classes == ["dark", "bright"]
    assert len(load_dataset("toy", "train", toy_folder)) == 8
    args = train_parser().parse_args(["--dataset", "toy", "--model", "fc", "--width", "4"])  # a choice of the flag
    assert args.dataset == "toy"
    config = TrainConfig(dataset="toy", model="fc", data_dir=str(toy_folder), batch_size=4, out=str(tmp_path / "run"))
    history = Trainer(config, progress=False).fit()
    assert history[0]["train_accuracy"] >= 0  # trained through the whole pipeline


def test_no_function_is_too_complex():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    result = subprocess.run([ruff, "check", "--select", "C901", str(ROOT / "src")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_command_line_answers_help_without_torch():
    code = "import sys, mondeq.cli; mondeq.cli.build_parser(['--help']); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = subprocess.run([sys.executable, "-m", "mondeq", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("mondeq ")


def test_the_cli_reference_lists_every_option_of_every_command():
    """docs/cli.md is generated from the parser (scripts/cli_reference.py): it lists exactly the
    options each command has, so a new flag without a regenerated page fails here."""
    from mondeq.cli import COMMANDS

    page = (ROOT / "docs" / "cli.md").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in COMMANDS:
        section = page.split(f"## mondeq {name}\n", 1)[1].split("\n## ", 1)[0]
        documented = {flag for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", section) if not flag.endswith("-")}
        actual = {flag for action in sub.choices[name]._actions for flag in action.option_strings if flag.startswith("--")}
        assert documented == actual, f"mondeq {name}: regenerate docs/cli.md (python3 scripts/cli_reference.py)"


#: The rooms of ``src/mondeq`` from the bottom up: a module imports only from its own layer or below
#: (a package counts as one room: its modules may import each other).
LAYERS = [
    {"errors", "validation", "files", "devices", "distributed", "linalg", "tolerances"},
    {"activations", "operators", "solvers"},
    {"stats", "reuse", "gradients"},
    {"layer"},
    {"checkpoint", "data", "models"},
    {"robust", "train", "export"},
    {"plot", "benchmarks", "cli", "__main__", "mondeq"},
]


def _import_graph() -> dict[str, set[str]]:
    """Module -> the mondeq modules it imports, from the source (imports under TYPE_CHECKING included;
    ``from . import sub`` counts as importing ``sub``, not its package)."""
    source = ROOT / "src" / "mondeq"
    found = {}
    for path in source.rglob("*.py"):
        parts = path.relative_to(source.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                submodules = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in found}
                edges |= submodules
                if target in found and len(submodules) < len(node.names):
                    edges.add(target)
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in found}
        graph[name] = edges - {name}
    return graph


def _layer(module: str) -> int:
    room = module.split(".")[1] if "." in module else module
    return next(i for i, rooms in enumerate(LAYERS) if room in rooms)


def test_the_import_graph_has_no_cycle_and_no_import_up_the_layers():
    graph = _import_graph()
    upward = [
        (a, b) for a, targets in graph.items() for b in targets if _layer(b) > _layer(a) and a.split(".")[:2] != b.split(".")[:2]
    ]
    assert not upward, f"imports up the layers: {upward}"
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            assert state.get(target) != 1, f"import cycle: {' -> '.join([*path, module, target])}"
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_one_number_rule_for_options_and_stored_entries():
    """``Number.accepts`` (what a checkpoint's entries are checked with) agrees with ``check`` (options)."""
    from mondeq.errors import ConfigError
    from mondeq.validation import NUMBERS

    for name, numbers in NUMBERS.items():
        for value in (-1, 0, 1e-300, 0.5, 1, 2, 2**64, float("inf"), float("nan"), True, "1", None):
            try:
                numbers.check(name, value)
                checked = True
            except (ConfigError, TypeError):
                checked = False
            assert numbers.accepts(value) == checked, (name, value)
