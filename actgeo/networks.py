"""Network specifications and sampling of ensembles of random networks.

Convention (Poole et al. 2016): ``z^1 = W^1 x + b^1`` and
``z^l = W^l phi(z^(l-1)) + b^l`` for ``l = 2..L``, optionally residual,
``z^l = z^(l-1) + alpha (W^l phi(z^(l-1)) + b^l)``, and optionally a readout
``z^(L+1) = W^out phi(z^L) + b^out`` with ``K`` outputs.

``sigma_w`` and ``sigma_b`` are standard deviations: ``W_ij ~ N(0,
sigma_w^2 / fan_in)`` and ``b_i ~ N(0, sigma_b^2)``. ``init="orthogonal"``
draws Haar-orthogonal matrices (orthonormal rows or columns when rectangular)
scaled so that each entry has variance ``sigma_w^2 / fan_in``.

Member ``i`` of an ensemble depends only on ``(key, i)`` through
``jax.random.fold_in``, so any subset or order of members, drawn in any chunk,
gives the same weights. Draws use threefry with ``jax_threefry_partitionable``
pinned on, whatever the user's global setting.

Axis letters: ``E`` members, ``D`` input dimension, ``N`` width, ``L`` layers,
``K`` outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from actgeo.activations import Activation, get_activation

__all__ = ["MLPParams", "NetworkSpec", "member_keys", "sample"]

Init = Literal["gaussian", "orthogonal"]
_INITS = ("gaussian", "orthogonal")


class MLPParams(NamedTuple):
    """Parameters of one MLP, or of ``E`` members with a leading member axis.

    Shapes for one network (an ensemble adds a leading ``E``):
      w_in: ``(N, D)``, b_in: ``(N,)``: the first layer.
      w: ``(L-1, N, N)``, b: ``(L-1, N)``: layers 2..L, stacked for ``lax.scan``.
      w_out: ``(K, N)``, b_out: ``(K,)``: the readout, or ``None``.
    """

    w_in: jax.Array
    b_in: jax.Array
    w: jax.Array
    b: jax.Array
    w_out: jax.Array | None = None
    b_out: jax.Array | None = None


def _is_count(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """A random MLP family: shapes, activation and initialisation.

    Attributes:
      input_dim: ``D``.
      width: ``N``, the width of every hidden layer.
      depth: ``L``, the number of hidden layers (at least 1).
      activation: a registered name (see :mod:`actgeo.activations`).
      sigma_w: weight standard deviation scale; ``None`` takes the
        activation's customary value (He ``sqrt(2)`` for the relu family,
        ``1`` for bounded activations).
      sigma_b: bias standard deviation.
      init: ``"gaussian"`` or ``"orthogonal"``.
      readout: number of outputs ``K`` of a readout layer, or ``None``.
      residual: scale ``alpha`` of residual layers 2..L, or ``None`` for a
        plain MLP.
    """

    input_dim: int
    width: int
    depth: int
    activation: str = "relu"
    sigma_w: float | None = None
    sigma_b: float = 0.0
    init: Init = "gaussian"
    readout: int | None = None
    residual: float | None = None

    def __post_init__(self):
        problems = []
        for field in ("input_dim", "width", "depth"):
            value = getattr(self, field)
            if not _is_count(value) or value < 1:
                problems.append(f"{field}: expected a positive integer, got {value!r}")
        try:
            act = get_activation(self.activation)
        except (ValueError, TypeError) as err:
            problems.append(str(err))
            act = None
        sigma_w = self.sigma_w
        if sigma_w is None and act is not None:
            sigma_w = act.customary_sigma_w
        if sigma_w is not None and not _positive_finite(sigma_w):
            problems.append(
                f"sigma_w: expected a positive finite number, got {sigma_w!r}"
            )
        if not _nonnegative_finite(self.sigma_b):
            problems.append(
                f"sigma_b: expected a non-negative finite number, got {self.sigma_b!r}"
            )
        if self.init not in _INITS:
            problems.append(f"init: expected one of {_INITS}, got {self.init!r}")
        if self.readout is not None and (
            not _is_count(self.readout) or self.readout < 1
        ):
            problems.append(
                f"readout: expected a positive integer or None, got {self.readout!r}"
            )
        if self.residual is not None and not _positive_finite(self.residual):
            problems.append(
                f"residual: expected a positive finite scale or None, got "
                f"{self.residual!r}"
            )
        if problems:
            raise ValueError("NetworkSpec: " + "; ".join(problems))
        if isinstance(self.activation, Activation):
            object.__setattr__(self, "activation", self.activation.name)
        object.__setattr__(self, "sigma_w", float(sigma_w))
        object.__setattr__(self, "sigma_b", float(self.sigma_b))
        if self.residual is not None:
            object.__setattr__(self, "residual", float(self.residual))

    @property
    def act(self) -> Activation:
        """The registry entry of :attr:`activation`."""
        return get_activation(self.activation)

    def param_count(self) -> int:
        """Number of parameters of one member."""
        d, n, l = self.input_dim, self.width, self.depth
        count = n * d + n + (l - 1) * (n * n + n)
        if self.readout:
            count += self.readout * n + self.readout
        return count


def _positive_finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _nonnegative_finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def member_keys(key: jax.Array, members: jax.Array) -> jax.Array:
    """Keys of the given member indices: ``fold_in(key, i)`` for each ``i``."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(members)


