"""The `actgeo sweep` command: outputs, and errors before any work."""

from __future__ import annotations

import pytest

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
        (["--memory-budget-gib", "0.000001"], "one member needs about"),
        (["--init", "critical", "--sigma-w", "1.5"], "init: 'critical' takes"),
        (
            ["--init", "critical", "--sigma-b", "0.5"],
            "relu has none at sigma_b=0.5",
        ),
        (
            ["--chunk-size", "10", "--memory-budget-gib", "0.001"],
            "use chunk_size <= 1 or raise",
        ),
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
