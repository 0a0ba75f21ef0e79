"""mondeq.export: the unrolled network, its proven bound (checked against float64 equilibria solved to
1e-12 and against dense matrices), the files it is written to, and bad input."""

import dataclasses
import importlib.util
import math

import pytest
import torch

from helpers import SIDE, dense, small_classifier
from mondeq import export
from mondeq.errors import CheckpointError, ConfigError, OutputError
from mondeq.models import ModelConfig, MonDEQClassifier
from mondeq.robust.certificates import equilibrium_error, readout_norm

F64 = torch.float64
#: The model kinds and options the export takes, each a float64 classifier with weights scaled x2 (harder solves).
CASES = {
    "fc": {},
    "fc leaky_relu": {"activation": "leaky_relu"},
    "fc tanh": {"activation": "tanh"},
    "fc interval": {"interval": True, "m": 0.4},
    "single-conv": {},
    "single-conv stride 2": {"stride": 2},
    "single-conv hardtanh": {"activation": "hardtanh", "m": 0.3},
    "single-conv interval": {"interval": True, "m": 0.4, "stride": 2},
    "multi-conv": {"channels": [2, 3]},
    "multi-conv all": {"channels": [3, 2], "readout": "all", "activation": "leaky_relu"},
}


def classifier(name: str, seed: int = 0) -> MonDEQClassifier:
    model = small_classifier(name.split()[0], seed, width=10, **CASES[name])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model


