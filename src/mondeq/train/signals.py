"""Stop requests: SIGINT and SIGTERM during training ask for a stop that the loop honours between batches."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from .. import distributed

__all__ = ["StopRequests"]


class StopRequests:
    """While active, SIGINT and SIGTERM only record that a stop was asked for.

    The training loop honours the request between batches, so a step, the position in the
    epoch and the running totals always change together. A second SIGINT raises
    ``KeyboardInterrupt`` at once (the last checkpoint on disk stays intact).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool) -> None:
        self.signum: int | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        if self.announce:
            print(
                f"\n{signal.Signals(signum).name}: saving a checkpoint after this batch (Ctrl-C again to stop without saving)",
                file=sys.stderr,
                flush=True,
            )

    def requested(self) -> bool:
        """Whether any rank was asked to stop (every rank gets the same answer)."""
        return distributed.any_rank(self.signum is not None)
