"""Tests of the streamed per-layer statistics, histograms and the ridge probe."""

from __future__ import annotations

import functools

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from actgeo import kernels
from actgeo.kernels import Bins, StatsConfig, histogram
from actgeo.networks import MLPParams

# D = 3, N = 8, L = 4; B = 5 inputs with Jacobians, P = 32 probe inputs (16
# fit the probe, 16 score it). Every network test here uses these shapes.
D, N, L, B, P = 3, 8, 4, 5, 32
ALPHA = 0.5
PARAMS = ref.random_params(10, D, N, L)
_rng = np.random.default_rng(11)
X = _rng.normal(size=(B, D))
PROBE_X = _rng.normal(size=(P, D))
# Signed distance of each probe input to the unit sphere.
PROBE_TARGET = np.linalg.norm(PROBE_X, axis=1) - 1.0
CONFIG = StatsConfig()
N_TRAIN = CONFIG.n_train(P)
PEAK_SLOPE = {"relu": 1.0, "tanh": 1.0}
FLOATS = (
    "q",
    "correlation",
    "log10_jacobian_norm",
    "saturated",
    "retention_first",
    "retention_target",
)


def _mlp(p: ref.Params, dtype) -> MLPParams:
    return MLPParams(*(jnp.asarray(a, dtype) for a in p))


def assert_counts_close(got, want, moves=2):
    """Histograms equal but for at most ``moves`` moves of one value by one bin.

    Rounding can put a value that lies within 1e-15 of a bin edge on the
    other side of it; anything more is a real difference. (A value moved k
    bins counts as k moves.)
    """
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.sum(-1), want.sum(-1))
    drift = np.cumsum(got, axis=-1) - np.cumsum(want, axis=-1)
    assert np.abs(drift).sum() <= moves, np.nonzero(drift)


# Histograms


LEVELS = np.array([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])


@pytest.mark.parametrize(
    ("bins", "widths"), [(Bins(), 2), (Bins(-4.0, 4.0, 64), 1)], ids=["default", "64"]
)
def test_quantiles_match_numpy(bins, widths):
    distances = np.random.default_rng(12).lognormal(mean=-1.0, sigma=1.5, size=4000)
    logs = np.log10(distances)
    summary = histogram.summarize(jnp.asarray(logs.reshape(40, 100)), bins)
    assert int(summary.counts.sum()) == logs.size
    got = histogram.quantiles(summary.counts, bins, LEVELS)
    assert got.shape == (LEVELS.size,)
    # Within a bin (plus the gap between neighbouring samples, far smaller
    # than a bin here) of the exact sample quantiles.
    np.testing.assert_allclose(got, np.quantile(logs, LEVELS), atol=widths * bins.width)
    low, high = histogram.quantiles(summary.counts, bins, [0.0, 1.0])
    assert logs.min() - bins.width <= low <= logs.min()
    assert logs.max() <= high <= logs.max() + bins.width
    np.testing.assert_allclose(histogram.mean(summary), logs.mean(), rtol=1e-6)


def test_summary_counts_infinities_and_clipping():
    bins = Bins(-2.0, 2.0, 8)  # width 0.5
    values = np.array(
        [
            [-np.inf, -np.inf, -np.inf, np.inf, np.inf, -5.0],
            [3.0, 2.0, -2.0, 0.0, 0.49, 0.5],
            [-0.01, 1.0, 1.0, 1.0, -np.inf, 1.75],
        ]
    )
    s = histogram.summarize(jnp.asarray(values, jnp.float32), bins)
    # -5 and -2 in bin 0; -0.01 in bin 3; 0 and 0.49 in bin 4; 0.5 in bin 5;
    # 1.0 (three) in bin 6; 1.75, 2.0 (the upper edge) and 3 in bin 7.
    np.testing.assert_array_equal(s.counts, [2, 0, 0, 1, 2, 1, 3, 3])
    assert int(s.n_zero) == 4
    assert int(s.n_inf) == 2
    assert int(s.n_clipped) == 2  # -5 and 3; the edges themselves are in range
    finite = values[np.isfinite(values)]
    np.testing.assert_allclose(float(s.log_sum), finite.sum(), rtol=1e-6)
    np.testing.assert_allclose(histogram.mean(s), finite.mean(), rtol=1e-6)


