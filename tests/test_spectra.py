"""Jacobian spectra: the accumulated-QR kernel against float64 NumPy SVD and
constructed products, and the free-probability moments against closed forms
and Monte-Carlo ensembles."""

from __future__ import annotations

import functools
import math

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import actgeo
from actgeo.kernels import spectra
from actgeo.kernels.histogram import Bins
from actgeo.networks import MLPParams
from actgeo.theory.maps import chi_1, iterate
from actgeo.theory.spectra import jacobian_spectrum_moments

# N = 8 units, L = 4 layers, B = 3 inputs; D = 5 (N > D) or 12 (N < D).
N, L, B = 8, 4, 3
ALPHA = 0.5


def _haar(rng, rows, cols):
    """Haar matrix with orthonormal columns (rows >= cols) or rows (float64)."""
    tall = rows >= cols
    g = rng.normal(size=(rows, cols) if tall else (cols, rows))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))[None, :]
    return q if tall else q.T


def _orthogonal_params(seed, d, n, depth, sigma_w=1.5, sigma_b=0.3) -> ref.Params:
    """Orthogonal weights with entry variance ``sigma_w^2 / fan_in`` (NumPy)."""
    rng = np.random.default_rng(seed)
    w_in = _haar(rng, n, d) * sigma_w * math.sqrt(max(n, d) / d)
    w = np.stack([_haar(rng, n, n) * sigma_w for _ in range(depth - 1)])
    return ref.Params(
        w_in,
        rng.normal(size=n) * sigma_b,
        w,
        rng.normal(size=(depth - 1, n)) * sigma_b,
    )


def _mlp(p: ref.Params, dtype) -> MLPParams:
    return MLPParams(*(jnp.asarray(a, dtype) for a in p))


@functools.partial(jax.jit, static_argnames=("activation", "layers"))
def _log_sv(params, x, alpha, *, activation, layers=None):
    return spectra.log_singular_values(
        params, x, activation, residual=alpha, layers=layers
    )


def _reference_log_sv(p, x, activation, residual):
    _, js = ref.forward(p, x, activation, residual)
    with np.errstate(divide="ignore"):
        return np.log(np.linalg.svd(js, compute_uv=False))  # (L, B, r)


# (activation, residual, D, init)
CASES = [
    ("relu", None, 5, "gaussian"),
    ("relu", None, 12, "orthogonal"),
    ("tanh", None, 12, "gaussian"),
    ("tanh", None, 5, "orthogonal"),
    ("relu", ALPHA, 12, "gaussian"),
    ("tanh", ALPHA, 5, "orthogonal"),
]


def _case_params(seed, d, init):
    if init == "gaussian":
        return ref.random_params(seed, d, N, L)
    return _orthogonal_params(seed, d, N, L)


@pytest.mark.parametrize(("activation", "residual", "d", "init"), CASES)
def test_small_networks_match_float64_svd(activation, residual, d, init):
    p = _case_params(3, d, init)
    x = np.random.default_rng(4).normal(size=(B, d))
    want = _reference_log_sv(p, x, activation, residual)
    with jax.enable_x64(True):
        got = np.asarray(
            _log_sv(
                _mlp(p, jnp.float64), jnp.asarray(x), residual, activation=activation
            )
        )
    assert got.shape == (L, B, min(N, d))
    assert np.all(np.diff(got, axis=-1) <= 0)
    top = want[..., :1]
    nonzero = want > top - 25.0
    np.testing.assert_allclose(got[nonzero], want[nonzero], atol=1e-10)
    # Rank lost through relu: both are numerically zero, far below the rest.
    assert np.all(got[~nonzero] < np.broadcast_to(top, want.shape)[~nonzero] - 25.0)


