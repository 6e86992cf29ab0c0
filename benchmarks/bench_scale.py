"""How compile time, memory, weight sampling and devices scale, in one run.

Four sections, each a markdown table with the ratios that summarise it:

a. **Compile time against depth**: ``jit(...).lower(...).compile()`` of
   ``jax.vmap(actgeo.kernels.layer_statistics)`` over a few members (weights
   given, and weights sampled inside the call), and the first call of
   :func:`actgeo.ensemble.run_ensemble` minus its second call, with as many
   members as one chunk. Layers run under ``lax.scan``, so these should not
   grow with depth; the ratio of the deepest to the shallowest says whether
   they do.
b. **Memory against depth and against members**: arguments, outputs and
   temporaries of one compiled call from ``compiled.memory_analysis()``,
   reported apart, beside ``actgeo.ensemble.estimate_chunk_bytes`` (the
   library's own estimate, which sizes its chunks). Against members, bytes
   per member (the slope between the smallest and the largest ensemble) and
   the ratio of the two totals.
c. **Weight sampling alone**: normals per second drawing one network's
   weights per member (``fold_in(key, i)`` per member under ``vmap``, as
   :func:`actgeo.sample` does) for threefry with
   ``jax_threefry_partitionable`` on and off, ``rbg`` and ``unsafe_rbg``, at
   a small and a large ensemble, beside the time of the matmuls those weights
   feed (``E x [N x N] @ [N x B(1+D)]`` through ``L - 1`` layers). Also
   whether member ``i`` drawn alone equals member ``i`` drawn in a batch (it
   must, for the library's promise that member ``i`` depends only on ``(key,
   i)``).
d. **Simulated devices**: for each device count ``K`` a subprocess with
   ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` times
   ``run_ensemble(spec, x, members=E, key=key)`` as it is (and says whether
   it has a ``devices`` argument), checks its scalars and histogram counts bit
   for bit against the one-device run, and draws the same random numbers
   sharded over its ``K`` devices with each PRNG implementation, to show
   whether the draws depend on the device count.

Axis letters: ``E`` members, ``N`` width, ``L`` layers, ``B`` inputs, ``D``
input dimension.

Run ``python benchmarks/bench_scale.py --help``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import actgeo
from actgeo.kernels import layer_statistics

# bench_kernel.py lies beside this script; reach it however this one is loaded.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_kernel
from bench_kernel import OtherLoad

MIB = 2.0**20
PRNGS = (
    # (label, key implementation, jax_threefry_partitionable)
    ("threefry, partitionable", "threefry2x32", True),
    ("threefry, not partitionable", "threefry2x32", False),
    ("rbg", "rbg", True),
    ("unsafe_rbg", "unsafe_rbg", True),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every size the four sections use."""

    depths: tuple[int, ...] = (8, 32, 128, 512)
    width: int = 64
    inputs: int = 16  # B
    input_dim: int = 2  # D
    members: int = 8  # E for the depth sweep
    member_counts: tuple[int, ...] = (16, 32, 64, 128, 256)
    member_depth: int = 32
    sample_width: int = 128
    sample_depth: int = 32
    sample_members: tuple[int, ...] = (4, 64)
    devices: tuple[int, ...] = (1, 2, 4, 8)
    device_members: int = 64
    device_width: int = 64
    device_depth: int = 16
    repeats: int = 3
    activation: str = "relu"
    seed: int = 0


QUICK = Settings(
    depths=(8, 64),
    width=32,
    inputs=4,
    members=4,
    member_counts=(4, 16),
    member_depth=8,
    sample_width=64,
    sample_depth=8,
    sample_members=(2, 16),
    devices=(1, 2),
    device_members=8,
    device_width=32,
    device_depth=4,
    repeats=2,
)

# The smallest sizes, for a test of the script's structure.
TINY = dataclasses.replace(
    QUICK,
    depths=(4, 8),
    width=8,
    inputs=2,
    members=2,
    member_counts=(2, 4),
    member_depth=4,
    sample_width=16,
    sample_depth=4,
    sample_members=(2, 4),
    devices=(1,),
    device_members=2,
    device_width=8,
    device_depth=3,
    repeats=1,
)


