"""The activation registry: value, accurate derivative and traits of each activation.

Every part of actgeo looks activations up here by name. An entry carries

* ``fn``: the activation, elementwise;
* ``derivative``: ``phi'``, written to stay accurate where the naive formula
  rounds to zero or overflows (``sigmoid'(40)`` is ``4.248e-18``, not ``0``;
  every derivative is finite at ``+-1e4``);
* traits: whether it is piecewise linear, whether it is bounded, where its
  kinks are, its peak slope, and the weight scale ``sigma_w`` of its customary
  initialisation;
* optionally, closed-form Gaussian kernels ``E[phi(u) phi(v)]`` and
  ``E[phi'(u) phi'(v)]`` for jointly Gaussian ``(u, v)``, which
  :mod:`actgeo.theory` uses instead of quadrature (relu, leaky relu, linear,
  erf and exact gelu have them).

Kink convention. A point exactly on a kink belongs to the piece on its left:
the derivative there is the left piece's slope (``relu'(0) = 0``), and the
activation pattern of a preactivation ``z`` is the number of kinks strictly
below it (:func:`pattern`). Both use the comparison ``z > kink``, so the
derivative and the pattern agree everywhere in the library.

A user's own elementwise callable can be registered; its derivative then comes
from forward-mode autodiff.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "Activation",
    "get_activation",
    "names",
    "pattern",
    "register",
]

ArrayFn = Callable[[jax.Array], jax.Array]
GaussianKernel = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

# A unit counts as saturated when its slope is below this fraction of the
# activation's peak slope.
SATURATION_FRACTION = 0.01


@dataclasses.dataclass(frozen=True, eq=False)
class Activation:
    """One activation function and what the library needs to know about it.

    Attributes:
      name: registry name.
      fn: the activation ``phi``, elementwise.
      derivative: ``phi'``, elementwise, accurate in floating point.
      piecewise_linear: ``phi`` is linear between its kinks.
      bounded: ``phi`` is bounded on the real line.
      kinks: points where ``phi'`` jumps, in increasing order.
      customary_sigma_w: standard deviation scale ``sigma_w`` of the usual
        initialisation for this activation (He, ``sqrt(2)``, for the relu
        family; LeCun, ``1``, for bounded activations and selu).
      peak_slope: ``sup |phi'|``, used to decide saturation.
      parameters: named constants of the activation (a leaky slope, say), for
        closed-form theory.
      kernel: ``kernel(q1, q2, c) = E[phi(u) phi(v)]`` for zero-mean jointly
        Gaussian ``(u, v)`` with variances ``q1, q2`` and correlation ``c``,
        in closed form, or ``None`` (the theory then integrates numerically).
      slope_kernel: the same for ``E[phi'(u) phi'(v)]``.
    """

    name: str
    fn: ArrayFn
    derivative: ArrayFn
    piecewise_linear: bool = False
    bounded: bool = False
    kinks: tuple[float, ...] = ()
    customary_sigma_w: float = 1.0
    peak_slope: float = 1.0
    parameters: tuple[tuple[str, float], ...] = ()
    kernel: GaussianKernel | None = None
    slope_kernel: GaussianKernel | None = None

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.fn(z)

    def saturated(self, z: jax.Array) -> jax.Array:
        """Whether each unit's slope is under 1% of the peak slope (bool)."""
        return jnp.abs(self.derivative(z)) < SATURATION_FRACTION * self.peak_slope

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


def pattern(activation: Activation, z: jax.Array) -> jax.Array:
    """Index of the linear piece each preactivation lies on (int32).

    The index counts the kinks strictly below ``z`` (a point on a kink belongs
    to the piece on its left, as the derivative does). Activations without
    kinks have the single piece 0.
    """
    index = jnp.zeros(jnp.shape(z), jnp.int32)
    for kink in activation.kinks:
        index = index + (z > kink).astype(jnp.int32)
    return index


# Stable building blocks ---------------------------------------------------------


def _sigmoid_slope(z):
    # sigmoid(z) * sigmoid(-z): both factors are accurate, so their product is,
    # unlike sigmoid * (1 - sigmoid) which rounds to 0 for z > 17 in float32.
    return jax.nn.sigmoid(z) * jax.nn.sigmoid(-z)


