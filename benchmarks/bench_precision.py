"""What faster matmuls do to the statistics: the error of each mode, measured.

One run measures the same ensemble (``actgeo.sample``, float32) with
:func:`actgeo.kernels.layer_statistics` in several matmul modes and reports
how far each moves the statistics from the full-precision default:

* ``default (HIGHEST)``: the library's default, the reference;
* ``fast_matmuls() on this device``: the device's own fast mode (TF32 on
  NVIDIA GPUs since Ampere, bfloat16 passes on TPUs; identical on CPUs);
* ``TF32 emulated`` and ``bfloat16 emulated``: every matmul's operands
  rounded to nearest (even) at 10 or 7 mantissa bits before a float32
  product, which is what those units do, on any device;
* ``float64``: the same networks in float64 (with ``--float64``), which
  shows the error of float32 itself.

The emulation rewrites the traced program: every ``dot_general`` of float32
operands, inside ``scan``, ``while``, ``cond`` and nested ``jit`` alike, gets
its operands rounded. Reported per statistic: the largest difference over
layers of the 1%, 50% and 99% quantiles of ``log10 delta_in`` and
``log10 delta_rep``, of the mean ``log10`` distances, and the largest
relative difference of ``q`` and of the Jacobian norm.

Run ``python benchmarks/bench_precision.py --help``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
from jax import lax

import actgeo
from actgeo.kernels import histogram, layer_statistics
from actgeo.precision import fast_matmuls

QUANTILES = (0.01, 0.5, 0.99)


def round_mantissa(x: jax.Array, bits: int) -> jax.Array:
    """``x`` (float32) rounded to nearest, ties to even, at ``bits`` mantissa bits."""
    if x.dtype != jnp.float32:
        return x
    drop = 23 - bits
    u = lax.bitcast_convert_type(x, jnp.uint32)
    lsb = (u >> drop) & jnp.uint32(1)
    u = (u + jnp.uint32((1 << (drop - 1)) - 1) + lsb) & jnp.uint32(
        (0xFFFFFFFF << drop) & 0xFFFFFFFF
    )
    rounded = lax.bitcast_convert_type(u, jnp.float32)
    return jnp.where(jnp.isfinite(x), rounded, x)


def _rewrite_closed(closed: jcore.ClosedJaxpr, bits: int) -> jcore.ClosedJaxpr:
    avals = [
        jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars
    ]
    return jax.make_jaxpr(
        functools.partial(_evaluate, closed.jaxpr, closed.consts, bits)
    )(*avals)


def _evaluate(jaxpr: jcore.Jaxpr, consts, bits: int, *args):
    env = {}

    def read(var):
        return var.val if isinstance(var, jcore.Literal) else env[var]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        params = dict(eqn.params)
        if eqn.primitive.name == "dot_general":
            invals = [round_mantissa(v, bits) for v in invals]
        for name in ("jaxpr", "call_jaxpr", "body_jaxpr", "cond_jaxpr"):
            if isinstance(params.get(name), jcore.ClosedJaxpr):
                params[name] = _rewrite_closed(params[name], bits)
        if "branches" in params:
            params["branches"] = tuple(
                _rewrite_closed(b, bits) for b in params["branches"]
            )
        bind_params = eqn.primitive.get_bind_params(params)
        if isinstance(bind_params, tuple):  # older JAX: (subfuns, params)
            subfuns, bind_params = bind_params
            outs = eqn.primitive.bind(*subfuns, *invals, **bind_params)
        else:
            outs = eqn.primitive.bind(*invals, **bind_params)
        if not eqn.primitive.multiple_results:
            outs = [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def emulate_matmuls(fn, bits: int):
    """``fn`` with every float32 matmul's operands rounded to ``bits`` bits."""

    def wrapped(*args):
        flat, tree = jax.tree.flatten(args)
        closed = jax.make_jaxpr(lambda *leaves: fn(*jax.tree.unflatten(tree, leaves)))(
            *flat
        )
        out_tree = jax.tree.structure(jax.eval_shape(fn, *args))
        outs = _evaluate(closed.jaxpr, closed.consts, bits, *flat)
        return jax.tree.unflatten(out_tree, outs)

    return wrapped