def _spec(s: Settings, width: int, depth: int) -> actgeo.NetworkSpec:
    return actgeo.NetworkSpec(
        input_dim=s.input_dim, width=width, depth=depth, activation=s.activation
    )


def _inputs(s: Settings) -> jax.Array:
    x = jax.random.normal(jax.random.key(s.seed + 1), (s.inputs, s.input_dim))
    return x / np.sqrt(s.input_dim)


def _best(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return min(times)


def _memory(compiled) -> dict[str, int] | None:
    try:
        m = compiled.memory_analysis()
        return {
            "argument": int(m.argument_size_in_bytes),
            "output": int(m.output_size_in_bytes),
            "temp": int(m.temp_size_in_bytes),
            "alias": int(m.alias_size_in_bytes),
        }
    except (AttributeError, NotImplementedError, TypeError):
        return None


def _total(memory: dict[str, int] | None) -> int | None:
    if memory is None:
        return None
    return memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]


def _compile(fn: Callable, *args, repeats: int = 1):
    """``jax.jit(fn).lower(*args).compile()``; the best time of ``repeats``.

    JAX's caches are cleared before each try, or a second compilation of the
    same program would be a cache hit.
    """
    best = float("inf")
    for _ in range(repeats):
        jax.clear_caches()
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        best = min(best, time.perf_counter() - start)
    return compiled, best


def _programs(spec: actgeo.NetworkSpec, members: int, activation: str):
    """``(given, sampled)``: the vmapped kernel with weights as arguments, and
    with the weights drawn inside from a key."""
    one = functools.partial(layer_statistics, activation=activation)

    def given(params, x):
        return jax.vmap(one, in_axes=(0, None))(params, x)

    def sampled(key, x):
        return given(actgeo.sample(spec, members, key=key), x)

    return given, sampled


