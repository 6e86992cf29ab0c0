"""The ``actgeo`` command.

``actgeo sweep`` measures how activations carry boundary-distance information
through depth over ensembles of random networks, on scikit-learn's digits and
on points around a sphere, and writes a zarr results store, a PNG figure and a
summary table. Run ``actgeo sweep --help`` for its options.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time
from typing import Literal

import tyro

__all__ = ["SweepArgs", "main"]

_QUICK = dict(members=64, width=64, depth=16, probe=256, inputs=4)


@dataclasses.dataclass
class SweepArgs:
    """Compare activations by how they keep boundary distances through depth.

    With no options: relu, gelu, silu, tanh, sigmoid and erf at their
    customary initialisations, 256 random MLPs of width 128 and depth 32 per
    activation, on scikit-learn's digits and on points around a sphere.
    """

    out: pathlib.Path = pathlib.Path("results/sweep")
    """Folder for results.zarr, sweep.png and summary.txt."""
    quick: bool = False
    """Small settings (64 members, width 64, depth 16) that finish in about a minute."""
    activations: tuple[str, ...] | None = None
    """Activation names (default: relu gelu silu tanh sigmoid erf)."""
    datasets: tuple[str, ...] | None = None
    """Data sets: digits, sphere (default: both)."""
    members: int | None = None
    """Random networks per activation and data set (default 256)."""
    width: int | None = None
    """Hidden width (default 128)."""
    depth: int | None = None
    """Number of layers (default 32)."""
    inputs: int | None = None
    """Inputs per network whose boundary distances are measured (default 8)."""
    probe: int | None = None
    """Probe inputs per network for the retention probes (default 512)."""
    sphere_dim: int = 16
    """Input dimension of the sphere data set."""
    sigma_w: float | None = None
    """Weight scale for every activation (default: each activation's customary one)."""
    sigma_b: float = 0.0
    """Bias standard deviation."""
    init: Literal["gaussian", "orthogonal"] = "gaussian"
    """Weight distribution."""
    ridge: float = 0.1
    """Retention probe penalty, relative to the features' variance."""
    seed: int = 0
    """Root seed; member i of a cell depends only on (seed, cell, i)."""
    chunk_size: int | None = None
    """Members per compiled call (default: the most that fit the memory budget)."""
    memory_budget_gib: float | None = None
    """Memory a chunk may use, in GiB (default: half the device's free memory)."""
    overwrite: bool = False
    """Replace an existing store at --out instead of resuming it."""
    progress: bool = True
    """Show progress bars."""

    def config(self):
        from actgeo.sweep import SweepConfig

        values = {}
        if self.quick:
            values.update(_QUICK)
        for field in ("members", "width", "depth", "inputs", "probe"):
            if getattr(self, field) is not None:
                values[field] = getattr(self, field)
        if self.activations is not None:
            values["activations"] = tuple(self.activations)
        if self.datasets is not None:
            values["datasets"] = tuple(self.datasets)
        return SweepConfig(
            sphere_dim=self.sphere_dim,
            sigma_w=self.sigma_w,
            sigma_b=self.sigma_b,
            init=self.init,
            ridge=self.ridge,
            seed=self.seed,
            **values,
        )


def _enable_compilation_cache() -> None:
    import jax

    folder = os.environ.get(
        "ACTGEO_JAX_CACHE", str(pathlib.Path.home() / ".cache" / "actgeo" / "jax")
    )
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def sweep(args: SweepArgs) -> int:
    """Runs the sweep described by ``args``; returns the exit status."""
    try:
        config = args.config()
        budget = None
        if args.memory_budget_gib is not None:
            if not args.memory_budget_gib > 0:
                raise ValueError(
                    f"memory-budget-gib: expected a positive number, got "
                    f"{args.memory_budget_gib}"
                )
            budget = int(args.memory_budget_gib * 2**30)
        if args.chunk_size is not None and args.chunk_size < 1:
            raise ValueError(
                f"chunk-size: expected a positive integer, got {args.chunk_size}"
            )
    except ValueError as err:
        print(f"actgeo sweep: error: {err}", file=sys.stderr)
        return 2

    _enable_compilation_cache()
    from actgeo.figures import plot_sweep, summary_table
    from actgeo.sweep import run_sweep

    started = time.perf_counter()
    print(
        f"actgeo sweep: {len(config.activations)} activations x "
        f"{len(config.datasets)} data sets, {config.members} members of width "
        f"{config.width} and depth {config.depth} -> {args.out}",
        flush=True,
    )
    try:
        ds = run_sweep(
            config,
            args.out,
            chunk_size=args.chunk_size,
            memory_budget=budget,
            overwrite=args.overwrite,
            progress=args.progress,
            log=lambda line: print(line, flush=True),
        )
    except (ValueError, MemoryError) as err:
        print(f"actgeo sweep: error: {err}", file=sys.stderr)
        return 2
    figure = plot_sweep(ds, args.out / "sweep.png")
    table = summary_table(ds)
    (args.out / "summary.txt").write_text(table + "\n")
    elapsed = time.perf_counter() - started
    print()
    print("median log10 distance to a neuron's boundary (in: input space, rep:")
    print("representation space), median held-out R^2 of the retention probes,")
    print("mean fraction of saturated units (sat)")
    print(table)
    print()
    print(f"store:   {args.out / 'results.zarr'}")
    print(f"figure:  {figure}")
    print(f"table:   {args.out / 'summary.txt'}")
    print(f"elapsed: {elapsed:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``actgeo`` command."""
    args = tyro.extras.subcommand_cli_from_dict(
        {"sweep": SweepArgs}, args=argv, prog="actgeo"
    )
    if isinstance(args, SweepArgs):
        return sweep(args)
    raise AssertionError(f"unhandled command {args!r}")


if __name__ == "__main__":
    sys.exit(main())