def _sech2(z):
    # 1 - tanh(z)^2 written as 4 e^{-2|z|} / (1 + e^{-2|z|})^2.
    e = jnp.exp(-2.0 * jnp.abs(z))
    return 4.0 * e / (1.0 + e) ** 2


def _normal_cdf(z):
    return 0.5 * jax.lax.erfc(-z / math.sqrt(2.0))


def _normal_pdf(z):
    return jnp.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _step(z, left, right):
    return jnp.where(z > 0, jnp.asarray(right, z.dtype), jnp.asarray(left, z.dtype))


# Closed-form Gaussian kernels ----------------------------------------------------
#
# Each takes the variances q1, q2 of (u, v) and their correlation c (clipped to
# [-1, 1]) and returns an expectation over the bivariate normal. They are exact
# at c = +-1 (no 0/0): arccos(1) = 0 and the square roots stay real.


def _angle(c):
    return jnp.arccos(jnp.clip(c, -1.0, 1.0))


def _relu_kernel(q1, q2, c):
    # Arc-cosine kernel of degree 1 (Cho & Saul 2009).
    theta = _angle(c)
    scale = jnp.sqrt(q1) * jnp.sqrt(q2) / (2.0 * math.pi)
    return scale * (jnp.sin(theta) + (math.pi - theta) * jnp.cos(theta))


def _relu_slope_kernel(q1, q2, c):
    # Arc-cosine kernel of degree 0; exactly 1/2 at c = 1.
    return (math.pi - _angle(c)) / (2.0 * math.pi) + 0.0 * (q1 + q2)


def _make_leaky_kernels(slope: float):
    # phi = a z + (1 - a) relu(z), and E[u relu(v)] = E[u v] / 2 by symmetry.
    def kernel(q1, q2, c):
        k = jnp.clip(c, -1.0, 1.0) * jnp.sqrt(q1) * jnp.sqrt(q2)
        return slope * k + (1.0 - slope) ** 2 * _relu_kernel(q1, q2, c)

    def slope_kernel(q1, q2, c):
        return slope + (1.0 - slope) ** 2 * _relu_slope_kernel(q1, q2, c)

    return kernel, slope_kernel


def _linear_kernel(q1, q2, c):
    return jnp.clip(c, -1.0, 1.0) * jnp.sqrt(q1) * jnp.sqrt(q2)


def _linear_slope_kernel(q1, q2, c):
    return jnp.ones_like(q1 + q2 + c)


def _erf_kernel(q1, q2, c):
    # Arcsine kernel (Williams 1997).
    k = jnp.clip(c, -1.0, 1.0) * jnp.sqrt(q1) * jnp.sqrt(q2)
    arg = 2.0 * k / jnp.sqrt((1.0 + 2.0 * q1) * (1.0 + 2.0 * q2))
    return (2.0 / math.pi) * jnp.arcsin(jnp.clip(arg, -1.0, 1.0))


def _erf_slope_kernel(q1, q2, c):
    # (4 / pi) E[exp(-u^2 - v^2)] = (4 / pi) / sqrt(det(I + 2 Sigma)).
    c = jnp.clip(c, -1.0, 1.0)
    # det(I + 2 Sigma) without cancelling at c = 1 and large q.
    det = 1.0 + 2.0 * q1 + 2.0 * q2 + 4.0 * q1 * q2 * (1.0 - c) * (1.0 + c)
    return (4.0 / math.pi) / jnp.sqrt(det)


def _gelu_parts(q1, q2, c):
    # E[u Phi(u) v Phi(v)]: write Phi(u) = P(xi_1 < u) with independent standard
    # normals xi, so the kernel is E[u v 1{s > 0} 1{t > 0}] with s = u - xi_1,
    # t = v - xi_2; Stein's identity to second order gives the terms below,
    # arranged as sums of positive terms so nothing cancels at large q.
    c = jnp.clip(c, -1.0, 1.0)
    k = c * jnp.sqrt(q1) * jnp.sqrt(q2)
    a = (1.0 + q1) * (1.0 + q2)
    # det = a - k^2, written without cancelling at c = 1.
    det = 1.0 + q1 + q2 + q1 * q2 * (1.0 - c) * (1.0 + c)
    rho = jnp.clip(k / jnp.sqrt(a), -1.0, 1.0)  # rounding can pass 1 at large q
    return k, a, det, rho


