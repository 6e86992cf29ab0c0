"""Singular values of layer-wise input Jacobians, stable at any depth.

``J^l = dz^l/dx`` (``N x D``) is a product of ``l`` factors,
``J^l = A_l ... A_2 W^1`` with ``A_l = W^l diag(phi'(z^(l-1)))`` (or
``I + alpha W^l diag(phi'(z^(l-1)))`` for residual layers). Its singular
values can spread over hundreds of nats at depth 200, far beyond float32's
range (about 190 nats between the smallest normal number and the largest), so
the product is never formed. Instead (Benettin et al. 1980's QR method for
Lyapunov exponents, and the graded ``U D T`` products of Loh et al. 1992):

1. ``J^l = Q_l T_l`` with ``Q_l`` (``N x r``, ``r = min(N, D)``) orthonormal
   columns and ``T_l`` (``r x D``) kept in log-scaled row form
   ``T = diag(exp(g)) M``, ``M`` with unit rows.
2. A layer maps ``A_l Q_(l-1) = Q_l R_l`` (thin QR, computed by the same
   forward step that pushes Jacobians, :func:`.forward.step_with_jacobian`)
   and ``T_l = R_l T_(l-1)``. Row ``i`` of ``R T`` is
   ``exp(h_i) sum_k R_ik exp(g_k - h_i) M_k`` with
   ``h_i = max_k (g_k + log|R_ik|)``: every coefficient is at most 1 in
   size, so nothing overflows; the row is renormalised into ``(g_i, M_i)``
   (a zero row gets ``g = -inf``, without NaN).
3. Rows are kept sorted by ``g`` (largest first), with ``Q``'s columns
   permuted alike. The next unpivoted QR of ``A Q`` then equals the QR of
   ``A Q diag(exp(g))`` (a positive column scaling does not change ``Q``),
   whose columns come in decreasing size: the graded order that column
   pivoting would choose, so row ``i`` of the next ``R T`` is dominated by
   its own diagonal term and the grading is carried without cancellation.
4. The singular values of ``T = diag(exp(g)) M`` come from one-sided
   (Hestenes) Jacobi on its rows, written on the log-scaled rows: a rotation
   of rows ``i, j`` needs only ``exp(-|g_i - g_j|)`` and the cosine
   ``M_i . M_j``, and each new row is formed relative to its own old scale.
   One-sided Jacobi on a row-graded matrix ``diag(exp(g)) M`` returns each
   singular value to a relative error of order ``eps`` times the condition
   number of ``M``, not of ``T`` (Demmel & Veselic 1992, "Jacobi's method is
   more accurate than QR"). Pairs are visited in round-robin order, ``r / 2``
   disjoint rotations at once, sweeps repeated until every cosine is below
   ``sqrt(D) eps`` (at most ``max_sweeps``).

Accuracy. Every step is backward stable per factor, so the result is as
accurate as the factors determine it: for products whose factors stretch the
same directions in the same order (random networks at depth, by Oseledets'
theorem, and the graded products in the tests) the small singular values
come out to high relative accuracy (float32: ``1e-3`` in ``log sigma`` over a
526-nat spread at depth 200; ``2e-2`` for the smallest of a width-256 tanh
network, whose factors have condition numbers near ``N``). Where consecutive
factors stretch opposite orderings, a relative ``eps`` perturbation of a
factor itself moves the small singular values, and no method recovers them.

Zero singular values. A relu network's ``J`` loses rank where units are off;
in exact arithmetic those singular values are 0. Rounding leaves them
tiny-but-finite: about ``eps`` times the scale of the neighbouring
directions, a ``log`` many nats below the non-zero ones, not ``-inf``. Only
structurally zero rows (an all-zero factor) give ``-inf``. The tests compare
non-zero singular values; treat values more than ``log(1/eps)`` below the
next larger one as numerically zero.

Axis letters: ``B`` inputs, ``D`` input dimension, ``N`` width, ``L``
layers, ``K`` selected layers, ``r = min(N, D)`` singular values.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from actgeo.activations import Activation, get_activation
from actgeo.kernels import _norms
from actgeo.kernels.forward import (
    _check,
    _first_layer,
    finite_problems,
    step_with_jacobian,
)
from actgeo.kernels.histogram import Bins, LogSummary, summarize
from actgeo.networks import MLPParams
from actgeo.precision import full_precision

__all__ = [
    "SPECTRUM_BINS",
    "SpectrumSummary",
    "log_singular_values",
    "product_log_singular_values",
    "summarize_spectrum",
]

# log10 sigma from -60 to 60 decades in bins of 0.05 decades.
SPECTRUM_BINS = Bins(-60.0, 60.0, 2400)
_MAX_SWEEPS = 30


def _log_abs(a: jax.Array) -> jax.Array:
    """``log|a|`` with ``-inf`` at zero, never NaN for finite ``a``."""
    abs_a = jnp.abs(a)
    positive = abs_a > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, abs_a, 1)), -jnp.inf)


def _scaled_rows(v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log |v_i|, v_i / |v_i|)`` for the rows of ``v (r, D)``.

    A zero row gives ``-inf`` and a zero unit row.
    """
    n = _norms.norm(v, axis=-1)
    positive = n > 0
    safe = jnp.where(positive, n, jnp.ones_like(n))
    log_n = jnp.where(positive, jnp.log(safe), -jnp.inf)
    return log_n, jnp.where(positive[:, None], v / safe[:, None], jnp.zeros_like(v))


