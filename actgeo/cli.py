"""The ``actgeo`` command.

``actgeo sweep`` measures how activations carry boundary-distance information
through depth over ensembles of random networks, on scikit-learn's digits and
on points around a sphere, and writes a zarr results store (with the
infinite-width theory's predictions beside the measurements), a PNG figure and
a summary table. ``actgeo theory`` draws the infinite-width phase diagram of
one activation and the edge-of-chaos curves of several. Run ``actgeo sweep
--help`` or ``actgeo theory --help`` for their options.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import sys
import time
from typing import Literal

import tyro

__all__ = ["SweepArgs", "TheoryArgs", "main"]

_QUICK = dict(members=64, width=64, depth=16, probe=256, inputs=4)
_THEORY_GRID = 100
_THEORY_QUICK_GRID = 25


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
    """Activation names (when omitted: relu gelu silu tanh sigmoid erf)."""
    datasets: tuple[str, ...] | None = None
    """Data sets: digits, sphere (when omitted: both)."""
    members: int | None = None
    """Random networks per activation and data set (when omitted: 256, or 64 with
    --quick)."""
    width: int | None = None
    """Hidden width (when omitted: 128, or 64 with --quick)."""
    depth: int | None = None
    """Number of layers (when omitted: 32, or 16 with --quick)."""
    inputs: int | None = None
    """Inputs per network whose boundary distances are measured (when omitted: 8,
    or 4 with --quick)."""
    probe: int | None = None
    """Probe inputs per network for the retention probes (when omitted: 512, or 256
    with --quick)."""
    sphere_dim: int = 16
    """Input dimension of the sphere data set."""
    sigma_w: float | None = None
    """Weight scale for every activation (when omitted: each activation's customary
    one)."""
    sigma_b: float = 0.0
    """Bias standard deviation."""
    init: Literal["gaussian", "orthogonal", "critical"] = "gaussian"
    """Weight distribution; critical: Gaussian, with each activation's sigma_w on
    its edge of chaos at --sigma-b (not with --sigma-w)."""
    ridge: float = 0.1
    """Retention probe penalty, relative to the features' variance."""
    seed: int = 0
    """Root seed; member i of a cell depends only on (seed, cell, i)."""
    dtype: Literal["float32", "float64"] = "float32"
    """Float precision; float64 shows what float32's rounding floor does."""
    chunk_size: int | None = None
    """Members per compiled call (when omitted: the most that fit the budget, at
    most 64 on a CPU)."""
    memory_budget_gib: float | None = None
    """Memory a chunk may use, in GiB (when omitted: half an accelerator's free
    memory, or 2 on a CPU)."""
    devices: int | None = None
    """How many of this process's devices to split the members over (when omitted:
    all of them)."""
    overwrite: bool = False
    """Replace an existing store at --out instead of resuming it."""
    progress: bool = True
    """Show progress bars."""
    distributed: bool = False
    """Join a multi-process run through jax.distributed.initialize(): every process
    runs the same command with the same --out on a shared file system. The
    coordinator, process count and index come from the cluster (SLURM, Open MPI,
    Cloud TPU, ...) or from the three options below."""
    coordinator: str | None = None
    """With --distributed: host:port of process 0's coordinator."""
    num_processes: int | None = None
    """With --distributed: how many processes take part."""
    process_id: int | None = None
    """With --distributed: this process's index, 0..num-processes - 1."""

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
            dtype=self.dtype,
            **values,
        )


def _enable_compilation_cache() -> None:
    import jax

    folder = os.environ.get(
        "ACTGEO_JAX_CACHE", str(pathlib.Path.home() / ".cache" / "actgeo" / "jax")
    )
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _join(args: SweepArgs) -> None:
    """Joins the multi-process run described by ``args`` (before any JAX work)."""
    given = {
        "coordinator": args.coordinator,
        "num-processes": args.num_processes,
        "process-id": args.process_id,
    }
    if not args.distributed:
        named = [f"--{name}" for name, value in given.items() if value is not None]
        if named:
            raise ValueError(f"{', '.join(named)}: only with --distributed")
        return
    if args.num_processes is not None and args.num_processes < 1:
        raise ValueError(
            f"num-processes: expected a positive integer, got {args.num_processes}"
        )
    if args.process_id is not None and not (
        0 <= args.process_id < (args.num_processes or args.process_id + 1)
    ):
        raise ValueError(
            f"process-id: expected 0..{(args.num_processes or 1) - 1}, got "
            f"{args.process_id}"
        )
    if args.coordinator is not None:
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                f"coordinator: expected host:port (process 0's address), got "
                f"{args.coordinator!r}"
            )
    import jax

    try:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    except Exception as err:
        raise ValueError(
            f"distributed: could not join the run ({err}); outside a cluster "
            "manager (SLURM, Open MPI, Cloud TPU), give --coordinator host:port, "
            "--num-processes and --process-id to every process"
        ) from err


# The library names its arguments; the command's user typed these flags.
_FLAGS = {"chunk_size": "--chunk-size", "memory_budget": "--memory-budget-gib"}


def _as_flags(message) -> str:
    """An error of the library, with its argument names as the command's flags."""
    text = str(message)
    for name, flag in _FLAGS.items():
        text = text.replace(name, flag)
    return text


