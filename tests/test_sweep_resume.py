"""Sweeps survive being killed at any moment, and several processes share one store.

Each scenario runs the sweep in a fresh process that kills itself with
SIGKILL at a chosen moment (see ``_sweep_runner.py``), resumes it, and
compares the finished store with an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import xarray as xr
from _sweep_runner import CHUNK, TINY

from actgeo import ensemble, sweep
from actgeo.sweep import SweepConfig, run_sweep

HERE = pathlib.Path(__file__).resolve().parent
CONFIG = SweepConfig(**TINY)


def _env(**extra):
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        ACTGEO_JAX_CACHE=jax.config.jax_compilation_cache_dir,
        **extra,
    )


def _runner(out, *mode):
    return subprocess.run(
        [sys.executable, str(HERE / "_sweep_runner.py"), str(out), *map(str, mode)],
        env=_env(),
        timeout=300,
        capture_output=True,
        text=True,
    )


def _assert_same_store(out: pathlib.Path, reference: xr.Dataset):
    got = xr.open_zarr(out / "results.zarr", consolidated=False).load()
    assert set(got.data_vars) == set(reference.data_vars)
    for name in reference.data_vars:
        np.testing.assert_array_equal(
            got[name].values, reference[name].values, err_msg=name
        )
    assert got.attrs["settings"] == reference.attrs["settings"]
    assert not (out / "blocks").exists() or not any((out / "blocks").rglob("*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return run_sweep(CONFIG, out, chunk_size=CHUNK).load()


def test_store_records_settings_versions_and_devices(reference):
    assert reference.attrs["settings"] == CONFIG.to_json()
    assert "jax" in reference.attrs["versions"]
    assert reference.attrs["devices"]
    assert reference.attrs["processes"] == 1
    assert reference["done"].values.all()
    (run,) = json.loads(reference.attrs["runs"])
    assert run["processes"] == 1 and run["devices"] and run["versions"]["zarr"]


def test_killed_during_runs_and_writes_resumes_bit_identical(reference, tmp_path):
    # Killed after the fourth block (the first cell done, the second begun).
    run = _runner(tmp_path, "after-block", 4)
    assert run.returncode == -signal.SIGKILL, run.stderr
    stored = xr.open_zarr(tmp_path / "results.zarr", consolidated=False)
    assert stored["done"].values.tolist() == [[True], [False]]
    assert len(list((tmp_path / "blocks").rglob("*.npz"))) == 1
    # Killed while saving a block: its bytes written, never renamed.
    run = _runner(tmp_path, "in-block", 1)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert list((tmp_path / "blocks").rglob("*.tmp"))
    # Killed half-way through writing the finished cell into the store.
    run = _runner(tmp_path, "in-store", 5)
    assert run.returncode == -signal.SIGKILL, run.stderr
    stored = xr.open_zarr(tmp_path / "results.zarr", consolidated=False)
    assert not stored["done"].values[1, 0]
    # The same call, with another chunk size, finishes it.
    lines = []
    run_sweep(CONFIG, tmp_path, chunk_size=3, log=lines.append)
    assert lines[0].split()[:3] == ["relu", "/", "sphere"]
    assert "already done" in lines[0]
    _assert_same_store(tmp_path, reference)
    runs = json.loads(
        xr.open_zarr(tmp_path / "results.zarr", consolidated=False).attrs["runs"]
    )
    assert len(runs) == 4  # three killed runs and the one that finished


def test_two_processes_write_one_store(reference, tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    flags = [
        "--out", str(tmp_path), "--activations", "relu", "tanh", "--datasets",
        "sphere", "--members", "6", "--width", "8", "--depth", "3", "--inputs",
        "2", "--probe", "8", "--sphere-dim", "4", "--chunk-size", str(CHUNK),
        "--no-progress", "--distributed", "--coordinator", f"localhost:{port}",
        "--num-processes", "2",
    ]  # fmt: skip
    command = [sys.executable, "-c", "import sys; from actgeo.cli import main; "
               "sys.exit(main())", "sweep"]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*command, *flags, "--process-id", str(k)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # Each process finished one of the two cells.
    assert "process 0: " in outputs[0] and "relu / sphere  done" in outputs[0]
    assert "tanh / sphere  done" in outputs[1]
    _assert_same_store(tmp_path, reference)
    assert (tmp_path / "sweep.png").exists()
    (run,) = json.loads(
        xr.open_zarr(tmp_path / "results.zarr", consolidated=False).attrs["runs"]
    )
    assert run["processes"] == 2


def test_unwritable_out_and_full_disk_fail_clearly(tmp_path, monkeypatch):
    def refuse(self, data):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)
    with pytest.raises(OSError, match=r"out: cannot write to .*Read-only"):
        run_sweep(CONFIG, tmp_path / "ro", chunk_size=CHUNK)
    monkeypatch.undo()
    assert not (tmp_path / "ro" / "results.zarr").exists()

    monkeypatch.setattr(sweep.shutil, "disk_usage", _usage(free=1000))
    with pytest.raises(OSError, match=r"has 0.000954 MiB free, but the store"):
        run_sweep(CONFIG, tmp_path / "full", chunk_size=CHUNK)
    monkeypatch.undo()


def _usage(free):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    return lambda path: usage(10**9, 10**9 - free, free)


def test_disk_filling_up_mid_run_keeps_what_was_written(
    reference, tmp_path, monkeypatch
):
    save = ensemble.EnsembleResult.save
    saved = []

    def fill_up(self, path):
        if len(saved) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(path)
        save(self, path)

    monkeypatch.setattr(ensemble.EnsembleResult, "save", fill_up)
    with pytest.raises(OSError, match=r"No space left on device.*results written"):
        run_sweep(CONFIG, tmp_path, chunk_size=CHUNK)
    monkeypatch.undo()
    stored = xr.open_zarr(tmp_path / "results.zarr", consolidated=False)
    assert stored["done"].values.tolist() == [[True], [False]]
    run_sweep(CONFIG, tmp_path, chunk_size=CHUNK)
    _assert_same_store(tmp_path, reference)


def _interrupt_after_saving(monkeypatch, n: int) -> None:
    """Makes the sweep stop (Ctrl-C) once ``n`` blocks are saved."""
    save = ensemble.EnsembleResult.save
    saved = []

    def save_then_stop(self, path):
        if len(saved) == n:
            raise KeyboardInterrupt
        saved.append(path)
        save(self, path)

    monkeypatch.setattr(ensemble.EnsembleResult, "save", save_then_stop)


def test_blocks_of_a_removed_store_are_not_mixed_in(reference, tmp_path, monkeypatch):
    # Blocks of another sweep (seed 7), left when its store was deleted.
    _interrupt_after_saving(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(SweepConfig(**{**TINY, "seed": 7}), tmp_path, chunk_size=CHUNK)
    monkeypatch.undo()
    assert len(list((tmp_path / "blocks").rglob("*.npz"))) == 2
    shutil.rmtree(tmp_path / "results.zarr")
    run_sweep(CONFIG, tmp_path, chunk_size=CHUNK)
    _assert_same_store(tmp_path, reference)
    assert not (tmp_path / "blocks").exists()


def test_an_unreadable_block_is_named(tmp_path, monkeypatch):
    _interrupt_after_saving(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(CONFIG, tmp_path, chunk_size=CHUNK)
    monkeypatch.undo()
    (block,) = (tmp_path / "blocks").rglob("*.npz")
    block.write_bytes(block.read_bytes()[:100])
    with pytest.raises(RuntimeError, match=rf"{block.name}: an unreadable block"):
        run_sweep(CONFIG, tmp_path, chunk_size=CHUNK)
