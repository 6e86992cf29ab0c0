"""Tests of the activation registry: values, accurate derivatives, traits."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from actgeo import activations
from actgeo.activations import get_activation, pattern

NAMES = activations.names()
WITH_KINKS = [n for n in NAMES if get_activation(n).kinks]

# A grid of float32 values shared by the derivative tests. It avoids 0 and the
# other integers, where autodiff of jnp.where/minimum splits a tie 50/50.
GRID = np.linspace(-6.0, 6.0, 240, dtype=np.float32)

# Klambauer et al. 2017, the constants of selu.
SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def f32(value):
    return jnp.asarray(value, jnp.float32)


# Required float32 values


def test_sigmoid_slope_does_not_round_to_zero():
    got = get_activation("sigmoid").derivative(f32(40.0))
    assert got.dtype == jnp.float32
    assert abs(float(got) - 4.248e-18) <= 1e-3 * 4.248e-18


def test_softplus_and_elu_far_right():
    softplus = get_activation("softplus")
    assert float(softplus(f32(100.0))) == 100.0
    assert float(softplus.derivative(f32(100.0))) == 1.0
    assert float(get_activation("elu").derivative(f32(200.0))) == 1.0


def test_relu_slope_at_zero_is_zero():
    assert float(get_activation("relu").derivative(f32(0.0))) == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_finite_at_large_magnitudes(name):
    act = get_activation(name)
    z = f32([-1e4, -1e3, 1e3, 1e4])
    value, slope = act(z), act.derivative(z)
    assert value.dtype == slope.dtype == jnp.float32
    # Every built-in activation is finite on finite inputs.
    assert np.all(np.isfinite(value)), value
    assert np.all(np.isfinite(slope)), slope


# Derivatives against float64 references


def _away_from_kinks(act, z, gap=1e-3):
    keep = np.ones(z.shape, bool)
    for kink in act.kinks:
        keep &= np.abs(z - kink) > gap
    return z[keep]


@pytest.mark.parametrize("name", NAMES)
def test_derivative_matches_float64_autodiff(name):
    act = get_activation(name)
    z = _away_from_kinks(act, GRID)
    with jax.enable_x64(True):
        z64 = jnp.asarray(z, jnp.float64)
        reference = np.asarray(jax.vmap(jax.grad(act.fn))(z64))
        # The formula itself, evaluated in float64, agrees to rounding.
        np.testing.assert_allclose(
            act.derivative(z64), reference, rtol=1e-12, atol=1e-14
        )
    got = act.derivative(f32(z))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, reference, rtol=2e-6, atol=1e-7 * act.peak_slope)


def _logistic(z):
    # 1 / (1 + e^-z), accurate in float64 for either sign.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _gelu_tanh_slope(z):
    # d/dz 0.5 z (1 + tanh u), u = c (z + 0.044715 z^3), with 1 + tanh u
    # written as 2 logistic(2u) so the left tail does not cancel.
    c = math.sqrt(2.0 / math.pi)
    u = c * (z + 0.044715 * z**3)
    du = c * (1.0 + 3 * 0.044715 * z**2)
    return _logistic(2 * u) + 0.5 * z * du / math.cosh(u) ** 2


# Closed forms of phi' in float64 (math module), where a naive float32 formula
# rounds to zero, overflows or cancels.
TAILS = [
    ("tanh", 10.0, lambda z: 1.0 / math.cosh(z) ** 2),
    ("tanh", -40.0, lambda z: 1.0 / math.cosh(z) ** 2),
    ("sigmoid", 30.0, lambda z: _logistic(z) * _logistic(-z)),
    ("sigmoid", -60.0, lambda z: _logistic(z) * _logistic(-z)),
    ("gelu_tanh", -8.0, _gelu_tanh_slope),
    (
        "gelu",
        -8.0,
        lambda z: (
            0.5 * math.erfc(-z / math.sqrt(2))
            + z * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        ),
    ),
    ("silu", -30.0, lambda z: _logistic(z) * (1.0 + z * _logistic(-z))),
    ("softplus", -30.0, _logistic),
    ("erf", 5.0, lambda z: 2.0 / math.sqrt(math.pi) * math.exp(-z * z)),
    ("elu", -30.0, math.exp),
    ("selu", -30.0, lambda z: SELU_SCALE * SELU_ALPHA * math.exp(z)),
]


@pytest.mark.parametrize(("name", "z", "closed_form"), TAILS)
def test_derivative_in_the_tails(name, z, closed_form):
    expected = closed_form(z)
    assert expected != 0.0
    got = float(get_activation(name).derivative(f32(z)))
    assert abs(got - expected) <= 1e-5 * abs(expected), (got, expected)


def test_gelu_is_the_erf_form_and_gelu_tanh_the_approximation():
    z = np.linspace(-8.0, 8.0, 321, dtype=np.float32)
    zd = z.astype(np.float64)
    erf_form = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in zd])
    u = math.sqrt(2 / math.pi) * (zd + 0.044715 * zd**3)
    tanh_form = np.array([v * _logistic(2 * w) for v, w in zip(zd, u, strict=True)])
    # The two forms differ by far more than the tolerance below.
    assert np.max(np.abs(erf_form - tanh_form)) > 1e-4
    np.testing.assert_allclose(
        get_activation("gelu")(f32(z)), erf_form, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        get_activation("gelu_tanh")(f32(z)), tanh_form, rtol=1e-5, atol=1e-7
    )


# Traits


@pytest.mark.parametrize(
    ("name", "piecewise_linear", "bounded", "kinks"),
    [
        ("relu", True, False, (0.0,)),
        ("hard_tanh", True, True, (-1.0, 1.0)),
        ("tanh", False, True, ()),
        ("linear", True, False, ()),
    ],
)
def test_traits(name, piecewise_linear, bounded, kinks):
    act = get_activation(name)
    assert act.piecewise_linear is piecewise_linear
    assert act.bounded is bounded
    assert act.kinks == kinks


@pytest.mark.parametrize("name", NAMES)
def test_traits_agree_with_the_function(name):
    act = get_activation(name)
    far = float(jnp.max(jnp.abs(act(f32([-1e4, 1e4])))))
    assert act.bounded == (far < 10.0), far
    slopes = np.unique(np.asarray(act.derivative(f32(_away_from_kinks(act, GRID)))))
    if act.piecewise_linear:
        assert slopes.size <= len(act.kinks) + 1, slopes
    else:
        assert slopes.size > 10
    for kink in act.kinks:
        left, right = act.derivative(f32([kink - 1e-3, kink + 1e-3]))
        assert left != right, kink


@pytest.mark.parametrize("name", NAMES)
def test_peak_slope_is_the_largest_slope(name):
    act = get_activation(name)
    grid = jnp.linspace(-20.0, 20.0, 400_001, dtype=jnp.float32)
    peak = float(jnp.max(jnp.abs(act.derivative(grid))))
    assert act.peak_slope == pytest.approx(peak, rel=1e-4)


def test_saturated_uses_one_percent_of_the_peak():
    sigmoid = get_activation("sigmoid")
    # sigmoid' = 0.0025 (1% of 0.25) at z = +-5.99 or so.
    z = f32([0.0, 5.0, 5.9, 6.1, 7.0, -7.0])
    np.testing.assert_array_equal(
        sigmoid.saturated(z), [False, False, False, True, True, True]
    )
    relu = get_activation("relu")
    np.testing.assert_array_equal(relu.saturated(f32([-1.0, 0.0, 1.0])), [1, 1, 0])


# Kink convention


def test_kink_convention_examples():
    hard_tanh = get_activation("hard_tanh")
    z = f32([-2.0, -1.0, 0.0, 1.0, 2.0])
    # On a kink, the slope and the piece are the left piece's.
    np.testing.assert_array_equal(hard_tanh.derivative(z), [0, 0, 1, 1, 0])
    np.testing.assert_array_equal(pattern(hard_tanh, z), [0, 0, 1, 1, 2])
    relu = get_activation("relu")
    np.testing.assert_array_equal(pattern(relu, f32([-1.0, 0.0, 1.0])), [0, 0, 1])
    assert float(get_activation("leaky_relu").derivative(f32(0.0))) == np.float32(0.01)
    assert pattern(get_activation("tanh"), z).tolist() == [0] * 5


def _next(values, toward):
    # The adjacent float32; from 0, the smallest normal number, since XLA on
    # the CPU flushes subnormals to zero.
    tiny = np.finfo(np.float32).tiny * np.sign(toward)
    step = np.nextafter(values, np.float32(toward))
    return np.where(values == 0, np.float32(tiny), step).astype(np.float32)


@pytest.mark.parametrize("name", WITH_KINKS)
def test_pattern_agrees_with_the_derivative_at_kinks(name):
    act = get_activation(name)
    kinks = np.asarray(act.kinks, np.float32)
    # One point inside each piece: the slope of piece p.
    inner = np.concatenate(
        [[kinks[0] - 1], (kinks[:-1] + kinks[1:]) / 2, [kinks[-1] + 1]]
    )
    piece_slope = np.asarray(act.derivative(f32(inner)))
    np.testing.assert_array_equal(pattern(act, f32(inner)), np.arange(inner.size))
    z = np.concatenate([kinks, _next(kinks, np.inf), _next(kinks, -np.inf)])
    index = np.asarray(pattern(act, f32(z)))
    np.testing.assert_array_equal(act.derivative(f32(z)), piece_slope[index])
    # Exactly on a kink is the left piece, just above it the right one.
    np.testing.assert_array_equal(index[: kinks.size], np.arange(kinks.size))
    np.testing.assert_array_equal(
        index[kinks.size : 2 * kinks.size], np.arange(1, kinks.size + 1)
    )


# register()


@pytest.fixture
def registered():
    """Registers activations for one test and removes them afterwards."""
    added = []

    def add(name, fn, **traits):
        act = activations.register(name, fn, **traits)
        added.append(name)
        return act

    try:
        yield add
    finally:
        for name in added:
            activations.unregister(name)


def _softsign(z):
    return z / (1.0 + jnp.abs(z))


def test_register_gives_an_autodiff_derivative(registered):
    act = registered("test_softsign", _softsign, bounded=True)
    assert get_activation("test_softsign") is act
    assert "test_softsign" in activations.names()
    z = np.linspace(-5.0, 5.0, 41, dtype=np.float32)
    np.testing.assert_allclose(
        act.derivative(f32(z)), 1.0 / (1.0 + np.abs(z)) ** 2, rtol=1e-6
    )
    # The peak slope is measured on a grid: 1, at z = 0.
    assert act.peak_slope == pytest.approx(1.0, rel=1e-5)
    assert act.customary_sigma_w == 1.0


def test_unregister_removes_the_entry(registered):
    registered("test_gone", _softsign)
    activations.unregister("test_gone")
    assert "test_gone" not in activations.names()
    with pytest.raises(ValueError, match="unknown name 'test_gone'"):
        get_activation("test_gone")
    with pytest.raises(ValueError, match="built in"):
        activations.unregister("relu")


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="activation: unknown name 'swishy'") as err:
        get_activation("swishy")
    for name in NAMES:
        assert name in str(err.value)
    with pytest.raises(TypeError, match="activation"):
        get_activation(3)


def test_duplicate_names_are_refused(registered):
    with pytest.raises(ValueError, match="'relu' is already registered"):
        activations.register("relu", _softsign)
    registered("test_twice", _softsign)
    with pytest.raises(ValueError, match="'test_twice' is already registered"):
        activations.register("test_twice", jnp.tanh)
    replaced = activations.register("test_twice", jnp.tanh, overwrite=True)
    assert get_activation("test_twice") is replaced


def test_piecewise_linear_with_kinks_needs_a_derivative(registered):
    def clipped(z):
        return jnp.clip(z, 0.0, 2.0)

    with pytest.raises(ValueError, match="derivative: a piecewise-linear"):
        activations.register("test_clip", clipped, piecewise_linear=True, kinks=(0, 2))
    assert "test_clip" not in activations.names()

    def slope(z):
        return ((z > 0) & ~(z > 2)).astype(z.dtype)

    act = registered(
        "test_clip", clipped, derivative=slope, piecewise_linear=True, kinks=(0, 2)
    )
    np.testing.assert_array_equal(act.derivative(f32([0.0, 1.0, 2.0])), [0, 1, 1])
    np.testing.assert_array_equal(pattern(act, f32([0.0, 1.0, 2.0, 3.0])), [0, 1, 1, 2])


@pytest.mark.parametrize(
    ("traits", "field"),
    [
        ({"kinks": (1.0, 0.0)}, "kinks"),
        ({"kinks": (0.0, 0.0)}, "kinks"),
        ({"customary_sigma_w": 0.0}, "customary_sigma_w"),
        ({"customary_sigma_w": math.inf}, "customary_sigma_w"),
        ({"peak_slope": 0.0}, "peak_slope"),
        ({"peak_slope": -1.0}, "peak_slope"),
        ({"peak_slope": math.nan}, "peak_slope"),
    ],
)
def test_register_rejects_inconsistent_traits(traits, field):
    with pytest.raises(ValueError, match=field):
        activations.register("test_bad", _softsign, **traits)
    assert "test_bad" not in activations.names()


def test_register_refuses_functions_that_are_not_elementwise():
    with pytest.raises(ValueError, match="fn: expected an elementwise function"):
        activations.register("test_softmax", jax.nn.softmax)
    with pytest.raises(ValueError, match="fn: expected an elementwise function"):
        activations.register("test_sum", lambda z: jnp.sum(z) + 0 * z)
    assert "test_softmax" not in activations.names()
