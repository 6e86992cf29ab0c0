"""Length and correlation maps of infinitely wide random networks.

Mean-field theory of Poole et al. 2016 ("Exponential expressivity in deep
neural networks through transient chaos") and Schoenholz et al. 2017 ("Deep
information propagation"). With ``W_ij ~ N(0, sigma_w^2 / N)`` and
``b_i ~ N(0, sigma_b^2)`` (standard deviations), preactivations of a wide
layer are Gaussian, and from one layer to the next

* the length (q-) map: ``q' = sigma_w^2 E[phi(u)^2] + sigma_b^2``,
  ``u ~ N(0, q)``;
* the correlation (c-) map, for two inputs of equal length ``q``:
  ``c' = (sigma_w^2 E[phi(u) phi(v)] + sigma_b^2) / q'`` with ``(u, v)``
  of variance ``q`` and correlation ``c``;
* ``chi_1 = sigma_w^2 E[phi'(u)^2]``, the growth of a small perturbation
  (and the slope of the c-map at ``c = 1`` at a fixed point ``q*``);
* ``chi_c = sigma_w^2 E[phi'(u) phi'(v)]``, the slope of the c-map at ``c``.

Correlations near 1 are tracked as ``1 - c``: by Price's theorem
``1 - c' = sigma_w^2 q / q' * int_c^1 E_t[phi'(u) phi'(v)] dt``, a product of
``1 - c`` and a positive average that never cancels, so depth scales can be
measured far past float32's ``1e-7`` floor of ``c``.

Deep chaotic networks with unbounded activations grow ``q`` geometrically;
:func:`log_q_map` works in ``log q`` and stays finite where ``q`` itself
would overflow.

Every function here is pure and traceable in ``q``, ``c``, ``sigma_w`` and
``sigma_b`` (vmap over grids); the activation and quadrature are static.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from actgeo.activations import Activation, get_activation
from actgeo.theory.gaussian import (
    Quadrature,
    _float,
    length_moment,
    pair_moment,
    second_moment,
    slope_moment,
    slope_pair_moment,
)

__all__ = [
    "Trajectory",
    "c_map",
    "chi_1",
    "chi_c",
    "iterate",
    "log_q_map",
    "one_minus_c_map",
    "q_map",
    "q_slope",
]

# Gauss-Legendre nodes for the Price integral over t in [c, 1], written as
# t = 1 - (1 - c) s^2 so that the sqrt(1 - t) behaviour of kinked activations'
# slope kernels becomes smooth in s.
_PRICE_ORDER = 12


def q_map(
    activation: str | Activation,
    q: jax.Array | float,
    sigma_w: jax.Array | float,
    sigma_b: jax.Array | float,
    quadrature: Quadrature | None = None,
) -> jax.Array:
    """Next layer's ``q``: ``sigma_w^2 E[phi(u)^2] + sigma_b^2``, ``u ~ N(0, q)``."""
    q, sigma_w, sigma_b = (_float(v) for v in (q, sigma_w, sigma_b))
    return sigma_w**2 * second_moment(activation, q, quadrature) + sigma_b**2


def _overflow_q(dtype) -> float:
    # Largest q at which q^2 and phi(9 sqrt(q))^2 are safe for linearly
    # growing phi (closed-form kernels multiply two variances).
    # Beyond it the moments are extrapolated (see log_q_map), so one cap
    # serves both precisions.
    del dtype
    return 1e15


def _underflow_q(dtype) -> float:
    # Smallest q the quadrature and the closed forms take without underflow.
    return 1e-15 if jnp.finfo(dtype).bits <= 32 else 1e-150


def _safe_q(log_q: jax.Array) -> jax.Array:
    """``q`` from ``log q``, clipped into the range the expectations handle."""
    lo, hi = _underflow_q(log_q.dtype), _overflow_q(log_q.dtype)
    return jnp.exp(jnp.clip(log_q, math.log(lo), math.log(hi)))


