"""Paths through input space: constructors, trajectory length and curvature,
zero crossings, local complexity, and the curvature theory.

Kernels are compared with float64 NumPy (dense finite differences of the
reference forward pass in ``_reference``), with closed forms (circles through
isometric layers, constructed networks with known zeros and known
hyperplanes), and with the infinite-width theory on small ensembles.
"""

from __future__ import annotations

import functools
import math

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import actgeo
from actgeo.kernels import paths
from actgeo.networks import MLPParams
from actgeo.theory.paths import chi_2, curvature_prediction
from actgeo.theory.predictions import predict

# D = 3 input dimensions, N = 8 units, L = 4 layers, S = 64 samples: the
# float64 tests share these shapes, so each kernel compiles once.
D, N, L, S = 3, 8, 4, 128
PARAMS = ref.random_params(0, D, N, L, sigma_w=1.8)
X0 = np.array([1.0, -0.4, 0.3])
Y0 = np.array([0.2, 0.9, -0.5])


def _mlp(p, dtype=jnp.float64) -> MLPParams:
    return MLPParams(*(jnp.asarray(a, dtype) for a in p))


@functools.partial(jax.jit, static_argnames="activation")
def _trajectory(params, path, activation):
    return paths.trajectory(params, path, activation)


@functools.partial(jax.jit, static_argnames="activation")
def _crossings(params, path, activation):
    return paths.zero_crossings(params, path, activation)


def _layers64(p, x, activation="tanh"):
    """Float64 ``[x, z^1, ..., z^L]`` at points ``x (M, D)``."""
    z, _ = ref.forward(p, x, activation)
    return [np.asarray(x, np.float64), *z]


def _circle64(t, x, y):
    u = x
    w = y - (y @ x) / (x @ x) * x
    w = w * np.linalg.norm(x) / np.linalg.norm(w)
    return np.cos(t)[:, None] * u + np.sin(t)[:, None] * w


def _reference_curvature(t, x, y, h=1e-4):
    """Curvature per layer at parameters ``t`` by central differences."""
    zs = [_layers64(PARAMS, _circle64(t + s, x, y)) for s in (-h, 0.0, h)]
    out = []
    for minus, mid, plus in zip(*zs, strict=True):
        v = (plus - minus) / (2 * h)
        a = (plus - 2 * mid + minus) / h**2
        vv, aa, va = (np.sum(p * q, axis=-1) for p, q in ((v, v), (a, a), (v, a)))
        out.append(np.sqrt(vv * aa - va**2) / vv**1.5)
    return np.stack(out)


# Constructors


