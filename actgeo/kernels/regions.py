"""Exact linear regions of piecewise-linear networks along paths and in planes.

Inside a linear region (a fixed activation pattern: the piece of ``phi`` every
neuron of every layer is on, :func:`actgeo.activations.pattern`) a network
with a piecewise-linear activation is affine in its input, so along a path
every preactivation is a known function of the path's parameter ``t``:

* on a segment ``x(t) = a + t (b - a)``, ``t in [0, 1]``:
  ``z_i^l(t) = alpha_i + beta_i t``;
* on an ellipse ``x(t) = c + cos(t) u + sin(t) v``, ``t in [0, 2 pi]`` (a
  circle when ``u``, ``v`` are orthogonal and of equal length, a great circle
  when also ``c = 0``): ``z_i^l(t) = alpha_i + beta_i cos t + gamma_i sin t``.

The walks push the current region's affine map through the layers with the
pattern forced (each neuron's piece slope and intercept), solve for the
smallest parameter at which any neuron reaches a kink of its current piece,
step exactly there, move that neuron to the neighbouring piece in the
direction of motion and repeat, under ``lax.while_loop``. No crossing is
missed however close two are; crossing parameters are solved from the region's
map at the start of the path, not accumulated step by step. This is the count
of activation-pattern changes of Hanin & Rolnick 2019 ("Complexity of linear
regions in deep networks"), per layer.

:func:`count_regions_2d` partitions a square of a plane through input space
into its linear regions exactly (convex polygons, found by breadth-first
search across their edges), with the decision boundary of a readout.

Conventions. A boundary through the start of a path is not a crossing: the
start's pattern is the one the path enters (a neuron exactly on a kink is
put on the piece the path moves into), and crossings are counted on
``(0, T]`` (``T = 1`` on a segment, ``2 pi`` on an ellipse). A crossing is
recorded with the 0-based index of its layer on the ``L`` axis.

Axis letters: ``D`` input dimension, ``N`` width, ``L`` layers, ``K``
outputs, ``M`` recorded crossings (``max_crossings``).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from actgeo.activations import Activation, get_activation, pattern
from actgeo.kernels.forward import (
    check_params,
    check_residual,
    finite_problems,
    preactivations,
)
from actgeo.kernels.paths import positive_number
from actgeo.networks import MLPParams
from actgeo.precision import full_precision

__all__ = [
    "PlaneRegions",
    "RegionWalk",
    "count_regions_2d",
    "normalised_changes",
    "walk_circle",
    "walk_segment",
]

# Gauss-Legendre nodes for the arc length of an ellipse between crossings
# (exact for circles, whose speed is constant).
_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(16)


class RegionWalk(NamedTuple):
    """The linear regions a path crosses, from an exact walk.

    Attributes:
      times: ``(M,)`` path parameters of the crossings, increasing; NaN after
        the last one.
      layer: ``(M,)`` int32 layer index (0-based, on the ``L`` axis) of the
        neuron crossing a kink; ``-1`` after the last crossing.
      neuron: ``(M,)`` int32 index of that neuron in its layer; ``-1`` after.
      counts: ``(L,)`` int32 pattern changes per layer.
      count: ``()`` int32 total pattern changes (linear regions crossed, minus
        one on a segment).
      truncated: ``()`` bool, whether ``max_crossings`` was reached with more
        crossings left on the path (``counts`` are then lower bounds).
      gaps: ``(M + 1,)`` input-space arc length of the path's pieces between
        consecutive crossings (the sizes of the regions along the path; on a
        closed path the pieces before the first and after the last crossing
        are one region, merged into ``gaps[0]``); NaN after the last piece.
      length: ``()`` arc length of the whole path in input space.
    """

    times: jax.Array
    layer: jax.Array
    neuron: jax.Array
    counts: jax.Array
    count: jax.Array
    truncated: jax.Array
    gaps: jax.Array
    length: jax.Array


class PlaneRegions(NamedTuple):
    """The linear regions of a network in the square ``[-e, e]^2`` of a plane.

    Plane coordinates ``(s, t)`` map to inputs ``x = center + s u + t v``.

    Attributes:
      count: number of linear regions meeting the square.
      polygons: ``R`` arrays ``(V_r, 2)``: each region's vertices in ``(s,
        t)``, counter-clockwise.
      edge_layers: ``R`` int arrays ``(V_r,)``: the 0-based layer of the
        neuron whose boundary the edge from vertex ``k`` to ``k + 1`` lies on;
        ``-1`` on the square's sides.
      patterns: ``(R, L, N)`` int8 activation pattern of each region.
      areas: ``(R,)`` area of each polygon in ``(s, t)`` units.
      decision: ``(S, 2, 2)`` segments of the readout's decision boundary
        (points in ``(s, t)``); empty without a readout.
      decision_classes: ``(S, 2)`` the two classes each segment separates.
      extent: ``e``.
    """

    count: int
    polygons: list[np.ndarray]
    edge_layers: list[np.ndarray]
    patterns: np.ndarray
    areas: np.ndarray
    decision: np.ndarray
    decision_classes: np.ndarray
    extent: float


# Pieces of the activation ------------------------------------------------------


@functools.cache
def _piece_table(act: Activation) -> tuple[tuple[float, ...], ...]:
    """``(slopes, intercepts, lower, upper)`` of each linear piece of ``phi``."""
    kinks = list(act.kinks)
    points = [kinks[0] - 1.0]
    points += [0.5 * (lo + hi) for lo, hi in itertools.pairwise(kinks)]
    points += [kinks[-1] + 1.0]
    with jax.ensure_compile_time_eval():
        at = np.asarray(points, np.float64)
        slopes = np.asarray(act.derivative(jnp.asarray(at)), np.float64)
        values = np.asarray(act.fn(jnp.asarray(at)), np.float64)
    intercepts = values - slopes * at
    lower = [-math.inf, *kinks]
    upper = [*kinks, math.inf]
    return tuple(slopes), tuple(intercepts), tuple(lower), tuple(upper)


def _table(act: Activation, dtype):
    return tuple(jnp.asarray(v, dtype) for v in _piece_table(act))


def _affine_layers(table, params: MLPParams, pieces, const, dirs, residual):
    """Every layer's affine map with the pattern forced to ``pieces (L, N)``.

    ``const (N,)`` and ``dirs (M', N)`` are layer 1's constant term and its
    derivatives along ``M'`` input directions; returns ``(L, N)`` and
    ``(L, M', N)``.
    """
    slopes, intercepts = table[0], table[1]

    def body(carry, layer):
        c, d = carry
        w, b, piece = layer
        s, h = slopes[piece], intercepts[piece]
        c_new = w @ (s * c + h) + b
        d_new = (s[None] * d) @ w.T
        if residual is not None:
            c_new = c + residual * c_new
            d_new = d + residual * d_new
        return (c_new, d_new), (c_new, d_new)

    _, (cs, ds) = jax.lax.scan(body, (const, dirs), (params.w, params.b, pieces[:-1]))
    return jnp.concatenate([const[None], cs]), jnp.concatenate([dirs[None], ds])


def _entered_pieces(act, table, params: MLPParams, x0, d0, residual):
    """Pattern ``(L, N)`` a path entering from ``x0`` along ``d0`` is on.

    As :func:`actgeo.activations.pattern`, except that a neuron exactly on a
    kink is put on the piece its preactivation moves into.
    """
    slopes, intercepts = table[0], table[1]

    def pieces_of(z, dz):
        piece = pattern(act, z)
        for kink in act.kinks:
            piece = piece + ((z == kink) & (dz > 0)).astype(jnp.int32)
        return piece

    z1 = params.w_in @ x0 + params.b_in
    dz1 = params.w_in @ d0
    p1 = pieces_of(z1, dz1)

    def body(carry, layer):
        z, dz, piece = carry
        w, b = layer
        s, h = slopes[piece], intercepts[piece]
        z_new = w @ (s * z + h) + b
        dz_new = w @ (s * dz)
        if residual is not None:
            z_new = z + residual * z_new
            dz_new = dz + residual * dz_new
        p_new = pieces_of(z_new, dz_new)
        return (z_new, dz_new, p_new), p_new

    _, rest = jax.lax.scan(body, (z1, dz1, p1), (params.w, params.b))
    return jnp.concatenate([p1[None], rest])


# The walk ----------------------------------------------------------------------


def _walk(hits, start_pieces, t_end, max_crossings, dtype):
    """Steps from region to region; ``hits(pieces, t)`` gives the next kinks.

    ``hits`` returns ``(times (L, N), steps (L, N))``: for each neuron the
    first parameter ``>= t`` at which it leaves its piece (``inf`` if never
    on the path) and the piece it moves to (``+1`` or ``-1``).
    """
    n_layers = start_pieces.shape[0]

    def cond(state):
        return jnp.logical_not(state["done"])

    def body(state):
        times, steps = hits(state["pieces"], state["t"])
        flat = jnp.argmin(times.ravel())
        t_next = times.ravel()[flat]
        found = t_next <= t_end
        record = found & (state["n"] < max_crossings)
        layer, neuron = (i.astype(jnp.int32) for i in jnp.divmod(flat, times.shape[1]))
        n = state["n"]
        step = jnp.where(record, steps.ravel()[flat], 0)
        pieces = state["pieces"].at[layer, neuron].add(step)
        return dict(
            t=jnp.where(record, jnp.maximum(t_next, state["t"]), state["t"]),
            pieces=pieces,
            n=n + record.astype(jnp.int32),
            times=jnp.where(record, state["times"].at[n].set(t_next), state["times"]),
            layer=jnp.where(record, state["layer"].at[n].set(layer), state["layer"]),
            neuron=jnp.where(
                record, state["neuron"].at[n].set(neuron), state["neuron"]
            ),
            counts=state["counts"].at[layer].add(record.astype(jnp.int32)),
            truncated=found & jnp.logical_not(record),
            done=jnp.logical_not(record),
        )

    state = dict(
        t=jnp.zeros((), dtype),
        pieces=start_pieces,
        n=jnp.zeros((), jnp.int32),
        times=jnp.full((max_crossings,), jnp.nan, dtype),
        layer=jnp.full((max_crossings,), -1, jnp.int32),
        neuron=jnp.full((max_crossings,), -1, jnp.int32),
        counts=jnp.zeros((n_layers,), jnp.int32),
        truncated=jnp.zeros((), bool),
        done=jnp.zeros((), bool),
    )
    return jax.lax.while_loop(cond, body, state)


def _parameter_gaps(state, t_end, closed):
    """``(M + 1,)`` parameter intervals between consecutive crossings."""
    times, n = state["times"], state["n"]
    m = times.shape[0]
    index = jnp.arange(m)
    inner = jnp.where(index < n, times, t_end)
    edges = jnp.concatenate([jnp.zeros((1,), times.dtype), inner, t_end[None]])
    lo, hi = edges[:-1], edges[1:]
    valid = jnp.arange(m + 1) <= n
    if closed:
        # The pieces before the first and after the last crossing meet at t = 0.
        last = jnp.arange(m + 1) == n
        first = jnp.arange(m + 1) == 0
        merge = n >= 1
        lo = jnp.where(merge & first, lo - (t_end - lo[n]), lo)
        valid = valid & jnp.logical_not(merge & last)
    return lo, hi, valid


def _segment_hits(table, params, a, d, residual):
    const = params.w_in @ a + params.b_in
    dirs = (params.w_in @ d)[None]
    lower, upper = table[2], table[3]

    def hits(pieces, t):
        alpha, beta = _affine_layers(table, params, pieces, const, dirs, residual)
        beta = beta[:, 0]
        target = jnp.where(beta > 0, upper[pieces], lower[pieces])
        safe = jnp.where(beta != 0, beta, jnp.ones_like(beta))
        times = jnp.where(beta != 0, (target - alpha) / safe, jnp.inf)
        # A neuron reaching its kink at t up to rounding crosses at t.
        times = jnp.where(jnp.isnan(times), jnp.inf, jnp.maximum(times, t))
        return times, jnp.where(beta > 0, 1, -1).astype(jnp.int32)

    return hits


@functools.partial(jax.jit, static_argnames=("act", "max_crossings"))
def _walk_segment(params, start, end, residual, *, act, max_crossings):
    dtype = jnp.result_type(params.w_in.dtype, start.dtype)
    table = _table(act, dtype)
    d = end - start
    pieces = _entered_pieces(act, table, params, start, d, residual)
    hits = _segment_hits(table, params, start, d, residual)
    one = jnp.ones((), dtype)
    state = _walk(hits, pieces, one, max_crossings, dtype)
    lo, hi, valid = _parameter_gaps(state, one, closed=False)
    speed = jnp.linalg.norm(d)
    gaps = jnp.where(valid, (hi - lo) * speed, jnp.nan)
    return _result(state, gaps, speed)


def _result(state, gaps, length):
    return RegionWalk(
        times=state["times"],
        layer=state["layer"],
        neuron=state["neuron"],
        counts=state["counts"],
        count=state["n"],
        truncated=state["truncated"],
        gaps=gaps,
        length=length,
    )


def _ellipse_hits(table, params, c, u, v, residual, dtype):
    const = params.w_in @ c + params.b_in
    dirs = jnp.stack([params.w_in @ u, params.w_in @ v])
    lower, upper = table[2], table[3]
    two_pi = jnp.asarray(2 * math.pi, dtype)
    # Roots solved a little before t by rounding are crossings at t.
    tol = jnp.asarray(64 * jnp.finfo(dtype).eps * 2 * math.pi, dtype)

    def next_root(root, t):
        root = t + jnp.mod(root - t + tol, two_pi) - tol
        return jnp.maximum(root, t)

    def hits(pieces, t):
        alpha, dz = _affine_layers(table, params, pieces, const, dirs, residual)
        beta, gamma = dz[:, 0], dz[:, 1]
        # z(t) = alpha + r cos(t - psi).
        r = jnp.hypot(beta, gamma)
        psi = jnp.arctan2(gamma, beta)
        safe_r = jnp.where(r > 0, r, jnp.ones_like(r))

        def root(kink, sign):
            # Leaves upwards through the upper kink at psi - theta and
            # downwards through the lower kink at psi + theta.
            h = (kink - alpha) / safe_r
            reach = (r > 0) & (jnp.abs(h) <= 1)
            theta = jnp.arccos(jnp.clip(jnp.where(reach, h, 0.0), -1.0, 1.0))
            return jnp.where(reach, next_root(psi + sign * theta, t), jnp.inf)

        up = root(upper[pieces], -1.0)
        down = root(lower[pieces], 1.0)
        times = jnp.minimum(up, down)
        return times, jnp.where(up <= down, 1, -1).astype(jnp.int32)

    return hits


@functools.partial(jax.jit, static_argnames=("act", "max_crossings"))
def _walk_circle(params, center, u, v, residual, *, act, max_crossings):
    dtype = jnp.result_type(params.w_in.dtype, center.dtype)
    table = _table(act, dtype)
    pieces = _entered_pieces(act, table, params, center + u, v, residual)
    hits = _ellipse_hits(table, params, center, u, v, residual, dtype)
    two_pi = jnp.asarray(2 * math.pi, dtype)
    state = _walk(hits, pieces, two_pi, max_crossings, dtype)
    lo, hi, valid = _parameter_gaps(state, two_pi, closed=True)
    # Arc length of each piece by Gauss-Legendre quadrature of the speed
    # |-sin(t) u + cos(t) v|.
    uu, vv, uv = jnp.dot(u, u), jnp.dot(v, v), jnp.dot(u, v)
    nodes = jnp.asarray(_GAUSS_NODES, dtype)
    weights = jnp.asarray(_GAUSS_WEIGHTS, dtype)
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    t = mid[:, None] + half[:, None] * nodes[None]
    sin, cos = jnp.sin(t), jnp.cos(t)
    speed = jnp.sqrt(jnp.maximum(uu * sin**2 - 2 * uv * sin * cos + vv * cos**2, 0))
    arcs = half * jnp.sum(weights[None] * speed, axis=1)
    gaps = jnp.where(valid, arcs, jnp.nan)
    full = jnp.sum(jnp.where(valid, arcs, 0.0))
    return _result(state, gaps, full)


# Checks ------------------------------------------------------------------------


def _piecewise_activation(activation, caller: str) -> Activation:
    act = get_activation(activation)
    if not act.piecewise_linear:
        raise ValueError(
            f"activation: {caller} walks exact linear regions and needs a "
            f"piecewise-linear activation with kinks (relu, leaky_relu, "
            f"hard_tanh); {act.name!r} is smooth: count preactivation zero "
            "crossings on a sampled path instead (actgeo.kernels.zero_crossings)"
        )
    if not act.kinks:
        raise ValueError(
            f"activation: {caller} needs an activation with kinks; {act.name!r} "
            "has none, so the network is affine and has a single linear region"
        )
    return act


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _check_vectors(params, **vectors) -> list[str]:
    problems = check_params(params)
    if problems:
        return problems
    d = params.w_in.shape[1]
    for name, value in vectors.items():
        if jnp.shape(value) != (d,):
            problems.append(
                f"{name}: expected shape (D,) with D = {d} (the first layer's "
                f"fan-in), got {jnp.shape(value)}"
            )
    if problems:
        return problems
    return problems + finite_problems(**vectors)


def _check_count(name: str, value) -> list[str]:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        return [f"{name}: expected a positive integer, got {value!r}"]
    return []


def _check_plane_directions(u, v, names=("u", "v")) -> list[str]:
    """Zero or parallel directions (concrete arrays only)."""
    if not (_is_concrete(u) and _is_concrete(v)):
        return []
    a, b = np.asarray(u, np.float64), np.asarray(v, np.float64)
    problems = []
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    for name, norm in zip(names, (na, nb), strict=True):
        if norm == 0:
            problems.append(f"{name}: expected a nonzero direction, got a zero vector")
    if not problems:
        cosine = abs(float(a @ b)) / (na * nb)
        sine = math.sqrt(max(0.0, 1.0 - min(cosine, 1.0) ** 2))
        if sine < 1e-6:
            problems.append(
                f"{names[0]}, {names[1]}: expected two non-parallel directions, "
                f"got directions at an angle of sine {sine:.2g}"
            )
    return problems


def _raise_if_truncated(walk: RegionWalk, max_crossings: int, caller: str):
    if _is_concrete(walk.truncated) and bool(walk.truncated):
        raise ValueError(
            f"max_crossings: {caller} reached max_crossings={max_crossings} with "
            f"crossings left on the path ({int(walk.count)} recorded, per layer "
            f"{np.asarray(walk.counts).tolist()}); pass a larger max_crossings"
        )


# Public walks ------------------------------------------------------------------


@full_precision
def walk_segment(
    params: MLPParams,
    activation: str | Activation,
    start: jax.Array,
    end: jax.Array,
    *,
    max_crossings: int = 1024,
    residual: float | jax.Array | None = None,
) -> RegionWalk:
    """Exact activation-pattern changes along the segment from ``start`` to ``end``.

    The path is ``x(t) = start + t (end - start)``, ``t in [0, 1]``; ``times``
    are values of ``t`` and ``gaps`` are lengths in input space. Pure and
    jit/vmap friendly over members (one network's ``params``); the loop runs
    until the end of the segment or ``max_crossings`` (static), whichever is
    first.

    Args:
      params: one network's parameters (no member axis).
      activation: a piecewise-linear activation with kinks (relu,
        leaky_relu, hard_tanh).
      start, end: ``(D,)`` end points.
      max_crossings: crossings recorded, ``M`` (static).
      residual: residual scale ``alpha`` (traced), or ``None``.

    Raises:
      ValueError: a smooth or kinkless activation, wrong shapes, NaN, a
        zero-length segment, or (called eagerly) more than ``max_crossings``
        crossings on the segment. Under ``jit`` or ``vmap`` the
        ``truncated`` flag reports the last instead.
    """
    act = _piecewise_activation(activation, "walk_segment")
    start, end = jnp.asarray(start), jnp.asarray(end)
    problems = _check_count("max_crossings", max_crossings)
    problems += _check_vectors(params, start=start, end=end)
    problems += check_residual(residual)
    if not problems and _is_concrete(start) and _is_concrete(end):
        if np.array_equal(np.asarray(start), np.asarray(end)):
            problems.append(
                "start, end: expected distinct points, got a zero-length segment"
            )
    if problems:
        raise ValueError("walk_segment: " + "; ".join(problems))
    walk = _walk_segment(
        params, start, end, residual, act=act, max_crossings=int(max_crossings)
    )
    _raise_if_truncated(walk, max_crossings, "walk_segment")
    return walk


@full_precision
def walk_circle(
    params: MLPParams,
    activation: str | Activation,
    center: jax.Array,
    u: jax.Array,
    v: jax.Array,
    *,
    max_crossings: int = 1024,
    residual: float | jax.Array | None = None,
) -> RegionWalk:
    """Exact activation-pattern changes around ``x(t) = center + cos t u + sin t v``.

    ``t in [0, 2 pi]``: a circle of radius ``r`` when ``u``, ``v`` are
    orthogonal with ``|u| = |v| = r``, a great circle when also ``center =
    0`` (Poole et al. 2016), an ellipse otherwise. In a region each
    preactivation is ``alpha + R cos(t - psi)`` and the next crossing solves
    ``R cos(t - psi) = kink - alpha``. ``gaps`` are arc lengths in input space
    (exact for circles, 16-point Gauss-Legendre for ellipses).

    Args:
      params: one network's parameters (no member axis).
      activation: a piecewise-linear activation with kinks.
      center, u, v: ``(D,)``; ``u`` and ``v`` nonzero and not parallel.
      max_crossings: crossings recorded, ``M`` (static).
      residual: residual scale ``alpha`` (traced), or ``None``.

    Raises:
      ValueError: as :func:`walk_segment`, and for zero or parallel ``u``,
        ``v``.
    """
    act = _piecewise_activation(activation, "walk_circle")
    center, u, v = jnp.asarray(center), jnp.asarray(u), jnp.asarray(v)
    problems = _check_count("max_crossings", max_crossings)
    problems += _check_vectors(params, center=center, u=u, v=v)
    problems += check_residual(residual)
    if not problems:
        problems += _check_plane_directions(u, v)
    if problems:
        raise ValueError("walk_circle: " + "; ".join(problems))
    walk = _walk_circle(
        params, center, u, v, residual, act=act, max_crossings=int(max_crossings)
    )
    _raise_if_truncated(walk, max_crossings, "walk_circle")
    return walk


def normalised_changes(walk: RegionWalk, width: int) -> tuple[jax.Array, jax.Array]:
    """Pattern changes per unit length divided by the number of neurons.

    Hanin & Rolnick 2019 normalise the number of regions a line crosses by
    its length and by the network's number of neurons. Works on a walk with
    any leading axes (members, paths).

    Returns:
      ``(..., L)`` per layer, ``counts / (length N)``, and ``(...)`` over the
      whole network, ``count / (length L N)``.
    """
    counts = jnp.asarray(walk.counts)
    length = jnp.asarray(walk.length)[..., None]
    per_layer = counts / (length * width)
    total = jnp.sum(counts, axis=-1) / (length[..., 0] * counts.shape[-1] * width)
    return per_layer, total


# Regions in a plane ------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("act",))
def _plane_maps(params, pieces, center, u, v, residual, *, act):
    """Affine maps of every neuron and output in plane coordinates ``(s, t)``.

    ``pieces (F, L, N)``; returns the constant terms ``(F, L, N)``, the
    ``(s, t)`` slopes ``(F, L, 2, N)`` and, with a readout, the outputs'
    ``(F, K)`` and ``(F, 2, K)``.
    """
    dtype = jnp.result_type(params.w_in.dtype, center.dtype)
    table = _table(act, dtype)
    const = params.w_in @ center + params.b_in
    dirs = jnp.stack([params.w_in @ u, params.w_in @ v])

    def one(p):
        c, d = _affine_layers(table, params, p, const, dirs, residual)
        if params.w_out is None:
            return c, d, None, None
        s, h = table[0][p[-1]], table[1][p[-1]]
        out_c = params.w_out @ (s * c[-1] + h) + params.b_out
        out_d = (s[None] * d[-1]) @ params.w_out.T
        return c, d, out_c, out_d

    return jax.vmap(one)(pieces)


def _clip(verts, labels, a, c, label):
    """Clips a convex polygon to the half-plane ``a . x + c >= 0``.

    ``labels[k]`` names the edge from vertex ``k`` to ``k + 1``; the new edge
    along the clipping line gets ``label``.
    """
    g = verts @ a + c
    out_v, out_l = [], []
    n = len(verts)
    for k in range(n):
        p, q = verts[k], verts[(k + 1) % n]
        gp, gq = g[k], g[(k + 1) % n]
        if gp >= 0:
            out_v.append(p)
            out_l.append(labels[k])
            if gq < 0:
                out_v.append(p + (gp / (gp - gq)) * (q - p))
                out_l.append(label)
        elif gq >= 0:
            out_v.append(p + (gp / (gp - gq)) * (q - p))
            out_l.append(labels[k])
    if len(out_v) < 3:
        return np.zeros((0, 2)), np.zeros((0,), np.int64)
    return np.asarray(out_v), np.asarray(out_l, np.int64)


def _cut(verts, labels, normals, offsets, codes, tol):
    """Clips by every violated half-plane, most violated first."""
    while len(verts):
        values = verts @ normals.T + offsets[None]  # (V, C)
        worst = values.min(axis=0)
        k = int(np.argmin(worst))
        if worst[k] >= -tol:
            break
        verts, labels = _clip(verts, labels, normals[k], offsets[k], codes[k])
    return verts, labels


def _diameter(verts):
    """Largest distance between two vertices of a polygon."""
    if len(verts) < 2:
        return 0.0
    gaps = verts[:, None, :] - verts[None, :, :]
    return float(np.sqrt(np.max(np.sum(gaps**2, axis=-1))))


def _area(verts):
    if len(verts) < 3:
        return 0.0
    x, y = verts[:, 0], verts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _region_constraints(pieces, const, dirs, lower, upper):
    """Half-planes ``normal . (s, t) + offset >= 0`` of one pattern's region.

    Each is scaled to unit normal (its value is a distance in ``(s, t)``);
    its code is ``2 * flat_neuron + side`` (side 1: the upper kink).
    """
    flat_p = pieces.ravel()
    c = const.ravel()
    d = dirs.transpose(0, 2, 1).reshape(-1, 2)  # (L N, 2)
    lo, hi = lower[flat_p], upper[flat_p]
    index = np.arange(flat_p.size)
    has_lo, has_hi = np.isfinite(lo), np.isfinite(hi)
    normals = np.concatenate([d[has_lo], -d[has_hi]])
    offsets = np.concatenate([c[has_lo] - lo[has_lo], hi[has_hi] - c[has_hi]])
    codes = np.concatenate([2 * index[has_lo], 2 * index[has_hi] + 1])
    norm = np.linalg.norm(normals, axis=1)
    moving = norm > 0
    # A point on a kink belongs to the piece on its left (the pattern
    # convention): a constant neuron needs z > lower and z <= upper.
    lower_side = codes % 2 == 0
    if np.any(offsets[~moving] < 0) or np.any(offsets[~moving & lower_side] <= 0):
        return None
    norm = norm[moving]
    return normals[moving] / norm[:, None], offsets[moving] / norm, codes[moving]


def _repair(pieces, const, dirs, kinks):
    """The pattern with constant neurons on their pieces, or ``None`` if it is.

    A neuron whose preactivation does not vary over the plane in this
    pattern (every input to it is on a flat piece, and with no bias: exactly
    at a kink) is on the piece :func:`actgeo.activations.pattern` gives its
    value. Only the first layer with such a mismatch is repaired: later
    layers' maps depend on it.
    """
    flat = ~np.any(dirs != 0, axis=1)  # (L, N)
    if not flat.any():
        return None
    right = np.sum(const[..., None] > kinks, axis=-1)
    wrong = flat & (right != pieces)
    if not wrong.any():
        return None
    layer = int(np.argmax(wrong.any(axis=1)))
    fixed = pieces.copy()
    fixed[layer, wrong[layer]] = right[layer, wrong[layer]]
    return fixed


def _decision_segments(verts, out_c, out_d, tol):
    """Pieces of the argmax readout's boundary inside one region's polygon."""
    k_out = out_c.shape[0]
    segments, classes = [], []
    f = verts @ out_d + out_c[None]  # (V, K)
    for a, b in itertools.combinations(range(k_out), 2):
        g = f[:, a] - f[:, b]
        if g.min() > 0 or g.max() < 0:
            continue
        # The part of the polygon where a and b beat every other class.
        others = [c for c in range(k_out) if c not in (a, b)]
        cell, labels = verts, np.full(len(verts), -1)
        for c in others:
            for w in (a, b):
                normal = out_d[:, w] - out_d[:, c]
                cell, labels = _clip(cell, labels, normal, out_c[w] - out_c[c], -1)
                if not len(cell):
                    break
            if not len(cell):
                break
        if not len(cell):
            continue
        normal = out_d[:, a] - out_d[:, b]
        gc = cell @ normal + (out_c[a] - out_c[b])
        points = []
        n = len(cell)
        for k in range(n):
            gp, gq = gc[k], gc[(k + 1) % n]
            if (gp >= 0) != (gq >= 0):
                p, q = cell[k], cell[(k + 1) % n]
                points.append(p + (gp / (gp - gq)) * (q - p))
        if len(points) == 2 and np.linalg.norm(points[0] - points[1]) > tol:
            segments.append(np.asarray(points))
            classes.append((a, b))
    return segments, classes


def _probe_patterns(params64, act, plane64, residual, st):
    """Activation patterns ``(P, L, N)`` int8 at plane points ``st (P, 2)``."""
    if not len(st):
        return []
    size = len(st)
    padded = np.concatenate([st, np.zeros((_bucket(size) - size, 2))])
    with jax.enable_x64(True):
        center, u, v = plane64
        s, t = jnp.asarray(padded[:, :1]), jnp.asarray(padded[:, 1:])
        x = center[None] + s * u[None] + t * v[None]
        z = preactivations(params64, x, act, residual=residual)
        pieces = np.asarray(pattern(act, z), np.int8)[:, :size]
    return list(np.transpose(pieces, (1, 0, 2)))


_SEED_GRID = 8  # seeds per side of the square, besides its center


def _bucket(size: int) -> int:
    return max(8, 1 << (size - 1).bit_length())


@full_precision
def count_regions_2d(
    params: MLPParams,
    activation: str | Activation,
    center: jax.Array,
    u: jax.Array,
    v: jax.Array,
    extent: float,
    *,
    max_regions: int = 20_000,
    residual: float | None = None,
) -> PlaneRegions:
    """The exact partition of a square of a plane into linear regions.

    The square is ``{center + s u + t v : |s|, |t| <= extent}``. Starting
    from the regions of ``center`` and of an 8 x 8 grid of points, a
    breadth-first search visits regions
    across their edges: a region's pattern makes every preactivation affine
    in ``(s, t)``, its polygon is the square cut by the half-planes that keep
    each neuron on its piece, and crossing the edge drawn by neuron ``i``
    gives the neighbour's pattern (that neuron on the next piece; every other
    neuron is strictly inside its piece at an edge's interior; a neuron
    that is constant over a region is put on the piece its value gives). The
    affine maps of each BFS frontier are computed in one batched JAX call in
    float64, whatever the parameters' dtype, and the clipping runs in float64
    NumPy. Polygons thinner than ``1e-12 extent`` (area over diameter) are
    dropped as rounding: coincident boundaries, as with zero biases, leave
    slivers ~1e-15 wide, while genuine regions keep their width however
    large the square.
    Eager only (not jit/vmap-able).

    With a readout (``params.w_out``), the boundary of ``argmax_k f_k`` is
    affine in each region, and its segments are returned (every pair of
    classes where both beat the rest).

    Args:
      params: one network's parameters (no member axis).
      activation: a piecewise-linear activation with kinks.
      center, u, v: ``(D,)``; ``u`` and ``v`` nonzero and not parallel.
      extent: half the side of the square, ``> 0``, in units of ``u``, ``v``.
      max_regions: stop with an error past this many regions.
      residual: residual scale ``alpha``, or ``None``.

    Raises:
      ValueError: a smooth or kinkless activation, wrong shapes, NaN, zero
        or parallel directions, a non-positive extent, or more than
        ``max_regions`` regions.
    """
    act = _piecewise_activation(activation, "count_regions_2d")
    center, u, v = jnp.asarray(center), jnp.asarray(u), jnp.asarray(v)
    problems = _check_count("max_regions", max_regions)
    problems += _check_vectors(params, center=center, u=u, v=v)
    problems += check_residual(residual)
    if not problems:
        problems += _check_plane_directions(u, v)
    if not positive_number(extent):
        problems.append(f"extent: expected a positive finite number, got {extent!r}")
    if problems:
        raise ValueError("count_regions_2d: " + "; ".join(problems))

    extent = float(extent)
    _, _, lower, upper = (np.asarray(t, np.float64) for t in _piece_table(act))
    kinks = np.asarray(act.kinks, np.float64)
    # The maps are evaluated in float64, so that the lines neighbouring
    # regions share agree to rounding far below any region's size.
    with jax.enable_x64(True):
        params64 = jax.tree.map(
            lambda a: jnp.asarray(np.asarray(a), jnp.float64), params
        )
        plane64 = tuple(jnp.asarray(np.asarray(a), jnp.float64) for a in (center, u, v))
    # The search starts from the regions of the center and of a grid of cell
    # centres: a center on a boundary (with zero biases every first-layer
    # boundary passes through the origin) has a pattern whose region may be
    # a single point.
    grid = (np.arange(_SEED_GRID) + 0.5) / _SEED_GRID * 2.0 - 1.0
    cells = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    seeds = np.concatenate([np.zeros((1, 2)), extent * cells])
    starts = _probe_patterns(params64, act, plane64, residual, seeds)
    square = extent * np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    square_labels = np.full(4, -1, np.int64)
    tol = 1e-12 * extent
    probe_step = 1e-8 * extent

    seen, frontier = set(), []
    for start in starts:
        if start.tobytes() not in seen:
            seen.add(start.tobytes())
            frontier.append(start)
    polygons, edge_layers, patterns, areas = [], [], [], []
    decision, decision_classes = [], []
    width = frontier[0].shape[1]
    while frontier:
        size = len(frontier)
        batch = np.stack(frontier + [frontier[0]] * (_bucket(size) - size))
        with jax.enable_x64(True):
            maps = _plane_maps(
                params64, jnp.asarray(batch, jnp.int32), *plane64, residual, act=act
            )
        const, dirs, out_c, out_d = (
            None if m is None else np.asarray(m, np.float64)[:size] for m in maps
        )
        next_frontier, probes = [], [np.zeros((0, 2))]
        for f, pieces in enumerate(frontier):
            repaired = _repair(pieces, const[f], dirs[f], kinks)
            if repaired is not None:
                # A neuron constant over the region sits on the piece its
                # value gives, not the one the flip across an edge kept.
                key = repaired.tobytes()
                if key not in seen:
                    seen.add(key)
                    next_frontier.append(repaired)
                continue
            cut = _region_constraints(pieces, const[f], dirs[f], lower, upper)
            if cut is None:
                continue
            verts, labels = _cut(square, square_labels, *cut, tol)
            area = _area(verts)
            # Slivers between boundaries that coincide up to rounding are
            # thinner than the tolerance; a genuine region, however small
            # against the square, is not (its width, area over diameter, is
            # set by the network, not by rounding).
            if area <= 0 or area <= tol * _diameter(verts):
                continue
            polygons.append(verts)
            edge_layers.append(np.where(labels >= 0, (labels // 2) // width, -1))
            patterns.append(pieces)
            areas.append(area)
            if out_c is not None:
                segs, pairs = _decision_segments(verts, out_c[f], out_d[f], tol)
                decision += segs
                decision_classes += pairs
            inner = np.flatnonzero(labels >= 0)
            for code in labels[inner]:
                flat, side = divmod(int(code), 2)
                neighbour = pieces.copy()
                neighbour.reshape(-1)[flat] += 1 if side else -1
                key = neighbour.tobytes()
                if key not in seen:
                    seen.add(key)
                    next_frontier.append(neighbour)
            # Where boundaries coincide, crossing an edge flips several
            # neurons: the pattern just beyond each edge's midpoint finds
            # that neighbour too (polygons are counter-clockwise).
            p, q = verts[inner], np.roll(verts, -1, axis=0)[inner]
            outward = np.stack([q[:, 1] - p[:, 1], p[:, 0] - q[:, 0]], axis=1)
            length = np.linalg.norm(outward, axis=1, keepdims=True)
            keep = length[:, 0] > tol
            outward = outward[keep] / length[keep]
            probes.append(0.5 * (p + q)[keep] + probe_step * outward)
        for neighbour in _probe_patterns(
            params64, act, plane64, residual, np.concatenate(probes)
        ):
            key = neighbour.tobytes()
            if key not in seen:
                seen.add(key)
                next_frontier.append(neighbour)
        if len(polygons) + len(next_frontier) > max_regions:
            raise ValueError(
                f"count_regions_2d: more than max_regions={max_regions} linear "
                f"regions in the square ({len(polygons)} found, "
                f"{len(next_frontier)} more queued); pass a larger max_regions "
                "or a smaller extent"
            )
        frontier = next_frontier

    covered = float(np.sum(areas)) / (2 * extent) ** 2
    if abs(covered - 1.0) > 1e-6:
        warnings.warn(
            f"count_regions_2d: the regions found cover {covered:.9f} of the "
            "square, not all of it; boundaries that coincide exactly can hide "
            "regions from the search, so the count may be off",
            RuntimeWarning,
            stacklevel=2,
        )
    return PlaneRegions(
        count=len(polygons),
        polygons=polygons,
        edge_layers=edge_layers,
        patterns=np.stack(patterns),
        areas=np.asarray(areas),
        decision=np.asarray(decision).reshape(-1, 2, 2),
        decision_classes=np.asarray(decision_classes, np.int64).reshape(-1, 2),
        extent=extent,
    )
