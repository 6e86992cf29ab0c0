"""Argument checks shared by the models: keys, counts, inputs, activations."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from actgeo import activations
from actgeo.activations import Activation, get_activation


def is_count(value) -> bool:
    """Whether ``value`` is a Python or NumPy integer (not a bool)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_key(key, name: str = "key") -> None:
    """Refuses anything but a typed key from ``jax.random.key``."""
    if not (
        isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    ):
        raise TypeError(
            f"{name}: expected a typed key from jax.random.key(seed), got "
            f"{type(key).__name__}"
            + (f" of dtype {key.dtype}" if hasattr(key, "dtype") else "")
        )
    if jnp.ndim(key) != 0:
        raise ValueError(f"{name}: expected a single key, got shape {jnp.shape(key)}")


def check_member(member, name: str = "member") -> None:
    """Refuses a member index that is not a non-negative integer.

    A traced integer scalar (a member index inside ``jit`` or ``lax.map``)
    passes unchecked.
    """
    if isinstance(member, jax.core.Tracer):
        if jnp.ndim(member) == 0 and jnp.issubdtype(member.dtype, jnp.integer):
            return
        raise ValueError(
            f"{name}: expected an integer scalar, got a traced array of shape "
            f"{jnp.shape(member)} and dtype {member.dtype}"
        )
    if not is_count(member) or member < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {member!r}")


def check_input(x, expected: tuple[int, ...], owner: str) -> jax.Array:
    """``x`` as an array of shape ``(B, *expected)``, or a ValueError naming it."""
    x = jnp.asarray(x)
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != tuple(expected):
        shape = ", ".join(("B", *map(str, expected)))
        hint = ""
        if tuple(x.shape) == tuple(expected):
            hint = " (one input: add a batch axis, x[None])"
        raise ValueError(
            f"x: {owner} expected inputs of shape ({shape}), got {tuple(x.shape)}{hint}"
        )
    if not jnp.issubdtype(x.dtype, jnp.number) or jnp.issubdtype(
        x.dtype, jnp.complexfloating
    ):
        raise TypeError(f"x: expected real numbers, got dtype {x.dtype}")
    return x


def _autodiff_derivative(fn: Callable) -> Callable:
    def derivative(z):
        # fn is elementwise, so a tangent of ones gives phi' at every entry.
        return jax.jvp(fn, (z,), (jnp.ones_like(z),))[1]

    return derivative


@functools.lru_cache(maxsize=64)
def _wrap_callable(fn: Callable) -> Activation:
    # Runs eagerly even while a model is built inside jit or eval_shape.
    with jax.ensure_compile_time_eval():
        activations._check_elementwise(fn)
    name = getattr(fn, "__name__", type(fn).__name__)
    return Activation(name=f"custom:{name}", fn=fn, derivative=_autodiff_derivative(fn))


def resolve_activation(activation) -> Activation:
    """A registered name, an :class:`Activation`, or a user's elementwise callable.

    A callable is checked to be elementwise and wrapped, unregistered, with
    its derivative from forward-mode autodiff (as
    :func:`actgeo.activations.register` would do, without touching the
    registry); the same callable gets the same wrapper.
    """
    if isinstance(activation, str | Activation):
        return get_activation(activation)
    if callable(activation):
        return _wrap_callable(activation)
    raise TypeError(
        "activation: expected a registered name, an Activation or an elementwise "
        f"callable, got {type(activation).__name__}"
    )


def positive_finite(value) -> bool:
    """Whether ``value`` is a real number, finite and positive."""
    return (
        isinstance(value, int | float | np.floating | np.integer)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def nonnegative_finite(value) -> bool:
    """Whether ``value`` is a real number, finite and not negative."""
    return (
        isinstance(value, int | float | np.floating | np.integer)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )
