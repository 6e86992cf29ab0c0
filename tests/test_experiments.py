"""The experiment scripts: their measurement glue, and tiny end-to-end runs.

The cheap checks run by default; each script's ``main`` at a tiny size (it
still compiles the theory's maps, some seconds each) is marked slow, except
the relu-only edge-of-chaos run.
"""

from __future__ import annotations

import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import actgeo
from actgeo import kernels

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import _common  # noqa: E402
import hayou2019_edge_of_chaos as hayou  # noqa: E402
import poole2016_maps as poole  # noqa: E402
import schoenholz2017_depth_scales as schoenholz  # noqa: E402


def _tiny_spec(activation="tanh", depth=3):
    return actgeo.NetworkSpec(
        input_dim=5, width=8, depth=depth, activation=activation, sigma_b=0.1
    )


def test_input_pairs_have_the_requested_length_and_cosine():
    q_in, c_in = np.array([0.5, 2.0, 1.0]), np.array([-0.3, 0.9, 0.999])
    x = np.asarray(_common.input_pairs(jax.random.key(0), 16, q_in, c_in, jnp.float32))
    assert x.shape == (6, 16)
    np.testing.assert_allclose(np.sum(x**2, axis=1) / 16, np.repeat(q_in, 2), 1e-5)
    a, b = x[0::2], x[1::2]
    cosine = (
        np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    )
    np.testing.assert_allclose(cosine, c_in, atol=1e-5)


def test_layer_one_settings_invert_the_first_layer():
    sigma_w, sigma_b, q1, c1 = 1.7, 0.4, 2.5, 0.6
    q_in = _common.input_q(q1, sigma_w, sigma_b)
    c_in = _common.pair_input_cosine(q1, c1, sigma_w, sigma_b)
    assert math.isclose(sigma_w**2 * q_in + sigma_b**2, q1)
    assert math.isclose((sigma_w**2 * q_in * c_in + sigma_b**2) / q1, c1)


def test_measured_lengths_match_the_kernel():
    spec = _tiny_spec()
    x = _common.input_pairs(jax.random.key(1), 5, [1.0, 0.5], [0.2, 0.99], jnp.float32)
    key = jax.random.key(2)
    q, one_minus_c = _common.measure_lengths(
        spec, x, 3, key=key, n_pairs=2, progress=False
    )
    assert q.shape == (3, 3, 4) and one_minus_c.shape == (3, 3, 2)
    params = actgeo.sample(spec, 3, key=key)
    z = np.asarray(jax.vmap(lambda p: kernels.preactivations(p, x, "tanh"))(params))
    np.testing.assert_allclose(q, np.mean(z**2, axis=-1), rtol=1e-5)
    a, b = z[:, :, 0::2], z[:, :, 1::2]
    cosine = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    np.testing.assert_allclose(one_minus_c, 1 - cosine, atol=1e-5)


def test_measured_stretch_is_the_jacobian_times_the_tangent():
    spec = _tiny_spec("elu")
    x = _common.inputs_at(jax.random.key(3), 5, [1.0, 2.0], jnp.float32)
    v = _common.inputs_at(jax.random.key(4), 5, [0.2, 0.2], jnp.float32)
    key = jax.random.key(5)
    _, stretch = _common.measure_stretch(spec, x, v, 2, key=key, progress=False)
    params = actgeo.sample(spec, 2, key=key)
    _, j = jax.vmap(lambda p: kernels.jacobians(p, x, "elu"))(params)  # (E,L,B,N,D)
    jv = jnp.einsum("elbnd,bd->elbn", j, v)
    np.testing.assert_allclose(stretch, np.sum(np.asarray(jv) ** 2, -1), rtol=1e-4)


def test_members_do_not_depend_on_the_chunking(monkeypatch):
    spec = _tiny_spec()
    x = _common.inputs_at(jax.random.key(6), 5, [1.0], jnp.float32)
    whole, _ = _common.measure_lengths(spec, x, 5, key=jax.random.key(7))
    monkeypatch.setattr(_common, "_chunks", lambda *args: 2)
    chunked, _ = _common.measure_lengths(spec, x, 5, key=jax.random.key(7))
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)


