"""The solver tolerances (relative fixed-point residual), one per purpose, each with its reason.
Every default in the library and the command reads them here."""

#: A layer built in Python (:class:`~mondeq.MonDEQ`, :class:`~mondeq.solvers.SolverOptions`): close
#: enough to the equilibrium that the implicit gradient is the loss's gradient to a few digits.
LAYER = 1e-4
#: Training the presets (``mondeq train``): a step needs a descent direction, not digits; looser solves
#: take fewer iterations (the hour runs measured 3e-2 faster per epoch at equal accuracy).
TRAINING = 1e-2
#: Evaluating and certifying (``mondeq certify``, ``eval`` keeps the run's own): accuracies and margins
#: of the equilibrium to four digits; an l2 certificate allows for the rest explicitly.
EVALUATION = 1e-4
#: Convergence plots (``mondeq plot``): deep enough to show each method's linear rate.
CONVERGENCE_PLOT = 1e-6
