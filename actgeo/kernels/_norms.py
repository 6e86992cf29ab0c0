"""Euclidean norms and distance ratios that neither underflow, overflow nor NaN.

A norm is computed as ``m * sqrt(sum((v / m)^2))`` with ``m = max |v_i|``, so
entries of ``1e-20`` or ``1e20`` in float32 give the right answer. NaN in
gives NaN out, so that a broken input is never reported as a geometry. A zero
vector has norm 0 and a zero subgradient. A ratio ``|a| / |v|`` with ``v = 0``
is ``+inf`` (no boundary within reach), never NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _scaled(v: jax.Array, axis: int):
    """Returns ``(m, s, nonzero)`` with ``|v| = m * s`` and ``s >= 1`` if nonzero."""
    # |v| = m * |v / m| for any constant m > 0, so m carries no gradient; its
    # own derivative path (through v / m^2) under- or overflows in float32.
    m = jax.lax.stop_gradient(jnp.max(jnp.abs(v), axis=axis, keepdims=True))
    # A NaN entry makes m NaN, which is not "zero": NaN then propagates.
    nonzero = jnp.logical_not(m == 0)
    m_safe = jnp.where(nonzero, m, jnp.ones_like(m))
    # Where v is all zero, use ones so the sqrt's argument is positive and its
    # gradient finite; the result is masked out below.
    u = jnp.where(nonzero, v / m_safe, jnp.ones_like(v))
    s = jnp.sqrt(jnp.sum(u * u, axis=axis, keepdims=True))
    return jnp.squeeze(m_safe, axis), jnp.squeeze(s, axis), jnp.squeeze(nonzero, axis)


def norm(v: jax.Array, axis: int = -1) -> jax.Array:
    """Euclidean norm along ``axis``, safe from underflow and overflow."""
    m, s, nonzero = _scaled(v, axis)
    return jnp.where(nonzero, m * s, jnp.zeros_like(m))


def ratio(a: jax.Array, v: jax.Array, axis: int = -1) -> jax.Array:
    """``|a| / |v|`` along ``axis`` of ``v``; ``+inf`` where ``v`` is zero."""
    m, s, nonzero = _scaled(v, axis)
    value = (jnp.abs(a) / m) / s
    return jnp.where(nonzero, value, jnp.full_like(value, jnp.inf))


def log10_ratio(
    a: jax.Array, v: jax.Array, axis: int = -1, *, log_abs_a: jax.Array | None = None
) -> jax.Array:
    """``log10(|a| / |v|)``, finite even where the ratio itself would overflow.

    ``-inf`` where ``a`` is zero (on the boundary), ``+inf`` where ``v`` is zero.
    """
    m, s, nonzero = _scaled(v, axis)
    if log_abs_a is None:
        log_abs_a = log10_abs(a)
    value = log_abs_a - jnp.log10(m) - jnp.log10(s)
    return jnp.where(nonzero, value, jnp.full_like(value, jnp.inf))


def log10_abs(a: jax.Array) -> jax.Array:
    """``log10 |a|`` with ``-inf`` at zero and a finite gradient everywhere."""
    abs_a = jnp.abs(a)
    positive = abs_a != 0
    value = jnp.log10(jnp.where(positive, abs_a, jnp.ones_like(abs_a)))
    return jnp.where(positive, value, jnp.full_like(value, -jnp.inf))


def log10_norm(v: jax.Array, axis: int = -1) -> jax.Array:
    """``log10 |v|`` along ``axis``: ``-inf`` for a zero vector, never NaN."""
    m, s, nonzero = _scaled(v, axis)
    value = jnp.log10(m) + jnp.log10(s)
    return jnp.where(nonzero, value, jnp.full_like(value, -jnp.inf))
