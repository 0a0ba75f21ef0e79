r"""Robustness of monDEQ classifiers: Lipschitz bounds, interval bounds through the equilibrium,
certificates, attacks and certified training.

- ``lipschitz``: the bound :math:`\|R\|\|U\|/m` of any classifier, by power iteration;
- ``interval``: interval bounds through the equilibrium and explicit layers (:math:`\ell_\infty`);
- ``attacks``: PGD in :math:`\ell_2` and :math:`\ell_\infty`;
- ``certificates``: certified radii and accuracy (the solve's error and rounding allowed for), :func:`certify_checkpoint`;
- ``training``: the losses and the schedule of certified training.
"""

from .attacks import pgd_attack, pgd_linf_attack
from .certificates import (
    certified_margins,
    certified_radius,
    certify,
    certify_checkpoint,
    equilibrium_error,
    evaluate_robustness,
    input_radius,
    logit_margin,
    radius_of_margin,
)
from .interval import Box, equilibrium_box, interval_logits, network_box, rounding_bound, worst_case_logits
from .lipschitz import LipschitzBound, lipschitz_bound, spectral_norm, weight_perturbation_bound
from .training import CertifiedObjective, interval_loss, lipschitz_margin_loss, parse_certified

__all__ = [
    "Box",
    "CertifiedObjective",
    "LipschitzBound",
    "certified_margins",
    "certified_radius",
    "certify",
    "certify_checkpoint",
    "equilibrium_box",
    "equilibrium_error",
    "evaluate_robustness",
    "input_radius",
    "interval_logits",
    "interval_loss",
    "lipschitz_bound",
    "lipschitz_margin_loss",
    "logit_margin",
    "network_box",
    "parse_certified",
    "pgd_attack",
    "pgd_linf_attack",
    "radius_of_margin",
    "rounding_bound",
    "spectral_norm",
    "weight_perturbation_bound",
    "worst_case_logits",
]
