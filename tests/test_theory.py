"""Infinite-width theory: closed forms, quadrature, maps, fixed points, criticality.

References are independent: SciPy's adaptive quadrature in float64, the
closed forms of the papers, and values quoted in the literature (relu's
c-map of 0 at He initialisation is 1/pi; leaky relu is critical at
``sigma_w^2 = 2 / (1 + a^2)``; erf at ``pi / 4``; tanh at 1).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from actgeo import activations
from actgeo import theory as T
from actgeo.theory import gaussian

ALL = activations.names()
CLOSED = ("relu", "leaky_relu", "linear", "erf", "gelu")


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _quadrature_only(name):
    """The activation with its closed forms removed, so quadrature is used."""
    act = activations.get_activation(name)
    return dataclasses.replace(act, kernel=None, slope_kernel=None)


def _scipy_1d(f, q, kinks):
    s = math.sqrt(q)
    points = sorted({k / s for k in (*kinks, 0.0) if abs(k / s) < 13})
    value, _ = integrate.quad(
        lambda z: f(s * z) * stats.norm.pdf(z),
        -14,
        14,
        points=points or None,
        limit=500,
        epsabs=1e-15,
        epsrel=1e-13,
    )
    return value


def _scipy_2d(f, q1, q2, c, kinks):
    s1 = math.sqrt(q1)
    s = math.sqrt(q2 * (1 - c * c))
    beta = c * math.sqrt(q2) / s1
    # 0 is a breakpoint too: phi' of elu, say, is continuous but kinked there.
    kinks = (*kinks, 0.0)

    def inner(u):
        m = beta * u
        pts = sorted({(k - m) / s for k in kinks if abs((k - m) / s) < 12})
        return integrate.quad(
            lambda z: f(m + s * z) * stats.norm.pdf(z),
            -13,
            13,
            points=pts or None,
            limit=400,
            epsabs=1e-15,
            epsrel=1e-12,
        )[0]

    pts = {k / s1 for k in kinks} | {k / beta / s1 for k in kinks if beta}
    pts = sorted(p for p in pts if abs(p) < 12)
    return integrate.quad(
        lambda z: f(s1 * z) * inner(s1 * z) * stats.norm.pdf(z),
        -13,
        13,
        points=pts or None,
        limit=400,
        epsabs=1e-14,
        epsrel=1e-11,
    )[0]


def _numpy_fns(name):
    """Scalar float64 ``(phi, phi')`` written with ``math``, fast under SciPy."""
    sig = lambda u: 1.0 / (1.0 + math.exp(-u)) if u > -700 else 0.0  # noqa: E731
    cdf = lambda u: 0.5 * math.erfc(-u / math.sqrt(2.0))  # noqa: E731
    pdf = lambda u: math.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi)  # noqa: E731
    table = {
        "relu": (lambda u: max(u, 0.0), lambda u: float(u > 0)),
        "tanh": (math.tanh, lambda u: 1.0 - math.tanh(u) ** 2),
        "silu": (lambda u: u * sig(u), lambda u: sig(u) * (1.0 + u * (1.0 - sig(u)))),
        "hard_tanh": (
            lambda u: min(max(u, -1.0), 1.0),
            lambda u: float(-1.0 < u <= 1.0),
        ),
        "elu": (
            lambda u: u if u > 0 else math.expm1(u),
            lambda u: 1.0 if u > 0 else math.exp(u),
        ),
        "gelu": (lambda u: u * cdf(u), lambda u: cdf(u) + u * pdf(u)),
    }
    if name in table:
        return table[name]
    act = activations.get_activation(name)
    return (
        lambda x: float(act.fn(np.float64(x))),
        lambda x: float(act.derivative(np.float64(x))),
    )


# Gaussian expectations ------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_one_dimensional_quadrature_matches_adaptive_integration(name):
    """Every built-in, by quadrature alone, to 1e-8 relative from q = 1e-3 to 1e4."""
    act = _quadrature_only(name)
    f, d = _numpy_fns(name)
    for q in (1e-3, 1.0, 37.0, 1e4):
        got = float(gaussian.second_moment(act, q))
        ref = _scipy_1d(lambda u: f(u) ** 2, q, act.kinks)
        assert got == pytest.approx(ref, rel=1e-8), (q, got, ref)
        got = float(gaussian.slope_moment(act, q))
        ref = _scipy_1d(lambda u: d(u) ** 2, q, act.kinks)
        assert got == pytest.approx(ref, rel=1e-8), (q, got, ref)


