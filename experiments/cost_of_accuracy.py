"""The cost of accuracy: trained accuracy against inference cost, per activation.

For each activation and each (depth, width) of a small grid, MLPs on
scikit-learn's digits (customary initialisation: the activation's customary
``sigma_w``, ``sigma_b = 0``; trained with Adam for a fixed number of steps;
several seeds) give

* the test accuracy after training (mean over seeds);
* the inference FLOPs per example: ``2 sum_l fan_in_l fan_out_l`` for the
  matrix products (a multiply and an add per weight) plus one per activation
  evaluation, ``L N`` (bias additions and the readout's argmax are not
  counted): ``2 (D N + (L - 1) N^2 + N K) + L N``;
* the measured latency per example on the current device: a jitted forward
  pass of one network, timed as the median of repeats after a warm-up, on a
  batch of ``latency_batch`` inputs (divided by the batch) and on a single
  input. On a CPU the single input's time is mostly dispatch overhead; the
  batched time shows the activations' own cost.

The figure is the accuracy against FLOPs (and against batched latency) with
each activation's Pareto front; the table gives, per activation, the
cheapest network (fewest FLOPs) whose mean accuracy reaches ``target``.

Run ``python experiments/cost_of_accuracy.py --quick`` (small, CPU) or
without ``--quick`` (depths 1-8, widths 8-256, 4 seeds, 2000 steps: an
accelerator, where the latencies are the accelerator's).
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import _common
import _train_glue
import jax
import numpy as np
import tyro
import xarray as xr
from flax import nnx
from matplotlib.figure import Figure
from tqdm.auto import tqdm

import actgeo
from actgeo.data import digits_split
from actgeo.models import MLP

NAME = "cost_of_accuracy"
ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu", "silu", "erf")
INPUT_DIM, CLASSES = 64, 10

_QUICK = dict(depths=(1, 3), widths=(8, 32), members=2, steps=300, repeats=20)
_FULL = dict(
    depths=(1, 2, 4, 8),
    widths=(8, 16, 32, 64, 128, 256),
    members=4,
    steps=2000,
    repeats=100,
)


@dataclasses.dataclass
class Args:
    """Trained accuracy against inference FLOPs and latency, per activation."""

    out: pathlib.Path = _common.RESULTS / NAME
    """Folder for the PNG, the numbers (.zarr) and the table."""
    quick: bool = False
    """Small sizes for a CPU (depths 1, 3; widths 8, 32; 2 seeds; 300 steps)."""
    depths: tuple[int, ...] | None = None
    """Depths L (when omitted: 1-8, or 1, 3 with --quick)."""
    widths: tuple[int, ...] | None = None
    """Widths N (when omitted: 8-256, or 8, 32 with --quick)."""
    members: int | None = None
    """Seeds per cell (when omitted: 4, or 2 with --quick)."""
    steps: int | None = None
    """Adam steps (when omitted: 2000, or 300 with --quick)."""
    repeats: int | None = None
    """Timed repeats per latency (when omitted: 100, or 20 with --quick)."""
    activations: tuple[str, ...] = ACTIVATIONS
    """Activations to compare."""
    target: float = 0.9
    """Test accuracy the table's cheapest network must reach."""
    latency_batch: int = 256
    """Inputs per batched latency measurement."""
    learning_rate: float = 3e-3
    """Adam learning rate."""
    batch_size: int = 64
    """Training minibatch size."""
    seed: int = 0
    """Root seed."""
    progress: bool = True
    """Show progress bars."""


def _resolve(args: Args) -> dict:
    return _common.preset_sizes(args, _QUICK, _FULL)


def inference_flops(input_dim: int, width: int, depth: int, classes: int) -> int:
    """FLOPs of one example's forward pass through an MLP with a readout.

    ``2 (D N + (L - 1) N^2 + N K)`` for the matrix products plus ``L N``
    activation evaluations; bias additions are not counted.
    """
    products = input_dim * width + (depth - 1) * width**2 + width * classes
    return 2 * products + depth * width


