"""Hayou et al. 2019: edge-of-chaos curves of relu, tanh, elu and silu.

Hayou, Doucet and Rousseau, "On the impact of the activation function on
deep neural networks training" (ICML 2019). The edge of chaos is the set of
``(sigma_b, sigma_w)`` (standard deviations) at which the q-map has a fixed
point ``q*`` with ``chi_1(q*) = 1``: a small perturbation of the input
neither grows nor shrinks from layer to layer. Theory:
:func:`actgeo.theory.criticality.edge_of_chaos` (relu: the single point
``sigma_b = 0``, ``sigma_w = sqrt(2)``) and
:func:`actgeo.theory.criticality.critical_sigma_w`.

Measurement: for a few ``sigma_b`` per activation, ensembles of random
networks over a grid of ``sigma_w`` around the theory's critical value
(the same member draws at every ``sigma_w``: common random numbers). Inputs
start at ``q^1 = q*`` of the critical point; a random unit tangent ``v`` per
input is pushed forward with ``jax.jvp`` through
:func:`actgeo.kernels.preactivations`, giving ``|J^l v|^2``. The measured
growth rate per layer is ``log`` of the mean over members, inputs and layers
past a burn-in of ``|J^l v|^2 / |J^(l-1) v|^2``; its theory value is
``log chi_1(q*)``. Where the measured rate crosses zero (linear interpolation
between the two grid points around the sign change) is the measured critical
``sigma_w``, drawn as a dot on the theory curve.

silu's edge of chaos is a stable fixed point only for ``sigma_b`` above about
0.75; one ``sigma_b`` on its unstable branch is measured too, to show that a
network there does not stay on the curve.

Run ``python experiments/hayou2019_edge_of_chaos.py --quick`` (small, CPU)
or without ``--quick`` (width 1000, 256 members: an accelerator).
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
from actgeo.theory.criticality import (
    critical_sigma_w,
    edge_of_chaos,
    q_star,
)
from actgeo.theory.gaussian import Quadrature
from actgeo.theory.maps import chi_1, iterate

NAME = "hayou2019_edge_of_chaos"
ACTIVATIONS = ("relu", "tanh", "elu", "silu")
# sigma_b values measured per activation; silu 0.3 lies on its unstable branch.
SIGMA_BS = {
    "relu": (0.0,),
    "tanh": (0.1, 0.3, 0.6),
    "elu": (0.1, 0.3, 0.6),
    "silu": (0.3, 0.8, 1.2),
}
SIGMA_B_MAX = 1.5  # extent of the plotted curves
BURN_IN = 4  # layers whose growth is left out while q settles
N_INPUTS = 4
QUAD = Quadrature.fast()

_QUICK = dict(width=128, members=16, depth=20, grid=7, spread=0.12)
_FULL = dict(width=1000, members=256, depth=50, grid=11, spread=0.08)


@dataclasses.dataclass
class Args:
    """Reproduce Hayou et al. 2019's edge-of-chaos curves with measured points."""

    out: pathlib.Path = _common.RESULTS / NAME
    """Folder for the PNG, the numbers (.zarr) and the table."""
    quick: bool = False
    """Small sizes for a CPU (width 128, 16 members, 20 layers, 7 sigma_w)."""
    width: int | None = None
    """Hidden width N (when omitted: 1000, or 128 with --quick)."""
    members: int | None = None
    """Random networks per setting (when omitted: 256, or 16 with --quick)."""
    depth: int | None = None
    """Layers L (when omitted: 50, or 20 with --quick)."""
    grid: int | None = None
    """sigma_w values per sigma_b (when omitted: 11, or 7 with --quick)."""
    spread: float | None = None
    """Half-width of the sigma_w grid, relative to the critical sigma_w (when
    omitted: 0.08, or 0.12 with --quick)."""
    activations: tuple[str, ...] = ACTIVATIONS
    """Activations to measure (each with its preset sigma_b values)."""
    input_dim: int = 32
    """Input dimension D."""
    seed: int = 0
    """Root seed."""
    progress: bool = True
    """Show progress bars."""


def _resolve(args: Args) -> dict:
    return _common.preset_sizes(args, _QUICK, _FULL)


