"""Exceptions and warnings raised by mondeq."""


class ConvergenceWarning(RuntimeWarning):
    """A splitting solver stopped before reaching its tolerance."""


class ConvergenceError(RuntimeError):
    """A splitting solver failed to converge and the layer is in strict mode."""


class DoubleBackwardError(RuntimeError):
    """A second-order gradient (``create_graph=True``) was requested through a monDEQ layer.

    The implicit backward pass is itself an equilibrium solve run without an autograd tape,
    so it has no derivative of its own; differentiating it would silently give wrong values.
    """
