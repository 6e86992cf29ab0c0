"""Flax NNX models: initialisation, forward pass, ensembles, training, adapter.

References are independent: the float64 NumPy forward pass of
``tests/_reference.py``, ``actgeo.sample`` for the initial weights, and the
kernels run on plain :class:`~actgeo.networks.MLPParams`.
"""

from __future__ import annotations

import dataclasses

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
# Few bins: the statistics compile faster; the comparisons are as strict.
CONFIG = actgeo.kernels.StatsConfig(bins=actgeo.kernels.Bins(-6.0, 6.0, 96))


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


def _perturbed(model, scale=0.3, seed=3):
    """The model with every parameter moved, as training would move it."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def move(state):
        leaves, tree = jax.tree.flatten(state)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        moved = [
            a + (scale * jnp.std(a) + 0.05) * jax.random.normal(k, a.shape, a.dtype)
            for a, k in zip(leaves, keys, strict=True)
        ]
        return jax.tree.unflatten(tree, moved)

    return nnx.merge(graphdef, move(state))


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
    assert models.ensemble_size(state) == 3
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


# Adapter: the kernels' numbers through both routes.


def _stats_fields_close(got, want, with_rep=True):
    for field in ("q", "correlation", "log10_jacobian_norm", "saturated"):
        np.testing.assert_allclose(
            getattr(got, field), getattr(want, field), rtol=1e-9, err_msg=field
        )
    np.testing.assert_allclose(
        got.retention_first, want.retention_first, rtol=1e-7, atol=1e-9
    )
    for field in ("delta_in", "region") + (("delta_rep",) if with_rep else ()):
        a, b = getattr(got, field), getattr(want, field)
        np.testing.assert_allclose(a.log_sum, b.log_sum, rtol=1e-9, err_msg=field)
        # A value within rounding of a bin edge may change bins.
        drift = np.cumsum(a.counts, -1) - np.cumsum(b.counts, -1)
        assert np.abs(drift).sum() <= 2, field
        np.testing.assert_array_equal(a.n_inf, b.n_inf)


def test_kernels_on_as_params_equal_measure_function_on_trained_model():
    # Residual, with a readout: every part of the layout (alpha in the row norms).
    spec = actgeo.NetworkSpec(5, 6, 3, "tanh", sigma_b=0.2, residual=0.5, readout=3)
    with jax.enable_x64(True):
        model = _perturbed(models.MLP(spec, key=KEY, dtype=jnp.float64))
        params = models.as_params(model)
        x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)))
        probe = jnp.asarray(np.random.default_rng(2).normal(size=(12, 5)))
        act, alpha = spec.activation, spec.residual
        fast = jax.jit(
            lambda p: actgeo.kernels.layer_statistics(
                p, x, act, probe_x=probe, residual=alpha, config=CONFIG
            )
        )(params)
        fn = models.preactivation_fn(model)
        general = jax.jit(
            lambda norms: actgeo.kernels.measure_function(
                fn, x, act, probe_x=probe, row_norms=norms, config=CONFIG
            )
        )(models.row_norms(model))
        _stats_fields_close(general, fast)

        # Distances and Jacobians against the float64 NumPy chain rule.
        zs, js = ref.forward(_ref_params(params), np.asarray(x), act, alpha)
        d_in, d_rep, region = ref.distances(_ref_params(params), zs, js, alpha)
        got = jax.jit(
            lambda p: actgeo.kernels.neuron_distances(p, x, act, residual=alpha)
        )(params)
        np.testing.assert_allclose(got.delta_in, d_in, rtol=1e-9)
        np.testing.assert_allclose(got.delta_rep, d_rep, rtol=1e-9)
        np.testing.assert_allclose(got.region, region, rtol=1e-9)
        jac = jax.jit(jax.vmap(jax.jacfwd(fn)))(x)
        np.testing.assert_allclose(np.stack(jac), js, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            model.preactivations(x),
            actgeo.kernels.preactivations(params, x, act, residual=alpha),
            rtol=1e-12,
            atol=1e-14,
        )
    # The perturbation moved every parameter away from initialisation.
    init = models.MLP(spec, key=KEY).params()
    assert all(
        not np.allclose(a, b, atol=1e-3)
        for a, b in zip(init, params, strict=True)
        if a is not None
    )


class TwoLayer(nnx.Module):
    """A user's own model: two nnx.Linear layers with tanh between them."""

    def __init__(self, rngs: nnx.Rngs):
        self.first = nnx.Linear(3, 4, rngs=rngs)
        self.second = nnx.Linear(4, 4, rngs=rngs)

    def preactivations(self, x):
        z1 = self.first(x)
        return [z1, self.second(jnp.tanh(z1))]


