"""Test configuration: a persistent compilation cache, strict promotion, slow marks."""

from __future__ import annotations

import os
import pathlib

import jax
import pytest

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax"

jax.config.update(
    "jax_compilation_cache_dir", os.environ.get("ACTGEO_JAX_CACHE", str(_CACHE))
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_addoption(parser):
    parser.addoption(
        "--runslow", action="store_true", default=False, help="run tests marked slow"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
