"""Schoenholz et al. 2017: trainability of tanh networks over (sigma_w^2, depth).

Schoenholz, Gilmer, Ganguli and Sohl-Dickstein, "Deep information propagation"
(ICLR 2017), Fig. 5: networks train only where the depth is below a few
correlation depth scales ``xi_c``; the paper draws ``6 xi_c`` over the heat
map of accuracy after training. Here: tanh, ``sigma_b^2 = 0.05``, a grid of
weight variances ``sigma_w^2`` and depths, test accuracy on scikit-learn's
digits (not MNIST) after a fixed number of Adam steps (the paper used SGD and
RMSProp on MNIST and CIFAR-10), mean over seeds. The paper states variances;
actgeo takes standard deviations, so the script converts at its boundary:
``sigma_b = sqrt(0.05)``, ``sigma_w = sqrt(sigma_w^2)``.

Theory: ``xi_c`` from :func:`actgeo.theory.depth_scales` on a fine grid of
``sigma_w^2``, drawn as ``6 xi_c`` (and the edge of chaos,
:func:`actgeo.theory.critical_sigma_w`) over the heat map.

All ``sigma_w^2`` of one depth train as one ensemble (``_train_glue.py``).

Run ``python experiments/schoenholz2017_trainability.py --quick`` (small, CPU)
or without ``--quick`` (width 128, 4 seeds, 13 x 9 grid to depth 96, 2000
steps: an accelerator).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time

import _common
import _train_glue
import jax
import jax.numpy as jnp
import numpy as np
import tyro
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from tqdm.auto import tqdm

import actgeo
from actgeo.data import digits_split
from actgeo.theory import critical_sigma_w, depth_scales
from actgeo.theory.gaussian import Quadrature

NAME = "schoenholz2017_trainability"
ACTIVATION = "tanh"
SIGMA_B2 = 0.05
SIGMA_B = math.sqrt(SIGMA_B2)
SIGMA_W2_RANGE = (1.0, 4.0)
XI_MULTIPLE = 6
FINE_POINTS = 200
# The cheaper quadrature (about 1e-6 relative error) for the theory curve.
QUAD = Quadrature.fast()

_QUICK = dict(width=32, members=2, points=5, depths=(4, 12, 24, 48), steps=300)
_FULL = dict(
    width=128,
    members=4,
    points=13,
    depths=(2, 4, 8, 12, 16, 24, 32, 48, 64, 96),
    steps=2000,
)


@dataclasses.dataclass
class Args:
    """Trainability of tanh over (sigma_w^2, depth) against 6 xi_c."""

    out: pathlib.Path = _common.RESULTS / NAME
    """Folder for the PNG, the numbers (.zarr) and the table."""
    quick: bool = False
    """Small sizes for a CPU (width 32, 2 seeds, 5 sigma_w^2 x 4 depths)."""
    width: int | None = None
    """Hidden width N (when omitted: 128, or 32 with --quick)."""
    members: int | None = None
    """Seeds per cell (when omitted: 4, or 2 with --quick)."""
    points: int | None = None
    """sigma_w^2 values in [1, 4] (when omitted: 13, or 5 with --quick)."""
    depths: tuple[int, ...] | None = None
    """Depths L (when omitted: 2-96, or 4, 12, 24, 48 with --quick)."""
    steps: int | None = None
    """Adam steps (when omitted: 2000, or 300 with --quick)."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 64
    """Minibatch size."""
    seed: int = 0
    """Root seed."""
    progress: bool = True
    """Show progress bars."""


def _resolve(args: Args) -> dict:
    return _common.preset_sizes(args, _QUICK, _FULL)


