"""Poole et al. 2016, Figs 3-4: a great circle through 40 layers of tanh networks.

Poole, Lahiri, Raghu, Sohl-Dickstein and Ganguli, "Exponential expressivity in
deep neural networks through transient chaos" (NeurIPS 2016). tanh,
``sigma_b = 0.3``, ``sigma_w`` in {1.3, 2.5, 4} (standard deviations, the
values of ``poole2016_maps``). The input is a great circle of radius
``sqrt(D q_in)`` with ``q^1 = q*``, so every layer sits at its fixed length.

Per layer ``l``: the image's length ``int |dz/dtheta| dtheta``, the normalised
curvature ``sqrt(N) kappa`` (mean over arc length) and the length of the Gauss
map ``int kappa |dz/dtheta| dtheta``, measured with
:func:`actgeo.kernels.paths.trajectory` (exact ``dz/dtheta`` and
``d^2z/dtheta^2`` by nested forward-mode ``jvp``; the circle is sampled at
``S`` angles, and since speed and curvature self-average over the ``N`` units
their sample means converge even where the deep chaotic image is far too
wiggly for ``S`` samples to resolve its shape). Lines are the theory of
:mod:`actgeo.theory.paths`: ``g_(l+1) = chi_1 g_l`` and
``kbar_(l+1)^2 = 3 chi_2 / chi_1^2 + kbar_l^2 / chi_1``.

Run ``python experiments/poole2016_circles.py --quick`` (CPU) or without
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
from actgeo.theory.criticality import q_star
from actgeo.theory.paths import curvature_prediction

NAME = "poole2016_circles"
ACTIVATION = "tanh"
SIGMA_B = 0.3
SIGMA_WS = (1.3, 2.5, 4.0)
TABLE_LAYERS = (1, 2, 5, 10, 20, 40)

_QUICK = dict(width=128, members=16, depth=40, samples=256)
_FULL = dict(width=1000, members=64, depth=40, samples=1024)


@dataclasses.dataclass
class Args:
    """Reproduce Poole et al. 2016, Figs 3-4 (tanh, sigma_b = 0.3)."""

    out: pathlib.Path = _common.RESULTS / NAME
    """Folder for the PNG, the numbers (.zarr) and the table."""
    quick: bool = False
    """Small sizes for a CPU (width 128, 16 members, 256 samples)."""
    width: int | None = None
    """Hidden width N (when omitted: 1000, or 128 with --quick)."""
    members: int | None = None
    """Random networks per sigma_w (when omitted: 64, or 16 with --quick)."""
    depth: int | None = None
    """Layers L (when omitted: 40)."""
    samples: int | None = None
    """Angles S on the circle (when omitted: 1024, or 256 with --quick)."""
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
        tr = paths.trajectory(p, path, activation)
        return tr.length, tr.mean_curvature, tr.gauss_length, tr.turning

    return jax.vmap(one)(params)


def run(args: Args) -> xr.Dataset:
    sizes = _resolve(args)
    width, members, depth, samples = (
        sizes[k] for k in ("width", "members", "depth", "samples")
    )
    dim = args.input_dim
    net_key, path_key = jax.random.split(jax.random.key(args.seed))
    fields = ("length", "curvature", "gauss_length", "turning")
    measured = {f: [] for f in fields}
    errors = {f: [] for f in fields}
    theory = {f: [] for f in ("length", "curvature", "gauss_length")}
    extra = {k: [] for k in ("q_star", "q_in", "chi_1", "chi_2")}
    for sigma_w in tqdm(SIGMA_WS, desc="sigma_w", disable=not args.progress):
        qs = float(q_star(ACTIVATION, sigma_w, SIGMA_B))
        q_in = (qs - SIGMA_B**2) / sigma_w**2
        path = paths.random_great_circle(path_key, dim, math.sqrt(dim * q_in), samples)
        spec = actgeo.NetworkSpec(
            input_dim=dim,
            width=width,
            depth=depth,
            activation=ACTIVATION,
            sigma_w=sigma_w,
            sigma_b=SIGMA_B,
        )
        measure = functools.partial(_measure, path=path, activation=ACTIVATION)
        out = _common._run(
            measure, spec, members, net_key, samples, np.float32, args.progress, ""
        )
        length, curvature, gauss, turning = (np.asarray(o[:, 1:], float) for o in out)
        curvature = curvature * math.sqrt(width)
        for name, values in zip(
            fields, (length, curvature, gauss, turning), strict=True
        ):
            mean, se = _common.mean_and_error(values)
            measured[name].append(mean)
            errors[name].append(se)
        th = curvature_prediction(
            ACTIVATION, sigma_w, SIGMA_B, depth, width=width, q_in=q_in
        )
        theory["length"].append(np.asarray(th.length))
        theory["curvature"].append(np.asarray(th.curvature_normalised))
        theory["gauss_length"].append(np.asarray(th.gauss_length))
        extra["q_star"].append(qs)
        extra["q_in"].append(q_in)
        extra["chi_1"].append(float(th.chi_1[-1]))
        extra["chi_2"].append(float(th.chi_2[-1]))

    dims = ("sigma_w", "layer")
    data = {}
    for name in fields:
        data[f"{name}_measured"] = (dims, np.stack(measured[name]))
        data[f"{name}_measured_se"] = (dims, np.stack(errors[name]))
    for name, values in theory.items():
        data[f"{name}_theory"] = (dims, np.stack(values))
    for name, values in extra.items():
        data[name] = ("sigma_w", np.array(values))
    return xr.Dataset(
        data,
        coords={"sigma_w": list(SIGMA_WS), "layer": np.arange(1, depth + 1)},
        attrs=dict(
            figure="Poole et al. 2016, Figs 3-4",
            activation=ACTIVATION,
            sigma_b=SIGMA_B,
            sigma_convention="standard deviations",
            width=width,
            members=members,
            depth=depth,
            samples=samples,
            input_dim=dim,
            seed=args.seed,
            curvature="sqrt(N) times the arc-length mean of kappa",
            errors="standard error of the mean over members",
            random_numbers="the same member draws and circle for every sigma_w",
        ),
    )


def plot(ds: xr.Dataset, path: pathlib.Path) -> None:
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    axes = fig.subplots(1, 3)
    colors = matplotlib.colormaps["viridis"](
        np.linspace(0.0, 0.85, ds.sizes["sigma_w"])
    )
    layers = ds["layer"].values
    panels = (
        ("length", "(a) length of the image", "length"),
        ("curvature", "(b) normalised curvature $\\sqrt{N}\\,\\bar\\kappa$", "kbar"),
        ("gauss_length", "(c) length of the Gauss map", "Gauss-map length"),
    )
    for ax, (name, title, ylabel) in zip(axes, panels, strict=True):
        for i, sw in enumerate(ds["sigma_w"].values):
            ax.plot(layers, ds[f"{name}_theory"][i], color=colors[i], lw=1.2)
            ax.errorbar(
                layers,
                ds[f"{name}_measured"][i],
                ds[f"{name}_measured_se"][i],
                fmt="o",
                ms=3,
                color=colors[i],
                label=f"$\\sigma_w$={sw:g}",
            )
        ax.set(yscale="log", xlabel="layer l", ylabel=ylabel, title=title)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Poole et al. 2016: great circle at $q^*$ through tanh networks, "
        f"$\\sigma_b$={ds.attrs['sigma_b']}, N={ds.attrs['width']}, "
        f"{ds.attrs['members']} networks, S={ds.attrs['samples']}; "
        "lines theory, dots mean ± s.e."
    )
    fig.savefig(path, dpi=120)


def summary(ds: xr.Dataset) -> str:
    rows = []
    for i, sw in enumerate(ds["sigma_w"].values):
        for layer in TABLE_LAYERS:
            if layer > ds.sizes["layer"]:
                continue
            j = layer - 1
            row = [f"{sw:g}", layer]
            for name in ("length", "curvature", "gauss_length"):
                row += [
                    float(ds[f"{name}_measured"][i, j]),
                    float(ds[f"{name}_theory"][i, j]),
                ]
            rows.append(row)
    header = ["sigma_w", "layer", "length", "theory", "sqrtN kappa", "theory"]
    header += ["Gauss len", "theory"]
    fixed = _common.table(
        ["sigma_w", "q*", "chi_1", "chi_2"],
        [
            [f"{sw:g}", *(float(ds[k][i]) for k in ("q_star", "chi_1", "chi_2"))]
            for i, sw in enumerate(ds["sigma_w"].values)
        ],
    )
    return (
        f"Poole et al. 2016, tanh, sigma_b = {ds.attrs['sigma_b']}, width "
        f"{ds.attrs['width']}, {ds.attrs['members']} members, "
        f"{ds.attrs['samples']} samples per circle\n{fixed}\n\n"
        f"{_common.table(header, rows)}"
    )


def main(args: Args) -> xr.Dataset:
    start = time.perf_counter()
    ds = run(args)
    _common.write_outputs(ds, args.out, NAME, plot, summary, start)
    return ds


if __name__ == "__main__":
    main(tyro.cli(Args))
