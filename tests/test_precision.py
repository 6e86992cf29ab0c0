"""Kernels trace float32 matmuls at full precision unless the caller chose otherwise."""

from __future__ import annotations

import re

import jax
import numpy as np

import actgeo
from actgeo import ensemble
from actgeo.precision import current, fast_matmuls, full_precision

SPEC = actgeo.NetworkSpec(input_dim=3, width=4, depth=2, activation="tanh")


def _dot_precisions(text: str) -> set[str]:
    lines = [line for line in text.splitlines() if "dot_general" in line]
    assert lines, "no matmul in the program"
    return {
        m.group(1) if (m := re.search(r"precision = \[(\w+)", line)) else "DEFAULT"
        for line in lines
    }


def _chunk_text() -> str:
    x = np.ones((2, 3), np.float32)
    with jax.threefry_partitionable(True):
        lowered = ensemble._chunk.lower(
            jax.random.key(0),
            np.arange(2, dtype=np.uint32),
            np.ones(2, bool),
            np.float32(1.0),
            np.float32(0.0),
            np.float32(1.0),
            x,
            None,
            None,
            np.int32(0),
            shape=(3, 4, 2, 0),
            init="gaussian",
            activation="tanh",
            config=actgeo.kernels.StatsConfig(),
            dtype=np.dtype(np.float32),
            residual=False,
            micro_batch=1,
            choices=None,
        )
    return lowered.as_text()


def test_ensemble_chunk_is_full_precision_by_default():
    assert _dot_precisions(_chunk_text()) == {"HIGHEST"}


def test_fast_mode_and_explicit_choices_are_respected():
    with fast_matmuls():
        assert current() == "default"
        assert _dot_precisions(_chunk_text()) == {"DEFAULT"}
    with jax.default_matmul_precision("bfloat16"):
        assert current() == "bfloat16"
    assert current() == "highest"


def test_full_precision_wraps_any_function_and_keeps_its_name():
    @jax.jit
    @full_precision
    def product(a, b):
        """Docs stay."""
        return a @ b

    a = np.ones((2, 2), np.float32)
    assert _dot_precisions(product.lower(a, a).as_text()) == {"HIGHEST"}
    with fast_matmuls():
        assert _dot_precisions(product.lower(a, a).as_text()) == {"DEFAULT"}
    assert product.__wrapped__.__name__ == "product"


def test_every_measuring_kernel_is_full_precision_by_default():
    from actgeo import kernels

    spec = actgeo.NetworkSpec(input_dim=2, width=4, depth=2, activation="relu")
    one = jax.tree.map(lambda a: a[0], actgeo.sample(spec, 1, key=jax.random.key(0)))
    x = np.array([[1.0, 0.5], [-0.5, 2.0]], np.float32)
    calls = {
        "neuron_distances": lambda: kernels.neuron_distances(one, x, "relu"),
        "log_singular_values": lambda: kernels.log_singular_values(one, x, "relu"),
        "trajectory": lambda: kernels.trajectory(
            one, kernels.line(x[0], x[1], 4), "relu"
        ),
        "ridge_r2": lambda: kernels.ridge_r2(x, x[:, 0], 1, 0.1),
        "preactivations": lambda: kernels.preactivations(one, x, "relu"),
        "jacobians": lambda: kernels.jacobians(one, x, "relu"),
        "layer_statistics": lambda: kernels.layer_statistics(one, x, "relu"),
    }
    for name, call in calls.items():
        text = jax.jit(call).lower().as_text()
        assert _dot_precisions(text) == {"HIGHEST"}, name