def _curve_sigma_w(curve, sigma_b: float) -> float:
    """``sigma_w`` of the edge-of-chaos curve at ``sigma_b`` (any branch)."""
    order = np.argsort(curve.sigma_b)
    return float(np.interp(sigma_b, curve.sigma_b[order], curve.sigma_w[order]))


def _crossing(sigma_w: np.ndarray, rate: np.ndarray, error: np.ndarray):
    """Where ``rate`` crosses zero, by linear interpolation, and its error."""
    changes = np.nonzero((rate[:-1] <= 0) & (rate[1:] > 0))[0]
    if changes.size != 1:
        return math.nan, math.nan
    i = changes[0]
    slope = (rate[i + 1] - rate[i]) / (sigma_w[i + 1] - sigma_w[i])
    root = sigma_w[i] - rate[i] / slope
    t = (root - sigma_w[i]) / (sigma_w[i + 1] - sigma_w[i])
    rate_error = math.hypot((1 - t) * error[i], t * error[i + 1])
    return float(root), float(rate_error / abs(slope))


def _growth(stretch: np.ndarray):
    """Growth rate per layer and its standard error, from ``|J^l v|^2`` (E, L, B)."""
    ratio = stretch[:, BURN_IN + 1 :] / stretch[:, BURN_IN:-1]
    per_member = ratio.mean(axis=(1, 2))
    mean, error = _common.mean_and_error(per_member)
    return math.log(mean), error / mean


@functools.partial(jax.jit, static_argnames=("activation", "depth"))
def _rate_theory(sigma_w, sigma_b, q_in, *, activation, depth):
    """Theory growth rates: over the measured layers, and at the fixed point.

    ``|J^l v|^2 / |J^(l-1) v|^2`` has mean ``chi_1(q^(l-1))``; the first value
    averages it over the same layers as the measurement (so that a ``q``
    still moving towards its fixed point is accounted for), the second is
    ``log chi_1(q*)`` at the fixed point reached from the same start.
    """
    traj = iterate(activation, sigma_w, sigma_b, depth, q_in, 0.0, QUAD)
    window = jnp.log(jnp.mean(traj.chi_1[BURN_IN : depth - 1]))
    q1 = sigma_w**2 * q_in + sigma_b**2
    qs = q_star(activation, sigma_w, sigma_b, q0=q1, quadrature=QUAD)
    return window, jnp.log(chi_1(activation, qs, sigma_w, QUAD))


def _setting(args, sizes, act: str, sigma_b: float, curve, key) -> dict:
    """Measured growth over a sigma_w grid at one ``(activation, sigma_b)``."""
    try:
        centre = critical_sigma_w(act, sigma_b)
        stable = True
    except ValueError:
        centre = _curve_sigma_w(curve, sigma_b)
        stable = False
    q_crit = float(q_star(act, centre, sigma_b, quadrature=QUAD))
    if not np.isfinite(q_crit) or q_crit < 1e-6:
        # No positive fixed point to start from (or, for relu on its critical
        # point, every q is one): start at q^1 = 1.
        q_crit = 1.0
    q_in = (q_crit - sigma_b**2) / centre**2
    k_x, k_v, k_net = jax.random.split(key, 3)
    dim = args.input_dim
    x = _common.inputs_at(k_x, dim, [q_in] * N_INPUTS, jnp.float32)
    v = _common.inputs_at(k_v, dim, [1.0 / dim] * N_INPUTS, jnp.float32)
    grid = centre * (
        1.0 + np.linspace(-sizes["spread"], sizes["spread"], sizes["grid"])
    )
    rate, rate_err, rate_th, rate_fixed, q_last = [], [], [], [], []
    for sigma_w in grid:
        spec = actgeo.NetworkSpec(
            input_dim=dim,
            width=sizes["width"],
            depth=sizes["depth"],
            activation=act,
            sigma_w=float(sigma_w),
            sigma_b=sigma_b,
        )
        q, stretch = _common.measure_stretch(
            spec, x, v, sizes["members"], key=k_net, progress=False
        )
        growth, error = _growth(stretch)
        rate.append(growth)
        rate_err.append(error)
        q_last.append(float(q[:, -1].mean()))
        window, fixed = _rate_theory(
            sigma_w, sigma_b, q_in, activation=act, depth=sizes["depth"]
        )
        rate_th.append(float(window))
        rate_fixed.append(float(fixed))
    rate, rate_err = np.array(rate), np.array(rate_err)
    measured, measured_err = _crossing(grid, rate, rate_err)
    return dict(
        activation=act,
        sigma_b=sigma_b,
        stable=stable,
        sigma_w_theory=centre,
        q_star_theory=q_crit,
        sigma_w_measured=measured,
        sigma_w_measured_err=measured_err,
        grid=grid,
        rate=rate,
        rate_err=rate_err,
        rate_theory=np.array(rate_th),
        rate_theory_fixed_point=np.array(rate_fixed),
        sigma_w_theory_window=_crossing(grid, np.array(rate_th), np.zeros(len(grid)))[
            0
        ],
        q_last=np.array(q_last),
    )


