"""Training step of mondeq against the paper-era code's algorithm, and with its iteration compiled.

The paper-era implementation runs on the *same* operator weights and inputs and does, operation for
operation, what locuslab/monotone_op_net's ``splitting.py`` and ``mon.py`` do per step: the resolvent
built once per forward pass (an explicit inverse; for convolutions real 2x2 blocks over the full
complex FFT) and reused by the backward pass, a Python loop that stops on the relative change of the
iterate (two host synchronisations per iteration), :math:`W` applied as the layer's products (four
with :math:`A` and :math:`B` for the fully connected operator, convolutions otherwise), the injection
computed twice, and the backward iteration's prox with its masked assignment. Where it departs: the
convolutional resolvent is mondeq's block factorisation written with real blocks (the paper-era code
inverts each frequency's block; the same for a single tier), and both sides stop at the same
tolerance by their own rule (mondeq on the true residual, the paper-era loop on the change), so the
table gives both iteration counts. mondeq's cached resolvent is cleared before each of its steps, as
a weight update does in training.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ignore_convergence_warnings
from ..operators import FullyConnected
from ..operators.convolutional import group, ungroup
from . import Section, markdown_table
from .common import KINDS, Scale, batch, measure_pair, model_at


def realify(matrix: Tensor) -> Tensor:
    """Complex ``(..., p, q)`` as the real ``(..., 2p, 2q)`` block ``[[Re, -Im], [Im, Re]]``."""
    top = torch.cat([matrix.real, -matrix.imag], dim=-1)
    bottom = torch.cat([matrix.imag, matrix.real], dim=-1)
    return torch.cat([top, bottom], dim=-2).contiguous()


def real_apply(block: Tensor, vector: Tensor) -> Tensor:
    """``block`` (a realified matrix) times a complex ``(..., q, B)`` vector, via stacked real parts."""
    stacked = torch.cat([vector.real, vector.imag], dim=-2)
    out = block @ stacked
    half = out.shape[-2] // 2
    return torch.complex(out[..., :half, :], out[..., half:, :])


class ReferenceStyleResolvent:
    """Rebuilt per call; full complex FFT; real 2x2-block matrix products."""

    def __init__(self, op, alpha: float) -> None:
        self.op = op
        with torch.no_grad():
            weights = op.weights()
            if isinstance(op, FullyConnected):
                eye = torch.eye(op.features, dtype=weights.dtype)
                self.dense = torch.inverse((1 + alpha) * eye - alpha * weights)
            else:
                lower, diag_inv, upper = op.resolvent_factors(weights, alpha, onesided=False)
                self.lower = [realify(m) for m in lower]
                self.diag_inv = [realify(m) for m in diag_inv]
                self.upper = [realify(m) for m in upper]
                self.lower_t = [realify(m.mH) for m in upper]
                self.diag_inv_t = [realify(m.mH) for m in diag_inv]
                self.upper_t = [realify(m.mH) for m in lower]

    def solve(self, y: Tensor, transpose: bool = False) -> Tensor:
        if isinstance(self.op, FullyConnected):
            return y @ (self.dense if transpose else self.dense.T)
        lo, dinv, up = (self.lower_t, self.diag_inv_t, self.upper_t) if transpose else (self.lower, self.diag_inv, self.upper)
        y_hat = [torch.fft.fft2(t, norm="ortho").permute(2, 3, 1, 0) for t in self.op.tiers(y)]
        eliminated, current = [], y_hat[0]
        for i in range(len(lo)):
            grouped = group(current)
            eliminated.append(grouped)
            current = y_hat[i + 1] - real_apply(lo[i], grouped)
        z = real_apply(dinv[-1], current)
        z_hat = [z]
        for i in reversed(range(len(lo))):
            z = ungroup(real_apply(dinv[i], eliminated[i]) - real_apply(up[i], z))
            z_hat.insert(0, z)
        tiers = [torch.fft.ifft2(t.permute(3, 2, 0, 1), norm="ortho").real for t in z_hat]
        return torch.cat([t.reshape(t.shape[0], -1) for t in tiers], dim=1)


def paper_era_multiply(op, z: Tensor, transpose: bool = False) -> Tensor:
    r""":math:`Wz` (:math:`W^\top z`) as the paper-era code computes it on every call: for the fully connected
    operator four products with :math:`A` and :math:`B` (never the matrix :math:`W`), for convolutions the
    kernels applied as convolutions."""
    if isinstance(op, FullyConnected):
        b = op.B.T if transpose else op.B  # W^T = (1 - m) I - A^T A + B^T - B
        return (1 - op.m) * z - (z @ op.A.T) @ op.A + z @ b.T - z @ b
    weights = op.weights().T if transpose else op.weights()
    return op.apply_convolutions(z, weights.tiers)


def relative_change(new: Tensor, old: Tensor) -> float:
    """The paper-era stopping rule: the relative change of the iterate, two host synchronisations."""
    return (new - old).norm().item() / (1e-6 + new.norm().item())


def paper_era_forward_pr(op, bias: Tensor, resolvent, alpha: float, tol: float, max_iter: int) -> tuple[Tensor, int]:
    """Peaceman-Rachford as the paper-era forward pass runs it: the resolvent built once per forward pass,
    one ReLU per iteration, stopped on the relative change of the iterate."""
    z = torch.zeros_like(bias)
    u = torch.zeros_like(bias)
    iterations, error = 0, 1.0
    while error > tol and iterations < max_iter:
        u_half = 2 * z - u
        z_half = resolvent.solve(u_half + alpha * bias)
        u = 2 * z_half - u_half
        new = torch.relu(u)
        error = relative_change(new, z)
        z, iterations = new, iterations + 1
    return z, iterations


def paper_era_backward_pr(grad: Tensor, z: Tensor, resolvent, alpha: float, tol: float, max_iter: int) -> tuple[Tensor, int]:
    r"""The paper-era backward pass's Peaceman-Rachford on the linear problem of the adjoint, with the
    forward pass's resolvent transposed: :math:`j = \sigma'(z)`, :math:`d = (1 - j)/j`, the prox
    :math:`(u + \alpha(1 + d) v) / (1 + \alpha d)` and the rows where :math:`j = 0` overwritten by a masked
    assignment, as written there."""
    j = (z > 0).type_as(z)
    dead = j == 0
    d = (1 - j) / j
    v = j * grad
    w = torch.zeros_like(grad)
    u = torch.zeros_like(grad)
    iterations, error = 0, 1.0
    while error > tol and iterations < max_iter:
        u_half = 2 * w - u
        w_half = resolvent.solve(u_half, transpose=True)
        u = 2 * w_half - u_half
        new = (u + alpha * (1 + d) * v) / (1 + alpha * d)
        new[dead] = v[dead]
        error = relative_change(new, w)
        w, iterations = new, iterations + 1
    return w, iterations


def paper_era_forward(model, x: Tensor) -> tuple[Tensor, list[int]]:
    """The classifier's forward pass with the paper-era equilibrium layer (ReLU), and a list that receives
    the forward and (once backward has run) backward iteration counts."""
    layer, op = model.layer, model.layer.linear
    alpha, tol, max_iter = layer.alpha, layer.forward_options.tol, layer.forward_options.max_iter
    iterations: list[int] = []
    with torch.no_grad():
        resolvent = ReferenceStyleResolvent(op, alpha)  # init_inverse: once per forward pass, kept for backward
        z, count = paper_era_forward_pr(op, op.inject(x), resolvent, alpha, tol, max_iter)
    iterations.append(count)
    out = torch.relu(op.inject(x) + paper_era_multiply(op, z))  # the injection computed again, with gradient
    saved = out.detach()

    def backward_hook(grad: Tensor) -> Tensor:
        with torch.no_grad():
            w, count = paper_era_backward_pr(grad, saved, resolvent, alpha, tol, max_iter)
            iterations.append(count)
            return paper_era_multiply(op, w, transpose=True) + grad

    out.register_hook(backward_hook)
    return model.readout(model.pool(out)), iterations


def _compiled_ratio(model, step, repeat: int, tiny: bool) -> dict:
    """``step`` (a training step of ``model``) with each splitting iteration compiled (``compiled=True``)
    against it eager: the first compiled step's extra seconds (the compilation a user pays once per process
    and shape), the medians of both and of their pairwise ratios. The layer's setting is restored after."""
    layer = model.layer
    start = time.perf_counter()
    step()
    eager_once = time.perf_counter() - start
    with layer.options(compiled=True):
        start = time.perf_counter()
        step()
        first = time.perf_counter() - start
        compiled, eager, speedup = measure_pair(
            lambda: layer.configure(compiled=True) or step(),
            lambda: layer.configure(compiled=False) or step(),
            repeat,
            min_seconds=0.1 if tiny else 4.0,
        )
    return {
        "compile_seconds": first - eager_once,
        "eager_ms": 1e3 * eager,
        "compiled_ms": 1e3 * compiled,
        "compiled_speedup": speedup,
    }


def run(tiny: bool = False) -> dict:
    scale = Scale.get(tiny)
    x, y = batch(scale)
    repeat = 2 if tiny else 5
    rows = []
    for kind in KINDS:
        model = model_at(scale, kind, trained=not tiny) or model_at(scale, kind)
        state = "trained" if (not tiny and model_at(scale, kind, trained=True) is not None) else "init"
        layer = model.layer
        layer.configure(tol=1e-4, max_iter=500)

        def mondeq_step(model=model):
            model.layer.clear_cache()  # as in training, where every step changes the weights
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()

        def paper_era_step(model=model) -> list[int]:
            model.zero_grad()
            logits, iterations = paper_era_forward(model, x)
            F.cross_entropy(logits, y).backward()
            return iterations

        with ignore_convergence_warnings():
            ours, theirs, speedup = measure_pair(mondeq_step, paper_era_step, repeat, min_seconds=0.1 if tiny else 4.0)
            mondeq_step()
            grads_ours = [p.grad.clone() for p in model.parameters()]
            stats = layer.stats
            iterations = paper_era_step()
            grads_ref = [p.grad.clone() for p in model.parameters()]
        agreement = max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(grads_ours, grads_ref))
        compiled = _compiled_ratio(model, mondeq_step, repeat, tiny)
        rows.append(
            {
                "family": kind,
                "weights": state,
                "mondeq_ms": 1e3 * ours,
                "paper_era_ms": 1e3 * theirs,
                "speedup": speedup,
                "forward_iterations": stats.forward.iterations,
                "backward_iterations": stats.backward.iterations,
                "paper_era_iterations": iterations,
                "gradient_difference": agreement,
                **compiled,
            }
        )
    return {"rows": rows, "batch": scale.batch, "tol": 1e-4}


def _ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms"


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        f"One training step (forward solve, implicit backward solve, parameter gradients), batch {result['batch']}, "
        f"Peaceman-Rachford with alpha as tuned, both stopping at {result['tol']:g} (mondeq: true relative residual; "
        "the paper-era loop: relative change of the iterate); the two steps timed alternately (at least 4 s each), "
        "medians of the times and of the pairwise ratios (speedup).",
        "",
        *markdown_table(
            [
                "family",
                "weights",
                "mondeq",
                "paper-era",
                "speedup",
                "fwd / bwd iterations (paper-era)",
                "max rel. gradient difference",
            ],
            [
                [
                    r["family"],
                    r["weights"],
                    _ms(r["mondeq_ms"]),
                    _ms(r["paper_era_ms"]),
                    f"**{r['speedup']:.1f}x**",
                    f"{r['forward_iterations']} / {r['backward_iterations']} ({' / '.join(map(str, r['paper_era_iterations']))})",
                    f"{r['gradient_difference']:.1e}",
                ]
                for r in rows
            ],
        ),
        "",
        "The same mondeq step with each splitting iteration compiled (`compiled=True`, `--compiled`; "
        "`torch.compile` of one iteration and its residual) against it eager, timed alternately; the compile "
        "time is the first compiled step's extra seconds, paid once per process and shape:",
        "",
        *markdown_table(
            ["family", "eager", "compiled", "speedup", "compile time"],
            [
                [
                    r["family"],
                    _ms(r["eager_ms"]),
                    _ms(r["compiled_ms"]),
                    f"**{r['compiled_speedup']:.2f}x**",
                    f"{r['compile_seconds']:.0f} s",
                ]
                for r in rows
            ],
        ),
    ]
    return "\n".join(lines)


SECTION = Section(title="3. Training step against the paper-era algorithm", order=3, run=run, markdown=markdown)
