"""Speed of the ensemble kernel against autodiff baselines and a dense matmul.

One run measures, side by side, on the same ensemble (the same weights, drawn
once with :func:`actgeo.sample`, and the same inputs, float32):

* ``kernel``: ``jax.jit(jax.vmap(layer_statistics))`` over all ``E`` members,
  weights given;
* ``kernel, sampling inside``: the same with :func:`actgeo.sample` inside the
  jitted call (the weights are drawn, not passed);
* ``kernel, chunks of C``: one compiled ``vmap`` over ``C`` members, called
  from a Python loop over the chunks (weights split beforehand); several
  ``C`` are tried, among them the largest power of two whose layer fits the
  L2 cache, and the best is reported;
* ``kernel, lax.map chunks of C``: the best ``C`` again, but the loop over
  chunks is ``jax.lax.map(..., batch_size=C)`` inside one jitted call;
* ``run_ensemble``: :func:`actgeo.ensemble.run_ensemble` with its defaults,
  when that function exists and accepts the call (sampling inside, histograms
  summed over members, results on the host);
* ``loop of jacfwd``: a Python loop over members calling one jitted
  per-network function (``jax.jacfwd`` of the forward pass, vmapped over
  inputs), compiled once; large ensembles time a subset of members and
  extrapolate linearly;
* ``vmap of jacfwd``: the same per-network function vmapped over all members
  under one ``jax.jit``;
* ``torch.func``: ``torch.func.vmap`` over members of ``torch.func.jacfwd``
  of the same forward pass (vmapped over inputs), on the same weights copied
  from JAX, with as many torch threads as cores; skipped with a note when
  torch cannot be imported (it is not a dependency of actgeo);
* ``matmul``: ``E x [N x N] @ [N x B(1 + D)]`` for each of the ``L - 1``
  layers, chained under ``lax.scan`` (whole ensemble and the best chunk); the
  machine's reference speed for the kernel's propagation.

The baselines compute the per-neuron ``delta_in = |z| / |J row|`` of every
layer, reduced to its mean ``log10``, and ``q``; they build no histograms and
none of the kernel's other statistics, so they do less work than the kernel.

Every method is credited with the kernel's propagation FLOPs,
``2 N^2 B (1 + D) (L - 1) E``, and throughput counts members x layers x inputs
per second. Compile time (``lower`` plus ``compile``) is reported apart; the
time is the best of several blocked calls of the compiled executable.

Axis letters: ``E`` members, ``N`` width, ``L`` layers, ``B`` inputs, ``D``
input dimension.

Run ``python benchmarks/bench_kernel.py --help``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import actgeo
from actgeo.kernels import Bins, StatsConfig, layer_statistics

DEFAULT_SHAPES = ((256, 128, 32, 16, 2), (64, 512, 16, 8, 8), (1024, 64, 64, 32, 2))
QUICK_SHAPES = ((32, 64, 8, 8, 2), (16, 128, 6, 4, 4))
DEFAULT_CHUNKS = (1, 16, 32, 64)
QUICK_CHUNKS = (8,)
BYTES = 4  # float32
GIB = 2.0**30


@dataclasses.dataclass(frozen=True)
class Shape:
    members: int  # E
    width: int  # N
    depth: int  # L
    inputs: int  # B
    input_dim: int  # D

    @property
    def label(self) -> str:
        return (
            f"E={self.members}, N={self.width}, L={self.depth}, "
            f"B={self.inputs}, D={self.input_dim}"
        )

    @property
    def columns(self) -> int:
        """Columns one layer's matmul carries per member: ``B (1 + D)``."""
        return self.inputs * (1 + self.input_dim)

    def flops(self) -> float:
        """Propagation FLOPs: ``2 N^2 B (1 + D) (L - 1) E``."""
        return 2.0 * self.width**2 * self.columns * (self.depth - 1) * self.members

    def layer_bytes(self) -> int:
        """One member's working set for one layer: weights, columns in and out."""
        return BYTES * (self.width**2 + 2 * self.width * self.columns)


@dataclasses.dataclass
class Result:
    method: str
    seconds: float  # best of the timed calls, for the whole ensemble
    compile_seconds: float | None
    memory_gib: float | None = None  # XLA's estimate for one compiled call
    note: str = ""
    flops: bool = True  # whether GFLOP/s is meaningful for this row
    extra: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------
# Timing


def _block(tree):
    return jax.block_until_ready(tree)


