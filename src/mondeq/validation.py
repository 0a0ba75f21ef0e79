"""One rule for every option that takes a number, and the metadata that makes a dataclass field an option.

A :class:`Number` says which numbers an option takes (integer or real, its bounds) and words them
once, for the library's errors (:meth:`Number.check`) and the command line's (:meth:`Number.parse`).
:func:`option` marks a dataclass field as a user option (``TrainConfig``, ``ModelConfig``): its help,
the kind of value, argparse extras; the ``mondeq train`` flags and the validation follow from it.
A :data:`Schema` says what each entry of a component's stored state must be (:func:`check_entries`).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, fields
from typing import Any

from .errors import CheckpointError, ConfigError, ConfigTypeError

__all__ = [
    "COUNT",
    "DAMPING",
    "FINITE",
    "NON_NEGATIVE",
    "NUMBERS",
    "Number",
    "POSITIVE",
    "POSITIVE_INT",
    "SEED",
    "TOLERANCE",
    "UNIT_INTERVAL",
    "Schema",
    "check_entries",
    "check_options",
    "nullable",
    "option",
    "options_of",
]


@dataclass(frozen=True)
class Number:
    """The numbers an option takes: integers or finite reals between ``low`` and ``high``.

    Attributes:
        integer: integers only (``bool`` is never a number here).
        low, high: the bounds; ``low_open`` / ``high_open`` exclude them.
        words: how an error names the set (derived from the bounds when empty).
    """

    integer: bool = False
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = True
    words: str = ""

    def describe(self) -> str:
        if self.words:
            return self.words
        kind = "integer" if self.integer else "finite number"
        if self.high == math.inf:
            if self.low == 0:
                return (
                    f"a positive {kind}"
                    if self.low_open
                    else ("a non-negative integer" if self.integer else "a finite number >= 0")
                )
            if self.integer and self.low == 1 and not self.low_open:
                return "a positive integer"
            return f"a {kind} {'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        noun = "an integer" if self.integer else "a number"
        return f"{noun} in {left}{self.low:g}, {self.high:g}{right}"

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def accepts(self, value: object) -> bool:
        """Whether ``value`` is a number of this set (of the right type: never a ``bool``, a string)."""
        kind = numbers.Integral if self.integer else numbers.Real
        return not isinstance(value, bool) and isinstance(value, kind) and self.contains(value)

    def check(self, name: str, value: object) -> int | float:
        """``value`` as an ``int`` / ``float``; :class:`~mondeq.errors.ConfigTypeError` (a ``TypeError``)
        when it is not a number of the right type, :class:`~mondeq.errors.ConfigError` (a ``ValueError``)
        when it is out of bounds, both naming ``name``."""
        kind = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigTypeError(f"{name} must be {self.describe()}, got {type(value).__name__} {value!r}")
        if not self.contains(value):
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}")
        return int(value) if self.integer else float(value)

    def parse(self, text: str) -> int | float:
        """A command-line value; ``ValueError`` with a one-line reason."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {'an integer' if self.integer else 'a number'}") from None
        if not self.contains(value):
            raise ValueError(f"{text} must be {self.describe()}")
        return value


FINITE = Number()
POSITIVE = Number(low=0, low_open=True)
NON_NEGATIVE = Number(low=0)
POSITIVE_INT = Number(integer=True, low=1)
COUNT = Number(integer=True, low=0)
UNIT_INTERVAL = Number(low=0, high=1)  # [0, 1)
TOLERANCE = Number(low=0, high=1, low_open=True)  # a relative residual: (0, 1)
DAMPING = Number(low=0, high=1, low_open=True, high_open=False)  # (0, 1]
SEED = Number(integer=True, low=0, high=2**64, words="an integer in [0, 2**64)")  # what torch's generators take