def log_q_map(
    activation: str | Activation,
    log_q: jax.Array | float,
    sigma_w: jax.Array | float,
    sigma_b: jax.Array | float,
    quadrature: Quadrature | None = None,
) -> jax.Array:
    """``log q'`` from ``log q``, finite where ``q`` overflows or underflows.

    Past ``q = 1e15``, ``E[phi(u)^2]`` is
    taken as ``(q / q_max) E[phi(u_max)^2]`` for unbounded activations (exact
    for positively homogeneous ones, the relu family and linear, and to
    relative ``O(q^-1/2)`` for those that grow linearly, such as elu, gelu,
    silu, softplus), and as ``E[phi(u_max)^2]`` for bounded ones. Below
    ``q = 1e-15`` (``1e-150``) it is taken as ``(q / q_min) E[phi(u_min)^2]``
    for activations with ``phi(0) = 0`` (exact to ``O(q_min)``), and as the
    value at ``q_min`` otherwise, so deep ordered networks stay finite too.
    """
    act = get_activation(activation)
    log_q, sigma_w, sigma_b = (_float(v) for v in (log_q, sigma_w, sigma_b))
    q_safe = _safe_q(log_q)
    log_q_safe = jnp.log(q_safe)
    log_moment = jnp.log(second_moment(act, q_safe, quadrature))
    above = jnp.maximum(log_q - log_q_safe, 0.0)
    below = jnp.minimum(log_q - log_q_safe, 0.0)
    if not act.bounded:
        log_moment = log_moment + above
    with jax.ensure_compile_time_eval():
        vanishes_at_zero = float(act.fn(jnp.zeros(()))) == 0.0
    if vanishes_at_zero:
        # E[phi(u)^2] ~ q (phi'(0-)^2 + phi'(0+)^2) / 2 as q -> 0.
        log_moment = log_moment + below
    return jnp.logaddexp(2.0 * jnp.log(sigma_w) + log_moment, 2.0 * jnp.log(sigma_b))


def q_slope(
    activation: str | Activation,
    q: jax.Array | float,
    sigma_w: jax.Array | float,
    quadrature: Quadrature | None = None,
) -> jax.Array:
    """``dq'/dq``, the q-map's slope; a fixed point is stable where it is below 1."""
    q, sigma_w = _float(q), _float(sigma_w)
    return sigma_w**2 * length_moment(activation, q, quadrature)


def chi_1(
    activation: str | Activation,
    q: jax.Array | float,
    sigma_w: jax.Array | float,
    quadrature: Quadrature | None = None,
) -> jax.Array:
    """``chi_1 = sigma_w^2 E[phi'(u)^2]``, ``u ~ N(0, q)`` (Poole et al. 2016).

    The mean squared growth of a small perturbation from one layer to the
    next; 1 on the edge of chaos.
    """
    q, sigma_w = _float(q), _float(sigma_w)
    return sigma_w**2 * slope_moment(activation, q, quadrature)


def chi_c(
    activation: str | Activation,
    q: jax.Array | float,
    c: jax.Array | float,
    sigma_w: jax.Array | float,
    quadrature: Quadrature | None = None,
) -> jax.Array:
    """``chi_c = sigma_w^2 E[phi'(u) phi'(v)]`` (Schoenholz et al. 2017).

    The slope of the c-map at ``c`` for inputs at a fixed point ``q``;
    equal to :func:`chi_1` at ``c = 1``.
    """
    q, c, sigma_w = (_float(v) for v in (q, c, sigma_w))
    return sigma_w**2 * slope_pair_moment(activation, q, q, c, quadrature)


def c_map(
    activation: str | Activation,
    q: jax.Array | float,
    c: jax.Array | float,
    sigma_w: jax.Array | float,
    sigma_b: jax.Array | float,
    quadrature: Quadrature | None = None,
) -> jax.Array:
    """Next layer's correlation of two inputs that both have variance ``q``.

    ``c' = (sigma_w^2 E[phi(u) phi(v)] + sigma_b^2) / q'``, clipped to
    ``[-1, 1]`` so rounding never reports a correlation above 1. Use
    :func:`one_minus_c_map` where ``1 - c`` matters below ``1e-7``.
    """
    q, c, sigma_w, sigma_b = (_float(v) for v in (q, c, sigma_w, sigma_b))
    num = sigma_w**2 * pair_moment(activation, q, q, c, quadrature) + sigma_b**2
    den = q_map(activation, q, sigma_w, sigma_b, quadrature)
    return jnp.clip(num / den, -1.0, 1.0)