def compile_timed(fn: Callable, *args) -> tuple[Callable, float]:
    """``jax.jit(fn)`` lowered and compiled for ``args``; returns (exe, seconds)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def memory_gib(compiled) -> float | None:
    """Arguments, outputs and temporaries of one call, from XLA, in GiB."""
    try:
        m = compiled.memory_analysis()
        total = (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            + m.temp_size_in_bytes
            - m.alias_size_in_bytes
        )
    except (AttributeError, NotImplementedError, TypeError):
        return None
    return total / GIB


@dataclasses.dataclass(frozen=True)
class Repeats:
    most: int = 3
    least: int = 2
    budget: float = 6.0


def best_of(run: Callable[[], object], policy: Repeats):
    """Best wall time of blocked calls of ``run`` (already compiled).

    Calls ``run`` at least ``policy.least`` times and at most ``policy.most``,
    stopping once ``policy.budget`` seconds have been spent. The previous
    call's output is released before the next call starts. Returns (seconds,
    output of the last call).
    """
    times = []
    out = None
    while len(times) < policy.most:
        out = None
        start = time.perf_counter()
        out = _block(run())
        times.append(time.perf_counter() - start)
        if len(times) >= policy.least and sum(times) >= policy.budget:
            break
    return min(times), out


def time_call(exe: Callable, policy: Repeats, *args):
    """:func:`best_of` for calls of ``exe(*args)``."""
    return best_of(lambda: exe(*args), policy)


# ----------------------------------------------------------------------------
# The methods


def kernel_fn(activation: str, config: StatsConfig):
    """``vmap(layer_statistics)`` over members; ``x (B, D)`` shared by all."""

    def run(params, x):
        one = functools.partial(layer_statistics, activation=activation, config=config)
        return jax.vmap(one, in_axes=(0, None))(params, x)

    return run


def network_stats_fn(activation: str):
    """Baseline statistics of one network with ``jax.jacfwd``.

    Returns a function of one network's parameters and ``x (B, D)`` giving
    ``q (L,)`` and the mean over inputs and neurons of ``log10 delta_in``
    (finite values only), ``delta_in = |z_i| / |dz_i/dx|``, per layer.
    """
    act = actgeo.get_activation(activation)

    def run(params, x):
        def forward(xi):  # (D,) -> z of every layer, (L, N)
            z1 = params.w_in @ xi + params.b_in

            def body(z, layer):
                w, b = layer
                z = w @ act.fn(z) + b
                return z, z

            _, zs = jax.lax.scan(body, z1, (params.w, params.b))
            zs = jnp.concatenate([z1[None], zs], axis=0)
            return zs, zs

        jac, z = jax.vmap(jax.jacfwd(forward, has_aux=True))(x)  # (B,L,N,D), (B,L,N)
        n = z.shape[-1]
        q = jnp.mean(jnp.sum(z * z, axis=-1), axis=0) / n
        log_delta = jnp.log10(jnp.abs(z)) - jnp.log10(jnp.linalg.norm(jac, axis=-1))
        finite = jnp.isfinite(log_delta)
        total = jnp.sum(jnp.where(finite, log_delta, 0.0), axis=(0, 2))
        count = jnp.sum(finite, axis=(0, 2))
        return q, total / count

    return run


# Activations torch can compute with the same formula as actgeo's registry.
_TORCH_ACTIVATIONS = {
    "relu": "relu",
    "leaky_relu": "leaky_relu",
    "elu": "elu",
    "selu": "selu",
    "gelu": "gelu",
    "gelu_tanh": "gelu_tanh",
    "silu": "silu",
    "softplus": "softplus",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "erf": "erf",
    "hard_tanh": "hardtanh",
    "linear": "linear",
}


def torch_stats_fn(activation: str):
    """The baseline statistics of :func:`network_stats_fn` with ``torch.func``.

    Returns ``(run, torch)``: ``run(params, x)`` takes torch tensors with a
    leading member axis (``w_in (E, N, D)``, ``b_in (E, N)``, ``w (E, L-1, N,
    N)``, ``b (E, L-1, N)``) and ``x (B, D)``, and gives ``q (E, L)`` and the
    mean finite ``log10 delta_in (E, L)``. Raises ImportError without torch
    and KeyError for an activation torch has no counterpart for.
    """
    import torch
    import torch.nn.functional as tf

    name = _TORCH_ACTIVATIONS[activation]
    act = {
        "relu": torch.relu,
        "leaky_relu": lambda z: tf.leaky_relu(
            z, dict(actgeo.get_activation("leaky_relu").parameters).get("slope", 0.01)
        ),
        "elu": tf.elu,
        "selu": torch.selu,
        "gelu": tf.gelu,
        "gelu_tanh": lambda z: tf.gelu(z, approximate="tanh"),
        "silu": tf.silu,
        "softplus": tf.softplus,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "erf": torch.erf,
        "hardtanh": tf.hardtanh,
        "linear": lambda z: z,
    }[name]

    def network(w_in, b_in, w, b, x):
        def forward(xi):  # (D,) -> z of every layer, (L, N)
            z = w_in @ xi + b_in
            zs = [z]
            for layer in range(w.shape[0]):
                z = w[layer] @ act(z) + b[layer]
                zs.append(z)
            zs = torch.stack(zs)
            return zs, zs

        jac, z = torch.func.vmap(torch.func.jacfwd(forward, has_aux=True))(x)
        n = z.shape[-1]
        q = torch.mean(torch.sum(z * z, dim=-1), dim=0) / n
        log_delta = torch.log10(torch.abs(z)) - torch.log10(
            torch.linalg.vector_norm(jac, dim=-1)
        )
        finite = torch.isfinite(log_delta)
        total = torch.sum(torch.where(finite, log_delta, 0.0), dim=(0, 2))
        count = torch.sum(finite, dim=(0, 2))
        return q, total / count

    members = torch.func.vmap(network, in_dims=(0, 0, 0, 0, None))

    def run(params, x):
        with torch.no_grad():
            return members(*params, x)

    return run, torch


def _torch_row(params, x, activation, policy, kernel_q, kernel_delta, checks, log):
    """The ``torch.func`` row, or None with a message when torch is missing."""
    try:
        run, torch = torch_stats_fn(activation)
    except ImportError:
        log("  torch.func skipped: torch is not importable")
        return None
    except KeyError:
        log(f"  torch.func skipped: no torch counterpart of {activation!r}")
        return None
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    if params.w_out is not None:
        log("  torch.func skipped: networks with a readout are not supported")
        return None
    tensors = tuple(
        torch.from_numpy(np.array(a, np.float32))
        for a in (params.w_in, params.b_in, params.w, params.b)
    )
    tx = torch.from_numpy(np.array(x, np.float32))
    start = time.perf_counter()
    run(tensors, tx)  # the first call (torch.func traces in Python every call)
    first = time.perf_counter() - start
    seconds, (q, delta) = best_of(lambda: run(tensors, tx), policy)
    checks["torch.func vs kernel: q, max rel diff"] = _rel_diff(q.numpy(), kernel_q)
    checks["torch.func vs kernel: mean log10 delta_in, max abs diff"] = _abs_diff(
        delta.numpy(), kernel_delta
    )
    return Result(
        "torch.func vmap of jacfwd",
        seconds,
        None,
        note=f"torch {torch.__version__}, {threads} threads, eager; first call "
        f"{first:.2f} s",
        extra={"torch": torch.__version__, "threads": threads, "first_call": first},
    )


def matmul_chain(w_layers, cols):
    """``cols <- w[l] @ cols`` for every layer: ``w_layers (L-1, E, N, N)``,
    ``cols (E, N, K)``."""

    def body(c, w):
        return jnp.einsum("enm,emk->enk", w, c), None

    out, _ = jax.lax.scan(body, cols, w_layers)
    return out


def kernel_summary(stats) -> tuple[np.ndarray, np.ndarray]:
    """``q (E, L)`` and mean ``log10 delta_in (E, L)`` from the kernel's output."""
    q = np.asarray(stats.q, np.float64)
    counts = np.asarray(stats.delta_in.counts, np.float64).sum(-1)
    mean = np.asarray(stats.delta_in.log_sum, np.float64) / counts
    return q, mean


