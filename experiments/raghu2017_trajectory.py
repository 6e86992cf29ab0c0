"""Raghu et al. 2017: trajectory length grows exponentially with depth.

Raghu, Poole, Kleinberg, Ganguli and Sohl-Dickstein, "On the expressive power
of deep neural networks" (ICML 2017), trajectory-length figures: the length
of the image of a one-dimensional input trajectory grows geometrically with
depth once ``sigma_w`` is large, for hard tanh (their main case) and tanh.
Here the trajectory is a great circle of radius ``sqrt(D q_in)``, ``q_in =
1``, ``sigma_b = 0.3``, and ``sigma_w`` in {1, 2, 4, 8} (standard
deviations; the paper sweeps ``sigma_w^2``). Lengths are measured with
:func:`actgeo.kernels.paths.trajectory` (exact ``dz/dt`` by forward-mode
``jvp``, periodic trapezoid over ``S`` samples, which averages the
self-averaging speed even where deep chaotic images are not resolved).

Theory: :func:`actgeo.theory.predict`'s ``trajectory_length``, ``2 pi r
sqrt(N a_l)`` with ``a_(l+1) = chi_1(q^l) a_l``, so the growth per layer is
``sqrt(chi_1(q^l))``, tending to ``sqrt(chi_1(q*))``. The table gives the
growth rate per layer fitted over the second half of the layers (a
least-squares line through ``log`` length), measured and theory.

Run ``python experiments/raghu2017_trajectory.py --quick`` (CPU) or without
``--quick`` (width 1000, 64 members: an accelerator).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time

import _common
import jax
import matplotlib
import numpy as np
import tyro
import xarray as xr
from matplotlib.figure import Figure
from tqdm.auto import tqdm

import actgeo
from actgeo.kernels import paths
from actgeo.theory.predictions import predict

NAME = "raghu2017_trajectory"
ACTIVATIONS = ("hard_tanh", "tanh")
SIGMA_WS = (1.0, 2.0, 4.0, 8.0)
SIGMA_B = 0.3
Q_IN = 1.0

_QUICK = dict(width=128, members=8, depth=20, samples=256)
_FULL = dict(width=1000, members=64, depth=30, samples=1024)


@dataclasses.dataclass
class Args:
    """Reproduce Raghu et al. 2017: trajectory length against depth."""

    out: pathlib.Path = _common.RESULTS / NAME
    """Folder for the PNG, the numbers (.zarr) and the table."""
    quick: bool = False
    """Small sizes for a CPU (width 128, 8 members, 20 layers, 256 samples)."""
    width: int | None = None
    """Hidden width N (when omitted: 1000, or 128 with --quick)."""
    members: int | None = None
    """Random networks per setting (when omitted: 64, or 8 with --quick)."""
    depth: int | None = None
    """Layers L (when omitted: 30, or 20 with --quick)."""
    samples: int | None = None
    """Samples S on the circle (when omitted: 1024, or 256 with --quick)."""
    input_dim: int = 32
    """Input dimension D."""
    seed: int = 0
    """Root seed."""
    progress: bool = True
    """Show progress bars."""


def _resolve(args: Args) -> dict:
    return _common.preset_sizes(args, _QUICK, _FULL)


@functools.partial(jax.jit, static_argnames=("activation",))
def _measure(params, path, *, activation):
    def one(p):
        return (paths.trajectory(p, path, activation).log10_length,)

    return jax.vmap(one)(params)


def growth_rate(log10_length: np.ndarray, start: int) -> float:
    """Growth factor per layer: ``10^slope`` of a line through ``log10`` length
    over layers ``start..L`` (0-based indices into the ``(L,)`` array)."""
    layers = np.arange(start, log10_length.size, dtype=float)
    segment = np.asarray(log10_length[start:], float)
    if segment.size < 2 or not np.all(np.isfinite(segment)):
        return math.nan
    slope, _ = np.polyfit(layers, segment, 1)
    return float(10.0**slope)


def run(args: Args) -> xr.Dataset:
    sizes = _resolve(args)
    width, members, depth, samples = (
        sizes[k] for k in ("width", "members", "depth", "samples")
    )
    dim = args.input_dim
    net_key, path_key = jax.random.split(jax.random.key(args.seed))
    radius = math.sqrt(dim * Q_IN)
    path = paths.random_great_circle(path_key, dim, radius, samples)
    shape = (len(ACTIVATIONS), len(SIGMA_WS), depth)
    mean, se, theory = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    grid = [(a, s) for a in range(len(ACTIVATIONS)) for s in range(len(SIGMA_WS))]
    for i, j in tqdm(grid, desc="settings", disable=not args.progress):
        activation, sigma_w = ACTIVATIONS[i], SIGMA_WS[j]
        spec = actgeo.NetworkSpec(
            input_dim=dim,
            width=width,
            depth=depth,
            activation=activation,
            sigma_w=sigma_w,
            sigma_b=SIGMA_B,
        )
        measure = functools.partial(_measure, path=path, activation=activation)
        (log10_length,) = _common._run(
            measure, spec, members, net_key, samples, np.float32, args.progress, ""
        )
        mean[i, j], se[i, j] = _common.mean_and_error(
            np.asarray(log10_length[:, 1:], float)
        )
        th = predict(
            activation, sigma_w, SIGMA_B, depth, width=width, input_dim=dim, q_in=Q_IN
        )
        theory[i, j] = np.log10(np.asarray(th.trajectory_length, float))
    dims = ("activation", "sigma_w", "layer")
    return xr.Dataset(
        {
            "log10_length_measured": (dims, mean),
            "log10_length_measured_se": (dims, se),
            "log10_length_theory": (dims, theory),
        },
        coords={
            "activation": np.array(ACTIVATIONS, dtype=object),
            "sigma_w": list(SIGMA_WS),
            "layer": np.arange(1, depth + 1),
        },
        attrs=dict(
            figure="Raghu et al. 2017, trajectory length against depth",
            sigma_b=SIGMA_B,
            q_in=Q_IN,
            input_length=2 * math.pi * radius,
            sigma_convention="standard deviations",
            width=width,
            members=members,
            depth=depth,
            samples=samples,
            input_dim=dim,
            seed=args.seed,
            measured="mean over members of log10 length, with its standard error",
            random_numbers="the same member draws and circle for every setting",
        ),
    )


def plot(ds: xr.Dataset, path: pathlib.Path) -> None:
    n_act = ds.sizes["activation"]
    fig = Figure(figsize=(6.5 * n_act, 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n_act))
    colors = matplotlib.colormaps["viridis"](
        np.linspace(0.0, 0.85, ds.sizes["sigma_w"])
    )
    layers = ds["layer"].values
    for ax, act in zip(axes, ds["activation"].values, strict=True):
        for j, sw in enumerate(ds["sigma_w"].values):
            sel = dict(activation=act, sigma_w=sw)
            ax.plot(layers, ds["log10_length_theory"].sel(sel), color=colors[j])
            ax.errorbar(
                layers,
                ds["log10_length_measured"].sel(sel),
                ds["log10_length_measured_se"].sel(sel),
                fmt="o",
                ms=3,
                color=colors[j],
                label=f"$\\sigma_w$={sw:g}",
            )
        ax.axhline(np.log10(ds.attrs["input_length"]), color="gray", lw=0.8)
        ax.set(xlabel="layer l", ylabel="log10 trajectory length", title=str(act))
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Raghu et al. 2017: great circle (gray: its length), "
        f"$\\sigma_b$={ds.attrs['sigma_b']}, N={ds.attrs['width']}, "
        f"{ds.attrs['members']} networks; lines theory, dots mean ± s.e."
    )
    fig.savefig(path, dpi=120)


def summary(ds: xr.Dataset) -> str:
    depth = ds.sizes["layer"]
    start = depth // 2
    rows = []
    for act in ds["activation"].values:
        for sw in ds["sigma_w"].values:
            sel = dict(activation=act, sigma_w=sw)
            meas = ds["log10_length_measured"].sel(sel).values
            theo = ds["log10_length_theory"].sel(sel).values
            rows.append(
                [
                    str(act),
                    f"{sw:g}",
                    growth_rate(meas, start),
                    growth_rate(theo, start),
                    float(meas[-1]),
                    float(theo[-1]),
                ]
            )
    header = ["activation", "sigma_w", "rate meas", "rate theory"]
    header += [f"log10 len L={depth}", "theory"]
    return (
        f"Raghu et al. 2017: trajectory length, great circle of length "
        f"{ds.attrs['input_length']:.4g}, sigma_b = {ds.attrs['sigma_b']}, width "
        f"{ds.attrs['width']}, {ds.attrs['members']} members; growth rate per "
        f"layer fitted over layers {start + 1}..{depth}\n"
        f"{_common.table(header, rows)}"
    )


def main(args: Args) -> xr.Dataset:
    start = time.perf_counter()
    ds = run(args)
    _common.write_outputs(ds, args.out, NAME, plot, summary, start)
    return ds


if __name__ == "__main__":
    main(tyro.cli(Args))
