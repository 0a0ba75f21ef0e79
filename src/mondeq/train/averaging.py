r"""Weight averaging: the trained weights' running average, kept beside them and evaluated instead.

Two kinds, both :class:`torch.optim.swa_utils.AveragedModel` of the model's *free* parameters (a
parametrised weight's ``original``, never the matrix it maps to, so a bound that holds for every
parameter value, ``--lipschitz`` included, holds for the average too):

- ``ema:DECAY`` (default decay 0.999): after every step :math:`\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta`,
  starting from the first step's weights;
- ``swa:START`` (default 0.75): the equal average of the weights after every step from the fraction
  ``START`` of the run on (one-cycle's annealing tail).

The average is a model of its own: its equilibria are solved afresh (never the training run's
stored fixed points), its buffers (a spectral bound's power-iteration vectors) follow the trained
model's, and so does the splitting step size :math:`\alpha`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..errors import CheckpointError, ConfigError

__all__ = ["AVERAGE_KINDS", "AverageSpec", "WeightAverage", "parse_average"]

#: The kinds of ``--average`` and their default parameter: EMA's decay, SWA's start (fraction of the run).
AVERAGE_KINDS = {"ema": 0.999, "swa": 0.75}


@dataclass(frozen=True)
class AverageSpec:
    """``kind`` (``"ema"`` or ``"swa"``) and its parameter ``value`` (EMA's decay in (0, 1); SWA's
    start in [0, 1), a fraction of the run)."""

    kind: str
    value: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


def parse_average(text: str | None) -> AverageSpec | None:
    """``"off"`` or ``None``: no average; ``"ema"``, ``"ema:0.999"``, ``"swa"``, ``"swa:0.75"``: an
    :class:`AverageSpec`. A ``ConfigError`` names what is wrong."""
    if text is None or text == "off":
        return None
    kind, _, value = str(text).partition(":")
    if kind not in AVERAGE_KINDS:
        raise ConfigError(f"average {text!r}: the kind is one of off, {', '.join(AVERAGE_KINDS)} (e.g. ema:0.999, swa:0.75)")
    try:
        number = float(value) if value else AVERAGE_KINDS[kind]
    except ValueError:
        raise ConfigError(f"average {text!r}: {value!r} is not a number") from None
    if kind == "ema" and not 0 < number < 1:
        raise ConfigError(f"average {text!r}: EMA's decay is a number in (0, 1), e.g. 0.999")
    if kind == "swa" and not 0 <= number < 1:
        raise ConfigError(f"average {text!r}: SWA's start is a fraction of the run in [0, 1), e.g. 0.75")
    return AverageSpec(kind, number)


class WeightAverage:
    """The running average of ``model``'s free parameters that ``spec`` describes.

    Attributes:
        module: the averaged model (a copy of ``model``'s architecture), in evaluation mode.
        updates: how many steps it averages (0: none yet; then :attr:`module` is not a result).
    """

    def __init__(self, model: nn.Module, spec: AverageSpec) -> None:
        self.spec = spec
        multi_avg_fn = get_ema_multi_avg_fn(spec.value) if spec.kind == "ema" else None
        # A monDEQ layer's copy leaves its training run's fixed-point store behind (MonDEQ.__getstate__).
        self._averaged = AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=False)
        self.module: nn.Module = self._averaged.module
        self.module.eval()

    @property
    def updates(self) -> int:
        return int(self._averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module, progress: float) -> None:
        """Average in ``model``'s weights after a step taken at ``progress`` (fraction of the run)."""
        if self.spec.kind == "swa" and progress < self.spec.value:
            return
        self._averaged.update_parameters(model)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)
        if hasattr(model, "layer"):
            self.module.layer.alpha = model.layer.alpha

    def evaluated(self, model: nn.Module) -> nn.Module:
        """What measures the run: the average once it holds a step, else ``model`` (the trained weights)."""
        return self.module if self.updates else model

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged model's state (its parameters and buffers, as ``model.state_dict()`` names them)."""
        return self.module.state_dict()

    def entry(self) -> dict[str, Any]:
        """What a checkpoint's JSON says of the average: its kind and how many steps it holds."""
        return {"spec": str(self.spec), "updates": self.updates}

    def load(self, state: dict[str, Tensor], entry: dict[str, Any], where: str = "checkpoint") -> None:
        """Restore the average a checkpoint holds (:meth:`state_dict` and :meth:`entry`), bit for bit."""
        if entry.get("spec") != str(self.spec):
            raise CheckpointError(f"{where} holds an average {entry.get('spec')!r}, this run averages {str(self.spec)!r}")
        try:
            self.module.load_state_dict(state)
        except RuntimeError as error:
            raise CheckpointError(f"{where}: its averaged weights do not fit the model ({str(error).splitlines()[0]})") from error
        self._averaged.n_averaged.fill_(int(entry["updates"]))
