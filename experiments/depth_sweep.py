"""Test accuracy on digits against depth, per activation, customary and critical.

MLPs of fixed width on scikit-learn's digits (:func:`actgeo.data.digits_split`,
1347 train / 450 test), sigmoid, tanh, relu, gelu, silu and erf, at depths
from 1 up, each trained with Adam for a fixed number of steps from two
initialisations:

* customary: the activation's customary ``sigma_w`` (He ``sqrt(2)`` for the
  relu family, 1 for bounded activations), ``sigma_b = 0``;
* critical: ``sigma_w`` on the activation's edge of chaos
  (:func:`actgeo.models.critical_spec`) at ``sigma_b`` from
  ``CRITICAL_SIGMA_B``: 0.3 for the bounded activations, 0 for relu (its
  only edge of chaos), 1 for gelu and silu (their edge of chaos is a stable
  fixed point only for ``sigma_b`` above about 0.42 and 0.76). For sigmoid
  that ``sigma_w`` is about 10.

Standard deviations throughout (no variances). Several members (seeds) per
cell; the members of both initialisations of one (activation, depth) are one
ensemble trained at once (see ``_train_glue.py``). No learning-rate tuning
per cell: one Adam learning rate for all, so deep cells that have not
trained in the step budget read as low accuracy, which is the point.

Run ``python experiments/depth_sweep.py --quick`` (small, CPU) or without
``--quick`` (width 128, 8 members, depths 1-32, 2000 steps: an accelerator).
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
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from tqdm.auto import tqdm

import actgeo
from actgeo.data import digits_split
from actgeo.models import critical_spec

NAME = "depth_sweep"
ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu", "silu", "erf")
INITS = ("customary", "critical")
# Test images on which the trained networks' context retention is probed.
RETENTION_POINTS = 256
CRITICAL_SIGMA_B = {
    "sigmoid": 0.3,
    "tanh": 0.3,
    "erf": 0.3,
    "relu": 0.0,
    "gelu": 1.0,
    "silu": 1.0,
}

_QUICK = dict(width=32, members=3, depths=(1, 2, 4, 8), steps=300)
_FULL = dict(
    width=128,
    members=8,
    depths=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
    steps=2000,
)


@dataclasses.dataclass
class Args:
    """Test accuracy on digits against depth, customary and critical init."""

    out: pathlib.Path = _common.RESULTS / NAME
    """Folder for the PNG, the numbers (.zarr) and the table."""
    quick: bool = False
    """Small sizes for a CPU (width 32, 3 members, depths 1-8, 300 steps)."""
    width: int | None = None
    """Hidden width N (when omitted: 128, or 32 with --quick)."""
    members: int | None = None
    """Seeds per cell (when omitted: 8, or 3 with --quick)."""
    depths: tuple[int, ...] | None = None
    """Depths L (when omitted: 1-32, or 1, 2, 4, 8 with --quick)."""
    steps: int | None = None
    """Adam steps (when omitted: 2000, or 300 with --quick)."""
    activations: tuple[str, ...] = ACTIVATIONS
    """Activations to sweep."""
    learning_rate: float = 3e-3
    """Adam learning rate, the same for every cell."""
    batch_size: int = 64
    """Minibatch size."""
    seed: int = 0
    """Root seed."""
    progress: bool = True
    """Show progress bars."""


def _resolve(args: Args) -> dict:
    return _common.preset_sizes(args, _QUICK, _FULL)


def specs_for(activation: str, width: int, depth: int) -> dict[str, actgeo.NetworkSpec]:
    """The customary and the critical spec of one cell (digits: D = 64, K = 10)."""
    customary = actgeo.NetworkSpec(64, width, depth, activation, readout=10)
    critical = critical_spec(
        dataclasses.replace(customary, sigma_b=CRITICAL_SIGMA_B[activation])
    )
    return {"customary": customary, "critical": critical}


def run(args: Args) -> xr.Dataset:
    sizes = _resolve(args)
    depths = tuple(sizes["depths"])
    acts = tuple(args.activations)
    data = digits_split()
    root = jax.random.key(args.seed)
    shape = (len(acts), len(INITS), len(depths), sizes["members"])
    accuracy = np.full(shape, np.nan)
    loss = np.full(shape, np.nan)
    retention = np.full((*shape, max(depths)), np.nan)
    sigma_w = np.zeros((len(acts), len(INITS)))
    sigma_b = np.zeros((len(acts), len(INITS)))
    cells = [(a, d) for a in range(len(acts)) for d in range(len(depths))]
    for a, d in tqdm(cells, desc="cells", disable=not args.progress):
        specs = specs_for(acts[a], sizes["width"], depths[d])
        for i, init in enumerate(INITS):
            sigma_w[a, i] = specs[init].sigma_w
            sigma_b[a, i] = specs[init].sigma_b
        out = _train_glue.train_specs(
            [specs[init] for init in INITS],
            data,
            members=sizes["members"],
            steps=sizes["steps"],
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            key=jax.random.fold_in(jax.random.fold_in(root, a), depths[d]),
            retention_points=RETENTION_POINTS,
        )
        accuracy[a, :, d] = out["test_accuracy"]
        loss[a, :, d] = out["train_loss"]
        retention[a, :, d, :, : depths[d]] = out["retention_first"]
    dims = ("activation", "init", "depth", "member")
    return xr.Dataset(
        {
            "test_accuracy": (dims, accuracy),
            "train_loss": (dims, loss),
            "retention_first": ((*dims, "layer"), retention),
            "sigma_w": (("activation", "init"), sigma_w),
            "sigma_b": (("activation", "init"), sigma_b),
        },
        coords={
            "activation": list(acts),
            "init": list(INITS),
            "depth": list(depths),
            "member": np.arange(sizes["members"]),
            "layer": np.arange(1, max(depths) + 1),
        },
        attrs=dict(
            data=data.description,
            width=sizes["width"],
            members=sizes["members"],
            steps=sizes["steps"],
            optimizer="adam",
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            seed=args.seed,
            sigma_convention="sigma_w and sigma_b are standard deviations",
            customary="customary sigma_w of the activation, sigma_b = 0",
            critical=(
                "critical_spec at sigma_b = " + str(CRITICAL_SIGMA_B).replace("'", "")
            ),
        ),
    )


def plot(ds: xr.Dataset, path: pathlib.Path) -> None:
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    grid = fig.subplots(2, 2, sharey="row")
    axes, lower = grid[0], grid[1]
    depths = ds["depth"].values
    for ax, init in zip(lower, ds["init"].values, strict=True):
        for i, act in enumerate(ds["activation"].values):
            r = ds["retention_first"].sel(activation=act, init=init).values
            # (depth, member, layer) -> each trained network's last layer.
            last = np.stack([r[d, :, depth - 1] for d, depth in enumerate(depths)])
            mean, err = _common.mean_and_error(last, axis=1)
            ax.errorbar(depths, mean, err, fmt="o-", color=f"C{i}", ms=4, label=act)
        ax.set(xscale="log", xlabel="depth L", ylim=(-0.1, 1.02))
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{init}: context retention at the last layer, trained")
    lower[0].set_ylabel("held-out R^2 of layer-1 signed distances")
    for ax, init in zip(axes, ds["init"].values, strict=True):
        for i, act in enumerate(ds["activation"].values):
            acc = ds["test_accuracy"].sel(activation=act, init=init).values
            mean, err = _common.mean_and_error(acc, axis=1)
            ax.errorbar(depths, mean, err, fmt="o-", color=f"C{i}", ms=4, label=act)
        ax.axhline(0.1, color="gray", ls=":", lw=0.8, label="chance")
        ax.set(xscale="log", xlabel="depth L", ylim=(0, 1.02))
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{init} initialisation")
    axes[0].set_ylabel("test accuracy (mean +- s.e. over seeds)")
    axes[1].legend(fontsize=8)
    fig.suptitle(
        f"digits, width {ds.attrs['width']}, Adam lr {ds.attrs['learning_rate']}, "
        f"{ds.attrs['steps']} steps, {ds.attrs['members']} seeds"
    )
    fig.savefig(path, dpi=120)


def summary(ds: xr.Dataset) -> str:
    depths = ds["depth"].values
    rows = []
    for act in ds["activation"].values:
        for init in ds["init"].values:
            acc = ds["test_accuracy"].sel(activation=act, init=init).values
            rows.append(
                [
                    act,
                    init,
                    float(ds["sigma_w"].sel(activation=act, init=init)),
                    float(ds["sigma_b"].sel(activation=act, init=init)),
                    *[float(m) for m in acc.mean(axis=1)],
                ]
            )
    text = _common.table(
        ["activation", "init", "sigma_w", "sigma_b", *[f"L={d}" for d in depths]],
        rows,
    )
    return (
        f"Test accuracy on digits (mean over {ds.attrs['members']} seeds), width "
        f"{ds.attrs['width']}, Adam lr {ds.attrs['learning_rate']}, "
        f"{ds.attrs['steps']} steps, batch {ds.attrs['batch_size']}\n{text}"
    )


def main(args: Args) -> xr.Dataset:
    start = time.perf_counter()
    ds = run(args)
    _common.write_outputs(ds, args.out, NAME, plot, summary, start)
    return ds


if __name__ == "__main__":
    main(tyro.cli(Args))
