"""From a Flax model to the kernels' inputs.

Two routes lead to the same numbers:

* the fast path, for :class:`~actgeo.models.MLP`: :func:`as_params` gives
  plain :class:`~actgeo.networks.MLPParams`, which every kernel takes
  (forward-mode Jacobians under ``lax.scan``), with the activation and
  residual scale from ``model.spec``::

      kernels.layer_statistics(as_params(model), x, model.spec.activation,
                               residual=model.spec.residual)

* the general path, for any NNX module with a ``preactivations(x)`` method
  (:class:`~actgeo.models.CNN`, or a user's own model):
  :func:`preactivation_fn` gives the one-input function that
  :func:`actgeo.kernels.measure_function` differentiates::

      kernels.measure_function(preactivation_fn(model), x, "relu",
                               row_norms=row_norms(model))

Axis letters: ``B`` inputs, ``D`` input dimension (flattened), ``N`` width,
``L`` layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from actgeo.models.cnn import CNN
from actgeo.models.mlp import MLP
from actgeo.networks import MLPParams

__all__ = ["as_params", "preactivation_fn", "row_norms"]


def _check_mlp(model, name: str) -> None:
    if not isinstance(model, MLP):
        raise TypeError(
            f"model: {name} takes an actgeo.models.MLP, got "
            f"{type(model).__name__}; for other models use preactivation_fn(model) "
            "with actgeo.kernels.measure_function"
        )
    if jnp.ndim(model.w_in[...]) != 2:
        raise ValueError(
            "model: holds a whole ensemble (a leading member axis); take one with "
            "actgeo.models.member(graphdef, state, i), or vmap a kernel over "
            "MLPParams built from the state"
        )


def as_params(model: MLP) -> MLPParams:
    """The model's current weights as one network's :class:`MLPParams`.

    Args:
      model: an :class:`~actgeo.models.MLP` or
        :class:`~actgeo.models.ResidualMLP` (one member, no member axis).
    """
    _check_mlp(model, "as_params")
    return model.params()


def row_norms(model: MLP | CNN) -> list[jax.Array]:
    """``|dz_i^l / d phi(z^(l-1))|`` per layer, for ``measure_function``.

    For an MLP, the norms of the rows of ``W^1`` and of each ``W^l`` (times
    ``alpha`` in a residual network): ``L`` arrays ``(N,)``. For a
    :class:`~actgeo.models.CNN`, the norm of each unit's kernel taps inside
    the image: ``L`` arrays ``(H*W*C,)``. With them
    :func:`actgeo.kernels.measure_function` also gives ``delta_rep``.
    """
    if isinstance(model, CNN):
        return model.row_norms()
    _check_mlp(model, "row_norms")
    alpha = 1.0 if model.spec.residual is None else model.spec.residual
    first = jnp.linalg.norm(model.w_in[...], axis=-1)
    rest = alpha * jnp.linalg.norm(model.w[...], axis=-1)
    return [first, *rest]


def _input_shape(model, input_shape) -> tuple[int, ...] | None:
    if input_shape is None:
        input_shape = getattr(model, "in_shape", None)
    if input_shape is None:
        return None
    shape = tuple(input_shape)
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(
            f"input_shape: expected a tuple of positive integers, got {input_shape!r}"
        )
    return shape


def preactivation_fn(
    model: nnx.Module, input_shape: Sequence[int] | None = None
) -> Callable[[jax.Array], tuple[jax.Array, ...]]:
    """A function from one flat input to the model's per-layer preactivations.

    Args:
      model: any NNX module with a method ``preactivations(x)`` taking a batch
        ``(B, *input_shape)`` and returning either an array ``(L, B, ...)``
        or a sequence of ``L`` arrays ``(B, ...)``.
      input_shape: the shape of one input; by default ``model.in_shape``
        where the model has one (:class:`~actgeo.models.CNN`), else ``(D,)``.

    Returns:
      ``fn(x)`` for ``x`` of shape ``(D,)``, ``D`` the product of
      ``input_shape``, returning ``L`` arrays ``z^l`` flattened to ``(N_l,)``:
      what :func:`actgeo.kernels.measure_function` expects. It uses the
      model's weights as they are now (later training does not change it).
    """
    method = getattr(model, "preactivations", None)
    if not isinstance(model, nnx.Module) or not callable(method):
        raise TypeError(
            "model: expected an nnx.Module with a preactivations(x) method, got "
            f"{type(model).__name__}"
        )
    shape = _input_shape(model, input_shape)
    graphdef, state = nnx.split(model)

    def fn(x: jax.Array) -> tuple[jax.Array, ...]:
        x = jnp.asarray(x)
        if x.ndim != 1 or (shape is not None and x.shape[0] != math.prod(shape)):
            dim = "D" if shape is None else f"{math.prod(shape)} = prod{shape}"
            raise ValueError(
                f"x: expected one flat input of shape ({dim},), got {x.shape}"
            )
        batch = x.reshape((1, *(shape or x.shape)))
        zs = nnx.merge(graphdef, state).preactivations(batch)
        if isinstance(zs, jax.Array):
            zs = [zs[l] for l in range(zs.shape[0])]
        return tuple(jnp.reshape(z, -1) for z in zs)

    return fn