def _gelu_kernel(q1, q2, c):
    k, a, det, rho = _gelu_parts(q1, q2, c)
    # (q1 q2 det + k^2) / (a sqrt(det)), in factors that do not overflow.
    bracket = (q1 * q2 / a) * jnp.sqrt(det) + (k * k / a) / jnp.sqrt(det)
    return k / 4.0 + k * jnp.arcsin(rho) / (2.0 * math.pi) + bracket / (2.0 * math.pi)


def _gelu_slope_kernel(q1, q2, c):
    # d/dk of the kernel (Price's theorem).
    k, a, det, rho = _gelu_parts(q1, q2, c)
    # k (det (3 + q1 + q2) + k^2) / (a det^1.5), in factors that do not overflow.
    rest = (k / jnp.sqrt(det)) * ((3.0 + q1 + q2) / a + (k / a) * (k / det))
    rest = rest / (2.0 * math.pi)
    return 0.25 + jnp.arcsin(rho) / (2.0 * math.pi) + rest


# Built-in activations ------------------------------------------------------------


def _relu(z):
    return jnp.where(z > 0, z, jnp.zeros_like(z))


def _relu_prime(z):
    return _step(z, 0.0, 1.0)


def _make_leaky_relu(slope: float) -> tuple[ArrayFn, ArrayFn]:
    def fn(z):
        return jnp.where(z > 0, z, slope * z)

    def derivative(z):
        return _step(z, slope, 1.0)

    return fn, derivative


def _elu(z):
    return jnp.where(z > 0, z, jnp.expm1(jnp.minimum(z, 0.0)))


def _elu_prime(z):
    return jnp.where(z > 0, jnp.ones_like(z), jnp.exp(jnp.minimum(z, 0.0)))


_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805


def _selu(z):
    return _SELU_SCALE * jnp.where(z > 0, z, _SELU_ALPHA * jnp.expm1(jnp.minimum(z, 0)))


def _selu_prime(z):
    neg = _SELU_ALPHA * jnp.exp(jnp.minimum(z, 0.0))
    return _SELU_SCALE * jnp.where(z > 0, jnp.ones_like(z), neg)


def _gelu(z):
    return z * _normal_cdf(z)


def _gelu_prime(z):
    return _normal_cdf(z) + z * _normal_pdf(z)


_GELU_TANH_C = 0.044715
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_tanh_inner(z):
    # Past |z| = 100 the gate is exactly 0 or 1; clipping keeps z^3 finite.
    zc = jnp.clip(z, -100.0, 100.0)
    return zc, _SQRT_2_OVER_PI * (zc + _GELU_TANH_C * zc**3)


def _gelu_tanh(z):
    # 0.5 z (1 + tanh u) = z sigmoid(2u), which does not cancel for u << 0.
    _, u = _gelu_tanh_inner(z)
    return z * jax.nn.sigmoid(2.0 * u)


def _gelu_tanh_prime(z):
    zc, u = _gelu_tanh_inner(z)
    du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_C * zc * zc)
    return jax.nn.sigmoid(2.0 * u) + zc * 2.0 * _sigmoid_slope(2.0 * u) * du


def _silu(z):
    return z * jax.nn.sigmoid(z)


def _silu_prime(z):
    return jax.nn.sigmoid(z) + z * _sigmoid_slope(z)


def _tanh_prime(z):
    return _sech2(z)


def _erf_prime(z):
    return (2.0 / math.sqrt(math.pi)) * jnp.exp(-z * z)


def _hard_tanh(z):
    return jnp.clip(z, -1.0, 1.0)


def _hard_tanh_prime(z):
    # Pieces: (-inf, -1], (-1, 1], (1, inf), matching pattern().
    inside = (z > -1.0) & jnp.logical_not(z > 1.0)
    return jnp.where(inside, jnp.ones_like(z), jnp.zeros_like(z))


def _identity(z):
    return z


def _one(z):
    return jnp.ones_like(z)


_SQRT2 = math.sqrt(2.0)
_LEAKY_SLOPE = 0.01
_leaky_fn, _leaky_prime = _make_leaky_relu(_LEAKY_SLOPE)
_leaky_kernel, _leaky_slope_kernel = _make_leaky_kernels(_LEAKY_SLOPE)