def test_float32_and_selected_layers():
    p = _case_params(3, 5, "gaussian")
    x = np.random.default_rng(4).normal(size=(B, 5))
    want = _reference_log_sv(p, x, "tanh", None)
    got = _log_sv(_mlp(p, jnp.float32), jnp.asarray(x, jnp.float32), None,
                  activation="tanh", layers=(2, 4))  # fmt: skip
    assert got.dtype == jnp.float32 and got.shape == (2, B, 5)
    np.testing.assert_allclose(got, want[[1, 3]], atol=2e-5)


def test_relu_zero_rows_are_minus_infinity_without_nan():
    # A first layer with zero rows and a relu that kills every unit.
    p = ref.random_params(0, 5, N, L)
    w_in = p.w_in.copy()
    w_in[:, 3:] = 0.0  # rank 3 < r = 5: two exact zeros at layer 1
    x = np.ones((1, 5))
    params = _mlp(p._replace(w_in=w_in, b_in=np.full(N, -100.0)), jnp.float32)
    got = np.asarray(spectra.log_singular_values(params, jnp.asarray(x), "relu"))
    assert not np.any(np.isnan(got))
    assert np.all(got[1:] == -np.inf)  # every unit off after layer 1
    assert np.all(np.isfinite(got[0, 0, :3]))


# Constructed products: A_l = U_l diag(s_l) U_(l-1)^T.


def _graded_product(seed, n, depth, spread):
    """Factors whose product has log singular values ``cumsum(log s)`` exactly.

    Every layer stretches the same ordered directions (each ``log s_l``
    sorted descending), so the product's small singular values are well
    determined by the factors; its spread is ``depth * spread`` nats at most.
    """
    rng = np.random.default_rng(seed)
    us = [_haar(rng, n, n) for _ in range(depth + 1)]
    logs = -np.sort(-rng.uniform(-spread / 2, spread / 2, size=(depth, n)), axis=1)
    factors = np.stack(
        [us[l + 1] @ np.diag(np.exp(logs[l])) @ us[l].T for l in range(depth)]
    )
    return factors, np.cumsum(logs, axis=0)


def test_constructed_product_keeps_small_singular_values_in_float32():
    n, depth = 16, 200
    factors, exact = _graded_product(0, n, depth, 3.0)
    assert exact[-1, 0] - exact[-1, -1] > 400.0  # hundreds of nats
    got = np.asarray(
        jax.jit(spectra.product_log_singular_values)(
            jnp.asarray(factors[0], jnp.float32), jnp.asarray(factors[1:], jnp.float32)
        )
    )
    # Every partial product, every singular value, to 1e-3 in log (0.1%).
    np.testing.assert_allclose(got, exact, atol=1e-3)
    # The explicit product loses them: float64 keeps only the top ~37 nats
    # below sigma_max, float32 overflows.
    product = factors[0]
    for a in factors[1:]:
        product = a @ product
    naive64 = np.log(np.linalg.svd(product, compute_uv=False))
    assert abs(naive64[0] - exact[-1, 0]) < 1e-6
    assert abs(naive64[-1] - exact[-1, -1]) > 100.0
    product32 = factors[0].astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for a in factors[1:].astype(np.float32):
            product32 = a @ product32
    assert not np.all(np.isfinite(product32))


def test_product_layers_and_shapes():
    factors, _ = _graded_product(1, 6, 5, 2.0)
    first = np.random.default_rng(2).normal(size=(6, 3))
    got = spectra.product_log_singular_values(
        jnp.asarray(first), jnp.asarray(factors[1:]), layers=(1, 3, 5)
    )
    assert got.shape == (3, 3)
    with np.errstate(divide="ignore"):
        want = [
            np.log(np.linalg.svd(np.linalg.multi_dot([*factors[1:k][::-1], first]),
                                 compute_uv=False))
            if k > 1 else np.log(np.linalg.svd(first, compute_uv=False))
            for k in (1, 3, 5)
        ]  # fmt: skip
    np.testing.assert_allclose(got, np.stack(want), atol=2e-5)