def images(batch: int, seed: int = 1, dtype=F64) -> torch.Tensor:
    return torch.randn(batch, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("name", list(CASES))
def test_the_unrolled_logits_are_within_the_proven_bound_of_the_exact_equilibrium(name):
    model = classifier(name)
    x = images(16)
    with torch.no_grad():
        z = model.layer(x)  # solved to 1e-12, and its own distance from the equilibrium proven
        exact = model.readout(model.pool(z))
        slack = readout_norm(model) * equilibrium_error(model.layer, x, z)
    distances = []
    for iterations in (1, 2, 5, 15, 40):
        unrolled = export.unroll(model, iterations=iterations)
        with torch.no_grad():
            distance = (unrolled(x) - exact).norm(dim=1)
        assert (distance <= unrolled.error(x) + slack).all(), (iterations, distance.max(), unrolled.error(x).min())
        distances.append(float(distance.max()))
    assert distances[-1] < 1e-3 * distances[0]  # it converges: the check above is not vacuous
    assert float(slack.max()) < 1e-6 * distances[0]
    assert float(unrolled.error(x).max()) < 1.0  # and neither is the bound after 40 iterations


@pytest.mark.parametrize("name", ["fc", "fc tanh", "single-conv", "single-conv stride 2", "single-conv interval"])
def test_the_bound_from_the_last_iterate_holds_and_is_far_tighter(name):
    model = classifier(name, seed=6)
    x = images(16, seed=7)
    with torch.no_grad():
        z = model.layer(x)
        exact = model.readout(model.pool(z))
        slack = readout_norm(model) * equilibrium_error(model.layer, x, z)
    tighter, tight = [], []
    for iterations in (1, 3, 10, 30):
        network = export.unroll(model, iterations=iterations, certify=True)
        with torch.no_grad():
            logits, bound = network(x)
            assert torch.equal(logits, export.unroll(model, iterations=iterations)(x))
        distance = (logits - exact).norm(dim=1)
        assert (distance <= bound + slack).all(), (iterations, distance.max(), bound.min())
        tighter.append(float(bound.max()) < 0.1 * float(network.error(x).min()))
        tight.append(float(distance.max()) > 1e-3 * float(bound.max()))
    assert any(tighter[1:])  # far below the a priori bound once the iterate has converged some
    assert tight[1]  # and not vacuously loose (3 iterations: above float64 noise)


@pytest.mark.parametrize("name", ["fc", "single-conv", "single-conv stride 2", "single-conv interval"])
def test_the_contraction_constants_are_the_dense_matrices_norms(name):
    model = classifier(name)
    unrolled = export.unroll(model, iterations=3)
    bound, op = unrolled.bound, model.layer.linear
    eye = torch.eye(op.features, dtype=F64)
    operator = eye - op.to_dense()
    inverse = torch.linalg.inv(eye + bound.alpha * operator)
    reflected = eye - bound.alpha * operator

    def norm(a: torch.Tensor) -> float:
        return float(torch.linalg.matrix_norm(a, ord=2))

    assert bound.rate == pytest.approx(norm(reflected @ inverse), rel=1e-7) and bound.rate < 1
    assert bound.resolvent_norm == pytest.approx(norm(inverse), rel=1e-7)
    assert bound.start == pytest.approx(norm(reflected) / op.m + bound.alpha, rel=1e-7)
    # the step is the best one: a nearby step contracts no faster
    for step in (bound.alpha * 0.8, bound.alpha * 1.25):
        other = torch.linalg.inv(eye + step * operator)
        assert norm((eye - step * operator) @ other) >= bound.rate * (1 - 1e-6)


@pytest.mark.parametrize(
    "kind,channels,side,stride,pool",
    [
        ("single-conv", [3], 8, 1, 2),
        ("single-conv", [3], 8, 2, 2),
        ("single-conv", [3], 9, 1, 3),
        ("single-conv", [3], 10, 2, 5),
        ("multi-conv", [2, 3], 8, 1, 1),
        ("multi-conv", [2, 3], 12, 2, 1),  # an odd last tier (3 x 3)
        ("multi-conv", [2, 2, 3], 12, 1, 1),
        ("multi-conv", [2, 3, 2], 20, 1, 1),  # 20, 10, 5
    ],
)
def test_the_real_fourier_resolvent_is_the_operator_s_resolvent(kind, channels, side, stride, pool):
    torch.manual_seed(side + stride)
    config = ModelConfig(kind=kind, in_channels=2, image_size=side, num_classes=3, channels=channels, pool=pool, stride=stride)
    model = MonDEQClassifier(config).double().eval()
    unrolled = export.unroll(model, iterations=2)
    op = model.layer.linear
    resolvent = op.resolvent(unrolled.bound.alpha)
    y = torch.randn(4, op.features, dtype=F64)
    expected = resolvent.solve(y)
    assert torch.allclose(unrolled.resolvent(y), expected, atol=1e-12, rtol=0)
    injected = torch.randn(4, 2, side, side, dtype=F64)
    assert torch.allclose(unrolled.injection(injected), op.inject(injected), atol=1e-12, rtol=0)
    z = torch.randn(4, op.features, dtype=F64)
    assert torch.allclose(unrolled.readout(z), model.readout(model.pool(op.unflatten(z))), atol=1e-12, rtol=0)


def test_the_blocks_of_a_multi_tier_convolution_have_its_singular_values():
    torch.manual_seed(3)
    config = ModelConfig(kind="multi-conv", in_channels=1, image_size=12, num_classes=3, channels=[2, 2, 3], m=0.2)
    op = MonDEQClassifier(config).double().layer.linear
    with torch.no_grad():
        for p in op.parameters():
            p.add_(0.3 * torch.randn_like(p))
        values = torch.linalg.svdvals(op.to_dense())
        blocks = export.operator_blocks(op)
    # the blocks of the real FFT's columns q2 <= w/2: those strictly inside stand for their conjugates too
    width = op.sizes[-1][1]
    q2 = torch.arange(blocks.shape[0]) % (width // 2 + 1)
    twice = (q2 > 0) & (2 * q2 != width)
    per_block = torch.linalg.svdvals(blocks)
    spectrum = torch.cat([per_block.flatten(), per_block[twice].flatten()]).sort().values
    assert spectrum.shape == values.shape
    assert torch.allclose(spectrum, values.sort().values, atol=1e-12)


def test_the_start_bound_holds_at_the_fixed_point():
    # u* = (I - alpha M) z* + alpha b, and ||u*|| <= start ||b||
    for name in ("fc", "single-conv"):
        model = classifier(name, seed=2)
        unrolled = export.unroll(model, iterations=1)
        op, alpha = model.layer.linear, unrolled.bound.alpha
        x = images(32, seed=3)
        with torch.no_grad():
            z = op.flatten(model.layer(x))
            b = op.inject(x)
            state = z - alpha * (z - op.multiply(z)) + alpha * b
        assert (state.norm(dim=1) <= unrolled.bound.start * b.norm(dim=1)).all()


def test_the_box_bound_holds_at_its_corners_and_the_error_sets_the_fewest_iterations():
    model = classifier("single-conv", seed=4)
    low, high = torch.full((1, 1, 1, 1), -0.5, dtype=F64), torch.full((1, 1, 1, 1), 2.0, dtype=F64)
    unrolled = export.unroll(model, error=1e-3, input_range=(low, high))
    bound = unrolled.bound
    assert unrolled.error_bound <= 1e-3
    fewer = dataclasses.replace(bound, iterations=bound.iterations - 1)
    assert fewer.factor * (unrolled.error_bound / bound.factor) > 1e-3
    generator = torch.Generator().manual_seed(5)
    corners = torch.where(torch.rand(512, 1, SIDE, SIDE, generator=generator, dtype=F64) < 0.5, low, high)
    inside = low + (high - low) * torch.rand(512, 1, SIDE, SIDE, generator=generator, dtype=F64)
    assert (unrolled.error(torch.cat([corners, inside])) <= unrolled.error_bound).all()


def test_the_unrolled_module_takes_vmap_and_holds_buffers_only():
    model = classifier("single-conv")
    unrolled = export.unroll(model, iterations=4)
    x = images(3)
    with torch.no_grad():
        batched = torch.func.vmap(lambda one: unrolled(one[None])[0])(x)
        assert torch.allclose(batched, unrolled(x), atol=1e-12)
    assert not list(unrolled.parameters()) and list(unrolled.buffers())


def _float32_export(tmp_path, file_format: str):
    model = small_classifier("single-conv", seed=1, width=10).float()
    unrolled = export.unroll(model, iterations=6, certify=True)
    path = export.save(unrolled, tmp_path / f"m.{file_format}", file_format, (1, SIDE, SIDE), {"iterations": 6})
    return unrolled, export.load(path)


FILE_FORMATS = [
    "pt2",
    pytest.param(
        "onnx",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
            reason="onnxruntime and onnxscript are not installed (pip install 'mondeq[export]'; CI installs them)",
        ),
    ),
]


@pytest.mark.parametrize("file_format", FILE_FORMATS)
def test_an_exported_file_computes_the_unrolled_module_for_any_batch_size(tmp_path, file_format):
    unrolled, exported = _float32_export(tmp_path, file_format)
    assert exported.metadata == {"iterations": 6}
    for batch in (1, 5):
        x = images(batch, seed=batch, dtype=torch.float32)
        with torch.no_grad():
            for got, expected in zip(exported(x), unrolled(x), strict=True):  # the logits and each input's bound
                assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_bad_input_is_answered_in_one_line(tmp_path):
    model = classifier("fc")
    box = (torch.tensor(0.0), torch.tensor(1.0))
    for wrong in (0, -1.0, math.nan, math.inf, True, "0.1"):
        with pytest.raises(ConfigError, match="error must be a positive finite number"):
            export.unroll(model, error=wrong, input_range=box)
    for wrong in (0, -3, 2.5):
        with pytest.raises(ConfigError, match="iterations must be a positive integer"):
            export.unroll(model, iterations=wrong)
    with pytest.raises(ConfigError, match="at most 1000"):
        export.unroll(model, iterations=1001)
    with pytest.raises(ConfigError, match=r"needs \d+ iterations, more than 1000"):
        export.unroll(model, error=1e-300, input_range=box)
    with pytest.raises(ConfigError, match="one of them"):
        export.unroll(model)
    with pytest.raises(ConfigError, match="one of them"):
        export.unroll(model, iterations=3, error=0.1, input_range=box)
    with pytest.raises(ConfigError, match="input range"):
        export.unroll(model, error=0.1)
    with pytest.raises(ConfigError, match=r"sigma\(0\) = 0"):
        export.unroll(small_classifier("fc", activation="sigmoid"), iterations=3)
    with pytest.raises(ConfigError, match="preset monDEQ classifier"):
        export.unroll(torch.nn.Linear(3, 2), iterations=3)
    unrolled = export.unroll(model, iterations=2)
    with pytest.raises(ConfigError, match="format must be one of onnx, pt2"):
        export.save(unrolled, tmp_path / "m.tflite", "tflite", (1, SIDE, SIDE), {})
    with pytest.raises(OutputError, match="does not exist"):
        export.save(unrolled, tmp_path / "missing" / "m.pt2", "pt2", (1, SIDE, SIDE), {})
    with pytest.raises(CheckpointError, match="no such exported file"):
        export.load(tmp_path / "none.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable exported model"):
        export.load(tmp_path / "junk.pt2")


def test_low_precision_weights_are_refused_in_one_line():
    model = small_classifier("fc").to(torch.bfloat16)
    with pytest.raises(TypeError, match="float32 or float64"):
        model(images(2, dtype=torch.bfloat16))


def test_the_dense_matrix_of_the_exported_injection_is_the_operator_s():
    model = classifier("single-conv stride 2")
    unrolled = export.unroll(model, iterations=1)
    op = model.layer.linear
    expected = dense(lambda x: op.inject(x) - op.inject(torch.zeros_like(x)), (1, SIDE, SIDE))
    bias = unrolled.injection(torch.zeros(1, 1, SIDE, SIDE, dtype=F64))
    got = dense(lambda x: unrolled.injection(x) - bias, (1, SIDE, SIDE))
    assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("file_format", FILE_FORMATS)
def test_a_file_holds_one_iteration_in_a_loop_whatever_the_iterations(tmp_path, file_format):
    model = small_classifier("fc", seed=2, width=10).float()
    sizes = {}
    for iterations in (3, 60):
        unrolled = export.unroll(model, iterations=iterations)
        path = export.save(unrolled, tmp_path / f"{iterations}.{file_format}", file_format, (1, SIDE, SIDE), {})
        assert not unrolled.looped  # the loop form is for the file only; vmap needs the unrolled one
        x = images(4, dtype=torch.float32)
        with torch.no_grad():
            assert torch.allclose(export.load(path)(x), unrolled(x), atol=1e-5, rtol=1e-5)
        sizes[iterations] = path.stat().st_size
    assert abs(sizes[60] - sizes[3]) < 0.02 * sizes[3], sizes
