"""Exceptions and warnings raised by mondeq."""


class ConvergenceWarning(RuntimeWarning):
    """A splitting solver stopped before reaching its tolerance."""


class ConvergenceError(RuntimeError):
    """A splitting solver failed to converge and the layer is in strict mode."""