def _dtype(value):
    return object if isinstance(value, str) else None


def run(args: Args) -> xr.Dataset:
    sizes = _resolve(args)
    root = jax.random.key(args.seed)
    curves, rows = {}, []
    settings = [(a, b) for a in args.activations for b in SIGMA_BS[a]]
    bar = tqdm(settings, desc="settings", disable=not args.progress)
    for index, (act, sigma_b) in enumerate(bar):
        bar.set_postfix_str(f"{act} sigma_b={sigma_b}")
        if act not in curves:
            curves[act] = edge_of_chaos(act)
        key = jax.random.fold_in(root, index)
        rows.append(_setting(args, sizes, act, sigma_b, curves[act], key))

    n_curve = max(len(c.sigma_b) for c in curves.values())

    def padded(values, fill=np.nan):
        out = np.full(n_curve, fill, float)
        out[: len(values)] = values
        return out

    names = list(curves)
    setting_labels = [f"{r['activation']} sigma_b={r['sigma_b']:g}" for r in rows]
    per_setting = {
        # Strings as objects: zarr stores them as variable-length strings.
        k: ("setting", np.array([r[k] for r in rows], dtype=_dtype(rows[0][k])))
        for k in (
            "activation",
            "sigma_b",
            "stable",
            "sigma_w_theory",
            "q_star_theory",
            "sigma_w_measured",
            "sigma_w_measured_err",
            "sigma_w_theory_window",
        )
    }
    per_grid = {
        k: (("setting", "step"), np.stack([r[k] for r in rows]))
        for k in (
            "grid",
            "rate",
            "rate_err",
            "rate_theory",
            "rate_theory_fixed_point",
            "q_last",
        )
    }
    per_grid["sigma_w"] = per_grid.pop("grid")
    curve_vars = {
        f"curve_{k}": (
            ("curve_activation", "curve_point"),
            np.stack([padded(getattr(curves[a], k)) for a in names]),
        )
        for k in ("sigma_b", "sigma_w", "q_star", "stable")
    }
    return xr.Dataset(
        {**per_setting, **per_grid, **curve_vars},
        coords={
            "setting": np.array(setting_labels, dtype=object),
            "curve_activation": np.array(names, dtype=object),
        },
        attrs=dict(
            figure="Hayou et al. 2019, edge-of-chaos curves",
            sigma_convention="standard deviations",
            width=sizes["width"],
            members=sizes["members"],
            depth=sizes["depth"],
            grid_spread=sizes["spread"],
            burn_in=BURN_IN,
            inputs=N_INPUTS,
            input_dim=args.input_dim,
            seed=args.seed,
            rate=(
                "log of the mean over members, inputs and layers "
                f"{BURN_IN + 2}..L of |J^l v|^2 / |J^(l-1) v|^2"
            ),
            random_numbers="the same member draws for every sigma_w of a setting",
        ),
    )


