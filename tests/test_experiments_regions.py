"""A tiny end-to-end run of the Hanin & Rolnick 2019 region experiment."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import xarray as xr

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import hanin2019_regions as hanin  # noqa: E402


def test_hanin_regions_end_to_end(tmp_path):
    args = hanin.Args(
        out=tmp_path,
        quick=True,
        width=8,
        members=2,
        depths=(1, 2),
        lines=3,
        points=4,
        plane_width=4,
        plane_depth=2,
        progress=False,
    )
    ds = hanin.main(args)
    assert (tmp_path / f"{hanin.NAME}.png").stat().st_size > 0
    assert "chg/neuron" in (tmp_path / "table.txt").read_text()
    stored = xr.open_zarr(tmp_path / f"{hanin.NAME}.zarr", consolidated=False).load()
    for var in ds.data_vars:
        assert var in stored
    changes = stored["changes_per_neuron"].values
    assert np.all(np.isfinite(changes[0, :, :, :1]))
    assert np.all(np.isnan(changes[0, :, :, 1:]))  # depth 1 has one layer
    assert np.all(stored["region_distance"].values > 0)
    # The partition tiles the square.
    side = 2 * stored.attrs["plane_extent"]
    np.testing.assert_allclose(stored["partition_area"].sum(), side**2, rtol=1e-6)
