"""Infinite-width predictions of what :mod:`actgeo.kernels` measures, per layer.

For a random MLP of width ``N`` on inputs in ``R^D`` (``sigma_w``, ``sigma_b``
standard deviations), mean-field theory gives, layer by layer:

* ``q^l`` and the correlation ``c^l`` of a pair of inputs (the maps of
  :mod:`.maps`);
* the Jacobian's per-entry variance ``a_l``: the rows ``J_i^l`` of
  ``J^l = dz^l/dx`` are Gaussian with covariance close to ``a_l I_D``, with
  ``a_1 = sigma_w^2 / D`` and ``a_(l+1) = chi_1(q^l) a_l``; hence
  ``|J^l|_F^2 ~ N D a_l``;
* the neuron boundary distance in input space ``|z_i| / |J_i|``: ``z_i ~
  N(0, q^l)`` independent of ``J_i``'s directions orthogonal to ``x``, so the
  distance is ``sqrt(q^l / (D a_l))`` times ``|T_D|`` (Student's t with ``D``
  degrees of freedom); its median follows;
* in representation space ``|z_i| / |W_i^l|``, with ``|W_i^l|^2 ~ sigma_w^2
  chi^2_N / N``: ``sqrt(q^l) / sigma_w`` times ``|T_N|`` (layer 1 equals the
  input-space distance);
* the length of the image of a great circle of radius ``r = sqrt(D q_in)``:
  ``2 pi r sqrt(N a_l)`` (Poole et al. 2016; Raghu et al. 2017);
* the expected zero crossings of one preactivation per unit arc length along
  that circle, by Kac-Rice ``(1/pi) sqrt(-k''(0) / k(0))`` with the layer's
  kernel ``k(s)`` in arc length ``s``: ``(1/pi) sqrt(a_l / q^l)``.

The radial column of ``J^l`` (along ``x``) has its own recursion, since
``dz/d|x|`` is correlated with ``z`` (it grows faster than the others for
silu, slower for tanh, equally for the relu family); ``|J^l|_F`` and the
input-space distance use ``E|J_i|^2 = (D - 1) a_l + radial``.

Approximations, stated: ``z_i`` is treated as independent of ``|J_i|``
(their correlation runs through the radial column only, one of ``D``);
finite-width fluctuations of ``q``, ``chi_1`` and of the spread of
``J^T J``'s spectrum (``O(1/N)`` per layer, accumulating with depth) are
ignored. The tests compare every prediction with ensembles at width 512.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from actgeo.activations import Activation, get_activation
from actgeo.networks import NetworkSpec
from actgeo.theory.gaussian import (
    Quadrature,
    expect,
    length_moment,
    pair_moment,
    slope_moment,
)
from actgeo.theory.maps import _overflow_q, _safe_q, iterate, q_map
from actgeo.theory.validate import check_moments, check_sigma

__all__ = ["LayerPrediction", "abs_t_cdf", "predict", "predict_statistics"]

_LOG10 = math.log(10.0)


class LayerPrediction(NamedTuple):
    """Per-layer infinite-width predictions (each ``(L,)``, layers ``1..L``).

    Attributes:
      q: ``|z^l|^2 / N``.
      correlation: ``c^l`` of the input pair.
      chi_1: ``chi_1(q^l)``, the growth of ``|J v|^2`` into layer ``l + 1``.
      log10_jacobian_norm: ``log10 |J^l|_F``.
      log10_delta_in_median: ``log10`` of the median ``|z_i| / |J_i|``.
      log10_delta_rep_median: ``log10`` of the median ``|z_i| / |W_i|``.
      trajectory_length: length of the image of a great circle of radius
        ``sqrt(D q_in)`` (``inf`` past the float range).
      zero_crossings: expected zero crossings of one preactivation per unit
        arc length along that circle.
    """

    q: jax.Array
    correlation: jax.Array
    chi_1: jax.Array
    log10_jacobian_norm: jax.Array
    log10_delta_in_median: jax.Array
    log10_delta_rep_median: jax.Array
    trajectory_length: jax.Array
    zero_crossings: jax.Array


def abs_t_cdf(x: jax.Array, dof: int) -> jax.Array:
    """``P(|T| <= x)`` for Student's t with ``dof`` degrees of freedom."""
    x = jnp.asarray(x)
    nu = float(dof)
    tail = jax.scipy.special.betainc(nu / 2.0, 0.5, nu / (nu + x * x))
    return 1.0 - tail


