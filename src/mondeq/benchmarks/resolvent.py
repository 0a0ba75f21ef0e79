"""Cost of one resolvent application against the FFT work it cannot avoid.

The floor, timed on tensors of the same sizes: the real FFT of each tier of the hidden state,
one per-frequency ``c x c`` complex matrix product, and the inverse real FFT.
"""

from __future__ import annotations

import torch

from ..operators import MultiConv, SingleConv
from ..operators.convolutional import from_fourier, to_fourier
from . import Section
from .common import Scale, measure


def floor_seconds(op: MultiConv, z: torch.Tensor, repeat: int) -> float:
    total = 0.0
    for tier, c, s in zip(op.tiers(z), op.channels, op.sizes):
        tier = tier.contiguous()
        spectrum = to_fourier(tier, onesided=True)
        matrices = torch.randn(s, s // 2 + 1, c, c, dtype=spectrum.dtype)
        product = matrices @ spectrum
        total += measure(lambda t=tier: to_fourier(t, onesided=True), repeat)
        total += measure(lambda m=matrices, x=spectrum: m @ x, repeat)
        total += measure(lambda p=product, s=s: from_fourier(p, s), repeat)
    return total


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
            }
        )
    return {"rows": rows, "batch": scale.batch, "image_size": scale.image_size}


def markdown(result: dict) -> str:
    lines = [
        f"Batch {result['batch']}, {result['image_size']}x{result['image_size']} images, float32, median of repeated runs.",
        "",
        "| operator | channels | resolvent | transpose | FFT floor | ratio | W z (frozen) | build (once per step) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['operator']} | {r['channels']} | {r['solve_ms']:.1f} ms | {r['solve_transpose_ms']:.1f} ms | "
            f"{r['floor_ms']:.1f} ms | **{r['ratio']:.2f}x** | {r['multiply_ms']:.1f} ms | {r['build_ms']:.1f} ms |"
        )
    return "\n".join(lines)


SECTION = Section(title="2. Resolvent cost against its FFT floor", order=2, run=run, markdown=markdown)