def _summaries(stats, bins) -> dict[str, np.ndarray]:
    """Statistics of the whole ensemble: ``(L, ...)`` arrays."""
    out = {}
    for name in ("delta_in", "delta_rep"):
        summary = getattr(stats, name)
        counts = np.asarray(summary.counts, np.int64).sum(0)
        out[f"{name} quantiles"] = histogram.quantiles(counts, bins, QUANTILES)
        pooled = jax.tree.map(lambda a: np.asarray(a).sum(0), summary)
        out[f"{name} mean log10"] = histogram.mean(pooled)
    out["q"] = np.asarray(stats.q, np.float64).mean(0)
    out["log10 |J|"] = np.asarray(stats.log10_jacobian_norm, np.float64).mean(0)
    return out


def _difference(a: dict, b: dict) -> dict[str, float]:
    diff = {}
    for name, value in a.items():
        other = b[name]
        if name == "q":
            diff[name + " (relative)"] = float(np.max(np.abs(value / other - 1)))
        elif name.endswith("quantiles"):
            # Largest over layers, for each quantile level.
            diff[name] = np.max(np.abs(value - other), axis=0).tolist()
        else:
            diff[name] = float(np.max(np.abs(value - other)))
    return diff


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--input-dim", type=int, default=8)
    parser.add_argument("--activation", default="relu")
    parser.add_argument(
        "--quick", action="store_true", help="16 members, width 64, depth 16"
    )
    parser.add_argument("--float64", action="store_true", help="add a float64 row")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.width, args.depth = 16, 64, 16
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    spec = actgeo.NetworkSpec(
        input_dim=args.input_dim,
        width=args.width,
        depth=args.depth,
        activation=args.activation,
    )
    params = actgeo.sample(spec, args.members, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (args.inputs, args.input_dim), jnp.float32)
    bins = actgeo.kernels.StatsConfig().bins

    def measure(p, x):
        return jax.vmap(lambda one: layer_statistics(one, x, args.activation))(p)

    print(
        f"{args.members} members, width {args.width}, depth {args.depth}, "
        f"{args.inputs} inputs of dimension {args.input_dim}, {args.activation}, "
        f"device {jax.devices()[0].device_kind}",
        file=sys.stderr,
    )
    reference = _summaries(jax.jit(measure)(params, x), bins)
    rows = {}
    with fast_matmuls():
        rows["fast_matmuls() on this device"] = _summaries(
            jax.jit(measure)(params, x), bins
        )
    rows["TF32 emulated (10 bits)"] = _summaries(
        jax.jit(emulate_matmuls(measure, 10))(params, x), bins
    )
    rows["bfloat16 emulated (7 bits)"] = _summaries(
        jax.jit(emulate_matmuls(measure, 7))(params, x), bins
    )
    if args.float64:
        wide = jax.tree.map(lambda a: a.astype(jnp.float64), (params, x))
        rows["float64 (error of float32 itself)"] = _summaries(
            jax.jit(measure)(*wide), bins
        )
    table = {name: _difference(value, reference) for name, value in rows.items()}
    columns = list(next(iter(table.values())))
    print("| mode | " + " | ".join(f"max diff {c}" for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, diff in table.items():
        cells = []
        for c in columns:
            v = diff[c]
            cells.append(" / ".join(f"{w:.2g}" for w in np.atleast_1d(v)))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        "\nLargest difference over layers from the default: quantile columns give "
        "the 1%, 50% and 99% quantiles of log10 distance (log10 units, histogram "
        f"bins of {bins.width:.2g}); means in log10 units; q relative."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"settings": vars(args) | {"json": None}, "rows": table},
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
