"""Length and curvature of a great circle's image through depth (Poole et al. 2016).

Poole, Lahiri, Raghu, Sohl-Dickstein and Ganguli, "Exponential expressivity
in deep neural networks through transient chaos" (NeurIPS 2016), Section 4.
Take the great circle ``x(theta) = r (u cos theta + w sin theta)`` of radius
``r = sqrt(D q_in)`` and write ``v = dz^l/dtheta``, ``a = d^2z^l/dtheta^2``
in a layer of width ``N``. With the normalised squared speed
``g_l = |v|^2 / N`` and the normalised curvature ``kbar_l = sqrt(N) kappa_l``,
wide random layers give

    g_1 = sigma_w^2 q_in, g_(l+1) = chi_1 g_l,
    kbar_1^2 = 1 / (sigma_w^2 q_in),
    kbar_(l+1)^2 = 3 chi_2 / chi_1^2 + kbar_l^2 / chi_1,

with ``chi_1 = sigma_w^2 E[phi'(u)^2]`` and ``chi_2 = sigma_w^2
E[phi''(u)^2]``, ``u ~ N(0, q^l)``.

Derivation (checked here rather than quoted). ``v' = W (phi'(z) v)`` and
``a' = W (phi''(z) v^2 + phi'(z) a)``. Along a great circle every unit
``z_i(theta)`` is a stationary Gaussian process, so ``v_i`` is independent
of ``(z_i, a_i)`` and ``E[z_i a_i] = -E[v_i^2] = -s``; with
``a = -(s / q) z + a_perp``, Gaussian integration by parts
(``E[phi'^2 z^2] = q E[phi'^2] + 2 q E[z phi' phi'']``) makes the terms in
``E[phi' phi'' z]`` cancel, and

    E|a'|^2 / N = sigma_w^2 (3 s^2 E[phi''^2] + s^2 E[phi'^2] / q
                             + E[phi'^2] |a_perp|^2 / N),

while ``v'.a'`` stays ``O(sqrt(N))`` next to ``|v'| |a'| = O(N)``. Dividing
by ``(chi_1 s)^2`` gives the recursion above. Assumptions: ``N -> infinity``
(self-averaging sums over units, weights independent of the layer below), a
great circle (``q`` constant along it, not necessarily at ``q*``), and
``phi`` twice differentiable: for activations with kinks, ``phi''`` is a
delta and ``chi_2`` is infinite (the bending sits at the kinks), so they are
refused. Far from the limit, at finite ``N``, the measured curvature of
deep layers fluctuates by ``O(N^-1/2)`` relative.

In the chaotic regime (``chi_1 > 1`` at ``q*``) ``kbar^2`` tends to
``3 chi_2 / (chi_1 (chi_1 - 1))``; lengths grow as ``chi_1^(l/2)``, and so
does the length of the Gauss map ``2 pi kbar sqrt(g)``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from actgeo.activations import Activation, get_activation
from actgeo.theory.gaussian import Quadrature, _float, expect
from actgeo.theory.maps import _safe_q, iterate
from actgeo.theory.validate import check_moments, check_sigma

__all__ = ["CurvaturePrediction", "chi_2", "curvature_prediction"]


def _check_smooth(act: Activation):
    if act.kinks:
        raise ValueError(
            f"activation: {act.name} has kinks at {act.kinks}, where phi'' is a "
            "delta: chi_2 is infinite and the curvature of its image sits at the "
            "kinks. Measure the sampled turning angle "
            "(actgeo.kernels.paths.trajectory(...).turning) instead."
        )


def _second_derivative(act: Activation):
    slope = jax.grad(lambda u: act.derivative(u))
    return lambda u: jnp.vectorize(slope)(u)


def chi_2(
    activation: str | Activation,
    q: jax.Array | float,
    sigma_w: jax.Array | float,
    quadrature: Quadrature | None = None,
) -> jax.Array:
    """``chi_2 = sigma_w^2 E[phi''(u)^2]``, ``u ~ N(0, q)`` (Poole et al. 2016).

    ``phi''`` is the autodiff derivative of the registry's ``phi'``.

    Raises:
      ValueError: an activation with kinks (``chi_2`` is infinite).
    """
    act = get_activation(activation)
    _check_smooth(act)
    q, sigma_w = _float(q), _float(sigma_w)
    second = _second_derivative(act)
    return sigma_w**2 * expect(lambda u: second(u) ** 2, q, quadrature=quadrature)


class CurvaturePrediction(NamedTuple):
    """Per-layer predictions along a great circle (each ``(L,)``, layers ``1..L``).

    Attributes:
      q: ``q^l``.
      chi_1: ``chi_1(q^l)``.
      chi_2: ``chi_2(q^l)``.
      log_speed2: ``log g_l``, ``g_l = |dz^l/dtheta|^2 / N``.
      curvature_normalised: ``kbar_l = sqrt(N) kappa_l``.
      curvature: ``kappa_l`` for the given width.
      length: ``2 pi sqrt(N g_l)``, the image's length (``inf`` past the
        float range; equals ``predict(...).trajectory_length``).
      gauss_length: ``2 pi kbar_l sqrt(g_l)``, the length of its Gauss map.
    """

    q: jax.Array
    chi_1: jax.Array
    chi_2: jax.Array
    log_speed2: jax.Array
    curvature_normalised: jax.Array
    curvature: jax.Array
    length: jax.Array
    gauss_length: jax.Array


def curvature_prediction(
    activation: str | Activation,
    sigma_w: float,
    sigma_b: float,
    depth: int,
    *,
    width: int,
    q_in: float = 1.0,
    quadrature: Quadrature | None = None,
) -> CurvaturePrediction:
    """Length and curvature of a great circle of radius ``sqrt(D q_in)`` per layer.

    The input dimension ``D`` does not enter (only ``|x|^2 / D = q_in``).

    Raises:
      ValueError: an activation with kinks, non-finite or negative
        ``sigma_w``/``sigma_b``/``q_in``, or non-positive sizes.
    """
    act = get_activation(activation)
    _check_smooth(act)
    sigma_w, sigma_b = check_sigma(sigma_w, sigma_b)
    problems = []
    for name, value in (("depth", depth), ("width", width)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            problems.append(f"{name}: expected a positive int, got {value!r}")
    if not (isinstance(q_in, int | float) and math.isfinite(q_in) and q_in > 0):
        problems.append(f"q_in: expected a positive finite number, got {q_in!r}")
    if problems:
        raise ValueError("curvature_prediction: " + "; ".join(problems))
    check_moments(act, max(1e6, sigma_w**2 * q_in + sigma_b**2))
    return _prediction_jit(act, depth, width, quadrature, sigma_w, sigma_b, q_in)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _prediction_jit(act, depth, width, quadrature, sigma_w, sigma_b, q_in):
    traj = iterate(act, sigma_w, sigma_b, depth, q_in, 1.0, quadrature)
    q = _safe_q(traj.log_q)
    c2 = jax.vmap(lambda q_l: chi_2(act, q_l, sigma_w, quadrature))(q)
    c1 = traj.chi_1
    log_g1 = 2.0 * jnp.log(sigma_w) + jnp.log(q_in)
    log_g = log_g1 + jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(jnp.log(c1))[:-1]])
    kbar2_1 = jnp.exp(-log_g1)

    def layer(kbar2, inputs):
        c1_l, c2_l = inputs
        return 3.0 * c2_l / c1_l**2 + kbar2 / c1_l, kbar2

    _, kbar2 = jax.lax.scan(layer, kbar2_1, (c1, c2))
    kbar = jnp.sqrt(kbar2)
    return CurvaturePrediction(
        q=jnp.exp(traj.log_q),
        chi_1=c1,
        chi_2=c2,
        log_speed2=log_g,
        curvature_normalised=kbar,
        curvature=kbar / math.sqrt(width),
        length=2.0 * math.pi * jnp.exp(0.5 * (math.log(width) + log_g)),
        gauss_length=2.0 * math.pi * kbar * jnp.exp(0.5 * log_g),
    )