_PAIRS = [(1.0, 1.0, 0.3), (2.0, 0.5, -0.6), (30.0, 30.0, 0.99), (1.0, 1.0, 0.9999)]
# A few cases by default (each adaptive reference takes seconds); all with
# --runslow.
_QUICK_PAIRS = {("relu", 3), ("hard_tanh", 1), ("tanh", 2), ("elu", 0), ("silu", 3)}


@pytest.mark.parametrize(
    "name, q1, q2, c",
    [
        pytest.param(
            name,
            *pair,
            marks=() if (name, i) in _QUICK_PAIRS else pytest.mark.slow,
        )
        for name in ("relu", "tanh", "silu", "hard_tanh", "elu")
        for i, pair in enumerate(_PAIRS)
    ],
)
def test_two_dimensional_quadrature_matches_adaptive_integration(name, q1, q2, c):
    """Kinks and near-1 correlations included (a kink becomes a narrow step)."""
    act = _quadrature_only(name)
    f, d = _numpy_fns(name)
    got = float(gaussian.pair_moment(act, q1, q2, c))
    assert got == pytest.approx(_scipy_2d(f, q1, q2, c, act.kinks), rel=1e-8)
    got = float(gaussian.slope_pair_moment(act, q1, q2, c))
    assert got == pytest.approx(_scipy_2d(d, q1, q2, c, act.kinks), rel=1e-8)


@pytest.mark.parametrize("name", CLOSED)
def test_closed_forms_match_quadrature(name):
    act = activations.get_activation(name)
    quad = _quadrature_only(name)
    for q1, q2, c in [(1.0, 1.0, 0.0), (0.7, 2.5, 0.8), (3.0, 0.2, -0.9), (2, 2, 1)]:
        for moment in (gaussian.pair_moment, gaussian.slope_pair_moment):
            want = float(moment(quad, q1, q2, c))
            assert float(moment(act, q1, q2, c)) == pytest.approx(want, rel=1e-9)


def test_gelu_closed_form_matches_adaptive_integration():
    f, d = _numpy_fns("gelu")
    act = activations.get_activation("gelu")
    for q1, q2, c in [(2.0, 0.5, -0.6), (0.3, 3.0, 0.9)]:
        assert float(act.kernel(q1, q2, c)) == pytest.approx(
            _scipy_2d(f, q1, q2, c, ()), rel=1e-9
        )
        assert float(act.slope_kernel(q1, q2, c)) == pytest.approx(
            _scipy_2d(d, q1, q2, c, ()), rel=1e-9
        )


def test_required_values():
    relu_c = T.c_map("relu", 1.0, 0.0, math.sqrt(2.0), 0.0)
    assert float(relu_c) == pytest.approx(1.0 / math.pi, abs=1e-12)
    assert float(T.chi_1("relu", 1.0, math.sqrt(2.0))) == pytest.approx(1.0, abs=1e-12)
    slope = dict(activations.get_activation("leaky_relu").parameters)["slope"]
    leaky = T.critical_sigma_w("leaky_relu", 0.0) ** 2
    assert leaky == pytest.approx(2.0 / (1.0 + slope**2), abs=1e-10)
    assert T.critical_sigma_w("erf", 0.0) ** 2 == pytest.approx(math.pi / 4, abs=1e-12)
    assert float(T.second_moment("erf", 0.5)) == pytest.approx(1.0 / 3.0, abs=1e-12)
    assert T.critical_sigma_w("tanh", 0.0) == pytest.approx(1.0, abs=1e-12)


def test_mehler_series_matches_the_two_dimensional_expectation():
    a = T.gaussian.hermite_coefficients("tanh", 2.0, 64)
    series = float(jnp.sum(a**2 * 0.5 ** jnp.arange(64)))
    assert series == pytest.approx(float(T.pair_moment("tanh", 2.0, 2.0, 0.5)), 1e-10)
    assert float(jnp.sum(a**2)) == pytest.approx(float(T.second_moment("tanh", 2.0)))


