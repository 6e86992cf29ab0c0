"""Paths through input space and what one network does to them, layer by layer.

A :class:`Path` is a curve ``x(t)`` in ``R^D`` sampled at ``S`` parameter
values, with its analytic first and second derivatives. Constructors give
lines, circles (great circles, circles through three points, random ones) and
:class:`Plane` grids; each checks its input eagerly.

Kernels over one network (vmap them over members):

* :func:`trajectory`: per layer, the length of ``z^l(x(t))``, its extrinsic
  curvature ``kappa(t) = |a_perp| / |v|^2`` with ``v = dz/dt``,
  ``a = d^2z/dt^2`` pushed exactly through each layer by nested forward-mode
  ``jvp`` (Poole et al. 2016), the mean curvature over arc length, the length
  of the Gauss map ``int kappa |v| dt``, and the sampled turning angle;
* :func:`zero_crossings`: per layer and neuron, zeros of ``z_i^l(x(t))``
  counted exactly on the cubic Hermite interpolant of ``z`` and ``dz/dt``
  between samples, the naive count of sign changes between samples, and the
  number of activation-pattern changes between samples;
* :func:`local_complexity`: per input and layer, the number of neurons whose
  activation pattern is not constant over a cross-polytope around the input
  (Humayun, Balestriero and Baraniuk 2024, "Deep networks always grok").

Layer index ``0`` of :func:`trajectory` is the input path itself; index ``l``
is ``z^l`` for ``l = 1..L``. Layers ``2..L`` run under ``lax.scan``.
Axis letters: ``S`` samples along a path, ``B`` inputs, ``D`` input
dimension, ``N`` width, ``L`` layers, ``P`` directions.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from actgeo.activations import Activation, get_activation, pattern
from actgeo.kernels import _norms
from actgeo.kernels.forward import (
    _check,
    _first_layer,
    check_params,
    check_residual,
    finite_problems,
    preactivations,
    step_values,
)
from actgeo.networks import MLPParams
from actgeo.precision import full_precision

__all__ = [
    "Crossings",
    "Path",
    "PathMeasures",
    "Plane",
    "circle",
    "circle_through",
    "great_circle",
    "line",
    "local_complexity",
    "orthonormal_directions",
    "plane",
    "random_great_circle",
    "random_line",
    "trajectory",
    "zero_crossings",
]

# Relative tolerance of circle(): | |u| - |v| | and |u . v| against |u| |v|.
CIRCLE_RTOL = 1e-5
# Two directions count as parallel when the component of one orthogonal to
# the other is below this fraction of its length (great circles, planes,
# three points on a line).
PARALLEL_RTOL = 1e-6
# directions of local_complexity: max |V V^T - I| allowed.
ORTHONORMAL_ATOL = 1e-4


class Path(NamedTuple):
    """A sampled curve ``x(t)`` with analytic derivatives.

    Attributes:
      points: ``(S, D)`` the samples ``x(t_k)``.
      velocity: ``(S, D)`` ``dx/dt`` at the samples.
      acceleration: ``(S, D)`` ``d^2x/dt^2`` at the samples.
      t: ``(S,)`` increasing parameter values; a closed path is parametrised
        over one period ``[t_0, t_0 + 2 pi)``, the last sample joining the
        first.
      weights: ``(S,)`` quadrature weights: ``sum_k weights_k f(t_k)``
        approximates ``int f(t) dt`` over the path (periodic trapezoid for
        closed paths, composite Simpson for open ones).
      closed: whether the path returns to its start.
    """

    points: jax.Array
    velocity: jax.Array
    acceleration: jax.Array
    t: jax.Array
    weights: jax.Array
    closed: bool


class Plane(NamedTuple):
    """A grid over the square ``[-extent, extent]^2`` of ``c + s u + t v``.

    Attributes:
      points: ``(S1, S2, D)``; ``points[i, j] = c + s_i u + t_j v``.
      s: ``(S1,)`` coordinates along ``u``.
      t: ``(S2,)`` coordinates along ``v``.
    """

    points: jax.Array
    s: jax.Array
    t: jax.Array


# Constructors ---------------------------------------------------------------------


def _is_count(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def positive_number(value) -> bool:
    """Whether ``value`` is one positive finite real number (bools are not).

    Python numbers and 0-d NumPy or JAX arrays are accepted alike.
    """
    if isinstance(value, bool | np.bool_) or isinstance(value, jax.core.Tracer):
        return False
    try:
        a = np.asarray(value)
    except (TypeError, ValueError):
        return False
    if a.shape != () or not (
        np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    ):
        return False
    return bool(np.isfinite(a) and a > 0)


def _check_samples(name, samples, problems):
    if not _is_count(samples) or samples < 2:
        problems.append(
            f"{name}: expected an integer number of samples >= 2, got {samples!r}"
        )


def _vectors(problems, **named):
    """Float64 copies of 1-D finite vectors of one common dimension.

    Empty when any is invalid (the problems are appended to ``problems``).
    """
    out = {}
    for name, value in named.items():
        arr = np.asarray(value, np.float64)
        if arr.ndim != 1 or arr.shape[0] == 0:
            problems.append(f"{name}: expected a vector of shape (D,), got {arr.shape}")
        elif not np.all(np.isfinite(arr)):
            problems.append(f"{name}: contains NaN or inf")
        else:
            out[name] = arr
    if len(out) != len(named):
        return {}
    dims = {name: arr.shape[0] for name, arr in out.items()}
    if len(set(dims.values())) > 1:
        problems.append(f"expected vectors of one dimension D, got {dims}")
        out = {}
    return out


def _dtype(dtype, *values):
    if dtype is not None:
        return jnp.dtype(dtype)
    kinds = [jnp.asarray(v).dtype for v in values]
    floats = [k for k in kinds if jnp.issubdtype(k, jnp.floating)]
    return jnp.result_type(*floats) if floats else jnp.result_type(float)


def _raise(where: str, problems: list[str]):
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


def _simpson_weights(h: float, samples: int) -> np.ndarray:
    """Composite Simpson weights; with an even count the last three intervals
    take Simpson's 3/8 rule (two samples: the trapezoid)."""
    w = np.zeros(samples)
    if samples == 2:
        return np.full(2, h / 2)
    odd = samples if samples % 2 else samples - 3
    if odd >= 3:
        w[:odd:2] += 2 * h / 3
        w[1:odd:2] += 4 * h / 3
        w[0] -= h / 3
        w[odd - 1] -= h / 3
    if odd != samples:
        start = odd - 1 if odd >= 3 else 0
        w[start : start + 4] += 3 * h / 8 * np.array([1.0, 3.0, 3.0, 1.0])
    return w


