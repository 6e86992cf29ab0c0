"""Matmul precision of the kernels: full float32 by default, a fast mode by choice.

On GPUs and TPUs, XLA runs a float32 matmul at its ``DEFAULT`` precision
unless told otherwise: TF32 (10-bit mantissa) on recent NVIDIA GPUs, one
bfloat16 pass on TPUs. Boundary distances are ratios of small differences,
and their lower tail moves by much more than the rounding of one product
(``benchmarks/bench_precision.py`` measured emulated TF32 moving the 1%
quantile of log10 distance by up to 0.016, against 0.0001 between float32
and float64). So every kernel in :mod:`actgeo.kernels`, and
the ensemble runner, trace their matmuls at ``HIGHEST`` precision unless the
caller chose a precision with :func:`jax.default_matmul_precision` (or the
``jax_default_matmul_precision`` option); :func:`fast_matmuls` is that
choice made explicit. CPUs compute float32 matmuls in full precision either
way.

The precision is read when a function is traced, and JAX keys its compiled
programs on it, so switching modes retraces rather than reusing a program
compiled for the other mode.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import jax

__all__ = ["FAST", "FULL", "current", "fast_matmuls", "full_precision"]

# The precision kernels use when the caller has not chosen one.
FULL = "highest"
# The opt-in fast mode: the device's default (TF32 on NVIDIA GPUs since
# Ampere, bfloat16 passes on TPUs; no change on CPUs).
FAST = "default"

_P = ParamSpec("_P")
_R = TypeVar("_R")


def current() -> str:
    """The matmul precision kernels traced now would use."""
    chosen = jax.config.jax_default_matmul_precision
    return FULL if chosen is None else str(chosen)


@contextlib.contextmanager
def fast_matmuls() -> Iterator[None]:
    """Runs kernels traced inside at the device's fast matmul precision.

    Faster on accelerators, less accurate; ``benchmarks/bench_precision.py``
    measures what it does to the statistics against the default.
    """
    with jax.default_matmul_precision(FAST):
        yield


def full_precision(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Traces ``fn`` at :data:`FULL` precision unless the caller chose one."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if jax.config.jax_default_matmul_precision is not None:
            return fn(*args, **kwargs)
        with jax.default_matmul_precision(FULL):
            return fn(*args, **kwargs)

    return wrapper