@pytest.mark.slow  # about 25 s: every activation's maps compiled in float32
def test_float32_is_safe_at_c_equal_one():
    with jax.enable_x64(False):
        relu = activations.get_activation("relu")
        one = jnp.float32(1.0)
        assert float(relu.slope_kernel(one, one, one)) == 0.5
        for name in ALL:
            c = T.c_map(name, one, jnp.float32(1.0), jnp.float32(1.3), jnp.float32(0.2))
            assert c.dtype == jnp.float32
            assert np.isfinite(float(c)) and float(c) <= 1.0, name
            chi = T.chi_c(name, one, jnp.float32(1.0), jnp.float32(1.3))
            assert np.isfinite(float(chi)), name
            omc = T.one_minus_c_map(name, one, jnp.float32(1e-9), 1.3, 0.2)
            assert np.isfinite(float(omc)) and float(omc) > 0, name


# Maps -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["relu", "tanh", "silu", "hard_tanh"])
def test_one_minus_c_map_agrees_with_the_c_map_and_resolves_tiny_gaps(name):
    q, sw, sb = 1.7, 1.5, 0.3
    # Price's integral of a kinked slope kernel converges more slowly.
    rel = 1e-7 if activations.get_activation(name).kinks else 1e-9
    for c in (-0.8, 0.0, 0.6, 0.95):
        omc = float(T.one_minus_c_map(name, q, 1.0 - c, sw, sb))
        assert omc == pytest.approx(1.0 - float(T.c_map(name, q, c, sw, sb)), rel)
    # Far below the float floor of c, 1 - c' / (1 - c) tends to
    # sigma_w^2 q E[phi'^2] / q'.
    limit = float(T.chi_1(name, q, sw)) * q / float(T.q_map(name, q, sw, sb))
    ratio = float(T.one_minus_c_map(name, q, 1e-30, sw, sb)) / 1e-30
    assert ratio == pytest.approx(limit, rel=1e-6)


def test_log_q_map_stays_finite_in_deep_chaotic_networks():
    with jax.enable_x64(False):
        traj = T.iterate("relu", 4.0, 0.0, 2000, q_in=1.0)
        assert np.all(np.isfinite(np.asarray(traj.log_q)))
        # Exact for relu: q grows by sigma_w^2 / 2 per layer.
        # Each float32 step rounds at eps * log q, about 5e-4 at the end.
        log_q = np.asarray(traj.log_q, np.float64)
        np.testing.assert_allclose(np.diff(log_q), math.log(8.0), atol=1e-3)
        exact = math.log(16.0) + np.arange(2000) * math.log(8.0)
        np.testing.assert_allclose(log_q, exact, rtol=1e-4)
        assert np.all(np.isfinite(np.asarray(traj.one_minus_c)))


def test_maps_compile_once_for_every_sigma():
    traces = []

    @jax.jit
    def f(sigma_w, sigma_b):
        traces.append(1)
        return T.iterate("tanh", sigma_w, sigma_b, 5).log_q

    for sw, sb in [(1.0, 0.1), (2.0, 0.3), (3.0, 0.0)]:
        f(jnp.float64(sw), jnp.float64(sb))
    assert len(traces) == 1


def test_xi_c_is_the_decay_rate_of_the_correlation_gap():
    """Ordered tanh: (1 - c^l) shrinks by exp(-1 / xi_c) per layer, deep down."""
    sw, sb = 1.1, 0.3
    scales = T.depth_scales("tanh", sw, sb)
    traj = T.iterate("tanh", sw, sb, 200, q_in=float(scales.q_star), c_in=0.2)
    gap = np.asarray(traj.one_minus_c)
    rate = gap[150] / gap[149]
    assert rate == pytest.approx(math.exp(-1.0 / float(scales.xi_c)), rel=1e-6)
    assert float(scales.c_star) == 1.0
    assert float(scales.chi_c) == pytest.approx(float(scales.chi_1))


def test_chaotic_c_star_is_a_stable_fixed_point_of_the_c_map():
    sw, sb = 2.5, 0.3
    s = T.depth_scales("tanh", sw, sb)
    assert 0.0 < float(s.c_star) < 1.0
    again = T.c_map("tanh", s.q_star, s.c_star, sw, sb)
    assert float(again) == pytest.approx(float(s.c_star), abs=1e-10)
    assert float(s.chi_c) < 1.0 < float(s.chi_1)


# Fixed points and criticality ------------------------------------------------------


