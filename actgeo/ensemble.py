"""Runs a kernel over an ensemble of random networks, chunk by chunk.

Members are drawn inside the compiled chunk function from ``(key, i)``
(:func:`actgeo.networks.sample`), measured with
:func:`actgeo.kernels.layer_statistics` under ``vmap``, and reduced on the
device: histogram counts are summed over the chunk's members, and the
per-member scalars come back as ``(E, L)`` arrays. The host waits only at
chunk boundaries. Every chunk has the same shape (the last one is padded with
masked members), so a run compiles once.

Results do not depend on the chunk size or on the order in which members are
given: member ``i`` depends only on ``(key, i)``, counts are integers, and
floating-point totals are summed on the host in increasing member index.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from actgeo.activations import switched
from actgeo.kernels import histogram
from actgeo.kernels.histogram import LogSummary
from actgeo.kernels.statistics import LayerStats, StatsConfig, layer_statistics
from actgeo.networks import NetworkSpec, _sample_members

__all__ = [
    "EnsembleResult",
    "default_memory_budget",
    "estimate_member_bytes",
    "run_ensemble",
]

# Per-member scalar statistics, each (E, L) on the host.
SCALARS = (
    "q",
    "correlation",
    "log10_jacobian_norm",
    "saturated",
    "retention_first",
    "retention_target",
)
# Distance statistics, pooled over members, inputs and neurons.
DISTANCES = ("delta_in", "delta_rep", "region")
_CPU_CHUNK_CAP = 64
# Member indices are folded into the key as uint32.
MAX_MEMBERS = 2**32


@dataclasses.dataclass(frozen=True)
class EnsembleResult:
    """Statistics of an ensemble, per layer.

    Attributes:
      members: ``(E,)`` member indices, in the order given.
      scalars: name -> ``(E, L)`` per-member values (rows follow ``members``);
        retention entries are absent when no probe (or target) was given.
      distances: name -> pooled :class:`LogSummary` over members, inputs and
        neurons, with NumPy arrays (``counts (L, bins)`` int64, others ``(L,)``).
      config: the statistics' settings (bins, probe penalty).
    """

    members: np.ndarray
    scalars: dict[str, np.ndarray]
    distances: dict[str, LogSummary]
    config: StatsConfig

    def _summary(self, name: str) -> LogSummary:
        if name not in self.distances:
            raise KeyError(
                f"name: no pooled distance {name!r}; this result has "
                f"{', '.join(self.distances)}"
            )
        return self.distances[name]

    def quantiles(self, name: str, q: Sequence[float]) -> np.ndarray:
        """``(L, Q)`` quantiles of ``log10`` of a pooled distance."""
        return histogram.quantiles(self._summary(name).counts, self.config.bins, q)

    def log10_mean(self, name: str) -> np.ndarray:
        """``(L,)`` mean of the finite ``log10`` values of a pooled distance."""
        return histogram.mean(self._summary(name))


def default_memory_budget(device: jax.Device | None = None) -> int:
    """Bytes a run may use: half the device's free memory, or 2 GiB on a CPU."""
    device = device or jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:
        stats = None
    if stats and "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        return int(0.5 * free)
    return 2 << 30


def estimate_member_bytes(
    spec: NetworkSpec,
    n_inputs: int,
    n_probe: int,
    config: StatsConfig = StatsConfig(),
    dtype=jnp.float32,
) -> int:
    """Estimated peak device memory one member adds to a chunk, in bytes.

    Counts the member's parameters (twice: drawn and in use), the carried
    activations and Jacobian columns with their temporaries, the probe's
    Gram matrices, and the per-layer outputs that ``lax.scan`` stacks.
    """
    f = jnp.dtype(dtype).itemsize
    d, n, l = spec.input_dim, spec.width, spec.depth
    params = 2 * f * spec.param_count()
    if spec.init == "orthogonal":
        params += 3 * f * n * n
    propagation = 5 * f * n_inputs * n * (1 + d)
    probe = 5 * f * n_probe * n + 4 * f * n_probe * n_probe
    per_layer = 3 * (4 * config.bins.count + 5 * 8) + 6 * f
    outputs = 2 * l * per_layer
    return int(params + propagation + probe + outputs)


