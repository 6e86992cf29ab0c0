"""Runs a kernel over an ensemble of random networks, chunk by chunk.

Members are drawn inside the compiled chunk function from ``(key, i)``
(:func:`actgeo.networks.sample`), measured with
:func:`actgeo.kernels.layer_statistics` under ``vmap``, and reduced on the
device: histogram counts are summed over the chunk's members, and the
per-member scalars come back as ``(E, L)`` arrays. The host waits only at
chunk boundaries. Every chunk has the same shape (the last one is padded with
masked members), so a run compiles once.

The member axis is sharded over the local devices: each chunk's member
indices are laid out over a one-axis mesh named ``members``
(``NamedSharding(mesh, P("members"))``), and each device runs the same
single-device program on its own slice, drawing and measuring its members;
the devices' counts are summed on the host. Running one program per device,
rather than one partitioned program for all, is what keeps the numbers
identical for any device count: XLA optimises a partitioned program
differently (it rewrote a division into a reciprocal multiply in one and not
the other, moving sums by an ulp). No device talks to another, so the same
code runs inside each process of a multi-host job.

Results do not depend on the chunk size, the number of devices or the order
in which members are given: member ``i`` depends only on ``(key, i)``, every
member is computed by the same compiled loop body, counts are integers, and
floating-point totals are summed on the host in increasing member index.
Results of disjoint sets of members combine exactly with
:meth:`EnsembleResult.concatenate`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from actgeo.activations import switched
from actgeo.kernels import histogram
from actgeo.kernels.histogram import LogSummary
from actgeo.kernels.statistics import LayerStats, StatsConfig, layer_statistics
from actgeo.networks import NetworkSpec, _sample_members
from actgeo.precision import full_precision

__all__ = [
    "MESH_AXIS",
    "ChunkPlan",
    "EnsembleResult",
    "default_memory_budget",
    "estimate_chunk_bytes",
    "estimate_member_bytes",
    "member_mesh",
    "plan_chunk",
    "plan_chunks",
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
# Name of the mesh axis that the member axis is split over.
MESH_AXIS = "members"
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
        ``log_sum`` is the sum of ``member_log_sums`` in increasing member
        index.
      config: the statistics' settings (bins, probe penalty).
      member_log_sums: name -> ``(E, L)`` float64 sum of each member's finite
        ``log10`` distances (rows follow ``members``); what lets results of
        disjoint members combine exactly.
    """

    members: np.ndarray
    scalars: dict[str, np.ndarray]
    distances: dict[str, LogSummary]
    config: StatsConfig
    member_log_sums: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

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

    @classmethod
    def concatenate(cls, results: Sequence[EnsembleResult]) -> EnsembleResult:
        """One result for the union of disjoint ensembles' members.

        Equal, bit for bit, to a single run over all the members: counts are
        integers, rows are concatenated in the order given, and ``log_sum``
        is summed again in increasing member index.

        Raises:
          ValueError: no results, members that repeat, or results measured
            with different statistics settings or statistics.
        """
        results = list(results)
        if not results:
            raise ValueError("results: expected at least one EnsembleResult")
        first = results[0]
        for other in results[1:]:
            if other.config != first.config:
                raise ValueError("results: measured with different StatsConfig")
            if set(other.scalars) != set(first.scalars) or set(other.distances) != set(
                first.distances
            ):
                raise ValueError("results: hold different statistics")
        for other in results[1:]:
            for name, value in other.scalars.items():
                if value.shape[1:] != first.scalars[name].shape[1:]:
                    raise ValueError(
                        f"results: {name} has per-member shape {value.shape[1:]} "
                        f"in one result and {first.scalars[name].shape[1:]} in "
                        "another (different depths?)"
                    )
        members = np.concatenate([r.members for r in results])
        if np.unique(members).size != members.size:
            raise ValueError("results: member indices repeat between results")
        scalars = {
            name: np.concatenate([r.scalars[name] for r in results])
            for name in first.scalars
        }
        log_sums = {
            name: np.concatenate([r.member_log_sums[name] for r in results])
            for name in first.distances
        }
        pooled = {
            name: [
                [
                    np.asarray(getattr(r.distances[name], field), np.int64)
                    for field in _COUNT_FIELDS
                ]
                for r in results
            ]
            for name in first.distances
        }
        return _assemble(members, scalars, pooled, log_sums, first.config)

    def save(self, path: str | pathlib.Path) -> None:
        """Writes the result to ``path`` (``.npz``) atomically.

        The file appears whole or not at all: it is written beside its final
        place, flushed to disk, and renamed.
        """
        path = pathlib.Path(path)
        arrays = {"members": self.members}
        for name, value in self.scalars.items():
            arrays[f"scalar/{name}"] = value
        for name, summary in self.distances.items():
            arrays[f"log_sums/{name}"] = self.member_log_sums[name]
            for field in _COUNT_FIELDS:
                arrays[f"{field}/{name}"] = np.asarray(getattr(summary, field))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | pathlib.Path, config: StatsConfig) -> EnsembleResult:
        """Reads a result written by :meth:`save`.

        The file holds the numbers, not the settings: ``config`` must be the
        :class:`StatsConfig` it was measured with (it sets the histogram's
        bins for quantiles and means), and is not checked against the file.

        Raises:
          ValueError: the file is not a saved result.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            if "members" not in arrays:
                raise KeyError("no member indices")
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"path: {path} is not a result written by EnsembleResult.save ({err})"
            ) from err
        members = arrays.pop("members")
        scalars, log_sums, pooled = {}, {}, {}
        for key, value in arrays.items():
            kind, name = key.split("/", 1)
            if kind == "scalar":
                scalars[name] = value
            elif kind == "log_sums":
                log_sums[name] = value
        for name in log_sums:
            pooled[name] = [[arrays[f"{field}/{name}"] for field in _COUNT_FIELDS]]
        return _assemble(members, scalars, pooled, log_sums, config)


_COUNT_FIELDS = ("counts", "n_zero", "n_inf", "n_nan", "n_clipped")


def _assemble(members, scalars, pooled, log_sums, config) -> EnsembleResult:
    """An :class:`EnsembleResult` from per-member rows and parts of the counts.

    ``pooled`` maps each distance to a list of parts, each the five count
    arrays of :data:`_COUNT_FIELDS`; parts are summed as int64. ``log_sum`` is
    summed row by row in increasing member index, so it does not depend on how
    the members were split into parts.
    """
    order = np.argsort(members, kind="stable")
    distances = {}
    for name, parts in pooled.items():
        totals = [
            functools.reduce(np.add, [np.asarray(p[k], np.int64) for p in parts])
            for k in range(len(_COUNT_FIELDS))
        ]
        rows = np.asarray(log_sums[name], np.float64)
        distances[name] = LogSummary(
            log_sum=_ordered_sum(rows[order]),
            **dict(zip(_COUNT_FIELDS, totals, strict=True)),
        )
    log_sums = {name: np.asarray(v, np.float64) for name, v in log_sums.items()}
    return EnsembleResult(members, scalars, distances, config, log_sums)


def default_memory_budget(device: jax.Device | None = None) -> int:
    """Bytes a run may use: half the device's free memory, or 2 GiB on a CPU."""
    device = device or jax.local_devices()[0]
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
    """Estimated device memory one member's measurement uses, in bytes.

    Counts the member's parameters (eight times: the random bits, the
    normals, their pieces and the scaled weights, with XLA's temporaries;
    calibrated against ``compiled.memory_analysis()``), the carried
    activations and Jacobian columns with their temporaries, the probe's
    Gram matrices, and one histogram buffer of every distance and layer.
    Nothing in it grows with depth except the histogram (the result itself):
    layers are scanned, so no layer's activations are kept for the next.
    """
    f = jnp.dtype(dtype).itemsize
    d, n = spec.input_dim, spec.width
    params = 8 * f * spec.param_count()
    if spec.init == "orthogonal":
        params += 3 * f * n * n
    propagation = 5 * f * n_inputs * n * (1 + d)
    probe = 5 * f * n_probe * n + 4 * f * n_probe * n_probe
    return int(params + propagation + probe + _histogram_bytes(spec, config))


