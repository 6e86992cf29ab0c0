"""Sweeps: the results store, resuming, refusing other settings, the figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from actgeo import figures
from actgeo.kernels import Bins
from actgeo.sweep import SweepConfig, run_sweep

TINY = dict(
    activations=("relu", "tanh"),
    datasets=("digits", "sphere"),
    members=3,
    width=8,
    depth=3,
    inputs=2,
    probe=8,
    sphere_dim=4,
)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    lines = []
    ds = run_sweep(SweepConfig(**TINY), out, log=lines.append).load()
    return out, ds, lines


def test_store_has_named_dimensions_and_settings(swept):
    _, ds, lines = swept
    assert dict(ds.sizes) == {
        "activation": 2,
        "dataset": 2,
        "member": 3,
        "layer": 3,
        "quantile": 7,
        "bin": Bins().count,
    }
    assert list(ds["layer"].values) == [1, 2, 3]
    assert json.loads(ds.attrs["settings"])["width"] == 8
    assert "jax_version" in ds.attrs and "devices" in ds.attrs
    assert ds["done"].values.all()
    assert len(lines) == 4 and all("done" in line for line in lines)
    np.testing.assert_allclose(ds["sigma_w"].sel(activation="relu"), np.sqrt(2))
    np.testing.assert_allclose(ds["sigma_w"].sel(activation="tanh"), 1.0)


def test_measurements_are_filled_where_they_apply(swept):
    _, ds, _ = swept
    for name in ("q", "correlation", "log10_jacobian_norm", "retention_first"):
        assert np.isfinite(ds[name].values).all(), name
    assert np.isnan(ds["retention_target"].sel(dataset="digits")).all()
    assert np.isfinite(ds["retention_target"].sel(dataset="sphere")).all()
    median = ds["delta_in_quantiles"].sel(quantile=0.5)
    assert np.isfinite(median).all()
    # Layer 1: the two distances coincide (J^1 = W^1).
    np.testing.assert_allclose(
        ds["delta_in_quantiles"].sel(layer=1), ds["delta_rep_quantiles"].sel(layer=1)
    )
    counted = ds["delta_in_finite"] + ds["delta_in_n_zero"] + ds["delta_in_n_inf"]
    np.testing.assert_array_equal(counted, 3 * 2 * 8)
    np.testing.assert_array_equal(
        ds["delta_in_histogram"].sum("bin"), ds["delta_in_finite"]
    )


def test_resume_skips_done_cells_and_recomputes_missing_ones(swept):
    out, ds, _ = swept
    store = out / "results.zarr"
    # Lose one cell: its done mark and its values.
    lost = xr.Dataset(
        {
            "done": (("activation", "dataset"), np.array([[False]])),
            "q": (
                ("activation", "dataset", "member", "layer"),
                np.full((1, 1, 3, 3), np.nan),
            ),
        }
    )
    lost.to_zarr(
        store,
        region={"activation": slice(1, 2), "dataset": slice(0, 1)},
        consolidated=False,
    )
    lines = []
    resumed = run_sweep(SweepConfig(**TINY), out, log=lines.append).load()
    assert sum("skipped" in line for line in lines) == 3
    assert sum("done (" in line for line in lines) == 1
    xr.testing.assert_identical(resumed, ds)


def test_other_settings_are_refused(swept):
    out, _, _ = swept
    with pytest.raises(ValueError, match="different settings"):
        run_sweep(SweepConfig(**{**TINY, "width": 9}), out)


def test_figure_and_table(swept, tmp_path):
    _, ds, _ = swept
    path = figures.plot_sweep(ds, tmp_path / "fig.png")
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = figures.summary_table(ds)
    lines = table.splitlines()
    assert len(lines) == 1 + 4
    assert "R2 target@3" in lines[0]
    assert any(line.split()[:2] == ["tanh", "sphere"] for line in lines)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(activations=("relu", "swish")), "unknown name 'swish'.*valid names"),
        (dict(datasets=("cifar",)), "datasets: unknown name 'cifar'"),
        (dict(members=0), "members: expected a positive integer"),
        (dict(width=-4), "width: expected a positive integer"),
        (dict(probe=2), "probe: expected an integer >= 4"),
        (dict(inputs=20, probe=8), "inputs: .* must not exceed probe"),
        (dict(sigma_w=float("nan")), "sigma_w: expected a positive finite"),
        (dict(sigma_b=-1.0), "sigma_b: expected a non-negative"),
        (dict(ridge=0.0), "ridge: expected a positive"),
        (dict(seed=-1), r"seed: expected an integer in 0\.\.2\*\*32 - 1"),
        (dict(seed=2**64), r"seed: expected an integer in 0\.\.2\*\*32 - 1"),
        (dict(dtype="float16"), "dtype: expected float32 or float64"),
    ],
)
def test_bad_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig(**{**TINY, **change})


def test_several_bad_settings_in_one_message():
    with pytest.raises(ValueError, match=r"members.*width"):
        SweepConfig(**{**TINY, "members": 0, "width": 0})


def test_out_that_is_a_file_is_refused_before_work(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("")
    with pytest.raises(ValueError, match="is not a folder"):
        run_sweep(SweepConfig(**TINY), path)
    with pytest.raises(ValueError, match="is a file"):
        run_sweep(SweepConfig(**TINY), path / "sub")


def test_store_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    from actgeo import sweep

    # A run killed while the empty store is written leaves only the partial
    # copy, which the next run replaces.
    stale = tmp_path / "results.zarr.partial"
    stale.mkdir()
    (stale / "junk").write_text("")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_ensemble", stop)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(SweepConfig(**TINY), tmp_path)
    assert not stale.exists()
    ds = xr.open_zarr(tmp_path / "results.zarr", consolidated=False)
    assert not ds["done"].values.any()


def test_refusal_names_the_changed_setting(swept):
    out, _, _ = swept
    with pytest.raises(ValueError, match=r"seed: stored 0, requested 5"):
        run_sweep(SweepConfig(**{**TINY, "seed": 5}), out)


def test_float64_needs_x64_and_memory_is_checked(tmp_path):
    with pytest.raises(ValueError, match="dtype: float64 needs 64-bit JAX"):
        run_sweep(SweepConfig(**{**TINY, "dtype": "float64"}), tmp_path)
    with pytest.raises(ValueError, match="members: per-member results of"):
        run_sweep(SweepConfig(**{**TINY, "members": 10**9}), tmp_path)
    assert not (tmp_path / "results.zarr").exists()