@pytest.mark.slow
def test_deep_wide_network_float32_matches_float64():
    n, depth = 256, 200
    spec = actgeo.NetworkSpec(
        input_dim=n, width=n, depth=depth, activation="tanh", sigma_w=1.0
    )
    p32 = jax.tree.map(
        lambda a: a[0], actgeo.sample(spec, 1, key=jax.random.key(0), dtype=jnp.float32)
    )
    x = np.random.default_rng(0).normal(size=(1, n)).astype(np.float32)
    layers = (1, 100, 200)
    got = np.asarray(_log_sv(p32, jnp.asarray(x), None, activation="tanh",
                             layers=layers))  # fmt: skip
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), p32)
        want = np.asarray(
            _log_sv(p64, jnp.asarray(x, jnp.float64), None, activation="tanh",
                    layers=layers)
        )  # fmt: skip
    spread = want[-1, 0, 0] - want[-1, 0, -1]
    assert spread > 300.0
    # The bulk to 3e-3 nats; the smallest few (condition ~N per factor, 200
    # factors) to 2e-2.
    np.testing.assert_allclose(got[..., :-8], want[..., :-8], atol=3e-3)
    np.testing.assert_allclose(got, want, atol=2e-2)
    # The explicit float64 product of the same Jacobian loses the small end.
    _, js = ref.forward(
        ref.Params(*(np.asarray(a, np.float64) for a in p32[:4])), x, "tanh"
    )
    naive = np.log(np.linalg.svd(js[-1, 0], compute_uv=False))
    assert abs(naive[-1] - want[-1, 0, -1]) > 100.0


# Summaries


def test_summary_moments_and_histogram():
    p = ref.random_params(5, 5, N, L)
    x = np.random.default_rng(6).normal(size=(B, 5))
    _, js = ref.forward(p, x, "tanh")
    log_sv = _log_sv(_mlp(p, jnp.float32), jnp.asarray(x, jnp.float32), None,
                     activation="tanh")  # fmt: skip
    bins = Bins(-4.0, 4.0, 64)
    s = jax.jit(spectra.summarize_spectrum, static_argnums=(1, 2))(log_sv, N, bins)
    lam = np.linalg.eigvalsh(js @ np.swapaxes(js, -1, -2))  # (L, B, N): 3 zeros
    np.testing.assert_allclose(s.mean, lam.mean(-1), rtol=1e-5)
    np.testing.assert_allclose(s.variance, lam.var(-1), rtol=1e-4)
    np.testing.assert_allclose(s.normalized_variance, lam.var(-1) / lam.mean(-1) ** 2,
                               rtol=1e-4)  # fmt: skip
    sv = np.linalg.svd(js, compute_uv=False)
    np.testing.assert_allclose(s.log_condition, np.log(sv[..., 0] / sv[..., -1]),
                               rtol=1e-5)  # fmt: skip
    counts = np.asarray(s.log10_sigma.counts)
    assert counts.shape == (L, B, 64)
    for l in range(L):
        for b in range(B):
            np.testing.assert_array_equal(
                counts[l, b], ref.bin_counts(np.log10(sv[l, b]), -4.0, 4.0, 64)
            )


def test_summary_of_huge_spreads_stays_finite():
    log_sv = jnp.asarray([[300.0, 0.0, -300.0]], jnp.float32)
    s = jax.jit(spectra.summarize_spectrum, static_argnums=1)(log_sv, 4)
    # mean = e^600 / 4 overflows; its log and v do not.
    np.testing.assert_allclose(s.log_mean, 600.0 - math.log(4.0), rtol=1e-6)
    np.testing.assert_allclose(s.normalized_variance, 3.0, rtol=1e-5)
    assert s.log10_sigma.n_clipped == 2


# Compilation


