"""The ``mondeq`` command."""

from __future__ import annotations

import argparse
import json
import sys


def demo(args: argparse.Namespace) -> int:
    """Solve and differentiate a convolutional monDEQ equilibrium on random data; print stats."""
    import torch

    from mondeq import MonDEQ, SingleConv

    torch.manual_seed(args.seed)
    layer = MonDEQ(SingleConv(1, 16, 28, m=0.5), solver=args.solver, alpha=args.alpha, tol=args.tol)
    x = torch.randn(args.batch_size, 1, 28, 28, requires_grad=True)
    z = layer(x)
    z.pow(2).mean().backward()
    print(f"equilibrium shape {tuple(z.shape)}, |dL/dx| = {x.grad.norm():.4g}")
    print(json.dumps(layer.stats.as_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mondeq", description="Monotone operator equilibrium networks.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="solve and differentiate one equilibrium on random data")
    p.add_argument("--solver", default="pr", choices=["fb", "pr", "dr"])
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