def _histogram_bytes(spec: NetworkSpec, config: StatsConfig) -> int:
    return 4 * len(DISTANCES) * spec.depth * config.bins.count


def _row_bytes(spec: NetworkSpec) -> int:
    # Per-member outputs (scalars and log sums per layer), stacked by the
    # scan and copied out: twice.
    return 2 * 4 * spec.depth * (len(SCALARS) + len(DISTANCES))


def estimate_chunk_bytes(
    spec: NetworkSpec,
    n_inputs: int,
    n_probe: int,
    *,
    chunk: int,
    micro_batch: int = 1,
    config: StatsConfig = StatsConfig(),
    dtype=jnp.float32,
) -> int:
    """Estimated peak device memory of one compiled chunk, in bytes.

    A chunk runs ``micro_batch`` members at a time. One at a time, each
    member adds straight into the chunk's histogram buffer, so the peak is
    one member's working set (:func:`estimate_member_bytes`) plus the
    buffer and the per-member rows: nearly flat in ``chunk``. Several at a
    time, each member of the micro batch holds its own histogram until they
    are summed (about four copies of it at the peak).

    Checked against XLA's own count (``compiled.memory_analysis()``) in the
    tests: within a factor of three above it, never below.
    """
    member = estimate_member_bytes(spec, n_inputs, n_probe, config, dtype)
    histogram_bytes = _histogram_bytes(spec, config)
    if micro_batch == 1:
        working = member + histogram_bytes
    else:
        working = micro_batch * (member + 3 * histogram_bytes)
    return int(histogram_bytes + working + chunk * _row_bytes(spec))


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
@full_precision
def _chunk(*args, **static):
    """One device's share of a chunk (see :func:`_device_chunk`), compiled.

    Matmuls run at full float32 precision unless the caller chose another
    (see :mod:`actgeo.precision`).
    """
    return _device_chunk(*args, **static)