def test_preactivation_fn_on_a_users_own_module():
    model = TwoLayer(nnx.Rngs(0))
    x = np.random.default_rng(4).normal(size=(5, 3))
    fn = models.preactivation_fn(model)
    stats = jax.jit(
        lambda v: actgeo.kernels.measure_function(fn, v, "tanh", config=CONFIG)
    )(jnp.asarray(x, jnp.float32))
    k1, b1 = (np.asarray(a, np.float64) for a in (model.first.kernel, model.first.bias))
    k2 = np.asarray(model.second.kernel, np.float64)
    b2 = np.asarray(model.second.bias, np.float64)
    z1 = x @ k1 + b1
    z2 = np.tanh(z1) @ k2 + b2
    # J^1 = k1^T, J^2 = k2^T diag(tanh'(z1)) k1^T, per input.
    j2 = np.einsum("mn,bm,dm->bnd", k2, 1 / np.cosh(z1) ** 2, k1)
    log_jac = [
        np.log10(np.linalg.norm(k1)),
        np.mean(np.log10(np.linalg.norm(j2.reshape(5, -1), axis=-1))),
    ]
    np.testing.assert_allclose(stats.log10_jacobian_norm, log_jac, rtol=1e-5)
    q = [np.mean(np.sum(z**2, -1)) / 4 for z in (z1, z2)]
    np.testing.assert_allclose(stats.q, q, rtol=1e-5)
    with pytest.raises(TypeError, match="preactivations"):
        models.preactivation_fn(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match=r"as_params takes an actgeo\.models\.MLP"):
        models.as_params(model)


# CNN: shapes (8, 8, 1) as for the digits images.

IMAGE = (8, 8, 1)