def sweep(args: SweepArgs) -> int:
    """Runs the sweep described by ``args``; returns the exit status."""
    try:
        _join(args)
        if args.devices is not None and args.devices < 1:
            raise ValueError(
                f"devices: expected a positive integer, got {args.devices}"
            )
        config = args.config()
        budget = None
        if args.memory_budget_gib is not None:
            if not (
                math.isfinite(args.memory_budget_gib)
                and args.memory_budget_gib * 2**30 >= 1
            ):
                raise ValueError(
                    f"memory-budget-gib: expected a positive finite number, got "
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

    import jax

    _enable_compilation_cache()
    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    from actgeo.figures import plot_sweep, summary_table
    from actgeo.sweep import run_sweep

    rank = jax.process_index()
    prefix = f"process {rank}: " if jax.process_count() > 1 else ""
    started = time.perf_counter()
    print(
        f"{prefix}"
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
            devices=args.devices,
            overwrite=args.overwrite,
            progress=args.progress,
            log=lambda line: print(f"{prefix}{line}", flush=True),
        )
    except (ValueError, MemoryError, OSError, RuntimeError) as err:
        message = err.strerror if isinstance(err, OSError) and err.strerror else err
        print(f"actgeo sweep: {prefix}error: {_as_flags(message)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nactgeo sweep: interrupted; finished cells and every finished block "
            "of members are saved, and the same command resumes from there",
            file=sys.stderr,
        )
        return 130
    if rank != 0:
        # Process 0 draws the figure and the table; the store is complete here.
        print(f"{prefix}done in {time.perf_counter() - started:.1f} s", flush=True)
        return 0
    figure = plot_sweep(ds, args.out / "sweep.png")
    table = summary_table(ds)
    (args.out / "summary.txt").write_text(table + "\n")
    elapsed = time.perf_counter() - started
    for line in _float_warnings(ds):
        print(f"warning: {line}", file=sys.stderr)
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


@dataclasses.dataclass
class TheoryArgs:
    """Draw the infinite-width phase diagram of one activation and the edge-of-chaos
    curves of several.

    The phase diagram colours chi_1 and the correlation fixed point c* over a grid
    of (sigma_b, sigma_w), standard deviations, with the activation's edge of
    chaos drawn over them.
    """

    out: pathlib.Path = pathlib.Path("results/theory")
    """Folder for theory.zarr and the PNG figures."""
    activation: str = "tanh"
    """Activation whose phase diagram is drawn."""
    activations: tuple[str, ...] = ("relu", "tanh", "elu", "silu", "gelu", "erf")
    """Activations whose edge-of-chaos curves are drawn."""
    sigma_w_max: float = 4.0
    """Largest weight standard deviation of the grid."""
    sigma_b_max: float = 1.0
    """Largest bias standard deviation of the grid."""
    grid: int | None = None
    """Grid points per axis (when omitted: 100, or 25 with --quick)."""
    quick: bool = False
    """A coarse grid that finishes in seconds."""

    def grid_points(self) -> int:
        if self.grid is not None:
            return self.grid
        return _THEORY_QUICK_GRID if self.quick else _THEORY_GRID

    def problems(self) -> list[str]:
        """Every invalid option, each named with what was expected."""
        from actgeo.activations import get_activation

        problems = []
        try:
            get_activation(self.activation)
        except ValueError as err:
            problems.append(str(err))
        if not self.activations:
            problems.append("activations: expected at least one name")
        for name in self.activations:
            try:
                get_activation(name)
            except ValueError as err:
                problems.append(str(err).replace("activation:", "activations:", 1))
        if len(set(self.activations)) != len(self.activations):
            problems.append(f"activations: names repeat in {self.activations}")
        grid = self.grid_points()
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
            problems.append(f"grid: expected an integer >= 2, got {grid!r}")
        for flag, value in (
            ("sigma-w-max", self.sigma_w_max),
            ("sigma-b-max", self.sigma_b_max),
        ):
            if not (math.isfinite(value) and value > 0):
                problems.append(
                    f"{flag}: expected a positive finite number, got {value}"
                )
        return problems


def theory(args: TheoryArgs) -> int:
    """Computes and draws the phase diagram and edge-of-chaos curves of ``args``."""
    if problems := args.problems():
        print(f"actgeo theory: error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    out = args.out
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            print(
                f"actgeo theory: error: out: {folder} is a file, not a folder",
                file=sys.stderr,
            )
            return 2

    _enable_compilation_cache()
    import json

    import numpy as np

    from actgeo.figures import plot_edge_of_chaos, plot_phase_diagram, theory_dataset

    n = args.grid_points()
    # sigma_w = 0 is left out: the network is then constant and chi_1 = 0.
    sigma_w = np.linspace(0.0, args.sigma_w_max, n + 1)[1:]
    sigma_b = np.linspace(0.0, args.sigma_b_max, n)
    started = time.perf_counter()
    print(
        f"actgeo theory: phase diagram of {args.activation} on {n} x {n} "
        f"(sigma_b, sigma_w) points, edge of chaos of "
        f"{', '.join(args.activations)} -> {out}",
        flush=True,
    )
    try:
        ds = theory_dataset(args.activation, tuple(args.activations), sigma_w, sigma_b)
    except ValueError as err:
        print(f"actgeo theory: error: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    store = out / "theory.zarr"
    ds.to_zarr(store, mode="w", consolidated=False)
    phase = plot_phase_diagram(ds, out / f"phase_diagram_{args.activation}.png")
    curves = plot_edge_of_chaos(ds, out / "edge_of_chaos.png")
    for name, reason in json.loads(ds.attrs["no_edge_of_chaos"]).items():
        print(f"note: {name} has no edge of chaos ({reason})")
    print(f"numbers: {store}")
    print(f"figures: {phase}")
    print(f"         {curves}")
    print(f"elapsed: {time.perf_counter() - started:.1f} s")
    return 0


def _float_warnings(ds) -> list[str]:
    """Cells where NaN distances or non-finite q show the float range was left."""
    import numpy as np

    lines = []
    for activation in ds["activation"].values:
        for dataset in ds["dataset"].values:
            cell = ds.sel(activation=activation, dataset=dataset)
            if not bool(cell["done"]):
                continue
            nan = int(cell["delta_in_n_nan"].sum())
            bad_q = ~np.isfinite(cell["q"].values)
            if nan or bad_q.any():
                first = int(ds["layer"].values[np.argmax(bad_q.any(axis=0))])
                lines.append(
                    f"{activation}/{dataset}: the forward pass left the float range "
                    f"({nan} NaN distances; q not finite from layer {first}); "
                    "those layers measure rounding, not geometry"
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``actgeo`` command."""
    args = tyro.extras.subcommand_cli_from_dict(
        {"sweep": SweepArgs, "theory": TheoryArgs}, args=argv, prog="actgeo"
    )
    if isinstance(args, SweepArgs):
        return sweep(args)
    if isinstance(args, TheoryArgs):
        return theory(args)
    raise AssertionError(f"unhandled command {args!r}")


if __name__ == "__main__":
    sys.exit(main())
