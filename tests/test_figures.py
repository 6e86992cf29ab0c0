"""Theory maps: the phase diagram's and edge-of-chaos dataset, and their figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actgeo import figures, theory

SIGMA_W = np.array([0.5, 1.0, 1.3])
SIGMA_B = np.array([0.2, 0.5])


@pytest.fixture(scope="module")
def relu_map():
    return figures.theory_dataset("relu", ("relu", "tanh"), SIGMA_W, SIGMA_B)


def test_relu_phase_diagram_matches_its_closed_form(relu_map):
    ds = relu_map
    assert ds["chi_1"].dims == ("sigma_b", "sigma_w")
    sw, sb = np.meshgrid(SIGMA_W, SIGMA_B)
    # E[relu'(u)^2] = 1/2 at any q; ordered (sigma_w < sqrt 2), so the
    # q-map q' = sigma_w^2 q / 2 + sigma_b^2 has q* = sigma_b^2 / (1 - chi_1),
    # and every pair of inputs ends up aligned, c* = 1.
    np.testing.assert_allclose(ds["chi_1"], sw**2 / 2, rtol=1e-5)
    np.testing.assert_allclose(ds["q_star"], sb**2 / (1 - sw**2 / 2), rtol=1e-4)
    np.testing.assert_allclose(ds["c_star"], 1.0, atol=1e-3)
    for name in ("q_star", "chi_1", "c_star", "eoc_sigma_w"):
        assert ds[name].attrs["description"], name


def test_edge_of_chaos_curves_are_padded_to_one_length(relu_map):
    ds = relu_map
    assert list(ds["curve"].values) == ["relu", "tanh"]
    relu = ds.sel(curve="relu")
    kept = np.isfinite(relu["eoc_sigma_w"].values)
    assert kept.sum() == 1
    np.testing.assert_allclose(relu["eoc_sigma_w"].values[kept], [np.sqrt(2)])
    assert not relu["eoc_stable"].values[~kept].any()
    tanh = ds.sel(curve="tanh")
    assert np.isfinite(tanh["eoc_sigma_w"].values).sum() > 10
    # The phase-diagram activation's own curve is kept beside the grid.
    np.testing.assert_allclose(ds["phase_eoc_sigma_w"], [np.sqrt(2)])
    assert json.loads(ds.attrs["no_edge_of_chaos"]) == {}


def test_activation_without_edge_of_chaos_is_named(monkeypatch, tmp_path):
    real = theory.edge_of_chaos

    def without_tanh(activation, *args, **kwargs):
        if activation == "tanh":
            raise ValueError("edge_of_chaos: tanh has no edge of chaos here")
        return real(activation, *args, **kwargs)

    monkeypatch.setattr(theory, "edge_of_chaos", without_tanh)
    ds = figures.theory_dataset("tanh", ("relu", "tanh"), SIGMA_W, SIGMA_B)
    assert "tanh" in json.loads(ds.attrs["no_edge_of_chaos"])
    assert np.isnan(ds["eoc_sigma_w"].sel(curve="tanh")).all()
    assert ds.sizes["phase_point"] == 0
    for plot in (figures.plot_phase_diagram, figures.plot_edge_of_chaos):
        path = plot(ds, tmp_path / f"{plot.__name__}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_theory_dataset_names_activations_without_an_edge_of_chaos():
    ds = figures.theory_dataset(
        "tanh", ("tanh", "softplus"), np.array([0.5, 1.5]), np.array([0.0, 0.5])
    )
    missing = json.loads(ds.attrs["no_edge_of_chaos"])
    assert list(missing) == ["softplus"]
    assert "sigma_b^2 would be negative" in missing["softplus"]