@functools.cache
def _abs_t_median(dof: int) -> float:
    lo, hi = 0.0, 2.0
    with jax.ensure_compile_time_eval():
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            below = float(abs_t_cdf(np.float64(mid), dof)) < 0.5
            lo, hi = (mid, hi) if below else (lo, mid)
    return 0.5 * (lo + hi)


def _check_shape_args(depth, width, input_dim):
    problems = []
    for name, value in (("depth", depth), ("width", width), ("input_dim", input_dim)):
        if not (isinstance(value, int | np.integer) and value >= 1):
            problems.append(f"{name}: expected a positive int, got {value!r}")
    if problems:
        raise ValueError("; ".join(problems))


def _radial_log_variance(act, sigma_w, sigma_b, log_q, q_in, input_dim, quadrature):
    """``log`` of the per-neuron variance of ``J_i^l x/|x|``, the radial column.

    Along ``x`` the derivative ``dz/dlambda`` of ``z(lambda x)`` is not
    independent of ``z``: with ``r = Var(dz)``, ``m = Cov(z, dz)``,

        r' = sigma_w^2 [(r - m^2 / q) E[phi'^2] + (m / q)^2 E[phi'(z)^2 z^2]]
        m' = sigma_w^2 (m / q) E[phi(z) phi'(z) z]

    from ``r_1 = m_1 = sigma_w^2 q_in``. Tracked as ``r / q`` and ``m / q`` so
    that it stays finite where ``q`` does not; the radial column's per-entry
    variance is ``r_l / |x|^2``. For the relu family it equals the tangential
    one; for silu it grows faster, for tanh slower.
    """
    q1 = jnp.exp(log_q[0])
    start = sigma_w**2 * q_in / q1

    def layer(carry, log_q_l):
        rho, mu = carry
        q = _safe_q(log_q_l)
        slope2 = slope_moment(act, q, quadrature)
        slope2_z2 = expect(
            lambda u: act.derivative(u) ** 2 * u * u,
            q,
            kinks=act.kinks,
            quadrature=quadrature,
        )
        phi_slope_z = q * length_moment(act, q, quadrature)
        q_next = q_map(act, q, sigma_w, sigma_b, quadrature)
        rho_next = sigma_w**2 * ((rho - mu * mu) * q * slope2 + mu * mu * slope2_z2)
        mu_next = sigma_w**2 * mu * phi_slope_z
        return (rho_next / q_next, mu_next / q_next), jnp.log(rho)

    _, log_rho = jax.lax.scan(layer, (start, start), log_q)
    return log_rho + log_q - math.log(input_dim) - jnp.log(q_in)


def _layers(act, sigma_w, sigma_b, depth, width, input_dim, q_in, c_in, quadrature):
    """Per-layer log quantities for one input pair (traceable in the floats).

    Returns the trajectory, ``log a_l`` (per-entry variance of ``J_i^l`` along
    directions orthogonal to ``x``) and ``log E|J_i^l|^2`` (``D - 1``
    orthogonal directions and the radial one).
    """
    traj = iterate(act, sigma_w, sigma_b, depth, q_in, c_in, quadrature)
    # log a_l: a_1 = sigma_w^2 / D, then times chi_1 of each earlier layer.
    log_chi = jnp.log(traj.chi_1)
    log_a = 2.0 * jnp.log(sigma_w) - math.log(input_dim)
    log_a = (
        log_a + jnp.concatenate([jnp.zeros_like(log_chi[:1]), jnp.cumsum(log_chi)])[:-1]
    )
    log_radial = _radial_log_variance(
        act, sigma_w, sigma_b, traj.log_q, q_in, input_dim, quadrature
    )
    log_row = jnp.logaddexp(jnp.log(input_dim - 1.0) + log_a, log_radial)
    return traj, log_a, log_row


