"""The Pennington et al. 2017 spectra experiment: a tiny end-to-end run."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import xarray as xr

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import pennington2017_spectra as pennington  # noqa: E402


def test_pennington_tiny_end_to_end(tmp_path):
    args = pennington.Args(
        out=tmp_path,
        width=8,
        members=3,
        depth=4,
        inputs=1,
        activations=("relu",),
        progress=False,
    )
    ds = pennington.main(args)
    assert (tmp_path / f"{pennington.NAME}.png").stat().st_size > 0
    assert "var theory" in (tmp_path / "table.txt").read_text()
    stored = xr.open_zarr(tmp_path / f"{pennington.NAME}.zarr", consolidated=False)
    stored = stored.load()
    for var in ds.data_vars:
        assert var in stored
    assert list(stored["layer"].values) == [1, 2, 4]
    # A square orthogonal first layer: W W^T = sigma_w^2 I exactly.
    first = stored.sel(activation="relu", init="orthogonal", layer=1)
    np.testing.assert_allclose(first["mean_measured"], 2.0, rtol=1e-5)
    np.testing.assert_allclose(first["variance_measured"], 0.0, atol=1e-5)
    # relu theory: v = 2l - 1 (Gaussian), l - 1 (orthogonal), mean sigma_w^2.
    relu = stored.sel(activation="relu")
    np.testing.assert_allclose(
        relu["variance_theory"].sel(init="gaussian"), 4.0 * (2 * np.arange(1, 5) - 1),
        rtol=1e-5,
    )  # fmt: skip
    counts = stored["log10_sigma_counts"].sel(activation="relu").values
    # Every singular value of every member is counted at each layer.
    total = counts.sum(-1) + 0  # clipped ones are not in the bins
    assert np.all(total <= 3 * 8) and np.all(total[:, 0] == 3 * 8)
