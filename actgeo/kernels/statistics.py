"""Per-layer statistics of one network, streamed through depth.

For every layer ``l`` this computes, without keeping any layer's per-neuron
arrays:

* ``delta_in``: distance from ``x`` to each neuron's boundary in input space,
  ``|z_i^l(x)| / |J_i^l(x)|`` (first order; exact inside a linear region of a
  piecewise-linear network);
* ``delta_rep``: the same in representation space, ``|z_i^l| / |W_i^l|``,
  the distance from ``phi(z^(l-1))`` to the neuron's hyperplane (for residual
  layers, ``|z_i^l| / (alpha |W_i^l|)``, the skip term counting as offset);
* ``region``: distance to the boundary of the current linear region, the
  minimum of ``delta_in`` over all neurons of layers ``1..l``;
* ``q``: ``|z^l|^2 / N`` averaged over inputs (Poole et al. 2016);
* ``correlation``: ``c^l`` between consecutive input pairs ``(0, 1), (2, 3),
  ...``, averaged over pairs;
* ``log10_jacobian_norm``: ``log10 |J^l|_F``, averaged over inputs;
* ``saturated``: fraction of units whose slope is under 1% of the
  activation's peak slope (for relu, the inactive units);
* ``retention_first`` and ``retention_target``: held-out R^2 of a ridge probe
  from ``phi(z^l)`` to the first layer's signed distances
  ``z_i^1 / |W_i^1|`` and to a given target (see :mod:`.probe`).

Distances are summarized in ``log10`` as histograms and counts
(:mod:`.histogram`), computed in log space so that they neither overflow nor
underflow; a zero gradient gives ``+inf``, counted in ``n_inf``.

Two entry points give the same numbers: :func:`layer_statistics` for an MLP's
parameters (forward-mode Jacobians, ``lax.scan`` over layers) and
:func:`measure_function` for any function returning per-layer preactivations,
such as a user's own JAX or Flax model (Jacobians by ``jax.jacfwd``, layers
unrolled).

Axis letters: ``B`` inputs whose Jacobians are propagated, ``P`` probe inputs
(forward only), ``D`` input dimension, ``N`` width, ``L`` layers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from actgeo.activations import Activation, get_activation
from actgeo.kernels import _norms
from actgeo.kernels.forward import (
    _first_layer,
    check_params,
    finite_problems,
    step_columns,
    step_values,
)
from actgeo.kernels.histogram import (
    Bins,
    LogSummary,
    summarize_without_counts,
)
from actgeo.kernels.probe import r2_score, ridge_predictions
from actgeo.networks import MLPParams
from actgeo.precision import full_precision


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """Static settings of the statistics (hashable; part of the compiled shape).

    Attributes:
      bins: histogram bins of log10 distance.
      ridge: probe penalty relative to the features' variance.
      train_fraction: share of probe inputs that fit the probe (the first
        ones); the rest score it.
    """

    bins: Bins = dataclasses.field(default_factory=Bins)
    ridge: float = 0.1
    train_fraction: float = 0.5

    def __post_init__(self):
        if not (self.ridge > 0 and math.isfinite(self.ridge)):
            raise ValueError(f"StatsConfig: ridge must be positive, got {self.ridge}")
        if not 0 < self.train_fraction < 1:
            raise ValueError(
                "StatsConfig: train_fraction must lie in (0, 1), got "
                f"{self.train_fraction}"
            )

    def n_train(self, n_probe: int) -> int:
        return round(self.train_fraction * n_probe)


class LayerStats(NamedTuple):
    """Per-layer statistics of one network (leading axis ``L``).

    A member axis ``E`` comes first when vmapped. ``retention_first`` and
    ``retention_target`` are ``None`` when no probe inputs (or no target) were
    given; ``delta_rep`` is ``None`` when a generic function gave no weight
    norms.
    """

    q: jax.Array
    correlation: jax.Array
    log10_jacobian_norm: jax.Array
    saturated: jax.Array
    retention_first: jax.Array | None
    retention_target: jax.Array | None
    delta_in: LogSummary
    delta_rep: LogSummary | None
    region: LogSummary


def _pair_correlation(z: jax.Array) -> jax.Array:
    """Mean cosine between rows ``(0, 1), (2, 3), ...`` of ``z (P, N)``."""
    n_pairs = z.shape[0] // 2
    if n_pairs == 0:
        return jnp.ones((), z.dtype)
    norms = _norms.norm(z, axis=-1)
    unit = z / jnp.where(norms != 0, norms, jnp.ones_like(norms))[:, None]
    a, b = unit[0 : 2 * n_pairs : 2], unit[1 : 2 * n_pairs : 2]
    return jnp.mean(jnp.sum(a * b, axis=-1))


def _retention(act, config, zp, first_distances, target):
    """``retention_first`` and ``retention_target`` of one layer (or ``None``)."""
    retention_first = retention_target = None
    if first_distances is not None:
        # One fit serves both targets: they share the features.
        n_train = config.n_train(zp.shape[0])
        targets = first_distances
        if target is not None:
            targets = jnp.concatenate([first_distances, target[:, None]], axis=1)
        pred = ridge_predictions(act.fn(zp), targets, n_train, config.ridge)
        n_first = first_distances.shape[1]
        truth = targets[n_train:]
        retention_first = r2_score(truth[:, :n_first], pred[:, :n_first])
        if target is not None:
            retention_target = r2_score(truth[:, n_first:], pred[:, n_first:])
    return retention_first, retention_target


def _layer_summary(
    act: Activation,
    config: StatsConfig,
    z: jax.Array,
    j: jax.Array,
    log_row_norm: jax.Array | None,
    region_prev: jax.Array,
    zp: jax.Array,
    first_distances: jax.Array | None,
    target: jax.Array | None,
):
    """Statistics of one layer, shared by both entry points.

    Shapes: ``z (B, N)``, ``j (B, N, D)``, ``log_row_norm (N,)`` (log10 of the
    representation-space scale of each neuron), ``region_prev (B,)`` (log10),
    ``zp (P, N)``, ``first_distances (P, N)``, ``target (P,)``.

    Returns the layer's :class:`LayerStats` with ``counts`` left ``None``, the
    region distance to carry, and the log10 distances of the three kinds
    (``delta_rep`` ``None`` without row norms) for the histogram buffer.
    """
    bins = config.bins
    log_z = _norms.log10_abs(z)
    log_in = _norms.log10_ratio(z, j, axis=-1, log_abs_a=log_z)
    region = jnp.minimum(region_prev, jnp.min(log_in, axis=-1))
    log_rep = delta_rep = None
    if log_row_norm is not None:
        log_rep = log_z - log_row_norm[None]
        # A neuron with all-zero weights has no hyperplane: infinite distance.
        log_rep = jnp.where(jnp.isneginf(log_row_norm)[None], jnp.inf, log_rep)
        delta_rep = summarize_without_counts(log_rep, bins)
    n = z.shape[-1]
    q = jnp.mean(_norms.norm(zp, axis=-1) ** 2) / n
    log_jac = jnp.mean(_norms.log10_norm(j.reshape(j.shape[0], -1), axis=-1))
    saturated = jnp.mean(act.saturated(zp).astype(zp.dtype))
    retention_first, retention_target = _retention(
        act, config, zp, first_distances, target
    )
    stats = LayerStats(
        q=q,
        correlation=_pair_correlation(zp),
        log10_jacobian_norm=log_jac,
        saturated=saturated,
        retention_first=retention_first,
        retention_target=retention_target,
        delta_in=summarize_without_counts(log_in, bins),
        delta_rep=delta_rep,
        region=summarize_without_counts(region, bins),
    )
    return stats, region, (log_in, log_rep, region)


def _special_counts(logs, bins: Bins) -> jax.Array:
    """``(kinds, 4)`` int32: ``n_zero``, ``n_inf``, ``n_nan``, ``n_clipped``.

    The fields of :func:`summarize_without_counts` that count, taken by one
    small scatter per kind (values in range are dropped): four reductions
    per kind would cost a kernel launch each.
    """
    out = jnp.zeros((len(logs), 4), jnp.int32)
    for k, v in enumerate(logs):
        finite = jnp.isfinite(v)
        outside = finite & ((v < bins.lo) | (v > bins.hi))
        cls = jnp.where(v == -jnp.inf, 0, 4 * len(logs))
        cls = jnp.where(v == jnp.inf, 1, cls)
        cls = jnp.where(jnp.isnan(v), 2, cls)
        cls = jnp.where(outside, 3, cls)
        flat = out.reshape(-1).at[4 * k + cls]
        out = flat.add(jnp.ones_like(cls), mode="drop").reshape(out.shape)
    return out


def _column_summary(
    act: Activation,
    config: StatsConfig,
    z: jax.Array,
    j: jax.Array,
    log_row_norm: jax.Array,
    region_prev: jax.Array,
    zp: jax.Array | None,
    first_distances: jax.Array | None,
    target: jax.Array | None,
):
    """:func:`_layer_summary` for :func:`layer_statistics`'s column layout.

    Shapes: ``z (N, B)``, ``j (N, D, B)``, ``log_row_norm (N,)``,
    ``region_prev (B,)``, ``zp (P, N)`` or ``None`` (``q`` and the rest are
    then measured on ``z``).

    Returns the layer's statistics packed as ``(floats, ints)`` (see
    :func:`_unpack`), the region distance to carry, and the log10 distances
    of the three kinds for the histogram buffer. The distances are computed
    by the same operations as :func:`_layer_summary`, but XLA fuses and
    orders them per program (the sum of squares over ``D`` above all), so a
    value within float32 rounding of a bin edge may land in the neighbouring
    bin, as it may between a vmapped and a sequential run of either layout.
    The sums over neurons and inputs are taken in another order.
    """
    bins = config.bins
    dtype = z.dtype
    n, b_count = z.shape
    log_z = _norms.log10_abs(z)
    # log10 delta_in by the same operations as _norms.log10_ratio over D, so
    # that every value lands in the same bin. The sum of squares stays a
    # reduction: written out as u0 * u0 + u1 * u1 it may be contracted into a
    # fused multiply-add, which rounds differently.
    # The maximum over D, written across the D slices (exact in any order).
    m = jnp.abs(j[:, 0])
    for d in range(1, j.shape[1]):
        m = jnp.maximum(m, jnp.abs(j[:, d]))
    nonzero = jnp.logical_not(m == 0)
    m_safe = jnp.where(nonzero, m, jnp.ones_like(m))
    u = jnp.where(nonzero[:, None], j / m_safe[:, None], jnp.ones_like(j))
    sum_sq = jnp.sum(u * u, axis=1)
    value = log_z - jnp.log10(m_safe) - jnp.log10(jnp.sqrt(sum_sq))
    log_in = jnp.where(nonzero, value, jnp.full_like(value, jnp.inf))
    log_rep = log_z - log_row_norm[:, None]
    log_rep = jnp.where(jnp.isneginf(log_row_norm)[:, None], jnp.inf, log_rep)

    def finite_sum(v):
        # Over neurons first: one reduction to (B,), not a tree of them.
        finite = jnp.where(jnp.isfinite(v), v, jnp.zeros_like(v))
        return jnp.sum(jnp.sum(finite, axis=0) if v.ndim == 2 else finite)

    region = jnp.minimum(region_prev, jnp.min(log_in, axis=0))
    # |J| of each input from the per-neuron maxima and sums of squares:
    # |J|^2 = sum_i m_i^2 sum_sq_i, scaled by the largest m_i.
    jac_max = jnp.max(m, axis=0)
    jac_nonzero = jnp.logical_not(jac_max == 0)
    jac_safe = jnp.where(jac_nonzero, jac_max, jnp.ones_like(jac_max))
    ratio = jnp.where(nonzero, m_safe / jac_safe[None], jnp.zeros_like(m_safe))
    jac_s = jnp.sqrt(jnp.sum(ratio * ratio * sum_sq, axis=0))
    jac_log = jnp.log10(jac_safe) + jnp.log10(jac_s)
    log_jac = jnp.mean(jnp.where(jac_nonzero, jac_log, -jnp.inf))
    if zp is None:
        z_max = jnp.max(jnp.abs(z), axis=0)
        z_nonzero = jnp.logical_not(z_max == 0)
        z_safe = jnp.where(z_nonzero, z_max, jnp.ones_like(z_max))
        zu = jnp.where(z_nonzero[None], z / z_safe[None], jnp.ones_like(z))
        z_s = jnp.sqrt(jnp.sum(zu * zu, axis=0))
        norms = jnp.where(z_nonzero, z_safe * z_s, jnp.zeros_like(z_safe))
        q = jnp.mean(norms**2) / n
        n_pairs = b_count // 2
        if n_pairs == 0:
            correlation = jnp.ones((), dtype)
        else:
            # cos = (z_a / m_a) . (z_b / m_b) / (s_a s_b); a zero vector's
            # unit vector is zero, as in _pair_correlation.
            a, b = slice(0, 2 * n_pairs, 2), slice(1, 2 * n_pairs, 2)
            dots = jnp.sum(zu[:, a] * zu[:, b], axis=0)
            cos = dots / (z_s[a] * z_s[b])
            correlation = jnp.mean(jnp.where(z_nonzero[a] & z_nonzero[b], cos, 0))
        saturated = jnp.mean(act.saturated(z).astype(dtype))
        retention = (None, None)
    else:
        q = jnp.mean(_norms.norm(zp, axis=-1) ** 2) / n
        correlation = _pair_correlation(zp)
        saturated = jnp.mean(act.saturated(zp).astype(zp.dtype))
        retention = _retention(act, config, zp, first_distances, target)

    floats = [
        q,
        correlation,
        log_jac,
        saturated,
        *(jnp.zeros((), dtype) if r is None else r for r in retention),
        finite_sum(log_in),
        finite_sum(log_rep),
        finite_sum(region),
    ]
    packed = (
        jnp.stack([f.astype(dtype) for f in floats]),
        _special_counts((log_in, log_rep, region), bins).reshape(-1),
    )
    return packed, region, (log_in, log_rep, region)


def _unpack(packed, with_probe: bool, with_target: bool) -> LayerStats:
    """:class:`LayerStats` (counts ``None``) from :func:`_column_summary`'s
    ``(floats (L, 9), ints (L, 12))``."""
    floats, ints = packed

    def summary(k):
        n_zero, n_inf, n_nan, n_clipped = (ints[:, 4 * k + i] for i in range(4))
        return LogSummary(None, floats[:, 6 + k], n_zero, n_inf, n_nan, n_clipped)

    return LayerStats(
        q=floats[:, 0],
        correlation=floats[:, 1],
        log10_jacobian_norm=floats[:, 2],
        saturated=floats[:, 3],
        retention_first=floats[:, 4] if with_probe else None,
        retention_target=floats[:, 5] if with_probe and with_target else None,
        delta_in=summary(0),
        delta_rep=summary(1),
        region=summary(2),
    )


# Histogram buffer: counts (3, L, bins) for delta_in, delta_rep and region.
_KINDS = ("delta_in", "delta_rep", "region")


def _add_counts(counts, layer, logs, bins: Bins, weight):
    """Adds one layer's distances of every kind into the buffer.

    One scatter per kind: joining the kinds' indices into one array makes XLA
    compute them in a concatenation, which it does not vectorize. A value
    that is not finite gets an index past the buffer's end, which the scatter
    drops, so every update is the same ``weight``.
    """
    n_layers = counts.shape[1]
    flat = counts.reshape(-1)
    for k, values in enumerate(logs):
        if values is None:
            continue
        # Kept in the values' shape: a flattening reshape inside the fused
        # index computation stops XLA from vectorizing it.
        finite = jnp.isfinite(values)
        safe = jnp.where(finite, values, jnp.zeros_like(values))
        position = (safe - bins.lo) * (bins.count / (bins.hi - bins.lo))
        index = jnp.clip(jnp.floor(position), 0, bins.count - 1).astype(jnp.int32)
        index = (k * n_layers + layer) * bins.count + index
        index = jnp.where(finite, index, counts.size)
        updates = jnp.broadcast_to(jnp.asarray(weight, counts.dtype), index.shape)
        flat = flat.at[index].add(updates, mode="drop")
    return flat.reshape(counts.shape)


def _with_counts(stats: LayerStats, counts) -> LayerStats:
    fields = {}
    for k, name in enumerate(_KINDS):
        summary = getattr(stats, name)
        if summary is not None:
            fields[name] = summary._replace(counts=counts[k])
    return stats._replace(**fields)


def _empty_counts(n_layers: int, bins: Bins):
    return jnp.zeros((len(_KINDS), n_layers, bins.count), jnp.int32)


def _as_arrays(*arrays):
    return tuple(None if a is None else jnp.asarray(a) for a in arrays)


def _check_inputs(d: int | None, x, probe_x, probe_target, config):
    # d is None when the input dimension is unknown (measure_function given a
    # malformed x); then only the number of axes is checked.
    problems = []
    dim = "D" if d is None else d
    if x.ndim != 2 or (d is not None and x.shape[1] != d) or x.shape[0] == 0:
        problems.append(f"x: expected shape (B, {dim}) with B >= 1, got {x.shape}")
    if probe_x is not None:
        if probe_x.ndim != 2 or (d is not None and probe_x.shape[1] != d):
            problems.append(f"probe_x: expected shape (P, {dim}), got {probe_x.shape}")
        else:
            n_train = config.n_train(probe_x.shape[0])
            if n_train < 2 or probe_x.shape[0] - n_train < 2:
                problems.append(
                    "probe_x: the probe needs at least 2 training and 2 held-out "
                    f"inputs, got {probe_x.shape[0]} inputs split at {n_train}"
                )
        if probe_target is not None and probe_target.shape != probe_x.shape[:1]:
            problems.append(
                f"probe_target: expected shape ({probe_x.shape[0]},) to match "
                f"probe_x, got {probe_target.shape}"
            )
    elif probe_target is not None:
        problems.append("probe_target: given without probe_x")
    problems += finite_problems(x=x, probe_x=probe_x, probe_target=probe_target)
    if problems:
        raise ValueError("; ".join(problems))


@full_precision
def layer_statistics(
    params: MLPParams,
    x: jax.Array,
    activation: str | Activation,
    *,
    probe_x: jax.Array | None = None,
    probe_target: jax.Array | None = None,
    residual: float | jax.Array | None = None,
    config: StatsConfig = StatsConfig(),
    counts: jax.Array | None = None,
    counts_weight: int | jax.Array = 1,
) -> LayerStats:
    """Per-layer statistics of one MLP, streamed through depth.

    Args:
      params: one network's parameters (no member axis).
      x: ``(B, D)`` inputs whose distances are measured (Jacobians propagated).
      activation: registered name or :class:`Activation`.
      probe_x: ``(P, D)`` inputs for ``q``, correlation, saturation and the
        retention probes (forward only); defaults to ``x`` without probes.
      probe_target: ``(P,)`` signed distance of each probe input to a surface
        of known geometry (a sphere, say), for ``retention_target``.
      residual: residual scale ``alpha`` (traced), or ``None``.
      config: static settings.
      counts: ``(3, L, bins)`` int32 histogram counts of ``delta_in``,
        ``delta_rep`` and ``region`` to add this network's values to, so that
        an ensemble run in sequence fills one buffer; zeros by default.
      counts_weight: weight of this network's values in ``counts`` (0 leaves
        the buffer unchanged, as for padding members).

    Returns:
      :class:`LayerStats` with leading axis ``L``; its histogram counts include
      what ``counts`` held. Memory does not grow with depth beyond these
      per-layer summaries.
    """
    act = get_activation(activation)
    x, probe_x, probe_target = _as_arrays(x, probe_x, probe_target)
    if problems := check_params(params):
        raise ValueError("; ".join(problems))
    _check_inputs(params.w_in.shape[-1], x, probe_x, probe_target, config)
    with_probe = probe_x is not None
    n_layers = params.w.shape[0] + 1
    if counts is None:
        counts = _empty_counts(n_layers, config.bins)
    elif counts.shape != (len(_KINDS), n_layers, config.bins.count):
        raise ValueError(
            f"counts: expected shape ({len(_KINDS)}, {n_layers}, "
            f"{config.bins.count}), got {counts.shape}"
        )

    log_alpha = 0.0 if residual is None else jnp.log10(residual)

    # Column layout: z (N, B), j (N, D, B) (see forward.step_columns).
    z1 = _first_layer(params, x).T
    j1 = jnp.broadcast_to(params.w_in[:, :, None], (*params.w_in.shape, x.shape[0]))
    # Without probe inputs, q and the rest are measured on x itself.
    zp1 = _first_layer(params, probe_x) if with_probe else None
    first = None
    if with_probe:
        row_norm = _norms.norm(params.w_in, axis=-1)
        first = zp1 / jnp.where(row_norm != 0, row_norm, jnp.ones_like(row_norm))[None]
    region0 = jnp.full(x.shape[:1], jnp.inf, z1.dtype)
    step = functools.partial(step_columns, act, residual=residual)

    # Step l summarizes layer l, then moves to layer l + 1: the summary is
    # traced once. The last step's move repeats the last layer's weights and
    # is discarded. Each step takes its weights by index rather than as a
    # scanned input (no padded copy of every weight), and carries the log10
    # row norms of the layer it moves to: sliced inside the statistics'
    # fused loops, they made those loops several times slower.
    n = params.w_in.shape[0]
    w_all, b_all = params.w, params.b
    if n_layers == 1:
        w_all = jnp.zeros((1, n, n), params.w.dtype)
        b_all = jnp.zeros((1, n), params.b.dtype)

    log_norms = jnp.concatenate(
        [
            _norms.log10_norm(params.w_in, axis=-1)[None],
            _norms.log10_norm(params.w, axis=-1) + log_alpha,
        ]
    )

    def body(carry, _):
        index, log_norm, z, j, zp, region, counts = carry
        stats, region, logs = _column_summary(
            act, config, z, j, log_norm, region, zp, first, probe_target
        )
        counts = _add_counts(counts, index, logs, config.bins, counts_weight)
        move = jnp.minimum(index, w_all.shape[0] - 1)
        w = jax.lax.dynamic_index_in_dim(w_all, move, keepdims=False)
        b = jax.lax.dynamic_index_in_dim(b_all, move, keepdims=False)
        z, j = step(w, b, z, j)
        if with_probe:
            zp = step_values(act, w, b, zp, residual)
        following = jnp.minimum(index + 1, n_layers - 1)
        log_norm = jax.lax.dynamic_index_in_dim(log_norms, following, keepdims=False)
        return (index + 1, log_norm, z, j, zp, region, counts), stats

    index0 = jnp.zeros((), jnp.int32)
    carry = (index0, log_norms[0], z1, j1, zp1, region0, counts)
    (*_, counts), packed = jax.lax.scan(body, carry, None, length=n_layers)
    stats = _unpack(packed, with_probe, probe_target is not None)
    return _with_counts(stats, counts)


@full_precision
def measure_function(
    fn: Callable[[jax.Array], Sequence[jax.Array]],
    x: jax.Array,
    activation: str | Activation,
    *,
    probe_x: jax.Array | None = None,
    probe_target: jax.Array | None = None,
    row_norms: Sequence[jax.Array] | None = None,
    config: StatsConfig = StatsConfig(),
) -> LayerStats:
    """Per-layer statistics of any model given as per-layer preactivations.

    Args:
      fn: maps one input ``(D,)`` to a sequence of per-layer preactivations
        ``z^l`` of shapes ``(N_l,)``; a closure over a user's JAX or Flax
        model. The layers must have equal widths to be stacked.
      x, probe_x, probe_target, config: as in :func:`layer_statistics`.
      activation: the activation applied to each ``z^l`` (for saturation and
        the probe's features ``phi(z^l)``).
      row_norms: for each layer, ``|dz_i^l / d phi(z^(l-1))|`` per neuron (for
        a dense layer, the norms of its weight matrix's rows; times ``alpha``
        for a residual branch); enables ``delta_rep``. The first layer's entry
        also defines the first-layer signed distances of the probe; without
        it they use the norms of ``dz^1/dx`` at each probe input.

    Returns:
      :class:`LayerStats`, equal to :func:`layer_statistics` on an MLP's
      preactivations and weights up to float rounding (a value on a bin edge
      may land in the neighbouring bin).
    """
    act = get_activation(activation)
    x, probe_x, probe_target = _as_arrays(x, probe_x, probe_target)
    d = x.shape[-1] if x.ndim == 2 else None
    _check_inputs(d, x, probe_x, probe_target, config)
    with_probe = probe_x is not None
    if not with_probe:
        probe_x = x

    def as_tuple(v):
        return tuple(fn(v))

    zs = jax.vmap(as_tuple)(x)
    js = jax.vmap(jax.jacfwd(as_tuple))(x)
    zps = jax.vmap(as_tuple)(probe_x)
    if row_norms is not None and len(row_norms) != len(zs):
        raise ValueError(
            f"row_norms: expected one entry per layer ({len(zs)}), got {len(row_norms)}"
        )
    first = None
    if with_probe:
        if row_norms is not None:
            norm1 = jnp.asarray(row_norms[0])[None, :]
        else:
            j1p = jax.vmap(jax.jacfwd(lambda v: as_tuple(v)[0]))(probe_x)
            norm1 = _norms.norm(j1p, axis=-1)
        first = zps[0] / jnp.where(norm1 != 0, norm1, jnp.ones_like(norm1))
    region = jnp.full(x.shape[:1], jnp.inf, zs[0].dtype)
    counts = _empty_counts(len(zs), config.bins)
    per_layer = []
    for l, (z, j, zp) in enumerate(zip(zs, js, zps, strict=True)):
        log_norm = None
        if row_norms is not None:
            log_norm = _norms.log10_abs(jnp.asarray(row_norms[l]))
        stats, region, logs = _layer_summary(
            act, config, z, j, log_norm, region, zp, first, probe_target
        )
        counts = _add_counts(counts, l, logs, config.bins, 1)
        per_layer.append(stats)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *per_layer)
    return _with_counts(stacked, counts)