def _path(points, velocity, acceleration, t, weights, closed, dtype) -> Path:
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    return Path(
        cast(points),
        cast(velocity),
        cast(acceleration),
        cast(t),
        cast(weights),
        closed,
    )


def line(start, end, samples: int, *, dtype=None) -> Path:
    """The segment ``x(t) = a + t (b - a)``, ``t`` in ``[0, 1]`` (``S`` samples).

    Raises:
      ValueError: vectors of different dimensions, NaN, ``start == end``
        (zero length), or fewer than 2 samples.
    """
    problems = []
    v = _vectors(problems, start=start, end=end)
    _check_samples("samples", samples, problems)
    if v and np.array_equal(v["start"], v["end"]):
        problems.append("end: equals start, a line of zero length")
    _raise("line", problems)
    a, b = v["start"], v["end"]
    t = np.linspace(0.0, 1.0, samples)
    points = a[None] + t[:, None] * (b - a)[None]
    velocity = np.broadcast_to(b - a, points.shape)
    weights = _simpson_weights(1.0 / (samples - 1), samples)
    dtype = _dtype(dtype, start, end)
    return _path(points, velocity, np.zeros_like(points), t, weights, False, dtype)


def circle(center, u, v, samples: int, *, dtype=None) -> Path:
    """``x(t) = c + cos(t) u + sin(t) v``, ``t = 2 pi k / S`` (closed).

    ``u`` and ``v`` must have equal nonzero lengths and be orthogonal, to a
    relative tolerance of ``CIRCLE_RTOL = 1e-5`` (``| |u| - |v| |`` and
    ``|u . v|`` against ``|u| |v|``, checked in float64). The circle's radius
    is ``|u|``; its curvature ``1 / |u|``.

    Raises:
      ValueError: naming the argument that breaks these conditions.
    """
    problems = []
    vec = _vectors(problems, center=center, u=u, v=v)
    _check_samples("samples", samples, problems)
    if vec:
        nu, nv = np.linalg.norm(vec["u"]), np.linalg.norm(vec["v"])
        if nu == 0 or nv == 0:
            problems.append(f"u, v: expected nonzero vectors, got lengths {nu}, {nv}")
        else:
            if abs(nu - nv) > CIRCLE_RTOL * max(nu, nv):
                problems.append(f"v: expected |v| = |u| = {nu:.6g}, got {nv:.6g}")
            cos = abs(vec["u"] @ vec["v"]) / (nu * nv)
            if cos > CIRCLE_RTOL:
                problems.append(f"v: expected orthogonal to u, got |cos| = {cos:.3g}")
    _raise("circle", problems)
    return _circle(
        vec["center"], vec["u"], vec["v"], samples, _dtype(dtype, center, u, v)
    )