def test_quantiles_of_several_histograms_and_empty_ones():
    bins = Bins(-2.0, 2.0, 8)
    counts = np.zeros((2, 3, 8), np.int32)
    counts[0, 0, 4] = 10  # all in [0, 0.5)
    counts[1, 2, [0, 7]] = 5  # half in [-2, -1.5), half in [1.5, 2]
    got = histogram.quantiles(counts, bins, [0.0, 0.5, 1.0])
    assert got.shape == (2, 3, 3)
    np.testing.assert_allclose(got[0, 0], [0.0, 0.25, 0.5])
    np.testing.assert_allclose(got[1, 2], [-2.0, -1.5, 2.0])
    assert np.all(np.isnan(got[0, 1:])) and np.all(np.isnan(got[1, :2]))
    empty = histogram.summarize(jnp.asarray([np.inf, -np.inf]), bins)
    assert np.isnan(histogram.mean(empty))


def test_histogram_argument_errors():
    with pytest.raises(ValueError, match=r"q: expected levels in \[0, 1\]"):
        histogram.quantiles(np.ones(8), Bins(-2.0, 2.0, 8), [0.5, 1.5])
    with pytest.raises(ValueError, match="Bins: expected finite lo < hi"):
        Bins(1.0, -1.0)
    with pytest.raises(ValueError, match="Bins: expected finite lo < hi"):
        Bins(-np.inf, 1.0)
    with pytest.raises(ValueError, match="Bins: count"):
        Bins(count=1)
    with pytest.raises(ValueError, match="StatsConfig: ridge"):
        StatsConfig(ridge=0.0)
    with pytest.raises(ValueError, match="StatsConfig: train_fraction"):
        StatsConfig(train_fraction=1.0)


# Ridge probe


@pytest.mark.parametrize("ridge", [1e-3, 0.3])
@pytest.mark.parametrize("outputs", [1, 3])
def test_ridge_r2_matches_scikit_learn(ridge, outputs):
    rng = np.random.default_rng(13)
    features = rng.normal(size=(P, N)) * rng.uniform(0.1, 10, size=N) + 4.0
    targets = features @ rng.normal(size=(N, outputs)) + rng.normal(size=(P, outputs))
    targets = targets[:, 0] if outputs == 1 else targets
    want = ref.ridge_r2(features, targets, N_TRAIN, ridge)
    with jax.enable_x64(True):
        got = kernels.ridge_r2(
            jnp.asarray(features), jnp.asarray(targets), N_TRAIN, ridge
        )
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_ridge_r2_with_constant_features_predicts_the_mean():
    targets = np.random.default_rng(14).normal(size=P)
    with jax.enable_x64(True):
        got = kernels.ridge_r2(jnp.ones((P, N)), jnp.asarray(targets), N_TRAIN, 1e-3)
    train, test = targets[:N_TRAIN], targets[N_TRAIN:]
    want = 1 - np.sum((test - train.mean()) ** 2) / np.sum((test - test.mean()) ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-12)


# layer_statistics against the NumPy reference


@functools.partial(jax.jit, static_argnames="activation")
def _stats(params, x, probe_x, probe_target, activation, residual):
    return kernels.layer_statistics(
        params,
        x,
        activation,
        probe_x=probe_x,
        probe_target=probe_target,
        residual=residual,
        config=CONFIG,
    )


def _reference_stats(activation, residual):
    phi, phi_prime = ref.ACTIVATIONS[activation]
    z, j = ref.forward(PARAMS, X, activation, residual)
    zp, _ = ref.forward(PARAMS, PROBE_X, activation, residual)
    delta_in, delta_rep, region = ref.distances(PARAMS, z, j, residual)
    first = zp[0] / np.linalg.norm(PARAMS.w_in, axis=1)
    unit = zp / np.linalg.norm(zp, axis=-1, keepdims=True)
    return {
        "q": np.mean(np.sum(zp**2, axis=-1), axis=-1) / N,
        "correlation": np.mean(np.sum(unit[:, 0::2] * unit[:, 1::2], -1), -1),
        "log10_jacobian_norm": np.mean(
            np.log10(np.linalg.norm(j.reshape(L, B, -1), axis=-1)), axis=-1
        ),
        "saturated": np.mean(
            np.abs(phi_prime(zp)) < 0.01 * PEAK_SLOPE[activation], axis=(1, 2)
        ),
        "retention_first": [
            ref.ridge_r2(phi(zp[l]), first, N_TRAIN, CONFIG.ridge) for l in range(L)
        ],
        "retention_target": [
            ref.ridge_r2(phi(zp[l]), PROBE_TARGET, N_TRAIN, CONFIG.ridge)
            for l in range(L)
        ],
        "delta_in": np.log10(delta_in),
        "delta_rep": np.log10(delta_rep),
        "region": np.log10(region),
    }


