"""Training of whole ensembles of Flax NNX models with optax.

:func:`train` takes a model split by ``nnx.split`` into a ``graphdef`` and a
``state`` whose every leaf carries a leading member axis ``E`` (as made by
:func:`actgeo.models.ensemble`) and trains all ``E`` members at once: one
compiled step, a pure function of the members' parameters, optimizer state
and minibatch, mapped over the member axis with ``jax.vmap``; the steps
between two events (evaluation, hook, checkpoint) run inside one compiled
loop.

Members are independent. Member ``m`` (its index in ``members``) draws its
minibatches from ``fold_in(key, m)``: the order of epoch ``e`` is the random
permutation drawn from ``fold_in(fold_in(key, m), e)``, cut into
``P // batch_size`` minibatches (the remainder is left out of that epoch).
So training an ensemble equals training each member alone with the same
``key`` and member index, to float rounding (a batched matrix product may
round differently from a single one).

History. Every ``eval_every`` steps, at step 0 and at the last step, each
member's loss on the whole training set, loss and accuracy on the whole test
set, and the norm of its gradient with respect to each layer's weights are
recorded. The gradient is that of the minibatch the next step uses. Norms
are reported as ``log10``, computed with the largest entry factored out so
that entries whose squares underflow still count, and the gradient is
backpropagated twice: plainly, and with the loss's cotangent seeded with
``2^100`` (backpropagation is linear in it), whose result, divided by
``2^100``, is taken for the layers whose plain norm is below ``1e-25``. So
the vanishing gradients of a deep sigmoid network read as small finite
numbers (about ``1e-40`` for the first of 64 layers at float32) rather than
zero; only a gradient below about ``1e-68`` (float32) reads as the floor,
``log10`` of the dtype's smallest subnormal (-44.85 for float32).

Early stopping is per member: a member whose monitored metric has not
improved for ``patience`` evaluations stops; its parameters and optimizer
state stay frozen from then on (its updates are masked) while the other
members train on, and its stop step is recorded.

Checkpoints (orbax) hold the members' parameters, the optimizer state, the
step, the key, the early-stopping state and the history so far. With
``checkpoint_dir`` given, :func:`train` resumes from the latest checkpoint
there, after checking that it was written with the same settings, and ends
exactly where an uninterrupted run ends: every step depends only on the
state, the key and the step number.

Limits. Only ``nnx.Param`` variables are trained; other variables of the
state (batch statistics, dropout's random state) are held at their given
values, so models that update them in the forward pass are not supported.
A resumed run must have the same settings, ``steps`` included (a finished
run is not extended). The optimizer's hyperparameters are compared only for
optimizers made by :func:`make_optimizer`; for other optax transformations
only the optimizer state's structure is.

Axis letters: ``E`` members, ``B`` inputs of a minibatch, ``P`` training
inputs, ``D`` input dimension, ``K`` outputs, ``L`` layers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from flax import nnx

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "EarlyStopping",
    "Hook",
    "TrainResult",
    "gradient_log10_norm",
    "make_optimizer",
    "train",
]

LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
METRICS = ("train_loss", "test_loss", "test_accuracy")
# Checkpoints kept in a checkpoint directory (the latest and the one before).
_KEEP = 2
_FORMAT = 1
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Gradient norms: a second backward pass seeded with this scale resolves the
# layers whose plain gradient norm lies below 10^_RESCALE_BELOW.
_GRADIENT_SCALE = 2.0**100
_RESCALE_BELOW = -25.0

Loss = Literal["cross_entropy", "mse"]


# ---------------------------------------------------------------- optimizers


class _DescribedTransformation(optax.GradientTransformation):
    """An optax transformation that remembers the settings it was made from.

    The settings go into checkpoints, so that resuming with another learning
    rate is refused. Behaves exactly as the wrapped transformation.
    """

    settings: dict


def _is_real(value) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def make_optimizer(
    name: str, learning_rate: float, **options: Any
) -> optax.GradientTransformation:
    """An optax optimizer by name, with its learning rate checked.

    Args:
      name: one of :data:`OPTIMIZERS`: ``"sgd"``, ``"momentum"`` (SGD with
        momentum 0.9 unless ``momentum`` is given), ``"adam"``, ``"adamw"``,
        ``"rmsprop"``.
      learning_rate: a positive finite number.
      **options: further keyword arguments of the optax constructor (for
        example ``b1``, ``weight_decay``, ``momentum``); numbers only.

    Returns:
      The optax transformation. Its settings are recorded in checkpoints, so
      :func:`train` refuses to resume a run made with other settings.

    Raises:
      ValueError: unknown name, or a learning rate that is not positive and
        finite, or a non-finite option.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"name: expected one of {OPTIMIZERS}, got {name!r}")
    if not _is_real(learning_rate):
        raise TypeError(
            f"learning_rate: expected a number, got {type(learning_rate).__name__}"
        )
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(
            f"learning_rate: expected a positive finite number, got {learning_rate!r}"
        )
    for option, value in options.items():
        if _is_real(value) and not math.isfinite(value):
            raise ValueError(f"{option}: expected a finite number, got {value!r}")
    constructors = {
        "sgd": optax.sgd,
        "momentum": functools.partial(optax.sgd, momentum=0.9),
        "adam": optax.adam,
        "adamw": optax.adamw,
        "rmsprop": optax.rmsprop,
    }
    try:
        tx = constructors[name](float(learning_rate), **options)
    except TypeError as err:
        raise TypeError(f"options: not accepted by optax for {name!r}: {err}") from err
    described = _DescribedTransformation(tx.init, tx.update)
    described.settings = {
        "name": name,
        "learning_rate": float(learning_rate),
        **{k: _jsonable(v) for k, v in sorted(options.items())},
    }
    return described


def _jsonable(value):
    if isinstance(value, bool | str) or value is None:
        return value
    if _is_real(value):
        return float(value)
    return repr(value)