def _circle(c, u, v, samples, dtype) -> Path:
    t = 2.0 * np.pi * np.arange(samples) / samples
    cos, sin = np.cos(t)[:, None], np.sin(t)[:, None]
    radial = cos * u[None] + sin * v[None]
    velocity = -sin * u[None] + cos * v[None]
    weights = np.full(samples, 2.0 * np.pi / samples)
    return _path(c[None] + radial, velocity, -radial, t, weights, True, dtype)


def _orthogonal_part(x, y):
    """The component of ``y`` orthogonal to ``x`` (``x`` nonzero)."""
    unit = x / np.linalg.norm(x)
    return y - (y @ unit) * unit


def great_circle(x, y, samples: int, *, dtype=None) -> Path:
    """The circle centred at the origin through ``x``, in the plane of ``x, y``.

    Radius ``|x|``; it starts at ``x`` (``t = 0``) and heads towards ``y``'s
    side. With ``|y| = |x|`` it also passes through ``y``.

    Raises:
      ValueError: ``x`` zero, ``y`` zero or parallel to ``x`` (relative
        tolerance ``PARALLEL_RTOL``), NaN, fewer than 2 samples.
    """
    problems = []
    vec = _vectors(problems, x=x, y=y)
    _check_samples("samples", samples, problems)
    if vec:
        nx, ny = np.linalg.norm(vec["x"]), np.linalg.norm(vec["y"])
        if nx == 0:
            problems.append("x: the origin; a great circle needs a radius |x| > 0")
        elif ny == 0 or np.linalg.norm(_orthogonal_part(vec["x"], vec["y"])) <= (
            PARALLEL_RTOL * ny
        ):
            problems.append(
                "y: zero or parallel to x; the plane of x and y is not defined"
            )
    _raise("great_circle", problems)
    x64 = vec["x"]
    perp = _orthogonal_part(x64, vec["y"])
    v = perp * (np.linalg.norm(x64) / np.linalg.norm(perp))
    return _circle(np.zeros_like(x64), x64, v, samples, _dtype(dtype, x, y))


def circle_through(a, b, c, samples: int, *, dtype=None) -> Path:
    """The circle through three points (data points, say), starting at ``a``.

    Raises:
      ValueError: repeated points, three points on one line (relative
        tolerance ``PARALLEL_RTOL``), NaN, fewer than 2 samples.
    """
    problems = []
    vec = _vectors(problems, a=a, b=b, c=c)
    _check_samples("samples", samples, problems)
    if vec:
        pa, pb, pc = vec["a"], vec["b"], vec["c"]
        for name, p, q in (("b", pb, pa), ("c", pc, pa), ("c", pc, pb)):
            if np.array_equal(p, q):
                problems.append(f"{name}: repeats another point")
        if not problems:
            perp = _orthogonal_part(pb - pa, pc - pa)
            if np.linalg.norm(perp) <= PARALLEL_RTOL * np.linalg.norm(pc - pa):
                problems.append(
                    "c: on the line through a and b; no circle "
                    "passes through three collinear points"
                )
    _raise("circle_through", problems)
    pa, pb, pc = vec["a"], vec["b"], vec["c"]
    e1 = (pb - pa) / np.linalg.norm(pb - pa)
    perp = _orthogonal_part(pb - pa, pc - pa)
    e2 = perp / np.linalg.norm(perp)
    bx = np.linalg.norm(pb - pa)
    cx, cy = (pc - pa) @ e1, (pc - pa) @ e2
    # Circumcentre of (0, 0), (bx, 0), (cx, cy) in the plane's coordinates.
    ox, oy = bx / 2.0, (cx * cx + cy * cy - bx * cx) / (2.0 * cy)
    center = pa + ox * e1 + oy * e2
    u = pa - center
    radius = np.linalg.norm(u)
    w = _orthogonal_part(u, pb - center)
    v = w * (radius / np.linalg.norm(w))
    return _circle(center, u, v, samples, _dtype(dtype, a, b, c))