def _rel_diff(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def _abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _split(tree, size: int, axis: int = 0) -> list:
    """Slices of ``size`` along ``axis`` of every leaf (the last may be shorter)."""
    total = jax.tree.leaves(tree)[0].shape[axis]
    out = []
    for start in range(0, total, size):
        stop = min(start + size, total)
        out.append(
            jax.tree.map(
                lambda a, s=start, t=stop: jax.lax.slice_in_dim(a, s, t, axis=axis),
                tree,
            )
        )
    return _block(out)


def _compile_per_shape(fn, calls: Sequence[tuple]):
    """Compiles ``fn`` once per distinct argument shapes among ``calls``.

    Returns a function that calls the right executable, the seconds spent,
    and the largest memory estimate of one call.
    """
    exes, seconds, memory = {}, 0.0, None

    def shapes(args):
        return tuple(a.shape for a in jax.tree.leaves(args))

    for args in calls:
        if shapes(args) not in exes:
            exes[shapes(args)], spent = compile_timed(fn, *args)
            seconds += spent
            gib = memory_gib(exes[shapes(args)])
            if gib is not None:
                memory = gib if memory is None else max(memory, gib)

    def call(*args):
        return exes[shapes(args)](*args)

    return call, seconds, memory


def _run_ensemble_row(spec, x, key, e, policy, kernel_q, checks) -> Result | None:
    """``actgeo.ensemble.run_ensemble`` with its defaults, if it exists and works.

    The ensemble runner is not part of what this script depends on: any error
    skips the row with a message.
    """
    try:
        from actgeo.ensemble import run_ensemble
    except ImportError:
        return None

    def run():
        return run_ensemble(spec, x, members=e, key=key)

    try:
        start = time.perf_counter()
        result = _block(run())
        first = time.perf_counter() - start
        seconds, result = best_of(run, policy)
        q = np.asarray(result.scalars["q"])
    except Exception as err:  # the runner is under development: report, go on
        print(f"  run_ensemble skipped: {type(err).__name__}: {err}", file=sys.stderr)
        return None
    checks["run_ensemble vs kernel: q, max rel diff"] = _rel_diff(q, kernel_q)
    return Result(
        "actgeo.ensemble.run_ensemble, defaults",
        seconds,
        max(first - seconds, 0.0),
        note="samples inside, sums histograms over members, returns to the host; "
        "compile = first call minus best",
    )


def run_shape(shape: Shape, args, log) -> dict:
    """Every method on one shape; returns a JSON-ready record."""
    e = shape.members
    spec = actgeo.NetworkSpec(
        input_dim=shape.input_dim,
        width=shape.width,
        depth=shape.depth,
        activation=args.activation,
    )
    config = StatsConfig() if args.bins is None else StatsConfig(Bins(count=args.bins))
    key = jax.random.key(args.seed)
    x = jax.random.normal(
        jax.random.key(args.seed + 1), (shape.inputs, shape.input_dim)
    )
    x = _block(x / math.sqrt(shape.input_dim))
    results: list[Result] = []
    checks: dict[str, float] = {}
    policy = Repeats(args.repeats, min(args.min_repeats, args.repeats), args.budget)
    # The chunk sweep and run_ensemble (whose first call compiles) may stop
    # after one timed call when that call alone exceeds the budget.
    screening = dataclasses.replace(policy, least=1)
    kernel = kernel_fn(args.activation, config)

    # (a') Sampling inside the jitted call; first, while no weights are held.
    sampled_row, sampled_q = None, None
    if not args.no_sample_inside:

        def sampled(key, x):
            return kernel(actgeo.sample(spec, e, key=key), x)

        exe, comp = compile_timed(sampled, key, x)
        seconds, stats = time_call(exe, policy, key, x)
        sampled_q, _ = kernel_summary(stats)
        del stats
        sampled_row = Result(
            "kernel (one vmap), sampling inside", seconds, comp, memory_gib(exe)
        )
        log(f"  kernel with sampling: {seconds:.3f} s (compile {comp:.1f} s)")

    # The weights: actgeo.sample under jax.jit, compiled ahead and called once.
    exe, comp = compile_timed(lambda k: actgeo.sample(spec, e, key=k), key)
    start = time.perf_counter()
    params = _block(exe(key))
    seconds = time.perf_counter() - start
    normals = e * spec.param_count()
    results.append(
        Result(
            "actgeo.sample alone (one call)",
            seconds,
            comp,
            memory_gib(exe),
            note=f"{normals / seconds / 1e6:.0f} M normals/s",
            flops=False,
        )
    )
    log(f"  sampled {normals / 1e6:.0f} M parameters in {seconds:.2f} s")

    # (a) The kernel, whole ensemble, weights given.
    exe, comp = compile_timed(kernel, params, x)
    seconds, stats = time_call(exe, policy, params, x)
    kernel_q, kernel_delta = kernel_summary(stats)
    del stats
    kernel_seconds = seconds
    results.append(
        Result("kernel (one vmap), weights given", seconds, comp, memory_gib(exe))
    )
    log(f"  kernel: {seconds:.3f} s (compile {comp:.1f} s)")
    if sampled_row is not None:
        results.append(sampled_row)
        checks["sampling inside vs given: q, max rel diff"] = _rel_diff(
            sampled_q, kernel_q
        )

    # (a'') Chunks of members, Python loop over chunks, weights split beforehand.
    l2 = args.l2_kib * 1024
    l2_chunk = 2 ** math.floor(math.log2(max(l2 // shape.layer_bytes(), 1)))
    candidates = sorted({*args.chunks, l2_chunk})
    candidates = [c for c in candidates if c < e]
    chunk_rows = []
    for c in candidates:
        chunks = _split(params, c)
        call, comp, memory = _compile_per_shape(kernel, [(ch, x) for ch in chunks])

        def run_chunks(chunks=chunks, call=call):
            return [call(ch, x) for ch in chunks]

        seconds, _ = best_of(run_chunks, screening)
        del chunks, call
        fits = "fits" if c * shape.layer_bytes() <= l2 else "exceeds"
        chunk_rows.append(
            Result(
                f"kernel, chunks of {c} (Python loop)",
                seconds,
                comp,
                memory,
                note=f"one layer {c * shape.layer_bytes() / 2**20:.2f} MiB, {fits} "
                "L2; memory per chunk",
                extra={"chunk": c},
            )
        )
        log(f"  kernel, chunks of {c}: {seconds:.3f} s (compile {comp:.1f} s)")
    best_chunk = None
    if chunk_rows:
        best = min(chunk_rows, key=lambda r: r.seconds)
        best_chunk = best.extra["chunk"]
        tried = ", ".join(f"{r.extra['chunk']}: {r.seconds:.3g} s" for r in chunk_rows)
        best.note += f"; best of chunks tried ({tried})"
        results.append(best)

        # The same chunks, looped by lax.map inside one call.
        def mapped(params, x):
            one = functools.partial(
                layer_statistics, x=x, activation=args.activation, config=config
            )
            return jax.lax.map(one, params, batch_size=best_chunk)

        exe, comp = compile_timed(mapped, params, x)
        seconds, _ = time_call(exe, policy, params, x)
        results.append(
            Result(
                f"kernel, lax.map chunks of {best_chunk} (one jit)",
                seconds,
                comp,
                memory_gib(exe),
                extra={"chunk": best_chunk},
            )
        )
        log(f"  kernel, lax.map chunks of {best_chunk}: {seconds:.3f} s")

    if not args.no_run_ensemble:
        row = _run_ensemble_row(spec, x, key, e, screening, kernel_q, checks)
        if row is not None:
            results.append(row)
            log(f"  run_ensemble: {row.seconds:.3f} s")

    # (b) Python loop over members, one jitted jacfwd function.
    per_network = network_stats_fn(args.activation)
    subset = min(e, args.loop_members)
    members = _block([jax.tree.map(lambda a, i=i: a[i], params) for i in range(subset)])
    exe, comp = compile_timed(per_network, members[0], x)

    def run_loop(exe=exe, members=members):
        return [exe(m, x) for m in members]

    seconds, outs = best_of(run_loop, policy)
    scale = e / subset
    q = np.stack([np.asarray(o[0]) for o in outs])
    delta = np.stack([np.asarray(o[1]) for o in outs])
    checks["jacfwd loop vs kernel: q, max rel diff"] = _rel_diff(q, kernel_q[:subset])
    checks["jacfwd loop vs kernel: mean log10 delta_in, max abs diff"] = _abs_diff(
        delta, kernel_delta[:subset]
    )
    note = "memory per member"
    if subset < e:
        note = f"timed {subset} of {e} members, x {scale:g} (linear); " + note
    results.append(
        Result(
            "loop over members of jit(jacfwd)",
            seconds * scale,
            comp,
            memory_gib(exe),
            note=note,
            extra={"timed_members": subset, "timed_seconds": seconds},
        )
    )
    log(f"  loop of jacfwd: {seconds * scale:.3f} s ({note})")
    del members, outs

    # (c) vmap of jacfwd over the whole ensemble, one jit.
    vmapped = jax.vmap(per_network, in_axes=(0, None))
    exe, comp = compile_timed(vmapped, params, x)
    seconds, (q, delta) = time_call(exe, policy, params, x)
    checks["vmap of jacfwd vs kernel: q, max rel diff"] = _rel_diff(q, kernel_q)
    checks["vmap of jacfwd vs kernel: mean log10 delta_in, max abs diff"] = _abs_diff(
        delta, kernel_delta
    )
    results.append(Result("vmap of jacfwd (one jit)", seconds, comp, memory_gib(exe)))
    log(f"  vmap of jacfwd: {seconds:.3f} s (compile {comp:.1f} s)")
    del q, delta

    # (c') torch.func: vmap over members of jacfwd, same weights and inputs.
    if not args.no_torch:
        row = _torch_row(
            params, x, args.activation, policy, kernel_q, kernel_delta, checks, log
        )
        if row is not None:
            results.append(row)
            log(f"  torch.func: {row.seconds:.3f} s")

    # (d) Dense batched matmul with the propagation's FLOPs and shapes. Weights
    # layer-major (L-1, E, N, N), divided by sigma_w so that the columns keep
    # their norm through depth (no overflow, no denormals).
    w_layers = _block(jnp.swapaxes(params.w, 0, 1) / spec.sigma_w)
    del params
    cols = jax.random.normal(
        jax.random.key(args.seed + 2), (e, shape.width, shape.columns)
    )
    matmul_rows = []
    exe, comp = compile_timed(matmul_chain, w_layers, cols)
    seconds, _ = time_call(exe, policy, w_layers, cols)
    matmul_rows.append(Result("matmul, whole ensemble", seconds, comp, memory_gib(exe)))
    log(f"  matmul: {seconds:.3f} s")
    if best_chunk is not None:
        pairs = list(
            zip(
                _split(w_layers, best_chunk, axis=1),
                _split(cols, best_chunk),
                strict=True,
            )
        )
        call, comp, memory = _compile_per_shape(matmul_chain, pairs)

        def run_matmul_chunks(pairs=pairs, call=call):
            return [call(w, c) for w, c in pairs]

        seconds, _ = best_of(run_matmul_chunks, policy)
        matmul_rows.append(
            Result(
                f"matmul, chunks of {best_chunk} (Python loop)",
                seconds,
                comp,
                memory,
                note="memory per chunk",
            )
        )
        log(f"  matmul, chunks of {best_chunk}: {seconds:.3f} s")
        del pairs, call
    results.extend(matmul_rows)
    reference = min(matmul_rows, key=lambda r: r.seconds)

    return {
        "shape": dataclasses.asdict(shape),
        "label": shape.label,
        "flops": shape.flops(),
        "bins": config.bins.count,
        "reference_matmul": reference.method,
        "reference_gflops": shape.flops() / reference.seconds / 1e9,
        "kernel_seconds": kernel_seconds,
        "results": [dataclasses.asdict(r) for r in results],
        "checks": checks,
    }


# ----------------------------------------------------------------------------
# Reporting


def _fmt_seconds(s: float) -> str:
    return f"{s:.3g}" if s < 100 else f"{s:.0f}"


# Dense (no sparsity) peak TFLOP/s from NVIDIA's datasheets: float32 on the
# CUDA cores and TF32 on the tensor cores (which XLA may use for float32
# matmuls at the default precision). Matched in order against device_kind.
KNOWN_PEAKS = (
    ("H200", {"float32": 67.0, "tf32": 494.7}),
    ("H100 PCIe", {"float32": 51.2, "tf32": 378.0}),
    ("H100", {"float32": 67.0, "tf32": 494.7}),
    ("A100", {"float32": 19.5, "tf32": 156.0}),
)


def device_peak(kind: str | None = None) -> dict:
    """``{"kind", "float32", "tf32"}`` peaks of a device, ``None`` if unknown."""
    kind = jax.devices()[0].device_kind if kind is None else kind
    for name, peaks in KNOWN_PEAKS:
        if name.lower() in kind.lower():
            return {"kind": kind, **peaks}
    return {"kind": kind, "float32": None, "tf32": None}


def _peak_text(peak: dict) -> str:
    if peak["float32"] is None:
        return f"Device {peak['kind']}: peak unknown."
    return (
        f"Device {peak['kind']}: peak {peak['float32']:g} TFLOP/s float32, "
        f"{peak['tf32']:g} TF32 (dense, datasheet)."
    )


def _of_peak(tflops: float, peak: float | None) -> str:
    return "unknown" if peak is None else f"{tflops / peak:.1%}"


def markdown_table(record: dict, peak: dict | None = None) -> str:
    shape = Shape(**record["shape"])
    throughput_unit = shape.members * shape.depth * shape.inputs
    kernel = record["kernel_seconds"]
    ref = record["reference_gflops"]
    lines = [
        f"### {record['label']}",
        "",
        f"Propagation: {record['flops'] / 1e9:.1f} GFLOP; reference: "
        f"{record['reference_matmul']}, {ref:.1f} GFLOP/s.{_load_text(record)}",
        "",
        "| method | time (s) | compile (s) | M member-layer-inputs/s "
        "| time / kernel | GFLOP/s | of matmul | XLA memory (GiB) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if peak is not None:
        lines[2] += " " + _peak_text(peak)
        lines[4] = lines[4].replace(
            "| note |", "| TFLOP/s | of float32 peak | of TF32 peak | note |"
        )
        lines[5] += "---|---|---|"
    for r in record["results"]:
        t = r["seconds"]
        comp = "" if r["compile_seconds"] is None else f"{r['compile_seconds']:.2f}"
        if r["flops"]:
            gflops = record["flops"] / t / 1e9
            rate = f"{throughput_unit / t / 1e6:.3g}"
            ratio = f"{t / kernel:.2f}"
            gf, frac = f"{gflops:.1f}", f"{gflops / ref:.0%}"
        else:
            rate = ratio = gf = frac = ""
            comp = f"{r['compile_seconds']:.2f}" if r["compile_seconds"] else ""
        memory = "" if r["memory_gib"] is None else f"{r['memory_gib']:.2g}"
        peak_cells = ""
        if peak is not None:
            if r["flops"]:
                tflops = record["flops"] / t / 1e12
                peak_cells = (
                    f"{tflops:.3g} | {_of_peak(tflops, peak['float32'])} "
                    f"| {_of_peak(tflops, peak['tf32'])} | "
                )
            else:
                peak_cells = " |  |  | "
        lines.append(
            f"| {r['method']} | {_fmt_seconds(t)} | {comp} | {rate} | {ratio} "
            f"| {gf} | {frac} | {memory} | {peak_cells}{r['note']} |"
        )
    if record["checks"]:
        lines += ["", "Agreement (same statistics on the same ensemble):", ""]
        lines += [f"- {k}: {v:.2e}" for k, v in record["checks"].items()]
    return "\n".join(lines)


class OtherLoad:
    """CPU time that other processes took while a block ran (Linux ``/proc``).

    Shared cores make every time here noisy; this says how much of the
    machine something else used, so a reader can tell a quiet run from a
    crowded one.
    """

    def __enter__(self):
        self._start = self._sample()
        return self

    def __exit__(self, *exc):
        end = self._sample()
        self.cores = None
        if self._start is not None and end is not None:
            wall = end[0] - self._start[0]
            busy = end[1] - self._start[1]
            own = end[2] - self._start[2]
            self.cores = max(busy - own, 0.0) / wall if wall > 0 else None
        return False

    @staticmethod
    def _sample():
        try:
            fields = pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()
            ticks = [int(v) for v in fields[1:9]]
        except (OSError, ValueError, IndexError):
            return None
        # user nice system idle iowait irq softirq steal
        busy = sum(ticks) - ticks[3] - ticks[4]
        own = os.times()
        return (
            time.perf_counter(),
            busy / os.sysconf("SC_CLK_TCK"),
            own.user + own.system,
        )


def _load_text(record: dict) -> str:
    cores = record.get("other_load_cores")
    if cores is None:
        return ""
    text = f" Other processes used {cores:.2f} cores on average meanwhile"
    return text + (" (a crowded run: compare with care)." if cores > 0.25 else ".")


def _l2_kib() -> int:
    """Per-core L2 size from sysfs, or 1024 KiB if it cannot be read."""
    base = pathlib.Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip()
                if size.endswith("K"):
                    return int(size[:-1])
                if size.endswith("M"):
                    return int(size[:-1]) * 1024
        except (OSError, ValueError):
            continue
    return 1024


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------
# Command line


def _shape(text: str) -> Shape:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--shape: expected E,N,L,B,D, got {text!r}"
        ) from err
    if len(values) != 5 or min(values) < 1 or values[2] < 2:
        raise argparse.ArgumentTypeError(
            "--shape: expected five positive integers E,N,L,B,D with L >= 2, "
            f"got {text!r}"
        )
    return Shape(*values)


def _chunks(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--chunks: expected integers, got {text!r}"
        ) from err
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"--chunks: expected positive sizes, got {text!r}"
        )
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Defaults: 256,128,32,16,2 64,512,16,8,8 1024,64,64,32,2.",
    )
    parser.add_argument(
        "--shape",
        type=_shape,
        action="append",
        metavar="E,N,L,B,D",
        help="a shape to benchmark (repeat for several); default: "
        + "; ".join(",".join(map(str, s)) for s in DEFAULT_SHAPES),
    )
    parser.add_argument(
        "--quick", action="store_true", help="small shapes, 2 repeats: a smoke run"
    )
    parser.add_argument("--activation", default="relu", help="registered activation")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="most timed calls per method, the best kept (default 3; --quick 2)",
    )
    parser.add_argument(
        "--min-repeats", type=int, default=2, help="fewest timed calls per method"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=6.0,
        help="seconds per method after which no more calls are made, once "
        "--min-repeats calls are done",
    )
    parser.add_argument(
        "--chunks",
        type=_chunks,
        default=None,
        help="member chunk sizes to try, comma separated (default 1,16,32,64); the "
        "largest power of two whose layer fits L2 is always added",
    )
    parser.add_argument(
        "--l2-kib", type=int, default=None, help="L2 cache per core (default: sysfs)"
    )
    parser.add_argument(
        "--loop-members",
        type=int,
        default=256,
        help="members timed by the jacfwd loop; more are extrapolated linearly",
    )
    parser.add_argument(
        "--no-sample-inside",
        action="store_true",
        help="skip the kernel with sampling inside the jitted call",
    )
    parser.add_argument(
        "--no-run-ensemble",
        action="store_true",
        help="skip the actgeo.ensemble.run_ensemble row",
    )
    parser.add_argument(
        "--peak",
        action="store_true",
        help="add TFLOP/s against the device's datasheet peak (float32 and TF32; "
        "'unknown' for devices not in KNOWN_PEAKS)",
    )
    parser.add_argument(
        "--no-torch",
        action="store_true",
        help="skip the torch.func row (skipped anyway when torch is missing)",
    )
    parser.add_argument(
        "--bins",
        type=int,
        default=None,
        help="histogram bins of the kernel (default: the library's StatsConfig)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=pathlib.Path, help="also write results here")
    args = parser.parse_args(argv)
    if args.shape is None:
        args.shape = [
            Shape(*s) for s in (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
        ]
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if args.chunks is None:
        args.chunks = QUICK_CHUNKS if args.quick else DEFAULT_CHUNKS
    if args.l2_kib is None:
        args.l2_kib = _l2_kib()
    if min(args.repeats, args.min_repeats, args.loop_members) < 1:
        parser.error("--repeats, --min-repeats and --loop-members must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str):
        print(message, file=sys.stderr, flush=True)

    info = machine()
    log(
        f"{info['cpu']}, {info['cores']} cores, L2 {args.l2_kib} KiB, jax {info['jax']}"
    )
    records = []
    start = time.perf_counter()
    for shape in args.shape:
        log(f"{shape.label}")
        with OtherLoad() as load:
            record = run_shape(shape, args, log)
        record["other_load_cores"] = load.cores
        records.append(record)
    elapsed = time.perf_counter() - start

    print(f"# actgeo kernel benchmark ({info['date']})")
    print()
    print(
        f"{info['cpu']}, {info['cores']} cores, L2 {args.l2_kib} KiB per core; "
        f"jax {info['jax']} on {info['backend']}; float32; activation "
        f"{args.activation}; {records[0]['bins'] if records else '?'} histogram "
        f"bins; best of up to {args.repeats} calls (at least {args.min_repeats}; "
        f"no more past {args.budget:g} s a method) after compiling ahead of "
        f"time; total {elapsed:.0f} s."
    )
    print()
    print(
        "time / kernel: each method's time over the one-vmap kernel's (above 1: "
        "slower than the kernel). GFLOP/s credits every method with the "
        "kernel's propagation FLOPs, 2 N^2 B (1+D) (L-1) E; 'of matmul' divides "
        "by the faster matmul row."
    )
    for record in records:
        print()
        print(markdown_table(record, device_peak() if args.peak else None))
    if args.json:
        payload = {
            "machine": info,
            "peak": device_peak() if args.peak else None,
            "settings": {
                "activation": args.activation,
                "repeats": args.repeats,
                "min_repeats": args.min_repeats,
                "budget_seconds": args.budget,
                "chunks": list(args.chunks),
                "l2_kib": args.l2_kib,
                "loop_members": args.loop_members,
                "bins": args.bins,
                "seed": args.seed,
            },
            "elapsed_seconds": elapsed,
            "shapes": records,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
