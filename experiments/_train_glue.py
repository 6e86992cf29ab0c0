"""Training glue shared by the training-sweep experiments (not part of actgeo).

:func:`train_specs` trains, on one data set, the ensembles of several
network specs that differ only in their initialisation (``sigma_w``,
``sigma_b``): the forward pass does not read those two fields, so the
members of all the specs are stacked into one ensemble, trained at once by
:func:`actgeo.training.train` with one compiled program, and split again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import actgeo
from actgeo import kernels
from actgeo.models import as_params, ensemble, member
from actgeo.training import make_optimizer, train


def train_specs(
    specs: Sequence[actgeo.NetworkSpec],
    data,
    *,
    members: int,
    steps: int,
    learning_rate: float,
    batch_size: int,
    key: jax.Array,
    retention_points: int = 0,
) -> dict[str, np.ndarray]:
    """Final test accuracy and training loss of ``members`` networks per spec.

    Every spec must equal the first one up to ``sigma_w`` and ``sigma_b``.
    Spec ``s``'s member ``i`` starts from ``actgeo.sample(specs[s], [i],
    key=fold_in(init_key, s))`` and is trained with Adam for ``steps`` steps
    on minibatches of ``batch_size``, drawn from ``fold_in(order_key, s
    members + i)``, where ``init_key, order_key = split(key)``.

    Returns:
      ``test_accuracy`` and ``train_loss``, each ``(S, E)`` (specs, members),
      from the last evaluation; with ``retention_points > 0`` also
      ``retention_first`` ``(S, E, L)``, the trained networks' context
      retention per layer on that many test inputs.
    """
    first = specs[0]
    for spec in specs[1:]:
        same = dataclasses.replace(spec, sigma_w=first.sigma_w, sigma_b=first.sigma_b)
        if same != first:
            raise ValueError(f"specs: {spec} differs from {first} beyond sigma_w/b")
    init_key, order_key = jax.random.split(key)
    graphdef, states = None, []
    for s, spec in enumerate(specs):
        g, state = ensemble(spec, members, jax.random.fold_in(init_key, s))
        graphdef = g if graphdef is None else graphdef
        states.append(state)
    state = jax.tree.map(lambda *a: jnp.concatenate(a), *states)
    result = train(
        graphdef,
        state,
        data,
        optimizer=make_optimizer("adam", learning_rate),
        key=order_key,
        batch_size=batch_size,
        steps=steps,
        eval_every=steps,
    )
    last = result.history.isel(step=-1)
    shape = (len(specs), members)
    out = {
        "test_accuracy": np.asarray(last["test_accuracy"]).reshape(shape),
        "train_loss": np.asarray(last["train_loss"]).reshape(shape),
    }
    if retention_points:
        out["retention_first"] = _retention(
            graphdef, result.state, data, first, retention_points
        ).reshape(*shape, first.depth)
    return out


def _retention(graphdef, state, data, spec, points):
    """Context retention per layer of every trained member: ``(E, L)``.

    Held-out ridge R^2 of the layer-1 signed distances ``z_i^1 / |W_i^1|``
    recovered from ``phi(z^l)`` (:func:`actgeo.kernels.layer_statistics`,
    its default penalty), on the first ``points`` test images.
    """
    probe = jnp.asarray(data.x_test[:points], jnp.float32)
    x = probe[:4]  # the distance statistics are not used here
    size = jax.tree.leaves(state)[0].shape[0]
    rows = []
    for i in range(size):
        params = as_params(member(graphdef, state, i))
        stats = kernels.layer_statistics(
            params, x, spec.activation, probe_x=probe, residual=spec.residual
        )
        rows.append(np.asarray(stats.retention_first))
    return np.stack(rows)