def _random_frame(key, dim, count):
    g = np.asarray(jax.random.normal(key, (dim, count), jnp.float32), np.float64)
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diagonal(r))[None]


def _check_random(dim, radius, samples):
    problems = []
    if not _is_count(dim) or dim < 2:
        problems.append(f"dim: expected an integer >= 2, got {dim!r}")
    if not positive_number(radius):
        problems.append(f"radius: expected a positive finite number, got {radius!r}")
    _check_samples("samples", samples, problems)
    return problems


def random_great_circle(
    key: jax.Array, dim: int, radius: float, samples: int, *, dtype=jnp.float32
) -> Path:
    """A great circle of radius ``radius`` in a uniformly random plane of ``R^D``.

    Poole et al. 2016 take ``radius = sqrt(D q_in)``, so that every point has
    ``|x|^2 / D = q_in``.
    """
    _raise("random_great_circle", _check_random(dim, radius, samples))
    radius = float(radius)
    frame = _random_frame(key, dim, 2) * radius
    return _circle(np.zeros(dim), frame[:, 0], frame[:, 1], samples, jnp.dtype(dtype))


def random_line(
    key: jax.Array, dim: int, radius: float, samples: int, *, dtype=jnp.float32
) -> Path:
    """A segment between two independent uniformly random points of ``|x| = radius``."""
    _raise("random_line", _check_random(dim, radius, samples))
    radius = float(radius)
    g = np.asarray(jax.random.normal(key, (2, dim), jnp.float32), np.float64)
    ends = radius * g / np.linalg.norm(g, axis=1, keepdims=True)
    return line(ends[0], ends[1], samples, dtype=dtype)


def plane(center, u, v, extent: float, samples, *, dtype=None) -> Plane:
    """Grid over ``[-extent, extent]^2`` of the plane ``c + s u + t v``.

    Args:
      center, u, v: ``(D,)``; ``u`` and ``v`` nonzero and not parallel (they
        need not be orthonormal: ``s``, ``t`` are coordinates along them).
      extent: half-width of the square, positive.
      samples: ``S`` for an ``S x S`` grid, or ``(S1, S2)``; each at least 2.

    Raises:
      ValueError: naming the argument that is degenerate.
    """
    problems = []
    vec = _vectors(problems, center=center, u=u, v=v)
    if _is_count(samples):
        counts = (samples, samples)
    elif isinstance(samples, tuple | list):
        counts = tuple(samples)
    else:
        counts = ()
    if len(counts) != 2:
        problems.append(f"samples: expected S or (S1, S2), got {samples!r}")
    else:
        for i, count in enumerate(counts):
            _check_samples(f"samples[{i}]", count, problems)
    if not positive_number(extent):
        problems.append(f"extent: expected a positive finite number, got {extent!r}")
    if vec:
        nu, nv = np.linalg.norm(vec["u"]), np.linalg.norm(vec["v"])
        if nu == 0:
            problems.append("u: zero vector")
        if nv == 0:
            problems.append("v: zero vector")
        if (
            nu
            and nv
            and np.linalg.norm(_orthogonal_part(vec["u"], vec["v"]))
            <= (PARALLEL_RTOL * nv)
        ):
            problems.append("v: parallel to u; the plane is not defined")
    _raise("plane", problems)
    extent = float(extent)
    s = np.linspace(-extent, extent, counts[0])
    t = np.linspace(-extent, extent, counts[1])
    points = (
        vec["center"][None, None]
        + s[:, None, None] * vec["u"][None, None]
        + t[None, :, None] * vec["v"][None, None]
    )
    dtype = _dtype(dtype, center, u, v)
    return Plane(*(jnp.asarray(a, dtype) for a in (points, s, t)))


# Kernels ---------------------------------------------------------------------------


def _check_path(params: MLPParams, path: Path, residual=None):
    problems = check_params(params) + check_residual(residual)
    if not problems:
        d = params.w_in.shape[-1]
        shape = jnp.shape(path.points)
        if len(shape) != 2 or shape[1] != d or shape[0] < 2:
            problems.append(
                f"path.points: expected shape (S, D) with S >= 2 and D = {d} (the "
                f"first layer's fan-in), got {shape}"
            )
        else:
            for name in ("velocity", "acceleration"):
                if jnp.shape(getattr(path, name)) != shape:
                    problems.append(
                        f"path.{name}: expected shape {shape}, got "
                        f"{jnp.shape(getattr(path, name))}"
                    )
            for name in ("t", "weights"):
                if jnp.shape(getattr(path, name)) != shape[:1]:
                    problems.append(
                        f"path.{name}: expected shape {shape[:1]}, got "
                        f"{jnp.shape(getattr(path, name))}"
                    )
    problems += finite_problems(
        **{f"path.{k}": getattr(path, k) for k in ("points", "velocity", "t")}
    )
    if problems:
        raise ValueError("; ".join(problems))