#: The kinds of number that option metadata names (``option(..., "positive")``).
NUMBERS: dict[str, Number] = {
    "positive": POSITIVE,
    "non_negative": NON_NEGATIVE,
    "positive_int": POSITIVE_INT,
    "count": COUNT,
    "unit_interval": UNIT_INTERVAL,
    "tolerance": TOLERANCE,
    "damping": DAMPING,
    "seed": SEED,
}


@dataclass(frozen=True)
class Requires:
    """How an option depends on another (``option(..., requires=Requires(...))``): set away from its
    default, it means something only while the option ``other`` satisfies ``holds``, and is refused
    otherwise, in one line that says its ``purpose`` and the other option's value."""

    other: str
    holds: Callable[[Any], bool]
    purpose: str


def option(help: str, value: str, **argparse: Any) -> dict[str, Any]:
    """Field metadata that makes a dataclass field a user option.

    ``value`` is a kind of :data:`NUMBERS`, ``"choice"`` (``choices=`` a registry or a sequence),
    ``"flag"`` (a boolean), or ``"text"``; ``argparse`` holds extras for the generated flag (``nargs``,
    ``metavar``, ``type`` for a special parser, ``flag`` for a flag name other than the field's,
    ``negate=True`` for a boolean whose flag turns it off), and ``requires=`` a :class:`Requires`.
    """
    if value not in (*NUMBERS, "choice", "flag", "text"):
        raise ValueError(f"unknown kind of option value {value!r}")
    return {"help": help, "value": value, **argparse}


def options_of(cls: type) -> list[Field]:
    """The fields of dataclass ``cls`` that are user options (:func:`option` metadata)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def check_options(instance: object) -> None:
    """Check every option field of a dataclass instance against its metadata (``None``: unset),
    then the relations between them (:class:`Requires`)."""
    for f in options_of(type(instance)):
        value = getattr(instance, f.name)
        if value is not None:
            _check_option(f.name, value, f.metadata)
    for f in options_of(type(instance)):
        rule = f.metadata.get("requires")
        if rule is not None and getattr(instance, f.name) != f.default and not rule.holds(getattr(instance, rule.other)):
            raise ConfigError(
                f"{f.name} {rule.purpose}; it does nothing with {rule.other} {_shown(getattr(instance, rule.other))}"
            )


def _shown(value: object) -> str:
    """An option's value as a message names it: off, unset, 'text' or the number."""
    if value is None:
        return "unset"
    return "off" if value is False else repr(value)


def _check_option(name: str, value: object, meta: Mapping[str, Any]) -> None:
    kind = meta["value"]
    if kind == "choice":
        if value not in meta["choices"]:
            raise ConfigError(f"{name} must be one of {sorted(meta['choices'])}, got {value!r}")
    elif kind in ("flag", "text"):
        expected = bool if kind == "flag" else str
        if not isinstance(value, expected):
            raise ConfigTypeError(f"{name} must be {'true or false' if kind == 'flag' else 'text'}, got {value!r}")
    elif meta.get("nargs"):
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{name} must list at least one value, got {value!r}")
        for v in value:
            NUMBERS[kind].check(name, v)
    else:
        NUMBERS[kind].check(name, value)


#: What each entry of a stored state (a checkpoint's JSON) must be: a test, and the words of the error.
Schema = dict[str, tuple[Callable[[object], bool], str]]


def nullable(numbers: Number) -> Callable[[object], bool]:
    """The test of an entry that is ``None`` or one of ``numbers``."""
    return lambda value: value is None or numbers.accepts(value)


def check_entries(state: Mapping[str, Any], schema: Schema, where: str = "checkpoint") -> None:
    """Raise :class:`~mondeq.errors.CheckpointError` naming the first entry of ``state`` that ``schema``
    refuses (entries it does not hold are not checked here)."""
    for key, (valid, expected) in schema.items():
        if key in state and not valid(state[key]):
            text = json.dumps(state[key]) if not isinstance(state[key], str) else repr(state[key])
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise CheckpointError(f"{where}: entry {key!r} must be {expected}, got {shown}")
