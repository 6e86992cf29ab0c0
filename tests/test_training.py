"""Training of ensembles: agreement with members trained alone, float64 NumPy
references for the losses, accuracy and gradient norms, accuracy on digits,
early stopping, bit-identical resumption from checkpoints, and bad input.

Most tests share one small model (E = 3, width 16, depth 2, Adam) so that they
share one compiled program.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import xarray as xr
from scipy import special

import actgeo
from actgeo.data import digits_split
from actgeo.models import ensemble, member
from actgeo.training import (
    EarlyStopping,
    Hook,
    gradient_log10_norm,
    make_optimizer,
    train,
)

DIGITS = digits_split()
SMALL = actgeo.NetworkSpec(64, 16, 2, "relu", readout=10)
ADAM = make_optimizer("adam", 1e-2)
INIT_KEY = jax.random.key(0)
ORDER_KEY = jax.random.key(1)
COMMON = dict(optimizer=ADAM, key=ORDER_KEY, batch_size=32)


@pytest.fixture(autouse=True)
def _full_precision():
    # The float64 references assume full float32 matrix products (GPUs would
    # otherwise use TF32).
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def small():
    return ensemble(SMALL, 3, INIT_KEY)


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def _member_params(graphdef, state, i):
    """One member's parameters as a float64 ``MLPParams``."""
    params = member(graphdef, state, i).params()
    return actgeo.MLPParams(
        *(None if a is None else np.asarray(a, np.float64) for a in params)
    )


def _first_minibatch(member_index, p, batch):
    """Indices of step 0's minibatch, as the training module documents them."""
    key = jax.random.fold_in(jax.random.fold_in(ORDER_KEY, member_index), 0)
    return np.asarray(jax.random.permutation(key, p))[:batch]


# ---------------------------------------------------------- NumPy references

_PHI = {
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64)),
    "sigmoid": (
        special.expit,
        lambda z: special.expit(z) * (1.0 - special.expit(z)),
    ),
}


def _np_forward(p: actgeo.MLPParams, x, activation):
    """Preactivations ``[z^1..z^L]`` and the readout ``(B, K)``, float64."""
    phi, _ = _PHI[activation]
    zs = [np.asarray(x, np.float64) @ p.w_in.T + p.b_in]
    for w, b in zip(p.w, p.b, strict=True):
        zs.append(phi(zs[-1]) @ w.T + b)
    return zs, phi(zs[-1]) @ p.w_out.T + p.b_out


def _np_cross_entropy(logits, labels):
    log_p = logits - special.logsumexp(logits, axis=1, keepdims=True)
    return -np.mean(log_p[np.arange(len(labels)), labels])


def _np_log10_grad_norms(p: actgeo.MLPParams, x, labels, activation):
    """log10 norms of the mean cross-entropy's gradient per layer's weights.

    Backpropagation by hand in float64: layers w_in, w[0..L-2], w_out.
    """
    phi, phi_prime = _PHI[activation]
    zs, logits = _np_forward(p, x, activation)
    probs = special.softmax(logits, axis=1)
    probs[np.arange(len(labels)), labels] -= 1.0
    d_out = probs / len(labels)
    grads = [d_out.T @ phi(zs[-1])]
    delta = (d_out @ p.w_out) * phi_prime(zs[-1])
    for layer in range(len(zs) - 1, 0, -1):
        grads.append(delta.T @ phi(zs[layer - 1]))
        delta = (delta @ p.w[layer - 1]) * phi_prime(zs[layer - 1])
    grads.append(delta.T @ np.asarray(x, np.float64))
    return np.log10([np.linalg.norm(g) for g in reversed(grads)])


# ---------------------------------------------------------------- the tests


def test_gradient_norm_is_finite_where_squares_underflow():
    g = np.random.default_rng(0).normal(size=(40, 30))
    for scale in (1e-30, 1.0, 1e30):
        expected = np.log10(scale * np.linalg.norm(g))
        got = float(gradient_log10_norm(jnp.asarray(scale * g, jnp.float32)))
        assert got == pytest.approx(expected, abs=1e-5), scale
    # The plain formula underflows (overflows) at these scales.
    assert float(jnp.linalg.norm(jnp.asarray(1e-30 * g, jnp.float32))) == 0.0
    floor = np.log10(np.finfo(np.float32).smallest_subnormal)
    assert float(gradient_log10_norm(jnp.zeros((3, 3)))) == pytest.approx(floor)
    assert np.isnan(gradient_log10_norm(jnp.asarray([0.0, np.nan])))
    assert gradient_log10_norm(jnp.asarray([1.0, np.inf])) == np.inf