def _reduce(stats: LayerStats, mask: jax.Array):
    """Per-member values and the counts summed over valid members.

    ``stats`` has a leading member axis; histogram counts are left out (they
    are pooled in the chunk's buffer).
    """

    def pool(summary: LogSummary | None):
        if summary is None:
            return None
        return tuple(
            jnp.sum(a * mask.reshape((-1,) + (1,) * (a.ndim - 1)), axis=0)
            for a in (summary.n_zero, summary.n_inf, summary.n_nan, summary.n_clipped)
        )

    scalars = {name: getattr(stats, name) for name in SCALARS}
    pooled = {name: pool(getattr(stats, name)) for name in DISTANCES}
    log_sums = {
        name: getattr(stats, name).log_sum
        for name in DISTANCES
        if getattr(stats, name) is not None
    }
    return scalars, pooled, log_sums


def _stacked_counts(stats: LayerStats):
    return jnp.stack([getattr(stats, name).counts for name in DISTANCES], axis=-3)


@functools.partial(
    jax.jit,
    static_argnames=(
        "shape",
        "init",
        "activation",
        "config",
        "dtype",
        "residual",
        "micro_batch",
        "choices",
    ),
)
def _chunk(
    key,
    members,
    mask,
    sigma_w,
    sigma_b,
    alpha,
    x,
    probe_x,
    probe_target,
    choice,
    *,
    shape,
    init,
    activation,
    config,
    dtype,
    residual,
    micro_batch,
    choices,
):
    if choices:
        activation = switched(choices, choice)
    measure = functools.partial(
        layer_statistics,
        activation=activation,
        probe_x=probe_x,
        probe_target=probe_target,
        residual=alpha if residual else None,
        config=config,
    )

    def micro(counts, ids, valid):
        params = _sample_members(
            key, ids, sigma_w, sigma_b, shape=shape, init=init, dtype=dtype
        )
        if micro_batch == 1:
            # One member at a time adds straight into the chunk's histogram
            # buffer: no per-member histogram is ever made.
            one = jax.tree.map(lambda a: a[0], params)
            stats = measure(one, x, counts=counts, counts_weight=valid[0])
            counts = _stacked_counts(stats)
            stats = jax.tree.map(lambda a: a[None], stats)
        else:
            stats = jax.vmap(lambda p: measure(p, x))(params)
            member_counts = _stacked_counts(stats) * valid[:, None, None, None]
            counts = counts + jnp.sum(member_counts, axis=0)
        return counts, _reduce(stats, valid)

    # Members run micro_batch at a time under lax.scan: every member is
    # computed by the same compiled program whatever the chunk size, so
    # results are bit-identical across chunkings.
    ids = members.reshape(-1, micro_batch)
    valid = mask.reshape(-1, micro_batch).astype(jnp.int32)
    n_layers = shape[2]
    counts = jnp.zeros((len(DISTANCES), n_layers, config.bins.count), jnp.int32)

    def body(carry, batch):
        counts, total = carry
        counts, (scalars, pooled, log_sums) = micro(counts, *batch)
        total = jax.tree.map(jnp.add, total, pooled)
        return (counts, total), (scalars, log_sums)

    shapes = jax.eval_shape(micro, counts, ids[0], valid[0])[1][1]
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    (counts, pooled), (scalars, log_sums) = jax.lax.scan(
        body, (counts, zeros), (ids, valid)
    )
    flat = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), (scalars, log_sums))
    pooled = {
        name: None if value is None else (counts[k], *value)
        for k, (name, value) in enumerate(pooled.items())
    }
    return flat[0], pooled, flat[1]


def _is_count(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _as_members(members) -> np.ndarray:
    if _is_count(members):
        if not 1 <= members <= MAX_MEMBERS:
            raise ValueError(f"members: expected a count in 1..2**32, got {members}")
        return np.arange(members, dtype=np.int64)
    arr = np.asarray(members)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            "members: expected a positive count or a non-empty 1-D array of member "
            f"indices, got {arr!r:.80}"
        )
    if np.any(arr < 0) or np.any(arr >= MAX_MEMBERS) or np.unique(arr).size != arr.size:
        raise ValueError("members: indices must be distinct and lie in 0..2**32 - 1")
    return arr.astype(np.int64)


def _check_array(name: str, value, shape_hint: str, d: int | None, ndim: int):
    arr = np.asarray(value)
    problems = []
    if arr.ndim != ndim or (d is not None and arr.shape[-1] != d):
        problems.append(f"{name}: expected shape {shape_hint}, got {arr.shape}")
    elif arr.size and not np.all(np.isfinite(arr)):
        problems.append(f"{name}: contains non-finite values")
    return problems