# ------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Per-member early stopping on an evaluated metric.

    A member stops once its metric has gone ``patience`` evaluations in a row
    without improving on its best value by more than ``min_delta`` (losses
    must fall, accuracy must rise). A stopped member keeps the parameters it
    had when it stopped.

    Attributes:
      patience: evaluations without improvement before stopping (at least 1).
      metric: ``"test_loss"``, ``"test_accuracy"`` or ``"train_loss"``.
      min_delta: the least change that counts as an improvement (>= 0).
    """

    patience: int
    metric: str = "test_loss"
    min_delta: float = 0.0

    def __post_init__(self):
        problems = []
        if not _is_count(self.patience) or self.patience < 1:
            problems.append(
                f"patience: expected a positive integer, got {self.patience!r}"
            )
        if self.metric not in METRICS:
            problems.append(f"metric: expected one of {METRICS}, got {self.metric!r}")
        if not (
            _is_real(self.min_delta)
            and math.isfinite(self.min_delta)
            and self.min_delta >= 0
        ):
            problems.append(
                f"min_delta: expected a finite number >= 0, got {self.min_delta!r}"
            )
        if problems:
            raise ValueError("EarlyStopping: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class Hook:
    """A measurement taken at chosen steps and stored in the history.

    ``fn(graphdef, state, step)`` receives the ensemble's state (leading
    member axis ``E``) and returns a mapping from names to arrays. Arrays
    whose first axis has length ``E`` are read as per member. Each name
    becomes a variable of the history with dimensions ``("hook_step",
    *dims[name])``; ``dims`` defaults to ``("member", name + "_dim1", ...)``
    for per-member arrays and ``(name + "_dim0", ...)`` otherwise.

    Attributes:
      steps: the steps at which to run (0 is before the first update), or an
        integer ``k`` for every ``k``-th step from 0.
      fn: the measurement.
      dims: optional names of each returned array's axes.
    """

    steps: int | Iterable[int]
    fn: Callable[[Any, nnx.State, int], Mapping[str, Any]]
    dims: Mapping[str, Sequence[str]] | None = None

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Hook.fn: expected a callable, got {self.fn!r}")
        steps = self.steps
        if _is_count(steps):
            if steps < 1:
                raise ValueError(f"Hook.steps: expected k >= 1, got {steps}")
            steps = int(steps)
        else:
            try:
                steps = tuple(steps)
            except TypeError:
                raise TypeError(
                    "Hook.steps: expected an integer or an iterable of step "
                    f"numbers, got {steps!r}"
                ) from None
            bad = [s for s in steps if not _is_count(s) or s < 0]
            if bad:
                raise ValueError(
                    f"Hook.steps: expected non-negative integers, got {bad}"
                )
            steps = tuple(sorted({int(s) for s in steps}))
        object.__setattr__(self, "steps", steps)
        dims = {} if self.dims is None else dict(self.dims)
        for name, names in dims.items():
            if isinstance(names, str) or not all(_NAME.match(n) for n in names):
                raise ValueError(
                    f"Hook.dims[{name!r}]: expected a sequence of identifier "
                    f"names, got {names!r}"
                )
            dims[name] = tuple(names)
        object.__setattr__(self, "dims", dims)

    def step_set(self, last: int) -> tuple[int, ...]:
        """The steps in ``0..last`` at which this hook runs."""
        if isinstance(self.steps, int):
            return tuple(range(0, last + 1, self.steps))
        return tuple(s for s in self.steps if s <= last)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
      state: the members' final state, every leaf ``(E, ...)``, in the layout
        of the ``state`` given (combine with the ``graphdef`` by
        ``nnx.merge`` or :func:`actgeo.models.member`).
      history: ``xarray.Dataset`` with dimensions ``step`` (the evaluation
        steps), ``member`` and ``layer``: ``train_loss``, ``test_loss``,
        ``test_accuracy`` (classification only) ``(step, member)``,
        ``log10_grad_norm`` ``(step, member, layer)``, ``stopped``
        ``(step, member)`` (after that evaluation's early-stopping decision),
        ``stop_step`` ``(member,)`` (-1 if it never stopped), and the hooks'
        variables along ``hook_step``.
      opt_state: the optimizer state, leaves ``(E, ...)``.
      step: the number of steps taken.
      finished: whether the run is complete (all steps taken, or every member
        stopped early), as opposed to cut short by ``stop_after``.
    """

    state: nnx.State
    history: xr.Dataset
    opt_state: Any
    step: int
    finished: bool