def _sorted(q, g, m):
    """Rows of ``T`` (and columns of ``Q``) ordered by ``g``, largest first."""
    order = jnp.argsort(-g)
    return q[:, order], g[order], m[order]


def _times_triangular(r_factor, g, m):
    """``R diag(exp(g)) M`` in log-scaled row form, for ``R (r, r)``, ``M (r, D)``."""
    log_r = _log_abs(r_factor)
    terms = g[None, :] + log_r
    h = jnp.max(terms, axis=1)
    has_terms = h > -jnp.inf
    h_safe = jnp.where(has_terms, h, jnp.zeros_like(h))
    coef = jnp.sign(r_factor) * jnp.exp(terms - h_safe[:, None])
    log_n, m_new = _scaled_rows(coef @ m)
    return jnp.where(has_terms, h + log_n, -jnp.inf), m_new


def _round_robin(r: int) -> tuple[np.ndarray, np.ndarray]:
    """Round-robin pairings of ``r`` (even) rows: ``(r - 1, r / 2)`` each side.

    Every pair of rows meets once in ``r - 1`` rounds; the pairs of a round
    are disjoint, so their rotations run at once.
    """
    players = list(range(r))
    tops, bots = [], []
    for _ in range(r - 1):
        tops.append(players[: r // 2])
        bots.append(players[r // 2 :][::-1])
        players = [players[0], players[-1], *players[1:-1]]
    return np.asarray(tops, np.int32), np.asarray(bots, np.int32)


def _rotate(gi, gj, mi, mj):
    """One Hestenes rotation of rows ``exp(gi) mi``, ``exp(gj) mj`` (batched).

    With ``d = g_i - g_j``, ``rho = exp(-|d|)`` and cosine ``c = m_i . m_j``,
    the angle's tangent ``t`` solves ``t^2 + 2 zeta t - 1 = 0`` with
    ``zeta = -sinh(d) / c``; written through ``rho`` it is
    ``|t| = rho tau`` with ``tau = 2|c| / ((1 - rho^2) + sqrt((1 - rho^2)^2
    + 4 rho^2 c^2))``, bounded, so no ``exp(|d|)`` is formed. New rows:
    ``a_i' = exp(g_i) (cs m_i - s exp(g_j - g_i) m_j)`` and
    ``a_j' = exp(g_j) (cs m_j + s exp(g_i - g_j) m_i)``, where
    ``s exp(+-|d|)`` is ``cs sign(t) tau`` or ``cs sign(t) rho^2 tau``.
    """
    cos = jnp.sum(mi * mj, axis=-1)
    # -inf rows (m = 0) have cos = 0; a floor keeps d finite for them.
    floor = jnp.asarray(-1e30, gi.dtype)
    d = jnp.maximum(gi, floor) - jnp.maximum(gj, floor)
    rho = jnp.exp(-jnp.abs(d))
    one_minus = -jnp.expm1(-2.0 * jnp.abs(d))
    den = one_minus + jnp.sqrt(one_minus**2 + 4.0 * (rho * cos) ** 2)
    den = jnp.where(den > 0, den, jnp.ones_like(den))
    tau = 2.0 * jnp.abs(cos) / den
    one = jnp.ones_like(cos)
    sign = jnp.where(d > 0, -one, one) * jnp.where(cos < 0, -one, one)
    t = sign * rho * tau
    cs = jax.lax.rsqrt(1.0 + t * t)
    big, small = cs * sign * tau, cs * sign * rho * rho * tau
    # f_i multiplies m_j in row i: s exp(g_j - g_i); f_j: s exp(g_i - g_j).
    f_i = jnp.where(d >= 0, small, big)
    f_j = jnp.where(d >= 0, big, small)
    vi = cs[:, None] * mi - f_i[:, None] * mj
    vj = cs[:, None] * mj + f_j[:, None] * mi
    log_i, mi = _scaled_rows(vi)
    log_j, mj = _scaled_rows(vj)
    off = jnp.max(jnp.abs(cos))
    return gi + log_i, gj + log_j, mi, mj, off


def _jacobi(g: jax.Array, m: jax.Array, max_sweeps: int) -> jax.Array:
    """Log singular values of ``diag(exp(g)) M`` (``M (r, D)``), descending."""
    r, dim = m.shape
    if r == 1:
        return g
    padded = r + r % 2
    if padded != r:
        g = jnp.concatenate([g, jnp.full((1,), -jnp.inf, g.dtype)])
        m = jnp.concatenate([m, jnp.zeros((1, dim), m.dtype)])
    tops, bots = (jnp.asarray(a) for a in _round_robin(padded))
    tol = math.sqrt(dim) * float(jnp.finfo(m.dtype).eps)

    def one_round(carry, pair):
        g, m, off = carry
        top, bot = pair
        gi, gj, mi, mj, o = _rotate(g[top], g[bot], m[top], m[bot])
        g = g.at[top].set(gi).at[bot].set(gj)
        m = m.at[top].set(mi).at[bot].set(mj)
        return (g, m, jnp.maximum(off, o)), None

    def sweep(state):
        g, m, _, count = state
        zero = jnp.zeros((), m.dtype)
        (g, m, off), _ = jax.lax.scan(one_round, (g, m, zero), (tops, bots))
        return g, m, off, count + 1

    def more(state):
        _, _, off, count = state
        # NaN never compares above tol: a NaN matrix stops at once.
        return (off > tol) & (count < max_sweeps)

    inf = jnp.full((), jnp.inf, m.dtype)
    g, _, _, _ = jax.lax.while_loop(more, sweep, (g, m, inf, jnp.zeros((), jnp.int32)))
    return jnp.sort(g)[::-1][:r]


def _first(factor: jax.Array):
    """``(Q, g, M)`` of ``J^1 = factor`` (``N x D``), rows sorted."""
    q, r_factor = jnp.linalg.qr(factor)
    g, m = _scaled_rows(r_factor)
    return _sorted(q, g, m)


def _advance(aq: jax.Array, g, m):
    """``(Q, g, M)`` after one layer, from ``A Q_(l-1)`` (``N x r``)."""
    q, r_factor = jnp.linalg.qr(aq)
    g, m = _times_triangular(r_factor, g, m)
    return _sorted(q, g, m)


def _through_depth(carry, state, step, xs, layers, max_sweeps):
    """Log singular values at the selected layers: ``(K, r)``.

    ``state = (Q, g, M)`` of layer 1; ``step(carry, x_l, Q) -> (carry, A Q)``
    applies layer ``l``'s factor with ``x_l``, the ``l - 2``-th slice of
    ``xs``. ``layers=None`` takes every layer in one scan; a tuple scans from
    one selected layer to the next, so the program grows with the number of
    selected layers, never with depth.
    """

    def body(c, x):
        carry, (q, g, m) = c
        carry, aq = step(carry, x, q)
        return (carry, _advance(aq, g, m)), None

    def body_all(c, x):
        c, _ = body(c, x)
        return c, _jacobi(c[1][1], c[1][2], max_sweeps)

    if layers is None:
        first = _jacobi(state[1], state[2], max_sweeps)
        _, rest = jax.lax.scan(body_all, (carry, state), xs)
        return jnp.concatenate([first[None], rest], axis=0)
    out = []
    position = 1
    c = (carry, state)
    for layer in layers:
        if layer > position:
            segment = jax.tree.map(lambda a, p=position, e=layer: a[p - 1 : e - 1], xs)
            c, _ = jax.lax.scan(body, c, segment)
            position = layer
        out.append(_jacobi(c[1][1], c[1][2], max_sweeps))
    return jnp.stack(out)


def _check_layers(layers, depth: int) -> tuple[int, ...] | None:
    if layers is None:
        return None
    if isinstance(layers, np.ndarray) and layers.ndim == 1:
        layers = tuple(layers.tolist())
    values = tuple(layers) if isinstance(layers, Sequence) else (layers,)
    ok = all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values
    )
    if not ok or not values:
        raise ValueError(
            "layers: expected None or a non-empty tuple of layer numbers, got "
            f"{layers!r}"
        )
    values = tuple(int(v) for v in values)
    if any(v < 1 or v > depth for v in values) or any(
        b <= a for a, b in itertools.pairwise(values)
    ):
        raise ValueError(
            f"layers: expected strictly increasing layer numbers in 1..{depth} "
            f"(the network's depth), got {values}"
        )
    return values


def _check_sweeps(max_sweeps) -> None:
    if not (isinstance(max_sweeps, int) and max_sweeps >= 1):
        raise ValueError(f"max_sweeps: expected a positive int, got {max_sweeps!r}")


@full_precision
def log_singular_values(
    params: MLPParams,
    x: jax.Array,
    activation: str | Activation,
    *,
    residual: float | jax.Array | None = None,
    layers: Sequence[int] | None = None,
    max_sweeps: int = _MAX_SWEEPS,
) -> jax.Array:
    """Natural-log singular values of ``J^l = dz^l/dx`` at every input.

    Args:
      params: one network's parameters (no member axis; vmap over members).
      x: ``(B, D)`` inputs.
      activation: registered name or :class:`~actgeo.activations.Activation`.
      residual: residual scale ``alpha`` of layers ``2..L`` (traced), or
        ``None``.
      layers: ``None`` for every layer ``1..L``, or a static strictly
        increasing tuple of layer numbers (1-based) to return; the Jacobi
        step then runs only there.
      max_sweeps: cap on the Jacobi sweeps (static).

    Returns:
      ``(K, B, r)`` with ``K = L`` or ``len(layers)`` and ``r = min(N, D)``,
      each row sorted in descending order; ``-inf`` for exact zeros (see the
      module's note on rank loss). The dtype is the parameters'.

    Raises:
      ValueError: wrong shapes, NaN or inf in ``x`` or the first layer's
        weights (eagerly), layers out of range.
    """
    act = get_activation(activation)
    x = jnp.asarray(x)
    _check(params, x, residual)
    depth = params.w.shape[0] + 1
    layers = _check_layers(layers, depth)
    _check_sweeps(max_sweeps)
    state = _first(params.w_in)
    z1 = _first_layer(params, x)

    def step(z, layer, q):
        return step_with_jacobian(act, layer[0], layer[1], z, q, residual)

    def one_input(z):
        return _through_depth(z, state, step, (params.w, params.b), layers, max_sweeps)

    return jnp.moveaxis(jax.vmap(one_input)(z1), 0, 1)


@full_precision
def product_log_singular_values(
    first: jax.Array,
    rest: jax.Array,
    *,
    layers: Sequence[int] | None = None,
    max_sweeps: int = _MAX_SWEEPS,
) -> jax.Array:
    """Log singular values of the partial products ``A_l ... A_2 A_1``.

    The same algorithm as :func:`log_singular_values`, for explicit factors:
    ``A_1 = first`` (``N x D``) and ``A_l = rest[l - 2]`` (``N x N``).

    Args:
      first: ``(N, D)``.
      rest: ``(L - 1, N, N)`` (``L - 1`` may be 0).
      layers: as in :func:`log_singular_values`.

    Returns:
      ``(K, r)``, descending, ``r = min(N, D)``.
    """
    first, rest = jnp.asarray(first), jnp.asarray(rest)
    problems = []
    if first.ndim != 2 or 0 in first.shape:
        problems.append(f"first: expected shape (N, D), got {first.shape}")
    elif rest.ndim != 3 or rest.shape[1:] != (first.shape[0],) * 2:
        n = first.shape[0]
        problems.append(f"rest: expected shape (L-1, {n}, {n}), got {rest.shape}")
    problems += finite_problems(first=first, rest=rest)
    if problems:
        raise ValueError("; ".join(problems))
    depth = rest.shape[0] + 1
    layers = _check_layers(layers, depth)
    _check_sweeps(max_sweeps)

    def step(carry, a, q):
        return carry, a @ q

    return _through_depth(jnp.zeros(()), _first(first), step, rest, layers, max_sweeps)


class SpectrumSummary(NamedTuple):
    """Moments and a histogram of one or many Jacobian spectra (leading axes free).

    The eigenvalues are those of ``J J^T`` (``N x N``), ``lambda = sigma^2``;
    moments count all ``N`` of them, including the ``N - r`` structural zeros
    when ``N > D`` (Pennington et al. 2017's normalisation, ``tr / N``).

    Attributes:
      log_mean: ``log`` of the mean eigenvalue ``tr(J J^T) / N`` (finite where
        the mean itself overflows).
      mean: the mean eigenvalue.
      normalized_variance: ``var(lambda) / mean^2``, computed from
        ``lambda / mean`` (no overflow, no cancellation).
      variance: ``var(lambda)`` over the ``N`` eigenvalues.
      log_condition: ``log(sigma_max / sigma_min)`` over the ``r`` singular
        values (``+inf`` with an exact zero).
      log10_sigma: :class:`~actgeo.kernels.histogram.LogSummary` of
        ``log10 sigma`` over the ``r`` singular values (counts ``(..., bins)``;
        sum them over inputs and members for an ensemble's density).
    """

    log_mean: jax.Array
    mean: jax.Array
    normalized_variance: jax.Array
    variance: jax.Array
    log_condition: jax.Array
    log10_sigma: LogSummary


def summarize_spectrum(
    log_sv: jax.Array, width: int, bins: Bins = SPECTRUM_BINS
) -> SpectrumSummary:
    """Moments and histogram of spectra given as log singular values.

    Args:
      log_sv: ``(..., r)`` natural-log singular values (as returned by
        :func:`log_singular_values`).
      width: ``N``, the number of eigenvalues of ``J J^T`` (``>= r``).
      bins: histogram bins of ``log10 sigma`` (static).

    Returns:
      :class:`SpectrumSummary` with leading axes ``(...)``.
    """
    log_sv = jnp.asarray(log_sv)
    if log_sv.ndim < 1 or log_sv.shape[-1] == 0:
        raise ValueError(
            "log_sv: expected log singular values of shape (..., r) with r >= 1, "
            f"got shape {log_sv.shape}"
        )
    r = log_sv.shape[-1]
    if not isinstance(log_sv, jax.core.Tracer) and r > 1:
        with np.errstate(invalid="ignore"):
            steps = np.diff(np.asarray(log_sv), axis=-1)
        rising = np.isfinite(steps) & (steps > 0)
        if rising.any():
            raise ValueError(
                "log_sv: expected values sorted in descending order along the "
                "last axis (as log_singular_values returns them)"
            )
    if not (isinstance(width, int | np.integer) and width >= r):
        raise ValueError(
            f"width: expected an int N >= r = {r} (the number of eigenvalues of "
            f"J J^T), got {width!r}"
        )
    log_lam = 2.0 * log_sv
    log_mean = jax.scipy.special.logsumexp(log_lam, axis=-1) - math.log(width)
    finite_mean = jnp.isfinite(log_mean)
    shift = jnp.where(finite_mean, log_mean, jnp.zeros_like(log_mean))
    ratio = jnp.exp(log_lam - shift[..., None])
    zeros = width - r
    v = (jnp.sum((ratio - 1.0) ** 2, axis=-1) + zeros) / width
    v = jnp.where(finite_mean, v, jnp.full_like(v, jnp.nan))
    mean = jnp.exp(log_mean)
    # An exact zero singular value (log -inf) makes the condition number
    # infinite, also when every value is zero.
    log_cond = jnp.where(
        jnp.isneginf(log_sv[..., -1]),
        jnp.inf,
        log_sv[..., 0] - log_sv[..., -1],
    )
    counts_shape = log_sv.shape[:-1]
    flat = log_sv.reshape(-1, r) / math.log(10.0)
    hist = jax.vmap(lambda row: summarize(row, bins))(flat)
    hist = jax.tree.map(lambda a: a.reshape(*counts_shape, *a.shape[1:]), hist)
    return SpectrumSummary(
        log_mean=log_mean,
        mean=mean,
        normalized_variance=v,
        variance=v * mean * mean,
        log_condition=log_cond,
        log10_sigma=hist,
    )