def _device_chunk(
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
    """The members one device measures, ``micro_batch`` at a time.

    Returns per-member scalars and log sums (rows follow ``members``) and,
    for each distance, the five count arrays summed over the valid members.
    """
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
    # computed by the same compiled program whatever the chunk size or the
    # number of devices, so results are bit-identical across both.
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


def member_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``members`` over this process's devices.

    Args:
      devices: ``None`` for every local device, a count ``k`` for the first
        ``k`` of them, or the devices themselves.

    Raises:
      ValueError: a count outside ``1..len(jax.local_devices())``, an empty
        list, or devices that belong to another process.
    """
    local = jax.local_devices()
    if devices is None:
        chosen = local
    elif _is_count(devices):
        if not 1 <= devices <= len(local):
            raise ValueError(
                f"devices: expected a count in 1..{len(local)} (this process's "
                f"devices), got {devices}"
            )
        chosen = local[:devices]
    else:
        chosen = list(devices)
        if not chosen or any(d not in local for d in chosen):
            raise ValueError(
                "devices: expected a non-empty list of this process's devices "
                f"({', '.join(map(str, local))}), got {chosen}"
            )
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"devices: devices repeat in {chosen}")
    return Mesh(np.array(chosen), (MESH_AXIS,))


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


class ChunkPlan(NamedTuple):
    """How a run splits its members, and what one call is expected to use.

    Attributes:
      chunk: members per device per compiled call (a multiple of
        ``micro_batch``).
      micro_batch: members measured together inside a chunk.
      bytes: :func:`estimate_chunk_bytes` of one call, per device.
      budget: the memory budget it was planned for, per device.
    """

    chunk: int
    micro_batch: int
    bytes: int
    budget: int


def plan_chunks(
    spec: NetworkSpec,
    n_inputs: int,
    n_probe: int,
    n_members: int,
    *,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    micro_batch: int | None = None,
    config: StatsConfig = StatsConfig(),
    dtype=jnp.float32,
    device: jax.Device | None = None,
) -> ChunkPlan:
    """Chooses the chunk size from the memory budget, before any work.

    Args:
      spec, n_inputs, n_probe, config, dtype: the measurement's shapes.
      n_members: members one device will measure.
      chunk_size: a requested chunk, checked against the budget; by default
        the largest that fits (at most 64 on a CPU, where smaller chunks run
        faster).
      memory_budget: bytes per device; by default
        :func:`default_memory_budget` of ``device``.
      micro_batch: members vmapped together; by default 1 on a CPU and 32
        on accelerators, never more than the chunk.

    Raises:
      ValueError: a malformed budget, chunk size or micro batch.
      MemoryError: the smallest call, or the requested chunk, exceeds the
        budget; the message gives the estimate and what would fit.
    """
    if not _is_count(n_members) or n_members < 1:
        raise ValueError(f"n_members: expected a positive integer, got {n_members}")
    device = device or jax.local_devices()[0]
    budget = _budget(memory_budget, device)
    if micro_batch is None:
        micro_batch = 1 if device.platform == "cpu" else 32
    if not _is_count(micro_batch) or micro_batch < 1:
        raise ValueError(f"micro_batch: expected a positive integer, got {micro_batch}")
    _check_chunk_size(chunk_size)
    micro_batch = min(micro_batch, n_members, chunk_size or n_members)

    def cost(chunk):
        return estimate_chunk_bytes(
            spec,
            n_inputs,
            n_probe,
            chunk=chunk,
            micro_batch=micro_batch,
            config=config,
            dtype=dtype,
        )

    remedy = " or a smaller micro_batch" if micro_batch > 1 else ""
    remedy += ", or use fewer inputs, fewer probe inputs or a smaller width"
    chunk = _fit_chunk(
        cost, micro_batch, n_members, chunk_size, budget, device.platform, remedy
    )
    return ChunkPlan(chunk, micro_batch, cost(chunk), budget)


def _budget(memory_budget, device) -> int:
    if memory_budget is None:
        return default_memory_budget(device)
    if not (
        isinstance(memory_budget, int | float | np.integer | np.floating)
        and math.isfinite(memory_budget)
        and memory_budget >= 1
    ):
        raise ValueError(
            f"memory_budget: expected a finite byte count >= 1, got {memory_budget!r}"
        )
    return int(memory_budget)


def plan_chunk(
    per_member: int,
    n_members: int,
    *,
    chunk_size: int | None,
    memory_budget: int | None,
    device: jax.Device | None = None,
) -> int:
    """Chunk size for work whose memory is ``per_member`` bytes per member.

    For measurements of other shapes than :func:`run_ensemble`'s (the
    experiments' own kernels); :func:`plan_chunks` plans the ensemble's.

    Raises:
      MemoryError: even one member, or the requested chunk, exceeds the budget;
        the message gives the estimate and a chunk size that fits.
    """
    device = device or jax.local_devices()[0]
    budget = _budget(memory_budget, device)
    _check_chunk_size(chunk_size)
    return _fit_chunk(
        lambda chunk: chunk * per_member,
        1,
        n_members,
        chunk_size,
        budget,
        device.platform,
        ", or use fewer inputs or a smaller width",
    )


def _check_chunk_size(chunk_size) -> None:
    if chunk_size is not None and (not _is_count(chunk_size) or chunk_size < 1):
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")


def _fit_chunk(
    cost: Callable[[int], int],
    step: int,
    n_members: int,
    chunk_size: int | None,
    budget: int,
    platform: str,
    remedy: str,
) -> int:
    """The chunk (a multiple of ``step``) that ``cost``, affine in it, fits.

    A requested ``chunk_size`` is checked (cut to the members first); without
    one, the largest that fits, at most :data:`_CPU_CHUNK_CAP` on a CPU.

    Raises:
      MemoryError: ``step`` members, or the requested chunk, exceed the
        budget; the message gives the estimate and what would fit.
    """
    smallest = cost(step)
    if smallest > budget:
        raise MemoryError(
            f"memory_budget: {step} member(s) at a time need about "
            f"{_gib(smallest)} but the budget is {_gib(budget)}; raise the budget"
            f"{remedy}"
        )
    per_row = cost(step + 1) - smallest
    fits = (step + (budget - smallest) // max(per_row, 1)) // step * step
    whole = -(-n_members // step) * step
    if chunk_size is not None:
        # A chunk beyond the members would only be padding: it is not asked for.
        chunk = -(-min(chunk_size, n_members) // step) * step
        if chunk > fits:
            raise MemoryError(
                f"chunk_size: {chunk_size} members need about {_gib(cost(chunk))}, "
                f"above the budget of {_gib(budget)}; use chunk_size <= {fits} or "
                "raise the budget"
            )
        return chunk
    cap = _CPU_CHUNK_CAP if platform == "cpu" else fits
    chunk = max(step, min(fits, cap, n_members))
    return min(-(-chunk // step) * step, whole)


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
    devices: int | Sequence[jax.Device] | None = None,
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
      chunk_size: members per device per compiled call; by default the most
        that fit ``memory_budget`` (capped at 64 on a CPU, where smaller chunks
        run faster). One call measures ``chunk_size`` members on each device.
      memory_budget: bytes per device; by default
        :func:`default_memory_budget` of the first device.
      dtype: float dtype of parameters and inputs.
      micro_batch: members vmapped together inside a chunk (the chunk runs
        them in sequence). Results are bit-identical for any chunk size at a
        fixed micro batch; by default 1 on a CPU and 32 on accelerators.
      compile_for: activation names to compile one shared program for (the
        spec's activation among them, chosen at run time); runs over several
        activations of the same shapes then compile once.
      devices: the devices the member axis is split over (see
        :func:`member_mesh`); by default every device of this process.
      progress: show a progress bar (a string sets its description); it moves
        when a chunk's results have reached the host.

    Returns:
      An :class:`EnsembleResult`: per-member scalars ``(E, L)`` in the order
      of ``members``, and the distances pooled over members, inputs and
      neurons (histograms of ``log10`` distance per layer, with counts of
      the values that are zero, infinite, NaN or outside the bins).

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
    mesh = member_mesh(devices)
    n_devices = mesh.devices.size
    plan = plan_chunks(
        spec,
        n_inputs,
        n_probe,
        -(-member_ids.size // n_devices),
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        micro_batch=micro_batch,
        config=config,
        dtype=dtype,
        device=mesh.devices.flat[0],
    )
    chunk, micro_batch = plan.chunk, plan.micro_batch

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

    global_chunk = chunk * n_devices
    split = NamedSharding(mesh, P(MESH_AXIS))
    # The arguments every device shares, placed on each device once.
    shared = {
        device: jax.device_put((key, *traced, x, probe_x, probe_target, choice), device)
        for device in mesh.devices.flat
    }
    scalar_parts: dict[str, list[np.ndarray]] = {}
    log_sum_parts: dict[str, list[np.ndarray]] = {}
    pooled: dict[str, list] = {}
    bar = tqdm(
        total=member_ids.size,
        unit="member",
        desc=progress if isinstance(progress, str) else None,
        disable=not progress,
        leave=False,
    )
    with bar, jax.threefry_partitionable(True):
        for start in range(0, member_ids.size, global_chunk):
            ids = member_ids[start : start + global_chunk]
            n_valid = ids.size
            padded = np.concatenate([ids, np.full(global_chunk - n_valid, ids[-1])])
            mask = np.arange(global_chunk) < n_valid
            ids_sharded = jax.device_put(padded.astype(np.uint32), split)
            mask_sharded = jax.device_put(mask, split)
            # Dispatch every device's share before waiting for any.
            outputs = [
                _chunk(
                    *shared[shard.device][:1],
                    shard.data,
                    mask_shard.data,
                    *shared[shard.device][1:],
                    **static,
                )
                for shard, mask_shard in zip(
                    ids_sharded.addressable_shards,
                    mask_sharded.addressable_shards,
                    strict=True,
                )
            ]
            outputs = jax.device_get(outputs)
            for name in outputs[0][0]:
                if outputs[0][0][name] is not None:
                    rows = np.concatenate([out[0][name] for out in outputs])
                    scalar_parts.setdefault(name, []).append(rows[:n_valid])
            for name in outputs[0][2]:
                rows = np.concatenate([out[2][name] for out in outputs])
                log_sum_parts.setdefault(name, []).append(rows[:n_valid])
            for name in outputs[0][1]:
                if outputs[0][1][name] is not None:
                    # One part per device; masked members added nothing.
                    pooled.setdefault(name, []).extend(out[1][name] for out in outputs)
            bar.update(n_valid)

    scalars_out = {name: np.concatenate(parts) for name, parts in scalar_parts.items()}
    log_sums_out = {
        name: np.concatenate(log_sum_parts[name]).astype(np.float64) for name in pooled
    }
    return _assemble(member_ids, scalars_out, pooled, log_sums_out, config)


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
