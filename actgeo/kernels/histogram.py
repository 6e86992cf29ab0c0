"""Streaming summaries of log10 distances: fixed-bin histograms and counts.

Exact quantiles need a sort, which is slow on the CPU and keeps every value in
memory; a histogram of ``log10`` distance over fixed bins can be summed over
inputs, members, chunks and devices in any order (integer counts), and its
quantiles, interpolated inside a bin, land within a bin width of the exact
ones. The default, 8192 bins over ``[-48, 48]`` decades (bins of 0.0117
decades), spans every finite float32 distance: a ratio of float32 numbers
lies within about 10^+-45.

Values that are not finite are counted, not binned: ``-inf`` (distance 0, a
point on the boundary) in ``n_zero`` and ``+inf`` (zero gradient: no boundary
within reach) in ``n_inf``, and NaN (a NaN input, or a forward pass that
overflowed) in ``n_nan``. Finite values outside the range go into the edge
bins and are counted in ``n_clipped``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Bins:
    """Fixed histogram bins over ``[lo, hi]`` in log10 units."""

    lo: float = -48.0
    hi: float = 48.0
    count: int = 8192

    def __post_init__(self):
        if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(f"Bins: expected finite lo < hi, got {self.lo}, {self.hi}")
        if int(self.count) != self.count or self.count < 2:
            raise ValueError(f"Bins: count must be an integer >= 2, got {self.count}")

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.count + 1)

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.count


class LogSummary(NamedTuple):
    """Histogram and counts of ``log10`` values; leading axes are free.

    Attributes:
      counts: ``(..., bins)`` int32, finite values per bin.
      log_sum: ``(...)`` sum of the finite values (for the mean of log10).
      n_zero: ``(...)`` int32, values equal to ``-inf`` (distance zero).
      n_inf: ``(...)`` int32, values equal to ``+inf`` (infinite distance).
      n_nan: ``(...)`` int32, NaN values.
      n_clipped: ``(...)`` int32, finite values outside the bins' range.
    """

    counts: jax.Array
    log_sum: jax.Array
    n_zero: jax.Array
    n_inf: jax.Array
    n_nan: jax.Array
    n_clipped: jax.Array


def bin_index(log_values: jax.Array, bins: Bins) -> tuple[jax.Array, jax.Array]:
    """Bin of every entry (flattened, int32) and whether it is finite."""
    v = jnp.ravel(log_values)
    finite = jnp.isfinite(v)
    safe = jnp.where(finite, v, jnp.zeros_like(v))
    position = (safe - bins.lo) * (bins.count / (bins.hi - bins.lo))
    index = jnp.clip(jnp.floor(position), 0, bins.count - 1).astype(jnp.int32)
    return index, finite


def summarize(log_values: jax.Array, bins: Bins) -> LogSummary:
    """Summarizes every entry of ``log_values`` into one :class:`LogSummary`."""
    index, finite = bin_index(log_values, bins)
    counts = jnp.zeros(bins.count, jnp.int32).at[index].add(finite.astype(jnp.int32))
    return summarize_without_counts(log_values, bins)._replace(counts=counts)


def summarize_without_counts(log_values: jax.Array, bins: Bins) -> LogSummary:
    """A :class:`LogSummary` whose ``counts`` is ``None``: the other fields only.

    Kernels that add many layers' values into one histogram buffer use this
    with :func:`bin_index`, so no per-layer histogram is ever materialised.
    """
    v = jnp.ravel(log_values)
    finite = jnp.isfinite(v)
    safe = jnp.where(finite, v, jnp.zeros_like(v))
    outside = finite & ((v < bins.lo) | (v > bins.hi))
    return LogSummary(
        counts=None,
        log_sum=jnp.sum(safe),
        n_zero=jnp.sum(v == -jnp.inf, dtype=jnp.int32),
        n_inf=jnp.sum(v == jnp.inf, dtype=jnp.int32),
        n_nan=jnp.sum(jnp.isnan(v), dtype=jnp.int32),
        n_clipped=jnp.sum(outside, dtype=jnp.int32),
    )


def quantiles(counts: np.ndarray, bins: Bins, q) -> np.ndarray:
    """Quantiles of the binned values, linear inside a bin (host-side NumPy).

    Args:
      counts: ``(..., bins)`` histogram counts.
      bins: the bins the counts were made with.
      q: quantile levels in ``[0, 1]``, shape ``(Q,)``.

    Returns:
      ``(..., Q)`` float64; NaN where a histogram is empty.
    """
    counts = np.asarray(counts, dtype=np.float64)
    q = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if np.any((q < 0) | (q > 1)):
        raise ValueError(f"q: expected levels in [0, 1], got {q}")
    edges = bins.edges
    flat = counts.reshape(-1, counts.shape[-1])
    out = np.full((flat.shape[0], q.size), np.nan)
    for row, c in enumerate(flat):
        total = c.sum()
        if total == 0:
            continue
        cdf = np.concatenate([[0.0], np.cumsum(c)]) / total
        # The first bin whose upper cdf reaches q holds the quantile, and has
        # cdf[i] < q <= cdf[i + 1], so it is not empty; q = 0 is the left edge
        # of the first non-empty bin.
        level = np.maximum(q, np.finfo(np.float64).tiny)
        i = np.searchsorted(cdf[1:], level * (1 - 1e-12), side="left")
        i = np.minimum(i, c.size - 1)
        frac = np.where(q > 0, (q - cdf[i]) / np.maximum(c[i] / total, 1e-300), 0.0)
        out[row] = edges[i] + np.clip(frac, 0.0, 1.0) * bins.width
    return out.reshape(*counts.shape[:-1], q.size)


def mean(summary: LogSummary) -> np.ndarray:
    """Mean of the finite log10 values (host-side); NaN where there are none."""
    n = np.asarray(summary.counts).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.asarray(summary.log_sum, np.float64) / n, np.nan)