def _smooth(act: Activation) -> Activation:
    """``act`` whose autodiff uses the registry's accurate ``phi'``.

    Nested ``jvp`` then differentiates ``phi'`` itself, giving ``phi''``.
    """

    @jax.custom_jvp
    def phi(z):
        return act.fn(z)

    @phi.defjvp
    def _jvp(primals, tangents):
        (z,), (dz,) = primals, tangents
        return act.fn(z), act.derivative(z) * dz

    return dataclasses.replace(act, fn=phi)


def _interval_mask(samples: int, closed) -> jax.Array:
    """``(S,)``: interval ``k -> k + 1`` exists; the last one (wrap) if closed."""
    last = jnp.asarray(closed, jnp.bool_)
    return (jnp.arange(samples) < samples - 1) | last


def _intervals(path: Path) -> jax.Array:
    """Lengths ``t_(k+1) - t_k`` in ``t`` (``(S,)``; the wrap uses period 2 pi)."""
    t = path.t
    return jnp.concatenate([t[1:] - t[:-1], (t[:1] + 2.0 * jnp.pi) - t[-1:]])


class PathMeasures(NamedTuple):
    """Length and curvature of a path's image, layer by layer.

    Leading axis ``L + 1``: index 0 is the input path, index ``l`` the
    preactivations ``z^l``. Lengths are in the units of ``z`` (input units at
    index 0), integrated over ``t`` with the path's weights.

    Attributes:
      length: ``(L+1,)`` ``int |dz/dt| dt`` (``inf`` past the float range).
      log10_length: ``(L+1,)`` the same, finite far past the float range.
      speed: ``(L+1, S)`` ``|dz/dt|`` at the samples.
      curvature: ``(L+1, S)`` extrinsic curvature ``kappa``, exact from the
        analytic second derivative; NaN where ``dz/dt = 0``.
      mean_curvature: ``(L+1,)`` ``int kappa |v| dt / int |v| dt``.
      gauss_length: ``(L+1,)`` length of the Gauss map (the curve of unit
        tangents), ``int kappa |v| dt``.
      turning: ``(L+1,)`` sum of the angles between the unit tangents at
        consecutive samples: the sampled Gauss-map length, which includes
        the bends at kinks (a lower bound where several fall between two
        samples) and tends to ``gauss_length`` for smooth activations.
    """

    length: jax.Array
    log10_length: jax.Array
    speed: jax.Array
    curvature: jax.Array
    mean_curvature: jax.Array
    gauss_length: jax.Array
    turning: jax.Array


def _curve_measures(v, a, log_scale, mask):
    """Renormalises ``(v, a)`` per sample and measures the curve there.

    The true derivatives are ``exp(s) v`` and ``exp(2 s) a`` with ``s =
    log_scale``; each sample's velocity is rescaled to unit length (and its
    acceleration by the square), so deep chaotic networks, whose ``|v|``
    grows geometrically, never overflow. Curvature is invariant under this.
    """
    m = _norms.norm(v, axis=-1)
    moving = m > 0
    m_safe = jnp.where(moving, m, jnp.ones_like(m))
    v = v / m_safe[:, None]
    a = a / (m_safe * m_safe)[:, None]
    log_scale = log_scale + jnp.log(m_safe)
    log_speed = jnp.where(moving, log_scale, -jnp.inf)
    along = jnp.sum(a * v, axis=-1)
    kappa = _norms.norm(a - along[:, None] * v, axis=-1)
    kappa = jnp.where(moving, kappa, jnp.nan)
    following = jnp.roll(v, -1, axis=0)
    angle = 2.0 * jnp.arctan2(
        _norms.norm(v - following, axis=-1), _norms.norm(v + following, axis=-1)
    )
    valid = mask & moving & jnp.roll(moving, -1)
    turning = jnp.sum(jnp.where(valid, angle, jnp.zeros_like(angle)))
    return (v, a, log_scale), (log_speed, kappa, turning)


