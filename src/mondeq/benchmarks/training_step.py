"""Training step of mondeq against a straightforward implementation of the paper's algorithm.

The reference-style implementation runs on the *same* operator weights and inputs, and does
what the paper-era code did: complex numbers stored as real 2x2 blocks over the *full* complex
FFT, W applied by convolutions, a Python loop that synchronises on the residual every
iteration, and the resolvent rebuilt on every call (forward and backward). Both stop on the
same true relative residual, so the equilibria are equally accurate.
"""

from __future__ import annotations

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


def reference_multiply(op, z: Tensor, transpose: bool = False) -> Tensor:
    weights = op.weights().T if transpose else op.weights()
    if isinstance(op, FullyConnected):
        return op.apply_weights(z, weights)
    return op.apply_convolutions(z, weights.tiers)


def reference_pr(op, injection: Tensor, prox, resolvent, alpha, tol, max_iter, transpose=False) -> tuple[Tensor, int]:
    """Peaceman-Rachford in a plain Python loop that checks the true residual every iteration."""
    u = torch.zeros_like(injection)
    for k in range(1, max_iter + 1):
        z = prox(u)
        u_half = 2 * z - u
        z_half = resolvent.solve(u_half + alpha * injection, transpose)
        u = 2 * z_half - u_half
        z = prox(u)
        fz = prox(reference_multiply(op, z, transpose) + injection)
        if ((fz - z).norm() / fz.norm().clamp_min(1e-30)).item() <= tol:
            return z, k
    return z, max_iter


def reference_forward(model, x: Tensor) -> Tensor:
    """The classifier's forward pass with the reference-style equilibrium layer (ReLU)."""
    layer, op = model.layer, model.layer.linear
    alpha, tol, max_iter = layer.alpha, layer.forward_options.tol, layer.forward_options.max_iter
    injection = op.inject(x)
    with torch.no_grad():
        resolvent = ReferenceStyleResolvent(op, alpha)
        z, _ = reference_pr(op, injection.detach(), torch.relu, resolvent, alpha, tol, max_iter)
    pre = reference_multiply(op, z) + injection
    out = torch.relu(pre)
    mask = (pre > 0).to(pre.dtype).detach()

    def backward_hook(grad: Tensor) -> Tensor:
        with torch.no_grad():
            rebuilt = ReferenceStyleResolvent(op, alpha)
            prox = lambda v: mask * v  # noqa: E731  (prox of the linear backward problem, ReLU: D is 0/1)
            w, _ = reference_pr(op, grad, prox, rebuilt, alpha, tol, max_iter, transpose=True)
            return reference_multiply(op, w, transpose=True) + grad

    out.register_hook(backward_hook)
    return model.readout(model.pool(out))


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
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()

        def reference_step(model=model):
            model.zero_grad()
            F.cross_entropy(reference_forward(model, x), y).backward()

        with ignore_convergence_warnings():
            ours, theirs, speedup = measure_pair(mondeq_step, reference_step, repeat, min_seconds=0.1 if tiny else 4.0)
            mondeq_step()
            grads_ours = [p.grad.clone() for p in model.parameters()]
            stats = layer.stats
            reference_step()
            grads_ref = [p.grad.clone() for p in model.parameters()]
        agreement = max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(grads_ours, grads_ref))
        rows.append(
            {
                "family": kind,
                "weights": state,
                "mondeq_ms": 1e3 * ours,
                "reference_ms": 1e3 * theirs,
                "speedup": speedup,
                "forward_iterations": stats.forward.iterations,
                "backward_iterations": stats.backward.iterations,
                "gradient_difference": agreement,
            }
        )
    return {"rows": rows, "batch": scale.batch, "tol": 1e-4}


def _ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms"


def markdown(result: dict) -> str:
    lines = [
        f"One training step (forward solve, implicit backward solve, parameter gradients), batch {result['batch']}, "
        f"PR with alpha as tuned, both stopping at true relative residual {result['tol']:g}; the two steps timed "
        "alternately (at least 4 s each), medians of the times and of the pairwise ratios (speedup).",
        "",
        *markdown_table(
            ["family", "weights", "mondeq", "reference-style", "speedup", "fwd / bwd iterations", "max rel. gradient difference"],
            [
                [
                    r["family"],
                    r["weights"],
                    _ms(r["mondeq_ms"]),
                    _ms(r["reference_ms"]),
                    f"**{r['speedup']:.1f}x**",
                    f"{r['forward_iterations']} / {r['backward_iterations']}",
                    f"{r['gradient_difference']:.1e}",
                ]
                for r in result["rows"]
            ],
        ),
    ]
    return "\n".join(lines)


SECTION = Section(title="3. Training step against a reference-style implementation", order=3, run=run, markdown=markdown)
