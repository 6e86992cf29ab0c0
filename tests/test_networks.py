"""Tests of network specifications and ensemble sampling."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from actgeo import get_activation, networks
from actgeo.networks import NetworkSpec, sample

# D = 8, N = 32, L = 3, K = 4. Compiling a sampler takes seconds on the CPU,
# so every test here samples this shape with E = 3 or E = 10 members, except
# those that need another (E = 1, float64, orthogonal).
SPEC = NetworkSpec(8, 32, 3, "tanh", sigma_w=1.5, sigma_b=0.2, readout=4)
KEY = jax.random.key(0)
FIELDS = ("w_in", "b_in", "w", "b", "w_out", "b_out")


def _assert_same_member(a, i, b, j):
    for field in FIELDS:
        np.testing.assert_array_equal(
            getattr(a, field)[i], getattr(b, field)[j], err_msg=field
        )


# NetworkSpec validation


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"width": 0}, "width"),
        ({"width": -4}, "width"),
        ({"width": 2.0}, "width"),
        ({"width": True}, "width"),
        ({"depth": 0}, "depth"),
        ({"depth": -1}, "depth"),
        ({"input_dim": 0}, "input_dim"),
        ({"input_dim": -3}, "input_dim"),
        ({"sigma_w": math.nan}, "sigma_w"),
        ({"sigma_w": math.inf}, "sigma_w"),
        ({"sigma_w": -1.0}, "sigma_w"),
        ({"sigma_w": 0.0}, "sigma_w"),
        ({"sigma_b": math.nan}, "sigma_b"),
        ({"sigma_b": math.inf}, "sigma_b"),
        ({"sigma_b": -0.1}, "sigma_b"),
        ({"init": "uniform"}, "init"),
        ({"activation": "swishy"}, "activation"),
        ({"readout": 0}, "readout"),
        ({"readout": -2}, "readout"),
        ({"readout": 2.5}, "readout"),
        ({"residual": 0.0}, "residual"),
        ({"residual": -0.5}, "residual"),
        ({"residual": math.nan}, "residual"),
    ],
)
def test_spec_rejects_each_bad_field(change, field):
    with pytest.raises(ValueError, match=rf"^NetworkSpec: (.*; )?{field}: ") as err:
        dataclasses.replace(SPEC, **change)
    # Only the bad field is named.
    for other in ("input_dim", "width", "depth", "sigma_w", "sigma_b", "init"):
        if other != field:
            assert f"{other}:" not in str(err.value)


def test_spec_collects_every_problem_in_one_message():
    with pytest.raises(ValueError) as err:
        NetworkSpec(
            0,
            -1,
            0,
            "swishy",
            sigma_w=-1.0,
            sigma_b=math.nan,
            init="uniform",
            readout=0,
            residual=-1.0,
        )
    message = str(err.value)
    for field in (
        "input_dim",
        "width",
        "depth",
        "activation",
        "sigma_w",
        "sigma_b",
        "init",
        "readout",
        "residual",
    ):
        assert f"{field}: " in message, field


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "tanh", "selu", "gelu"])
def test_sigma_w_none_takes_the_customary_value(name):
    spec = NetworkSpec(2, 4, 1, name)
    assert spec.sigma_w == get_activation(name).customary_sigma_w
    assert isinstance(spec.sigma_w, float)


def test_customary_values():
    assert NetworkSpec(2, 4, 1, "relu").sigma_w == math.sqrt(2.0)
    assert NetworkSpec(2, 4, 1, "tanh").sigma_w == 1.0
    spec = NetworkSpec(2, 4, 1, get_activation("sigmoid"), sigma_b=1)
    assert spec.activation == "sigmoid"
    assert spec.sigma_b == 1.0 and isinstance(spec.sigma_b, float)


def test_param_count_matches_the_sampled_arrays():
    params = sample(SPEC, 3, key=KEY)
    total = sum(getattr(params, f)[0].size for f in FIELDS)
    assert SPEC.param_count() == total == 32 * 8 + 32 + 2 * (32 * 32 + 32) + 4 * 33


# sample()


def test_sample_shapes():
    params = sample(SPEC, 3, key=KEY)
    assert params.w_in.shape == (3, 32, 8)
    assert params.b_in.shape == (3, 32)
    assert params.w.shape == (3, 2, 32, 32)
    assert params.b.shape == (3, 2, 32)
    assert params.w_out.shape == (3, 4, 32)
    assert params.b_out.shape == (3, 4)
    assert all(getattr(params, f).dtype == jnp.float32 for f in FIELDS)


def test_float64_parameters_without_readout():
    with jax.enable_x64(True):
        params = sample(
            dataclasses.replace(SPEC, readout=None), 3, key=KEY, dtype=jnp.float64
        )
    assert params.w_out is None and params.b_out is None
    assert params.w.shape == (3, 2, 32, 32)
    assert all(getattr(params, f).dtype == jnp.float64 for f in FIELDS[:4])


def test_members_do_not_depend_on_what_is_drawn_with_them():
    three = sample(SPEC, 3, key=KEY)
    ten = sample(SPEC, 10, key=KEY)
    for i in range(3):
        _assert_same_member(three, i, ten, i)
    alone = sample(SPEC, jnp.array([2]), key=KEY)
    _assert_same_member(alone, 0, ten, 2)
    # Any order, any integer dtype (three members: the E = 3 program again).
    picked = sample(SPEC, np.array([7, 2, 9], np.int32), key=KEY)
    for row, i in enumerate((7, 2, 9)):
        _assert_same_member(picked, row, ten, i)


def test_members_and_keys_are_distinct():
    ten = sample(SPEC, 10, key=KEY)
    for field in FIELDS:
        rows = np.asarray(getattr(ten, field)).reshape(10, -1)
        assert np.unique(rows, axis=0).shape[0] == 10, field
    other = sample(SPEC, 3, key=jax.random.key(1))
    assert not np.any(np.asarray(other.w_in) == np.asarray(ten.w_in[:3]))


def test_golden_values_of_member_zero():
    # These numbers pin the random stream: threefry with
    # jax_threefry_partitionable on, fold_in(key, member), then one normal draw
    # per member cut into the parameters in a fixed order. Any change to those
    # settings (or to the order) changes every network of every stored sweep,
    # so it must be a deliberate change of these numbers. Computed with jax
    # 0.10.2 and the sampler of actgeo/networks.py as of this test.
    expected_w_in = [0.5324589610099792, -0.4806578755378723, -0.3967782258987427]
    expected_b_in = [-0.0932270884513855, -0.0992320105433464, 0.1750653237104416]
    expected_w = [0.4846675395965576, -0.31284308433532715, -0.022143622860312462]
    for partitionable in (True, False):
        # sample() pins the setting whatever the global one is.
        with jax.threefry_partitionable(partitionable):
            params = sample(SPEC, 3, key=KEY)
        np.testing.assert_allclose(params.w_in[0, 0, :3], expected_w_in, rtol=1e-5)
        np.testing.assert_allclose(params.b_in[0, :3], expected_b_in, rtol=1e-5)
        np.testing.assert_allclose(params.w[0, 1, 0, :3], expected_w, rtol=1e-5)


def test_changing_sigma_does_not_recompile_and_scales_exactly():
    base = dataclasses.replace(SPEC, sigma_w=1.0, sigma_b=1.0)
    unit = sample(base, 3, key=KEY)
    compiled = networks._sample_members._cache_size()
    scaled = sample(dataclasses.replace(base, sigma_w=2.5, sigma_b=0.3), 3, key=KEY)
    assert networks._sample_members._cache_size() == compiled
    for field, scale in zip(FIELDS, (2.5, 0.3) * 3, strict=True):
        np.testing.assert_allclose(
            getattr(scaled, field),
            scale * np.asarray(getattr(unit, field)),
            rtol=5e-7,
            err_msg=field,
        )


def test_gaussian_entry_variance_and_bias_scale():
    params = sample(SPEC, 10, key=jax.random.key(7))
    sw, sb = SPEC.sigma_w, SPEC.sigma_b
    groups = {
        "w_in": (params.w_in, sw**2 / 8),  # fan-in D
        "w": (params.w, sw**2 / 32),  # fan-in N
        "w_out": (params.w_out, sw**2 / 32),  # fan-in N, not the K outputs
        "biases": (
            np.concatenate(
                [np.ravel(params.b_in), np.ravel(params.b), np.ravel(params.b_out)]
            ),
            sb**2,
        ),
    }
    for name, (values, variance) in groups.items():
        v = np.ravel(np.asarray(values, np.float64))
        n = v.size  # 2560, 20480, 1280 and 1000 entries
        # For n iid N(0, s^2) entries, the mean has standard deviation
        # s / sqrt(n) and the mean square (an unbiased variance estimate for a
        # zero-mean law) has standard deviation s^2 sqrt(2 / n): 4% of s^2 for
        # the 1000 biases. Five standard deviations: a false alarm about once
        # in 1.7 million runs.
        assert abs(v.mean()) < 5 * math.sqrt(variance / n), name
        assert abs(np.mean(v**2) - variance) < 5 * variance * math.sqrt(2 / n), name


# Orthogonal: a wide first layer (N = 8 < D = 12: orthonormal rows), square
# hidden layers, a tall readout (K = 12 > N = 8: orthonormal columns).
ORTHO = NetworkSpec(12, 8, 3, "tanh", sigma_w=1.5, init="orthogonal", readout=12)
ORTHO_MEMBERS = 64


def _gram(a, orthonormal_rows):
    a = np.asarray(a, np.float64)
    return a @ a.swapaxes(-1, -2) if orthonormal_rows else a.swapaxes(-1, -2) @ a


def test_orthogonal_init():
    params = sample(ORTHO, ORTHO_MEMBERS, key=jax.random.key(3))
    sw, n = ORTHO.sigma_w, ORTHO.width
    # Square hidden layers: sigma_w times an orthogonal matrix.
    np.testing.assert_allclose(
        _gram(params.w, True),
        np.broadcast_to(sw**2 * np.eye(n), (64, 2, n, n)),
        atol=1e-5,
    )
    # Rectangular layers: orthonormal rows or columns after dividing by
    # sigma_w sqrt(max(rows, cols) / fan_in).
    np.testing.assert_allclose(
        _gram(params.w_in / (sw * math.sqrt(12 / 12)), True),
        np.broadcast_to(np.eye(8), (64, 8, 8)),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        _gram(params.w_out / (sw * math.sqrt(12 / 8)), False),
        np.broadcast_to(np.eye(8), (64, 8, 8)),
        atol=1e-5,
    )
    # Each matrix's mean square entry is exactly sigma_w^2 / fan_in, as in the
    # Gaussian case (a matrix with orthonormal rows or columns has a fixed sum
    # of squares).
    for a, fan_in in ((params.w_in, 12), (params.w, n), (params.w_out, n)):
        mean_square = np.mean(np.asarray(a, np.float64) ** 2, axis=(-1, -2))
        np.testing.assert_allclose(mean_square, sw**2 / fan_in, rtol=1e-5)
    # Haar, not just orthogonal: a Haar matrix's diagonal entries have mean 0
    # and variance 1 / N, so the mean of E (L-1) N of them has standard
    # deviation about 1 / (N sqrt(E (L-1))) = 0.011. QR without its sign
    # correction gives a mean near -0.2 here.
    diagonal = np.diagonal(np.asarray(params.w) / sw, axis1=-2, axis2=-1)
    spread = 1 / (n * math.sqrt(ORTHO_MEMBERS * (ORTHO.depth - 1)))
    assert abs(diagonal.mean()) < 5 * spread, diagonal.mean()


def test_orthogonal_ensemble_finishes():
    # Many members' QR factorisations in one call once deadlocked XLA's CPU
    # runtime (4 members of depth 24 at width 64 never returned). A fresh
    # process, so that a hang fails this test instead of the whole run.
    script = (
        "import jax, actgeo\n"
        "spec = actgeo.NetworkSpec(64, 64, 24, 'tanh', init='orthogonal')\n"
        "p = actgeo.sample(spec, 8, key=jax.random.key(0))\n"
        "print(float(abs(p.w).sum()) > 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


# Errors


@pytest.mark.parametrize(
    "key", [jax.random.PRNGKey(0), 0, np.uint32(3)], ids=["raw", "int", "uint"]
)
def test_sample_rejects_untyped_keys(key):
    with pytest.raises(TypeError, match=r"key: expected a typed key"):
        sample(SPEC, 3, key=key)


@pytest.mark.parametrize(
    "members",
    [0, -2, True, jnp.zeros((2, 2), jnp.int32), jnp.array([0.5, 1.5])],
    ids=["zero", "negative", "bool", "2d", "float"],
)
def test_sample_rejects_bad_members(members):
    with pytest.raises(ValueError, match="members: expected"):
        sample(SPEC, members, key=KEY)