def test_ensemble_equals_members_trained_alone(small):
    graphdef, state = small
    together = train(graphdef, state, DIGITS, steps=30, eval_every=10, **COMMON)
    assert together.finished and together.step == 30
    for i in range(3):
        alone = train(
            graphdef,
            jax.tree.map(lambda a, i=i: a[i : i + 1], state),
            DIGITS,
            steps=30,
            eval_every=10,
            members=[i],
            **COMMON,
        )
        for a, b in zip(_leaves(together.state), _leaves(alone.state), strict=True):
            np.testing.assert_allclose(a[i], b[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            together.history.test_loss.sel(member=i),
            alone.history.test_loss.sel(member=i),
            rtol=1e-5,
        )
    # Each member's minibatch order is its own: the same weights trained with
    # another member's order end elsewhere.
    swapped = train(
        graphdef,
        jax.tree.map(lambda a: a[:1], state),
        DIGITS,
        steps=30,
        eval_every=10,
        members=[1],
        **COMMON,
    )
    gap = np.abs(_leaves(together.state)[0][0] - _leaves(swapped.state)[0][0]).max()
    assert gap > 1e-3


def test_history_at_step_zero_matches_numpy(small):
    graphdef, state = small
    result = train(graphdef, state, DIGITS, epochs=2, stop_after=0, **COMMON)
    assert result.step == 0 and not result.finished
    assert result.history.attrs["steps"] == 2 * (1347 // 32)
    history = result.history
    assert history.test_loss.dims == ("step", "member")
    assert history.log10_grad_norm.dims == ("step", "member", "layer")
    assert list(history.layer_name.values) == ["w_in", "w[0]", "w_out"]
    for i in range(3):
        p = _member_params(graphdef, state, i)
        row = history.sel(step=0, member=i)
        _, train_logits = _np_forward(p, DIGITS.x_train, "relu")
        _, test_logits = _np_forward(p, DIGITS.x_test, "relu")
        accuracy = np.mean(test_logits.argmax(1) == DIGITS.y_test)
        ce = _np_cross_entropy
        assert float(row.train_loss) == pytest.approx(
            ce(train_logits, DIGITS.y_train), rel=1e-5
        )
        assert float(row.test_loss) == pytest.approx(
            ce(test_logits, DIGITS.y_test), rel=1e-5
        )
        assert float(row.test_accuracy) == pytest.approx(accuracy, abs=1e-6)
        batch = _first_minibatch(i, DIGITS.x_train.shape[0], 32)
        expected = _np_log10_grad_norms(
            p, DIGITS.x_train[batch], DIGITS.y_train[batch], "relu"
        )
        np.testing.assert_allclose(row.log10_grad_norm, expected, atol=1e-4)


@pytest.mark.parametrize("task", ["one_hot", "regression"])
def test_mse_matches_numpy(task):
    if task == "one_hot":
        spec, data = SMALL, DIGITS
        targets = np.eye(10)[DIGITS.y_test]
    else:
        spec = dataclasses.replace(SMALL, readout=1)
        data = dataclasses.replace(
            DIGITS,
            y_train=DIGITS.x_train[:, 20].astype(np.float32),
            y_test=DIGITS.x_test[:, 20].astype(np.float32),
            classes=None,
        )
        targets = data.y_test[:, None].astype(np.float64)
    graphdef, state = ensemble(spec, 1, INIT_KEY)
    result = train(graphdef, state, data, loss="mse", steps=10, stop_after=0, **COMMON)
    _, out = _np_forward(_member_params(graphdef, state, 0), data.x_test, "relu")
    expected = np.mean((out - targets) ** 2)
    assert float(result.history.test_loss[0, 0]) == pytest.approx(expected, rel=1e-5)
    assert ("test_accuracy" in result.history) == (task == "one_hot")


def test_relu_mlp_learns_digits():
    spec = actgeo.NetworkSpec(64, 64, 4, "relu", readout=10)
    graphdef, state = ensemble(spec, 2, INIT_KEY)
    result = train(
        graphdef,
        state,
        DIGITS,
        optimizer=make_optimizer("adam", 1e-3),
        key=ORDER_KEY,
        batch_size=64,
        steps=300,
        eval_every=100,
    )
    history = result.history
    assert list(history.step.values) == [0, 100, 200, 300]
    final = history.sel(step=300)
    assert np.all(final.test_accuracy > 0.9), final.test_accuracy.values
    assert np.all(final.train_loss < history.sel(step=0).train_loss)
    for i in range(2):
        _, logits = _np_forward(
            _member_params(graphdef, result.state, i), DIGITS.x_test, "relu"
        )
        accuracy = np.mean(logits.argmax(1) == DIGITS.y_test)
        assert float(final.test_accuracy[i]) == pytest.approx(accuracy, abs=1e-6)


def test_deep_sigmoid_gradients_vanish_finitely():
    spec = actgeo.NetworkSpec(64, 16, 64, "sigmoid", readout=10)
    graphdef, state = ensemble(spec, 1, INIT_KEY)
    result = train(graphdef, state, DIGITS, steps=4, eval_every=2, **COMMON)
    history = result.history
    for name, values in history.data_vars.items():
        if values.dtype.kind == "f":
            assert np.all(np.isfinite(values)), name
    norms = history.log10_grad_norm
    assert norms.sizes["layer"] == 65
    # The first layer's gradient is ~1e-40, below float32's normal range.
    assert np.all(norms.isel(layer=0) < -35)
    assert np.all(norms.isel(layer=-1) > -3)
    batch = _first_minibatch(0, DIGITS.x_train.shape[0], 32)
    expected = _np_log10_grad_norms(
        _member_params(graphdef, state, 0),
        DIGITS.x_train[batch],
        DIGITS.y_train[batch],
        "sigmoid",
    )
    np.testing.assert_allclose(norms.sel(step=0, member=0), expected, atol=2e-3)


def test_early_stopping_freezes_stopped_members(small):
    graphdef, state = small
    snapshots = {}

    def keep(graphdef, state, step):
        snapshots[step] = _leaves(state)
        return {}

    kw = dict(steps=55, eval_every=5, **COMMON)
    free = train(graphdef, state, DIGITS, hooks=[Hook(5, keep)], **kw)
    rule = EarlyStopping(patience=1, metric="test_loss", min_delta=0.02)
    early = train(graphdef, state, DIGITS, early_stopping=rule, **kw)
    stop = early.history.stop_step.values
    stopped = stop >= 0
    assert stopped.any() and not stopped.all(), stop
    final = _leaves(early.state)
    for i in range(3):
        reference = snapshots[stop[i]] if stopped[i] else _leaves(free.state)
        for a, b in zip(final, reference, strict=True):
            np.testing.assert_array_equal(a[i], b[i])
        flags = early.history.stopped.sel(member=i).values
        expected = stopped[i] & (early.history.step.values >= stop[i])
        np.testing.assert_array_equal(flags, expected)
        if stopped[i]:
            after = early.history.test_loss.sel(member=i, step=slice(stop[i], None))
            assert np.all(after == after[0])
    assert early.finished


def test_resume_ends_where_an_uninterrupted_run_ends(small, tmp_path):
    graphdef, state = small

    def measure(graphdef, state, step):
        return {
            "w_in_scale": jnp.abs(state["w_in"][...]).mean(axis=(1, 2)),
            "w_scale": jnp.abs(state["w"][...]).mean(axis=(2, 3)),
        }

    armed = []

    def flaky(graphdef, state, step):
        if armed:
            armed.clear()
            raise KeyboardInterrupt
        return {}

    kw = dict(
        steps=40,
        eval_every=10,
        checkpoint_every=10,
        hooks=[
            Hook((0, 15, 40), measure, dims={"w_scale": ("member", "hidden")}),
            Hook((30,), flaky),
        ],
        **COMMON,
    )
    full = train(graphdef, state, DIGITS, checkpoint_dir=tmp_path / "full", **kw)
    cut = tmp_path / "cut"
    part = train(graphdef, state, DIGITS, checkpoint_dir=cut, stop_after=25, **kw)
    assert part.step == 25 and not part.finished
    armed.append(True)
    with pytest.raises(KeyboardInterrupt):
        train(graphdef, state, DIGITS, checkpoint_dir=cut, **kw)
    resumed = train(graphdef, state, DIGITS, checkpoint_dir=cut, **kw)
    assert resumed.finished and resumed.step == 40
    for a, b in zip(_leaves(full.state), _leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(full.opt_state), _leaves(resumed.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)
    xr.testing.assert_identical(full.history, resumed.history)
    assert list(full.history.hook_step.values) == [0, 15, 40]
    assert full.history.w_in_scale.dims == ("hook_step", "member")
    assert full.history.w_scale.dims == ("hook_step", "member", "hidden")
    np.testing.assert_allclose(
        full.history.w_in_scale.sel(hook_step=40),
        np.abs(np.asarray(full.state["w_in"][...])).mean(axis=(1, 2)),
        rtol=1e-5,
    )
    # A finished run is returned as stored.
    again = train(graphdef, state, DIGITS, checkpoint_dir=cut, **kw)
    xr.testing.assert_identical(full.history, again.history)
    # Other settings are refused, naming what differs.
    with pytest.raises(ValueError, match="batch_size"):
        train(graphdef, state, DIGITS, checkpoint_dir=cut, **{**kw, "batch_size": 16})
    other = make_optimizer("adam", 2e-2)
    with pytest.raises(ValueError, match="optimizer"):
        train(graphdef, state, DIGITS, checkpoint_dir=cut, **{**kw, "optimizer": other})
    moved = jax.tree.map(lambda a: a + 1, state)
    with pytest.raises(ValueError, match="state_digest"):
        train(graphdef, moved, DIGITS, checkpoint_dir=cut, **kw)


@pytest.mark.parametrize("learning_rate", [float("nan"), float("inf"), 0.0, -1e-3])
def test_bad_learning_rate(learning_rate):
    with pytest.raises(ValueError, match="learning_rate"):
        make_optimizer("adam", learning_rate)


def test_bad_optimizer_name():
    with pytest.raises(ValueError, match="name"):
        make_optimizer("adagrad-ish", 1e-3)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 1348}, ValueError, "batch_size"),
        ({"batch_size": 2.5}, ValueError, "batch_size"),
        ({"steps": 0}, ValueError, "steps"),
        ({"epochs": 2}, ValueError, "exactly one"),
        ({"eval_every": 0}, ValueError, "eval_every"),
        ({"loss": "hinge"}, ValueError, "loss"),
        ({"key": jax.random.PRNGKey(0)}, TypeError, "key"),
        ({"optimizer": "adam"}, TypeError, "optimizer"),
        ({"members": [0, 0, 1]}, ValueError, "members"),
        ({"hooks": [((5, 99), lambda g, s, t: {})]}, ValueError, "beyond"),
        ({"early_stopping": 3}, TypeError, "early_stopping"),
    ],
)
def test_bad_arguments(small, change, error, match):
    graphdef, state = small
    kwargs = {**COMMON, "steps": 10, **change}
    with pytest.raises(error, match=match):
        train(graphdef, state, DIGITS, **kwargs)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (dataclasses.replace(DIGITS, y_train=DIGITS.y_train + 1), r"0\.\.9"),
        (dataclasses.replace(DIGITS, y_test=DIGITS.y_test - 1), r"0\.\.9"),
        (dataclasses.replace(DIGITS, y_train=DIGITS.y_train[:-1]), "y_train"),
        (dataclasses.replace(DIGITS, x_test=DIGITS.x_test[:, :32]), "x_test"),
        (dataclasses.replace(DIGITS, classes=12), "12 classes"),
        (
            dataclasses.replace(DIGITS, y_train=DIGITS.y_train.astype(np.float32)),
            "integer",
        ),
    ],
)
def test_bad_data(small, data, match):
    graphdef, state = small
    with pytest.raises(ValueError, match=match):
        train(graphdef, state, data, steps=10, **COMMON)


