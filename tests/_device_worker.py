"""Runs one small ensemble on 1, 3 and 8 devices of a simulated 8-device CPU.

Started by the tests in a fresh process with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set
before JAX starts). Writes each run's result to ``<out>/<name>.npz``.
"""

from __future__ import annotations

import os
import pathlib
import sys

import jax
import numpy as np

import actgeo
from actgeo.ensemble import run_ensemble

SPEC = actgeo.NetworkSpec(input_dim=4, width=8, depth=3, activation="tanh")
X = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
PROBE = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
TARGET = np.linalg.norm(PROBE, axis=1) - 2.0
RUNS = {"one_device": (1, 4), "three_devices": (3, 2), "eight_devices": (8, 1)}


def main(out: pathlib.Path) -> None:
    jax.config.update("jax_compilation_cache_dir", os.environ["ACTGEO_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    assert len(jax.local_devices()) == 8, jax.local_devices()
    for name, (devices, chunk) in RUNS.items():
        result = run_ensemble(
            SPEC,
            X,
            members=10,
            key=jax.random.key(7),
            probe_x=PROBE,
            probe_target=TARGET,
            chunk_size=chunk,
            devices=devices,
        )
        result.save(out / f"{name}.npz")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
