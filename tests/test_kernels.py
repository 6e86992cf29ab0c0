"""Tests of the forward-mode kernels against an independent float64 reference."""

from __future__ import annotations

import functools

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from actgeo import kernels
from actgeo.activations import get_activation, pattern
from actgeo.kernels import Bins, _norms
from actgeo.networks import MLPParams

# D = 3 input dimensions, N = 8 units, L = 4 layers, B = 5 inputs: every test
# here uses these shapes, so each jitted function compiles once per activation.
D, N, L, B = 3, 8, 4, 5
ALPHA = 0.5
PARAMS = ref.random_params(0, D, N, L)
X = np.random.default_rng(1).normal(size=(B, D))

# (activation, residual alpha or None), for the float64 comparisons.
CASES = [
    ("relu", None),
    ("tanh", None),
    ("gelu", None),
    ("sigmoid", None),
    ("relu", ALPHA),
    ("tanh", ALPHA),
]


def _mlp(p: ref.Params, dtype) -> MLPParams:
    return MLPParams(*(jnp.asarray(a, dtype) for a in p))


@functools.partial(jax.jit, static_argnames="activation")
def _run(params, x, activation, residual):
    """Every full-array kernel at once (one compilation per case)."""
    z, j = kernels.jacobians(params, x, activation, residual=residual)
    z_only = kernels.preactivations(params, x, activation, residual=residual)
    distances = kernels.neuron_distances(params, x, activation, residual=residual)
    return z, j, z_only, distances


@functools.partial(jax.jit, static_argnames="activation")
def _autodiff_and_differences(params, x, activation, residual):
    """``dz^l/dx`` by ``jax.jacfwd`` and by central differences: ``(L, B, N, D)``."""

    def layers(v):  # (D,) -> (L, N)
        z = kernels.preactivations(params, v[None], activation, residual=residual)
        return z[:, 0]

    by_jacfwd = jax.vmap(jax.jacfwd(layers), out_axes=1)(x)
    h = 1e-6
    steps = h * jnp.eye(x.shape[1], dtype=x.dtype)  # (D, D)
    plus = jax.vmap(lambda v: jax.vmap(layers)(v[None] + steps), out_axes=1)(x)
    minus = jax.vmap(lambda v: jax.vmap(layers)(v[None] - steps), out_axes=1)(x)
    # plus, minus: (D, B, L, N) -> (L, B, N, D)
    by_differences = jnp.transpose((plus - minus) / (2 * h), (2, 1, 3, 0))
    return by_jacfwd, by_differences


# Forward pass and Jacobians


@pytest.mark.parametrize(("activation", "residual"), CASES)
def test_forward_and_jacobians_float64(activation, residual):
    z_ref, j_ref = ref.forward(PARAMS, X, activation, residual)
    with jax.enable_x64(True):
        z, j, z_only, _ = _run(_mlp(PARAMS, jnp.float64), X, activation, residual)
    assert z.shape == (L, B, N) and j.shape == (L, B, N, D)
    assert z.dtype == j.dtype == jnp.float64
    np.testing.assert_allclose(z, z_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(j, j_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(z_only, z_ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "sigmoid"])
def test_forward_and_jacobians_float32(activation):
    # The reference runs on the float32 parameters and inputs, in float64.
    p32 = _mlp(PARAMS, jnp.float32)
    x32 = np.asarray(X, np.float32)
    z_ref, j_ref = ref.forward(ref.Params(*map(np.asarray, p32[:4])), x32, activation)
    z, j, z_only, _ = _run(p32, x32, activation, None)
    assert z.dtype == j.dtype == jnp.float32
    for got, want in ((z, z_ref), (j, j_ref), (z_only, z_ref)):
        np.testing.assert_allclose(
            got, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want))
        )


@pytest.mark.parametrize(("activation", "residual"), [*CASES[:4], ("tanh", ALPHA)])
def test_jacobians_against_jacfwd_and_finite_differences(activation, residual):
    with jax.enable_x64(True):
        params = _mlp(PARAMS, jnp.float64)
        _, j, _, _ = _run(params, X, activation, residual)
        by_jacfwd, by_differences = _autodiff_and_differences(
            params, X, activation, residual
        )
    np.testing.assert_allclose(j, by_jacfwd, rtol=1e-12, atol=1e-13)
    # Central differences with h = 1e-6: truncation ~h^2, rounding ~1e-16/h.
    np.testing.assert_allclose(j, by_differences, rtol=1e-7, atol=1e-8)


