"""Ensembles of NNX models as one state with a leading member axis.

``ensemble`` returns ``(graphdef, state)`` as ``nnx.split`` does, except that
every leaf of ``state`` carries a leading member axis ``E``; ``jax.vmap``
over the state then runs, differentiates or trains all members at once
(``nnx.merge(graphdef, one_members_state)`` inside the vmapped function).
Member ``i`` depends only on ``(key, i)``, whatever ``E``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from actgeo.models._checks import check_key, is_count
from actgeo.models.mlp import MLP
from actgeo.networks import NetworkSpec, sample

__all__ = ["ensemble", "ensemble_size", "member"]


def _mlp_ensemble(spec: NetworkSpec, count: int, key: jax.Array, dtype):
    params = sample(spec, count, key=key, dtype=dtype)
    abstract = nnx.eval_shape(
        lambda: MLP(spec, params=jax.tree.map(lambda a: a[0], params))
    )
    graphdef, state = nnx.split(abstract)
    pure = {
        name: value for name, value in params._asdict().items() if value is not None
    }
    nnx.replace_by_pure_dict(state, pure)
    return graphdef, state


def ensemble(
    spec_or_factory: NetworkSpec | Callable[[jax.Array, jax.Array], nnx.Module],
    members: int,
    key: jax.Array,
    *,
    dtype=jnp.float32,
):
    """``E`` independent models as one graph definition and a stacked state.

    Args:
      spec_or_factory: a :class:`~actgeo.networks.NetworkSpec` (members are
        :class:`~actgeo.models.MLP` s), or a function ``factory(key, i)``
        returning member ``i`` as a new NNX module, built from ``key`` and
        ``i`` alone, such as ``lambda key, i: CNN((8, 8, 1), 8, 3, 10,
        "relu", key=key, member=i)``, or for a model without a member
        argument ``lambda key, i: Model(rngs=nnx.Rngs(jax.random.fold_in(key,
        i)))``. ``i`` is a Python int; members are built one at a time
        and stacked.
      members: the count ``E`` (members ``0..E-1``).
      key: typed key from ``jax.random.key``.
      dtype: parameter dtype of a spec's MLPs (a factory sets its own).

    Returns:
      ``(graphdef, state)``: every leaf of ``state`` has a leading axis ``E``,
      and ``member(graphdef, state, i)`` equals ``factory(key, i)``. For a
      spec, the parameters are ``actgeo.sample(spec, E, key=key)``, so member
      ``i`` equals ``MLP(spec, key=key, member=i)``.
    """
    if not is_count(members) or members < 1:
        raise ValueError(f"members: expected a positive integer, got {members!r}")
    check_key(key)
    if isinstance(spec_or_factory, NetworkSpec):
        return _mlp_ensemble(spec_or_factory, int(members), key, dtype)
    if not callable(spec_or_factory):
        raise TypeError(
            "spec_or_factory: expected a NetworkSpec or a function (key, i) -> "
            f"nnx.Module, got {type(spec_or_factory).__name__}"
        )
    factory = spec_or_factory
    # Each member is built exactly as factory(key, i) builds it alone, so
    # member(graphdef, state, i) equals it bit for bit.
    graphdef, states = None, []
    for i in range(members):
        model = factory(key, i)
        if not isinstance(model, nnx.Module):
            raise TypeError(
                "spec_or_factory: the factory returned "
                f"{type(model).__name__}, expected an nnx.Module"
            )
        g, state = nnx.split(model)
        graphdef = g if graphdef is None else graphdef
        states.append(state)
    # Static attributes (an activation function, say) are taken from member
    # 0; the parameters must match in structure and shape.
    first = jax.tree.structure(states[0]), _shapes(states[0])
    for i, state in enumerate(states[1:], start=1):
        if (jax.tree.structure(state), _shapes(state)) != first:
            raise ValueError(
                f"spec_or_factory: member {i} has parameters of other structure or "
                f"shapes than member 0 ({_shapes(state)} against {first[1]})"
            )
    return graphdef, jax.tree.map(lambda *a: jnp.stack(a), *states)


def _shapes(state) -> list[tuple[int, ...]]:
    return [tuple(jnp.shape(leaf)) for leaf in jax.tree.leaves(state)]


def ensemble_size(state) -> int:
    """The number of members ``E`` of a stacked state (its leaves' first axis)."""
    leaves = jax.tree.leaves(state)
    if not leaves:
        raise ValueError("state: has no arrays")
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "state: expected every leaf to have the same leading member axis, got "
            f"leading sizes {sorted(sizes, key=str)}"
        )
    return sizes.pop()


def member(graphdef, state, i: int) -> nnx.Module:
    """The ``i``-th model of an ensemble built by :func:`ensemble`.

    Args:
      graphdef, state: as returned by :func:`ensemble` (or trained from it).
      i: member index, ``0 <= i < E``; a traced integer is used unchecked.
    """
    if not isinstance(i, jax.core.Tracer):
        count = ensemble_size(state)
        if not is_count(i) and not (
            hasattr(i, "dtype")
            and jnp.issubdtype(i.dtype, jnp.integer)
            and not jnp.ndim(i)
        ):
            raise TypeError(f"i: expected an integer member index, got {i!r}")
        if not 0 <= int(i) < count:
            raise ValueError(f"i: member index {int(i)} out of range [0, {count})")
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
