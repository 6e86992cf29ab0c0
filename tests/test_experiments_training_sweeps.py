"""Tiny end-to-end runs of the training-sweep experiments (depth sweep,
Schoenholz trainability, cost of accuracy), and the FLOPs count by hand."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
import xarray as xr

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import cost_of_accuracy as cost  # noqa: E402
import depth_sweep  # noqa: E402
import schoenholz2017_trainability as trainability  # noqa: E402

TINY = dict(members=2, steps=4, batch_size=32, progress=False)


def _stored(path: pathlib.Path, name: str, ds: xr.Dataset) -> xr.Dataset:
    assert (path / f"{name}.png").stat().st_size > 0
    assert (path / "table.txt").read_text().strip()
    stored = xr.open_zarr(path / f"{name}.zarr", consolidated=False).load()
    for var in ds.data_vars:
        assert var in stored
    return stored


def _assert_accuracies(values: np.ndarray) -> None:
    assert np.all(np.isfinite(values))
    assert np.all((values >= 0) & (values <= 1))
    # 450 test images: accuracies are multiples of 1/450.
    np.testing.assert_allclose(values * 450, np.round(values * 450), atol=1e-3)


def test_depth_sweep_end_to_end(tmp_path):
    args = depth_sweep.Args(
        out=tmp_path,
        quick=True,
        width=4,
        depths=(1, 2),
        activations=("tanh",),
        **TINY,
    )
    ds = depth_sweep.main(args)
    stored = _stored(tmp_path, depth_sweep.NAME, ds)
    assert stored["test_accuracy"].shape == (1, 2, 2, 2)
    _assert_accuracies(stored["test_accuracy"].values)
    sigma_w = stored["sigma_w"]
    relu = depth_sweep.specs_for("relu", 4, 2)["critical"]
    assert (relu.sigma_w, relu.sigma_b) == pytest.approx((np.sqrt(2), 0.0))
    assert float(sigma_w.sel(activation="tanh", init="customary")) == 1.0
    # tanh at sigma_b = 0.3 sits on its edge of chaos above sigma_w = 1.
    assert float(sigma_w.sel(activation="tanh", init="critical")) > 1.3
    assert "L=2" in (tmp_path / "table.txt").read_text()
    # Context retention of the trained networks, per layer that exists: the
    # first layer's own signed distances are recovered from tanh(z^1).
    retention = stored["retention_first"].values  # (act, init, depth, member, layer)
    assert retention.shape == (1, 2, 2, 2, 2)
    assert np.all(np.isnan(retention[:, :, 0, :, 1]))
    assert np.all(np.isfinite(retention[:, :, 1]))
    assert np.all(retention[..., 0] > 0.5)


def test_trainability_end_to_end(tmp_path):
    args = trainability.Args(
        out=tmp_path, quick=True, width=4, points=2, depths=(1, 3), **TINY
    )
    ds = trainability.main(args)
    stored = _stored(tmp_path, trainability.NAME, ds)
    assert stored["test_accuracy"].shape == (2, 2, 2)
    _assert_accuracies(stored["test_accuracy"].values)
    np.testing.assert_allclose(stored["sigma_w2"], [1.0, 4.0])
    xi = stored["xi_c_theory_fine"].values
    assert np.all(xi > 0)
    # xi_c peaks at the edge of chaos (sigma_w^2 about 1.76 at sigma_b^2 = 0.05).
    peak = float(stored["fine_sigma_w2"][np.argmax(xi)])
    assert peak == pytest.approx(stored.attrs["critical_sigma_w2"], abs=0.05)


def test_flops_by_hand():
    # D = 64, N = 8, L = 2, K = 10: products 64*8 + 8*8 + 8*10 = 656 weights,
    # two FLOPs each, plus 2 * 8 activations.
    assert cost.inference_flops(64, 8, 2, 10) == 2 * 656 + 16
    assert cost.inference_flops(3, 5, 1, 2) == 2 * (15 + 10) + 5


def test_pareto_front():
    c = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    a = np.array([0.5, 0.4, 0.7, 0.6, 0.9])
    np.testing.assert_array_equal(cost.pareto(c, a), [0, 2, 4])


def test_cost_of_accuracy_end_to_end(tmp_path):
    args = cost.Args(
        out=tmp_path,
        quick=True,
        depths=(1, 2),
        widths=(4,),
        activations=("relu",),
        repeats=2,
        latency_batch=8,
        target=0.0,
        **TINY,
    )
    ds = cost.main(args)
    stored = _stored(tmp_path, cost.NAME, ds)
    _assert_accuracies(stored["test_accuracy"].values)
    np.testing.assert_array_equal(
        stored["flops"].values[:, 0],
        [cost.inference_flops(64, 4, d, 10) for d in (1, 2)],
    )
    for name in ("latency_batched", "latency_single"):
        values = stored[name].values
        assert np.all(np.isfinite(values) & (values > 0) & (values < 1.0))
    # Target 0: the cheapest network is the shallowest.
    assert cost.cheapest(stored, "relu", 0.0) == (0, 0)
    assert cost.cheapest(stored, "relu", 1.01) is None
