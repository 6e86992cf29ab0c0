"""Sweeps: the results store, resuming, refusing other settings, the figure.

Also the theory beside the measurements (``theory_*``) and critical init.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from actgeo import data as data_lib
from actgeo import figures, theory
from actgeo.kernels import Bins
from actgeo.networks import NetworkSpec
from actgeo.sweep import THEORY, SweepConfig, predict_cell, run_sweep

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
    # Every run adds itself to the store's list of runs; the rest is unchanged.
    assert len(json.loads(resumed.attrs.pop("runs"))) == 2
    xr.testing.assert_identical(
        resumed,
        ds.drop_attrs(deep=False).assign_attrs(
            {k: v for k, v in ds.attrs.items() if k != "runs"}
        ),
    )


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


def _dashed_lines(fig) -> int:
    return sum(line.get_linestyle() == "--" for ax in fig.axes for line in ax.lines)


def test_theory_is_stored_beside_the_measurements(swept):
    _, ds, _ = swept
    for name in THEORY:
        values = ds[f"theory_{name}"]
        assert values.dims == ("activation", "dataset", "layer"), name
        assert np.isfinite(values).all(), name
        assert "infinite-width" in values.attrs["description"], name
    # Layer 1 needs no recursion: q^1 = sigma_w^2 |x|^2 / D + sigma_b^2,
    # averaged over the probe inputs, the ones q is measured on.
    probe = data_lib.load("digits", TINY["probe"], seed=0).x.astype(float)
    q_in = np.mean(np.sum(probe**2, axis=1) / probe.shape[1])
    predicted = ds["theory_q"].sel(dataset="digits", layer=1)
    np.testing.assert_allclose(
        predicted, ds["sigma_w"].sel(dataset="digits") ** 2 * q_in, rtol=1e-5
    )


def test_figure_draws_the_theory_dashed_in_each_curves_colour(swept):
    import matplotlib.pyplot as plt

    _, ds, _ = swept
    fig = figures.sweep_figure(ds)
    # Two activations x two data sets x (delta_in, delta_rep, q, correlation).
    assert _dashed_lines(fig) == 2 * 2 * 4
    for ax in fig.axes:
        solid = {l.get_color() for l in ax.lines if l.get_linestyle() == "-"}
        dashed = {l.get_color() for l in ax.lines if l.get_linestyle() == "--"}
        assert dashed <= solid
    plt.close(fig)
    # A store without predictions (outside the theory's scope, or written
    # before the theory) draws none, and its table shows none.
    names = [f"theory_{name}" for name in THEORY]
    for without in (ds.drop_vars(names), ds.assign({n: ds[n] * np.nan for n in names})):
        fig = figures.sweep_figure(without)
        assert _dashed_lines(fig) == 0
        plt.close(fig)
        # Columns: names, sigma_w, in/rep at layers 1 and 3, then the theory's.
        for row in figures.summary_table(without).splitlines()[1:]:
            assert row.split()[7:9] == ["-", "-"]
    header, *rows = figures.summary_table(ds).splitlines()
    assert "theory in@3  theory rep@3" in header
    for row in rows:
        assert all(np.isfinite(float(v)) for v in row.split()[7:9])


def test_residual_networks_are_outside_the_theory(swept):
    spec = NetworkSpec(input_dim=4, width=8, depth=3, activation="tanh", residual=0.5)
    x = np.ones((2, 4))
    predicted = predict_cell(spec, x, x)
    assert sorted(predicted) == sorted(f"theory_{name}" for name in THEORY)
    assert all(np.isnan(v).all() and v.shape == (3,) for v in predicted.values())


def test_critical_init_puts_each_activation_on_its_edge_of_chaos():
    config = SweepConfig(**{**TINY, "init": "critical"})
    tanh = config.spec("tanh", "digits")
    relu = config.spec("relu", "sphere")
    assert tanh.sigma_w == pytest.approx(1.0, rel=1e-5)
    assert relu.sigma_w == pytest.approx(np.sqrt(2), rel=1e-6)
    assert tanh.init == relu.init == "gaussian"
    # The settings say "critical"; the customary init would differ.
    assert json.loads(config.to_json())["init"] == "critical"


def test_critical_sweep_stores_the_critical_sigma_w(tmp_path):
    config = SweepConfig(
        **{**TINY, "activations": ("tanh", "erf"), "datasets": ("sphere",)},
        init="critical",
        sigma_b=0.3,
    )
    ds = run_sweep(config, tmp_path).load()
    for name in ("tanh", "erf"):
        expected = theory.critical_sigma_w(name, 0.3)
        np.testing.assert_allclose(ds["sigma_w"].sel(activation=name), expected)
    assert np.isfinite(ds["theory_q"]).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(sigma_w=1.5), r"init: 'critical' .* sigma_w=1\.5 cannot be given"),
        (dict(sigma_b=0.5), r"relu has none at sigma_b=0\.5"),
    ],
)
def test_critical_init_refuses_before_work(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig(**{**TINY, "init": "critical", **change})


def test_store_without_theory_is_refused(swept, tmp_path):
    import shutil

    out, _, _ = swept
    shutil.copytree(out / "results.zarr", tmp_path / "results.zarr")
    shutil.rmtree(tmp_path / "results.zarr" / "theory_q")
    with pytest.raises(ValueError, match=r"lacks theory_q .*--overwrite"):
        run_sweep(SweepConfig(**TINY), tmp_path)


def test_done_cells_with_another_sigma_w_are_refused(swept, tmp_path):
    import shutil

    # As when the theory moves a critical sigma_w between two runs.
    out, _, _ = swept
    shutil.copytree(out / "results.zarr", tmp_path / "results.zarr")
    moved = xr.Dataset({"sigma_w": (("activation", "dataset"), np.array([[1.1]]))})
    moved.to_zarr(
        tmp_path / "results.zarr",
        region={"activation": slice(1, 2), "dataset": slice(0, 1)},
        consolidated=False,
    )
    with pytest.raises(ValueError, match=r"tanh/digits stored sigma_w=1\.1, now 1"):
        run_sweep(SweepConfig(**TINY), tmp_path)