def plot(ds: xr.Dataset, path: pathlib.Path) -> None:
    fig = Figure(figsize=(14, 5.5), layout="constrained")
    ax_eoc, ax_rate = fig.subplots(1, 2)
    colors = {a: f"C{i}" for i, a in enumerate(ds["curve_activation"].values)}
    for i, act in enumerate(ds["curve_activation"].values):
        sb = ds["curve_sigma_b"][i].values
        sw = ds["curve_sigma_w"][i].values
        stable = ds["curve_stable"][i].values == 1
        keep = np.isfinite(sb) & (sb <= SIGMA_B_MAX)
        col = colors[act]
        if keep.sum() == 1:
            ax_eoc.plot(sb[keep], sw[keep], "*", ms=14, color=col, label=act)
            continue
        ax_eoc.plot(
            np.where(stable, sb, np.nan)[keep],
            sw[keep],
            "-",
            color=col,
            label=act,
        )
        ax_eoc.plot(np.where(~stable, sb, np.nan)[keep], sw[keep], "--", color=col)
    markers = dict.fromkeys(colors, 0)
    for j in range(ds.sizes["setting"]):
        act = str(ds["activation"][j].values)
        col = colors[act]
        face = col if bool(ds["stable"][j]) else "white"
        ax_eoc.errorbar(
            float(ds["sigma_b"][j]),
            float(ds["sigma_w_measured"][j]),
            float(ds["sigma_w_measured_err"][j]),
            fmt="o",
            ms=7,
            mfc=face,
            mec="k",
            color=col,
        )
        x = ds["sigma_w"][j] / float(ds["sigma_w_theory"][j])
        marker = markers[act]
        markers[act] = marker + 1
        ax_rate.errorbar(
            x,
            ds["rate"][j],
            ds["rate_err"][j],
            fmt="osD^v"[marker % 5],
            ms=4,
            mfc=col if bool(ds["stable"][j]) else "white",
            color=col,
            label=str(ds["setting"][j].values),
        )
        ax_rate.plot(x, ds["rate_theory"][j], "-", color=col, lw=0.8)
        ax_rate.plot(x, ds["rate_theory_fixed_point"][j], ":", color=col, lw=0.8)
    ax_eoc.set(
        xlabel="$\\sigma_b$",
        ylabel="$\\sigma_w$",
        xlim=(-0.03, SIGMA_B_MAX),
    )
    ax_eoc.set_title("edge of chaos (dashed: unstable q*); dots: measured zero growth")
    ax_eoc.legend(fontsize=8)
    ax_rate.axhline(0.0, color="gray", lw=0.8)
    ax_rate.axvline(1.0, color="gray", lw=0.8)
    ax_rate.set(
        xlabel="$\\sigma_w$ / theory critical $\\sigma_w$",
        ylabel="growth of log $|J^l v|^2$ per layer",
    )
    ax_rate.set_title("growth: measured; theory, same layers (lines), at $q^*$ (dots)")
    ax_rate.legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"Hayou et al. 2019: N={ds.attrs['width']}, {ds.attrs['members']} "
        f"networks, depth {ds.attrs['depth']}"
    )
    fig.savefig(path, dpi=120)


def summary(ds: xr.Dataset) -> str:
    rows = []
    for j in range(ds.sizes["setting"]):
        theory = float(ds["sigma_w_theory"][j])
        measured = float(ds["sigma_w_measured"][j])
        error = float(ds["sigma_w_measured_err"][j])
        rows.append(
            [
                str(ds["activation"][j].values),
                f"{float(ds['sigma_b'][j]):g}",
                "yes" if bool(ds["stable"][j]) else "no",
                float(ds["q_star_theory"][j]),
                theory,
                float(ds["sigma_w_theory_window"][j]),
                measured,
                error,
                (measured - theory) / error if error > 0 else math.nan,
            ]
        )
    text = _common.table(
        [
            "act",
            "sigma_b",
            "stable",
            "q*",
            "sigma_w th",
            "(window)",
            "sigma_w meas",
            "+-",
            "z",
        ],
        rows,
    )
    return (
        f"Hayou et al. 2019, width {ds.attrs['width']}, {ds.attrs['members']} "
        f"members, depth {ds.attrs['depth']}, sigma_w grid "
        f"+-{100 * ds.attrs['grid_spread']:g}% around theory\n"
        "measured: zero crossing of the growth of |J^l v|^2 per layer; "
        "(window): zero crossing of the theory's growth averaged over the same "
        "layers from the same inputs; z: "
        "(measured - theory) / error; stable: whether q* is a stable fixed "
        "point (no: the curve's unstable branch)\n"
        f"{text}"
    )


def main(args: Args) -> xr.Dataset:
    start = time.perf_counter()
    ds = run(args)
    _common.write_outputs(ds, args.out, NAME, plot, summary, start)
    return ds


if __name__ == "__main__":
    main(tyro.cli(Args))