def test_fixed_points_are_fixed_and_stability_matches_iteration():
    fp = T.q_fixed_points("tanh", 2.5, 0.3)
    assert fp.q.size == 1 and fp.stable[0]
    assert float(T.q_map("tanh", fp.q[0], 2.5, 0.3)) == pytest.approx(fp.q[0])
    assert float(T.q_star("tanh", 2.5, 0.3, q0=50.0)) == pytest.approx(fp.q[0])


def test_all_fixed_points_are_found_when_there_are_several():
    # silu with a small bias on its chi_1 = 1 branch: q = 0 is gone but the
    # q-map crosses the diagonal twice.
    for sw, sb in [(1.9, 0.05), (2.2, 0.2), (1.7, 0.3)]:
        fp = T.q_fixed_points("silu", sw, sb)
        for q, slope in zip(fp.q, fp.slope, strict=True):
            assert float(T.q_map("silu", q, sw, sb)) == pytest.approx(q, rel=1e-8)
            assert float(T.q_slope("silu", q, sw)) == pytest.approx(slope)
        if fp.q.size >= 2:
            # Crossings alternate: stable, then unstable, then stable ...
            assert list(fp.stable[:2]) in ([True, False], [False, True])
            return
    pytest.fail("no setting with two fixed points among those tried")


@pytest.mark.parametrize("name", ["tanh", "elu", "erf", "silu", "gelu"])
def test_edge_of_chaos_points_have_chi_1_one_at_a_fixed_point(name):
    curve = T.edge_of_chaos(name, q=np.geomspace(1e-2, 1e2, 9))
    assert curve.q_star.size > 0
    for q, sw, sb in zip(curve.q_star, curve.sigma_w, curve.sigma_b, strict=True):
        if q == 0:
            continue
        assert float(T.chi_1(name, q, sw)) == pytest.approx(1.0, abs=1e-10)
        assert float(T.q_map(name, q, sw, sb)) == pytest.approx(q, rel=1e-10)


@pytest.mark.parametrize("name, sigma_b", [("tanh", 0.3), ("elu", 0.5), ("silu", 1.0)])
def test_critical_sigma_w_puts_a_stable_fixed_point_at_chi_1_one(name, sigma_b):
    sw = T.critical_sigma_w(name, sigma_b)
    fp = T.q_fixed_points(name, sw, sigma_b)
    chis = [float(T.chi_1(name, q, sw)) for q in fp.q[fp.stable]]
    assert min(abs(c - 1.0) for c in chis) < 1e-7


def test_relu_family_is_critical_only_without_bias():
    assert T.critical_sigma_w("relu", 0.0) == pytest.approx(math.sqrt(2.0))
    curve = T.edge_of_chaos("relu")
    assert curve.sigma_b.tolist() == [0.0]
    with pytest.raises(ValueError, match="relu has an edge of chaos only at sigma_b"):
        T.critical_sigma_w("relu", 0.1)


def test_silu_without_bias_has_only_an_unstable_critical_point():
    with pytest.raises(ValueError, match=r"silu has no stable edge of chaos.*\["):
        T.critical_sigma_w("silu", 0.0)


def test_phase_diagram_is_consistent_with_depth_scales():
    sw = np.linspace(0.6, 3.5, 12)
    sb = np.linspace(0.05, 1.0, 7)
    pd = T.phase_diagram("tanh", sw, sb)
    assert pd.chi_1.shape == (7, 12)
    assert np.all(np.diff(pd.chi_1, axis=1) > 0)
    ordered = pd.chi_1 < 1
    assert np.all(pd.c_star[ordered] == 1.0)
    assert np.all(pd.c_star[~ordered] < 1.0)
    s = T.depth_scales("tanh", sw[9], sb[3])
    assert pd.q_star[3, 9] == pytest.approx(float(s.q_star), rel=1e-5)
    assert pd.c_star[3, 9] == pytest.approx(float(s.c_star), abs=1e-4)
    # The edge of chaos passes between the ordered and chaotic cells.
    for i, b in enumerate(sb):
        w = T.critical_sigma_w("tanh", b)
        assert np.all(pd.chi_1[i, sw < w] < 1) and np.all(pd.chi_1[i, sw > w] > 1)


# Bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma_w": -1.0, "sigma_b": 0.0}, "sigma_w: expected a positive"),
        ({"sigma_w": math.inf, "sigma_b": 0.0}, "sigma_w: expected a positive"),
        ({"sigma_w": 1.0, "sigma_b": math.nan}, "sigma_b: expected a non-negative"),
        ({"sigma_w": 1.0, "sigma_b": -0.1}, "sigma_b: expected a non-negative"),
    ],
)
def test_bad_sigmas_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        T.q_fixed_points("tanh", **kwargs)
    with pytest.raises(ValueError, match=match):
        T.predict("tanh", depth=3, width=8, input_dim=4, **kwargs)