def _is_count(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


# ------------------------------------------------------------------- kernels


class _Static(NamedTuple):
    """Settings fixed at compile time."""

    graphdef: Any
    optimizer: optax.GradientTransformation
    loss: str
    batch_size: int
    one_hot: int  # K when integer labels are one-hot targets of mse, else 0
    classification: bool
    layers: tuple  # ((leaf index, stacked), ...) of the weight gradients


def _outputs(static: _Static, params, rest, x):
    """Model outputs ``(B, K)`` for inputs ``x`` ``(B, ...)``, one member."""
    model = nnx.merge(static.graphdef, params, rest)
    out = model(x)
    return out[:, None] if out.ndim == 1 else out


def _per_example(static: _Static, out, y):
    """Per-example loss ``(B,)`` and correctness ``(B,)`` (or zeros)."""
    if static.loss == "cross_entropy":
        loss = optax.softmax_cross_entropy_with_integer_labels(out, y)
    else:
        if static.one_hot:
            target = jax.nn.one_hot(y, static.one_hot, dtype=out.dtype)
        else:
            target = y.reshape(out.shape).astype(out.dtype)
        loss = jnp.mean((out - target) ** 2, axis=-1)
    if static.classification:
        correct = (jnp.argmax(out, axis=-1) == y).astype(out.dtype)
    else:
        correct = jnp.zeros_like(loss)
    return loss, correct


def _batch_loss(static: _Static, params, rest, x, y):
    loss, _ = _per_example(static, _outputs(static, params, rest, x), y)
    return jnp.mean(loss)


def gradient_log10_norm(g: jax.Array) -> jax.Array:
    """``log10 |g|`` (Frobenius norm), finite for tiny gradients.

    The largest entry ``m`` is factored out, ``|g| = m |g / m|``, so entries
    whose squares underflow still count. An all-zero ``g`` gives ``log10`` of
    the smallest subnormal of its dtype (the floor); non-finite entries give
    NaN or inf.
    """
    g = jnp.asarray(g)
    m = jnp.max(jnp.abs(g))
    safe = jnp.where((m > 0) & jnp.isfinite(m), m, jnp.ones_like(m))
    scaled = jnp.sum(jnp.square(g / safe))
    floor = jnp.asarray(np.log10(jnp.finfo(g.dtype).smallest_subnormal), g.dtype)
    return jnp.where(m == 0, floor, jnp.log10(safe) + 0.5 * jnp.log10(scaled))


def _layer_norms(static: _Static, grads) -> jax.Array:
    leaves = jax.tree.leaves(grads)
    norms = []
    for index, stacked in static.layers:
        g = leaves[index]
        if stacked:
            norms.append(jax.vmap(gradient_log10_norm)(g))
        else:
            norms.append(gradient_log10_norm(g)[None])
    return jnp.concatenate(norms)


def _permutations(key, members, epoch, count):
    """Minibatch order of one epoch for each member: ``(E, P)``."""
    return jax.vmap(
        lambda m: jax.random.permutation(
            jax.random.fold_in(jax.random.fold_in(key, m), epoch), count
        )
    )(members)


def _member_update(static: _Static, params, rest, opt_state, active, x, y):
    grads = jax.grad(_batch_loss, argnums=1)(static, params, rest, x, y)
    updates, new_opt = static.optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(active, new, old))
    return keep(new_params, params), keep(new_opt, opt_state)


def _dataset_metrics(static: _Static, params, rest, chunks):
    """Mean loss and accuracy over a padded, chunked data set, one member."""
    xs, ys, ws = chunks

    def one(chunk):
        x, y, w = chunk
        loss, correct = _per_example(static, _outputs(static, params, rest, x), y)
        return jnp.sum(w * loss), jnp.sum(w * correct)

    losses, corrects = jax.lax.map(one, (xs, ys, ws))
    total = jnp.sum(ws)
    return jnp.sum(losses) / total, jnp.sum(corrects) / total


def _member_metrics(static: _Static, params, rest, x, y, train, test):
    """One member's metrics; ``x``, ``y`` is its next minibatch."""
    train_loss, _ = _dataset_metrics(static, params, rest, train)
    test_loss, test_accuracy = _dataset_metrics(static, params, rest, test)
    # Backpropagation is linear in the loss's cotangent: a second pass seeded
    # with 2^100 resolves gradients whose entries underflow in the first.
    loss, backward = jax.vjp(lambda p: _batch_loss(static, p, rest, x, y), params)
    (plain,) = backward(jnp.ones_like(loss))
    (scaled,) = backward(jnp.full_like(loss, _GRADIENT_SCALE))
    plain = _layer_norms(static, plain)
    scaled_raw = _layer_norms(static, scaled)
    floor = np.log10(jnp.finfo(scaled_raw.dtype).smallest_subnormal)
    scaled = scaled_raw - np.log10(_GRADIENT_SCALE)
    # An exactly zero gradient stays at the floor in both passes (one number
    # for "zero"); only a gradient the scaled pass resolves is replaced.
    rescue = (plain < _RESCALE_BELOW) & jnp.isfinite(scaled) & (scaled_raw > floor)
    norms = jnp.where(rescue, scaled, plain)
    # A diverged member (non-finite loss or parameters) reports NaN, not the
    # zero gradients that some activations' derivatives make of NaN inputs.
    finite = jnp.isfinite(loss)
    for leaf in jax.tree.leaves(params):
        finite = finite & jnp.all(jnp.isfinite(leaf))
    return {
        "train_loss": train_loss,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "log10_grad_norm": jnp.where(finite, norms, jnp.nan),
    }


@functools.partial(jax.jit, static_argnums=0)
def _run(
    static: _Static,
    params,
    rest,
    opt_state,
    active,
    key,
    members,
    start,
    count,
    evaluate,
    x,
    y,
    train,
    test,
):
    """Takes ``count`` steps from step ``start``, then evaluates if asked.

    One compiled program serves every segment of every run with these shapes
    (``start``, ``count`` and ``evaluate`` are traced), so a step computes the
    same bits whichever segment it falls in.
    """
    p = x.shape[0]
    batch = static.batch_size
    per_epoch = p // batch
    update = jax.vmap(functools.partial(_member_update, static))

    def order_of(i, order):
        # The members' order of the epoch of step start + i, drawn at the
        # epoch's first step and at the segment's start, else carried.
        step = start + i
        return jax.lax.cond(
            (step % per_epoch == 0) | (i == 0),
            lambda: _permutations(key, members, step // per_epoch, p),
            lambda: order,
        )

    def minibatch(i, order):
        position = (start + i) % per_epoch
        idx = jax.lax.dynamic_slice_in_dim(order, position * batch, batch, axis=1)
        return x[idx], y[idx]

    def body(carry):
        i, params, opt_state, order = carry
        order = order_of(i, order)
        params, opt_state = jax.lax.cond(
            i < count,
            lambda: update(params, rest, opt_state, active, *minibatch(i, order)),
            lambda: (params, opt_state),
        )
        return i + 1, params, opt_state, order

    # The loop runs count + 1 times: the last pass only draws the order of
    # step start + count, whose minibatch the gradient norms are taken on.
    order = jnp.zeros((members.shape[0], p), jnp.int32)
    _, params, opt_state, order = jax.lax.while_loop(
        lambda carry: carry[0] <= count,
        body,
        (jnp.zeros_like(count), params, opt_state, order),
    )
    metrics = jax.vmap(
        functools.partial(_member_metrics, static, train=train, test=test)
    )
    xb, yb = minibatch(count, order)
    shapes = jax.eval_shape(metrics, params, rest, xb, yb)
    values = jax.lax.cond(
        evaluate,
        lambda: metrics(params, rest, xb, yb),
        lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
    )
    return params, opt_state, values


# ---------------------------------------------------------------- validation


def _check_key(key):
    if not (
        isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    ):
        raise TypeError("key: expected a typed key from jax.random.key(seed)")
    if key.shape != ():
        raise ValueError(f"key: expected a single key, got shape {key.shape}")


def _members_of(state) -> int:
    if not isinstance(state, nnx.State):
        raise TypeError(
            "state: expected the nnx.State of an ensemble (from nnx.split or "
            f"actgeo.models.ensemble), got {type(state).__name__}"
        )
    leaves = jax.tree.leaves(state)
    if not leaves:
        raise ValueError("state: the model has no variables")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "state: expected every leaf to have the same leading member axis E, "
            f"got leading sizes {sorted(sizes, key=str)}"
        )
    return sizes.pop()