def test_readout():
    rng = np.random.default_rng(2)
    w_out, b_out = rng.normal(size=(2, N)), rng.normal(size=2)
    z_ref, _ = ref.forward(PARAMS, X, "tanh")
    want = np.tanh(z_ref[-1]) @ w_out.T + b_out
    with jax.enable_x64(True):
        params = _mlp(PARAMS, jnp.float64)._replace(
            w_out=jnp.asarray(w_out), b_out=jnp.asarray(b_out)
        )
        got = kernels.readout(params, jnp.asarray(z_ref[-1]), "tanh")
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError, match="params: this network has no readout"):
        kernels.readout(_mlp(PARAMS, jnp.float32), jnp.zeros((B, N)), "tanh")


@pytest.mark.parametrize(
    "kernel", [kernels.preactivations, kernels.jacobians, kernels.neuron_distances]
)
@pytest.mark.parametrize("shape", [(B, D + 1), (D,), (1, B, D)])
def test_kernels_reject_bad_inputs(kernel, shape):
    with pytest.raises(ValueError, match=r"x: expected shape \(B, D\) .*D = 3"):
        kernel(_mlp(PARAMS, jnp.float32), jnp.zeros(shape), "relu")


# Distances


@pytest.mark.parametrize(("activation", "residual"), CASES)
def test_neuron_distances_float64(activation, residual):
    z_ref, j_ref = ref.forward(PARAMS, X, activation, residual)
    delta_in, delta_rep, region = ref.distances(PARAMS, z_ref, j_ref, residual)
    with jax.enable_x64(True):
        *_, got = _run(_mlp(PARAMS, jnp.float64), X, activation, residual)
    np.testing.assert_allclose(got.delta_in, delta_in, rtol=1e-11)
    np.testing.assert_allclose(got.delta_rep, delta_rep, rtol=1e-11)
    np.testing.assert_allclose(got.region, region, rtol=1e-11)
    # The direction points from x to the nearest boundary of layers 1..l:
    # -sign(z_i) J_i / |J_i| for the minimising neuron.
    flat = delta_in.transpose(1, 0, 2).reshape(B, L * N)  # (B, L N)
    for l in range(L):
        nearest = np.argmin(flat[:, : (l + 1) * N], axis=1)
        layer, unit = np.divmod(nearest, N)
        rows = j_ref[layer, np.arange(B), unit]  # (B, D)
        signs = np.sign(z_ref[layer, np.arange(B), unit])[:, None]
        want = -signs * rows / np.linalg.norm(rows, axis=1, keepdims=True)
        np.testing.assert_allclose(got.direction[l], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("residual", [None, ALPHA])
def test_relu_region_distance_is_exact(residual):
    relu = get_activation("relu")
    with jax.enable_x64(True):
        params = _mlp(PARAMS, jnp.float64)
        z, _, _, dist = _run(params, X, "relu", residual)
        before = np.asarray(pattern(relu, z))  # (L, B, N)
        for l in range(L):
            step = np.asarray(dist.region[l])[:, None] * np.asarray(dist.direction[l])
            assert np.all(np.isfinite(step))
            inside, *_ = _run(params, X + 0.99 * step, "relu", residual)
            outside, *_ = _run(params, X + 1.01 * step, "relu", residual)
            # Layers 1..l keep their pattern short of the region boundary, and
            # some unit among them changes just past it, for every input.
            kept = np.asarray(pattern(relu, inside))[: l + 1] == before[: l + 1]
            moved = np.asarray(pattern(relu, outside))[: l + 1] != before[: l + 1]
            assert np.all(kept), l
            assert np.all(np.any(moved, axis=(0, 2))), l
        # The last layer's region keeps the full pattern, all layers.
        last = np.asarray(dist.region[-1])[:, None] * np.asarray(dist.direction[-1])
        inside, *_ = _run(params, X + 0.99 * last, "relu", residual)
        np.testing.assert_array_equal(pattern(relu, inside), before)


# Stable norms


@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_norms_do_not_underflow_or_overflow(scale):
    v = jnp.full((2, 8), scale, jnp.float32)
    # The naive norm fails at this scale in float32.
    naive = float(jnp.sqrt(jnp.sum(v[0] * v[0])))
    assert naive == 0.0 or naive == np.inf
    a = jnp.full((2,), scale, jnp.float32)
    np.testing.assert_allclose(_norms.ratio(a, v), np.full(2, 8**-0.5), rtol=1e-6)
    np.testing.assert_allclose(
        _norms.log10_ratio(a, v), np.full(2, -0.5 * np.log10(8)), atol=1e-6
    )
    np.testing.assert_allclose(_norms.norm(v), np.full(2, scale * 8**0.5), rtol=1e-6)
    np.testing.assert_allclose(
        _norms.log10_norm(v), np.full(2, np.log10(scale) + 0.5 * np.log10(8)), rtol=1e-6
    )


def test_zero_gradient_gives_infinite_distance():
    v = jnp.zeros((3, 8), jnp.float32)
    a = jnp.asarray([1.0, 0.0, 1e-30], jnp.float32)
    np.testing.assert_array_equal(_norms.ratio(a, v), [np.inf] * 3)
    np.testing.assert_array_equal(_norms.log10_ratio(a, v), [np.inf] * 3)
    np.testing.assert_array_equal(_norms.norm(v), [0.0] * 3)
    np.testing.assert_array_equal(_norms.log10_norm(v), [-np.inf] * 3)
    # On the boundary (a = 0) with a gradient: distance 0, log -inf.
    assert float(_norms.log10_ratio(jnp.float32(0.0), jnp.ones(8))) == -np.inf


def test_norm_gradients_at_zero_are_finite():
    zero = jnp.zeros(8, jnp.float32)
    np.testing.assert_array_equal(jax.grad(_norms.norm)(zero), np.zeros(8))
    ga, gv = jax.grad(_norms.ratio, argnums=(0, 1))(jnp.float32(1.0), zero)
    assert np.isfinite(ga) and np.all(np.isfinite(gv))


@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_norm_gradients_at_extreme_scales(scale):
    v = jnp.full(8, scale, jnp.float32)
    # d|v|/dv = v / |v|, d log10|v| / dv = v / (|v|^2 ln 10): representable in
    # float32 at both scales, though |v|^2 is not.
    np.testing.assert_allclose(jax.grad(_norms.norm)(v), np.full(8, 8**-0.5), rtol=1e-6)
    want = np.full(8, 1 / (8 * scale * np.log(10)))
    np.testing.assert_allclose(jax.grad(_norms.log10_norm)(v), want, rtol=1e-6)
    a = jnp.float32(3 * scale)
    np.testing.assert_allclose(
        jax.grad(_norms.log10_ratio, argnums=1)(a, v), -want, rtol=1e-6
    )


def _dead_unit_params():
    # Unit 0 of layer 1 and unit 1 of layer 2 have zero weights and bias: their
    # preactivation is exactly 0 with a zero gradient, so their distances are
    # +inf and their log10 distances the -inf - (-inf) edge case.
    p = ref.random_params(3, D, N, L)
    p.w_in[0], p.b_in[0] = 0.0, 0.0
    p.w[0, 1], p.b[0, 1] = 0.0, 0.0
    return p


def test_gradient_through_layer_statistics_is_finite():
    probe_x = np.random.default_rng(4).normal(size=(16, D)).astype(np.float32)
    target = np.linalg.norm(probe_x, axis=1) - 1.0
    x = jnp.asarray(X, jnp.float32)

    def scalar(params):
        s = kernels.layer_statistics(
            params, x, "relu", probe_x=probe_x, probe_target=target
        )
        total = (
            jnp.sum(s.retention_first)
            + jnp.sum(s.retention_target)
            + jnp.sum(s.delta_in.log_sum)
            + jnp.sum(s.delta_rep.log_sum)
            + jnp.sum(s.region.log_sum)
            + jnp.sum(s.q)
            + jnp.sum(s.correlation)
            + jnp.sum(s.log10_jacobian_norm)
        )
        return total, s

    params = _mlp(_dead_unit_params(), jnp.float32)
    (value, stats), grads = jax.jit(jax.value_and_grad(scalar, has_aux=True))(params)
    assert np.isfinite(value)
    # The dead units do reach the infinite-distance branch, in layers 1 and 2.
    np.testing.assert_array_equal(stats.delta_in.n_inf[:2], [B, B])
    np.testing.assert_array_equal(stats.delta_rep.n_inf[:2], [B, B])
    for name, g in zip(MLPParams._fields[:4], grads[:4], strict=True):
        assert np.all(np.isfinite(g)), name
        assert np.any(g != 0), name


# Compilation


def test_settings_are_traced_not_recompiled():
    probe_x = jnp.asarray(np.random.default_rng(5).normal(size=(8, D)), jnp.float32)

    @jax.jit
    def stats(params, x, scale, alpha):
        params = params._replace(w_in=scale * params.w_in, w=scale * params.w)
        return kernels.layer_statistics(
            params, x, "tanh", probe_x=probe_x, residual=alpha
        )

    x = jnp.asarray(X, jnp.float32)
    first = stats(_mlp(PARAMS, jnp.float32), x, 1.0, 0.5)
    assert stats._cache_size() == 1
    other = _mlp(ref.random_params(6, D, N, L), jnp.float32)
    second = stats(other, x, 2.0, 0.25)
    stats(other, x + 1.0, 0.5, 1.0)
    assert stats._cache_size() == 1
    assert not np.allclose(first.q, second.q)


@pytest.mark.parametrize("depth", [1, 2, 17])
def test_depths(depth):
    p = ref.random_params(7, D, N, depth, sigma_w=1.0)
    z_ref, j_ref = ref.forward(p, X, "tanh")
    s = jax.jit(kernels.layer_statistics, static_argnames="activation")(
        _mlp(p, jnp.float32), jnp.asarray(X, jnp.float32), activation="tanh"
    )
    assert s.q.shape == (depth,) and s.delta_in.counts.shape == (depth, Bins().count)
    q_ref = np.mean(np.sum(z_ref**2, axis=-1), axis=-1) / N
    np.testing.assert_allclose(s.q, q_ref, rtol=1e-5)
    log_jac = np.mean(np.log10(np.linalg.norm(j_ref.reshape(depth, B, -1), axis=-1)), 1)
    np.testing.assert_allclose(s.log10_jacobian_norm, log_jac, atol=1e-5)


def test_depth_is_scanned_not_unrolled():
    def program_size(depth):
        p = _mlp(ref.random_params(7, D, N, depth), jnp.float32)
        jaxpr = jax.make_jaxpr(
            lambda params: kernels.layer_statistics(params, jnp.zeros((B, D)), "tanh")
        )(p)
        return len(jaxpr.jaxpr.eqns)

    assert program_size(2) == program_size(17)


def test_bad_parameters_and_non_finite_inputs():
    params = _mlp(PARAMS, jnp.float32)
    ensemble = jax.tree.map(lambda a: jnp.stack([a, a]), params)
    x = jnp.asarray(X, jnp.float32)
    for kernel in (kernels.layer_statistics, kernels.neuron_distances):
        with pytest.raises(ValueError, match="leading member axis"):
            kernel(ensemble, x, "tanh")
        with pytest.raises(ValueError, match="x: contains NaN or inf"):
            kernel(params, x.at[0, 0].set(jnp.nan), "tanh")
        with pytest.raises(ValueError, match=r"x: expected shape \(B, .*B >= 1"):
            kernel(params, x[:0], "tanh")


@pytest.mark.parametrize("field", ["b_in", "w", "b"])
def test_non_finite_parameters_are_refused_by_every_kernel(field):
    # A NaN deep in the network would otherwise come out as a plausible
    # number: zero length, no crossings, -inf log singular values.
    params = _mlp(PARAMS, jnp.float32)
    bad = params._replace(
        **{
            field: getattr(params, field)
            .at[(0,) * getattr(params, field).ndim]
            .set(jnp.nan)
        }
    )
    x = jnp.asarray(X, jnp.float32)
    circle = kernels.great_circle(x[0], x[1], 8)
    calls = [
        lambda p: kernels.preactivations(p, x, "tanh"),
        lambda p: kernels.neuron_distances(p, x, "tanh"),
        lambda p: kernels.layer_statistics(p, x, "tanh"),
        lambda p: kernels.log_singular_values(p, x, "tanh"),
        lambda p: kernels.trajectory(p, circle, "tanh"),
        lambda p: kernels.zero_crossings(p, circle, "tanh"),
        lambda p: kernels.walk_segment(p, "relu", x[0], x[1]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=rf"params\.{field}: contains NaN"):
            call(bad)
    with pytest.raises(ValueError, match="residual: expected None or a positive"):
        kernels.log_singular_values(params, x, "tanh", residual=float("nan"))


def test_nan_propagates_under_jit_and_is_counted():
    params = _mlp(PARAMS, jnp.float32)
    x = jnp.asarray(X, jnp.float32).at[0, 0].set(jnp.nan)
    stats = jax.jit(lambda v: kernels.layer_statistics(params, v, "tanh"))(x)
    assert np.all(np.isnan(stats.q))
    np.testing.assert_array_equal(stats.delta_in.n_nan, N)
    np.testing.assert_array_equal(stats.region.n_nan, 1)
    np.testing.assert_array_equal(stats.delta_in.counts.sum(-1), (B - 1) * N)
    dist = jax.jit(lambda v: kernels.neuron_distances(params, v, "tanh"))(x)
    assert np.all(np.isnan(dist.region[:, 0]))
    assert np.all(np.isfinite(dist.region[:, 1:]))
