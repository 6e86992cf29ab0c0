"""The `actgeo sweep` and `actgeo theory` commands: outputs, and errors before
any work."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from actgeo import cli

TINY = [
    "--activations", "relu", "tanh",
    "--members", "3",
    "--width", "8",
    "--depth", "3",
    "--inputs", "2",
    "--probe", "8",
    "--sphere-dim", "4",
    "--no-progress",
]  # fmt: skip


def test_sweep_writes_store_figure_and_table(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["sweep", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert (out / "results.zarr").is_dir()
    assert (out / "sweep.png").stat().st_size > 10_000
    table = (out / "summary.txt").read_text()
    assert "relu" in table and "tanh" in table
    assert table.strip() in printed
    # The same command again resumes: every cell is skipped.
    assert cli.main(["sweep", "--out", str(out), *TINY]) == 0
    assert capsys.readouterr().out.count("already done, skipped") == 4


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--activations", "relu", "swish"], "unknown name 'swish'; valid names are"),
        (["--members", "-3"], "members: expected a positive integer"),
        (["--width", "0"], "width: expected a positive integer"),
        (["--depth", "0"], "depth: expected a positive integer"),
        (["--chunk-size", "0"], "chunk-size: expected a positive integer"),
        (["--memory-budget-gib", "-1"], "memory-budget-gib: expected a positive"),
        (["--memory-budget-gib", "inf"], "memory-budget-gib: expected a positive"),
        (["--seed", "-1"], "seed: expected an integer in 0..2**32 - 1"),
        (["--seed", str(2**63)], "seed: expected an integer in 0..2**32 - 1"),
        (["--memory-budget-gib", "0.000001"], "member(s) at a time need about"),
        (["--init", "critical", "--sigma-w", "1.5"], "init: 'critical' takes"),
        (
            ["--init", "critical", "--sigma-b", "0.5"],
            "relu has none at sigma_b=0.5",
        ),
        (
            [
                "--members",
                "9999",
                "--chunk-size",
                "9999",
                "--memory-budget-gib",
                "0.001",
            ],
            "use --chunk-size <= ",
        ),
        (
            ["--distributed", "--coordinator", "nonsense", "--num-processes", "1"],
            "coordinator: expected host:port",
        ),
        (["--coordinator", "localhost:1"], "--coordinator: only with --distributed"),
    ],
)
def test_bad_options_fail_before_work(tmp_path, capsys, flags, message):
    out = tmp_path / "never"
    assert cli.main(["sweep", "--out", str(out), *TINY, *flags]) == 2
    err = capsys.readouterr().err
    assert "actgeo sweep: error:" in err
    assert message in err
    assert not out.exists()


def test_changed_settings_refuse_to_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["sweep", "--out", str(out), *TINY, "--datasets", "sphere"]) == 0
    capsys.readouterr()
    flags = [*TINY, "--datasets", "sphere", "--seed", "1"]
    assert cli.main(["sweep", "--out", str(out), *flags]) == 2
    assert "different settings" in capsys.readouterr().err


def test_interrupt_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from actgeo import sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    assert cli.main(["sweep", "--out", str(tmp_path / "run"), *TINY]) == 130
    assert "the same command resumes" in capsys.readouterr().err


def test_theory_quick_writes_numbers_and_figures(tmp_path, capsys):
    out = tmp_path / "theory"
    flags = ["--quick", "--activations", "relu", "tanh"]
    assert cli.main(["theory", "--out", str(out), *flags]) == 0
    printed = capsys.readouterr().out
    for name in ("theory.zarr", "phase_diagram_tanh.png", "edge_of_chaos.png"):
        assert (out / name).exists(), name
        assert str(out / name) in printed
    assert (out / "edge_of_chaos.png").stat().st_size > 10_000
    ds = xr.open_zarr(out / "theory.zarr", consolidated=False).load()
    assert ds["chi_1"].dims == ("sigma_b", "sigma_w")
    assert ds["chi_1"].shape == (25, 25)
    assert ds.attrs["activation"] == "tanh"
    # relu's edge of chaos is one point, sigma_w = sqrt(2) at sigma_b = 0.
    relu = ds.sel(curve="relu")
    kept = np.isfinite(relu["eoc_sigma_w"].values)
    np.testing.assert_allclose(relu["eoc_sigma_w"].values[kept], [np.sqrt(2)])
    np.testing.assert_allclose(relu["eoc_sigma_b"].values[kept], [0.0], atol=1e-12)


def test_theory_grid_follows_quick_unless_given():
    assert cli.TheoryArgs().grid_points() == 100
    assert cli.TheoryArgs(quick=True).grid_points() == 25
    assert cli.TheoryArgs(quick=True, grid=40).grid_points() == 40


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--activation", "swish"], "activation: unknown name 'swish'"),
        (["--activations", "relu", "swish"], "activations: unknown name 'swish'"),
        (["--grid", "0"], "grid: expected an integer >= 2, got 0"),
        (["--grid", "-5"], "grid: expected an integer >= 2, got -5"),
        (["--sigma-w-max", "-1"], "sigma-w-max: expected a positive finite"),
        (["--sigma-b-max", "-0.5"], "sigma-b-max: expected a positive finite"),
        (["--sigma-w-max", "nan"], "sigma-w-max: expected a positive finite"),
    ],
)
def test_theory_bad_options_fail_before_work(tmp_path, capsys, flags, message):
    out = tmp_path / "never"
    assert cli.main(["theory", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert "actgeo theory: error:" in err
    assert message in err
    assert not out.exists()