_BUILTINS = (
    Activation(
        "relu",
        _relu,
        _relu_prime,
        True,
        False,
        (0.0,),
        _SQRT2,
        1.0,
        kernel=_relu_kernel,
        slope_kernel=_relu_slope_kernel,
    ),
    Activation(
        "leaky_relu",
        _leaky_fn,
        _leaky_prime,
        True,
        False,
        (0.0,),
        math.sqrt(2.0 / (1.0 + _LEAKY_SLOPE**2)),
        1.0,
        (("slope", _LEAKY_SLOPE),),
        kernel=_leaky_kernel,
        slope_kernel=_leaky_slope_kernel,
    ),
    Activation("elu", _elu, _elu_prime, False, False, (), _SQRT2, 1.0),
    Activation(
        "selu",
        _selu,
        _selu_prime,
        False,
        False,
        (),
        1.0,
        _SELU_SCALE * _SELU_ALPHA,
        (("alpha", _SELU_ALPHA), ("scale", _SELU_SCALE)),
    ),
    Activation(
        "gelu",
        _gelu,
        _gelu_prime,
        False,
        False,
        (),
        _SQRT2,
        1.1289,
        kernel=_gelu_kernel,
        slope_kernel=_gelu_slope_kernel,
    ),
    Activation(
        "gelu_tanh", _gelu_tanh, _gelu_tanh_prime, False, False, (), _SQRT2, 1.1289931
    ),
    Activation("silu", _silu, _silu_prime, False, False, (), _SQRT2, 1.0998),
    Activation(
        "softplus", jax.nn.softplus, jax.nn.sigmoid, False, False, (), _SQRT2, 1.0
    ),
    Activation("tanh", jnp.tanh, _tanh_prime, False, True, (), 1.0, 1.0),
    Activation("sigmoid", jax.nn.sigmoid, _sigmoid_slope, False, True, (), 1.0, 0.25),
    Activation(
        "erf",
        jax.lax.erf,
        _erf_prime,
        False,
        True,
        (),
        1.0,
        2.0 / math.sqrt(math.pi),
        kernel=_erf_kernel,
        slope_kernel=_erf_slope_kernel,
    ),
    Activation(
        "hard_tanh", _hard_tanh, _hard_tanh_prime, True, True, (-1.0, 1.0), 1.0, 1.0
    ),
    Activation(
        "linear",
        _identity,
        _one,
        True,
        False,
        (),
        1.0,
        1.0,
        kernel=_linear_kernel,
        slope_kernel=_linear_slope_kernel,
    ),
)

_REGISTRY: dict[str, Activation] = {a.name: a for a in _BUILTINS}


def names() -> tuple[str, ...]:
    """Names of every registered activation, built-in ones first."""
    return tuple(_REGISTRY)


def get_activation(activation: str | Activation) -> Activation:
    """Looks an activation up by name (an :class:`Activation` passes through).

    Raises:
      ValueError: the name is not registered; the message lists valid names.
    """
    if isinstance(activation, Activation):
        return activation
    if not isinstance(activation, str):
        raise TypeError(
            "activation: expected a registered name or an Activation, got "
            f"{type(activation).__name__}"
        )
    try:
        return _REGISTRY[activation]
    except KeyError:
        valid = ", ".join(names())
        raise ValueError(
            f"activation: unknown name {activation!r}; valid names are {valid}"
        ) from None


def switched(choices: tuple[str, ...], index: jax.Array) -> Activation:
    """An activation chosen among ``choices`` by a traced ``index``.

    One compiled program then serves every activation of ``choices``
    (``lax.switch`` picks the branch at run time), which saves a compilation
    per activation in sweeps. Only ``fn``, ``derivative`` and ``saturated``
    are meaningful on the result; its other traits are left at defaults.
    """
    entries = [get_activation(name) for name in choices]
    peaks = jnp.asarray([a.peak_slope for a in entries])

    def fn(z):
        return jax.lax.switch(index, [a.fn for a in entries], z)

    def derivative(z):
        return jax.lax.switch(index, [a.derivative for a in entries], z)

    return Activation(
        name="switched(" + ",".join(choices) + ")",
        fn=fn,
        derivative=derivative,
        peak_slope=peaks[index],
    )


def _autodiff_derivative(fn: ArrayFn) -> ArrayFn:
    def derivative(z):
        # fn is elementwise, so a tangent of ones gives phi' at every entry.
        return jax.jvp(fn, (z,), (jnp.ones_like(z),))[1]

    return derivative