@pytest.mark.parametrize(("activation", "residual"), [("relu", None), ("tanh", ALPHA)])
def test_layer_statistics_against_reference(activation, residual):
    want = _reference_stats(activation, residual)
    with jax.enable_x64(True):
        got = _stats(
            _mlp(PARAMS, jnp.float64), X, PROBE_X, PROBE_TARGET, activation, residual
        )
    for field in FLOATS:
        assert getattr(got, field).shape == (L,), field
        np.testing.assert_allclose(
            getattr(got, field), want[field], rtol=1e-9, atol=1e-12, err_msg=field
        )
    # The statistics are not degenerate: something saturates, something not.
    assert 0 < np.mean(want["saturated"]) < 1
    bins = CONFIG.bins
    for field in ("delta_in", "delta_rep", "region"):
        summary, logs = getattr(got, field), want[field]
        for l in range(L):
            assert_counts_close(
                summary.counts[l], ref.bin_counts(logs[l], bins.lo, bins.hi, bins.count)
            )
        np.testing.assert_allclose(
            summary.log_sum, logs.reshape(L, -1).sum(-1), rtol=1e-9, err_msg=field
        )
        np.testing.assert_array_equal(summary.n_inf, 0)
        np.testing.assert_array_equal(summary.n_zero, 0)
        np.testing.assert_array_equal(summary.n_clipped, 0)


@pytest.mark.parametrize("d", [2, 5])
def test_float32_counts_match_float64_bins_away_from_edges(d):
    # The kernel bins each distance from float32 operations in its own order
    # (Jacobian columns laid out (N, D, B), sums of squares over D reduced
    # there). Against exact float64 distances, a value may change bin only
    # within float32 rounding of a bin edge.
    n, depth, b = 48, 6, 9
    params = ref.random_params(12, d, n, depth)
    x = np.random.default_rng(13).normal(size=(b, d))
    bins = CONFIG.bins
    got = _stats(
        _mlp(params, jnp.float32), x.astype(np.float32), None, None, "tanh", None
    )
    z, j = ref.forward(params, x, "tanh")
    delta_in, delta_rep, region = ref.distances(params, z, j)
    kinds = {"delta_in": delta_in, "delta_rep": delta_rep, "region": region}
    tolerance = 2e-4  # in bins; float32 rounding here is well under 1e-4 of one
    near_total = total = 0
    for field, distance in kinds.items():
        counts = np.asarray(getattr(got, field).counts)
        for layer in range(depth):
            logs = np.log10(distance[layer]).ravel()
            position = (logs - bins.lo) / (bins.hi - bins.lo) * bins.count
            near = np.abs(position - np.round(position)) < tolerance
            near_total += near.sum()
            total += logs.size
            far = ref.bin_counts(logs[~near], bins.lo, bins.hi, bins.count)
            extra = counts[layer] - far
            assert extra.min() >= 0, (field, layer)
            assert extra.sum() == near.sum(), (field, layer)
            # Each value near an edge is in one of the two bins beside it.
            allowed = np.zeros(bins.count, bool)
            edge = np.round(position[near]).astype(int)
            allowed[np.clip(edge, 0, bins.count - 1)] = True
            allowed[np.clip(edge - 1, 0, bins.count - 1)] = True
            assert allowed[extra > 0].all(), (field, layer)
    assert near_total < 0.01 * total


# measure_function gives the same numbers


def _closure(params: MLPParams):
    """A user's tanh MLP: one input ``(D,)`` to per-layer preactivations."""

    def fn(v):
        z = params.w_in @ v + params.b_in
        layers = [z]
        for w, b in zip(params.w, params.b, strict=True):
            z = w @ jnp.tanh(z) + b
            layers.append(z)
        return layers

    return fn


@functools.partial(jax.jit, static_argnames="with_norms")
def _measure(params, x, probe_x, probe_target, with_norms):
    row_norms = None
    if with_norms:
        row_norms = [jnp.linalg.norm(params.w_in, axis=1)]
        row_norms += [jnp.linalg.norm(w, axis=1) for w in params.w]
    return kernels.measure_function(
        _closure(params),
        x,
        "tanh",
        probe_x=probe_x,
        probe_target=probe_target,
        row_norms=row_norms,
        config=CONFIG,
    )


