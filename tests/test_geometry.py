"""The training hook of geometry: its numbers at step 0 against the kernels
called member by member (and the output Jacobian by reverse mode through the
Flax model), its dimensions, finiteness for a deep sigmoid network (its
sign-change route against the kernels is marked slow), and its variables in a
short training run's history."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import actgeo
from actgeo import kernels
from actgeo.data import digits_split
from actgeo.models import CNN, ensemble, geometry_hook, member
from actgeo.models.geometry import GEOMETRY_VARIABLES
from actgeo.training import Hook, make_optimizer, train

DIGITS = digits_split()
KEY = jax.random.key(3)
# One small relu ensemble (and so one compiled hook) serves two tests.
SMALL = actgeo.NetworkSpec(64, 8, 2, "relu", readout=10)
SIZES = dict(points=8, lines=2)


def _step0(spec, members=2, **kw):
    graphdef, state = ensemble(spec, members, jax.random.key(0))
    hook = geometry_hook((0,), DIGITS, key=KEY, **kw)
    out = {k: np.asarray(v) for k, v in hook.fn(graphdef, state, 0).items()}
    return graphdef, state, hook, out


def _direct(graphdef, state, i, hook, *, exact, samples=256):
    """Member ``i``'s numbers from the kernels, called eagerly on its params."""
    model = member(graphdef, state, i)
    params, act = model.params(), model.spec.activation
    x = jnp.asarray(hook.fn.points)
    dist = kernels.neuron_distances(params, x, act)
    log_in = np.log10(np.asarray(dist.delta_in)).reshape(dist.delta_in.shape[0], -1)
    region = np.log10(np.asarray(dist.region))
    width = params.w_in.shape[0]
    changes = []
    for a, b in zip(hook.fn.starts, hook.fn.ends, strict=True):
        length = np.linalg.norm(np.asarray(b, np.float64) - a)
        if exact:
            counts = np.asarray(kernels.walk_segment(params, act, a, b).counts)
        else:
            path = kernels.line(a, b, samples)
            found = kernels.zero_crossings(params, path, act)
            counts = np.asarray(found.sign_changes).sum(-1)
        changes.append(counts / (length * width))
    # Retention: ridge probe from phi(z^l) to z^1 / |W^1_i|, half fits.
    z = kernels.preactivations(params, x, act)
    first = z[0] / jnp.linalg.norm(params.w_in, axis=-1)[None]
    n_train = round(0.5 * x.shape[0])
    phi = actgeo.get_activation(act).fn
    retention = [
        float(kernels.ridge_r2(phi(z[l]), first, n_train, 0.1))
        for l in range(z.shape[0])
    ]
    jac = jax.vmap(jax.jacrev(lambda v: model(v[None])[0]))(x)  # (B, K, D)
    log_jac = np.log10(np.linalg.norm(np.asarray(jac).reshape(x.shape[0], -1), axis=1))
    return {
        "log10_delta_in": np.median(log_in, axis=-1),
        "log10_region_distance": np.median(region, axis=-1),
        "changes_per_length": np.mean(changes, axis=0),
        "retention_first": np.array(retention),
        "log10_output_jacobian": np.median(log_jac),
    }


def _compare(out, direct, i):
    for name, value in direct.items():
        tol = 2e-2 if name == "retention_first" else 2e-4
        np.testing.assert_allclose(
            out[name][i], value, rtol=tol, atol=tol, err_msg=name
        )


def test_relu_hook_equals_the_kernels_member_by_member():
    graphdef, state, hook, out = _step0(SMALL, **SIZES)
    assert set(out) == set(GEOMETRY_VARIABLES)
    assert hook.dims == GEOMETRY_VARIABLES
    for name, dims in GEOMETRY_VARIABLES.items():
        assert out[name].shape == (2, 2)[: len(dims)], name
    assert hook.fn.points.shape == (8, 64) and hook.fn.starts.shape == (2, 64)
    for i in range(2):
        _compare(out, _direct(graphdef, state, i, hook, exact=True), i)
    # Segments between distinct digits cross some boundaries of every layer.
    assert np.all(out["changes_per_length"] > 0)


DEEP_SIGMOID = actgeo.NetworkSpec(64, 8, 16, "sigmoid", readout=10)


def test_sigmoid_depth_16_is_finite():
    _, _, _, out = _step0(DEEP_SIGMOID, members=1, **SIZES)
    for name, value in out.items():
        assert np.all(np.isfinite(value)), name
    assert out["log10_delta_in"].shape == (1, 16)
    # Deep sigmoid layers draw fewer boundaries across the data.
    assert out["changes_per_length"][0, -1] < out["changes_per_length"][0, 0]


@pytest.mark.slow
def test_sigmoid_hook_equals_sign_changes_from_the_kernels():
    graphdef, state, hook, out = _step0(DEEP_SIGMOID, members=1, **SIZES)
    _compare(out, _direct(graphdef, state, 0, hook, exact=False), 0)


def test_train_stores_the_geometry_in_the_history():
    graphdef, state = ensemble(SMALL, 2, jax.random.key(0))
    hook = geometry_hook((0, 6), DIGITS, key=KEY, prefix="geo_", **SIZES)
    result = train(
        graphdef,
        state,
        DIGITS,
        optimizer=make_optimizer("adam", 1e-2),
        key=jax.random.key(1),
        batch_size=32,
        steps=6,
        eval_every=6,
        hooks=[hook],
    )
    history = result.history
    assert list(history.hook_step.values) == [0, 6]
    for name, dims in GEOMETRY_VARIABLES.items():
        assert history["geo_" + name].dims == ("hook_step", *dims)
        assert np.all(np.isfinite(history["geo_" + name].values)), name
    assert history.sizes["hidden_layer"] == 2
    # Training moved the weights, and with them the geometry.
    jac = history["geo_log10_output_jacobian"].values
    assert not np.array_equal(jac[0], jac[1])


def test_bad_arguments_and_models_are_refused():
    with pytest.raises(ValueError, match="points"):
        geometry_hook(1, DIGITS, points=10_000, key=KEY)
    with pytest.raises(ValueError, match="points"):
        geometry_hook(1, DIGITS, points=3, key=KEY)
    with pytest.raises(TypeError, match="key"):
        geometry_hook(1, DIGITS, key=0)
    with pytest.raises(ValueError, match="prefix"):
        geometry_hook(1, DIGITS, key=KEY, prefix="1x")
    hook = geometry_hook(1, DIGITS, points=4, lines=1, key=KEY)
    assert isinstance(hook, Hook)
    graphdef, state = ensemble(
        lambda key, i: CNN((8, 8, 1), 4, 1, 10, "relu", key=key, member=i),
        1,
        jax.random.key(0),
    )
    with pytest.raises(TypeError, match="MLP"):
        hook.fn(graphdef, state, 0)