def one_minus_c_map(
    activation: str | Activation,
    q: jax.Array | float,
    one_minus_c: jax.Array | float,
    sigma_w: jax.Array | float,
    sigma_b: jax.Array | float,
    quadrature: Quadrature | None = None,
) -> jax.Array:
    """``1 - c'`` from ``1 - c``, accurate to full relative precision near 1.

    For ``c >= 0`` this is Price's integral
    ``sigma_w^2 q / q' * int_c^1 E_t[phi'(u) phi'(v)] dt`` (a 12-point
    Gauss-Legendre rule in ``s`` with ``t = 1 - (1 - c) s^2``); for ``c < 0``,
    where nothing cancels, ``sigma_w^2 (E[phi^2] - E[phi(u) phi(v)]) / q'``.
    Both inputs have variance ``q``.
    """
    act = get_activation(activation)
    q, omc, sigma_w, sigma_b = (_float(v) for v in (q, one_minus_c, sigma_w, sigma_b))
    omc = jnp.clip(omc, 0.0, 2.0)
    q_next = q_map(act, q, sigma_w, sigma_b, quadrature)
    x, w = np.polynomial.legendre.leggauss(_PRICE_ORDER)
    s = jnp.asarray(0.5 * (x + 1.0), q.dtype)
    ws = jnp.asarray(0.5 * w, q.dtype)
    near = jnp.minimum(omc, 1.0)
    omc_t = near * s * s

    def slope_at(o):
        return slope_pair_moment(act, q, q, 1.0 - o, quadrature, one_minus_c=o)

    average = jnp.sum(ws * 2.0 * s * jax.vmap(slope_at)(omc_t))
    price = sigma_w**2 * q * near * average / q_next
    direct = (
        sigma_w**2
        * (
            second_moment(act, q, quadrature)
            - pair_moment(act, q, q, 1.0 - omc, quadrature, one_minus_c=omc)
        )
        / q_next
    )
    return jnp.clip(jnp.where(omc <= 1.0, price, direct), 0.0, 2.0)


class Trajectory(NamedTuple):
    """Layer-by-layer theory for two inputs of equal length (leading axis ``L``).

    Attributes:
      log_q: ``log q^l``, layers ``1..L``.
      one_minus_c: ``1 - c^l`` between the two inputs.
      chi_1: ``chi_1(q^l)``, the growth from layer ``l`` to ``l + 1``.
    """

    log_q: jax.Array
    one_minus_c: jax.Array
    chi_1: jax.Array


def iterate(
    activation: str | Activation,
    sigma_w: jax.Array | float,
    sigma_b: jax.Array | float,
    depth: int,
    q_in: jax.Array | float = 1.0,
    c_in: jax.Array | float = 0.0,
    quadrature: Quadrature | None = None,
    *,
    one_minus_c_in: jax.Array | float | None = None,
) -> Trajectory:
    """Iterates the maps through ``depth`` layers from two inputs.

    Args:
      activation: name or :class:`~actgeo.activations.Activation`.
      sigma_w, sigma_b: standard deviations of weights (times
        ``fan_in^-1/2``) and biases.
      depth: number of layers ``L`` (static).
      q_in: the inputs' ``|x|^2 / D``; layer 1 has
        ``q^1 = sigma_w^2 q_in + sigma_b^2``.
      c_in: cosine between the two inputs.
      one_minus_c_in: ``1 - c_in`` to more precision than ``c_in`` carries
        (for pairs of nearby inputs); overrides ``c_in``.

    Returns:
      :class:`Trajectory` with ``(L,)`` arrays.
    """
    act = get_activation(activation)
    if not (isinstance(depth, int) and depth >= 1):
        raise ValueError(f"depth: expected a positive int, got {depth!r}")
    sigma_w, sigma_b, q_in = (_float(v) for v in (sigma_w, sigma_b, q_in))
    omc_in = 1.0 - _float(c_in) if one_minus_c_in is None else _float(one_minus_c_in)
    q1 = sigma_w**2 * q_in + sigma_b**2
    omc1 = sigma_w**2 * q_in * jnp.clip(omc_in, 0.0, 2.0) / q1

    def layer(carry, _):
        log_q, omc = carry
        # The c-map and chi_1 beyond [q_min, q_max] are taken at the nearer
        # end (exact in the limit for activations linear near 0 and for the
        # positively homogeneous ones whose q can grow that far).
        q = _safe_q(log_q)
        out = (log_q, omc, chi_1(act, q, sigma_w, quadrature))
        nxt = (
            log_q_map(act, log_q, sigma_w, sigma_b, quadrature),
            one_minus_c_map(act, q, omc, sigma_w, sigma_b, quadrature),
        )
        return nxt, out

    _, (log_q, omc, chi) = jax.lax.scan(layer, (jnp.log(q1), omc1), None, depth)
    return Trajectory(log_q, omc, chi)