def _check_schedule(
    p,
    *,
    batch_size,
    steps,
    epochs,
    eval_every,
    eval_batch_size,
    checkpoint_every,
    stop_after,
):
    """Checks the step counts; returns ``(steps, checkpoint_every)``."""
    if not _is_count(batch_size) or not 1 <= batch_size <= p:
        raise ValueError(
            f"batch_size: expected an integer in 1..{p} (the training set size), "
            f"got {batch_size!r}"
        )
    if (steps is None) == (epochs is None):
        raise ValueError("steps, epochs: give exactly one of them")
    if epochs is not None:
        if not _is_count(epochs) or epochs < 1:
            raise ValueError(f"epochs: expected a positive integer, got {epochs!r}")
        steps = epochs * (p // batch_size)
    if checkpoint_every is None:
        checkpoint_every = eval_every
    for name, value in (
        ("steps", steps),
        ("eval_every", eval_every),
        ("eval_batch_size", eval_batch_size),
        ("checkpoint_every", checkpoint_every),
    ):
        if not _is_count(value) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if stop_after is not None and (not _is_count(stop_after) or stop_after < 0):
        raise ValueError(
            f"stop_after: expected a non-negative integer or None, got {stop_after!r}"
        )
    return int(steps), int(checkpoint_every)


def _check_hooks(hooks, steps) -> list[Hook]:
    if hooks is None:
        return []
    if isinstance(hooks, Mapping):
        hooks = list(hooks.items())
    if isinstance(hooks, Hook) or callable(hooks):
        raise TypeError(
            "hooks: expected a sequence of Hook objects or (steps, fn) pairs, got "
            f"{type(hooks).__name__}"
        )
    checked = []
    for hook in hooks:
        if not isinstance(hook, Hook):
            if not (isinstance(hook, tuple | list) and len(hook) == 2):
                raise TypeError(
                    f"hooks: expected a Hook or a (steps, fn) pair, got {hook!r}"
                )
            hook = Hook(*hook)
        if not isinstance(hook.steps, int):
            late = [s for s in hook.steps if s > steps]
            if late:
                raise ValueError(f"hooks: steps {late} lie beyond steps={steps}")
        checked.append(hook)
    return checked


def _check_members(members, count) -> list[int]:
    if members is None:
        return list(range(count))
    members = np.asarray(members).reshape(-1).tolist()
    if (
        len(members) != count
        or not all(_is_count(m) and 0 <= m < 2**32 for m in members)
        or len(set(members)) != count
    ):
        raise ValueError(
            f"members: expected {count} distinct indices in 0..2**32-1 (one per "
            f"member of the state), got {members}"
        )
    return members


def _data_arrays(data):
    names = ("x_train", "y_train", "x_test", "y_test", "classes")
    missing = [n for n in names if not hasattr(data, n)]
    if missing:
        raise TypeError(
            "data: expected an actgeo.data.Dataset (x_train, y_train, x_test, "
            f"y_test, classes), got {type(data).__name__} without {missing}"
        )
    arrays = [np.asarray(getattr(data, n)) for n in names[:4]]
    x_train, y_train, x_test, y_test = arrays
    problems = []
    if x_train.ndim < 2 or x_train.shape[1:] != x_test.shape[1:]:
        problems.append(
            "x_train and x_test: expected (P, ...) arrays with the same input "
            f"shape, got {x_train.shape} and {x_test.shape}"
        )
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if y.ndim < 1 or y.shape[0] != x.shape[0]:
            problems.append(
                f"y_{split}: expected one target per input ({x.shape[0]}), got "
                f"shape {y.shape}"
            )
        if x.shape[0] < 1:
            problems.append(f"x_{split}: expected at least one input")
        if not np.issubdtype(x.dtype, np.floating):
            problems.append(f"x_{split}: expected floats, got {x.dtype}")
        elif not np.all(np.isfinite(x)):
            problems.append(f"x_{split}: contains non-finite values")
    if problems:
        raise ValueError("data: " + "; ".join(problems))
    return x_train, y_train, x_test, y_test, data.classes


def _check_targets(loss, y_train, y_test, classes, outputs):
    """Checks targets against the loss and the model's ``K`` outputs.

    Returns ``(classification, one_hot)``.
    """
    integer = np.issubdtype(y_train.dtype, np.integer) and np.issubdtype(
        y_test.dtype, np.integer
    )
    if integer:
        if not _is_count(classes) or classes < 2:
            raise ValueError(
                "data.classes: integer labels need a number of classes >= 2, got "
                f"{classes!r}"
            )
        for y, split in ((y_train, "train"), (y_test, "test")):
            if y.ndim != 1:
                raise ValueError(
                    f"data.y_{split}: expected labels of shape (P,), got {y.shape}"
                )
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= classes:
                raise ValueError(
                    f"data.y_{split}: labels must lie in 0..{classes - 1}, found "
                    f"{lo}..{hi}"
                )
        if outputs != classes:
            raise ValueError(
                f"model: {outputs} outputs per input, but the data has {classes} "
                "classes"
            )
        return True, (classes if loss == "mse" else 0)
    if loss == "cross_entropy":
        raise ValueError(
            "loss: 'cross_entropy' needs integer class labels, got targets of "
            f"dtype {y_train.dtype}; use loss='mse' for regression"
        )
    for y, split in ((y_train, "train"), (y_test, "test")):
        if not np.issubdtype(y.dtype, np.floating):
            raise ValueError(
                f"data.y_{split}: expected integer labels or float targets, got "
                f"{y.dtype}"
            )
        width = 1 if y.ndim == 1 else int(np.prod(y.shape[1:]))
        if y.ndim > 2 or width != outputs:
            raise ValueError(
                f"data.y_{split}: targets of shape {y.shape} do not match the "
                f"model's {outputs} outputs"
            )
        if not np.all(np.isfinite(y)):
            raise ValueError(f"data.y_{split}: contains non-finite targets")
    return False, 0


def _output_count(graphdef, params, rest, x):
    """The model's outputs per input ``K``, from one member, without running."""
    one = functools.partial(
        jax.tree.map, lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    )
    probe = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)

    def forward(params, rest, x):
        return nnx.merge(graphdef, params, rest)(x)

    try:
        out = jax.eval_shape(forward, one(params), one(rest), probe)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"data: inputs of shape {x.shape[1:]} do not fit the model: {err}"
        ) from err
    if not hasattr(out, "shape") or out.ndim not in (1, 2) or out.shape[0] != 1:
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"model: expected outputs of shape (B, K) for inputs (B, ...), got "
            f"{shape} for B = 1"
        )
    return 1 if out.ndim == 1 else out.shape[1]


