"""The exported model (``mondeq export``): its accuracy and disagreements with the implicit model on the whole
test set, and its speed beside the implicit model's evaluation, in one run.

The model is the fast recipe's run (``runs/fmnist-fast``, or the folder ``$MONDEQ_EXPORT_RUN`` names) when
present, else the recipe's model at initialisation (speed only). The exported network proves the default
logit error of ``mondeq export`` for every image; a prediction can differ from the equilibrium model's
only where its top-two margin is at most :math:`\\sqrt2` times its own input's bound. The implicit model it
is compared with is solved to 1e-6 (its own distance from the equilibrium is far below the margins).
Timings: median of repeated calls at batch 1 (latency), images per second at batch 256, each path warmed up.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import export
from ..cli import DEFAULT_EXPORT_ERROR as DEFAULT_ERROR
from ..errors import CheckpointError, ConfigError, ignore_convergence_warnings
from ..models import MonDEQClassifier, load_model, preset_config
from ..robust.certificates import equilibrium_error, image_range, readout_norm
from ..train import RECIPES
from . import Section, markdown_table
from .evaluation import test_images

RECIPE_RUN = Path(os.environ.get("MONDEQ_EXPORT_RUN", "runs/fmnist-fast"))
#: Iterations at which the bound computed from each image's last iterate (``--certify``) is measured.
CERTIFIED_ITERATIONS = (10, 20, 30, 45, 60)
BATCH = 256


def _model(tiny: bool) -> tuple[MonDEQClassifier, str]:
    if not tiny:
        try:
            return load_model(RECIPE_RUN)[0], str(RECIPE_RUN)
        except CheckpointError:
            pass
    options = dict(RECIPES["fmnist-fast"].settings["model_options"])
    if tiny:
        options.update(channels=[4], kernel_size=3)
    torch.manual_seed(0)
    side = 8 if tiny else 28
    config = preset_config("single-conv", "fashion-mnist", 1, side, 10, **{**options, "pool": 2})
    return MonDEQClassifier(config).eval(), "initialisation"


def _latency(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _throughput(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    run(x[:8])
    start = time.perf_counter()
    for _ in range(repeats):
        run(x)
    return repeats * len(x) / (time.perf_counter() - start)


def _predict(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([run(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])


def _forward_backward(model: MonDEQClassifier, unrolled: export.UnrolledMonDEQ) -> dict:
    r"""The splitting without a resolvent at the same proven bound: forward-backward
    :math:`z_{k+1} = \operatorname{prox}_{\alpha f}(z_k - \alpha(M z_k - b))` contracts by :math:`\|I - \alpha M\|_2`
    (best :math:`\alpha` on a grid) from :math:`\|z_0 - z^\star\| \le \|b\| / m`; the iterations it needs for the
    same logit error, each one multiplication by :math:`W` instead of one resolvent."""
    exact = copy.deepcopy(model).double()
    blocks = export.operator_blocks(exact.layer.linear)
    eye = torch.eye(blocks.shape[-1], dtype=blocks.dtype)
    rate, step = min((export.largest_norm(eye - a * (eye - blocks)), a) for a in torch.logspace(-4, 1, 200).tolist())
    worst = unrolled.error_bound / unrolled.bound.factor  # the bound of ||Ux + b|| over the box unroll used
    start = unrolled.bound.readout_norm * worst / exact.layer.linear.m
    error = unrolled.error_bound
    iterations = 1 + math.ceil(math.log(error / start) / math.log(rate)) if rate < 1 else None
    return {"rate": rate, "alpha": step, "iterations": iterations}


def _seconds_per_iteration(step: Callable[[], object], repeats: int) -> float:
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def _iteration_times(
    model: MonDEQClassifier, unrolled: export.UnrolledMonDEQ, batch: torch.Tensor, fb_step: float, repeats: int
) -> dict:
    """Seconds of one iteration at ``batch`` (torch eager): forward-backward's multiplication by :math:`W` (the
    operator's own, in the Fourier domain) and prox, against Peaceman-Rachford's exported resolvent and prox."""
    op, activation = model.layer.linear, model.layer.activation
    with torch.no_grad():
        weights, b = op.weights(), op.inject(batch)
        z = torch.zeros_like(b)
        scaled = unrolled.bound.alpha * unrolled.injection(batch)
        state = torch.zeros_like(scaled)
        return {
            "forward_backward": _seconds_per_iteration(
                lambda: activation.prox(z - fb_step * (z - op.apply_weights(z, weights) - b), fb_step), repeats
            ),
            "peaceman_rachford": _seconds_per_iteration(lambda: unrolled.step(state, scaled), repeats),
        }


def run(tiny: bool = False) -> dict:
    model, source = _model(tiny)
    test = test_images(tiny)
    x, labels = test.normalize(test.images), test.labels
    low, high = image_range(test.info, torch.zeros(1, 1, 1, 1, dtype=torch.float64))
    start = time.perf_counter()
    unrolled = export.unroll(model, error=DEFAULT_ERROR, input_range=(low, high))
    unroll_seconds = time.perf_counter() - start
    result: dict = {
        "forward_backward": _forward_backward(model, unrolled),
        "source": source,
        "images": len(x),
        "bound": export.describe(unrolled.bound),
    }
    result.update(logit_error=unrolled.error_bound, unroll_seconds=unroll_seconds)
    result["iteration_seconds"] = _iteration_times(
        model, unrolled, x[:BATCH], result["forward_backward"]["alpha"], 3 if tiny else 20
    )
    # accuracy and disagreements on the whole test set
    with ignore_convergence_warnings():
        evaluated = _predict(model, x)
        # the reference, solved to 1e-6, and its own distance from the equilibrium, proven in float64
        twin64 = copy.deepcopy(model).double()
        spread = readout_norm(twin64)
        exact_parts, errors = [], []
        with model.layer.options(tol=1e-6, max_iter=1000), torch.no_grad():
            for i in range(0, len(x), BATCH):
                z = model.layer(x[i : i + BATCH])
                exact_parts.append(model.readout(model.pool(z)))
                errors.append(spread * equilibrium_error(twin64.layer, x[i : i + BATCH].double(), z.double()))
        exact, reference_error = torch.cat(exact_parts), torch.cat(errors)
    exported = _predict(unrolled, x)
    bounds = torch.cat([unrolled.error(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])
    top2 = exported.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).double()
    uncertain = margin <= math.sqrt(2) * bounds
    differ = exported.argmax(1) != exact.argmax(1)
    result.update(
        accuracy_implicit=float((evaluated.argmax(1) == labels).float().mean()),
        accuracy_exact=float((exact.argmax(1) == labels).float().mean()),
        accuracy_exported=float((exported.argmax(1) == labels).float().mean()),
        disagreements=int(differ.sum()),
        disagreements_outside_bound=int((differ & ~uncertain).sum()),
        below_bound=int(uncertain.sum()),
        largest_distance=float((exported.double() - exact.double()).norm(dim=1).max()),
        mean_input_bound=float(bounds.mean()),
    )
    # the bound each image's run computes from its last iterate (--certify), at fewer iterations
    certified = []
    for iterations in CERTIFIED_ITERATIONS:
        network = export.unroll(model, iterations=iterations, certify=True)
        with torch.no_grad():
            pairs = [network(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
        logits, bound = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]).double()
        distance = (logits.double() - exact.double()).norm(dim=1)
        certified.append(
            {
                "iterations": iterations,
                "proven": float((bound <= DEFAULT_ERROR).double().mean()),
                "largest": float(bound.max()),
                "median": float(bound.median()),
                "exceeded": int((distance > bound + reference_error).sum()),
                "disagreements": int((logits.argmax(1) != exact.argmax(1)).sum()),
            }
        )
    result["certified"] = certified
    result["reference_error"] = float(reference_error.max())
    # float32 rounding: the exported network against its float64 twin (same iterations, float64 weights and arithmetic)
    twin = export.unroll(copy.deepcopy(model).double(), iterations=unrolled.iterations)
    sample = x[: 64 if tiny else 2000]
    result["rounding"] = float((_predict(twin, sample.double()).double() - _predict(unrolled, sample).double()).norm(dim=1).max())
    # low precision: the unrolled network cast to bfloat16, and float32 under bfloat16 autocast
    low_precision = {}
    cast = export.unroll(model, iterations=unrolled.iterations).to(torch.bfloat16)
    low_precision["exported, bfloat16 weights"] = _predict(lambda b: cast(b.to(torch.bfloat16)), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_precision["exported, float32 under bfloat16 autocast"] = _predict(unrolled, x)
    try:  # the implicit model under autocast: its solver's arithmetic in bfloat16 where autocast chooses it
        with torch.autocast("cpu", dtype=torch.bfloat16), ignore_convergence_warnings():
            low_precision["implicit, under bfloat16 autocast"] = _predict(model, x)
    except (RuntimeError, TypeError) as error:
        result["implicit_autocast_error"] = str(error).splitlines()[0][:200]
    result["low_precision"] = {
        name: {
            "accuracy": float((logits.argmax(1) == labels).float().mean()),
            "disagreements": int((logits.argmax(1) != exact.argmax(1)).sum()),
            "largest_distance": float((logits.double() - exact.double()).norm(dim=1).max()),
        }
        for name, logits in low_precision.items()
    }
    # speed, all paths in one run
    one, batch = x[:1], x[:BATCH]
    repeats = (3, 1) if tiny else (30, 3)
    paths: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    paths["implicit (mondeq eval)"] = model
    paths["exported, torch eager"] = unrolled
    compile_seconds = None
    try:  # not at --tiny: compiling takes a minute
        if tiny:
            raise RuntimeError("not measured at --tiny")
        compiled = torch.compile(unrolled, dynamic=False)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(one)
            compiled(batch)
        compile_seconds = time.perf_counter() - start
        paths["exported, torch.compile"] = compiled
    except Exception as error:  # no C++ compiler, or an unsupported platform: reported, not fatal
        result["compile_error"] = str(error).splitlines()[0][:200]
    with tempfile.TemporaryDirectory() as folder:
        shape = tuple(x.shape[1:])
        for file_format in export.FORMATS:
            try:
                path = export.save(unrolled, Path(folder) / f"model.{file_format}", file_format, shape, {})
                loaded = export.load(path)
                runtime = "onnxruntime" if file_format == "onnx" else "torch.export.load"
                paths[f"exported, {file_format} ({runtime})"] = loaded
            except ConfigError as error:  # onnx not installed
                result[f"{file_format}_error"] = str(error)
        # the certifying network at the fewest iterations that proved every test image (else the most measured)
        every = [r["iterations"] for r in certified if r["proven"] == 1.0]
        fewest = min(every) if every else certified[-1]["iterations"]
        certifying = export.unroll(model, iterations=fewest, certify=True)
        paths[f"exported at {fewest} iterations with --certify, torch eager"] = certifying
        if "onnx_error" not in result:
            path = export.save(certifying, Path(folder) / "certifying.onnx", "onnx", shape, {})
            paths[f"exported at {fewest} iterations with --certify, onnxruntime"] = export.load(path)
        rows = []
        with ignore_convergence_warnings(), torch.no_grad():
            for name, path_run in paths.items():
                rows.append(
                    {
                        "path": name,
                        "latency_ms": 1000 * _latency(path_run, one, repeats[0]),
                        "images_per_second": _throughput(path_run, batch, repeats[1]),
                    }
                )
    result.update(speed=rows, compile_seconds=compile_seconds, threads=torch.get_num_threads())
    return result


def markdown(result: dict) -> str:
    bound, fb, seconds = result["bound"], result["forward_backward"], result["iteration_seconds"]
    lines = [
        f"The `fmnist-fast` recipe's model ({result['source']}) exported with `mondeq export` (default bound): "
        f"{bound['iterations']} Peaceman-Rachford iterations, step {bound['alpha']:.3g}, contraction "
        f"{bound['rate']:.4f} per iteration, proven logit error {result['logit_error']:.3g} (l2) for every image "
        f"(the mean of the per-image bounds: {result['mean_input_bound']:.3g}; float32 rounding, measured against the "
        f"float64 network on {min(result['images'], 2000):,} images: {result['rounding']:.2g}); built in "
        f"{result['unroll_seconds']:.1f} s. "
        f"{result['threads']} torch threads.",
        "",
        *markdown_table(
            ["model", f"test accuracy ({result['images']:,} images)", "predictions unlike the implicit model's"],
            [
                ["implicit, as trained (its tol)", f"{100 * result['accuracy_implicit']:.2f}%", "-"],
                ["implicit, solved to 1e-6", f"{100 * result['accuracy_exact']:.2f}%", "(reference)"],
                [
                    "exported, float32",
                    f"{100 * result['accuracy_exported']:.2f}%",
                    f"{result['disagreements']} ({result['disagreements_outside_bound']} where the margin exceeds the bound; "
                    f"{result['below_bound']} margins below it)",
                ],
                *[
                    [name, f"{100 * row['accuracy']:.2f}%", f"{row['disagreements']} (no bound holds)"]
                    for name, row in result["low_precision"].items()
                ],
            ],
        ),
        "",
        f"The bound each image's run computes from its last iterate (`--certify`; float32; the reference solved to 1e-6 "
        f"is itself within {result['reference_error']:.1g} of the equilibrium, proven):",
        "",
        *markdown_table(
            [
                "iterations",
                f"images proven within {DEFAULT_ERROR}",
                "median bound",
                "largest bound",
                "bound exceeded",
                "disagreements",
            ],
            [
                [
                    r["iterations"],
                    f"{100 * r['proven']:.2f}%",
                    f"{r['median']:.2g}",
                    f"{r['largest']:.2g}",
                    r["exceeded"],
                    r["disagreements"],
                ]
                for r in result["certified"]
            ],
        ),
        "",
        f"Forward-backward, the splitting without a resolvent, contracts by {fb['rate']:.5f} per iteration at its best "
        f"step {fb['alpha']:.3g}: the same proven bound would take it {fb['iterations'] or 'unbounded'} iterations "
        f"(each one multiplication by W) against Peaceman-Rachford's {bound['iterations']} (each one resolvent). "
        f"At batch {BATCH} (torch eager) one iteration takes {1000 * seconds['forward_backward']:.1f} ms (W in the "
        f"Fourier domain) against {1000 * seconds['peaceman_rachford']:.1f} ms (the exported resolvent): "
        + (
            f"{(fb['iterations'] or 0) * seconds['forward_backward']:.2f} s against "
            f"{bound['iterations'] * seconds['peaceman_rachford']:.2f} s per batch for the same proven bound."
            if fb["iterations"]
            else "forward-backward proves no bound."
        ),
        "",
        *markdown_table(
            ["path", "latency, batch 1", "throughput, batch 256"],
            [[r["path"], f"{r['latency_ms']:.2f} ms", f"{r['images_per_second']:.0f} img/s"] for r in result["speed"]],
        ),
    ]
    if result.get("compile_seconds") is not None:
        lines += ["", f"torch.compile took {result['compile_seconds']:.0f} s once (batch 1 and 256)."]
    for key in ("compile_error", "onnx_error", "pt2_error", "implicit_autocast_error"):
        if result.get(key):
            lines += ["", f"{key.replace('_', ' ')}: {result[key]}"]
    return "\n".join(lines)


SECTION = Section(title="12. The exported model: accuracy, bound and speed", order=13, run=run, markdown=markdown)