def predict(
    activation: str | Activation,
    sigma_w: float,
    sigma_b: float,
    depth: int,
    *,
    width: int,
    input_dim: int,
    q_in: float = 1.0,
    c_in: float = 0.0,
    quadrature: Quadrature | None = None,
) -> LayerPrediction:
    """Per-layer predictions for inputs of ``|x|^2 / D = q_in`` (eager).

    Args:
      activation: name or :class:`~actgeo.activations.Activation`.
      sigma_w, sigma_b: standard deviations.
      depth: layers ``L``.
      width: hidden width ``N``.
      input_dim: ``D``.
      q_in: the inputs' ``|x|^2 / D``.
      c_in: cosine between the two inputs of the pair.

    Raises:
      ValueError: a non-finite or negative ``sigma_w``/``sigma_b``/``q_in``,
        ``c_in`` outside ``[-1, 1]``, non-positive sizes, or an activation
        whose Gaussian moments diverge.
    """
    act = get_activation(activation)
    sigma_w, sigma_b = check_sigma(sigma_w, sigma_b)
    _check_shape_args(depth, width, input_dim)
    problems = []
    if not (math.isfinite(q_in) and q_in > 0):
        problems.append(f"q_in: expected a positive finite number, got {q_in!r}")
    if not (math.isfinite(c_in) and -1.0 <= c_in <= 1.0):
        problems.append(f"c_in: expected a cosine in [-1, 1], got {c_in!r}")
    if problems:
        raise ValueError("; ".join(problems))
    check_moments(act, max(1e6, sigma_w**2 * q_in + sigma_b**2))
    return _predict_jit(
        act, depth, width, input_dim, quadrature, sigma_w, sigma_b, q_in, c_in
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _predict_jit(
    act, depth, width, input_dim, quadrature, sigma_w, sigma_b, q_in, c_in
):
    traj, log_a, log_row = _layers(
        act, sigma_w, sigma_b, depth, width, input_dim, q_in, c_in, quadrature
    )
    return _assemble(
        traj.log_q,
        1.0 - traj.one_minus_c,
        traj.chi_1,
        log_a,
        log_row,
        q_in,
        sigma_w,
        width,
        input_dim,
    )


def _assemble(log_q, correlation, chi, log_a, log_row, q_in, sigma_w, width, input_dim):
    n, d = width, input_dim
    log_in = 0.5 * (log_q - log_row) + math.log(_abs_t_median(d))
    log_rep = 0.5 * log_q - jnp.log(sigma_w) + math.log(_abs_t_median(n))
    log_rep = log_rep.at[0].set(log_in[0])
    log_length = math.log(2 * math.pi) + 0.5 * (
        math.log(d) + jnp.log(q_in) + math.log(n) + log_a
    )
    return LayerPrediction(
        q=jnp.exp(log_q),
        correlation=correlation,
        chi_1=chi,
        log10_jacobian_norm=0.5 * (math.log(n) + log_row) / _LOG10,
        log10_delta_in_median=log_in / _LOG10,
        log10_delta_rep_median=log_rep / _LOG10,
        trajectory_length=jnp.exp(log_length),
        zero_crossings=jnp.exp(0.5 * (log_a - log_q)) / math.pi,
    )


def _mixture_median_log(log_scale: jax.Array, dof: int) -> jax.Array:
    """``log`` median of an equal mixture of ``|T_dof|`` scaled by ``exp(log_scale)``.

    ``log_scale`` is ``(B, L)``; the result is ``(L,)``.
    """
    med = math.log(_abs_t_median(dof))
    lo = jnp.min(log_scale, axis=0) + med
    hi = jnp.max(log_scale, axis=0) + med

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        cdf = jnp.mean(abs_t_cdf(jnp.exp(mid[None] - log_scale), dof), axis=0)
        below = cdf < 0.5
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 60, body, (lo, hi))
    return 0.5 * (lo + hi)


def _pair_correlations(act, sigma_w, sigma_b, depth, qa, qb, c, quadrature):
    """Correlation through depth of a pair of inputs of different lengths."""
    q1a = sigma_w**2 * qa + sigma_b**2
    q1b = sigma_w**2 * qb + sigma_b**2
    c1 = (sigma_w**2 * c * jnp.sqrt(qa * qb) + sigma_b**2) / jnp.sqrt(q1a * q1b)
    q_max = _overflow_q(q1a.dtype)

    def layer(carry, _):
        ta, tb, cc = carry
        ta, tb = jnp.minimum(ta, q_max), jnp.minimum(tb, q_max)
        na = q_map(act, ta, sigma_w, sigma_b, quadrature)
        nb = q_map(act, tb, sigma_w, sigma_b, quadrature)
        k = sigma_w**2 * pair_moment(act, ta, tb, cc, quadrature) + sigma_b**2
        return (na, nb, jnp.clip(k / jnp.sqrt(na * nb), -1.0, 1.0)), cc

    _, cs = jax.lax.scan(layer, (q1a, q1b, jnp.clip(c1, -1.0, 1.0)), None, depth)
    return cs


