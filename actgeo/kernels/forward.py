"""Preactivations and layer-wise input Jacobians of one MLP, in forward mode.

``z^1 = W^1 x + b^1``, ``z^l = W^l phi(z^(l-1)) + b^l`` (Poole et al. 2016),
and ``J^1 = W^1``, ``J^l = W^l diag(phi'(z^(l-1))) J^(l-1)``: the Jacobian is
pushed forward with the activations, and one matmul per layer carries both
(the same ``W^l`` multiplies ``phi(z)`` and the Jacobian's columns). Layers
2..L run under ``lax.scan``, so the program, and its compile time, does not
grow with depth.

Residual networks (``residual=alpha``) use ``z^l = z^(l-1) + alpha (W^l
phi(z^(l-1)) + b^l)`` for ``l >= 2``.

Functions take the parameters of one network (:class:`actgeo.networks.MLPParams`
without a member axis) and a batch of inputs ``x`` of shape ``(B, D)``; vmap
them over members. Axis letters: ``B`` inputs, ``D`` input dimension, ``N``
width, ``L`` layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from actgeo.activations import Activation, get_activation
from actgeo.networks import MLPParams
from actgeo.precision import full_precision


def _first_layer(params: MLPParams, x: jax.Array):
    """``z^1`` for inputs ``x`` of shape ``(B, D)``: ``(B, N)``."""
    return x @ params.w_in.T + params.b_in[None]


def step_values(act: Activation, w, b, z_prev, residual):
    """One layer without Jacobians: ``z^l`` from ``z^(l-1)``, any leading axes."""
    z = act.fn(z_prev) @ w.T
    z = z + b.reshape((1,) * (z.ndim - 1) + b.shape)
    if residual is not None:
        z = z_prev + residual * z
    return z


def step_with_jacobian(act: Activation, w, b, z_prev, j_prev, residual):
    """One layer for one input: ``(z^l, J^l)`` from ``(z^(l-1), J^(l-1))``.

    Shapes: ``w (N, N)``, ``b (N,)``, ``z_prev (N,)``, ``j_prev (N, D)``.
    """
    columns = jnp.concatenate(
        [act.fn(z_prev)[:, None], act.derivative(z_prev)[:, None] * j_prev], axis=1
    )
    out = w @ columns
    z = out[:, 0] + b
    j = out[:, 1:]
    if residual is not None:
        z = z_prev + residual * z
        j = j_prev + residual * j
    return z, j


def batched_step(act: Activation, residual):
    """:func:`step_with_jacobian` over a batch: ``z (B, N)``, ``j (B, N, D)``."""

    def one_input(w, b, z, j):
        return step_with_jacobian(act, w, b, z, j, residual)

    return jax.vmap(one_input, in_axes=(None, None, 0, 0))


def step_columns(act: Activation, w, b, z_prev, j_prev, residual):
    """:func:`batched_step` in the column layout: ``z (N, B)``, ``j (N, D, B)``.

    The values and the ``D`` Jacobian columns of every input go through one
    plain ``(N, N) @ (N, B (1 + D))`` matmul whose output is already in this
    layout, so no transpose surrounds it. Each column is the one
    :func:`step_with_jacobian` multiplies, so the numbers are the same.
    """
    n, d, b_count = j_prev.shape
    scaled = act.derivative(z_prev)[:, None, :] * j_prev
    columns = jnp.concatenate([act.fn(z_prev), scaled.reshape(n, d * b_count)], axis=1)
    out = w @ columns
    z = out[:, :b_count] + b[:, None]
    j = out[:, b_count:].reshape(n, d, b_count)
    if residual is not None:
        z = z_prev + residual * z
        j = j_prev + residual * j
    return z, j


def finite_problems(**arrays) -> list[str]:
    """Names of the concrete arrays that hold NaN or inf (tracers are skipped).

    Under ``jit`` values are not known, and NaN propagates to the outputs
    instead; called eagerly, a kernel refuses them up front.
    """
    problems = []
    for name, value in arrays.items():
        if value is None or isinstance(value, jax.core.Tracer):
            continue
        if not np.all(np.isfinite(np.asarray(value))):
            problems.append(f"{name}: contains NaN or inf")
    return problems


def check_params(params: MLPParams) -> list[str]:
    """Problems with the parameters of one network (no member axis)."""
    problems = []
    w_in, w = jnp.shape(params.w_in), jnp.shape(params.w)
    if len(w_in) != 2:
        problems.append(
            f"params: expected one network's parameters, with w_in of shape (N, D); "
            f"got w_in of shape {w_in} (an ensemble from actgeo.sample has a "
            "leading member axis: index one member or vmap the kernel)"
        )
    elif len(w) != 3 or w[1:] != (w_in[0], w_in[0]):
        problems.append(
            f"params: expected w of shape (L-1, {w_in[0]}, {w_in[0]}), got {w}"
        )
    else:
        problems += finite_problems(
            **{f"params.{k}": v for k, v in params._asdict().items()}
        )
    return problems


def check_residual(residual) -> list[str]:
    """Problems with a residual scale: ``None`` or one positive finite number."""
    if residual is None or isinstance(residual, jax.core.Tracer):
        return []
    value = np.asarray(residual)
    if (
        value.shape != ()
        or value.dtype == bool
        or not np.issubdtype(value.dtype, np.number)
        or not np.isfinite(value)
        or value <= 0
    ):
        return [
            f"residual: expected None or a positive finite number, got {residual!r}"
        ]
    return []


def _check(params: MLPParams, x: jax.Array, residual=None):
    problems = check_params(params) + check_residual(residual)
    if not problems:
        d = params.w_in.shape[-1]
        if jnp.ndim(x) != 2 or jnp.shape(x)[1] != d or jnp.shape(x)[0] == 0:
            problems.append(
                f"x: expected shape (B, D) with B >= 1 and D = {d} (the first "
                f"layer's fan-in), got {jnp.shape(x)}"
            )
    problems += finite_problems(x=x)
    if problems:
        raise ValueError("; ".join(problems))


@full_precision
def preactivations(
    params: MLPParams,
    x: jax.Array,
    activation: str | Activation,
    *,
    residual: float | jax.Array | None = None,
) -> jax.Array:
    """Preactivations ``z^l`` of every layer: ``(L, B, N)``."""
    act = get_activation(activation)
    x = jnp.asarray(x)
    _check(params, x, residual)
    z1 = _first_layer(params, x)

    def body(z, layer):
        z = step_values(act, layer[0], layer[1], z, residual)
        return z, z

    _, zs = jax.lax.scan(body, z1, (params.w, params.b))
    return jnp.concatenate([z1[None], zs], axis=0)


@full_precision
def jacobians(
    params: MLPParams,
    x: jax.Array,
    activation: str | Activation,
    *,
    residual: float | jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Preactivations and input Jacobians of every layer, in forward mode.

    Returns:
      ``z`` of shape ``(L, B, N)`` and ``J = dz/dx`` of shape ``(L, B, N, D)``.
      This keeps every layer's Jacobian; :func:`actgeo.kernels.layer_statistics`
      streams through depth instead.
    """
    act = get_activation(activation)
    x = jnp.asarray(x)
    _check(params, x, residual)
    z1 = _first_layer(params, x)
    j1 = jnp.broadcast_to(params.w_in, (x.shape[0], *params.w_in.shape))

    step = batched_step(act, residual)

    def body(carry, layer):
        z, j = step(layer[0], layer[1], *carry)
        return (z, j), (z, j)

    _, (zs, js) = jax.lax.scan(body, (z1, j1), (params.w, params.b))
    return (
        jnp.concatenate([z1[None], zs], axis=0),
        jnp.concatenate([j1[None], js], axis=0),
    )


@full_precision
def readout(
    params: MLPParams,
    z_last: jax.Array,
    activation: str | Activation,
) -> jax.Array:
    """Readout ``z^(L+1) = W^out phi(z^L) + b^out``: ``(B, K)`` from ``(B, N)``."""
    if params.w_out is None:
        raise ValueError("params: this network has no readout (NetworkSpec.readout)")
    act = get_activation(activation)
    return act.fn(z_last) @ params.w_out.T + params.b_out[None]