def run(args: Args) -> xr.Dataset:
    sizes = _resolve(args)
    depths = tuple(sizes["depths"])
    grid2 = np.linspace(*SIGMA_W2_RANGE, sizes["points"])
    data = digits_split()
    root = jax.random.key(args.seed)
    shape = (grid2.size, len(depths), sizes["members"])
    accuracy = np.full(shape, np.nan)
    loss = np.full(shape, np.nan)
    for d, depth in enumerate(tqdm(depths, desc="depth", disable=not args.progress)):
        specs = [
            actgeo.NetworkSpec(
                64,
                sizes["width"],
                depth,
                ACTIVATION,
                sigma_w=math.sqrt(s2),
                sigma_b=SIGMA_B,
                readout=10,
            )
            for s2 in grid2
        ]
        out = _train_glue.train_specs(
            specs,
            data,
            members=sizes["members"],
            steps=sizes["steps"],
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            key=jax.random.fold_in(root, depth),
        )
        accuracy[:, d] = out["test_accuracy"]
        loss[:, d] = out["train_loss"]

    fine2 = np.linspace(*SIGMA_W2_RANGE, FINE_POINTS)
    # One compiled call for the fine curve and the grid's points.
    xi_c = np.asarray(
        jax.jit(jax.vmap(lambda sw: depth_scales(ACTIVATION, sw, SIGMA_B, QUAD).xi_c))(
            jnp.asarray(np.sqrt(np.concatenate([fine2, grid2])))
        )
    )
    theory, on_grid = xi_c[:FINE_POINTS], xi_c[FINE_POINTS:]
    critical = float(critical_sigma_w(ACTIVATION, SIGMA_B))
    dims = ("sigma_w2", "depth", "member")
    return xr.Dataset(
        {
            "test_accuracy": (dims, accuracy),
            "train_loss": (dims, loss),
            "xi_c_theory": ("sigma_w2", np.asarray(on_grid)),
            "xi_c_theory_fine": ("fine_sigma_w2", np.asarray(theory)),
        },
        coords={
            "sigma_w2": grid2,
            "depth": list(depths),
            "member": np.arange(sizes["members"]),
            "fine_sigma_w2": fine2,
        },
        attrs=dict(
            figure="Schoenholz et al. 2017, Fig. 5 (trainability), on digits",
            activation=ACTIVATION,
            sigma_b2=SIGMA_B2,
            sigma_b=SIGMA_B,
            sigma_convention=(
                "sigma_w2 and sigma_b2 are variances (as in the paper); the "
                "networks were built with their square roots"
            ),
            critical_sigma_w2=critical**2,
            xi_multiple=XI_MULTIPLE,
            data=data.description,
            width=sizes["width"],
            members=sizes["members"],
            steps=sizes["steps"],
            optimizer="adam",
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            seed=args.seed,
        ),
    )


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges halfway between sorted centres, the outer ones mirrored."""
    if centres.size == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mid = 0.5 * (centres[1:] + centres[:-1])
    first = centres[0] - (mid[0] - centres[0])
    last = centres[-1] + (centres[-1] - mid[-1])
    return np.concatenate([[first], mid, [last]])


def plot(ds: xr.Dataset, path: pathlib.Path) -> None:
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    grid2 = ds["sigma_w2"].values
    depths = ds["depth"].values
    mean = ds["test_accuracy"].mean("member").values  # (sigma_w2, depth)
    x_edges = _edges(grid2)
    y_edges = np.exp(_edges(np.log(depths.astype(float))))
    mesh = ax.pcolormesh(x_edges, y_edges, mean.T, vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="test accuracy (mean over seeds)")
    m = ds.attrs["xi_multiple"]
    ax.plot(
        ds["fine_sigma_w2"],
        m * ds["xi_c_theory_fine"],
        "w-",
        lw=2,
        label=f"{m} $\\xi_c$ (theory)",
    )
    ax.axvline(
        ds.attrs["critical_sigma_w2"], color="w", ls="--", lw=1, label="edge of chaos"
    )
    ax.set(
        yscale="log",
        ylim=(y_edges[0], y_edges[-1]),
        xlim=(x_edges[0], x_edges[-1]),
        xlabel="$\\sigma_w^2$",
        ylabel="depth L",
    )
    ax.set_yticks(depths, [str(d) for d in depths])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(
        f"tanh, $\\sigma_b^2$={ds.attrs['sigma_b2']}, digits, N={ds.attrs['width']}, "
        f"{ds.attrs['steps']} Adam steps",
        fontsize=10,
    )
    fig.savefig(path, dpi=120)


def summary(ds: xr.Dataset) -> str:
    depths = ds["depth"].values
    mean = ds["test_accuracy"].mean("member").values
    rows = [
        [
            f"{s2:.3g}",
            float(ds.attrs["xi_multiple"] * ds["xi_c_theory"][i]),
            *[float(v) for v in mean[i]],
        ]
        for i, s2 in enumerate(ds["sigma_w2"].values)
    ]
    text = _common.table(
        ["sigma_w^2", f"{ds.attrs['xi_multiple']} xi_c", *[f"L={d}" for d in depths]],
        rows,
    )
    return (
        f"Schoenholz et al. 2017 trainability: tanh, sigma_b^2 = "
        f"{ds.attrs['sigma_b2']}, digits test accuracy (mean over "
        f"{ds.attrs['members']} seeds), width {ds.attrs['width']}, "
        f"{ds.attrs['steps']} Adam steps (lr {ds.attrs['learning_rate']})\n"
        f"edge of chaos at sigma_w^2 = {ds.attrs['critical_sigma_w2']:.4g}; the "
        "paper's claim: accuracy falls where L exceeds about 6 xi_c\n"
        f"{text}"
    )


def main(args: Args) -> xr.Dataset:
    start = time.perf_counter()
    ds = run(args)
    _common.write_outputs(ds, args.out, NAME, plot, summary, start)
    return ds


if __name__ == "__main__":
    main(tyro.cli(Args))