def plan_chunk(
    per_member: int,
    n_members: int,
    *,
    chunk_size: int | None,
    memory_budget: int | None,
) -> int:
    """Chooses the chunk size from the budget, or checks a requested one.

    Raises:
      MemoryError: even one member, or the requested chunk, exceeds the budget;
        the message gives the estimate and a chunk size that fits.
    """
    if memory_budget is None:
        budget = default_memory_budget()
    elif not (
        isinstance(memory_budget, int | float | np.integer | np.floating)
        and math.isfinite(memory_budget)
        and memory_budget >= 1
    ):
        raise ValueError(
            f"memory_budget: expected a finite byte count >= 1, got {memory_budget!r}"
        )
    else:
        budget = int(memory_budget)
    fits = budget // per_member
    if fits < 1:
        raise MemoryError(
            f"memory_budget: one member needs about {_gib(per_member)} but the "
            f"budget is {_gib(budget)}; raise the budget or use fewer inputs or a "
            "smaller width"
        )
    if chunk_size is not None:
        if not _is_count(chunk_size) or chunk_size < 1:
            raise ValueError(
                f"chunk_size: expected a positive integer, got {chunk_size}"
            )
        if chunk_size > fits:
            raise MemoryError(
                f"chunk_size: {chunk_size} members need about "
                f"{_gib(chunk_size * per_member)}, above the budget of "
                f"{_gib(budget)}; use chunk_size <= {fits} or raise the budget"
            )
        return min(chunk_size, n_members)
    cap = _CPU_CHUNK_CAP if jax.default_backend() == "cpu" else fits
    return max(1, min(fits, cap, n_members))


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**27 else f"{n / 2**20:.3g} MiB"