@pytest.mark.parametrize("with_norms", [True, False], ids=["row-norms", "no-norms"])
def test_measure_function_matches_layer_statistics(with_norms):
    # In float64: in float32 the probe's ridge solve (condition number ~1e4
    # here) lets the two entry points' different rounding (forward-mode
    # Jacobians under a scan against jax.jacfwd of an unrolled closure) move
    # R^2 by a few 1e-5 from one compilation to the next.
    with jax.enable_x64(True):
        params = _mlp(PARAMS, jnp.float64)
        want = _stats(params, X, PROBE_X, PROBE_TARGET, "tanh", None)
        got = _measure(params, X, PROBE_X, PROBE_TARGET, with_norms)
    for field in FLOATS:
        np.testing.assert_allclose(
            getattr(got, field),
            getattr(want, field),
            rtol=1e-9,
            atol=1e-12,
            err_msg=field,
        )
    fields = ["delta_in", "region"]
    if with_norms:
        fields.append("delta_rep")
    else:
        # Without weights there is no representation-space distance; the
        # probe's first-layer distances use |dz^1/dx| instead of |W^1| rows.
        assert got.delta_rep is None
    for field in fields:
        a, b = getattr(got, field), getattr(want, field)
        for l in range(L):
            assert_counts_close(a.counts[l], b.counts[l])
        np.testing.assert_allclose(a.log_sum, b.log_sum, rtol=1e-9, err_msg=field)
        for count in ("n_zero", "n_inf", "n_clipped"):
            np.testing.assert_array_equal(getattr(a, count), getattr(b, count))


# Errors


SHAPE_ERRORS = [
    # (change to the arguments, message of layer_statistics, of measure_function)
    (
        {"x": np.zeros((B, D + 1))},
        r"^x: expected shape \(B, 3\) with B >= 1, got \(5, 4\)$",
        # measure_function takes D from x, so probe_x is the odd one out.
        r"^probe_x: expected shape \(P, 4\), got \(32, 3\)$",
    ),
    (
        {"x": np.zeros(D)},
        r"^x: expected shape \(B, 3\)",
        r"^x: expected shape \(B, D\)",
    ),
    ({"probe_x": np.zeros((P, 2))}, r"^probe_x: expected shape \(P, 3\)", None),
    ({"probe_x": np.zeros((3, D))}, r"^probe_x: the probe needs at least 2", None),
    ({"probe_target": np.zeros(P - 1)}, r"^probe_target: expected shape \(32,\)", None),
    (
        {"probe_target": np.zeros((P, 1))},
        r"^probe_target: expected shape \(32,\)",
        None,
    ),
    ({"probe_x": None}, "^probe_target: given without probe_x$", None),
]


@pytest.mark.parametrize(("change", "message", "measure_message"), SHAPE_ERRORS)
@pytest.mark.parametrize("entry", ["layer_statistics", "measure_function"])
def test_bad_inputs_name_the_argument(change, message, measure_message, entry):
    args = {"x": X, "probe_x": PROBE_X, "probe_target": PROBE_TARGET, **change}
    args = {k: None if v is None else jnp.asarray(v) for k, v in args.items()}
    params = _mlp(PARAMS, jnp.float32)
    if entry == "layer_statistics":
        with pytest.raises(ValueError, match=message):
            kernels.layer_statistics(params, activation="tanh", **args)
    else:
        with pytest.raises(ValueError, match=measure_message or message):
            kernels.measure_function(_closure(params), activation="tanh", **args)


def test_every_input_problem_in_one_message():
    with pytest.raises(ValueError) as err:
        kernels.layer_statistics(
            _mlp(PARAMS, jnp.float32),
            jnp.zeros((B, 2)),
            "tanh",
            probe_x=jnp.zeros((P, 2)),
            probe_target=jnp.zeros(3),
        )
    for name in ("x:", "probe_x:", "probe_target:"):
        assert name in str(err.value)


def test_measure_function_checks_row_norms():
    params = _mlp(PARAMS, jnp.float32)
    with pytest.raises(
        ValueError, match=r"row_norms: expected one entry per layer \(4\)"
    ):
        kernels.measure_function(
            _closure(params),
            jnp.asarray(X, jnp.float32),
            "tanh",
            row_norms=[jnp.ones(N)] * 3,
        )