def test_constructors_pass_through_their_points():
    a, b, c = np.array([1.0, 0, 0]), np.array([0, 2.0, 0]), np.array([0, 0, 3.0])
    with jax.enable_x64(True):
        path = paths.circle_through(a, b, c, 12, dtype=jnp.float64)
        seg = paths.line(X0, Y0, 9, dtype=jnp.float64)
        simpson = [paths.line(X0, Y0, n, dtype=jnp.float64) for n in (9, 8, 3, 4)]
    center = np.mean(np.asarray(path.points), axis=0)
    radius = np.linalg.norm(np.asarray(path.points) - center, axis=1)
    np.testing.assert_allclose(radius, radius[0], rtol=1e-12)
    for p in (a, b, c):
        assert abs(np.linalg.norm(p - center) - radius[0]) < 1e-12
    np.testing.assert_allclose(path.points[0], a, atol=1e-12)
    great = paths.great_circle(X0, Y0 * np.linalg.norm(X0) / np.linalg.norm(Y0), 7)
    assert great.closed and great.points.dtype == jnp.float32
    np.testing.assert_allclose(
        np.linalg.norm(great.points, axis=1), np.linalg.norm(X0), rtol=1e-6
    )
    assert float(jnp.sum(great.weights)) == pytest.approx(2 * math.pi)
    assert not seg.closed
    np.testing.assert_allclose(np.asarray(seg.points)[[0, -1]], np.stack([X0, Y0]))
    # Simpson's weights (9 samples) and Simpson + 3/8 (8) integrate cubics exactly.
    for rule in simpson:
        t, w = np.asarray(rule.t), np.asarray(rule.weights)
        assert np.sum(w * (t**3 - t)) == pytest.approx(0.25 - 0.5, abs=1e-14)
    grid = paths.plane(X0, Y0, np.array([0.0, 0.0, 1.0]), 2.0, (3, 4))
    assert grid.points.shape == (3, 4, D)
    np.testing.assert_allclose(grid.points[0, 0], X0 - 2 * Y0 - 2 * np.eye(3)[2])
    rand = paths.random_great_circle(jax.random.key(0), 16, 4.0, 8)
    np.testing.assert_allclose(np.linalg.norm(rand.points, axis=1), 4.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: paths.line(X0, X0, 8), "end: equals start"),
        (lambda: paths.line(X0, Y0, 1), "samples"),
        (lambda: paths.line(X0, np.array([1.0, np.nan, 0]), 8), "end: contains NaN"),
        (lambda: paths.line(X0, np.ones(4), 8), "one dimension"),
        (lambda: paths.great_circle(X0, 3 * X0, 8), "y: zero or parallel"),
        (lambda: paths.great_circle(0 * X0, Y0, 8), "x: the origin"),
        (lambda: paths.circle(X0, np.eye(3)[0], 2 * np.eye(3)[1], 8), "|v| = |u|"),
        (
            lambda: paths.circle(X0, np.eye(3)[0], np.array([0.1, 1, 0]), 8),
            "orthogonal",
        ),
        (lambda: paths.circle_through(X0, Y0, X0, 8), "c: repeats"),
        (lambda: paths.circle_through(X0, Y0, 2 * Y0 - X0, 8), "collinear"),
        (lambda: paths.plane(X0, Y0, -2 * Y0, 1.0, 8), "v: parallel to u"),
        (lambda: paths.plane(X0, 0 * Y0, X0, 1.0, 8), "u: zero vector"),
        (lambda: paths.plane(X0, Y0, X0, 0.0, 8), "extent"),
        (lambda: paths.random_great_circle(jax.random.key(0), 4, -1.0, 8), "radius"),
    ],
)
def test_degenerate_paths_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_kernels_refuse_bad_input():
    params = _mlp(PARAMS, jnp.float32)
    wrong_dim = paths.line(np.zeros(4), np.ones(4), 8)
    with pytest.raises(ValueError, match=r"path.points: expected shape \(S, D\)"):
        paths.trajectory(params, wrong_dim, "tanh")
    bad = paths.line(X0, Y0, 8)
    bad = bad._replace(points=bad.points.at[2, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"path\.points: contains NaN"):
        paths.zero_crossings(params, bad, "tanh")
    x = np.zeros((2, D))
    skew = np.array([[1.0, 0, 0], [0.5, 1.0, 0]])
    with pytest.raises(ValueError, match="directions: expected orthonormal"):
        paths.local_complexity(params, x, "relu", radius=0.1, directions=skew)
    with pytest.raises(ValueError, match="radius"):
        paths.local_complexity(params, x, "relu", radius=0.0, directions=np.eye(3))
    with pytest.raises(ValueError, match="count"):
        paths.orthonormal_directions(jax.random.key(0), 3, 4)
    with pytest.raises(ValueError, match="kinks"):
        chi_2("relu", 1.0, 1.4)
    with pytest.raises(ValueError, match="kinks"):
        curvature_prediction("hard_tanh", 1.0, 0.0, 3, width=8)


# Length and curvature


def test_trajectory_matches_float64_reference():
    with jax.enable_x64(True):
        path = paths.great_circle(X0, Y0, S, dtype=jnp.float64)
        out = _trajectory(_mlp(PARAMS), path, "tanh")
    t = np.asarray(path.t)
    kappa_ref = _reference_curvature(t, X0, Y0)
    np.testing.assert_allclose(out.curvature, kappa_ref, rtol=2e-6)
    dense = np.linspace(0, 2 * np.pi, 100_000, endpoint=False)
    zs = _layers64(PARAMS, _circle64(dense, X0, Y0))
    polyline = [np.sum(np.linalg.norm(np.roll(z, -1, 0) - z, axis=1)) for z in zs]
    # Periodic trapezoid on 128 samples against a 100 000-segment polygon.
    np.testing.assert_allclose(out.length, polyline, rtol=1e-7)
    np.testing.assert_allclose(out.log10_length, np.log10(polyline), rtol=1e-7)
    # Gauss-map length against the dense polygon's turning angles.
    turning = []
    for z in zs:
        v = np.roll(z, -1, 0) - z
        u = v / np.linalg.norm(v, axis=1, keepdims=True)
        cos = np.clip(np.sum(u * np.roll(u, -1, 0), axis=1), -1, 1)
        turning.append(np.sum(np.arccos(cos)))
    # kappa |v| varies faster than |v|: 128 samples resolve it to ~1e-4.
    np.testing.assert_allclose(out.gauss_length, turning, rtol=3e-4)
    assert np.all(np.asarray(out.turning) <= np.asarray(out.gauss_length) + 1e-9)
    assert out.length[0] == pytest.approx(2 * math.pi * np.linalg.norm(X0))
    np.testing.assert_allclose(out.curvature[0], 1 / np.linalg.norm(X0), rtol=1e-12)


def test_line_is_straight_in_input_and_first_layer():
    with jax.enable_x64(True):
        path = paths.line(X0, Y0, S + 1, dtype=jnp.float64)
        out = _trajectory(_mlp(PARAMS), path, "tanh")
    np.testing.assert_allclose(out.curvature[:2], 0.0, atol=1e-12)
    assert np.all(np.asarray(out.curvature[2:]) > 0)
    dense = np.linspace(0, 1, 100_001)[:, None]
    zs = _layers64(PARAMS, X0 + dense * (Y0 - X0))
    polyline = [np.sum(np.linalg.norm(np.diff(z, axis=0), axis=1)) for z in zs]
    np.testing.assert_allclose(out.length, polyline, rtol=1e-5)


def test_isometric_linear_layers_keep_a_circle():
    # First layer: orthonormal columns (an isometry R^3 -> R^8); then identity.
    w_in = np.eye(N)[:, :D]
    hidden = np.stack([np.eye(N)] * (L - 1))
    radius = 2.5
    with jax.enable_x64(True):
        params = MLPParams(
            *(
                jnp.asarray(a, jnp.float64)
                for a in (w_in, np.zeros(N), hidden, np.zeros((L - 1, N)))
            )
        )
        path = paths.circle(
            X0, radius * np.eye(3)[0], radius * np.eye(3)[2], S, dtype=jnp.float64
        )
        out = _trajectory(params, path, "linear")
    np.testing.assert_allclose(out.curvature, 1 / radius, rtol=1e-12)
    np.testing.assert_allclose(out.mean_curvature, 1 / radius, rtol=1e-12)
    np.testing.assert_allclose(out.length, 2 * math.pi * radius, rtol=1e-12)
    np.testing.assert_allclose(out.gauss_length, 2 * math.pi, rtol=1e-12)


def test_kinked_activations_report_nan_curvature_past_layer_one():
    path = paths.great_circle(X0, Y0, S)
    out = _trajectory(_mlp(PARAMS, jnp.float32), path, "relu")
    assert np.all(np.isfinite(np.asarray(out.curvature[:2])))
    assert np.all(np.isnan(np.asarray(out.curvature[2:])))
    assert np.all(np.isnan(np.asarray(out.gauss_length[2:])))
    assert np.all(np.isfinite(np.asarray(out.turning)))
    # Bends at kinks: the turning angle grows past the first layer's 2 pi.
    assert float(out.turning[-1]) > 2 * math.pi


# Zero crossings


def _close_pair_network(eps=1e-3):
    """``z^2(x) = silu(x) + silu(-x) - eps = x tanh(x / 2) - eps``: two zeros
    near ``+-sqrt(2 eps)``, 0.09 apart, for both layer-2 units."""
    w_in = np.array([[1.0], [-1.0]])
    w = np.ones((1, 2, 2))
    b = np.full((1, 2), -eps)
    return MLPParams(*(jnp.asarray(a, jnp.float64) for a in (w_in, np.zeros(2), w, b)))


def test_hermite_finds_a_pair_of_zeros_between_two_samples():
    start, end = np.array([-1.0]), np.array([1.3])
    with jax.enable_x64(True):
        params = _close_pair_network()
        # Step 0.23: samples at -0.08 and 0.15 straddle both zeros.
        coarse, finer, dense = (
            _crossings(params, paths.line(start, end, s, dtype=jnp.float64), "silu")
            for s in (11, 33, 4001)
        )
    np.testing.assert_array_equal(coarse.hermite, [[1, 1], [2, 2]])
    np.testing.assert_array_equal(coarse.sign_changes, [[1, 1], [0, 0]])
    np.testing.assert_array_equal(dense.sign_changes, [[1, 1], [2, 2]])
    np.testing.assert_array_equal(finer.hermite, dense.sign_changes)
    np.testing.assert_array_equal(dense.hermite, dense.sign_changes)
    np.testing.assert_array_equal(coarse.pattern_changes, 0)


def test_hermite_counts_match_dense_sign_changes():
    with jax.enable_x64(True):
        path = paths.great_circle(X0, Y0, 2 * S, dtype=jnp.float64)
        out = paths.zero_crossings(_mlp(PARAMS), path, "tanh")
    dense = np.linspace(0, 2 * np.pi, 200_000, endpoint=False)
    zs = _layers64(PARAMS, _circle64(dense, X0, Y0))[1:]
    expected = [np.sum((z > 0) != (np.roll(z, -1, 0) > 0), axis=0) for z in zs]
    np.testing.assert_array_equal(out.hermite, np.stack(expected))
    assert np.all(np.asarray(out.sign_changes) <= np.asarray(out.hermite))
    totals = out.per_layer()
    assert totals.hermite.shape == (L,)


def test_pattern_changes_of_kinked_activations():
    with jax.enable_x64(True):
        path = paths.great_circle(X0, Y0, 2 * S, dtype=jnp.float64)
        relu = paths.zero_crossings(_mlp(PARAMS), path, "relu")
    # relu: one kink at 0, so pattern changes are sign changes.
    np.testing.assert_array_equal(relu.pattern_changes, relu.sign_changes)
    dense = np.linspace(0, 2 * np.pi, 50_000, endpoint=False)
    z1 = _layers64(PARAMS, _circle64(dense, X0, Y0), "relu")[1]
    np.testing.assert_array_equal(
        relu.hermite[0], np.sum((z1 > 0) != (np.roll(z1, -1, 0) > 0), axis=0)
    )


# Local complexity


def test_local_complexity_counts_hyperplanes_meeting_the_cross_polytope():
    # Layer 1: units 0..5 have hyperplanes x_0 = c_i; units 6, 7 have
    # x_2 = +-0.05, orthogonal to both directions (they never meet it).
    offsets = np.array([0.1, -0.2, 0.3, -0.4, 0.5, -0.6])
    w_in = np.zeros((N, D))
    w_in[:6, 0] = 1.0
    w_in[6:, 2] = 1.0
    b_in = np.concatenate([-offsets, [0.05, -0.05]])
    rng = np.random.default_rng(3)
    params = MLPParams(
        *(
            jnp.asarray(a, jnp.float32)
            for a in (
                w_in,
                b_in,
                rng.normal(size=(L - 1, N, N)),
                rng.normal(size=(L - 1, N)),
            )
        )
    )
    directions = np.eye(3)[:2]
    center = np.zeros((1, D))
    counts = []
    for radius in (0.05, 0.15, 0.35, 0.45, 0.7):
        lc = paths.local_complexity(
            params, center, "relu", radius=radius, directions=directions
        )
        assert lc.shape == (L, 1)
        counts.append(np.asarray(lc[:, 0]))
        assert lc[0, 0] == np.sum(np.abs(offsets) < radius)
    counts = np.stack(counts)
    assert np.all(np.diff(counts[:, 0]) >= 0)
    assert np.all(counts[-1].sum() >= counts[0].sum())
    smooth = paths.local_complexity(
        params, center, "tanh", radius=0.7, directions=directions
    )
    np.testing.assert_array_equal(smooth, 0)


def test_local_complexity_grows_with_radius_on_random_networks():
    params = _mlp(PARAMS, jnp.float32)
    x = np.random.default_rng(2).normal(size=(16, D))
    directions = paths.orthonormal_directions(jax.random.key(1), D, 2)
    lc = jax.jit(
        jax.vmap(
            lambda r: paths.local_complexity(
                params, x, "relu", radius=r, directions=directions
            )
        )
    )(jnp.asarray([1e-4, 0.1, 1.0, 10.0]))
    first = np.asarray(lc[:, 0])  # (radii, B): nested polytopes in layer 1
    assert np.all(np.diff(first, axis=0) >= 0)
    totals = np.asarray(lc.sum(axis=(1, 2)))
    assert totals[0] < totals[1] < totals[2]


# Against the infinite-width theory


def _ensemble_measure(activation, sigma_w, sigma_b, width, depth, members, samples):
    dim = 32
    q_in = 1.0
    spec = actgeo.NetworkSpec(
        input_dim=dim,
        width=width,
        depth=depth,
        activation=activation,
        sigma_w=sigma_w,
        sigma_b=sigma_b,
    )
    params = actgeo.sample(spec, members, key=jax.random.key(0))
    path = paths.random_great_circle(
        jax.random.key(1), dim, math.sqrt(dim * q_in), samples
    )

    @jax.jit
    def run(params):
        def one(p):
            tr = paths.trajectory(p, path, activation)
            return tr, paths.zero_crossings(p, path, activation).per_layer()

        return jax.vmap(one)(params)

    traj, crossings = run(params)
    th = predict(activation, sigma_w, sigma_b, depth, width=width, input_dim=dim)
    return spec, traj, crossings, th, math.sqrt(dim * q_in)


def _check_against_theory(activation, sigma_w, width, depth, members, tol):
    sigma_b = 0.3
    _, traj, crossings, th, radius = _ensemble_measure(
        activation, sigma_w, sigma_b, width, depth, members, 256
    )
    length = np.asarray(traj.length[:, 1:]).mean(axis=0)
    np.testing.assert_allclose(length, th.trajectory_length, rtol=tol)
    per_neuron = np.asarray(crossings.hermite).mean(axis=0) / width
    kac_rice = np.asarray(th.zero_crossings) * 2 * math.pi * radius
    np.testing.assert_allclose(per_neuron, kac_rice, rtol=tol)
    curv = curvature_prediction(activation, sigma_w, sigma_b, depth, width=width)
    np.testing.assert_allclose(curv.length, th.trajectory_length, rtol=1e-5)
    kbar = math.sqrt(width) * np.asarray(traj.mean_curvature[:, 1:]).mean(axis=0)
    np.testing.assert_allclose(kbar, curv.curvature_normalised, rtol=tol)
    gauss = np.asarray(traj.gauss_length[:, 1:]).mean(axis=0)
    np.testing.assert_allclose(gauss, curv.gauss_length, rtol=tol)


def test_tanh_ensemble_against_theory():
    # Width 128, 8 members, 3 layers, sigma_w = 4 (Poole's chaotic example):
    # lengths, Kac-Rice crossings and curvature within 10%.
    _check_against_theory("tanh", 4.0, 128, 3, 8, 0.1)


@pytest.mark.slow
@pytest.mark.parametrize(("activation", "sigma_w"), [("tanh", 2.5), ("silu", 1.8)])
def test_ensembles_against_theory_wide(activation, sigma_w):
    _check_against_theory(activation, sigma_w, 512, 6, 16, 0.05)


def test_sizes_accept_numpy_and_jax_scalars_and_refuse_the_rest():
    e = np.eye(3)
    for extent in (np.float32(1.5), jnp.float32(1.5), 1.5):
        assert paths.plane(e[0], e[1], e[2], extent, 3).points.shape == (3, 3, 3)
    for radius in (np.float32(2.0), jnp.asarray(2.0)):
        circle = paths.random_great_circle(jax.random.key(0), 4, radius, 8)
        np.testing.assert_allclose(np.linalg.norm(circle.points, axis=1), 2.0, 1e-6)
    for extent in (True, None, "1", np.ones(2)):
        with pytest.raises(ValueError, match="extent: expected a positive finite"):
            paths.plane(e[0], e[1], e[2], extent, 3)
    for samples in (3.0, None):
        with pytest.raises(ValueError, match=r"samples: expected S or \(S1, S2\)"):
            paths.plane(e[0], e[1], e[2], 1.0, samples)
    with pytest.raises(ValueError, match="radius: expected a positive finite"):
        paths.random_great_circle(jax.random.key(0), 4, None, 8)