def _estimate(spec: actgeo.NetworkSpec, inputs: int, members: int) -> int | None:
    """The library's estimate for these ``members`` vmapped at once, per member.

    The programs here vmap ``layer_statistics`` over all members, which is a
    chunk whose micro batch is every member
    (:func:`actgeo.ensemble.estimate_chunk_bytes`).
    """
    try:
        from actgeo.ensemble import estimate_chunk_bytes
    except ImportError:
        return None
    total = estimate_chunk_bytes(spec, inputs, 0, chunk=members, micro_batch=members)
    return int(total // members)


def measure_programs(
    s: Settings, width: int, depth: int, members: int, x: jax.Array, repeats=1
) -> dict:
    """Compile time (best of ``repeats``) and memory of both programs."""
    spec = _spec(s, width, depth)
    key = jax.random.key(s.seed)
    params = jax.eval_shape(lambda k: actgeo.sample(spec, members, key=k), key)
    given, sampled = _programs(spec, members, s.activation)
    exe_given, seconds_given = _compile(given, params, x, repeats=repeats)
    exe_sampled, seconds_sampled = _compile(sampled, key, x, repeats=repeats)
    estimate = _estimate(spec, s.inputs, members)
    return {
        "depth": depth,
        "members": members,
        "width": width,
        "compile_given": seconds_given,
        "compile_sampled": seconds_sampled,
        "memory_given": _memory(exe_given),
        "memory_sampled": _memory(exe_sampled),
        "estimate_member_bytes": estimate,
    }


def run_ensemble_compile(s: Settings, depth: int, x: jax.Array) -> dict | None:
    """First call of ``run_ensemble`` minus its second, members = one chunk.

    ``None`` with a message when the runner is missing or fails (it is under
    development; this script does not depend on it).
    """
    try:
        from actgeo.ensemble import run_ensemble

        spec = _spec(s, s.width, depth)
        key = jax.random.key(s.seed)

        def run():
            return run_ensemble(spec, x, members=s.members, key=key)

        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        second = _best(run, 1)
    except Exception as err:
        print(f"  run_ensemble skipped: {type(err).__name__}: {err}", file=sys.stderr)
        return None
    return {"first": first, "second": second, "compile": max(first - second, 0.0)}


def section_depth(s: Settings, log) -> list[dict]:
    """Sections a and b against depth: one record per depth."""
    x = _inputs(s)
    # Warm up: the process's first compilation pays one-time costs that would
    # land on the first depth.
    measure_programs(s, s.width, s.depths[0], s.members, x)
    rows = []
    for depth in s.depths:
        log(f"  depth {depth}")
        row = measure_programs(
            s, s.width, depth, s.members, x, repeats=min(2, s.repeats)
        )
        row["run_ensemble"] = run_ensemble_compile(s, depth, x)
        rows.append(row)
    return rows


def section_members(s: Settings, log) -> list[dict]:
    """Section b against members: one record per ensemble size."""
    x = _inputs(s)
    rows = []
    for members in s.member_counts:
        log(f"  members {members}")
        rows.append(measure_programs(s, s.width, s.member_depth, members, x))
    return rows


def member_slope(rows: Sequence[dict], program: str = "given") -> dict:
    """Bytes per member between the smallest and largest ensemble, and ratios.

    ``program`` is ``"given"`` or ``"sampled"``. ``ratio`` is the largest
    ensemble's total over the smallest's; ``members_ratio`` the same for the
    member counts: equal for memory exactly proportional to members.
    """
    first, last = rows[0], rows[-1]
    a = _total(first[f"memory_{program}"])
    b = _total(last[f"memory_{program}"])
    if a is None or b is None or last["members"] == first["members"]:
        return {"bytes_per_member": None, "ratio": None, "members_ratio": None}
    return {
        "bytes_per_member": (b - a) / (last["members"] - first["members"]),
        "ratio": b / a,
        "members_ratio": last["members"] / first["members"],
    }


# ----------------------------------------------------------------------------
# Section c: sampling


def _draw_fn(count: int, members: Sequence[int] | None = None):
    """Normals ``(E, count)``, member ``i`` from ``fold_in(key, i)``, vmapped."""

    def draw(key, ids):
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
        return jax.vmap(lambda k: jax.random.normal(k, (count,), jnp.float32))(keys)

    return draw


def _matmul_chain(w_layers, cols):
    def body(c, w):
        return jnp.einsum("enm,emk->enk", w, c), None

    out, _ = jax.lax.scan(body, cols, w_layers)
    return out


def section_sampling(s: Settings, log) -> dict:
    """Normals per second for each PRNG implementation, and the matmul beside."""
    spec = _spec(s, s.sample_width, s.sample_depth)
    count = spec.param_count()
    columns = s.inputs * (1 + s.input_dim)
    rows = []
    for members in s.sample_members:
        ids = jnp.arange(members, dtype=jnp.uint32)
        w = jax.random.normal(
            jax.random.key(1),
            (s.sample_depth - 1, members, s.sample_width, s.sample_width),
        ) / np.sqrt(s.sample_width)
        cols = jax.random.normal(jax.random.key(2), (members, s.sample_width, columns))
        exe, _ = _compile(_matmul_chain, w, cols)
        matmul = _best(lambda exe=exe, w=w, cols=cols: exe(w, cols), s.repeats)
        del w, cols
        for label, impl, partitionable in PRNGS:
            with jax.threefry_partitionable(partitionable):
                key = jax.random.key(s.seed, impl=impl)
                exe, _ = _compile(_draw_fn(count), key, ids)
            seconds = _best(lambda exe=exe, key=key, ids=ids: exe(key, ids), s.repeats)
            normals = members * count
            rows.append(
                {
                    "prng": label,
                    "members": members,
                    "normals": normals,
                    "seconds": seconds,
                    "normals_per_second": normals / seconds,
                    "matmul_seconds": matmul,
                    "columns": columns,
                    "sampling_over_matmul": seconds / matmul,
                    "break_even_columns": columns * seconds / matmul,
                }
            )
            log(
                f"  {label}, {members} members: {normals / seconds / 1e6:.0f} M "
                f"normals/s, {seconds / matmul:.2f}x the matmuls"
            )
    exact = {}
    for label, impl, partitionable in PRNGS:
        with jax.threefry_partitionable(partitionable):
            key = jax.random.key(s.seed, impl=impl)
            draw = jax.jit(_draw_fn(64))
            batch = np.asarray(draw(key, jnp.arange(8, dtype=jnp.uint32)))
            alone = np.asarray(draw(key, jnp.asarray([3], jnp.uint32)))
        exact[label] = bool(np.array_equal(batch[3], alone[0]))
    return {
        "normals_per_member": count,
        "shape": {
            "width": s.sample_width,
            "depth": s.sample_depth,
            "input_dim": s.input_dim,
            "inputs": s.inputs,
        },
        "rows": rows,
        "member_alone_equals_in_batch": exact,
    }


# ----------------------------------------------------------------------------
# Section d: simulated devices


def _digest(array) -> str:
    a = np.ascontiguousarray(np.asarray(array))
    return hashlib.sha256(a.tobytes() + str(a.dtype).encode()).hexdigest()[:16]


def worker(config: dict) -> dict:
    """Runs in a subprocess whose ``XLA_FLAGS`` set the device count."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    s = Settings(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    )
    out: dict = {"device_count": jax.device_count()}
    spec = _spec(s, s.device_width, s.device_depth)
    x = _inputs(s)
    key = jax.random.key(s.seed)
    try:
        from actgeo.ensemble import run_ensemble

        out["has_devices_argument"] = (
            "devices" in inspect.signature(run_ensemble).parameters
        )

        def run():
            return run_ensemble(spec, x, members=s.device_members, key=key)

        start = time.perf_counter()
        result = run()
        out["first_call"] = time.perf_counter() - start
        out["seconds"] = _best(run, s.repeats)
        out["scalars"] = {k: _digest(v) for k, v in sorted(result.scalars.items())}
        out["scalar_values"] = {
            k: np.asarray(v, np.float64).tolist()
            for k, v in sorted(result.scalars.items())
        }
        out["counts"] = {
            k: _digest(v.counts) for k, v in sorted(result.distances.items())
        }
    except Exception as err:
        out["error"] = f"{type(err).__name__}: {err}"
    # The same draws, sharded over every device along the member axis.
    mesh = Mesh(np.array(jax.devices()), ("members",))
    sharding = NamedSharding(mesh, PartitionSpec("members"))
    # The same shape in every run (a multiple of every device count), so the
    # draws differ only if the sharding changes them.
    members = math.lcm(*s.devices) * 8
    draws = {}
    for label, impl, partitionable in PRNGS:
        with jax.threefry_partitionable(partitionable):
            k = jax.random.key(s.seed, impl=impl)
            whole = jax.jit(
                lambda k: jax.random.normal(k, (members, 257)), out_shardings=sharding
            )(k)
            per_member = jax.jit(_draw_fn(257), out_shardings=sharding)(
                k, jnp.arange(members, dtype=jnp.uint32)
            )
        draws[label] = {
            "whole": _digest(whole),
            "per_member": _digest(per_member),
        }
    out["draws"] = draws
    return out


def section_devices(s: Settings, log) -> list[dict]:
    """Section d: one subprocess per device count."""
    config = json.dumps(dataclasses.asdict(s))
    rows = []
    for k in s.devices:
        log(f"  {k} simulated devices")
        env = dict(os.environ)
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={k}".strip()
        proc = subprocess.run(
            [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", config],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            row = {
                "error": f"worker failed (exit {proc.returncode}): "
                + proc.stderr.strip()[-400:]
            }
        row["devices"] = k
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["scalars_equal"] = "scalars" in row and row.get("scalars") == base.get(
            "scalars"
        )
        row["counts_equal"] = "counts" in row and row.get("counts") == base.get(
            "counts"
        )
        row["draws_equal"] = {
            label: row.get("draws", {}).get(label) == base.get("draws", {}).get(label)
            for label, _, _ in PRNGS
        }
        if "seconds" in row and "seconds" in base:
            row["speedup"] = base["seconds"] / row["seconds"]
        row["scalar_max_abs_diff"] = {
            name: float(np.max(np.abs(np.asarray(value) - np.asarray(base_value))))
            for name, value in row.get("scalar_values", {}).items()
            if (base_value := base.get("scalar_values", {}).get(name)) is not None
            and np.shape(value) == np.shape(base_value)
        }
        row.pop("scalar_values", None)
    base.pop("scalar_values", None)
    return rows


# ----------------------------------------------------------------------------
# Reporting


def _mib(n) -> str:
    return "" if n is None else f"{n / MIB:.3g}"


def _ratio(a, b) -> str:
    return "" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def table_depth(rows: list[dict], s: Settings) -> str:
    lines = [
        f"### a. Compile time against depth (N={s.width}, E={s.members}, "
        f"B={s.inputs}, D={s.input_dim})",
        "",
        "| L | vmap(layer_statistics), weights given (s) | sampling inside (s) "
        "| run_ensemble first - second call (s) | run_ensemble second call (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ens = r["run_ensemble"] or {}
        lines.append(
            f"| {r['depth']} | {r['compile_given']:.2f} | {r['compile_sampled']:.2f} "
            f"| {ens.get('compile', float('nan')):.2f} "
            f"| {ens.get('second', float('nan')):.3f} |"
        )
    a, b = rows[0], rows[-1]
    ea, eb = a["run_ensemble"], b["run_ensemble"]
    lines += [
        "",
        f"Deepest over shallowest (L={b['depth']} / L={a['depth']}, "
        f"{b['depth'] / a['depth']:g}x the layers): weights given "
        f"{_ratio(b['compile_given'], a['compile_given'])}, sampling inside "
        f"{_ratio(b['compile_sampled'], a['compile_sampled'])}, run_ensemble "
        + (_ratio(eb["compile"], ea["compile"]) if ea and eb else "n/a")
        + ".",
    ]
    return "\n".join(lines)


def table_memory_depth(rows: list[dict], s: Settings) -> str:
    lines = [
        f"### b. XLA memory against depth (N={s.width}, E={s.members}, "
        f"B={s.inputs}, D={s.input_dim}), MiB",
        "",
        "| L | arguments | outputs | temporaries | temporaries - outputs "
        "| temporaries, sampling inside | total, sampling inside "
        "| estimate_chunk_bytes, E at once | estimate / total |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g, sm = r["memory_given"] or {}, r["memory_sampled"]
        est = r["estimate_member_bytes"]
        est = None if est is None else est * r["members"]
        lines.append(
            f"| {r['depth']} | {_mib(g.get('argument'))} | {_mib(g.get('output'))} "
            f"| {_mib(g.get('temp'))} "
            f"| {_mib(g and g['temp'] - g['output'])} | {_mib(sm and sm['temp'])} "
            f"| {_mib(_total(sm))} | {_mib(est)} | {_ratio(est, _total(sm))} |"
        )
    a, b = rows[0], rows[-1]
    if a["memory_given"] and b["memory_given"]:
        ga, gb = a["memory_given"], b["memory_given"]
        lines += [
            "",
            f"Deepest over shallowest ({b['depth'] / a['depth']:g}x the layers): "
            f"temporaries {_ratio(gb['temp'], ga['temp'])}, temporaries "
            "less outputs "
            + _ratio(gb["temp"] - gb["output"], ga["temp"] - ga["output"])
            + ", outputs "
            f"{_ratio(gb['output'], ga['output'])}, arguments (the weights) "
            f"{_ratio(gb['argument'], ga['argument'])}; sampling inside, "
            "temporaries "
            + _ratio(b["memory_sampled"]["temp"], a["memory_sampled"]["temp"])
            + ".",
        ]
    return "\n".join(lines)


def table_memory_members(rows: list[dict], s: Settings) -> str:
    lines = [
        f"### b. XLA memory against members (N={s.width}, L={s.member_depth}, "
        f"B={s.inputs}, D={s.input_dim}), MiB",
        "",
        "| E | arguments | outputs | temporaries | total | total / E "
        "| total, sampling inside | estimate_chunk_bytes, E at once "
        "| estimate / total, sampling inside |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = r["memory_given"] or {}
        total = _total(r["memory_given"])
        sampled = _total(r["memory_sampled"])
        est = r["estimate_member_bytes"]
        est = None if est is None else est * r["members"]
        lines.append(
            f"| {r['members']} | {_mib(g.get('argument'))} | {_mib(g.get('output'))} "
            f"| {_mib(g.get('temp'))} | {_mib(total)} "
            f"| {_mib(None if total is None else total / r['members'])} "
            f"| {_mib(sampled)} | {_mib(est)} | {_ratio(est, sampled)} |"
        )
    for program, label in (("given", "weights given"), ("sampled", "sampling inside")):
        m = member_slope(rows, program)
        if m["bytes_per_member"] is not None:
            lines += [
                "",
                f"{label}: {m['bytes_per_member'] / MIB:.3g} MiB per member "
                f"(slope from E={rows[0]['members']} to E={rows[-1]['members']}); "
                f"total ratio {m['ratio']:.2f} for {m['members_ratio']:g}x the "
                "members.",
            ]
    return "\n".join(lines)


def table_sampling(record: dict, s: Settings) -> str:
    shape = record["shape"]
    lines = [
        f"### c. Weight sampling alone (N={shape['width']}, L={shape['depth']}, "
        f"D={shape['input_dim']}: {record['normals_per_member'] / 1e6:.3g} M normals "
        "per member)",
        "",
        "| PRNG | E | M normals/s | sampling (s) | matmuls, "
        f"B(1+D)={s.inputs * (1 + s.input_dim)} columns (s) | sampling / matmuls "
        "| columns where they cost the same |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['prng']} | {r['members']} | {r['normals_per_second'] / 1e6:.0f} "
            f"| {r['seconds']:.3g} | {r['matmul_seconds']:.3g} "
            f"| {r['sampling_over_matmul']:.2f} | {r['break_even_columns']:.0f} |"
        )
    exact = record["member_alone_equals_in_batch"]
    lines += [
        "",
        "Member 3 drawn alone equals member 3 drawn among members 0-7 (vmap over "
        "fold_in keys): "
        + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in exact.items())
        + ".",
    ]
    return "\n".join(lines)


def table_devices(rows: list[dict], s: Settings) -> str:
    lines = [
        f"### d. run_ensemble on simulated CPU devices (E={s.device_members}, "
        f"N={s.device_width}, L={s.device_depth}, B={s.inputs}, D={s.input_dim})",
        "",
        "| devices | jax.device_count() | time (s) | first call (s) | speed-up "
        "| scalars bit-equal to 1 device | counts bit-equal | has devices= |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r and "seconds" not in r:
            lines.append(
                f"| {r['devices']} | {r.get('device_count', '')} | "
                f"error: {r['error'][:120]} | | | | | |"
            )
            continue
        lines.append(
            f"| {r['devices']} | {r['device_count']} | {r['seconds']:.3g} "
            f"| {r['first_call']:.3g} | {r.get('speedup', float('nan')):.2f} "
            f"| {'yes' if r['scalars_equal'] else 'NO'} "
            f"| {'yes' if r['counts_equal'] else 'NO'} "
            f"| {'yes' if r.get('has_devices_argument') else 'no'} |"
        )
    for r in rows:
        diffs = {k: v for k, v in r.get("scalar_max_abs_diff", {}).items() if v}
        if diffs:
            lines += [
                "",
                f"{r['devices']} devices, scalars that differ from 1 device (max "
                "abs diff): "
                + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items())
                + ".",
            ]
    lines += [
        "",
        "run_ensemble is called as `run_ensemble(spec, x, members=E, key=key)`; "
        "where it has a `devices` argument, its default is used.",
        "",
        "Random draws sharded over all devices along the member axis, equal to "
        "the 1-device draws (whole array / per-member fold_in):",
        "",
        "| devices | " + " | ".join(label for label, _, _ in PRNGS) + " |",
        "|---|" + "---|" * len(PRNGS),
    ]
    for r in rows:
        if "draws" not in r:
            continue
        base = rows[0].get("draws", {})
        cells = []
        for label, _, _ in PRNGS:
            mine, ref = r["draws"].get(label, {}), base.get(label, {})
            cells.append(
                " / ".join(
                    "yes" if mine.get(kind) == ref.get(kind) else "NO"
                    for kind in ("whole", "per_member")
                )
            )
        lines.append(f"| {r['devices']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _git_state() -> str:
    """The checkout measured: commit, and whether actgeo/ had changes."""
    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "actgeo"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" with uncommitted changes in actgeo/" if dirty else "")


def machine() -> dict:
    return {
        **bench_kernel.machine(),
        "device_kind": jax.devices()[0].device_kind,
        "git": _git_state(),
    }


SECTIONS = ("depth", "members", "sampling", "devices")


def run(s: Settings, sections: Sequence[str] = SECTIONS, log=None) -> dict:
    """Every requested section; returns a JSON-ready record."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    out: dict = {"machine": machine(), "settings": dataclasses.asdict(s)}
    out["other_load_cores"] = {}
    start = time.perf_counter()
    steps = (
        ("depth", "a/b. compile time and memory against depth", section_depth),
        ("members", "b. memory against members", section_members),
        ("sampling", "c. weight sampling", section_sampling),
        ("devices", "d. simulated devices", section_devices),
    )
    for name, title, section in steps:
        if name not in sections:
            continue
        log(title)
        with OtherLoad() as load:
            out[name] = section(s, log)
        out["other_load_cores"][name] = load.cores
    if "members" in out:
        out["member_slope"] = {
            p: member_slope(out["members"], p) for p in ("given", "sampled")
        }
    out["elapsed_seconds"] = time.perf_counter() - start
    return out


def markdown(record: dict) -> str:
    s = Settings(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in record["settings"].items()
        }
    )
    m = record["machine"]
    parts = [
        f"# actgeo scaling benchmark ({m['date']})",
        "",
        f"{m['cpu']}, {m['cores']} cores; jax {m['jax']} on {m['backend']} "
        f"({m['device_kind']}); float32; activation {s.activation}; times are "
        f"the best of {s.repeats} calls, compile times the best of "
        f"{min(2, s.repeats)} compilations with JAX's caches cleared; total "
        f"{record['elapsed_seconds']:.0f} s; "
        f"checkout {m.get('git', 'unknown')}.",
    ]
    loads = record.get("other_load_cores", {})

    def load(name: str) -> list[str]:
        cores = loads.get(name)
        if cores is None:
            return []
        text = f"Other processes used {cores:.2f} cores on average meanwhile"
        return ["", text + (" (a crowded run)." if cores > 0.25 else ".")]

    if "depth" in record:
        parts += ["", table_depth(record["depth"], s), *load("depth")]
        parts += ["", table_memory_depth(record["depth"], s)]
    if "members" in record:
        parts += ["", table_memory_members(record["members"], s)]
    if "sampling" in record:
        parts += ["", table_sampling(record["sampling"], s), *load("sampling")]
    if "devices" in record:
        parts += ["", table_devices(record["devices"], s), *load("devices")]
    return "\n".join(parts)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, ~1 minute")
    parser.add_argument(
        "--tiny", action="store_true", help="the smallest sizes (a smoke test)"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument("--depths", type=_ints, help="depths of sections a and b")
    parser.add_argument("--width", type=int, help="width of sections a and b")
    parser.add_argument("--members", type=int, help="members of the depth sweep")
    parser.add_argument("--member-counts", type=_ints, help="ensembles of section b")
    parser.add_argument("--sample-width", type=int, help="width of section c")
    parser.add_argument("--sample-depth", type=int, help="depth of section c")
    parser.add_argument("--sample-members", type=_ints, help="ensembles of section c")
    parser.add_argument("--devices", type=_ints, help="device counts of section d")
    parser.add_argument("--device-members", type=int, help="members of section d")
    parser.add_argument("--device-width", type=int, help="width of section d")
    parser.add_argument("--device-depth", type=int, help="depth of section d")
    parser.add_argument("--repeats", type=int, help="timed calls, the best kept")
    parser.add_argument("--activation", help="registered activation (default relu)")
    parser.add_argument("--json", type=pathlib.Path, help="also write results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sections = tuple(v for v in args.sections.split(",") if v)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}; choose from {SECTIONS}")
    args.sections = sections
    base = TINY if args.tiny else QUICK if args.quick else Settings()
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(Settings)
        if getattr(args, field.name, None) is not None
    }
    args.settings = dataclasses.replace(base, **overrides)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    record = run(args.settings, args.sections)
    print(markdown(record))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