def test_model_and_data_shapes_must_agree():
    wide = actgeo.NetworkSpec(32, 16, 2, "relu", readout=10)
    graphdef, state = ensemble(wide, 1, INIT_KEY)
    with pytest.raises(ValueError, match="do not fit the model"):
        train(graphdef, state, DIGITS, steps=10, **COMMON)
    headless = actgeo.NetworkSpec(64, 16, 2, "relu")
    graphdef, state = ensemble(headless, 1, INIT_KEY)
    with pytest.raises(ValueError, match="16 outputs"):
        train(graphdef, state, DIGITS, steps=10, **COMMON)


@pytest.mark.slow
def test_cnn_ensemble_trains_on_digit_images():
    from actgeo.models import CNN

    images = digits_split(images=True)
    graphdef, state = ensemble(
        lambda key, i: CNN((8, 8, 1), 4, 2, 10, "relu", key=key, member=i),
        2,
        INIT_KEY,
    )
    result = train(graphdef, state, images, steps=40, eval_every=20, **COMMON)
    history = result.history
    assert list(history.layer_name.values) == ["w_in", "w[0]", "w_out"]
    assert np.all(np.isfinite(history.log10_grad_norm))
    assert np.all(history.train_loss[-1] < history.train_loss[0])


def test_diverged_members_report_nan_gradient_norms(small):
    # relu's derivative maps NaN preactivations to exact zeros; a diverged
    # member must not read as a vanishing gradient.
    graphdef, state = small
    result = train(
        graphdef,
        state,
        DIGITS,
        optimizer=optax.sgd(float("nan")),
        key=jax.random.key(1),
        batch_size=32,
        steps=2,
        eval_every=2,
    )
    assert np.all(np.isnan(result.history["log10_grad_norm"].values[-1]))


def test_checkpoint_dir_that_is_a_file_is_refused_before_training(small, tmp_path):
    graphdef, state = small
    path = tmp_path / "not_a_directory"
    path.write_text("")
    with pytest.raises(ValueError, match="checkpoint_dir: expected a directory"):
        train(
            graphdef,
            state,
            DIGITS,
            optimizer=optax.sgd(0.1),
            key=jax.random.key(1),
            batch_size=32,
            steps=2,
            checkpoint_dir=path,
            hooks=None,
        )