def test_critical_sigma_w_refuses_a_negative_bias():
    with pytest.raises(ValueError, match="sigma_b"):
        T.critical_sigma_w("tanh", -0.3)


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unknown name 'swishy'"):
        T.critical_sigma_w("swishy", 0.0)


def test_activation_with_divergent_moments_is_refused():
    act = activations.register(
        "gauss_growth", lambda z: jnp.exp(0.2 * z * z), overwrite=True
    )
    try:
        with pytest.raises(ValueError, match="diverges"):
            T.q_fixed_points(act, 1.0, 0.0)
        with pytest.raises(ValueError, match="diverges"):
            T.predict(act, 1.0, 0.0, 3, width=8, input_dim=4)
    finally:
        activations.unregister("gauss_growth")


def test_phase_diagram_refuses_bad_grids():
    with pytest.raises(ValueError, match="sigma_w: expected positive"):
        T.phase_diagram("tanh", np.array([0.0, 1.0]), np.array([0.1]))
    with pytest.raises(ValueError, match="sigma_b: expected finite non-negative"):
        T.phase_diagram("tanh", np.array([1.0]), np.array([np.nan]))
    with pytest.raises(ValueError, match="more than"):
        T.phase_diagram("tanh", np.ones(5000) + 0.1, np.ones(5000))


def test_a_registered_activation_gets_theory_by_quadrature():
    act = activations.register(
        "softsign_test", lambda z: z / (1 + jnp.abs(z)), bounded=True, overwrite=True
    )
    try:
        f = lambda u: u / (1 + abs(u))  # noqa: E731
        ref = _scipy_1d(lambda u: f(u) ** 2, 2.0, ())
        assert float(T.second_moment(act, 2.0)) == pytest.approx(ref, rel=1e-8)
        assert T.critical_sigma_w(act, 0.0) == pytest.approx(1.0)
    finally:
        activations.unregister("softsign_test")


@pytest.mark.slow  # about 25 s: 3000-layer recursions compiled in float32
def test_deep_ordered_networks_stay_finite_in_float32():
    with jax.enable_x64(False):
        relu = T.iterate("relu", 1.0, 0.0, 3000)
        # q halves every layer: exact in log space far below the float range.
        log_q = np.asarray(relu.log_q, np.float64)
        np.testing.assert_allclose(np.diff(log_q), math.log(0.5), atol=1e-3)
        tanh = T.iterate("tanh", 0.5, 0.0, 3000, c_in=0.3)
        assert np.all(np.isfinite(np.asarray(tanh.log_q)))
        omc = np.asarray(tanh.one_minus_c)
        assert np.all((omc >= 0) & (omc <= 1.0 + 1e-6))
        pred = T.predict("relu", 0.5, 0.0, 200, width=64, input_dim=16)
        assert all(np.all(np.isfinite(np.asarray(v))) for v in pred)


def test_gelu_closed_forms_hold_at_large_q_in_float32():
    with jax.enable_x64(False):
        for q in (1e6, 1e12):
            # 1/2 + O(q^-1/2), as for relu in the limit.
            assert float(T.slope_moment("gelu", q)) == pytest.approx(0.5, rel=1e-3)
            assert float(T.second_moment("gelu", q)) / q == pytest.approx(0.5, 1e-4)
        pd = T.phase_diagram("gelu", np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.5]))
        assert np.all(np.isfinite(pd.chi_1)) and np.all(np.isfinite(pd.c_star))


def test_searches_run_in_float64_whatever_the_caller_uses():
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="gelu has no stable edge of chaos"):
            T.critical_sigma_w("gelu", 0.0)
        assert T.critical_sigma_w("tanh", 0.0) == 1.0


def test_selu_critical_point_averages_the_slopes_on_both_sides_of_zero():
    # selu's slope jumps at 0 (scale vs scale * alpha): as q -> 0,
    # E[phi'^2] -> the mean of the two squared slopes.
    sw = T.critical_sigma_w("selu", 0.0)
    assert float(T.chi_1("selu", 1e-12, sw)) == pytest.approx(1.0, abs=1e-5)
