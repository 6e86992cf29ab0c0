"""The precision benchmark rounds the operands of every matmul, and only those."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

_SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def _load():
    spec = importlib.util.spec_from_file_location(
        "bench_precision", _SCRIPT / "bench_precision.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_precision"] = module
    spec.loader.exec_module(module)
    return module


def _reference_round(x: np.ndarray, bits: int) -> np.ndarray:
    # Round to nearest, ties to even, through float64 arithmetic.
    mantissa, exponent = np.frexp(x.astype(np.float64))
    scaled = mantissa * 2.0 ** (bits + 1)
    return np.ldexp(np.round(scaled) / 2.0 ** (bits + 1), exponent).astype(np.float32)


def test_rounding_matches_a_float64_reference():
    bench = _load()
    x = np.random.default_rng(0).normal(size=1000).astype(np.float32) * 1e3
    for bits in (7, 10):
        np.testing.assert_array_equal(
            np.asarray(bench.round_mantissa(jnp.asarray(x), bits)),
            _reference_round(x, bits),
        )


def test_emulation_reaches_matmuls_inside_scan_and_jit():
    bench = _load()
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 4, 4)).astype(np.float32)
    x = rng.normal(size=(4,)).astype(np.float32)

    @jax.jit
    def net(w, x):
        def layer(h, wl):
            h = jnp.tanh(wl @ h) + 0.5 * h  # only the matmul is rounded
            return h, h

        return jax.lax.scan(layer, x, w)[1]

    got = bench.emulate_matmuls(net, 10)(w, x)
    h, expected = x, []
    for wl in w:
        rounded = np.asarray(bench.round_mantissa(jnp.asarray(wl), 10)) @ np.asarray(
            bench.round_mantissa(jnp.asarray(h), 10)
        )
        h = np.tanh(rounded) + 0.5 * h
        expected.append(h)
    np.testing.assert_allclose(np.asarray(got), np.stack(expected), rtol=1e-6)
    assert not np.allclose(np.asarray(got), np.asarray(net(w, x)), rtol=1e-7, atol=0)