def _check_elementwise(fn: ArrayFn) -> None:
    probe = jnp.linspace(-3.0, 3.0, 7, dtype=jnp.float32)
    try:
        whole = jnp.asarray(fn(probe))
        parts = jnp.concatenate([jnp.ravel(fn(probe[i : i + 1])) for i in range(7)])
    except Exception as err:
        raise ValueError(
            f"fn: could not evaluate it on a float32 vector: {err}"
        ) from err
    if whole.shape != probe.shape or not bool(
        jnp.allclose(whole, parts, rtol=1e-5, atol=1e-6, equal_nan=True)
    ):
        raise ValueError(
            "fn: expected an elementwise function (same shape out, each entry "
            "depending only on the same entry in)"
        )


def _measured_peak_slope(derivative: ArrayFn) -> float:
    grid = jnp.linspace(-20.0, 20.0, 40_001, dtype=jnp.float32)
    peak = float(jnp.max(jnp.abs(derivative(grid))))
    if not math.isfinite(peak) or peak <= 0.0:
        raise ValueError(
            "derivative: expected a finite, non-zero slope somewhere in [-20, 20], "
            f"found a peak |phi'| of {peak}"
        )
    return peak


def register(
    name: str,
    fn: ArrayFn,
    *,
    derivative: ArrayFn | None = None,
    piecewise_linear: bool = False,
    bounded: bool = False,
    kinks: tuple[float, ...] = (),
    customary_sigma_w: float = 1.0,
    peak_slope: float | None = None,
    kernel: GaussianKernel | None = None,
    slope_kernel: GaussianKernel | None = None,
    overwrite: bool = False,
) -> Activation:
    """Adds a user's elementwise activation to the registry and returns its entry.

    Args:
      name: the name to register under.
      fn: elementwise ``phi``, written with ``jax.numpy``.
      derivative: ``phi'``; by default forward-mode autodiff of ``fn``.
      piecewise_linear, bounded, kinks: traits, as on :class:`Activation`.
      customary_sigma_w: weight scale of its usual initialisation.
      peak_slope: ``sup |phi'|``; by default measured on a grid over [-20, 20].
      kernel, slope_kernel: closed forms of ``E[phi(u) phi(v)]`` and
        ``E[phi'(u) phi'(v)]`` as functions of ``(q1, q2, c)`` (see
        :class:`Activation`); without them the theory uses quadrature.
      overwrite: replace an existing entry of the same name.

    Raises:
      ValueError: the name is taken (and ``overwrite`` is false), or a trait is
        inconsistent.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"name: {name!r} is already registered; pass overwrite=True to replace it"
        )
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    kinks = tuple(float(k) for k in kinks)
    if list(kinks) != sorted(set(kinks)):
        raise ValueError(f"kinks: expected increasing distinct values, got {kinks}")
    if piecewise_linear and derivative is None and kinks:
        # Autodiff of jnp.maximum etc. splits ties 50/50; the library's
        # convention needs the left slope at a kink.
        raise ValueError(
            "derivative: a piecewise-linear activation with kinks needs an explicit "
            "derivative that gives the left piece's slope at each kink"
        )
    if not (math.isfinite(customary_sigma_w) and customary_sigma_w > 0):
        raise ValueError(
            f"customary_sigma_w: expected a positive finite number, got "
            f"{customary_sigma_w}"
        )
    _check_elementwise(fn)
    derivative = derivative or _autodiff_derivative(fn)
    if peak_slope is None:
        peak_slope = _measured_peak_slope(derivative)
    elif not (isinstance(peak_slope, int | float) and math.isfinite(peak_slope)):
        raise ValueError(
            f"peak_slope: expected a positive finite number, got {peak_slope}"
        )
    if not peak_slope > 0:
        raise ValueError(
            f"peak_slope: expected a positive finite number, got {peak_slope}"
        )
    activation = Activation(
        name,
        fn,
        derivative,
        piecewise_linear,
        bounded,
        kinks,
        float(customary_sigma_w),
        float(peak_slope),
        kernel=kernel,
        slope_kernel=slope_kernel,
    )
    _REGISTRY[name] = activation
    return activation


def unregister(name: str) -> None:
    """Removes a user-registered activation (built-ins cannot be removed)."""
    if name in {a.name for a in _BUILTINS}:
        raise ValueError(f"name: {name!r} is built in and cannot be removed")
    _REGISTRY.pop(name, None)
