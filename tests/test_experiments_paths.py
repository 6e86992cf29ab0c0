"""Tiny end-to-end runs of the path experiments (Poole et al. 2016 circles,
Raghu et al. 2017 trajectory length), and the growth-rate fit on known data."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import poole2016_circles as circles  # noqa: E402
import raghu2017_trajectory as raghu  # noqa: E402


def test_growth_rate_recovers_a_geometric_sequence():
    log10_length = np.log10(3.0 * 1.7 ** np.arange(12))
    assert raghu.growth_rate(log10_length, 6) == pytest.approx(1.7, rel=1e-12)
    assert np.isnan(raghu.growth_rate(np.array([1.0, np.inf, 2.0]), 0))


def test_poole_circles_tiny_run(tmp_path):
    args = circles.Args(
        out=tmp_path, width=16, members=2, depth=3, samples=32, progress=False
    )
    ds = circles.main(args)
    assert (tmp_path / "poole2016_circles.png").exists()
    assert (tmp_path / "table.txt").read_text().startswith("Poole et al. 2016")
    assert ds["length_measured"].shape == (len(circles.SIGMA_WS), 3)
    # Layer 1 of a circle at q*: the Gauss map of an ellipse-like image is
    # one full turn, in theory and in the measurement.
    np.testing.assert_allclose(ds["gauss_length_theory"][:, 0], 2 * np.pi, rtol=1e-5)
    np.testing.assert_allclose(ds["gauss_length_measured"][:, 0], 2 * np.pi, rtol=1e-3)
    assert np.all(np.isfinite(ds["curvature_measured"].values))


def test_raghu_trajectory_tiny_run(tmp_path):
    args = raghu.Args(
        out=tmp_path, width=16, members=2, depth=3, samples=32, progress=False
    )
    ds = raghu.main(args)
    assert (tmp_path / "raghu2017_trajectory.png").exists()
    assert "rate meas" in (tmp_path / "table.txt").read_text()
    assert ds["log10_length_measured"].shape == (2, len(raghu.SIGMA_WS), 3)
    assert np.all(np.isfinite(ds["log10_length_theory"].values))
