"""The member axis split over several devices gives the single-device numbers."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from _device_worker import PROBE, SPEC, TARGET, X

from actgeo import ensemble
from actgeo.ensemble import EnsembleResult, run_ensemble
from actgeo.kernels import StatsConfig

HERE = pathlib.Path(__file__).resolve().parent


def _assert_identical(a: EnsembleResult, b: EnsembleResult):
    np.testing.assert_array_equal(a.members, b.members)
    assert a.scalars.keys() == b.scalars.keys()
    for name, value in a.scalars.items():
        np.testing.assert_array_equal(value, b.scalars[name], err_msg=name)
    assert a.distances.keys() == b.distances.keys()
    for name, summary in a.distances.items():
        for field, value in summary._asdict().items():
            other = getattr(b.distances[name], field)
            np.testing.assert_array_equal(value, other, err_msg=f"{name}.{field}")


def _run(**kwargs):
    return run_ensemble(
        SPEC,
        X,
        key=jax.random.key(7),
        probe_x=PROBE,
        probe_target=TARGET,
        **{"members": 10, **kwargs},
    )


@pytest.fixture(scope="module")
def reference():
    return _run(chunk_size=10)


def test_eight_simulated_devices_equal_one(reference, tmp_path):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        ACTGEO_JAX_CACHE=jax.config.jax_compilation_cache_dir,
    )
    subprocess.run(
        [sys.executable, str(HERE / "_device_worker.py"), str(tmp_path)],
        cwd=HERE.parent,
        env=env,
        check=True,
        timeout=300,
    )
    runs = {
        path.stem: EnsembleResult.load(path, StatsConfig())
        for path in tmp_path.iterdir()
    }
    assert sorted(runs) == ["eight_devices", "one_device", "three_devices"]
    for result in runs.values():
        _assert_identical(result, reference)


def test_disjoint_parts_concatenate_to_the_whole(reference, tmp_path):
    parts = [_run(members=np.array(ids)) for ids in ([7, 8, 9, 0], [3, 1, 2, 4, 5, 6])]
    whole = EnsembleResult.concatenate(parts)
    order = np.argsort(whole.members)
    for name in whole.scalars:
        np.testing.assert_array_equal(
            whole.scalars[name][order], reference.scalars[name], err_msg=name
        )
    for name, summary in whole.distances.items():
        for field, value in summary._asdict().items():
            np.testing.assert_array_equal(
                value, getattr(reference.distances[name], field), err_msg=name
            )
    parts[0].save(tmp_path / "part.npz")
    _assert_identical(
        EnsembleResult.load(tmp_path / "part.npz", StatsConfig()), parts[0]
    )


def test_concatenate_refuses_repeated_members(reference):
    with pytest.raises(ValueError, match="member indices repeat"):
        EnsembleResult.concatenate([reference, reference])


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        (0, r"devices: expected a count in 1\.\.1"),
        (2, "devices: expected a count"),
        ([], "devices: expected a non-empty"),
    ],
)
def test_bad_device_requests_are_named(devices, message):
    with pytest.raises(ValueError, match=message):
        ensemble.member_mesh(devices)


def test_importing_actgeo_leaves_the_backend_for_jax_distributed():
    # jax.distributed.initialize must run before JAX starts its backends, so
    # importing the library (and building its default settings) must not.
    code = (
        "import actgeo, actgeo.sweep, actgeo.cli\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge.backends_are_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
