"""Measurement glue shared by the experiment scripts (not part of actgeo).

The scripts sample ensembles with :func:`actgeo.sample`, run
:func:`actgeo.kernels.preactivations` vmapped over members, chunk by chunk,
and reduce each chunk on the device to per-member, per-layer numbers:

* ``q^l = |z^l|^2 / N`` per input (Poole et al. 2016);
* ``1 - c^l`` per input pair, computed as ``|u - u'|^2 / 2`` from the unit
  vectors ``u = z / |z|``, which stays accurate near ``c = 1`` where
  ``1 - u.u'`` cancels;
* ``|J^l v|^2``, the squared norm of the input Jacobian applied to a tangent
  ``v``, by ``jax.jvp`` through the same kernel (forward mode).

Axis letters: ``E`` members, ``B`` inputs, ``P`` input pairs, ``D`` input
dimension, ``N`` width, ``L`` layers.
"""

from __future__ import annotations

import functools
import math
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

import actgeo
from actgeo import kernels
from actgeo.ensemble import default_memory_budget, plan_chunk

RESULTS = pathlib.Path("results/experiments")


def input_pairs(
    key: jax.Array, dim: int, q_in: Sequence[float], c_in: Sequence[float], dtype
) -> jax.Array:
    """Pairs of inputs with ``|x|^2 / D = q_in`` and cosine ``c_in``: ``(2P, D)``.

    Rows ``2p`` and ``2p + 1`` form pair ``p``; each pair lies in its own
    random plane. ``q_in`` and ``c_in`` are ``(P,)`` (or scalars, broadcast).
    """
    q_in, c_in = np.broadcast_arrays(np.asarray(q_in, float), np.asarray(c_in, float))
    n_pairs = q_in.size
    g = jax.random.normal(key, (n_pairs, dim, 2), dtype)
    basis, _ = jnp.linalg.qr(g)  # (P, D, 2): orthonormal columns per pair
    u, w = basis[..., 0], basis[..., 1]
    radius = jnp.asarray(np.sqrt(dim * q_in.ravel()), dtype)[:, None]
    c = jnp.asarray(c_in.ravel(), dtype)[:, None]
    first = radius * u
    second = radius * (c * u + jnp.sqrt(1 - c**2) * w)
    return jnp.stack([first, second], axis=1).reshape(2 * n_pairs, dim)


def inputs_at(key: jax.Array, dim: int, q_in: Sequence[float], dtype) -> jax.Array:
    """Inputs in random directions with ``|x|^2 / D = q_in``: ``(B, D)``."""
    q_in = np.asarray(q_in, float).ravel()
    g = jax.random.normal(key, (q_in.size, dim), dtype)
    unit = g / jnp.linalg.norm(g, axis=-1, keepdims=True)
    return unit * jnp.asarray(np.sqrt(dim * q_in), dtype)[:, None]


def pair_input_cosine(q1, c1, sigma_w, sigma_b):
    """Input cosine giving layer-1 correlation ``c1`` when ``q^1 = q1``.

    From ``q^1 = sigma_w^2 q_in + sigma_b^2`` and
    ``c^1 q^1 = sigma_w^2 q_in c_in + sigma_b^2``.
    """
    return (np.asarray(c1) * q1 - sigma_b**2) / (q1 - sigma_b**2)


def input_q(q1, sigma_w, sigma_b):
    """``q_in`` giving layer-1 length ``q^1 = q1``."""
    return (np.asarray(q1) - sigma_b**2) / sigma_w**2


def _unit(z):
    norm = jnp.linalg.norm(z, axis=-1, keepdims=True)
    return z / jnp.where(norm > 0, norm, jnp.ones_like(norm))


@functools.partial(jax.jit, static_argnames=("activation", "n_pairs"))
def _lengths(params, x, *, activation, n_pairs):
    def one(p):
        z = kernels.preactivations(p, x, activation)  # (L, B, N)
        q = jnp.mean(z**2, axis=-1)
        u = _unit(z[:, : 2 * n_pairs])
        one_minus_c = 0.5 * jnp.sum((u[:, 0::2] - u[:, 1::2]) ** 2, axis=-1)
        return q, one_minus_c

    return jax.vmap(one)(params)


@functools.partial(jax.jit, static_argnames=("activation",))
def _stretch(params, x, v, *, activation):
    def one(p):
        def forward(inputs):
            return kernels.preactivations(p, inputs, activation)

        z, dz = jax.jvp(forward, (x,), (v,))  # (L, B, N) each
        return jnp.mean(z**2, axis=-1), jnp.sum(dz**2, axis=-1)

    return jax.vmap(one)(params)


def _chunks(spec: actgeo.NetworkSpec, members: int, n_inputs: int, dtype) -> int:
    item = jnp.dtype(dtype).itemsize
    # Parameters three times (the flat draw, its pieces, the scaled weights),
    # plus every layer's preactivations and tangents with temporaries.
    per_member = 3 * item * spec.param_count()
    per_member += 6 * item * spec.depth * n_inputs * spec.width
    return plan_chunk(
        per_member,
        members,
        chunk_size=None,
        memory_budget=default_memory_budget(),
    )