def test_sigma_w_is_traced_not_recompiled():
    @jax.jit
    def run(params, x, scale):
        params = params._replace(w_in=scale * params.w_in, w=scale * params.w)
        return spectra.log_singular_values(params, x, "tanh")

    p = _mlp(ref.random_params(0, 5, N, L), jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(B, 5)), jnp.float32)
    first = run(p, x, 1.0)
    second = run(p, x, 2.0)
    run(_mlp(ref.random_params(1, 5, N, L), jnp.float32), x + 1.0, 0.5)
    assert run._cache_size() == 1
    # Layer l scales by scale^l in the first layers' linear regime only, so
    # just check that the values moved.
    assert not np.allclose(first, second)


def test_depth_is_scanned_not_unrolled():
    def program_size(depth):
        p = _mlp(ref.random_params(7, 5, N, depth), jnp.float32)
        jaxpr = jax.make_jaxpr(
            lambda params: spectra.log_singular_values(params, jnp.ones((B, 5)), "tanh")
        )(p)
        return len(jaxpr.jaxpr.eqns)

    assert program_size(2) == program_size(17)


# Bad input


def test_bad_input():
    params = _mlp(ref.random_params(0, 5, N, L), jnp.float32)
    x = jnp.ones((B, 5), jnp.float32)
    ensemble = jax.tree.map(lambda a: jnp.stack([a, a]), params)
    with pytest.raises(ValueError, match="leading member axis"):
        spectra.log_singular_values(ensemble, x, "tanh")
    with pytest.raises(ValueError, match=r"x: expected shape \(B, D\)"):
        spectra.log_singular_values(params, jnp.ones((B, 4)), "tanh")
    with pytest.raises(ValueError, match="x: contains NaN"):
        spectra.log_singular_values(params, x.at[0, 0].set(jnp.nan), "tanh")
    for layers in ((0,), (L + 1,), (3, 2), (2, 2), (), (1.0,)):
        with pytest.raises(ValueError, match="layers: expected"):
            spectra.log_singular_values(params, x, "tanh", layers=layers)
    with pytest.raises(ValueError, match="max_sweeps"):
        spectra.log_singular_values(params, x, "tanh", max_sweeps=0)
    first, rest = jnp.ones((4, 3)), jnp.ones((2, 4, 4))
    with pytest.raises(ValueError, match=r"first: expected shape \(N, D\)"):
        spectra.product_log_singular_values(jnp.ones(4), rest)
    with pytest.raises(ValueError, match=r"rest: expected shape \(L-1, 4, 4\)"):
        spectra.product_log_singular_values(first, jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="rest: contains NaN"):
        spectra.product_log_singular_values(first, rest.at[0, 0, 0].set(jnp.inf))
    with pytest.raises(ValueError, match="width: expected an int N >= r"):
        spectra.summarize_spectrum(jnp.zeros((2, 5)), 4)


# Theory: closed forms

_moments = jax.jit(
    jacobian_spectrum_moments,
    static_argnames=("activation", "depth", "init", "width", "input_dim"),
)


