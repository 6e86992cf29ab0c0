"""The ensemble runner: chunking, ordering, memory planning and validation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import actgeo
from actgeo import ensemble
from actgeo.ensemble import run_ensemble

SPEC = actgeo.NetworkSpec(input_dim=4, width=8, depth=3, activation="tanh")
E = 10
X = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
PROBE = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
TARGET = np.linalg.norm(PROBE, axis=1) - 2.0


def _run(**kwargs):
    options = dict(members=E, key=jax.random.key(7), probe_x=PROBE, probe_target=TARGET)
    options.update(kwargs)
    return run_ensemble(SPEC, X, **options)


def _assert_identical(a, b, rows=None):
    assert a.scalars.keys() == b.scalars.keys()
    for name, value in a.scalars.items():
        other = b.scalars[name] if rows is None else b.scalars[name][rows]
        np.testing.assert_array_equal(value, other, err_msg=name)
    assert a.distances.keys() == b.distances.keys()
    for name, summary in a.distances.items():
        for field, value in summary._asdict().items():
            other = getattr(b.distances[name], field)
            np.testing.assert_array_equal(value, other, err_msg=f"{name}.{field}")


@pytest.fixture(scope="module")
def reference():
    return _run(chunk_size=E)


@pytest.mark.parametrize("chunk_size", [1, 7])
def test_chunk_size_does_not_change_results(reference, chunk_size):
    _assert_identical(_run(chunk_size=chunk_size), reference)


def test_member_order_does_not_change_results(reference):
    order = np.random.default_rng(3).permutation(E)
    permuted = _run(members=order, chunk_size=7)
    np.testing.assert_array_equal(permuted.members, order)
    # Rows follow the given order; pooled statistics are the same.
    for name, value in permuted.scalars.items():
        np.testing.assert_array_equal(value, reference.scalars[name][order])
    for name, summary in permuted.distances.items():
        for field, value in summary._asdict().items():
            np.testing.assert_array_equal(
                value, getattr(reference.distances[name], field)
            )


def test_members_are_distinct_and_counted(reference):
    q = reference.scalars["q"]
    assert q.shape == (E, SPEC.depth)
    assert len({row.tobytes() for row in q}) == E
    counts = reference.distances["delta_in"].counts
    total = counts.sum(-1) + reference.distances["delta_in"].n_inf
    total = total + reference.distances["delta_in"].n_zero
    np.testing.assert_array_equal(total, E * X.shape[0] * SPEC.width)
    np.testing.assert_array_equal(
        reference.distances["region"].counts.sum(-1), E * X.shape[0]
    )


def test_shared_compilation_gives_the_same_numbers(reference):
    shared = _run(chunk_size=E, compile_for=("relu", "tanh"))
    _assert_identical(shared, reference)


def test_sigma_values_are_traced_not_static(reference):
    before = ensemble._chunk._cache_size()
    other = actgeo.NetworkSpec(
        input_dim=4, width=8, depth=3, activation="tanh", sigma_w=1.7, sigma_b=0.1
    )
    result = run_ensemble(
        other,
        X,
        members=E,
        key=jax.random.key(7),
        probe_x=PROBE,
        probe_target=TARGET,
        chunk_size=E,
    )
    assert ensemble._chunk._cache_size() == before
    assert not np.array_equal(result.scalars["q"], reference.scalars["q"])


def test_progress_moves_once_per_finished_chunk(monkeypatch):
    updates = []

    class Recorder:
        def __init__(self, total, **kwargs):
            self.total = total

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            updates.append(n)

    monkeypatch.setattr(ensemble, "tqdm", Recorder)
    _run(chunk_size=7, progress=True)
    assert updates == [7, 3]


def _cost(chunk, micro_batch=1):
    return ensemble.estimate_chunk_bytes(
        SPEC, 3, 8, chunk=chunk, micro_batch=micro_batch
    )


def test_chunk_size_defaults_to_the_budget():
    # One member at a time: each further member adds only its output rows.
    plan = ensemble.plan_chunks(SPEC, 3, 8, 1000, memory_budget=_cost(5) + 1)
    assert plan == (5, 1, _cost(5), _cost(5) + 1)
    plan = ensemble.plan_chunks(
        SPEC, 3, 8, 1000, micro_batch=2, memory_budget=_cost(7, 2)
    )
    assert (plan.chunk, plan.micro_batch) == (6, 2)  # a multiple of the micro batch
    assert ensemble.plan_chunks(SPEC, 3, 8, 4, memory_budget=2**30).chunk == 4


def test_budget_below_one_member_fails_before_work(monkeypatch):
    calls = []
    monkeypatch.setattr(ensemble, "_chunk", lambda *a, **k: calls.append(1))
    with pytest.raises(MemoryError, match=r"1 member\(s\) at a time need about"):
        _run(memory_budget=1000)
    with pytest.raises(MemoryError, match=r"use chunk_size <= 2"):
        _run(chunk_size=5, memory_budget=_cost(2) + 10)
    assert calls == []


@pytest.mark.parametrize(("depth", "micro_batch"), [(2, 1), (12, 1), (12, 4)])
def test_memory_estimate_bounds_what_xla_allocates(depth, micro_batch):
    """The estimate is never below XLA's count of a chunk, nor three times above."""
    spec = actgeo.NetworkSpec(input_dim=4, width=32, depth=depth, activation="tanh")
    chunk, n_probe = 8, 16
    x = np.ones((3, 4), np.float32)
    probe = np.random.default_rng(2).normal(size=(n_probe, 4)).astype(np.float32)
    with jax.threefry_partitionable(True):
        compiled = ensemble._chunk.lower(
            jax.random.key(0),
            np.arange(chunk, dtype=np.uint32),
            np.ones(chunk, bool),
            np.float32(1.0),
            np.float32(0.0),
            np.float32(1.0),
            x,
            probe,
            np.ones(n_probe, np.float32),
            np.int32(0),
            shape=(4, 32, depth, 0),
            init="gaussian",
            activation="tanh",
            config=ensemble.StatsConfig(),
            dtype=np.dtype(np.float32),
            residual=False,
            micro_batch=micro_batch,
            choices=None,
        ).compile()
    memory = compiled.memory_analysis()
    xla = (
        memory.temp_size_in_bytes
        + memory.output_size_in_bytes
        + memory.argument_size_in_bytes
    )
    estimate = ensemble.estimate_chunk_bytes(
        spec, 3, n_probe, chunk=chunk, micro_batch=micro_batch
    )
    assert xla <= estimate <= 3 * xla, (estimate, xla)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(members=0), r"members: expected a count in 1\.\.2\*\*32"),
        (dict(members=np.array([1, 1])), "members: indices must be distinct"),
        (dict(members=np.array([0, 2**32])), r"lie in 0\.\.2\*\*32 - 1"),
        (dict(memory_budget=float("inf")), "memory_budget: expected a finite"),
        (dict(memory_budget=float("nan")), "memory_budget: expected a finite"),
        (dict(chunk_size=2.5), "chunk_size: expected a positive integer"),
        (dict(dtype=np.int32), "dtype: expected a floating dtype"),
        (dict(dtype=np.float64), "dtype: float64 needs 64-bit JAX"),
        (dict(probe_target=np.zeros(3)), "probe_target: expected shape"),
        (dict(probe_x=np.full((8, 4), np.nan)), "probe_x: contains non-finite"),
        (dict(chunk_size=0), "chunk_size: expected a positive integer"),
        (dict(micro_batch=0), "micro_batch: expected a positive integer"),
        (dict(compile_for=("relu",)), "compile_for: .* does not include"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _run(**kwargs)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 4\)"):
        run_ensemble(SPEC, np.zeros((3, 5)), members=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="x: contains non-finite"):
        run_ensemble(SPEC, np.full((3, 4), np.inf), members=2, key=jax.random.key(0))


def test_key_and_result_names_are_checked(reference):
    with pytest.raises(TypeError, match="key: expected a typed key"):
        _run(key=0)
    with pytest.raises(KeyError, match=r"no pooled distance 'delta'.*delta_in"):
        reference.quantiles("delta", [0.5])