@full_precision
def trajectory(
    params: MLPParams,
    path: Path,
    activation: str | Activation,
    *,
    residual: float | jax.Array | None = None,
) -> PathMeasures:
    """Length, curvature and Gauss-map length of ``z^l(x(t))`` for every layer.

    ``v = dz/dt`` and ``a = d^2z/dt^2`` start from the path's analytic
    derivatives and are pushed through each layer exactly by nested
    forward-mode ``jvp`` (``v' = W (phi'(z) v)``, ``a' = W (phi''(z) v^2 +
    phi'(z) a)``), with ``phi''`` the derivative of the registry's ``phi'``.
    The curvature ``kappa = sqrt((v.v)(a.a) - (v.a)^2) / (v.v)^(3/2)`` is
    computed as ``|a_perp| / |v|^2`` (Poole et al. 2016). Lengths use the
    path's quadrature weights: the periodic trapezoid rule on a closed path
    is spectrally accurate for smooth activations.

    Piecewise-linear activations with kinks (relu, leaky relu, hard tanh):
    inside each linear piece the image is bent only as the input path is,
    and the bending that depth adds sits at the kinks, where ``phi''`` is a
    delta. ``curvature``, ``mean_curvature`` and ``gauss_length`` are then
    NaN from layer 2 on (layer 1 is affine, hence exact); ``turning``, the
    sampled version, is reported for every activation.

    Args:
      params: one network's parameters (no member axis).
      path: the input path (``S`` samples in ``R^D``).
      activation: registered name or :class:`Activation`.
      residual: residual scale ``alpha`` (traced), or ``None``.

    Returns:
      :class:`PathMeasures` with leading axis ``L + 1`` (index 0 the input).
    """
    act = get_activation(activation)
    _check_path(params, path, residual)
    smooth = _smooth(act)
    samples = path.points.shape[0]
    mask = _interval_mask(samples, path.closed)
    log_scale0 = jnp.zeros(samples, path.points.dtype)
    carry0, out0 = _curve_measures(path.velocity, path.acceleration, log_scale0, mask)
    v0, a0, log_scale = carry0
    z1 = _first_layer(params, path.points)
    carry1, out1 = _curve_measures(
        v0 @ params.w_in.T, a0 @ params.w_in.T, log_scale, mask
    )

    def body(carry, layer):
        z, v, a, log_scale = carry
        w, b = layer

        def first(z, v):
            return jax.jvp(lambda u: step_values(smooth, w, b, u, residual), (z,), (v,))

        (z, v), (_, a) = jax.jvp(first, (z, v), (v, a))
        (v, a, log_scale), out = _curve_measures(v, a, log_scale, mask)
        return (z, v, a, log_scale), out

    _, rest = jax.lax.scan(body, (z1, *carry1), (params.w, params.b))
    log_speed, kappa, turning = jax.tree.map(
        lambda a, b, c: jnp.concatenate([a[None], b[None], c]), out0, out1, rest
    )
    log_w = jnp.log(path.weights)[None]
    log_length = jax.scipy.special.logsumexp(log_w + log_speed, axis=-1)
    share = jnp.exp(log_w + log_speed - log_length[:, None])
    kappa_safe = jnp.where(jnp.isnan(kappa), jnp.zeros_like(kappa), kappa)
    mean_kappa = jnp.sum(share * kappa_safe, axis=-1)
    if act.kinks:
        kinked = (jnp.arange(kappa.shape[0]) >= 2)[:, None]
        kappa = jnp.where(kinked, jnp.nan, kappa)
        mean_kappa = jnp.where(kinked[:, 0], jnp.nan, mean_kappa)
    return PathMeasures(
        length=jnp.exp(log_length),
        log10_length=log_length / math.log(10.0),
        speed=jnp.exp(log_speed),
        curvature=kappa,
        mean_curvature=mean_kappa,
        gauss_length=jnp.exp(log_length) * mean_kappa,
        turning=turning,
    )