def _conv_ref(x, kernel):
    """Same-padded 3x3 convolution in float64 NumPy, tap by tap."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    b, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy : dy + h, dx : dx + w, :] @ kernel[dy, dx]
    return out


def _cnn_ref(p: models.CNNParams, x, phi):
    """Per-layer preactivations ``(L, B, H, W, C)`` and logits, float64."""
    z = _conv_ref(x, p.w_in) + np.asarray(p.b_in, np.float64)
    zs = [z]
    for w, b in zip(p.w, p.b, strict=True):
        z = _conv_ref(phi(z), w) + np.asarray(b, np.float64)
        zs.append(z)
    pooled = phi(z).mean(axis=(1, 2))
    logits = pooled @ np.asarray(p.w_out, np.float64).T + np.asarray(p.b_out)
    return np.stack(zs), logits


def _images(b=3, seed=5):
    return jnp.asarray(
        np.random.default_rng(seed).normal(size=(b, *IMAGE)), jnp.float32
    )


@pytest.mark.parametrize(
    ("activation", "phi"),
    [("tanh", np.tanh), (jnp.sin, np.sin)],
    ids=["registered", "callable"],
)
def test_cnn_forward_matches_float64_convolution(activation, phi):
    model = models.CNN(IMAGE, 3, 2, 4, activation, sigma_b=0.2, key=KEY)
    x = _images()
    zs, logits = _cnn_ref(model.params(), x, phi)
    z = model.preactivations(x)
    assert z.shape == (2, 3, 8 * 8 * 3)
    np.testing.assert_allclose(z, zs.reshape(2, 3, -1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model(x), logits, rtol=1e-4, atol=1e-5)


def test_cnn_initialisation_variance_and_orthogonality():
    sigma_w, sigma_b = 2.0, 0.4
    # Entry variance sigma_w^2 / fan_in, fan_in = 9 C_in (C for the readout),
    # pooled over kernels and members; a chi-square with n degrees of freedom
    # has relative sd sqrt(2 / n): 5 sd of slack (a standard deviation taken
    # for a variance, or a wrong fan-in, is far outside).
    standard, biases = [], []
    for i in range(5):
        p = models.CNN(
            IMAGE, 3, 2, 4, "tanh", sigma_w=sigma_w, sigma_b=sigma_b, key=KEY, member=i
        ).params()
        for w, fan_in in ((p.w_in, 9), (p.w, 27), (p.w_out, 3)):
            standard.append(np.ravel(w) * np.sqrt(fan_in) / sigma_w)
        biases.append(np.concatenate([p.b_in, p.b.ravel(), p.b_out]) / sigma_b)
    for values in (np.concatenate(standard), np.concatenate(biases)):
        assert abs(np.mean(values**2) - 1) < 5 * np.sqrt(2 / values.size)

    ortho = models.CNN(
        IMAGE, 3, 2, 4, "relu", init="orthogonal", sigma_w=sigma_w, key=KEY
    ).params()
    # Reshaped to (C_out, 9 C_in), a kernel with C_out <= 9 C_in has
    # orthonormal rows times sigma_w.
    for kernel in (ortho.w_in, ortho.w[0]):
        m = np.asarray(kernel, np.float64).transpose(3, 0, 1, 2).reshape(3, -1)
        np.testing.assert_allclose(m @ m.T, sigma_w**2 * np.eye(3), atol=1e-5)


def test_cnn_ensemble_members_equal_single_models_and_train_under_vmap():
    def factory(key, i):
        return models.CNN(IMAGE, 3, 2, 4, "relu", init="orthogonal", key=key, member=i)

    graphdef, state = models.ensemble(factory, 3, KEY)
    assert models.ensemble_size(state) == 3
    for i in (0, 2):
        one = models.member(graphdef, state, i).params()
        alone = factory(KEY, i).params()
        for name, a, b in zip(models.CNNParams._fields, one, alone, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    w = np.asarray(state["w_in"][...])
    assert not np.allclose(w[0], w[1])
    # With rngs instead of a key: the params stream's key.
    with_rngs = models.CNN(IMAGE, 3, 2, 4, "relu", rngs=nnx.Rngs(params=3))
    assert with_rngs.w_in.shape == (3, 3, 1, 3)

    x, y = _images(4), jnp.asarray([0, 1, 2, 3])

    def loss(st):
        logits = nnx.merge(graphdef, st)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.jit(jax.vmap(jax.grad(loss)))(state)
    for leaf in jax.tree.leaves(grads):
        assert leaf.shape[0] == 3 and bool(jnp.all(jnp.isfinite(leaf)))


def test_cnn_through_measure_function_matches_reference_distances():
    model = _perturbed(models.CNN(IMAGE, 3, 2, 4, "tanh", sigma_b=0.1, key=KEY))
    x = _images(3).reshape(3, -1)
    fn = models.preactivation_fn(model)
    stats = jax.jit(
        lambda v, norms: actgeo.kernels.measure_function(
            fn, v, "tanh", row_norms=norms, config=CONFIG
        )
    )(x, models.row_norms(model))
    p = model.params()
    zs, _ = _cnn_ref(p, np.asarray(x).reshape(3, *IMAGE), np.tanh)
    zs = zs.reshape(2, 3, -1)
    # q = |z|^2 / N per layer.
    q = np.mean(np.sum(zs**2, -1), -1) / zs.shape[-1]
    np.testing.assert_allclose(stats.q, q, rtol=1e-4)
    # delta_rep = |z_u| / |taps of u inside the image|, counted tap by tap.
    norms = []
    for kernel in (p.w_in, p.w[0]):
        k2 = np.asarray(kernel, np.float64) ** 2
        ones = np.ones((1, *IMAGE[:2], k2.shape[2]))
        norms.append(np.sqrt(_conv_ref(ones, k2)).reshape(-1))
    log_rep = np.log10(np.abs(zs) / np.stack(norms)[:, None, :])
    np.testing.assert_allclose(
        stats.delta_rep.log_sum, log_rep.sum(axis=(1, 2)), rtol=1e-4
    )


# Edge of chaos.


@pytest.mark.parametrize(("activation", "sigma_b"), [("erf", 0.3), ("relu", 0.0)])
def test_critical_spec_puts_sigma_w_on_the_edge_of_chaos(activation, sigma_b):
    from actgeo import theory

    spec = actgeo.NetworkSpec(5, 6, 3, activation, sigma_b=sigma_b, readout=3)
    critical = models.critical_spec(spec)
    assert critical.sigma_w == theory.critical_sigma_w(activation, sigma_b)
    assert dataclasses.replace(critical, sigma_w=spec.sigma_w) == spec
    with jax.enable_x64(True):
        q = theory.q_star(activation, critical.sigma_w, sigma_b)
        chi = theory.chi_1(activation, q, critical.sigma_w)
    np.testing.assert_allclose(float(chi), 1.0, rtol=1e-6)
    if activation == "relu":
        np.testing.assert_allclose(critical.sigma_w, np.sqrt(2.0), rtol=1e-9)


# Bad input: clear errors, raised before any work.


def test_model_calls_name_the_argument_and_expected_shape():
    model = models.MLP(TANH, key=KEY)
    with pytest.raises(ValueError, match=r"^x: MLP expected inputs of shape \(B, 5\)"):
        model(jnp.ones((4, 6)))
    with pytest.raises(ValueError, match=r"add a batch axis, x\[None\]"):
        model.preactivations(jnp.ones(5))
    cnn = models.CNN(IMAGE, 3, 2, 4, "relu", key=KEY)
    with pytest.raises(ValueError, match=r"\(B, 8, 8, 1\), got \(2, 8, 8\)"):
        cnn(jnp.ones((2, 8, 8)))
    fn = models.preactivation_fn(cnn)
    with pytest.raises(ValueError, match=r"^x: expected one flat input of shape \(64"):
        fn(jnp.ones(63))


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="width: expected a positive integer"):
        actgeo.NetworkSpec(5, -1, 3)
    with pytest.raises(ValueError, match="activation: unknown name 'nope'"):
        actgeo.NetworkSpec(5, 6, 3, "nope")
    with pytest.raises(ValueError, match="activation: unknown name 'nope'"):
        models.CNN(IMAGE, 3, 2, 4, "nope", key=KEY)
    with pytest.raises(ValueError, match="fn: expected an elementwise function"):
        models.CNN(IMAGE, 3, 2, 4, jnp.cumsum, key=KEY)
    with pytest.raises(
        ValueError, match=r"in_shape: expected \(H, W, C\).*; channels: expected"
    ):
        models.CNN((8, 8), 0, 2, 4, "relu", key=KEY)
    with pytest.raises(TypeError, match="exactly one of key= and rngs="):
        models.CNN(IMAGE, 3, 2, 4, "relu")
    with pytest.raises(TypeError, match=r"key: expected a typed key from jax\.random"):
        models.MLP(TANH, key=0)
    with pytest.raises(ValueError, match="member: expected a non-negative integer"):
        models.MLP(TANH, key=KEY, member=-1)
    with pytest.raises(TypeError, match="exactly one of key= and params="):
        models.MLP(TANH)
    p = jax.tree.map(lambda a: a[0], actgeo.sample(RELU_RES, [0], key=KEY))
    with pytest.raises(ValueError, match=r"w_out: expected \(3, 6\), got None"):
        models.MLP(TANH, params=p)
    with pytest.raises(ValueError, match=r"spec\.residual is 0\.5"):
        models.critical_spec(RELU_RES)
    relu_b = actgeo.NetworkSpec(5, 6, 3, "relu", sigma_b=0.1)
    with pytest.raises(ValueError, match="edge of chaos only at sigma_b = 0"):
        models.critical_spec(relu_b)


def test_ensemble_and_member_errors():
    graphdef, state = models.ensemble(TANH, 3, KEY)
    with pytest.raises(ValueError, match=r"^i: member index 3 out of range \[0, 3\)"):
        models.member(graphdef, state, 3)
    with pytest.raises(ValueError, match="out of range"):
        models.member(graphdef, state, -1)
    with pytest.raises(TypeError, match="integer member index"):
        models.member(graphdef, state, 1.0)
    with pytest.raises(ValueError, match="members: expected a positive integer"):
        models.ensemble(TANH, 0, KEY)
    with pytest.raises(TypeError, match="the factory returned int"):
        models.ensemble(lambda key, i: i, 2, KEY)
    stacked = nnx.merge(graphdef, state)
    with pytest.raises(ValueError, match="holds a whole ensemble"):
        stacked(_x())
    with pytest.raises(ValueError, match="holds a whole ensemble"):
        models.as_params(stacked)