def latency(spec: actgeo.NetworkSpec, batch: int, repeats: int, key) -> float:
    """Median seconds of a jitted forward pass of one network on ``batch`` inputs."""
    graphdef, state = nnx.split(MLP(spec, key=key))
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    x = jax.random.normal(jax.random.fold_in(key, 1), (batch, spec.input_dim))
    forward(state, x).block_until_ready()  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(state, x).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(args: Args) -> xr.Dataset:
    sizes = _resolve(args)
    depths, widths = tuple(sizes["depths"]), tuple(sizes["widths"])
    acts = tuple(args.activations)
    data = digits_split()
    root = jax.random.key(args.seed)
    shape = (len(acts), len(depths), len(widths))
    accuracy = np.full((*shape, sizes["members"]), np.nan)
    batched = np.full(shape, np.nan)
    single = np.full(shape, np.nan)
    flops = np.zeros((len(depths), len(widths)), np.int64)
    cells = [
        (a, d, w)
        for a in range(len(acts))
        for d in range(len(depths))
        for w in range(len(widths))
    ]
    for a, d, w in tqdm(cells, desc="cells", disable=not args.progress):
        spec = actgeo.NetworkSpec(
            INPUT_DIM, widths[w], depths[d], acts[a], readout=CLASSES
        )
        key = jax.random.fold_in(jax.random.fold_in(root, a), d * 1000 + w)
        out = _train_glue.train_specs(
            [spec],
            data,
            members=sizes["members"],
            steps=sizes["steps"],
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            key=key,
        )
        accuracy[a, d, w] = out["test_accuracy"][0]
        batched[a, d, w] = (
            latency(spec, args.latency_batch, sizes["repeats"], key)
            / args.latency_batch
        )
        single[a, d, w] = latency(spec, 1, sizes["repeats"], key)
        flops[d, w] = inference_flops(INPUT_DIM, widths[w], depths[d], CLASSES)
    cell = ("activation", "depth", "width")
    return xr.Dataset(
        {
            "test_accuracy": ((*cell, "member"), accuracy),
            "flops": (("depth", "width"), flops),
            "latency_batched": (cell, batched),
            "latency_single": (cell, single),
        },
        coords={
            "activation": list(acts),
            "depth": list(depths),
            "width": list(widths),
            "member": np.arange(sizes["members"]),
        },
        attrs=dict(
            data=data.description,
            init="customary sigma_w of the activation, sigma_b = 0",
            members=sizes["members"],
            steps=sizes["steps"],
            optimizer="adam",
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            target=args.target,
            flops="2 (D N + (L-1) N^2 + N K) + L N per example (no bias adds)",
            latency=(
                f"median of {sizes['repeats']} jitted forward passes after a "
                f"warm-up; latency_batched: batch of {args.latency_batch} divided "
                "by the batch; latency_single: one input; seconds per example"
            ),
            device=str(jax.devices()[0].device_kind),
            platform=jax.default_backend(),
            seed=args.seed,
        ),
    )


def pareto(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (cheaper and at least as
    accurate, or as cheap and more accurate), by increasing cost."""
    order = np.lexsort((-accuracy, cost))
    front, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return np.asarray(front, int)


def cheapest(ds: xr.Dataset, activation: str, target: float):
    """``(depth, width)`` of the fewest-FLOPs network reaching ``target``, or None."""
    mean = ds["test_accuracy"].sel(activation=activation).mean("member").values
    flops = ds["flops"].values.astype(float)
    ok = mean >= target
    if not ok.any():
        return None
    d, w = np.unravel_index(np.argmin(np.where(ok, flops, np.inf)), flops.shape)
    return int(d), int(w)


def plot(ds: xr.Dataset, path: pathlib.Path) -> None:
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax_f, ax_t = fig.subplots(1, 2, sharey=True)
    flops = ds["flops"].values.ravel().astype(float)
    for i, act in enumerate(ds["activation"].values):
        mean = ds["test_accuracy"].sel(activation=act).mean("member").values.ravel()
        lat = ds["latency_batched"].sel(activation=act).values.ravel()
        for ax, cost in ((ax_f, flops), (ax_t, lat)):
            ax.plot(cost, mean, "o", color=f"C{i}", ms=4, alpha=0.6)
            front = pareto(cost, mean)
            ax.plot(cost[front], mean[front], "-", color=f"C{i}", label=act)
    for ax in (ax_f, ax_t):
        ax.axhline(ds.attrs["target"], color="gray", ls=":", lw=0.8, label="target")
        ax.set(xscale="log")
    ax_f.set(xlabel="inference FLOPs per example", ylabel="test accuracy (mean)")
    ax_t.set(xlabel=f"latency per example, batched (s, {ds.attrs['device']})")
    ax_f.set_title("accuracy against FLOPs (lines: Pareto fronts)")
    ax_t.set_title("accuracy against measured latency")
    ax_t.legend(fontsize=8)
    fig.suptitle(
        f"digits, depths {ds['depth'].values.tolist()}, widths "
        f"{ds['width'].values.tolist()}, {ds.attrs['steps']} Adam steps, "
        f"{ds.attrs['members']} seeds"
    )
    fig.savefig(path, dpi=120)


def summary(ds: xr.Dataset) -> str:
    target = ds.attrs["target"]
    rows = []
    for act in ds["activation"].values:
        mean = ds["test_accuracy"].sel(activation=act).mean("member")
        best = float(mean.max())
        pick = cheapest(ds, act, target)
        if pick is None:
            rows.append([act, "-", "-", "-", "nan", "nan", "nan", best])
            continue
        d, w = pick
        rows.append(
            [
                act,
                int(ds["depth"][d]),
                int(ds["width"][w]),
                int(ds["flops"][d, w]),
                float(mean[d, w]),
                1e6 * float(ds["latency_batched"].sel(activation=act)[d, w]),
                1e6 * float(ds["latency_single"].sel(activation=act)[d, w]),
                best,
            ]
        )
    text = _common.table(
        [
            "activation",
            "depth",
            "width",
            "FLOPs",
            "accuracy",
            "us/ex batched",
            "us single",
            "best acc",
        ],
        rows,
    )
    return (
        f"Cheapest network (fewest FLOPs) reaching test accuracy {target} on digits "
        f"(mean over {ds.attrs['members']} seeds, {ds.attrs['steps']} Adam steps); "
        f"latencies on {ds.attrs['platform']} ({ds.attrs['device']}); best acc: the "
        "grid's best\n"
        f"{text}"
    )


def main(args: Args) -> xr.Dataset:
    start = time.perf_counter()
    ds = run(args)
    _common.write_outputs(ds, args.out, NAME, plot, summary, start)
    return ds


if __name__ == "__main__":
    main(tyro.cli(Args))