class Crossings(NamedTuple):
    """Zero crossings and pattern changes along a path, per layer and neuron.

    Each field is ``(L, N)`` int32; sum over the last axis for per-layer
    totals (:meth:`per_layer`).

    Attributes:
      hermite: zeros of ``z_i^l(x(t))`` counted exactly on the cubic Hermite
        interpolant of ``z`` and ``dz/dt`` between consecutive samples.
      sign_changes: changes of the sign of ``z_i^l`` between consecutive
        samples (misses pairs of zeros between two samples).
      pattern_changes: changes of the activation pattern
        (:func:`actgeo.activations.pattern`) of ``z_i^l`` between
        consecutive samples (0 for activations without kinks).
    """

    hermite: jax.Array
    sign_changes: jax.Array
    pattern_changes: jax.Array

    def per_layer(self) -> Crossings:
        """Totals over neurons: each field ``(L,)`` (or ``(E, L)`` for an ensemble)."""
        return Crossings(*(jnp.sum(f, axis=-1) for f in self))


def _hermite_roots(p0, p1, m0, m1) -> jax.Array:
    """Sign changes of the cubic Hermite interpolant on ``s`` in ``[0, 1]``.

    ``p0, p1`` are the values at the ends and ``m0, m1`` the derivatives in
    ``s`` (``dz/dt`` times the interval's length). The cubic is split at its
    critical points in ``(0, 1)`` into monotone pieces; each piece whose ends
    lie on different sides (``p > 0`` against ``p <= 0``, the pattern
    convention) holds exactly one zero. Exact for the interpolant, up to
    rounding where it only grazes zero.
    """
    c1 = m0
    c2 = 3.0 * (p1 - p0) - 2.0 * m0 - m1
    c3 = 2.0 * (p0 - p1) + m0 + m1
    # p'(s) = c1 + 2 c2 s + 3 c3 s^2; roots by the cancellation-free formula.
    disc = c2 * c2 - 3.0 * c3 * c1
    has = disc > 0
    root = jnp.sqrt(jnp.where(has, disc, jnp.zeros_like(disc)))
    q = -(c2 + jnp.where(c2 >= 0, root, -root))
    q_safe = jnp.where(q != 0, q, jnp.ones_like(q))
    c3_safe = jnp.where(c3 != 0, c3, jnp.ones_like(c3))
    r1 = jnp.where((q != 0) & (c3 != 0), q / (3.0 * c3_safe), -1.0)
    r2 = jnp.where(q != 0, c1 / q_safe, -1.0)

    def inside(r):
        return jnp.where(has & (r > 0) & (r < 1), r, jnp.zeros_like(r))

    r1, r2 = inside(r1), inside(r2)
    lo, hi = jnp.minimum(r1, r2), jnp.maximum(r1, r2)

    def value(s):
        return p0 + s * (c1 + s * (c2 + s * c3))

    # Exact end values; an unused critical point sits at s = 0.
    ends = [p0, value(lo), value(hi), p1]
    positive = [e > 0 for e in ends]
    count = jnp.zeros(jnp.shape(p0), jnp.int32)
    for left, right in itertools.pairwise(positive):
        count = count + (left != right).astype(jnp.int32)
    return count


def _layer_crossings(act, z, dz, h, mask):
    """Counts ``(N,)`` for one layer: ``z, dz`` are ``(S, N)``, ``h, mask (S,)``."""
    z_next = jnp.roll(z, -1, axis=0)
    dz_next = jnp.roll(dz, -1, axis=0)
    hermite = _hermite_roots(z, z_next, dz * h[:, None], dz_next * h[:, None])
    sign = ((z > 0) != (z_next > 0)).astype(jnp.int32)
    patt = pattern(act, z)
    changed = (patt != jnp.roll(patt, -1, axis=0)).astype(jnp.int32)
    keep = mask[:, None].astype(jnp.int32)
    return tuple(
        jnp.sum(c * keep, axis=0, dtype=jnp.int32) for c in (hermite, sign, changed)
    )


