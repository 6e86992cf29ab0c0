"""Flax NNX models: initialisation, forward pass, ensembles, training, adapter.

References are independent: the float64 NumPy forward pass of
``tests/_reference.py``, ``actgeo.sample`` for the initial weights, and the
kernels run on plain :class:`~actgeo.networks.MLPParams`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import actgeo
from actgeo import models
from actgeo.networks import MLPParams
from tests import _reference as ref

KEY = jax.random.key(7)
# Tiny specs, shared by the tests so compilations are reused.
TANH = actgeo.NetworkSpec(5, 6, 3, "tanh", sigma_b=0.2, readout=3)
RELU_RES = actgeo.NetworkSpec(5, 6, 3, "relu", sigma_b=0.1, residual=0.5)
ORTHO = actgeo.NetworkSpec(5, 6, 3, "gelu", init="orthogonal", readout=3)


def _x(b=4, d=5, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, d)), jnp.float32)


def _ref_params(p: MLPParams) -> ref.Params:
    return ref.Params(*(np.asarray(a, np.float64) for a in p[:4]))


def _assert_params_equal(a: MLPParams, b: MLPParams):
    for name, u, v in zip(MLPParams._fields, a, b, strict=True):
        if u is None or v is None:
            assert u is None and v is None, name
        else:
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=name)


def _perturbed(model: models.MLP, scale=0.3, seed=3) -> models.MLP:
    """The model with every parameter moved, as training would move it."""
    graphdef, state = nnx.split(model)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    moved = [
        a
        + scale * jnp.std(a) * jax.random.normal(k, a.shape, a.dtype)
        + 0.05 * jax.random.normal(k, a.shape, a.dtype)
        for a, k in zip(leaves, keys, strict=True)
    ]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, moved))


# Initialisation and forward pass.


@pytest.mark.parametrize("spec", [TANH, RELU_RES, ORTHO], ids=["tanh", "res", "orth"])
def test_mlp_initialises_as_sample_bit_for_bit(spec):
    model = models.MLP(spec, key=KEY, member=3)
    drawn = jax.tree.map(lambda a: a[0], actgeo.sample(spec, [3], key=KEY))
    _assert_params_equal(model.params(), drawn)


@pytest.mark.parametrize("spec", [TANH, RELU_RES], ids=["tanh", "res"])
def test_preactivations_and_logits_match_float64_reference(spec):
    model = models.MLP(spec, key=KEY)
    x = _x()
    p = model.params()
    zs, _ = ref.forward(_ref_params(p), np.asarray(x), spec.activation, spec.residual)
    z = model.preactivations(x)
    assert z.shape == (spec.depth, 4, spec.width)
    np.testing.assert_allclose(z, zs, rtol=1e-5, atol=1e-5)
    phi = ref.ACTIVATIONS[spec.activation][0]
    out = model(x)
    if spec.readout is None:
        np.testing.assert_allclose(out, phi(zs[-1]), rtol=1e-5, atol=1e-5)
    else:
        logits = phi(zs[-1]) @ np.asarray(p.w_out, np.float64).T + np.asarray(p.b_out)
        assert out.shape == (4, spec.readout)
        np.testing.assert_allclose(out, logits, rtol=1e-5, atol=1e-5)


def test_from_params_and_residual_alias():
    p = jax.tree.map(lambda a: a[0], actgeo.sample(RELU_RES, [1], key=KEY))
    model = models.ResidualMLP(RELU_RES, params=p)
    assert isinstance(model, models.MLP)
    _assert_params_equal(model.params(), p)
    with pytest.raises(ValueError, match=r"spec\.residual"):
        models.ResidualMLP(TANH, key=KEY)


# Ensembles.


def test_ensemble_state_equals_sample_and_members_equal_single_models():
    graphdef, state = models.ensemble(TANH, 3, KEY)
    drawn = actgeo.sample(TANH, 3, key=KEY)
    for name in ("w_in", "b_in", "w", "b", "w_out", "b_out"):
        np.testing.assert_array_equal(state[name][...], getattr(drawn, name))
    assert models.members(state) == 3
    one = models.member(graphdef, state, 2)
    _assert_params_equal(one.params(), models.MLP(TANH, key=KEY, member=2).params())
    # Members are independent draws: no two share a weight matrix.
    w = np.asarray(state["w_in"][...])
    assert not np.allclose(w[0], w[1]) and not np.allclose(w[1], w[2])


def test_vmapped_grad_through_merge_equals_each_members_grad():
    graphdef, state = models.ensemble(TANH, 3, KEY)
    x, y = _x(6), jnp.asarray([0, 1, 2, 0, 1, 2])

    def loss(st):
        logits = nnx.merge(graphdef, st)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.jit(jax.vmap(jax.grad(loss)))(state)

    # Independent route: the kernels' forward pass on plain parameters.
    def loss_params(p):
        z = actgeo.kernels.preactivations(p, x, "tanh")
        logits = actgeo.kernels.readout(p, z[-1], "tanh")
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    drawn = actgeo.sample(TANH, 3, key=KEY)
    grad_params = jax.jit(jax.grad(loss_params))
    for i in range(3):
        expected = grad_params(jax.tree.map(lambda a, i=i: a[i], drawn))
        for name in ("w_in", "b_in", "w", "b", "w_out", "b_out"):
            np.testing.assert_allclose(
                grads[name][...][i], getattr(expected, name), rtol=1e-4, atol=1e-6
            )


def test_optimizer_step_vmapped_equals_nnx_optimizer_per_member():
    graphdef, state = models.ensemble(TANH, 2, KEY)
    x, y = _x(6), jnp.asarray([0, 1, 2, 0, 1, 2])
    tx = optax.adam(1e-2)

    def loss(model):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    @jax.vmap
    def step(st, opt_state):
        grads = jax.grad(lambda s: loss(nnx.merge(graphdef, s)))(st)
        updates, opt_state = tx.update(grads, opt_state, st)
        return optax.apply_updates(st, updates), opt_state

    opt_states = jax.vmap(tx.init)(state)
    new_state = state
    for _ in range(2):
        new_state, opt_states = step(new_state, opt_states)

    @nnx.jit
    def train_step(model, optimizer):
        optimizer.update(model, nnx.grad(loss)(model))

    for i in range(2):
        model = models.member(graphdef, state, i)
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        before = float(loss(model))
        for _ in range(2):
            train_step(model, optimizer)
        assert float(loss(model)) < before
        _assert_close(model.params(), models.member(graphdef, new_state, i).params())


def _assert_close(a: MLPParams, b: MLPParams, rtol=1e-5, atol=1e-6):
    for name, u, v in zip(MLPParams._fields, a, b, strict=True):
        if u is not None:
            np.testing.assert_allclose(u, v, rtol=rtol, atol=atol, err_msg=name)