def _run(measure, spec, members, key, n_inputs, dtype, progress, desc):
    chunk = _chunks(spec, members, n_inputs, dtype)
    n_chunks = math.ceil(members / chunk)
    outs = []
    bar = tqdm(
        range(n_chunks),
        desc=desc,
        leave=False,
        disable=not progress or n_chunks == 1,
    )
    for i in bar:
        # Every chunk has the same shape (one compilation); the last one is
        # padded with extra members that are dropped.
        index = jnp.arange(i * chunk, (i + 1) * chunk, dtype=jnp.uint32)
        params = actgeo.sample(spec, index, key=key, dtype=dtype)
        out = jax.tree.map(np.asarray, measure(params))
        outs.append(out)
    stacked = [np.concatenate(parts)[:members] for parts in zip(*outs, strict=True)]
    return tuple(stacked)


def measure_lengths(
    spec: actgeo.NetworkSpec,
    x: jax.Array,
    members: int,
    *,
    key: jax.Array,
    n_pairs: int = 0,
    dtype=jnp.float32,
    progress: bool = True,
    desc: str = "members",
) -> tuple[np.ndarray, np.ndarray]:
    """``q^l`` per input ``(E, L, B)`` and ``1 - c^l`` per pair ``(E, L, P)``.

    The first ``2 P`` rows of ``x`` are the pairs ``(0, 1), (2, 3), ...``.
    Member ``i`` depends only on ``(key, i)``.
    """
    measure = functools.partial(
        _lengths, x=jnp.asarray(x, dtype), activation=spec.activation, n_pairs=n_pairs
    )
    return _run(measure, spec, members, key, x.shape[0], dtype, progress, desc)


def measure_stretch(
    spec: actgeo.NetworkSpec,
    x: jax.Array,
    v: jax.Array,
    members: int,
    *,
    key: jax.Array,
    dtype=jnp.float32,
    progress: bool = True,
    desc: str = "members",
) -> tuple[np.ndarray, np.ndarray]:
    """``q^l`` ``(E, L, B)`` and ``|J^l v|^2`` ``(E, L, B)`` for tangents ``v``.

    ``v`` is ``(B, D)``, one tangent per input (``J^l = dz^l / dx``).
    """
    measure = functools.partial(
        _stretch,
        x=jnp.asarray(x, dtype),
        v=jnp.asarray(v, dtype),
        activation=spec.activation,
    )
    return _run(measure, spec, members, key, x.shape[0], dtype, progress, desc)


def preset_sizes(args, quick: dict, full: dict) -> dict:
    """The sizes of a run: each field of ``args`` given explicitly, else the
    preset's value (``quick`` with ``--quick``, ``full`` otherwise)."""
    preset = quick if args.quick else full
    return {
        k: v if getattr(args, k) is None else getattr(args, k)
        for k, v in preset.items()
    }


def mean_and_error(values: np.ndarray, axis: int = 0):
    """Mean and its standard error along ``axis`` (members)."""
    n = values.shape[axis]
    mean = np.mean(values, axis=axis)
    spread = np.std(values, axis=axis, ddof=1) if n > 1 else np.zeros_like(mean)
    return mean, spread / math.sqrt(n)


def save(dataset: xr.Dataset, out: pathlib.Path, name: str) -> pathlib.Path:
    """Writes ``dataset`` to ``out/name.zarr`` (replacing it); returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.zarr"
    dataset.to_zarr(path, mode="w", consolidated=False)
    return path


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with right-aligned columns."""

    def fmt(value):
        if isinstance(value, float | np.floating):
            return "nan" if not np.isfinite(value) else f"{value:.4g}"
        return str(value)

    cells = [list(header)] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def decay_window(
    gap: np.ndarray, error: np.ndarray, *, start: int, floor: float = 0.0
) -> int:
    """End (exclusive) of the layers from ``start`` where ``gap`` is measurable.

    Layers ``start, start + 1, ...`` qualify while ``gap_l`` stays above three
    times ``max(error_l, floor)``: its standard error over members, or a known
    floor such as the level it keeps at the last layers. Layers are 0-based
    indices into ``gap``.
    """
    stop = start
    while stop < gap.size and gap[stop] > 3 * max(error[stop], floor):
        stop += 1
    return stop


def decay_length(gap: np.ndarray, weight: np.ndarray, start: int, stop: int) -> float:
    """Decay length ``xi`` of ``gap`` over layers ``[start, stop)``.

    A weighted least-squares fit of ``log gap_l = a - l / xi``; ``weight`` is
    ``(L,)``, the inverse standard error of ``log gap`` (``gap / error``).
    NaN when fewer than three layers are given, a gap is not positive, or the
    gap does not decay.
    """
    segment = np.asarray(gap[start:stop], float)
    if segment.size < 3 or not np.all(segment > 0):
        return math.nan
    layers = np.arange(start, stop, dtype=float)
    slope, _ = np.polyfit(layers, np.log(segment), 1, w=weight[start:stop])
    return -1.0 / slope if slope < 0 else math.nan


def write_outputs(ds: xr.Dataset, out: pathlib.Path, name: str, plot, summary, start):
    """Saves the numbers, the figure and the table under ``out``; prints the table.

    ``plot(ds, path)`` draws the figure, ``summary(ds)`` returns the table's
    text; ``start`` is the run's ``time.perf_counter()`` at its beginning.
    """
    import time

    out.mkdir(parents=True, exist_ok=True)
    save(ds, out, name)
    plot(ds, out / f"{name}.png")
    text = summary(ds)
    (out / "table.txt").write_text(text + "\n")
    print(text)
    print(f"\nwrote {out} in {time.perf_counter() - start:.1f} s")