@full_precision
def zero_crossings(
    params: MLPParams,
    path: Path,
    activation: str | Activation,
    *,
    residual: float | jax.Array | None = None,
) -> Crossings:
    """Zeros of every preactivation ``z_i^l`` along a path, per layer and neuron.

    ``z`` and ``dz/dt`` at the samples come from one forward-mode ``jvp``
    along the path's analytic velocity. On each interval between samples (and
    from the last sample back to the first on a closed path) the zeros of the
    cubic Hermite interpolant are counted exactly, so two zeros between the
    same pair of samples are found whenever the interpolant resolves them
    (its error is ``O(h^4)``); as the sampling refines, the count converges to
    the true one for smooth activations.

    For activations with kinks, ``z^l`` (``l >= 2``) is only piecewise smooth
    along the path and the Hermite count of preactivation zeros is an
    approximation (for relu, preactivation zero crossings are the pattern
    changes); :mod:`actgeo.kernels.regions` walks piecewise-linear networks
    exactly.

    Returns:
      :class:`Crossings`, each field ``(L, N)``.
    """
    act = get_activation(activation)
    _check_path(params, path, residual)
    smooth = _smooth(act)
    samples = path.points.shape[0]
    mask = _interval_mask(samples, path.closed)
    h = _intervals(path)
    z1 = _first_layer(params, path.points)
    dz1 = path.velocity @ params.w_in.T
    first = _layer_crossings(act, z1, dz1, h, mask)

    def body(carry, layer):
        z, dz = carry
        w, b = layer
        z, dz = jax.jvp(lambda u: step_values(smooth, w, b, u, residual), (z,), (dz,))
        return (z, dz), _layer_crossings(act, z, dz, h, mask)

    _, rest = jax.lax.scan(body, (z1, dz1), (params.w, params.b))
    return Crossings(
        *(jnp.concatenate([a[None], b]) for a, b in zip(first, rest, strict=True))
    )


def orthonormal_directions(key: jax.Array, dim: int, count: int) -> jax.Array:
    """``count`` orthonormal directions in ``R^dim``, uniformly random: ``(P, D)``."""
    if not (_is_count(count) and _is_count(dim) and 1 <= count <= dim):
        raise ValueError(
            f"count: expected an integer in [1, dim = {dim}], got {count!r}"
        )
    return jnp.asarray(_random_frame(key, dim, count).T, jnp.float32)


@full_precision
def local_complexity(
    params: MLPParams,
    x: jax.Array,
    activation: str | Activation,
    *,
    radius: float | jax.Array,
    directions: jax.Array,
    residual: float | jax.Array | None = None,
) -> jax.Array:
    """Neurons whose activation pattern changes within a neighbourhood of ``x``.

    The neighbourhood is the cross-polytope with vertices ``x +- r d_p``
    (``p = 1..P``, orthonormal ``d_p``) of Humayun, Balestriero and Baraniuk
    2024 ("Deep networks always grok"). At each layer, a neuron counts when
    its pattern (:func:`actgeo.activations.pattern`: the sign of ``z_i`` for
    relu) is not the same at all ``2P`` vertices and the centre. In layer 1
    this is exact: a neuron counts iff its hyperplane meets the polytope. In
    deeper layers the vertices' images stand for the neighbourhood, as in the
    paper. Sum over layers for the paper's total. Activations without kinks
    have one piece and count 0 everywhere.

    Args:
      params: one network's parameters (no member axis).
      x: ``(B, D)`` centres.
      radius: ``r``, positive (traced).
      directions: ``(P, D)`` orthonormal rows (``max |V V^T - I| <= 1e-4``);
        :func:`orthonormal_directions` draws random ones.

    Returns:
      ``(L, B)`` int32 counts.
    """
    act = get_activation(activation)
    x = jnp.asarray(x)
    directions = jnp.asarray(directions)
    _check(params, x, residual)
    problems = []
    d = x.shape[1]
    if directions.ndim != 2 or directions.shape[1] != d or directions.shape[0] < 1:
        problems.append(
            f"directions: expected shape (P, {d}) with P >= 1, got {directions.shape}"
        )
    elif not isinstance(directions, jax.core.Tracer):
        gram = np.asarray(directions, np.float64) @ np.asarray(directions, np.float64).T
        error = np.max(np.abs(gram - np.eye(gram.shape[0])))
        if not error <= ORTHONORMAL_ATOL:
            problems.append(
                f"directions: expected orthonormal rows, max |V V^T - I| = {error:.3g}"
            )
    if not isinstance(radius, jax.core.Tracer):
        if not positive_number(radius):
            problems.append(
                f"radius: expected a positive finite scalar, got {radius!r}"
            )
    if problems:
        raise ValueError("local_complexity: " + "; ".join(problems))
    steps = radius * jnp.concatenate(
        [jnp.zeros((1, d), directions.dtype), directions, -directions]
    )  # (2P + 1, D)
    corners = (x[:, None] + steps[None].astype(x.dtype)).reshape(-1, d)
    z = preactivations(params, corners, act, residual=residual)  # (L, B(2P+1), N)
    patt = pattern(act, z).reshape(z.shape[0], x.shape[0], steps.shape[0], -1)
    varies = jnp.any(patt != patt[:, :, :1], axis=2)  # (L, B, N)
    return jnp.sum(varies, axis=-1, dtype=jnp.int32)