def predict_statistics(
    spec: NetworkSpec,
    x: jax.Array,
    probe_x: jax.Array | None = None,
    quadrature: Quadrature | None = None,
) -> LayerPrediction:
    """Predictions pooled over inputs the way ``layer_statistics`` pools measurements.

    Args:
      spec: the networks (Gaussian or orthogonal weights; not residual).
      x: ``(B, D)`` inputs whose boundary distances are measured.
      probe_x: ``(P, D)`` inputs of ``q`` and the pair correlation (pairs
        ``(0, 1), (2, 3), ...``); ``x`` when not given.

    Returns:
      :class:`LayerPrediction`: ``q`` averaged over ``probe_x``, the pair
      correlation averaged over pairs (1 with fewer than two inputs),
      ``log10 |J|_F`` averaged over ``x``, the medians of the distances pooled
      over ``x``, and ``chi_1``, trajectory length and zero crossings at the
      mean ``q_in`` of ``x``.

    Raises:
      NotImplementedError: residual networks (the maps above do not describe
        them).
      ValueError: inputs of the wrong shape or not finite, or an input at the
        origin.
    """
    if spec.residual:
        raise NotImplementedError(
            "predict_statistics: residual networks are outside this mean-field "
            "theory; compare them with measurements only"
        )
    act = spec.act
    sigma_w, sigma_b = check_sigma(spec.sigma_w, spec.sigma_b)
    d, n, depth = spec.input_dim, spec.width, spec.depth
    x = np.asarray(x, np.float64)
    probe_x = x if probe_x is None else np.asarray(probe_x, np.float64)
    problems = []
    for name, arr in (("x", x), ("probe_x", probe_x)):
        if arr.ndim != 2 or arr.shape[1] != d or arr.shape[0] == 0:
            problems.append(
                f"{name}: expected shape (B, {d}) with B >= 1, got {arr.shape}"
            )
        elif not np.all(np.isfinite(arr)):
            problems.append(f"{name}: expected finite values")
        elif np.any(np.sum(arr * arr, axis=1) == 0):
            problems.append(f"{name}: an input at the origin has no direction")
    if problems:
        raise ValueError("predict_statistics: " + "; ".join(problems))
    q_x = np.sum(x * x, axis=1) / d
    q_p = np.sum(probe_x * probe_x, axis=1) / d
    n_pairs = probe_x.shape[0] // 2
    a, b = probe_x[0 : 2 * n_pairs : 2], probe_x[1 : 2 * n_pairs : 2]
    cos = np.sum(a * b, axis=1) / np.sqrt(np.sum(a * a, 1) * np.sum(b * b, 1))
    check_moments(act, max(1e6, sigma_w**2 * float(q_x.max()) + sigma_b**2))
    dtype = jnp.result_type(float)
    as_j = functools.partial(jnp.asarray, dtype=dtype)
    return _statistics_jit(
        act,
        depth,
        n,
        d,
        quadrature,
        as_j(sigma_w),
        as_j(sigma_b),
        as_j(q_x),
        as_j(q_p),
        as_j(q_p[0 : 2 * n_pairs : 2]),
        as_j(q_p[1 : 2 * n_pairs : 2]),
        as_j(np.clip(cos, -1.0, 1.0)),
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _statistics_jit(
    act, depth, n, d, quadrature, sigma_w, sigma_b, q_x, q_p, qa, qb, cos
):
    def per_input(q_in):
        traj, _, log_row = _layers(
            act, sigma_w, sigma_b, depth, n, d, q_in, 1.0, quadrature
        )
        return traj.log_q, log_row

    log_q_x, log_row_x = jax.vmap(per_input)(q_x)
    log_q_p, _ = jax.vmap(per_input)(q_p)
    if cos.shape[0]:
        corr = jax.vmap(
            lambda qa, qb, c: _pair_correlations(
                act, sigma_w, sigma_b, depth, qa, qb, c, quadrature
            )
        )(qa, qb, cos)
        correlation = jnp.mean(corr, axis=0)
    else:
        correlation = jnp.ones((depth,), q_x.dtype)
    log_in_scale = 0.5 * (log_q_x - log_row_x)
    log_in = _mixture_median_log(log_in_scale, d)
    log_rep_scale = 0.5 * log_q_x - jnp.log(sigma_w)
    log_rep = _mixture_median_log(log_rep_scale, n).at[0].set(log_in[0])
    q_mean = jnp.mean(q_x)
    mean_traj, mean_log_a, mean_log_row = _layers(
        act, sigma_w, sigma_b, depth, n, d, q_mean, 1.0, quadrature
    )
    at_mean = _assemble(
        mean_traj.log_q,
        correlation,
        mean_traj.chi_1,
        mean_log_a,
        mean_log_row,
        q_mean,
        sigma_w,
        n,
        d,
    )
    return at_mean._replace(
        q=jnp.mean(jnp.exp(log_q_p), axis=0),
        log10_jacobian_norm=jnp.mean(0.5 * (math.log(n) + log_row_x), axis=0) / _LOG10,
        log10_delta_in_median=log_in / _LOG10,
        log10_delta_rep_median=log_rep / _LOG10,
    )