def _layer_plan(params):
    """Which gradient leaves are layer weights, in order, and their names.

    An MLP in the layout of :class:`~actgeo.networks.MLPParams` (parameters
    ``w_in``, ``w`` stacked ``(L-1, N, N)`` and optionally ``w_out`` side by
    side) has layers ``w_in``, ``w[0]``, ..., ``w[L-2]``, ``w_out``, in the
    order of depth. In any other model every parameter with two or more axes
    (besides ``E``) is one layer's weights, in the order of their paths.
    Returns ``(plan, names)`` with ``plan = ((leaf index, stacked), ...)``.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    paths = []
    for path, _leaf in flat:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        paths.append(tuple(k for k in keys if k != "value"))
    where = {path: i for i, path in enumerate(paths)}
    plan, names = [], []
    for path, index in where.items():
        parent = path[:-1]
        hidden = where.get((*parent, "w"))
        if path[-1] != "w_in" or hidden is None:
            continue
        prefix = "".join(f"{k}/" for k in parent)
        plan += [(index, False), (hidden, True)]
        names.append(prefix + "w_in")
        names += [f"{prefix}w[{i}]" for i in range(flat[hidden][1].shape[1])]
        if (*parent, "w_out") in where:
            plan.append((where[(*parent, "w_out")], False))
            names.append(prefix + "w_out")
    if not plan:
        for path, index in where.items():
            if flat[index][1].ndim - 1 >= 2:
                plan.append((index, False))
                names.append("/".join(path))
    if not plan:
        raise ValueError(
            "state: no parameter with two or more axes to report gradient norms for"
        )
    return tuple(plan), names


def _chunks(x, y, size):
    """Pads to a multiple of ``size`` and reshapes to ``(chunks, size, ...)``."""
    count = x.shape[0]
    size = min(size, count)
    total = -(-count // size) * size
    weight = np.zeros(total, np.float32)
    weight[:count] = 1
    pad = total - count
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)])
    shape = (total // size, size)
    return (
        jnp.asarray(x.reshape(shape + x.shape[1:])),
        jnp.asarray(y.reshape(shape + y.shape[1:])),
        jnp.asarray(weight.reshape(shape)),
    )


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------- history


class _History:
    """Evaluation rows and hook results, as host NumPy arrays."""

    def __init__(self):
        self.steps: list[int] = []
        self.rows: dict[str, list[np.ndarray]] = {}
        self.hook_steps: dict[str, list[int]] = {}
        self.hook_values: dict[str, list[np.ndarray]] = {}
        self.hook_dims: dict[str, tuple[str, ...]] = {}

    def add_eval(self, step: int, values: Mapping[str, np.ndarray]):
        self.steps.append(step)
        for name, value in values.items():
            self.rows.setdefault(name, []).append(np.asarray(value))

    def add_hook(self, step, name, value, dims):
        known = self.hook_values.get(name)
        if known and (known[0].shape != value.shape or known[0].dtype != value.dtype):
            raise ValueError(
                f"hooks: {name!r} returned shape {value.shape} {value.dtype} at "
                f"step {step}, but {known[0].shape} {known[0].dtype} before"
            )
        self.hook_steps.setdefault(name, []).append(step)
        self.hook_values.setdefault(name, []).append(value)
        self.hook_dims[name] = dims

    def tree(self) -> dict:
        """Arrays for a checkpoint."""
        tree = {"eval": {"step": np.asarray(self.steps, np.int64)}}
        for name, rows in self.rows.items():
            tree["eval"][name] = np.stack(rows)
        if self.hook_values:
            tree["hooks"] = {
                name: {
                    "step": np.asarray(self.hook_steps[name], np.int64),
                    "value": np.stack(values),
                }
                for name, values in self.hook_values.items()
            }
        return tree

    @classmethod
    def from_tree(cls, tree, hook_dims) -> _History:
        history = cls()
        rows = dict(tree["eval"])
        history.steps = [int(s) for s in np.asarray(rows.pop("step"))]
        history.rows = {k: list(np.asarray(v)) for k, v in rows.items()}
        for name, item in tree.get("hooks", {}).items():
            history.hook_steps[name] = [int(s) for s in np.asarray(item["step"])]
            history.hook_values[name] = list(np.asarray(item["value"]))
            history.hook_dims[name] = tuple(hook_dims[name])
        return history

    def dataset(self, members, layer_names, stop_step, attrs) -> xr.Dataset:
        coords = {
            "step": np.asarray(self.steps, np.int64),
            "member": np.asarray(members, np.int64),
            "layer": np.arange(1, len(layer_names) + 1),
            "layer_name": ("layer", np.asarray(layer_names)),
        }
        data = {}
        for name, rows in self.rows.items():
            value = np.stack(rows)
            dims = ("step", "member", "layer")[: value.ndim]
            data[name] = (dims, value)
        data["stop_step"] = ("member", np.asarray(stop_step, np.int64))
        if self.hook_values:
            hook_steps = sorted({s for v in self.hook_steps.values() for s in v})
            coords["hook_step"] = np.asarray(hook_steps, np.int64)
            where = {s: i for i, s in enumerate(hook_steps)}
            for name, values in self.hook_values.items():
                value = np.stack(values)
                rows = [where[s] for s in self.hook_steps[name]]
                if len(rows) < len(hook_steps):
                    full = np.full(
                        (len(hook_steps), *value.shape[1:]),
                        np.nan,
                        np.result_type(value.dtype, np.float32),
                    )
                    full[rows] = value
                    value = full
                data[name] = (("hook_step", *self.hook_dims[name]), value)
        return xr.Dataset(data, coords=coords, attrs=attrs)


def _hook_dims(hook: Hook, name: str, value: np.ndarray, members: int):
    dims = hook.dims.get(name)
    if dims is None:
        if value.ndim and value.shape[0] == members:
            dims = ("member", *(f"{name}_dim{i}" for i in range(1, value.ndim)))
        else:
            dims = tuple(f"{name}_dim{i}" for i in range(value.ndim))
    if len(dims) != value.ndim:
        raise ValueError(
            f"Hook.dims[{name!r}]: {len(dims)} names for an array of shape "
            f"{value.shape}"
        )
    return dims


def _run_hook(hook, graphdef, state, step, history, members, reserved):
    out = hook.fn(graphdef, state, step)
    if not isinstance(out, Mapping):
        raise TypeError(
            f"hooks: expected the hook to return a mapping of names to arrays, got "
            f"{type(out).__name__} at step {step}"
        )
    for name, value in out.items():
        if not isinstance(name, str) or not _NAME.match(name) or name in reserved:
            raise ValueError(
                f"hooks: result names must be identifiers other than {reserved}, "
                f"got {name!r}"
            )
        value = np.asarray(jax.device_get(value))
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise TypeError(
                f"hooks: {name!r} must be a numeric array, got dtype {value.dtype}"
            )
        if value.size == 0:
            raise ValueError(f"hooks: {name!r} is empty (shape {value.shape})")
        dims = _hook_dims(hook, name, value, members)
        history.add_hook(step, name, value, dims)


# -------------------------------------------------------------- checkpoints


def _manager(directory):
    import orbax.checkpoint as ocp

    path = pathlib.Path(directory).expanduser().resolve()
    options = ocp.CheckpointManagerOptions(max_to_keep=_KEEP, create=True)
    return ocp.CheckpointManager(path, options=options)


def _save(manager, step, arrays, progress, history, settings):
    import orbax.checkpoint as ocp

    meta = dict(settings, hook_dims={k: list(v) for k, v in history.hook_dims.items()})
    # Orbax stores no zero-size arrays (the hidden layers of a depth-1 MLP);
    # the arrays go in as a flat mapping of the non-empty leaves.
    leaves = jax.tree.leaves(arrays)
    flat = {f"{i:05d}": leaf for i, leaf in enumerate(leaves) if np.size(leaf)}
    manager.save(
        step,
        args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(flat),
            progress=ocp.args.StandardSave(progress),
            history=ocp.args.StandardSave(history.tree()),
            settings=ocp.args.JsonSave(meta),
        ),
    )


def _restore(manager, step, arrays_like, settings):
    import orbax.checkpoint as ocp

    stored = manager.restore(
        step, args=ocp.args.Composite(settings=ocp.args.JsonRestore())
    )["settings"]
    hook_dims = stored.pop("hook_dims", {})
    differing = [
        name
        for name in sorted(set(stored) | set(settings))
        if stored.get(name) != settings.get(name)
    ]
    if differing:

        def show(value):
            text = json.dumps(value)
            return text if len(text) <= 60 else text[:57] + "..."

        details = "; ".join(
            f"{name}: stored {show(stored.get(name))}, given {show(settings.get(name))}"
            for name in differing
        )
        raise ValueError(
            f"checkpoint_dir: the checkpoint at step {step} in {manager.directory} "
            f"was written with other settings ({details}); resume with the same "
            "settings or use another directory"
        )
    leaves, treedef = jax.tree.flatten(arrays_like)
    abstract = {
        f"{i:05d}": ocp.utils.to_shape_dtype_struct(leaf)
        for i, leaf in enumerate(leaves)
        if np.size(leaf)
    }
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(abstract),
            progress=ocp.args.StandardRestore(),
            history=ocp.args.StandardRestore(),
        ),
    )
    flat = restored["arrays"]
    leaves = [flat.get(f"{i:05d}", leaf) for i, leaf in enumerate(leaves)]
    history = _History.from_tree(restored["history"], hook_dims)
    return jax.tree.unflatten(treedef, leaves), restored["progress"], history


def _structure(tree) -> list:
    flat, treedef = jax.tree_util.tree_flatten(tree)
    return [str(treedef), [[list(np.shape(a)), str(a.dtype)] for a in flat]]


def _settings(
    *,
    members,
    loss,
    steps,
    batch_size,
    eval_every,
    eval_batch_size,
    early_stopping,
    hooks,
    key,
    optimizer,
    opt_state,
    state,
) -> dict:
    """What a checkpoint must agree with to be resumed, as JSON values."""
    return {
        "format": _FORMAT,
        "members": members,
        "loss": loss,
        "steps": steps,
        "batch_size": batch_size,
        "eval_every": eval_every,
        "eval_batch_size": eval_batch_size,
        "early_stopping": None
        if early_stopping is None
        else dataclasses.asdict(early_stopping),
        "hooks": [
            h.steps if isinstance(h.steps, int) else list(h.steps) for h in hooks
        ],
        "key": [
            str(jax.random.key_impl(key)),
            *np.asarray(jax.random.key_data(key)).reshape(-1).tolist(),
        ],
        "optimizer": getattr(optimizer, "settings", None),
        "opt_state": _structure(opt_state),
        "state": _structure(state),
    }


# ---------------------------------------------------------------------- train


def train(
    graphdef: Any,
    state: nnx.State,
    data: Any,
    *,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    batch_size: int,
    steps: int | None = None,
    epochs: int | None = None,
    loss: Loss = "cross_entropy",
    eval_every: int = 100,
    early_stopping: EarlyStopping | None = None,
    hooks: Sequence[Hook | tuple] = (),
    checkpoint_dir: str | pathlib.Path | None = None,
    checkpoint_every: int | None = None,
    stop_after: int | None = None,
    members: Sequence[int] | None = None,
    eval_batch_size: int = 4096,
) -> TrainResult:
    """Trains the ``E`` members of an ensemble at once.

    Args:
      graphdef: the model's graph definition (from ``nnx.split`` or
        :func:`actgeo.models.ensemble`).
      state: the members' state, every leaf ``(E, ...)``. Parameters
        (``nnx.Param``) are trained; other variables are held fixed.
      data: an :class:`actgeo.data.Dataset`: ``x_train`` ``(P, ...)``,
        ``y_train`` ``(P,)`` integer labels (or float targets ``(P,)`` /
        ``(P, K)`` for ``loss="mse"``), ``x_test``, ``y_test``, ``classes``.
      optimizer: an optax transformation, e.g. from :func:`make_optimizer`
        (which checks the learning rate and records its settings in
        checkpoints).
      key: a typed key (``jax.random.key``) for the minibatch order; use a
        different key from the one that drew the weights.
      batch_size: ``B``, 1..P.
      steps: number of optimizer steps; or give ``epochs`` instead.
      epochs: number of passes, each ``P // batch_size`` steps.
      loss: ``"cross_entropy"`` (integer labels, softmax over the ``K``
        outputs) or ``"mse"`` (mean over outputs of the squared error against
        float targets, or against one-hot labels).
      eval_every: steps between evaluations (also at step 0 and at the end).
      early_stopping: per-member early stopping, or ``None``.
      hooks: :class:`Hook` objects or ``(steps, fn)`` pairs (or a mapping
        ``{steps: fn}``), run after the evaluation (if any) at their steps;
        ``fn(graphdef, state, step)`` returns a mapping of names to arrays.
      checkpoint_dir: directory for orbax checkpoints; the run resumes from
        the latest one there if present (refusing one written with other
        settings).
      checkpoint_every: steps between checkpoints (default ``eval_every``);
        a checkpoint is also written at the end and at ``stop_after``.
      stop_after: stop after this many steps in all (counting steps of an
        earlier run resumed from), as if interrupted; the result then has
        ``finished=False`` and a later call resumes.
      members: the members' indices ``(E,)`` (default ``0..E-1``); member
        ``m``'s minibatch order comes from ``fold_in(key, m)``, so training
        member ``m`` alone with ``members=[m]`` reproduces it.
      eval_batch_size: inputs per chunk when evaluating on whole data sets.

    Returns:
      :class:`TrainResult` with the final state and the history.

    Raises:
      TypeError, ValueError: invalid arguments (before any training), or a
        checkpoint written with other settings.
    """
    # Arguments, cheapest first, all before any compilation.
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            "optimizer: expected an optax.GradientTransformation, got "
            f"{type(optimizer).__name__}"
        )
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
    _check_key(key)
    count = _members_of(state)
    x_train, y_train, x_test, y_test, classes = _data_arrays(data)
    steps, checkpoint_every = _check_schedule(
        x_train.shape[0],
        batch_size=batch_size,
        steps=steps,
        epochs=epochs,
        eval_every=eval_every,
        eval_batch_size=eval_batch_size,
        checkpoint_every=checkpoint_every,
        stop_after=stop_after,
    )
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(
            "early_stopping: expected an EarlyStopping or None, got "
            f"{type(early_stopping).__name__}"
        )
    hooks = _check_hooks(hooks, steps)
    members = _check_members(members, count)

    params, rest = nnx.split_state(state, nnx.Param, ...)
    outputs = _output_count(graphdef, params, rest, x_train)
    classification, one_hot = _check_targets(loss, y_train, y_test, classes, outputs)
    if early_stopping is not None and early_stopping.metric == "test_accuracy":
        if not classification:
            raise ValueError(
                "early_stopping: metric 'test_accuracy' needs class labels"
            )
    plan, layer_names = _layer_plan(params)
    static = _Static(
        graphdef=graphdef,
        optimizer=optimizer,
        loss=loss,
        batch_size=batch_size,
        one_hot=one_hot,
        classification=classification,
        layers=plan,
    )

    x = jnp.asarray(x_train)
    y = jnp.asarray(y_train)
    train_chunks = _chunks(x_train, y_train, eval_batch_size)
    test_chunks = _chunks(x_test, y_test, eval_batch_size)
    member_ids = jnp.asarray(members, jnp.uint32)
    opt_state = jax.vmap(optimizer.init)(params)

    settings = _settings(
        members=members,
        loss=loss,
        steps=steps,
        batch_size=batch_size,
        eval_every=eval_every,
        eval_batch_size=eval_batch_size,
        early_stopping=early_stopping,
        hooks=hooks,
        key=key,
        optimizer=optimizer,
        opt_state=opt_state,
        state=state,
    )
    if checkpoint_dir is not None:
        if (
            pathlib.Path(checkpoint_dir).exists()
            and not pathlib.Path(checkpoint_dir).is_dir()
        ):
            raise ValueError(
                f"checkpoint_dir: expected a directory (or a path to create), got "
                f"the file {str(checkpoint_dir)!r}"
            )
        # Fingerprints, so that a checkpoint of other weights or data is refused.
        settings["state_digest"] = _digest(*jax.device_get(jax.tree.leaves(state)))
        settings["data_digest"] = _digest(x_train, y_train, x_test, y_test)

    minimize = early_stopping is None or early_stopping.metric != "test_accuracy"
    early = {
        "best": np.full(count, np.inf if minimize else -np.inf, np.float64),
        "wait": np.zeros(count, np.int64),
        "stopped": np.zeros(count, bool),
        "stop_step": np.full(count, -1, np.int64),
    }
    history = _History()
    step = 0
    end = steps if stop_after is None else min(steps, stop_after)
    reserved = (*METRICS, "log10_grad_norm", "stopped", "stop_step")
    hook_steps = [set(h.step_set(steps)) for h in hooks]

    def arrays():
        return {
            "params": params,
            "opt_state": opt_state,
            "key": jax.random.key_data(key),
        }

    def save():
        progress = {"step": np.asarray(step, np.int64), **early}
        _save(manager, step, arrays(), progress, history, settings)

    manager = None if checkpoint_dir is None else _manager(checkpoint_dir)
    try:
        resumed = False
        if manager is not None and manager.latest_step() is not None:
            last = manager.latest_step()
            restored, progress, history = _restore(manager, last, arrays(), settings)
            params, opt_state = restored["params"], restored["opt_state"]
            step = int(progress.pop("step"))
            early = {k: np.asarray(progress[k]) for k in early}
            resumed = True

        def advance(target):
            """Steps to ``target``, then its evaluation, early stopping, hooks."""
            nonlocal params, opt_state, early, step
            evaluate = target % eval_every == 0 or target == steps
            params, opt_state, values = _run(
                static,
                params,
                rest,
                opt_state,
                jnp.asarray(~early["stopped"]),
                key,
                member_ids,
                jnp.asarray(step, jnp.int32),
                jnp.asarray(target - step, jnp.int32),
                jnp.asarray(evaluate),
                x,
                y,
                train_chunks,
                test_chunks,
            )
            step = target
            if evaluate:
                values = jax.device_get(values)
                if not classification:
                    values.pop("test_accuracy")
                if early_stopping is not None:
                    early = _early_update(early, early_stopping, values, step)
                values["stopped"] = early["stopped"].copy()
                history.add_eval(step, values)
            if hooks:
                merged = nnx.merge_state(params, rest)
                for hook, at in zip(hooks, hook_steps, strict=True):
                    if step in at:
                        _run_hook(
                            hook, graphdef, merged, step, history, count, reserved
                        )

        if not resumed:
            advance(0)
        while step < end and not early["stopped"].all():
            later = [s for at in hook_steps for s in at if s > step]
            advance(
                min(
                    end,
                    (step // eval_every + 1) * eval_every,
                    (step // checkpoint_every + 1) * checkpoint_every,
                    *later,
                )
            )
            done = step == end or early["stopped"].all()
            if manager is not None and (step % checkpoint_every == 0 or done):
                save()
        if manager is not None and manager.latest_step() != step:
            save()
    finally:
        if manager is not None:
            manager.wait_until_finished()
            manager.close()

    finished = step == steps or bool(early["stopped"].all())
    attrs = {
        "loss": loss,
        "steps": steps,
        "batch_size": batch_size,
        "eval_every": eval_every,
        "optimizer": json.dumps(getattr(optimizer, "settings", None)),
        "early_stopping": json.dumps(settings["early_stopping"]),
        "log10_grad_norm": "log10 of the Frobenius norm of the gradient of the "
        "next step's minibatch loss with respect to each layer's weights, "
        "resolved below float underflow by a second backward pass scaled by 2^100",
    }
    return TrainResult(
        state=nnx.merge_state(params, rest),
        history=history.dataset(members, layer_names, early["stop_step"], attrs),
        opt_state=opt_state,
        step=step,
        finished=finished,
    )


def _early_update(early, rule: EarlyStopping, values, step):
    """Per-member early-stopping state after an evaluation at ``step``."""
    metric = np.asarray(values[rule.metric], np.float64)
    best, wait = early["best"].copy(), early["wait"].copy()
    stopped, stop_step = early["stopped"].copy(), early["stop_step"].copy()
    if rule.metric == "test_accuracy":
        improved = metric > best + rule.min_delta
    else:
        improved = metric < best - rule.min_delta
    improved |= ~np.isfinite(best)
    live = ~stopped
    best = np.where(live & improved, metric, best)
    wait = np.where(live, np.where(improved, 0, wait + 1), wait)
    newly = live & (wait >= rule.patience)
    stopped = stopped | newly
    stop_step = np.where(newly, step, stop_step)
    return {"best": best, "wait": wait, "stopped": stopped, "stop_step": stop_step}