def test_decay_window_and_length_recover_a_depth_scale():
    rng = np.random.default_rng(0)
    layers = np.arange(80)
    gap = 0.5 * np.exp(-layers / 6.0)
    error = np.full(80, 1e-4)
    noisy = np.abs(gap + error * rng.standard_normal(80))
    stop = _common.decay_window(noisy, error, start=1)
    assert 40 < stop < 50 and noisy[stop] <= 3e-4 < noisy[stop - 1]
    xi = _common.decay_length(noisy, noisy / error, 1, stop)
    assert abs(xi - 6.0) < 0.1
    assert math.isnan(_common.decay_length(noisy, noisy / error, 1, 3))
    assert math.isnan(_common.decay_length(np.exp(layers), np.ones(80), 0, 10))


def test_schoenholz_fit_averages_members_before_the_absolute_value():
    rng = np.random.default_rng(1)
    layers = np.arange(30)
    # Members scattered on both sides of a decaying deviation.
    per_member = 0.4 * np.exp(-layers / 3.0) + 0.01 * rng.standard_normal((64, 30))
    fit = schoenholz._fit(per_member, 0.4 * np.exp(-layers / 3.0), True, rng)
    assert np.all(fit["gap"][:3] > 0.1) and fit["stop"] < 30
    assert abs(fit["xi"] - 3.0) < 5 * fit["xi_err"] + 0.1
    assert math.isclose(fit["xi_window"], 3.0, rel_tol=1e-9)


def test_hayou_crossing_and_growth():
    grid = np.linspace(1.0, 2.0, 5)
    root, err = hayou._crossing(grid, 2.0 * (grid - 1.3), np.full(5, 0.02))
    # 1.3 lies a fifth of the way from 1.25 to 1.5, where the slope is 2.
    assert math.isclose(root, 1.3, rel_tol=1e-12)
    assert math.isclose(err, math.hypot(0.8, 0.2) * 0.02 / 2.0)
    assert math.isnan(hayou._crossing(grid, grid, np.ones(5))[0])
    depth = 12
    stretch = np.broadcast_to(1.1 ** np.arange(depth)[None, :, None], (3, depth, 2))
    rate, error = hayou._growth(stretch)
    assert math.isclose(rate, math.log(1.1), rel_tol=1e-9) and error == 0


def _assert_written(ds: xr.Dataset, out: pathlib.Path, name: str):
    assert (out / f"{name}.png").stat().st_size > 0
    assert (out / "table.txt").read_text().strip()
    stored = xr.open_zarr(out / f"{name}.zarr", consolidated=False).load()
    for var in ds.data_vars:
        assert var in stored
    return stored


def test_hayou_relu_end_to_end(tmp_path):
    args = hayou.Args(
        out=tmp_path,
        quick=True,
        width=8,
        members=2,
        depth=7,
        grid=3,
        activations=("relu",),
        progress=False,
    )
    ds = hayou.main(args)
    stored = _assert_written(ds, tmp_path, hayou.NAME)
    assert np.all(np.isfinite(stored["rate"])) and np.all(stored["rate_err"] >= 0)
    assert math.isclose(float(stored["sigma_w_theory"][0]), math.sqrt(2), rel_tol=1e-6)


@pytest.mark.slow
def test_hayou_end_to_end(tmp_path):
    args = hayou.Args(out=tmp_path, width=8, members=2, depth=7, grid=3, progress=False)
    stored = _assert_written(hayou.main(args), tmp_path, hayou.NAME)
    assert np.all(np.isfinite(stored["rate"]))
    assert np.all(np.isfinite(stored["sigma_w_theory"]))


@pytest.mark.slow
def test_poole_end_to_end(tmp_path):
    args = poole.Args(
        out=tmp_path, width=8, members=2, depth=4, sweep_points=2, progress=False
    )
    stored = _assert_written(poole.main(args), tmp_path, poole.NAME)
    for name in ("q_measured", "q_theory", "c_measured", "c_theory", "q_map"):
        assert np.all(np.isfinite(stored[name])), name
    assert np.all(np.isfinite(stored["c_star_theory"]))


@pytest.mark.slow
def test_schoenholz_end_to_end(tmp_path):
    args = schoenholz.Args(
        out=tmp_path, width=8, members=2, depth=6, points=2, progress=False
    )
    stored = _assert_written(schoenholz.main(args), tmp_path, schoenholz.NAME)
    assert stored.attrs["dtype"] == "float64"
    for name in ("q_gap", "c_gap", "xi_c_theory", "q_star_theory"):
        assert np.all(np.isfinite(stored[name])), name
    # float64 stayed inside the script.
    assert jnp.zeros(1).dtype == jnp.float32
