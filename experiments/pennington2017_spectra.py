"""Pennington et al. 2017: Jacobian spectra of deep networks, and dynamical isometry.

Pennington, Schoenholz and Ganguli, "Resurrecting the sigmoid in deep learning
through dynamical isometry: theory and practice" (NeurIPS 2017), Figs 1-2:
the density of the singular values of the input-output Jacobian of deep
random networks, for linear, relu, hard_tanh and tanh networks with Gaussian
or orthogonal weights, all on their edge of chaos (``chi_1 = 1``): linear and
relu at ``sigma_w = 1`` and ``sqrt(2)``, ``sigma_b = 0``; hard_tanh and tanh
at the point of the edge-of-chaos curve with ``q* = 1/64``
(:func:`actgeo.theory.edge_of_chaos`), where Pennington et al. find
orthogonal sigmoidal networks close to isometry. (hard_tanh's curve there
is its ``q* -> 0`` end, ``sigma_w = 1``, ``sigma_b = 0``: with
``|z| > 1`` at probability ``2 Phi(-8) ~ 1e-15`` it measures as linear.)
``sigma_w``, ``sigma_b`` are standard deviations (the paper plots variances).

Measured: singular values of ``J^l = dz^l/dx`` (square layers, ``D = N``)
by accumulated QR (:func:`actgeo.kernels.spectra.log_singular_values`),
at inputs of length ``q^1 = q*``; per member, the mean and variance of the
``N`` eigenvalues ``lambda = sigma^2`` of ``J J^T``, and a histogram of
``log10 sigma``. Theory: the free-probability mean and variance
(:func:`actgeo.theory.spectra.jacobian_spectrum_moments`); this library's
``J^l`` has ``l`` weight matrices and ``l - 1`` derivative diagonals.

Panels: top, the density of ``log10 sigma`` at the last layer (Gaussian and
orthogonal); bottom, the variance of ``lambda`` against depth, measured
(dots, mean over members with standard errors) and theory (lines): relu
grows linearly whatever the weights; orthogonal tanh and hard_tanh near
``q* -> 0`` stay near 0.

Run ``python experiments/pennington2017_spectra.py --quick`` (small, CPU) or
without ``--quick`` (width 512, depth 128: an accelerator).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np
import tyro
import xarray as xr
from matplotlib.figure import Figure
from tqdm.auto import tqdm

import actgeo
from actgeo.kernels import spectra
from actgeo.kernels.histogram import Bins
from actgeo.theory.criticality import edge_of_chaos
from actgeo.theory.spectra import jacobian_spectrum_moments

NAME = "pennington2017_spectra"
ACTIVATIONS = ("linear", "relu", "hard_tanh", "tanh")
INITS = ("gaussian", "orthogonal")
Q_STAR = 1.0 / 64.0
# log10 sigma, 0.05 decades per bin; relu's numerically zero singular values
# (about eps times the others) fall far below and are counted as clipped.
BINS = Bins(-40.0, 6.0, 920)  # log10 sigma; linear Gaussian nets reach 1e-30

# Members measured per call (vmapped); the last call may be smaller.
CHUNK = 8

_QUICK = dict(width=64, members=8, depth=32, inputs=2)
_FULL = dict(width=512, members=32, depth=128, inputs=2)


@dataclasses.dataclass
class Args:
    """Reproduce Pennington et al. 2017: Jacobian spectra at criticality."""

    out: pathlib.Path = _common.RESULTS / NAME
    """Folder for the PNG, the numbers (.zarr) and the table."""
    quick: bool = False
    """Small sizes for a CPU (width 64, 8 members, depth 32)."""
    width: int | None = None
    """Width N = input dimension D (when omitted: 512, or 64 with --quick)."""
    members: int | None = None
    """Random networks per setting (when omitted: 32, or 8 with --quick)."""
    depth: int | None = None
    """Layers L (when omitted: 128, or 32 with --quick)."""
    inputs: int | None = None
    """Inputs per network (when omitted: 2)."""
    activations: tuple[str, ...] = ACTIVATIONS
    """Activations to measure."""
    seed: int = 0
    """Root seed."""
    progress: bool = True
    """Show progress bars."""


def _resolve(args: Args) -> dict:
    return _common.preset_sizes(args, _QUICK, _FULL)


def critical_point(activation: str) -> tuple[float, float, float]:
    """``(sigma_w, sigma_b, q*)`` on the edge of chaos (standard deviations)."""
    if activation == "linear":
        return 1.0, 0.0, Q_STAR
    if activation == "relu":
        return math.sqrt(2.0), 0.0, Q_STAR
    curve = edge_of_chaos(activation, q=np.array([Q_STAR]))
    at = int(np.argmin(np.abs(curve.q_star - Q_STAR)))
    return float(curve.sigma_w[at]), float(curve.sigma_b[at]), Q_STAR


def depth_layers(depth: int) -> tuple[int, ...]:
    """Layers measured: powers of 2 up to ``depth``, and ``depth``."""
    layers = [2**k for k in range(int(math.log2(depth)) + 1)]
    return tuple(sorted(set(layers) | {depth}))


@functools.partial(jax.jit, static_argnames=("activation", "layers", "width"))
def _measure(params, x, *, activation, layers, width):
    """Per member: mean, variance of lambda ``(E, K, B)``; counts ``(E, K, bins)``."""

    def one(p):
        log_sv = spectra.log_singular_values(p, x, activation, layers=layers)
        s = spectra.summarize_spectrum(log_sv, width, BINS)
        return s.mean, s.variance, jnp.sum(s.log10_sigma.counts, axis=1)

    return jax.vmap(one)(params)


def _measure_members(measure, spec, members, key, chunk=CHUNK):
    """``measure`` over members ``0..members-1``, ``chunk`` at a time (NumPy)."""
    outs = []
    for start in range(0, members, chunk):
        index = jnp.arange(start, min(start + chunk, members), dtype=jnp.uint32)
        params = actgeo.sample(spec, index, key=key)
        outs.append(jax.tree.map(np.asarray, measure(params)))
    return tuple(np.concatenate(parts) for parts in zip(*outs, strict=True))


def _inputs(key, dim, n, q_in):
    return _common.inputs_at(key, dim, [q_in] * n, jnp.float32)


def run(args: Args) -> xr.Dataset:
    sizes = _resolve(args)
    width, members, depth = sizes["width"], sizes["members"], sizes["depth"]
    n_inputs = sizes["inputs"]
    layers = depth_layers(depth)
    root = jax.random.key(args.seed)
    net_key, input_key = jax.random.split(root)
    acts = tuple(args.activations)
    shape = (len(acts), len(INITS))
    mean_m = np.zeros((*shape, len(layers)))
    mean_se, var_m, var_se = (np.zeros_like(mean_m) for _ in range(3))
    counts = np.zeros((*shape, len(layers), BINS.count), np.int64)
    theory_mean = np.zeros((*shape, depth))
    theory_var = np.zeros_like(theory_mean)
    points = []
    settings = [(a, i) for a in acts for i in INITS]
    bar = tqdm(settings, desc="settings", disable=not args.progress)
    for activation, init in bar:
        a, k = acts.index(activation), INITS.index(init)
        sigma_w, sigma_b, q_star = critical_point(activation)
        if init == INITS[0]:
            points.append((sigma_w, sigma_b, q_star))
        q_in = (q_star - sigma_b**2) / sigma_w**2
        spec = actgeo.NetworkSpec(
            input_dim=width,
            width=width,
            depth=depth,
            activation=activation,
            sigma_w=sigma_w,
            sigma_b=sigma_b,
            init=init,
        )
        x = _inputs(input_key, width, n_inputs, q_in)
        measure = functools.partial(
            _measure, x=x, activation=activation, layers=layers, width=width
        )
        mean, var, hist = _measure_members(measure, spec, members, net_key)
        # Per member: average over its inputs; errors over members.
        mean_m[a, k], mean_se[a, k] = _common.mean_and_error(mean.mean(-1))
        var_m[a, k], var_se[a, k] = _common.mean_and_error(var.mean(-1))
        counts[a, k] = hist.sum(0)
        theory = jacobian_spectrum_moments(
            activation, sigma_w, sigma_b, depth, q_in, init=init
        )
        theory_mean[a, k] = np.asarray(theory.mean)
        theory_var[a, k] = np.asarray(theory.variance)

    dims = ("activation", "init")
    ds = xr.Dataset(
        {
            "mean_measured": ((*dims, "layer"), mean_m),
            "mean_measured_se": ((*dims, "layer"), mean_se),
            "variance_measured": ((*dims, "layer"), var_m),
            "variance_measured_se": ((*dims, "layer"), var_se),
            "log10_sigma_counts": ((*dims, "layer", "bin"), counts),
            "mean_theory": ((*dims, "depth"), theory_mean),
            "variance_theory": ((*dims, "depth"), theory_var),
            "sigma_w": ("activation", np.array([p[0] for p in points])),
            "sigma_b": ("activation", np.array([p[1] for p in points])),
            "q_star": ("activation", np.array([p[2] for p in points])),
        },
        coords={
            "activation": list(acts),
            "init": list(INITS),
            "layer": list(layers),
            "depth": np.arange(1, depth + 1),
            "bin": BINS.edges[:-1] + 0.5 * BINS.width,
        },
        attrs=dict(
            figure="Pennington, Schoenholz & Ganguli 2017, Figs 1-2",
            sigma_convention="standard deviations",
            width=width,
            input_dim=width,
            members=members,
            inputs=n_inputs,
            max_depth=depth,
            seed=args.seed,
            bins=f"log10 sigma over [{BINS.lo}, {BINS.hi}] in {BINS.count} bins",
            moments="over the N eigenvalues of J J^T, per member averaged over "
            "its inputs",
            errors="standard error of the mean over members",
            jacobian="J^l = dz^l/dx: l weight matrices, l - 1 derivative diagonals",
        ),
    )
    return ds


_GROUP = 5  # histogram bins per plotted bar


def plot(ds: xr.Dataset, path: pathlib.Path) -> None:
    acts = list(ds["activation"].values)
    fig = Figure(figsize=(4 * len(acts), 8), layout="constrained")
    axes = np.asarray(fig.subplots(2, len(acts), squeeze=False))
    fine = ds["bin"].values
    width = float(fine[1] - fine[0])
    usable = fine.size - fine.size % _GROUP
    centers = fine[:usable].reshape(-1, _GROUP).mean(1)
    last = ds.sizes["layer"] - 1
    depth_last = int(ds["layer"].values[-1])
    layers = ds["layer"].values
    for a, act in enumerate(acts):
        top, bottom = axes[0, a], axes[1, a]
        for k, init in enumerate(ds["init"].values):
            color = f"C{k}"
            c = ds["log10_sigma_counts"][a, k, last].values.astype(float)
            # Shown in groups of _GROUP bins: a few thousand singular values
            # over 2400 bins would be mostly noise.
            usable = c.size - c.size % _GROUP
            c = c[:usable].reshape(-1, _GROUP).sum(1)
            density = c / max(c.sum(), 1) / (width * _GROUP)
            th_mean = float(ds["mean_theory"][a, k, depth_last - 1])
            th_var = float(ds["variance_theory"][a, k, depth_last - 1])
            top.step(
                centers,
                np.where(density > 0, density, np.nan),
                where="mid",
                color=color,
                label=f"{init}: theory mean {th_mean:.3g}, var {th_var:.3g}",
            )
            if th_mean > 0:
                # sigma at the theory's mean eigenvalue: sqrt(mean lambda).
                top.axvline(0.5 * math.log10(th_mean), color=color, ls=":", lw=1)
            bottom.plot(
                ds["depth"], ds["variance_theory"][a, k], color=color, label=init
            )
            bottom.errorbar(
                layers,
                ds["variance_measured"][a, k],
                ds["variance_measured_se"][a, k],
                fmt="o",
                ms=4,
                color=color,
            )
        finite = np.nonzero(
            ds["log10_sigma_counts"][a, :, last]
            .values.sum(0)[:usable]
            .reshape(-1, _GROUP)
            .sum(1)
        )[0]
        if finite.size:
            top.set_xlim(centers[finite[0]] - 0.5, centers[finite[-1]] + 0.5)
        # Log scales: an orthogonal spike and a Gaussian spread over decades
        # share one panel; variances span 1e-2 (tanh) to 1e3 (relu), and a
        # variance of exactly zero (linear orthogonal) sits in the linear
        # band of the symlog axis.
        top.set_yscale("log")
        bottom.set_yscale("symlog", linthresh=1e-3)
        sw, sb = float(ds["sigma_w"][a]), float(ds["sigma_b"][a])
        top.set_title(
            f"{act}: $\\sigma_w$={sw:.4g}, $\\sigma_b$={sb:.3g}, L={depth_last}"
        )
        top.set(xlabel="$\\log_{10}\\sigma$", ylabel="density")
        bottom.set(xlabel="layer l", ylabel="variance of $\\lambda$ ($JJ^T$)")
        bottom.set_title(f"{act}: variance against depth")
        top.legend(fontsize=7, loc="best")
        bottom.legend(fontsize=8, loc="upper left")
    fig.suptitle(
        f"Pennington et al. 2017: Jacobian spectra on the edge of chaos, "
        f"N = D = {ds.attrs['width']}, {ds.attrs['members']} networks x "
        f"{ds.attrs['inputs']} inputs\ntop: measured density at the last layer, "
        "dotted sqrt of the theory's mean eigenvalue; bottom: lines theory "
        "(free probability), dots measured ± s.e."
    )
    fig.savefig(path, dpi=110)


def summary(ds: xr.Dataset) -> str:
    rows = []
    for a, act in enumerate(ds["activation"].values):
        for k, init in enumerate(ds["init"].values):
            for j, layer in enumerate(ds["layer"].values):
                rows.append(
                    [
                        act,
                        init,
                        int(layer),
                        float(ds["mean_measured"][a, k, j]),
                        float(ds["mean_measured_se"][a, k, j]),
                        float(ds["mean_theory"][a, k, layer - 1]),
                        float(ds["variance_measured"][a, k, j]),
                        float(ds["variance_measured_se"][a, k, j]),
                        float(ds["variance_theory"][a, k, layer - 1]),
                    ]
                )
    header = ["activation", "init", "layer", "mean", "s.e.", "mean theory",
              "var", "s.e.", "var theory"]  # fmt: skip
    params = ", ".join(
        f"{act} (sigma_w {float(ds['sigma_w'][a]):.4g}, sigma_b "
        f"{float(ds['sigma_b'][a]):.3g})"
        for a, act in enumerate(ds["activation"].values)
    )
    return (
        f"Pennington et al. 2017: eigenvalues lambda of J J^T, N = D = "
        f"{ds.attrs['width']}, {ds.attrs['members']} members x "
        f"{ds.attrs['inputs']} inputs, q^1 = q* = {Q_STAR:g}\n"
        f"critical settings: {params}\n{_common.table(header, rows)}"
    )


def main(args: Args) -> xr.Dataset:
    start = time.perf_counter()
    ds = run(args)
    _common.write_outputs(ds, args.out, NAME, plot, summary, start)
    return ds


if __name__ == "__main__":
    main(tyro.cli(Args))
