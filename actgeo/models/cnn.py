"""A small convolutional network for images, with the kernels' conventions.

Same-padded 3x3 convolutions with a constant number of channels ``C``, so
every layer has ``H * W * C`` units:

    z^1 = conv(x, W^1) + b^1,     z^l = conv(phi(z^(l-1)), W^l) + b^l,

then global average pooling of ``phi(z^L)`` over space and a dense readout
``W^out mean_hw phi(z^L) + b^out`` with ``K`` outputs. Biases are per
channel. ``sigma_w`` and ``sigma_b`` are standard deviations, as for the
MLPs: kernel entries have variance ``sigma_w^2 / fan_in`` with ``fan_in =
3 * 3 * C_in`` (``C`` for the readout) and biases ``N(0, sigma_b^2)``.
``init="orthogonal"`` draws each kernel, reshaped to a ``(C_out, 9 C_in)``
matrix, as a scaled Haar matrix with orthonormal rows or columns (the same
rule as :func:`actgeo.sample`), not the delta-orthogonal kernels of Xiao et
al. 2018.

Member ``i`` (``member=i``) is drawn from ``jax.random.fold_in(key, i)``;
``ensemble(lambda key, i: CNN(..., key=key, member=i), E, key)`` holds
``CNN(..., key=key, member=i)`` for each ``i``.

Axis letters: ``B`` inputs, ``H, W`` image height and width, ``C`` channels,
``L`` layers, ``K`` outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from actgeo.activations import Activation
from actgeo.models._checks import (
    check_input,
    check_key,
    check_member,
    is_count,
    nonnegative_finite,
    positive_finite,
    resolve_activation,
)
from actgeo.networks import _scale_weight

__all__ = ["CNN", "CNNParams"]

_INITS = ("gaussian", "orthogonal")
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


class CNNParams(NamedTuple):
    """Parameters of one :class:`CNN` (kernels in ``HWIO`` layout).

    Attributes:
      w_in: ``(3, 3, C_in, C)``, b_in: ``(C,)``: the first convolution.
      w: ``(L-1, 3, 3, C, C)``, b: ``(L-1, C)``: convolutions 2..L, stacked.
      w_out: ``(K, C)``, b_out: ``(K,)``: the readout.
    """

    w_in: jax.Array
    b_in: jax.Array
    w: jax.Array
    b: jax.Array
    w_out: jax.Array
    b_out: jax.Array


def _kernel(gaussian: jax.Array, sigma_w: float, init: str) -> jax.Array:
    """A ``(3, 3, C_in, C_out)`` kernel from normal draws ``(C_out, 9 C_in)``."""
    c_out, fan_in = gaussian.shape
    matrix = _scale_weight(gaussian, sigma_w, init)
    return matrix.reshape(c_out, 3, 3, fan_in // 9).transpose(1, 2, 3, 0)


@functools.partial(jax.jit, static_argnames=("shape", "init", "dtype"))
def _draw(key, member, sigma_w, sigma_b, *, shape, init, dtype) -> CNNParams:
    c_in, c, depth, k = shape
    key = jax.random.fold_in(key, member)
    k_in, k_hidden, k_out, k_bias = jax.random.split(key, 4)
    w_in = _kernel(jax.random.normal(k_in, (c, 9 * c_in), dtype), sigma_w, init)
    hidden = jax.random.normal(k_hidden, (depth - 1, c, 9 * c), dtype)
    if depth > 1:
        w = jax.vmap(lambda g: _kernel(g, sigma_w, init))(hidden)
    else:
        w = jnp.zeros((0, 3, 3, c, c), dtype)
    w_out = _scale_weight(jax.random.normal(k_out, (k, c), dtype), sigma_w, init)
    biases = jax.random.normal(k_bias, (depth * c + k,), dtype) * sigma_b
    b_in, b, b_out = jnp.split(biases, [c, depth * c])
    return CNNParams(w_in, b_in, w, b.reshape(depth - 1, c), w_out, b_out)


def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Same-padded stride-1 convolution: ``(B, H, W, C_in)`` -> ``(B, H, W, C)``."""
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=_DIMENSIONS
    )


