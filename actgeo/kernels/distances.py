"""Per-neuron and per-region distances to boundaries, as full arrays.

``delta_in = |z_i^l(x)| / |J_i^l(x)|`` is the first-order distance from ``x``
to neuron ``i``'s boundary ``z_i^l = 0`` in input space; it is exact inside a
linear region of a piecewise-linear network. ``delta_rep = |z_i^l| / |W_i^l|``
is the distance from ``phi(z^(l-1))`` to the neuron's hyperplane in
representation space (``alpha |W_i^l|`` for residual layers). The distance to
the boundary of the current linear region is the minimum of ``delta_in`` over
all neurons of layers ``1..l`` (exact for relu-family networks).

These return every neuron's value, ``O(L B N)`` memory; use
:func:`actgeo.kernels.layer_statistics` when only statistics are needed.
Axis letters: ``B`` inputs, ``D`` input dimension, ``N`` width, ``L`` layers.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from actgeo.activations import Activation, get_activation
from actgeo.kernels import _norms
from actgeo.kernels.forward import _check, _first_layer, batched_step
from actgeo.networks import MLPParams
from actgeo.precision import full_precision


class Distances(NamedTuple):
    """Distances to boundaries; ``+inf`` where a gradient is exactly zero.

    Attributes:
      delta_in: ``(L, B, N)`` neuron boundary distance in input space.
      delta_rep: ``(L, B, N)`` neuron boundary distance in representation space.
      region: ``(L, B)`` distance to the current linear region's boundary.
      direction: ``(L, B, D)`` unit vector from ``x`` towards the nearest
        boundary of the region, ``-sign(z_i) J_i / |J_i|`` for the minimising
        neuron (zero where that distance is infinite).
    """

    delta_in: jax.Array
    delta_rep: jax.Array
    region: jax.Array
    direction: jax.Array


def _layer(z, j, row_norm, region, direction):
    # z (B, N), j (B, N, D), row_norm (N,), region (B,), direction (B, D)
    d_in = _norms.ratio(z, j, axis=-1)
    safe_norm = jnp.where(row_norm != 0, row_norm, jnp.ones_like(row_norm))
    d_rep = jnp.where((row_norm != 0)[None], jnp.abs(z) / safe_norm[None], jnp.inf)
    nearest = jnp.argmin(d_in, axis=-1)
    d_min = jnp.take_along_axis(d_in, nearest[:, None], axis=-1)[:, 0]
    j_min = jnp.take_along_axis(j, nearest[:, None, None], axis=1)[:, 0]
    z_min = jnp.take_along_axis(z, nearest[:, None], axis=-1)[:, 0]
    j_len = _norms.norm(j_min, axis=-1)
    unit = j_min / jnp.where(j_len != 0, j_len, jnp.ones_like(j_len))[:, None]
    toward = -jnp.sign(z_min)[:, None] * unit
    closer = (d_min < region) | jnp.isnan(d_min)
    region = jnp.where(closer, d_min, region)
    direction = jnp.where(closer[:, None], toward, direction)
    return d_in, d_rep, region, direction


@full_precision
def neuron_distances(
    params: MLPParams,
    x: jax.Array,
    activation: str | Activation,
    *,
    residual: float | jax.Array | None = None,
) -> Distances:
    """Every neuron's boundary distance in both spaces, and region distance.

    Args:
      params: one network's parameters (no member axis).
      x: ``(B, D)`` inputs.
      activation: registered name or :class:`Activation`.
      residual: residual scale ``alpha`` (traced), or ``None``.
    """
    act = get_activation(activation)
    x = jnp.asarray(x)
    _check(params, x, residual)

    step = batched_step(act, residual)
    alpha = 1.0 if residual is None else residual

    z1 = _first_layer(params, x)
    j1 = jnp.broadcast_to(params.w_in, (x.shape[0], *params.w_in.shape))
    region0 = jnp.full(x.shape[:1], jnp.inf, z1.dtype)
    direction0 = jnp.zeros(x.shape, z1.dtype)
    out1 = _layer(z1, j1, _norms.norm(params.w_in), region0, direction0)

    def body(carry, layer):
        z, j, region, direction = carry
        w, b = layer
        z, j = step(w, b, z, j)
        out = _layer(z, j, alpha * _norms.norm(w), region, direction)
        return (z, j, out[2], out[3]), out

    _, rest = jax.lax.scan(body, (z1, j1, out1[2], out1[3]), (params.w, params.b))
    stacked = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), out1, rest)
    return Distances(*stacked)
