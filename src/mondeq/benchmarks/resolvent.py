"""Cost of one resolvent application against the FFT work it cannot avoid.

The floor, timed on tensors of the same sizes: the real FFT of each tier of the hidden state,
one per-frequency ``c x c`` complex matrix product, and the inverse real FFT. For multi-tier
operators also the full-spectrum elimination (every alias group, complex FFTs) that the
half-spectrum resolvent replaced, timed in the same run.
"""

from __future__ import annotations

import torch

from ..operators import MultiConv, SingleConv
from ..operators.convolutional import group, ungroup
from ..operators.fourier import from_fourier, to_fourier
from . import Section, markdown_table
from .common import Scale, measure


def floor_seconds(op: MultiConv, z: torch.Tensor, repeat: int) -> float:
    total = 0.0
    for tier, c, s in zip(op.tiers(z), op.channels, op.sizes):
        tier = tier.contiguous()
        spectrum = to_fourier(tier, onesided=True)
        matrices = torch.randn(s[0], s[1] // 2 + 1, c, c, dtype=spectrum.dtype)
        product = matrices @ spectrum
        total += measure(lambda t=tier: to_fourier(t, onesided=True), repeat)
        total += measure(lambda m=matrices, x=spectrum: m @ x, repeat)
        total += measure(lambda p=product, s=s: from_fourier(p, s), repeat)
    return total


def full_spectrum_solve(op: MultiConv, alpha: float):
    """The block elimination over the full complex spectrum and every alias group (the resolvent before
    it used the Hermitian symmetry of real spectra)."""
    with torch.no_grad():
        lower, diag_inv, upper = op.resolvent_factors(op.weights(), alpha, onesided=False)

    def solve(y: torch.Tensor) -> torch.Tensor:
        y_hat = [to_fourier(t, onesided=False) for t in op.tiers(y)]
        eliminated, current = [], y_hat[0]
        for i in range(len(lower)):
            eliminated.append(group(current))
            current = y_hat[i + 1] - lower[i] @ eliminated[-1]
        z = diag_inv[-1] @ current
        z_hat = [z]
        for i in reversed(range(len(lower))):
            z = ungroup(diag_inv[i] @ eliminated[i] - upper[i] @ z)
            z_hat.insert(0, z)
        return op.flatten(tuple(from_fourier(t, s) for t, s in zip(z_hat, op.sizes)))

    return solve


def run(tiny: bool = False) -> dict:
    scale = Scale.get(tiny)
    repeat = 3 if tiny else 10
    torch.manual_seed(0)
    operators = {
        "single-conv": SingleConv(1, scale.single_channels, scale.image_size, m=1.0),
        "multi-conv": MultiConv(1, scale.multi_channels, scale.image_size, m=1.0),
    }
    rows = []
    for name, op in operators.items():
        z = torch.randn(scale.batch, op.features)
        resolvent = op.resolvent(1.0)
        frozen = op.frozen(1.0)
        solve = measure(lambda r=resolvent, z=z: r.solve(z), repeat)
        solve_t = measure(lambda r=resolvent.T, z=z: r.solve(z), repeat)
        multiply = measure(lambda f=frozen, z=z: f.multiply(z), repeat)
        build = measure(lambda o=op: o.resolvent(1.0), max(1, repeat // 2))
        floor = floor_seconds(op, z, repeat)
        before = None
        if op.num_tiers > 1:
            full = full_spectrum_solve(op, 1.0)
            before = measure(lambda f=full, z=z: f(z), repeat)
        rows.append(
            {
                "operator": name,
                "channels": list(op.channels),
                "solve_ms": 1e3 * solve,
                "solve_transpose_ms": 1e3 * solve_t,
                "floor_ms": 1e3 * floor,
                "ratio": solve / floor,
                "multiply_ms": 1e3 * multiply,
                "build_ms": 1e3 * build,
                "full_spectrum_ms": None if before is None else 1e3 * before,
            }
        )
    return {"rows": rows, "batch": scale.batch, "image_size": scale.image_size}


def markdown(result: dict) -> str:
    lines = [
        f"Batch {result['batch']}, {result['image_size']}x{result['image_size']} images, float32, median of repeated runs.",
        "",
    ]
    rows = []
    for r in result["rows"]:
        before = r.get("full_spectrum_ms")
        before = "–" if before is None else f"{before:.1f} ms ({before / r['floor_ms']:.2f}x)"
        times = [f"{r[key]:.1f} ms" for key in ("solve_ms", "solve_transpose_ms", "floor_ms")]
        rows.append(
            [
                r["operator"],
                r["channels"],
                *times,
                f"**{r['ratio']:.2f}x**",
                before,
                f"{r['multiply_ms']:.1f} ms",
                f"{r['build_ms']:.1f} ms",
            ]
        )
    header = ["operator", "channels", "resolvent", "transpose", "FFT floor", "ratio", "full-spectrum elimination (before)"]
    lines += markdown_table([*header, "W z (frozen)", "build (once per step)"], rows)
    return "\n".join(lines)


SECTION = Section(title="2. Resolvent cost against its FFT floor", order=2, run=run, markdown=markdown)