def _haar(gaussian: jax.Array) -> jax.Array:
    # QR of a Gaussian matrix, with R's diagonal signs folded into Q, is Haar
    # distributed (Mezzadri 2007). Rectangular: orthonormal columns if rows >
    # cols, orthonormal rows otherwise.
    rows, cols = gaussian.shape
    tall = rows >= cols
    q, r = jnp.linalg.qr(gaussian if tall else gaussian.T)
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    return q if tall else q.T


def _scale_weight(gaussian: jax.Array, sigma_w, init: str) -> jax.Array:
    """A weight matrix from standard normal draws ``(rows, cols)``."""
    rows, cols = gaussian.shape
    if init == "gaussian":
        return gaussian * (sigma_w / math.sqrt(cols))
    # Entries of a Haar matrix with orthonormal columns (rows) have variance
    # 1/rows (1/cols); rescale to sigma_w^2 / fan_in.
    return _haar(gaussian) * (sigma_w * math.sqrt(max(rows, cols) / cols))


def _sample_member(key, sigma_w, sigma_b, *, shape, init, dtype):
    # One normal draw per member, cut into the parameters in a fixed order:
    # first layer, hidden layers, readout; weights, then biases.
    d, n, l, k = shape
    sizes = (n * d, (l - 1) * n * n, k * n, n, (l - 1) * n, k)
    flat = jax.random.normal(key, (sum(sizes),), dtype)
    pieces = jnp.split(flat, np.cumsum(sizes)[:-1].tolist())
    g_in, g_hidden, g_out, g_bin, g_b, g_bout = pieces
    w_in = _scale_weight(g_in.reshape(n, d), sigma_w, init)
    hidden = g_hidden.reshape(l - 1, n, n)
    w = jax.vmap(lambda g: _scale_weight(g, sigma_w, init))(hidden) if l > 1 else hidden
    b_in = g_bin * sigma_b
    b = g_b.reshape(l - 1, n) * sigma_b
    w_out = b_out = None
    if k:
        w_out = _scale_weight(g_out.reshape(k, n), sigma_w, init)
        b_out = g_bout * sigma_b
    return MLPParams(w_in, b_in, w, b, w_out, b_out)


@functools.partial(jax.jit, static_argnames=("shape", "init", "dtype"))
def _sample_members(key, members, sigma_w, sigma_b, *, shape, init, dtype):
    keys = member_keys(key, members)
    draw = functools.partial(_sample_member, shape=shape, init=init, dtype=dtype)
    if init == "orthogonal":
        # One member at a time: XLA's CPU runtime was seen to deadlock when
        # many members' QR factorisations were scheduled concurrently
        # (jaxlib 0.10.2, 4 members of depth 24 at width 64). Each member's
        # layers still share one batched QR.
        return jax.lax.map(lambda k: draw(k, sigma_w, sigma_b), keys)
    return jax.vmap(draw, in_axes=(0, None, None))(keys, sigma_w, sigma_b)


def sample(
    spec: NetworkSpec,
    members: int | jax.Array | np.ndarray,
    *,
    key: jax.Array,
    dtype=jnp.float32,
) -> MLPParams:
    """Draws the parameters of an ensemble of networks.

    Args:
      spec: the network family.
      members: a count ``E`` (members ``0..E-1``) or an array of member indices.
      key: a typed key from ``jax.random.key(seed)``.
      dtype: float dtype of the parameters.

    Returns:
      :class:`MLPParams` with a leading member axis ``E``. Member ``i`` is the
      same whatever else is drawn with it. ``sigma_w`` and ``sigma_b`` are
      traced, so changing them does not recompile.
    """
    if _is_count(members):
        if members < 1:
            raise ValueError(f"members: expected a positive count, got {members}")
        members = jnp.arange(members, dtype=jnp.uint32)
    else:
        members = jnp.asarray(members)
        if members.ndim != 1 or not jnp.issubdtype(members.dtype, jnp.integer):
            raise ValueError(
                "members: expected a count or a 1-D integer array of member indices, "
                f"got shape {members.shape} and dtype {members.dtype}"
            )
        members = members.astype(jnp.uint32)
    if not (
        isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    ):
        raise TypeError("key: expected a typed key from jax.random.key(seed)")
    shape = (spec.input_dim, spec.width, spec.depth, spec.readout or 0)
    dtype = jnp.dtype(dtype)
    with jax.threefry_partitionable(True):
        return _sample_members(
            key,
            members,
            jnp.asarray(spec.sigma_w, dtype),
            jnp.asarray(spec.sigma_b, dtype),
            shape=shape,
            init=spec.init,
            dtype=dtype,
        )
