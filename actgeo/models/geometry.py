"""Geometry measured during training: a :class:`~actgeo.training.Hook`.

:func:`geometry_hook` builds a hook that, at chosen steps of
:func:`actgeo.training.train`, measures every member of an ensemble of
:class:`~actgeo.models.MLP` s (vmapped over the state's member axis, one
compiled program) at fixed test points of the data:

* ``log10_delta_in`` ``(member, hidden_layer)``: per layer, the median over
  points and neurons of ``log10 delta_in``, ``delta_in = |z_i^l| / |J_i^l|``
  the distance to neuron ``i``'s boundary in input space
  (:func:`actgeo.kernels.neuron_distances`);
* ``log10_region_distance`` ``(member, hidden_layer)``: the median over
  points of ``log10`` of the distance to the boundary of the current linear
  region, the minimum of ``delta_in`` over all neurons of layers ``1..l``;
* ``changes_per_length`` ``(member, hidden_layer)``: activation-pattern
  changes of layer ``l`` along segments between pairs of test points, per
  unit length and per neuron (``counts / (length N)``, Hanin & Rolnick 2019),
  averaged over the segments. For piecewise-linear activations with kinks the
  count is exact (:func:`actgeo.kernels.walk_segment`); otherwise it is the
  sign changes of each preactivation between ``samples`` equally spaced
  points of the segment (:func:`actgeo.kernels.zero_crossings`);
* ``retention_first`` ``(member, hidden_layer)``: context retention, the
  held-out R^2 of a ridge probe from ``phi(z^l)`` to the first layer's signed
  distances ``z_i^1 / |W_i^1|`` (:func:`actgeo.kernels.layer_statistics`; the
  probe fits on the first half of the points and is scored on the rest);
* ``log10_output_jacobian`` ``(member,)``: the median over points of
  ``log10 |d f / d x|_F``, ``f`` the logits (the readout), or ``z^L`` for a
  network without a readout.

Limits: MLPs only (plain or residual); a CNN's geometry goes through
:func:`actgeo.models.preactivation_fn` and
:func:`actgeo.kernels.measure_function`, which this hook does not call.
Distances are first order for smooth activations (exact inside a linear
region for piecewise-linear ones). Axis letters: ``E`` members, ``B`` test
points, ``S`` segments, ``D`` input dimension, ``N`` width, ``L`` layers.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from actgeo import kernels
from actgeo.activations import get_activation
from actgeo.models.adapter import as_params
from actgeo.models.mlp import MLP

__all__ = ["GEOMETRY_VARIABLES", "geometry_hook"]

# The hook's variables (before any prefix) and their dimensions.
GEOMETRY_VARIABLES = {
    "log10_delta_in": ("member", "hidden_layer"),
    "log10_region_distance": ("member", "hidden_layer"),
    "changes_per_length": ("member", "hidden_layer"),
    "retention_first": ("member", "hidden_layer"),
    "log10_output_jacobian": ("member",),
}


def _log10_norm(g: jax.Array) -> jax.Array:
    """``log10 |g|_F`` with the largest entry factored out (no underflow)."""
    from actgeo.training import gradient_log10_norm

    return gradient_log10_norm(g)


def _exact(activation: str) -> bool:
    act = get_activation(activation)
    return bool(act.piecewise_linear and act.kinks)


def measure_member(
    params,
    points: jax.Array,
    starts: jax.Array,
    ends: jax.Array,
    *,
    activation: str,
    residual: float | None,
    config: kernels.StatsConfig,
    samples: int,
    max_crossings: int,
) -> dict[str, jax.Array]:
    """The hook's numbers for one network's :class:`~actgeo.networks.MLPParams`.

    ``points (B, D)``, ``starts, ends (S, D)``. Returns the variables of
    :data:`GEOMETRY_VARIABLES` without the member axis, plus
    ``changes_truncated`` ``()`` (whether an exact walk ran out of
    ``max_crossings``).
    """
    dist = kernels.neuron_distances(params, points, activation, residual=residual)
    width = params.w_in.shape[0]
    log_in = jnp.log10(dist.delta_in).reshape(dist.delta_in.shape[0], -1)
    log_region = jnp.log10(dist.region)

    lengths = jnp.linalg.norm(ends - starts, axis=-1)  # (S,)
    if _exact(activation):
        walks = jax.vmap(
            lambda a, b: kernels.walk_segment(
                params,
                activation,
                a,
                b,
                max_crossings=max_crossings,
                residual=residual,
            )
        )(starts, ends)
        per_layer, _ = kernels.normalised_changes(walks, width)  # (S, L)
        truncated = jnp.any(walks.truncated)
    else:
        t = jnp.linspace(0.0, 1.0, samples, dtype=points.dtype)

        def crossings(a, b):
            path = kernels.Path(
                points=a[None] + t[:, None] * (b - a)[None],
                velocity=jnp.broadcast_to(b - a, (samples, a.shape[0])),
                acceleration=jnp.zeros((samples, a.shape[0]), points.dtype),
                t=t,
                weights=jnp.full((samples,), 1.0 / (samples - 1), points.dtype),
                closed=False,
            )
            found = kernels.zero_crossings(params, path, activation, residual=residual)
            return jnp.sum(found.sign_changes, axis=-1)  # (L,)

        counts = jax.vmap(crossings)(starts, ends)  # (S, L)
        per_layer = counts / (lengths[:, None] * width)
        truncated = jnp.zeros((), bool)

    stats = kernels.layer_statistics(
        params,
        points,
        activation,
        probe_x=points,
        residual=residual,
        config=config,
    )

    z, j = kernels.jacobians(params, points, activation, residual=residual)
    if params.w_out is None:
        out_jac = j[-1]  # (B, N, D)
    else:
        slope = get_activation(activation).derivative(z[-1])  # (B, N)
        out_jac = jnp.einsum("kn,bnd->bkd", params.w_out, slope[:, :, None] * j[-1])
    log_jac = jax.vmap(_log10_norm)(out_jac)  # (B,)

    return {
        "log10_delta_in": jnp.median(log_in, axis=-1),
        "log10_region_distance": jnp.median(log_region, axis=-1),
        "changes_per_length": jnp.mean(per_layer, axis=0),
        "retention_first": stats.retention_first,
        "log10_output_jacobian": jnp.median(log_jac),
        "changes_truncated": truncated,
    }


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "activation",
        "residual",
        "config",
        "samples",
        "max_crossings",
    ),
)
def _measure_ensemble(
    state, points, starts, ends, *, graphdef, activation, residual, **options
):
    def one(member_state):
        params = as_params(nnx.merge(graphdef, member_state))
        return measure_member(
            params,
            points,
            starts,
            ends,
            activation=activation,
            residual=residual,
            **options,
        )

    return jax.vmap(one)(state)


def _test_inputs(data: Any) -> np.ndarray:
    x = getattr(data, "x_test", None)
    if x is None:
        raise TypeError(
            "data: expected an actgeo.data.Dataset with x_test, got "
            f"{type(data).__name__}"
        )
    x = np.asarray(x, np.float32)
    if x.ndim < 2:
        raise ValueError(f"data.x_test: expected shape (P, ...), got {x.shape}")
    return x.reshape(x.shape[0], -1)


def _count(name: str, value, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if value < least:
        raise ValueError(f"{name}: expected an integer >= {least}, got {value}")
    return int(value)


def geometry_hook(
    steps,
    data: Any,
    *,
    points: int = 64,
    lines: int = 8,
    key: jax.Array,
    ridge: float = 0.1,
    samples: int = 256,
    max_crossings: int | None = None,
    prefix: str = "",
):
    """A training hook measuring each member's geometry at the test points.

    Args:
      steps: the steps at which to measure, as :class:`~actgeo.training.Hook`
        takes them (an iterable of steps, or ``k`` for every ``k``-th step).
      data: an :class:`actgeo.data.Dataset`; its test inputs, flattened to
        ``(P', D)``, are where the geometry is measured.
      points: ``B``, test points measured (4..P'), drawn once with ``key``.
      lines: ``S``, segments between pairs of distinct measured points, drawn
        once with ``key``.
      key: a typed key (``jax.random.key``) for the choice of points and
        segments.
      ridge: the retention probe's penalty, relative to the features'
        variance (:class:`actgeo.kernels.StatsConfig`).
      samples: samples per segment for the sign-change count of smooth
        activations (ignored by the exact walk).
      max_crossings: crossings an exact walk may record per segment (by
        default ``max(256, 16 L N)``); a walk that runs out raises.
      prefix: put before every variable's name (to tell two such hooks
        apart in one history).

    Returns:
      A :class:`~actgeo.training.Hook` whose variables are those of
      :data:`GEOMETRY_VARIABLES` (see the module doc), with dimensions
      ``(hook_step, member, hidden_layer)`` or ``(hook_step, member)`` in the
      history. ``hidden_layer`` ``l`` is layer ``l + 1`` of the network.
      The hook's ``fn`` carries the measured points as ``fn.points``
      ``(B, D)`` and the segments' ends as ``fn.starts``, ``fn.ends``
      ``(S, D)`` (NumPy float32).

    Raises:
      TypeError, ValueError: bad arguments (here), or a model that is not an
        MLP (when the hook runs).
    """
    from actgeo.training import Hook

    x = _test_inputs(data)
    n_points = _count("points", points, 4)
    n_lines = _count("lines", lines, 1)
    n_samples = _count("samples", samples, 2)
    if n_points > x.shape[0]:
        raise ValueError(
            f"points: expected at most the {x.shape[0]} test inputs, got {n_points}"
        )
    if max_crossings is not None:
        max_crossings = _count("max_crossings", max_crossings, 1)
    if not (isinstance(ridge, int | float) and math.isfinite(ridge) and ridge > 0):
        raise ValueError(f"ridge: expected a positive finite number, got {ridge!r}")
    if not isinstance(prefix, str) or not re.match(r"^([A-Za-z_]\w*)?$", prefix):
        raise ValueError(f"prefix: expected an identifier or '', got {prefix!r}")
    try:
        key_ok = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    except AttributeError:
        key_ok = False
    if not key_ok:
        raise TypeError(f"key: expected a typed key from jax.random.key, got {key!r}")

    pick, first, shift = jax.random.split(key, 3)
    chosen = np.asarray(jax.random.permutation(pick, x.shape[0]))[:n_points]
    pts = x[chosen]
    a = np.asarray(jax.random.randint(first, (n_lines,), 0, n_points))
    b = (a + np.asarray(jax.random.randint(shift, (n_lines,), 1, n_points))) % n_points
    starts, ends = pts[a], pts[b]
    if np.any(np.all(starts == ends, axis=-1)):
        raise ValueError(
            "data: two chosen test points are equal, a segment of zero length; "
            "use another key"
        )
    config = kernels.StatsConfig(ridge=float(ridge))
    arrays = tuple(jnp.asarray(v) for v in (pts, starts, ends))
    names = {name: prefix + name for name in GEOMETRY_VARIABLES}
    dims = {names[name]: d for name, d in GEOMETRY_VARIABLES.items()}

    def fn(graphdef, state, step):
        model = nnx.merge(graphdef, jax.tree.map(lambda v: v[0], state))
        if not isinstance(model, MLP):
            raise TypeError(
                f"geometry_hook: measures actgeo.models.MLP ensembles, got "
                f"{type(model).__name__}"
            )
        spec = model.spec
        limit = max_crossings or max(256, 16 * spec.depth * spec.width)
        out = _measure_ensemble(
            state,
            *arrays,
            graphdef=graphdef,
            activation=spec.activation,
            residual=spec.residual,
            config=config,
            samples=n_samples,
            max_crossings=limit,
        )
        if bool(np.any(np.asarray(out.pop("changes_truncated")))):
            raise ValueError(
                f"geometry_hook: an exact walk reached max_crossings={limit} at "
                f"step {step}; pass a larger max_crossings"
            )
        return {names[name]: value for name, value in out.items()}

    fn.points, fn.starts, fn.ends = pts, starts, ends
    return Hook(steps, fn, dims=dims)