@pytest.mark.parametrize(
    ("activation", "sigma_w", "init", "per_layer", "first"),
    [
        ("relu", math.sqrt(2.0), "gaussian", 2.0, 1.0),
        ("relu", math.sqrt(2.0), "orthogonal", 1.0, 0.0),
        ("linear", 1.0, "gaussian", 1.0, 1.0),
        ("linear", 1.0, "orthogonal", 0.0, 0.0),
    ],
)
def test_theory_closed_forms(activation, sigma_w, init, per_layer, first):
    m = _moments(activation, sigma_w, 0.0, 6, 0.7, init=init)
    layers = np.arange(1, 7)
    np.testing.assert_allclose(m.normalized_variance, first + per_layer * (layers - 1),
                               atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(m.mean, sigma_w**2, rtol=1e-6)


def test_theory_first_layer_shape_and_mean():
    for init, n, d, v in (
        ("gaussian", 64, 16, 4.0),
        ("gaussian", 16, 64, 0.25),
        ("orthogonal", 64, 16, 3.0),
        ("orthogonal", 16, 64, 0.0),
    ):
        m = jacobian_spectrum_moments(
            "linear", 1.3, 0.0, 1, init=init, width=n, input_dim=d
        )
        np.testing.assert_allclose(m.normalized_variance[0], v, rtol=1e-6)
    # Mean: sigma_w^2 times chi_1 of the earlier layers.
    sw, sb, q_in = 1.7, 0.3, 0.8
    m = _moments("tanh", sw, sb, 5, q_in)
    log_q = jax.jit(iterate, static_argnums=(0, 3))("tanh", sw, sb, 5, q_in).log_q
    chis = np.asarray(jax.vmap(lambda lq: chi_1("tanh", jnp.exp(lq), sw))(log_q))
    want = sw**2 * np.concatenate([[1.0], np.cumprod(chis[:-1])])
    np.testing.assert_allclose(m.mean, want, rtol=1e-5)
    np.testing.assert_allclose(m.variance, m.normalized_variance * m.mean**2,
                               rtol=1e-5)  # fmt: skip


def test_theory_is_traced():
    run = jax.jit(lambda sw: jacobian_spectrum_moments("tanh", sw, 0.2, 4))
    a, b = run(1.0), run(1.5)
    assert run._cache_size() == 1
    assert not np.allclose(a.normalized_variance, b.normalized_variance)
    grid = jax.vmap(lambda sw: jacobian_spectrum_moments("tanh", sw, 0.2, 4).mean)(
        jnp.asarray([1.0, 1.5])
    )
    np.testing.assert_allclose(grid[1], b.mean, rtol=1e-6)


def test_theory_bad_input():
    with pytest.raises(ValueError, match="depth: expected a positive int"):
        jacobian_spectrum_moments("tanh", 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="init: expected one of"):
        jacobian_spectrum_moments("tanh", 1.0, 0.0, 3, init="uniform")
    with pytest.raises(ValueError, match="give both"):
        jacobian_spectrum_moments("tanh", 1.0, 0.0, 3, width=4)
    with pytest.raises(ValueError, match="sigma_w: expected a positive"):
        jacobian_spectrum_moments("tanh", -1.0, 0.0, 3)
    with pytest.raises(ValueError, match="sigma_b"):
        jacobian_spectrum_moments("tanh", 1.0, math.nan, 3)


# Theory against Monte-Carlo ensembles


def _measured_moments(spec, members, seed, q_in):
    """Per-member, per-layer mean and variance of ``lambda``: ``(E, L)`` each."""
    params = actgeo.sample(spec, members, key=jax.random.key(seed))
    x = np.random.default_rng(seed).normal(size=(1, spec.input_dim))
    x *= math.sqrt(spec.input_dim * q_in) / np.linalg.norm(x)

    @functools.partial(jax.jit, static_argnames="activation")
    def run(params, x, *, activation):
        def one(p):
            log_sv = spectra.log_singular_values(p, x, activation)[:, 0]
            s = spectra.summarize_spectrum(log_sv, spec.width)
            return s.mean, s.variance

        return jax.vmap(one)(params)

    mean, var = run(params, jnp.asarray(x, jnp.float32), activation=spec.activation)
    return np.asarray(mean, np.float64), np.asarray(var, np.float64)


def _compare(spec, members, q_in, init, rel_allowance):
    mean, var = _measured_moments(spec, members, 0, q_in)
    theory = jacobian_spectrum_moments(
        spec.activation, spec.sigma_w, spec.sigma_b, spec.depth, q_in, init=init
    )
    for measured, predicted in ((mean, theory.mean), (var, theory.variance)):
        m = measured.mean(0)
        se = measured.std(0, ddof=1) / math.sqrt(members)
        tol = 4.0 * se + rel_allowance * np.abs(np.asarray(predicted)) + 1e-6
        assert np.all(np.abs(m - predicted) <= tol), (m, np.asarray(predicted), tol)


def test_theory_matches_small_ensembles():
    # Width 64, depth 5, 4 members: finite-width corrections O(l / N) allowed.
    width, depth = 64, 5
    for activation, sigma_w, sigma_b, init in (
        ("tanh", 1.5, 0.2, "gaussian"),
        ("relu", math.sqrt(2.0), 0.0, "orthogonal"),
    ):
        spec = actgeo.NetworkSpec(
            input_dim=width,
            width=width,
            depth=depth,
            activation=activation,
            sigma_w=sigma_w,
            sigma_b=sigma_b,
            init=init,
        )
        _compare(spec, 4, 1.0, init, rel_allowance=depth / width + 0.05)


def test_linear_orthogonal_network_is_exactly_isometric():
    spec = actgeo.NetworkSpec(
        input_dim=16, width=16, depth=4, activation="linear", sigma_w=1.3,
        init="orthogonal",
    )  # fmt: skip
    mean, var = _measured_moments(spec, 2, 1, 1.0)
    np.testing.assert_allclose(
        mean, np.tile(1.3 ** (2 * np.arange(1, 5)), (2, 1)), rtol=1e-5
    )
    np.testing.assert_allclose(var / mean**2, 0.0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("activation", "init"),
    [
        ("relu", "gaussian"),
        ("relu", "orthogonal"),
        ("linear", "gaussian"),
        ("tanh", "orthogonal"),
        ("hard_tanh", "gaussian"),
    ],
)
def test_theory_matches_wide_ensembles(activation, init):
    width, depth, members = 256, 12, 8
    sigma_w = {"relu": math.sqrt(2.0)}.get(activation, 1.0)
    sigma_b = {"tanh": 0.05, "hard_tanh": 0.05}.get(activation, 0.0)
    spec = actgeo.NetworkSpec(
        input_dim=width,
        width=width,
        depth=depth,
        activation=activation,
        sigma_w=sigma_w,
        sigma_b=sigma_b,
        init=init,
    )
    _compare(spec, members, 0.5, init, rel_allowance=depth / width + 0.02)


def test_summary_and_theory_refuse_malformed_spectra():
    with pytest.raises(ValueError, match=r"log_sv: expected .* shape \(\.\.\., r\)"):
        spectra.summarize_spectrum(np.float32(1.0), 8)
    with pytest.raises(ValueError, match=r"log_sv: expected .* r >= 1"):
        spectra.summarize_spectrum(np.zeros((3, 0)), 8)
    with pytest.raises(ValueError, match="log_sv: expected values sorted"):
        spectra.summarize_spectrum(np.array([[0.0, 1.0]]), 8)
    # An exact zero (log -inf) gives an infinite condition number, even when
    # every singular value is zero.
    s = spectra.summarize_spectrum(
        np.array([[-np.inf, -np.inf], [1.0, -np.inf], [1.0, 0.0]]), 2
    )
    np.testing.assert_array_equal(np.asarray(s.log_condition), [np.inf, np.inf, 1.0])
    with pytest.raises(ValueError, match="q_in: expected a positive"):
        jacobian_spectrum_moments("tanh", 1.0, 0.0, 4, -1.0)
    with pytest.raises(ValueError, match="depth: expected a positive int"):
        jacobian_spectrum_moments("tanh", 1.0, 0.0, True)


def test_layers_given_as_an_array():
    params = jax.tree.map(
        lambda a: a[0],
        actgeo.sample(actgeo.NetworkSpec(5, 5, 3, "tanh"), 1, key=jax.random.key(0)),
    )
    x = jnp.ones((1, 5))
    as_tuple = spectra.log_singular_values(params, x, "tanh", layers=(1, 3))
    as_array = spectra.log_singular_values(params, x, "tanh", layers=np.array([1, 3]))
    np.testing.assert_array_equal(np.asarray(as_tuple), np.asarray(as_array))