class CNN(nnx.Module):
    """A small same-padded CNN with average pooling and a dense readout.

    Args:
      in_shape: ``(H, W, C_in)``, the shape of one image.
      channels: ``C``, the channels of every convolution.
      depth: ``L``, the number of convolutions (at least 1).
      classes: ``K``, the number of outputs.
      activation: a registered name, an :class:`~actgeo.activations.Activation`
        or an elementwise callable written with ``jax.numpy``.
      init: ``"gaussian"`` or ``"orthogonal"``.
      sigma_w: weight standard deviation scale; ``None`` takes the
        activation's customary value (1 for an unregistered callable).
      sigma_b: bias standard deviation.
      key: typed key from ``jax.random.key``; or
      rngs: an ``nnx.Rngs``, whose ``params`` stream gives the key.
      member: index of the ensemble member to draw (key ``fold_in(key, i)``).
      dtype: float dtype of the parameters.

    Attributes:
      in_shape, channels, depth, classes, activation (an ``Activation``),
      init, sigma_w, sigma_b: the settings (static).
      w_in, b_in, w, b, w_out, b_out: ``nnx.Param`` s, as in :class:`CNNParams`.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        channels: int,
        depth: int,
        classes: int,
        activation: str | Activation | Callable = "relu",
        *,
        init: str = "gaussian",
        sigma_w: float | None = None,
        sigma_b: float = 0.0,
        key: jax.Array | None = None,
        rngs: nnx.Rngs | None = None,
        member: int = 0,
        dtype=jnp.float32,
    ):
        problems = []
        if not (
            isinstance(in_shape, tuple | list)
            and len(in_shape) == 3
            and all(is_count(s) and s >= 1 for s in in_shape)
        ):
            problems.append(
                f"in_shape: expected (H, W, C) of positive integers, got {in_shape!r}"
            )
        for name, value in (
            ("channels", channels),
            ("depth", depth),
            ("classes", classes),
        ):
            if not is_count(value) or value < 1:
                problems.append(f"{name}: expected a positive integer, got {value!r}")
        if init not in _INITS:
            problems.append(f"init: expected one of {_INITS}, got {init!r}")
        if sigma_w is not None and not positive_finite(sigma_w):
            problems.append(
                f"sigma_w: expected a positive finite number, got {sigma_w!r}"
            )
        if not nonnegative_finite(sigma_b):
            problems.append(
                f"sigma_b: expected a non-negative finite number, got {sigma_b!r}"
            )
        if problems:
            raise ValueError("CNN: " + "; ".join(problems))
        act = resolve_activation(activation)
        if (key is None) == (rngs is None):
            raise TypeError("CNN: pass exactly one of key= and rngs=")
        if rngs is not None:
            key = rngs.params()
        check_key(key)
        check_member(member)

        self.in_shape = tuple(int(s) for s in in_shape)
        self.channels, self.depth, self.classes = (
            int(channels),
            int(depth),
            int(classes),
        )
        self.activation = act
        self.init = init
        self.sigma_w = float(act.customary_sigma_w if sigma_w is None else sigma_w)
        self.sigma_b = float(sigma_b)
        shape = (self.in_shape[2], self.channels, self.depth, self.classes)
        dtype = jnp.dtype(dtype)
        with jax.threefry_partitionable(True):
            params = _draw(
                key,
                jnp.asarray(member, jnp.uint32),
                jnp.asarray(self.sigma_w, dtype),
                jnp.asarray(self.sigma_b, dtype),
                shape=shape,
                init=init,
                dtype=dtype,
            )
        self.w_in = nnx.Param(params.w_in)
        self.b_in = nnx.Param(params.b_in)
        self.w = nnx.Param(params.w)
        self.b = nnx.Param(params.b)
        self.w_out = nnx.Param(params.w_out)
        self.b_out = nnx.Param(params.b_out)

    @property
    def act(self) -> Activation:
        """The activation (alias of :attr:`activation`, as on the MLPs)."""
        return self.activation

    def params(self) -> CNNParams:
        """Current parameter values."""
        return CNNParams(*(getattr(self, name)[...] for name in CNNParams._fields))

    def _first(self, x: jax.Array) -> jax.Array:
        if jnp.ndim(self.w_in[...]) != 4:
            raise ValueError(
                "CNN: this model holds a whole ensemble (a leading member axis); "
                "take one with actgeo.models.member(graphdef, state, i)"
            )
        x = check_input(x, self.in_shape, "CNN")
        w_in = self.w_in[...]
        return conv(x.astype(w_in.dtype), w_in) + self.b_in[...][None, None, None]

    def _scan(self, z1: jax.Array, keep: bool):
        act = self.activation

        def body(z, layer):
            w, b = layer
            new = conv(act.fn(z), w) + b[None, None, None]
            return new, (new if keep else None)

        return jax.lax.scan(body, z1, (self.w[...], self.b[...]))

    def preactivations(self, x: jax.Array) -> jax.Array:
        """Preactivations of every convolution, flattened per input.

        Args:
          x: ``(B, H, W, C_in)`` images.

        Returns:
          ``(L, B, H * W * C)``, each layer flattened in ``(H, W, C)`` order.
        """
        z1 = self._first(x)
        _, zs = self._scan(z1, keep=True)
        z = jnp.concatenate([z1[None], zs], axis=0)
        return z.reshape(z.shape[0], z.shape[1], -1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, K)`` of images ``x`` ``(B, H, W, C_in)``."""
        z_last, _ = self._scan(self._first(x), keep=False)
        pooled = jnp.mean(self.activation.fn(z_last), axis=(1, 2))
        return pooled @ self.w_out[...].T + self.b_out[...][None]

    def row_norms(self) -> list[jax.Array]:
        """``|dz_u^l / d phi(z^(l-1))|`` of every unit: ``L`` arrays ``(H*W*C,)``.

        The norm of the kernel taps that fall inside the image (border units
        see fewer), from ``x`` for the first layer: the representation-space
        scale that :func:`actgeo.kernels.measure_function` divides by for
        ``delta_rep``.
        """
        h, w, c_in = self.in_shape

        def norms(kernel, c):
            ones = jnp.ones((1, h, w, c), kernel.dtype)
            return jnp.sqrt(conv(ones, kernel**2)).reshape(-1)

        first = norms(self.w_in[...], c_in)
        rest = jax.vmap(lambda k: norms(k, self.channels))(self.w[...])
        return [first, *rest]