def run_ensemble(
    spec: NetworkSpec,
    x,
    *,
    members: int | Sequence[int] | np.ndarray,
    key: jax.Array,
    probe_x=None,
    probe_target=None,
    config: StatsConfig = StatsConfig(),
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    dtype=jnp.float32,
    micro_batch: int | None = None,
    compile_for: Sequence[str] | None = None,
    progress: bool | str = False,
) -> EnsembleResult:
    """Measures per-layer statistics over an ensemble of random networks.

    Args:
      spec: the network family.
      x: ``(B, D)`` inputs whose boundary distances are measured.
      members: a count ``E`` (members ``0..E-1``) or member indices.
      key: typed key; member ``i`` is drawn from ``fold_in(key, i)``.
      probe_x, probe_target: probe inputs ``(P, D)`` and a known signed
        distance ``(P,)`` for the retention probes (see
        :func:`actgeo.kernels.layer_statistics`).
      config: statistics settings.
      chunk_size: members per compiled call; by default the most that fit
        ``memory_budget`` (capped at 64 on a CPU, where smaller chunks run
        faster).
      memory_budget: bytes; by default :func:`default_memory_budget`.
      dtype: float dtype of parameters and inputs.
      micro_batch: members vmapped together inside a chunk (the chunk runs
        them in sequence). Results are bit-identical for any chunk size at a
        fixed micro batch; by default 1 on a CPU and 32 on accelerators.
      compile_for: activation names to compile one shared program for (the
        spec's activation among them, chosen at run time); runs over several
        activations of the same shapes then compile once.
      progress: show a progress bar (a string sets its description); it moves
        when a chunk's results have reached the host.

    Raises:
      ValueError: a wrong shape, a non-finite input, bad member indices.
      MemoryError: the run cannot fit the budget (before any work).
    """
    member_ids = _as_members(members)
    if not (
        isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    ):
        raise TypeError("key: expected a typed key from jax.random.key(seed)")
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
        raise ValueError(f"dtype: expected a floating dtype, got {jnp.dtype(dtype)}")
    if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype: float64 needs 64-bit JAX; enable it first with "
            "jax.config.update('jax_enable_x64', True)"
        )
    d = spec.input_dim
    problems = _check_array("x", x, f"(B, {d})", d, 2)
    if probe_x is not None:
        problems += _check_array("probe_x", probe_x, f"(P, {d})", d, 2)
    if probe_target is not None:
        if probe_x is None:
            problems.append("probe_target: given without probe_x")
        else:
            n_probe = np.shape(probe_x)[0]
            problems += _check_array(
                "probe_target", probe_target, f"({n_probe},)", None, 1
            )
    if problems:
        raise ValueError("run_ensemble: " + "; ".join(problems))
    n_inputs = np.shape(x)[0]
    n_probe = 0 if probe_x is None else np.shape(probe_x)[0]
    per_member = estimate_member_bytes(spec, n_inputs, n_probe, config, dtype)
    chunk = plan_chunk(
        per_member, member_ids.size, chunk_size=chunk_size, memory_budget=memory_budget
    )
    if micro_batch is None:
        micro_batch = 1 if jax.default_backend() == "cpu" else 32
    if not isinstance(micro_batch, int) or micro_batch < 1:
        raise ValueError(f"micro_batch: expected a positive integer, got {micro_batch}")
    micro_batch = min(micro_batch, chunk)
    chunk = -(-chunk // micro_batch) * micro_batch

    x = jnp.asarray(x, dtype)
    probe_x = None if probe_x is None else jnp.asarray(probe_x, dtype)
    probe_target = None if probe_target is None else jnp.asarray(probe_target, dtype)
    # Validate shapes against the kernel once, before compiling the chunk.
    static = dict(
        shape=(spec.input_dim, spec.width, spec.depth, spec.readout or 0),
        init=spec.init,
        activation=spec.activation,
        config=config,
        dtype=jnp.dtype(dtype),
        residual=spec.residual is not None,
        micro_batch=micro_batch,
        choices=None,
    )
    choice = jnp.asarray(0, jnp.int32)
    if compile_for is not None:
        choices = tuple(compile_for)
        if spec.activation not in choices:
            raise ValueError(
                f"compile_for: {choices} does not include the spec's activation "
                f"{spec.activation!r}"
            )
        static["choices"] = choices
        static["activation"] = None
        choice = jnp.asarray(choices.index(spec.activation), jnp.int32)
    traced = (
        jnp.asarray(spec.sigma_w, dtype),
        jnp.asarray(spec.sigma_b, dtype),
        jnp.asarray(spec.residual or 1.0, dtype),
    )

    scalar_parts: dict[str, list[np.ndarray]] = {}
    log_sum_parts: dict[str, list[np.ndarray]] = {}
    pooled: dict[str, list[np.ndarray] | None] = {}
    bar = tqdm(
        total=member_ids.size,
        unit="member",
        desc=progress if isinstance(progress, str) else None,
        disable=not progress,
        leave=False,
    )
    with bar, jax.threefry_partitionable(True):
        for start in range(0, member_ids.size, chunk):
            ids = member_ids[start : start + chunk]
            n_valid = ids.size
            padded = np.concatenate([ids, np.full(chunk - n_valid, ids[-1])])
            mask = np.arange(chunk) < n_valid
            scalars, sums, log_sums = _chunk(
                key,
                jnp.asarray(padded, jnp.uint32),
                jnp.asarray(mask),
                *traced,
                x,
                probe_x,
                probe_target,
                choice,
                **static,
            )
            scalars, sums, log_sums = jax.device_get((scalars, sums, log_sums))
            for name, value in scalars.items():
                if value is not None:
                    scalar_parts.setdefault(name, []).append(value[:n_valid])
            for name, value in log_sums.items():
                log_sum_parts.setdefault(name, []).append(value[:n_valid])
            for name, value in sums.items():
                if value is None:
                    pooled[name] = None
                    continue
                value = [np.asarray(v, np.int64) for v in value]
                if name in pooled and pooled[name] is not None:
                    value = [a + b for a, b in zip(pooled[name], value, strict=True)]
                pooled[name] = value
            bar.update(n_valid)

    scalars_out = {name: np.concatenate(parts) for name, parts in scalar_parts.items()}
    order = np.argsort(member_ids, kind="stable")
    distances = {}
    for name, value in pooled.items():
        if value is None:
            continue
        counts, n_zero, n_inf, n_nan, n_clipped = value
        log_sum = np.concatenate(log_sum_parts[name]).astype(np.float64)[order]
        distances[name] = LogSummary(
            counts=counts,
            log_sum=_ordered_sum(log_sum),
            n_zero=n_zero,
            n_inf=n_inf,
            n_nan=n_nan,
            n_clipped=n_clipped,
        )
    return EnsembleResult(member_ids, scalars_out, distances, config)


def _ordered_sum(values: np.ndarray) -> np.ndarray:
    # Sum rows one by one in member order: independent of how chunks split them.
    total = np.zeros(values.shape[1:], np.float64)
    for row in values:
        total = total + row
    return total


def flops_per_member(spec: NetworkSpec, n_inputs: int) -> float:
    """Multiply-add FLOPs of propagating ``n_inputs`` and their Jacobians."""
    d, n, l = spec.input_dim, spec.width, spec.depth
    return 2.0 * n * n_inputs * (1 + d) * (l - 1) + 2.0 * n * d * n_inputs
