"""Runs a tiny sweep in a fresh process, optionally killing itself part-way.

Usage: ``python _sweep_runner.py OUT [MODE N]``. MODE is one of

* ``after-block``: SIGKILL right after the N-th block of members is saved;
* ``in-block``: SIGKILL while the N-th block is being saved, after its bytes
  are written and before it is renamed into place;
* ``in-store``: SIGKILL in the middle of writing a finished cell into the zarr
  store, at the N-th chunk file written after the first block was saved.

The kill is the real signal, so nothing in the process gets to clean up.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys

import jax
from zarr.storage import _local

from actgeo import ensemble, sweep

TINY = dict(
    activations=("relu", "tanh"),
    datasets=("sphere",),
    members=6,
    width=8,
    depth=3,
    inputs=2,
    probe=8,
    sphere_dim=4,
)
CHUNK = 2


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(mode: str, n: int) -> None:
    saves = []
    save = ensemble.EnsembleResult.save
    put = _local._put
    replace = os.replace

    def counted_save(self, path):
        saves.append(path)
        if mode == "in-block" and len(saves) == n:
            # The bytes reach the temporary file; the rename never happens.
            os.replace = lambda *a, **k: _die()
        save(self, path)
        os.replace = replace
        if mode == "after-block" and len(saves) == n:
            _die()

    writes = []

    def counted_put(path, value, exclusive=False):
        if saves:
            writes.append(path)
            if len(writes) == n:
                _die()
        return put(path, value, exclusive=exclusive)

    ensemble.EnsembleResult.save = counted_save
    if mode == "in-store":
        _local._put = counted_put


def main(argv: list[str]) -> None:
    jax.config.update("jax_compilation_cache_dir", os.environ["ACTGEO_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    out = pathlib.Path(argv[0])
    if len(argv) > 1:
        _arm(argv[1], int(argv[2]))
    sweep.run_sweep(sweep.SweepConfig(**TINY), out, chunk_size=CHUNK)


if __name__ == "__main__":
    main(sys.argv[1:])
