"""A tiny end-to-end run of the Hanin & Rolnick 2019 experiment during training."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import xarray as xr

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import hanin2019_training as hanin  # noqa: E402

WIDTH = 8
DEPTH = 2
MEMBERS = 2
STEPS = 20
MEASURE_AT = (0, 5, 20)


def test_hanin_training_end_to_end(tmp_path):
    args = hanin.Args(
        out=tmp_path,
        quick=True,
        width=WIDTH,
        depth=DEPTH,
        members=MEMBERS,
        steps=STEPS,
        measure_at=MEASURE_AT,
        points=8,
        lines=2,
        progress=False,
    )
    ds = hanin.main(args)
    assert (tmp_path / f"{hanin.NAME}.png").stat().st_size > 0
    assert "chg/(len LN)" in (tmp_path / "table.txt").read_text()
    stored = xr.open_zarr(tmp_path / f"{hanin.NAME}.zarr", consolidated=False).load()
    for var in ds.data_vars:
        assert var in stored
    assert list(stored["measure_step"].values) == list(MEASURE_AT)
    changes = stored["changes_per_length"].values
    assert changes.shape == (len(MEASURE_AT), MEMBERS, DEPTH)
    assert np.all(np.isfinite(changes)) and np.all(changes >= 0)
    np.testing.assert_allclose(
        stored["changes_per_length_network"], changes.mean(-1), rtol=1e-6
    )
    distance = stored["region_distance_x_neurons"].values
    assert np.all(distance > 0) and np.all(np.isfinite(distance))
    np.testing.assert_allclose(
        distance,
        10.0 ** stored["log10_region_distance"].values[..., -1] * WIDTH * DEPTH,
        rtol=1e-5,
    )
    accuracy = stored["test_accuracy_at"].values
    assert np.all((accuracy >= 0) & (accuracy <= 1))
