"""Fixed points, depth scales, the edge of chaos and the phase diagram.

* Fixed points of the q-map, all of them, with their stability (a fixed point
  ``q*`` is stable where the q-map's slope there is below 1). Some
  activations have several.
* Depth scales of Schoenholz et al. 2017: a length perturbation decays as
  ``exp(-l / xi_q)`` with ``xi_q = -1 / log(dq'/dq at q*)``, a correlation one
  as ``exp(-l / xi_c)`` with ``xi_c = -1 / log(chi_c at c*)``; ``xi_c``
  diverges on the edge of chaos.
* The edge of chaos (Poole et al. 2016; Hayou et al. 2019, "On the impact of
  the activation function on deep neural networks training"): the
  ``(sigma_b, sigma_w)`` at which the q-map has a fixed point ``q*`` with
  ``chi_1(q*) = 1``. Parametrised by ``q*``, it is
  ``sigma_w^2 = 1 / E[phi'(u)^2]`` and
  ``sigma_b^2 = q* - E[phi(u)^2] / E[phi'(u)^2]``, ``u ~ N(0, q*)``, kept
  where ``sigma_b^2 >= 0``. For odd activations with ``phi(0) = 0`` the curve
  ends at ``sigma_b = 0``, ``sigma_w = 1 / phi'(0)``, the limit ``q* -> 0``;
  for the relu family it is the single point ``sigma_b = 0``,
  ``sigma_w^2 = 1 / E[phi'(z)^2]`` (every ``q`` is then a fixed point).

Functions marked eager validate their inputs and search roots on the host;
:func:`q_star`, :func:`c_star`, :func:`depth_scales` and the maps are pure
and vmap over grids, which :func:`phase_diagram` does.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from actgeo.activations import Activation, get_activation
from actgeo.theory.gaussian import (
    Quadrature,
    hermite_coefficients,
    second_moment,
    slope_moment,
)
from actgeo.theory.maps import (
    _overflow_q,
    _safe_q,
    _underflow_q,
    c_map,
    chi_1,
    chi_c,
    log_q_map,
    q_map,
    q_slope,
)
from actgeo.theory.validate import check_moments, check_sigma

__all__ = [
    "DepthScales",
    "EdgeOfChaos",
    "FixedPoints",
    "PhaseDiagram",
    "c_star",
    "critical_sigma_w",
    "depth_scales",
    "edge_of_chaos",
    "phase_diagram",
    "q_fixed_points",
    "q_star",
]

# Fixed points are searched for on this grid of log10 q, then refined.
_LOG10_Q_GRID = np.linspace(-6.0, 6.0, 481)
_BISECTIONS = 60
_MAX_GRID_POINTS = 1 << 22


class FixedPoints(NamedTuple):
    """Fixed points of the q-map (NumPy arrays, increasing ``q``).

    Attributes:
      q: the fixed points ``q*``.
      slope: the q-map's slope ``dq'/dq`` at each.
      stable: ``slope < 1``.
    """

    q: np.ndarray
    slope: np.ndarray
    stable: np.ndarray


def _roots(fn, log_q: np.ndarray) -> np.ndarray:
    """Sign changes of ``fn`` over a grid of ``log q``, refined by bisection."""
    values = np.asarray(fn(jnp.asarray(log_q)))
    finite = np.isfinite(values)
    sign = np.sign(values)
    change = (sign[:-1] * sign[1:] < 0) & finite[:-1] & finite[1:]
    exact = (values == 0) & finite
    lo, hi = log_q[:-1][change], log_q[1:][change]
    f_lo = values[:-1][change]
    for _ in range(_BISECTIONS):
        if lo.size == 0:
            break
        mid = 0.5 * (lo + hi)
        f_mid = np.asarray(fn(jnp.asarray(mid)))
        left = np.sign(f_mid) == np.sign(f_lo)
        lo, f_lo = np.where(left, mid, lo), np.where(left, f_mid, f_lo)
        hi = np.where(left, hi, mid)
    return np.sort(np.concatenate([0.5 * (lo + hi), log_q[exact]]))


def _vectorized(fn):
    return jax.jit(jax.vmap(fn))


def _in_float64(fn):
    """Runs an eager search in float64 whatever the caller's setting.

    Roots of differences such as ``q - E[phi^2] / E[phi'^2]`` are lost to
    rounding in float32 at small ``q``.
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapped


def _is_odd_at_zero(act: Activation) -> bool:
    return float(act.fn(jnp.zeros(()))) == 0.0


@_in_float64
def q_fixed_points(
    activation: str | Activation,
    sigma_w: float,
    sigma_b: float,
    quadrature: Quadrature | None = None,
) -> FixedPoints:
    """Every fixed point of the q-map in ``[0, 1e6]``, with stability (eager).

    ``q* = 0`` is included when ``sigma_b = 0`` and ``phi(0) = 0``. Where the
    q-map is the identity over the whole range (the relu family at
    ``sigma_b = 0`` on its critical ``sigma_w``), every ``q`` is fixed and
    marginal: the result is ``q = [0]`` with slope 1, not stable.
    """
    act = get_activation(activation)
    sigma_w, sigma_b = check_sigma(sigma_w, sigma_b)
    check_moments(act, 1e6)
    dtype = jnp.result_type(float)

    def gap(log_q):
        q = jnp.exp(log_q)
        return q_map(act, q, sigma_w, sigma_b, quadrature) / q - 1.0

    def slope(q):
        return q_slope(act, q, sigma_w, quadrature)

    log_q = _LOG10_Q_GRID * math.log(10.0)
    gaps = np.asarray(_vectorized(gap)(jnp.asarray(log_q, dtype)))
    tol = 100 * np.finfo(np.dtype(dtype)).eps
    if np.all(np.abs(gaps) < tol):
        return FixedPoints(np.zeros(1), np.ones(1), np.zeros(1, bool))
    q = np.exp(_roots(_vectorized(gap), log_q))
    if sigma_b == 0.0 and _is_odd_at_zero(act):
        q = np.concatenate([[0.0], q])
    slopes = np.asarray(_vectorized(slope)(jnp.asarray(q, dtype)))
    return FixedPoints(q, slopes, slopes < 1.0)


def q_star(
    activation: str | Activation,
    sigma_w: jax.Array | float,
    sigma_b: jax.Array | float,
    q0: jax.Array | float = 1.0,
    iterations: int = 30,
    quadrature: Quadrature | None = None,
) -> jax.Array:
    """The fixed point the q-map reaches from ``q0`` (``inf`` where q diverges).

    ``iterations`` steps of :func:`~actgeo.theory.maps.log_q_map`, then 8
    Newton steps taken only where the map's slope is below 1 (so they home in
    on a stable fixed point and never jump to an unstable one). Where the
    slope stays at least 1 with ``q' > q``, no fixed point lies above and
    ``q`` diverges: the result is ``inf``. Pure, vmappable over ``sigma_w``,
    ``sigma_b``, ``q0``.
    """
    act = get_activation(activation)
    sigma_w, sigma_b = (
        jnp.asarray(v, jnp.result_type(float)) for v in (sigma_w, sigma_b)
    )
    log_q0 = jnp.log(jnp.asarray(q0, sigma_w.dtype))
    log_q_max = math.log(_overflow_q(sigma_w.dtype))

    def plain(_, log_q):
        return log_q_map(act, log_q, sigma_w, sigma_b, quadrature)

    # Newton only where the slope is clearly below 1: at a marginal fixed
    # point (relu at sigma_b = 0 on its critical sigma_w, where every q is
    # fixed) it would divide rounding noise by rounding noise. Steps are
    # limited to a factor of 2 in q.
    contracting = 1.0 - 1e3 * jnp.finfo(sigma_w.dtype).eps

    def newton(_, log_q):
        q = _safe_q(log_q)
        gap = q_map(act, q, sigma_w, sigma_b, quadrature) - q
        slope = q_slope(act, q, sigma_w, quadrature)
        use = slope < contracting
        safe = jnp.where(use, slope - 1.0, -1.0)
        new = jnp.clip(
            jnp.log(jnp.maximum(q - gap / safe, q * 0.5)), None, log_q + math.log(2.0)
        )
        return jnp.where(use, new, plain(0, log_q))

    log_q = jax.lax.fori_loop(0, iterations, plain, log_q0 + 0.0 * sigma_w)
    log_q = jax.lax.fori_loop(0, 8, newton, log_q)
    q = _safe_q(log_q)
    gap = q_map(act, q, sigma_w, sigma_b, quadrature) - q
    contracts = q_slope(act, q, sigma_w, quadrature) < 1.0
    escaping = jnp.logical_not(contracts) & (gap > 1e-6 * q)
    vanishing = log_q < math.log(_underflow_q(log_q.dtype))
    q = jnp.where(vanishing, jnp.exp(log_q), q)
    return jnp.where(escaping | (log_q > log_q_max), jnp.inf, q)


def c_star(
    activation: str | Activation,
    sigma_w: jax.Array | float,
    sigma_b: jax.Array | float,
    q: jax.Array | float | None = None,
    steps: int = 40,
    quadrature: Quadrature | None = None,
) -> jax.Array:
    """The c-map's smallest fixed point in ``[0, 1]`` at ``q`` (default ``q*``).

    Newton's method on ``c' - c`` from ``c = 0``: the c-map of equal-length
    inputs is a power series in ``c`` with non-negative coefficients
    (Mehler), so ``c' - c`` is convex on ``[0, 1]`` and the iterates rise
    monotonically to the fixed point without overshooting. In the ordered
    phase this is 1; in the chaotic phase the stable ``c* < 1``. Where ``q``
    diverges, the map is taken at the largest finite ``q``. Pure, vmappable.
    """
    act = get_activation(activation)
    if q is None:
        q = q_star(act, sigma_w, sigma_b, quadrature=quadrature)
    q = jnp.asarray(q, jnp.result_type(float))
    q = jnp.minimum(q, _overflow_q(q.dtype))

    def newton(_, c):
        gap = c_map(act, q, c, sigma_w, sigma_b, quadrature) - c
        slope = (
            chi_c(act, q, c, sigma_w, quadrature)
            * q
            / q_map(act, q, sigma_w, sigma_b, quadrature)
        )
        step = jnp.where(slope < 1.0, gap / (1.0 - slope), gap)
        return jnp.clip(c + step, -1.0, 1.0)

    return jax.lax.fori_loop(0, steps, newton, jnp.zeros_like(q))


class DepthScales(NamedTuple):
    """Fixed points and depth scales at one ``(sigma_w, sigma_b)``.

    Attributes:
      q_star: the length fixed point reached from ``q = 1``.
      c_star: the correlation fixed point at ``q_star``.
      chi_1: ``chi_1(q*)``.
      chi_c: ``chi_c(q*, c*)``.
      xi_q: ``-1 / log(dq'/dq at q*)`` (layers).
      xi_c: ``-1 / log chi_c`` (layers; ``inf`` on the edge of chaos).
    """

    q_star: jax.Array
    c_star: jax.Array
    chi_1: jax.Array
    chi_c: jax.Array
    xi_q: jax.Array
    xi_c: jax.Array


def _depth_scale(rate: jax.Array) -> jax.Array:
    # A rate of 1 gives inf; a rate above 1 (an unstable point) gives NaN.
    return jnp.where(rate <= 1.0, -1.0 / jnp.log(rate), jnp.nan)


def depth_scales(
    activation: str | Activation,
    sigma_w: jax.Array | float,
    sigma_b: jax.Array | float,
    quadrature: Quadrature | None = None,
) -> DepthScales:
    """Fixed points, slopes and depth scales (Schoenholz et al. 2017).

    Pure and vmappable over ``sigma_w`` and ``sigma_b``. Where ``q`` diverges
    (unbounded activations deep in the chaotic phase) ``q_star`` and ``xi_q``
    are ``inf`` and the correlation quantities are taken at the largest finite
    ``q``.
    """
    act = get_activation(activation)
    qs = q_star(act, sigma_w, sigma_b, quadrature=quadrature)
    q = jnp.minimum(qs, _overflow_q(qs.dtype))
    cs = c_star(act, sigma_w, sigma_b, q=q, quadrature=quadrature)
    c1 = chi_1(act, q, sigma_w, quadrature)
    cc = chi_c(act, q, cs, sigma_w, quadrature)
    slope = q_slope(act, q, sigma_w, quadrature)
    xi_q = jnp.where(jnp.isinf(qs), jnp.inf, _depth_scale(slope))
    return DepthScales(qs, cs, c1, cc, xi_q, _depth_scale(cc))


class EdgeOfChaos(NamedTuple):
    """Points of the edge-of-chaos curve (NumPy arrays, increasing ``sigma_b``).

    Attributes:
      q_star: the fixed point at which ``chi_1 = 1``.
      sigma_w: weight standard deviation on the curve.
      sigma_b: bias standard deviation on the curve.
      stable: whether ``q_star`` is a stable fixed point of the q-map there
        (where it is not, the network does not settle on the edge of chaos).
    """

    q_star: np.ndarray
    sigma_w: np.ndarray
    sigma_b: np.ndarray
    stable: np.ndarray


def _curve_parts(act: Activation, quadrature: Quadrature | None):
    def parts(log_q):
        q = jnp.exp(log_q)
        m2 = second_moment(act, q, quadrature)
        s2 = slope_moment(act, q, quadrature)
        sigma_w = 1.0 / jnp.sqrt(s2)
        return q - m2 / s2, sigma_w, q_slope(act, q, sigma_w, quadrature)

    return _vectorized(parts)


_jit_q_map = jax.jit(q_map, static_argnums=(0, 4))


def _zero_end(act: Activation, quadrature) -> tuple[float, bool] | None:
    """``(sigma_w, stable)`` of the ``q* -> 0`` end of the curve, if it exists.

    At ``sigma_w = 1 / phi'(0)`` the q-map's slope at 0 is exactly 1; whether
    small ``q`` shrinks back to 0 (stable, as for tanh and erf) or grows away
    (as for silu and gelu) is decided by the next order, read off the map at
    ``q = 1e-4``.
    """
    if not _is_odd_at_zero(act):
        return None
    # E[phi'(u)^2] -> (phi'(0-)^2 + phi'(0+)^2) / 2 as q -> 0 (selu's slope
    # jumps at 0).
    sides = act.derivative(jnp.asarray([-1e-12, 1e-12], jnp.float64))
    slope2 = float(jnp.mean(sides**2))
    if slope2 == 0.0:
        return None
    sigma_w = 1.0 / math.sqrt(slope2)
    small = 1e-4
    grows = float(_jit_q_map(act, small, sigma_w, 0.0, quadrature)) > small
    return sigma_w, not grows


@_in_float64
def edge_of_chaos(
    activation: str | Activation,
    q: np.ndarray | None = None,
    quadrature: Quadrature | None = None,
) -> EdgeOfChaos:
    """The edge-of-chaos curve, parametrised by the fixed point ``q*`` (eager).

    Args:
      activation: name or :class:`~actgeo.activations.Activation`.
      q: values of ``q*`` to trace the curve at; by default 481 points
        log-spaced over ``[1e-6, 1e6]``.

    Points with ``sigma_b^2 < 0`` are dropped. The ``q* -> 0`` end
    (``sigma_b = 0``, ``sigma_w = 1 / phi'(0)``) is prepended for activations
    with ``phi(0) = 0``. For the relu family the curve is one point.
    """
    act = get_activation(activation)
    q = np.exp(_LOG10_Q_GRID * math.log(10.0)) if q is None else np.asarray(q, float)
    if q.ndim != 1 or not np.all(np.isfinite(q)) or not np.all(q > 0):
        raise ValueError(f"q: expected a 1-D array of positive finite values, got {q}")
    check_moments(act, float(q.max()))
    dtype = jnp.result_type(float)
    gap, sigma_w, slope = (
        np.asarray(v)
        for v in _curve_parts(act, quadrature)(jnp.asarray(np.log(q), dtype))
    )
    tol = 1e3 * np.finfo(np.dtype(dtype)).eps
    homogeneous = np.all(np.abs(gap) <= tol * q)
    if homogeneous:
        return EdgeOfChaos(np.zeros(1), sigma_w[:1], np.zeros(1), np.zeros(1, bool))
    keep = (gap >= 0) & np.isfinite(sigma_w)
    q_out, w_out = q[keep], sigma_w[keep]
    b_out, stable = np.sqrt(gap[keep]), slope[keep] < 1.0
    end = _zero_end(act, quadrature)
    if end is not None:
        q_out = np.concatenate([[0.0], q_out])
        w_out = np.concatenate([[end[0]], w_out])
        b_out = np.concatenate([[0.0], b_out])
        stable = np.concatenate([[end[1]], stable])
    order = np.argsort(b_out, kind="stable")
    return EdgeOfChaos(q_out[order], w_out[order], b_out[order], stable[order])


@_in_float64
def critical_sigma_w(
    activation: str | Activation,
    sigma_b: float = 0.0,
    quadrature: Quadrature | None = None,
) -> float:
    """The ``sigma_w`` putting ``activation`` on its edge of chaos (eager).

    Solves ``q - E[phi^2] / E[phi'^2] = sigma_b^2`` for the fixed point ``q*``
    (every root in ``[1e-6, 1e6]``) and returns ``1 / sqrt(E[phi'(u)^2])`` at
    the smallest root that is a stable fixed point of the q-map. At
    ``sigma_b = 0`` an activation with ``phi(0) = 0`` is also critical at
    ``1 / phi'(0)`` (``q* -> 0``) when that end is stable (tanh, erf; not
    silu or gelu, whose ``q`` grows away from 0 there).

    Raises:
      ValueError: ``sigma_b`` is negative or not finite, or the activation has
        no edge of chaos at this ``sigma_b`` (the relu family has one only at
        ``sigma_b = 0``).
    """
    act = get_activation(activation)
    _, sigma_b = check_sigma(1.0, sigma_b)
    check_moments(act, 1e6)
    parts = _curve_parts(act, quadrature)
    dtype = jnp.result_type(float)
    log_q = _LOG10_Q_GRID * math.log(10.0)
    gap, sigma_w, _ = (np.asarray(v) for v in parts(jnp.asarray(log_q, dtype)))
    q = np.exp(log_q)
    tol = 1e3 * np.finfo(np.dtype(dtype)).eps
    if np.all(np.abs(gap) <= tol * q):
        if sigma_b == 0.0:
            return float(sigma_w[0])
        raise ValueError(
            f"activation: {act.name} has an edge of chaos only at sigma_b = 0 "
            f"(sigma_w = {float(sigma_w[0]):.6g}); got sigma_b = {sigma_b}"
        )

    def shifted(lq):
        return parts(lq)[0] - sigma_b**2

    roots = _roots(shifted, log_q)
    if roots.size:
        _, w_roots, slopes = (np.asarray(v) for v in parts(jnp.asarray(roots, dtype)))
        stable = slopes < 1.0
        if np.any(stable):
            return float(w_roots[np.argmax(stable)])
    end = _zero_end(act, quadrature)
    if sigma_b == 0.0 and end is not None and end[1]:
        return float(end[0])
    found = (
        f"only unstable fixed points at q* = {np.exp(roots)}" if roots.size else "none"
    )
    curve = edge_of_chaos(act, quadrature=quadrature)
    stable_b = curve.sigma_b[curve.stable]
    hint = (
        f"; it has stable ones for sigma_b in [{stable_b.min():.4g}, "
        f"{stable_b.max():.4g}]"
        if stable_b.size
        else ""
    )
    raise ValueError(
        f"activation: {act.name} has no stable edge of chaos at sigma_b = {sigma_b} "
        f"(fixed points with chi_1 = 1: {found}){hint}"
    )


class PhaseDiagram(NamedTuple):
    """Mean-field phase diagram over a grid (arrays ``(S, W)``: ``sigma_b`` rows).

    Attributes:
      sigma_w: ``(W,)`` weight standard deviations.
      sigma_b: ``(S,)`` bias standard deviations.
      q_star: fixed point reached from ``q = 1`` (``inf`` where q diverges).
      chi_1: ``chi_1(q*)``; above 1 is chaotic, below 1 ordered.
      c_star: correlation fixed point at ``q*``.
    """

    sigma_w: np.ndarray
    sigma_b: np.ndarray
    q_star: np.ndarray
    chi_1: np.ndarray
    c_star: np.ndarray


_SERIES_TERMS = 64


def _series_c_star(act, q, sigma_w, sigma_b, quadrature):
    """``c*`` by Newton's method on the c-map from ``c = 0``.

    The c-map comes from the activation's closed-form kernels where it has
    them, otherwise from Mehler's series of its Hermite coefficients (one
    one-dimensional quadrature per point). From ``c = 0`` the iterates rise
    monotonically to the smallest fixed point, since ``c' - c`` is convex on
    ``[0, 1]``.
    """
    q_next = q_map(act, q, sigma_w, sigma_b, quadrature)
    if act.kernel is not None:

        def value_and_slope(c):
            value = sigma_w**2 * act.kernel(q, q, c) + sigma_b**2
            return value / q_next, sigma_w**2 * act.slope_kernel(q, q, c) * q / q_next

    else:
        a2 = hermite_coefficients(act, q, _SERIES_TERMS) ** 2
        # The truncated tail goes onto the last power, so the series is exact
        # at c = 1 and keeps that fixed point.
        rest = second_moment(act, q, quadrature) - jnp.sum(a2)
        a2 = a2.at[-1].add(jnp.maximum(rest, 0.0))
        n = jnp.arange(_SERIES_TERMS, dtype=q.dtype)

        def value_and_slope(c):
            powers = c**n
            value = sigma_w**2 * jnp.sum(a2 * powers) + sigma_b**2
            slope = sigma_w**2 * jnp.sum(a2[1:] * n[1:] * powers[:-1])
            return value / q_next, slope / q_next

    def newton(_, c):
        value, slope = value_and_slope(c)
        step = jnp.where(slope < 1.0, (value - c) / (1.0 - slope), value - c)
        return jnp.clip(c + step, -1.0, 1.0)

    return jax.lax.fori_loop(0, 40, newton, jnp.zeros_like(q))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _phase_points(act, sigma_w, sigma_b, quadrature, batch):
    def point(ws):
        w, b = ws
        qs = q_star(act, w, b, quadrature=quadrature)
        q = jnp.minimum(qs, _overflow_q(qs.dtype))
        c1 = chi_1(act, q, w, quadrature)
        cs = _series_c_star(act, q, w, b, quadrature)
        return qs, c1, jnp.where(c1 <= 1.0, jnp.ones_like(cs), cs)

    return jax.lax.map(point, (sigma_w, sigma_b), batch_size=batch)


@_in_float64
def phase_diagram(
    activation: str | Activation,
    sigma_w: np.ndarray,
    sigma_b: np.ndarray,
    quadrature: Quadrature | None = None,
) -> PhaseDiagram:
    """``q*``, ``chi_1`` and ``c*`` over a grid of ``(sigma_w, sigma_b)`` (eager).

    Every grid point is computed by one vmapped program in batches that keep
    memory bounded; by default with the fast quadrature rule
    (:meth:`Quadrature.fast`, about ``1e-6`` relative), ample for a picture.

    Raises:
      ValueError: a grid is not 1-D, has non-finite or negative values (or a
        zero ``sigma_w``), or has more than ``2^22`` points in all.
    """
    act = get_activation(activation)
    sigma_w = np.asarray(sigma_w, float)
    sigma_b = np.asarray(sigma_b, float)
    problems = []
    for name, grid, low in (("sigma_w", sigma_w, 0.0), ("sigma_b", sigma_b, None)):
        if grid.ndim != 1 or grid.size == 0:
            problems.append(f"{name}: expected a non-empty 1-D grid, got {grid.shape}")
        elif not np.all(np.isfinite(grid)) or np.any(grid < 0):
            problems.append(f"{name}: expected finite non-negative values")
        elif low is not None and np.any(grid <= low):
            problems.append(f"{name}: expected positive values")
    if not problems and sigma_w.size * sigma_b.size > _MAX_GRID_POINTS:
        problems.append(
            f"grid: {sigma_b.size} x {sigma_w.size} points is more than "
            f"{_MAX_GRID_POINTS}; use a coarser grid or several calls"
        )
    if problems:
        raise ValueError("phase_diagram: " + "; ".join(problems))
    q_bound = (
        (float(sigma_w.max()) ** 2 * 1e3 + float(sigma_b.max()) ** 2)
        if (act.bounded)
        else 1e6
    )
    check_moments(act, q_bound)
    quadrature = quadrature or Quadrature.fast()
    dtype = jnp.result_type(float)
    ww, bb = np.meshgrid(sigma_w, sigma_b)
    batch = 256
    qs, c1, cs = _phase_points(
        act,
        jnp.asarray(ww.ravel(), dtype),
        jnp.asarray(bb.ravel(), dtype),
        quadrature,
        batch,
    )
    shape = ww.shape
    return PhaseDiagram(
        sigma_w,
        sigma_b,
        np.asarray(qs).reshape(shape),
        np.asarray(c1).reshape(shape),
        np.asarray(cs).reshape(shape),
    )
