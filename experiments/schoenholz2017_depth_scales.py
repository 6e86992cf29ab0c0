"""Schoenholz et al. 2017: depth scales xi_q and xi_c of tanh networks.

Schoenholz, Gilmer, Ganguli and Sohl-Dickstein, "Deep information propagation"
(ICLR 2017). tanh with bias variance ``sigma_b^2 = 0.05``, weight variance
``sigma_w^2`` swept over [1, 4]. The paper states variances; actgeo takes
standard deviations, so this script converts at its boundary:
``sigma_b = sqrt(0.05)``, ``sigma_w = sqrt(sigma_w^2)``.

Theory: ``xi_q = -1 / log(dq'/dq at q*)`` and ``xi_c = -1 / log(chi_c at
c*)`` from :func:`actgeo.theory.criticality.depth_scales`; ``xi_c`` diverges at the
edge of chaos (:func:`actgeo.theory.criticality.critical_sigma_w`).

Measurement: for each ``sigma_w``, an ensemble of random networks carries

* single inputs starting at ``q^1 = 1.5 q*``: the gap ``|q^l - q*|``;
* input pairs starting at ``q^1 = q*``, with ``1 - c^1 = 1e-3`` in the
  ordered phase (``chi_1 <= 1``, ``c* = 1``) or ``c^1 = c* + (1 - c*) / 4``
  in the chaotic phase: the gap ``|c^l - c*|``.

Starts lie close to the fixed points so that the gaps decay at the
linearised rate the depth scales describe. Each gap is the absolute value of
the mean over members (noise averages out before the absolute value). A
weighted log-linear fit over the layers, from layer 2, where the gap stays
above three times its noise floor (its standard error over members; for
targets other than ``c* = 1`` at least the level the gap keeps over the last
quarter of the layers, which also catches a finite-width bias of the fixed
point) gives the measured depth scale, and its error comes from refitting
members resampled with replacement; fewer than three such layers give NaN.
The infinite-width trajectory from the same start
(:func:`actgeo.theory.maps.iterate`), fitted over the same layers with the
same weights, gives the "window" depth scale: the part of a difference from
``xi`` that comes from the start rather than from finite width.

The run is in float64 by default: ``1 - c`` is then followed far down in the
ordered phase (it is computed as ``|u - u'|^2 / 2`` from unit vectors, not as
``1 - u.u'``).

Run ``python experiments/schoenholz2017_depth_scales.py --quick`` (small, CPU)
or without ``--quick`` (width 1000, 256 members: an accelerator).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time
from typing import Literal

import _common
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import tyro
import xarray as xr
from matplotlib.figure import Figure
from tqdm.auto import tqdm

import actgeo
from actgeo.theory.criticality import critical_sigma_w, depth_scales
from actgeo.theory.gaussian import Quadrature
from actgeo.theory.maps import iterate

NAME = "schoenholz2017_depth_scales"
ACTIVATION = "tanh"
SIGMA_B2 = 0.05
SIGMA_B = math.sqrt(SIGMA_B2)
SIGMA_W2_RANGE = (1.0, 4.0)
# Starts close to the fixed points, so that the gaps decay at the linearised
# rate: single inputs at q^1 = Q_START q*; pairs at 1 - c^1 = ORDERED_GAP in
# the ordered phase, c^1 = c* + CHAOTIC_GAP (1 - c*) in the chaotic phase.
Q_START = 1.5
ORDERED_GAP = 1e-3
CHAOTIC_GAP = 0.25
N_SINGLE, N_PAIRS = 16, 16
BURN_IN = 1  # layers skipped before a fit (0-based: layer 2 onwards)
BOOTSTRAP = 200  # resamples of the members for the fits' errors

FINE_POINTS = 200
# Theory curves use the cheaper quadrature (about 1e-6 relative error, far
# below the ensembles' sampling error).
QUAD = Quadrature.fast()

_QUICK = dict(width=128, members=32, depth=48, points=9)
_FULL = dict(width=1000, members=256, depth=200, points=25)


@dataclasses.dataclass
class Args:
    """Reproduce Schoenholz et al. 2017's depth scales (tanh, sigma_b^2 = 0.05)."""

    out: pathlib.Path = _common.RESULTS / NAME
    """Folder for the PNG, the numbers (.zarr) and the table."""
    quick: bool = False
    """Small sizes for a CPU (width 128, 32 members, 48 layers, 9 settings)."""
    width: int | None = None
    """Hidden width N (when omitted: 1000, or 128 with --quick)."""
    members: int | None = None
    """Random networks per setting (when omitted: 256, or 32 with --quick)."""
    depth: int | None = None
    """Layers L (when omitted: 200, or 48 with --quick)."""
    points: int | None = None
    """sigma_w^2 values measured in [1, 4] (when omitted: 25, or 9 with --quick)."""
    input_dim: int = 32
    """Input dimension D."""
    dtype: Literal["float32", "float64"] = "float64"
    """Float precision of the networks."""
    seed: int = 0
    """Root seed."""
    progress: bool = True
    """Show progress bars."""


def _resolve(args: Args) -> dict:
    return _common.preset_sizes(args, _QUICK, _FULL)


def _fit(per_member: np.ndarray, theory_gap: np.ndarray, plateau: bool, rng):
    """Measured decay length of a gap, its bootstrap error, and theory's.

    ``per_member`` is ``(E, L)``: each member's deviation from the fixed point
    (signed, averaged over its inputs); the gap is the absolute value of the
    mean over members, so that noise averages out before the absolute value.
    The fit's window and weights (inverse standard error of ``log gap``) are
    fixed from the full ensemble; the error is the standard deviation of the
    fit over members resampled with replacement (layers share members, so
    their errors are correlated and a per-layer error would understate it).
    The infinite-width gap is fitted over the same layers with the same
    weights.
    """
    mean, error = _common.mean_and_error(per_member)
    gap = np.abs(mean)
    floor = _plateau(gap) if plateau else 0.0
    stop = _common.decay_window(gap, error, start=BURN_IN, floor=floor)
    weight = gap / np.maximum(error, np.finfo(float).tiny)
    xi = _common.decay_length(gap, weight, BURN_IN, stop)
    resampled = [
        _common.decay_length(
            np.abs(
                per_member[rng.integers(0, len(per_member), len(per_member))].mean(0)
            ),
            weight,
            BURN_IN,
            stop,
        )
        for _ in range(BOOTSTRAP)
    ]
    xi_err = float(np.nanstd(resampled)) if np.isfinite(xi) else math.nan
    xi_window = _common.decay_length(theory_gap, weight, BURN_IN, stop)
    return dict(
        gap=gap, gap_se=error, xi=xi, xi_err=xi_err, stop=stop, xi_window=xi_window
    )


def _plateau(gap: np.ndarray) -> float:
    return float(np.mean(gap[-max(1, gap.size // 4) :]))


@jax.jit
def _scales(sigma_w):
    return depth_scales(ACTIVATION, sigma_w, SIGMA_B, QUAD)


@functools.partial(jax.jit, static_argnames=("depth",))
def _trajectories(sigma_w, q_single, q_pair, one_minus_c_in, *, depth):
    """Infinite-width ``q^l`` from ``q_single`` and ``1 - c^l`` of the pair."""
    single = iterate(ACTIVATION, sigma_w, SIGMA_B, depth, q_single, 0.0, QUAD)
    pair = iterate(
        ACTIVATION,
        sigma_w,
        SIGMA_B,
        depth,
        q_pair,
        quadrature=QUAD,
        one_minus_c_in=one_minus_c_in,
    )
    return jnp.exp(single.log_q), pair.one_minus_c


def _measure_one(args, sizes, sigma_w, keys) -> dict:
    """Gaps, fits and theory at one ``sigma_w``."""
    net_key, k_single, k_pair = keys
    dtype = jnp.dtype(args.dtype)
    dim, depth = args.input_dim, sizes["depth"]
    scales = jax.tree.map(float, _scales(sigma_w))
    qs, cs = scales.q_star, scales.c_star
    ordered = scales.chi_1 <= 1.0
    c_start = 1.0 - ORDERED_GAP if ordered else cs + CHAOTIC_GAP * (1.0 - cs)
    q_pair = float(_common.input_q(qs, sigma_w, SIGMA_B))
    # 1 - c_in from 1 - c^1 = (1 - c_in) sigma_w^2 q_in / q^1, without rounding.
    omc_in = (1.0 - c_start) * qs / (qs - SIGMA_B**2)
    pairs = _common.input_pairs(k_pair, dim, [q_pair] * N_PAIRS, 1.0 - omc_in, dtype)
    q_single = float(_common.input_q(Q_START * qs, sigma_w, SIGMA_B))
    single = _common.inputs_at(k_single, dim, [q_single] * N_SINGLE, dtype)
    spec = actgeo.NetworkSpec(
        input_dim=dim,
        width=sizes["width"],
        depth=depth,
        activation=ACTIVATION,
        sigma_w=sigma_w,
        sigma_b=SIGMA_B,
    )
    q, one_minus_c = _common.measure_lengths(
        spec,
        jnp.concatenate([pairs, single]),
        sizes["members"],
        key=net_key,
        n_pairs=N_PAIRS,
        dtype=dtype,
        progress=args.progress,
        desc=f"sw^2={sigma_w**2:.3g}",
    )
    q_traj, omc_traj = (
        np.asarray(v)
        for v in _trajectories(sigma_w, q_single, q_pair, omc_in, depth=depth)
    )
    rng = np.random.default_rng(args.seed)
    q_fit = _fit(
        q[:, :, 2 * N_PAIRS :].mean(axis=-1) - qs, np.abs(q_traj - qs), True, rng
    )
    if ordered:  # 1 - c itself, accurate down to float rounding
        c_fit = _fit(one_minus_c.mean(axis=-1), omc_traj, False, rng)
    else:
        c_fit = _fit(
            (1.0 - one_minus_c).mean(axis=-1) - cs,
            np.abs(1.0 - omc_traj - cs),
            True,
            rng,
        )
    return dict(
        xi_q_measured=q_fit["xi"],
        xi_q_err_measured=q_fit["xi_err"],
        xi_c_measured=c_fit["xi"],
        xi_c_err_measured=c_fit["xi_err"],
        q_stop_measured=q_fit["stop"],
        c_stop_measured=c_fit["stop"],
        xi_q_theory=scales.xi_q,
        xi_c_theory=scales.xi_c,
        xi_q_window_theory=q_fit["xi_window"],
        xi_c_window_theory=c_fit["xi_window"],
        q_star_theory=qs,
        c_star_theory=cs,
        chi_1_theory=scales.chi_1,
        chi_c_theory=scales.chi_c,
        c_start=c_start,
        q_gap=q_fit["gap"],
        q_gap_se=q_fit["gap_se"],
        c_gap=c_fit["gap"],
        c_gap_se=c_fit["gap_se"],
        q_gap_theory=np.abs(q_traj - qs),
        c_gap_theory=omc_traj if ordered else np.abs(1.0 - omc_traj - cs),
    )


def run(args: Args) -> xr.Dataset:
    sizes = _resolve(args)
    depth = sizes["depth"]
    net_key, input_key = jax.random.split(jax.random.key(args.seed))
    keys = (net_key, *jax.random.split(input_key))

    fine2 = np.linspace(*SIGMA_W2_RANGE, FINE_POINTS)
    theory = jax.jit(jax.vmap(_scales))(jnp.asarray(np.sqrt(fine2)))
    critical = critical_sigma_w(ACTIVATION, SIGMA_B)

    grid2 = np.linspace(*SIGMA_W2_RANGE, sizes["points"])
    rows = [
        _measure_one(args, sizes, math.sqrt(sigma_w2), keys)
        for sigma_w2 in tqdm(grid2, desc="sigma_w^2", disable=not args.progress)
    ]
    g, f = "sigma_w2", "fine_sigma_w2"
    data = {
        k: ((g, "layer") if np.ndim(v) else g, np.stack([r[k] for r in rows]))
        for k, v in rows[0].items()
    }
    data.update(
        {
            f"{k}_theory_fine": (f, np.asarray(getattr(theory, k)))
            for k in ("q_star", "c_star", "chi_1", "chi_c", "xi_q", "xi_c")
        }
    )
    return xr.Dataset(
        data,
        coords={g: grid2, "layer": np.arange(1, depth + 1), f: fine2},
        attrs=dict(
            figure="Schoenholz et al. 2017, depth scales",
            activation=ACTIVATION,
            sigma_b2=SIGMA_B2,
            sigma_b=SIGMA_B,
            sigma_convention=(
                "sigma_w2 and sigma_b2 are variances (as in the paper); the "
                "networks were built with their square roots"
            ),
            critical_sigma_w2=critical**2,
            width=sizes["width"],
            members=sizes["members"],
            depth=depth,
            input_dim=args.input_dim,
            dtype=args.dtype,
            seed=args.seed,
            fit=(
                "weighted log-linear fit of |member mean| of the gap from layer "
                f"{BURN_IN + 1} while it stays above 3x max(s.e., floor); errors "
                f"from {BOOTSTRAP} resamples of the members; stop fields are "
                "0-based exclusive layer indices"
            ),
            q_start=f"q^1 = {Q_START} q*",
            c_start=(
                f"1 - c^1 = {ORDERED_GAP} if c* = 1, else c^1 = c* + "
                f"{CHAOTIC_GAP} (1 - c*)"
            ),
            random_numbers="the same member draws for every sigma_w",
        ),
    )


def plot(ds: xr.Dataset, path: pathlib.Path) -> None:
    fig = Figure(figsize=(16, 5), layout="constrained")
    ax_xi, ax_c, ax_q = fig.subplots(1, 3)
    crit = ds.attrs["critical_sigma_w2"]
    fine = ds["fine_sigma_w2"]
    ax_xi.plot(fine, ds["xi_c_theory_fine"], "C0-", label="$\\xi_c$ theory")
    ax_xi.plot(fine, ds["xi_q_theory_fine"], "C1-", label="$\\xi_q$ theory")
    grid = ds["sigma_w2"]
    for name, col in (("xi_c", "C0"), ("xi_q", "C1")):
        ax_xi.errorbar(
            grid,
            ds[f"{name}_measured"],
            ds[f"{name}_err_measured"],
            fmt="o",
            color=col,
            mec="k",
            label=f"$\\xi_{name[-1]}$ measured",
        )
    ax_xi.axvline(crit, color="gray", lw=0.8, label=f"edge of chaos {crit:.3f}")
    ax_xi.axhline(ds.attrs["depth"], color="gray", ls=":", lw=0.8, label="depth L")
    ax_xi.set(
        yscale="log",
        ylim=(0.3, 5 * ds.attrs["depth"]),
        xlabel="$\\sigma_w^2$",
        ylabel="depth scale (layers)",
    )
    ax_xi.set_title("depth scales")
    pick = np.unique(np.linspace(0, ds.sizes["sigma_w2"] - 1, 5).round().astype(int))
    colors = matplotlib.colormaps["plasma"](np.linspace(0.0, 0.85, pick.size))
    layers = ds["layer"].values
    for ax, name in ((ax_c, "c"), (ax_q, "q")):
        lowest = np.inf
        for col, i in zip(colors, pick, strict=True):
            gap = ds[f"{name}_gap"][i].values
            stop = int(ds[f"{name}_stop_measured"][i])
            fitted = np.zeros(gap.size, bool)
            if stop - BURN_IN >= 3:
                fitted[BURN_IN:stop] = True
            label = f"$\\sigma_w^2$={float(grid[i]):.3g}"
            ax.plot(layers[fitted], gap[fitted], "o", ms=4, color=col, label=label)
            ax.plot(layers[~fitted], gap[~fitted], "o", ms=4, mfc="none", color=col)
            ax.plot(layers, ds[f"{name}_gap_theory"][i], "-", color=col, lw=1)
            above = gap[gap > ds[f"{name}_gap_se"][i].values]
            if above.size:
                lowest = min(lowest, float(above.min()))
        ax.set(xlabel="layer l", yscale="log")
        if np.isfinite(lowest):
            ax.set_ylim(bottom=0.2 * lowest)
        ax.legend(fontsize=8)
    ax_c.set(ylabel="$|c^l - c^*|$")
    ax_c.set_title("correlation gap (filled: fitted layers; lines: theory)")
    ax_q.set(ylabel="$|q^l - q^*|$", xlim=(0, min(ds.attrs["depth"], 20) + 0.5))
    ax_q.set_title("length gap (filled: fitted layers; lines: theory)")
    ax_xi.legend(fontsize=8)
    fig.suptitle(
        f"Schoenholz et al. 2017: tanh, $\\sigma_b^2$={ds.attrs['sigma_b2']}, "
        f"N={ds.attrs['width']}, {ds.attrs['members']} networks, "
        f"{ds.attrs['dtype']}"
    )
    fig.savefig(path, dpi=120)


def summary(ds: xr.Dataset) -> str:
    rows = []
    for i, sw2 in enumerate(ds["sigma_w2"].values):

        def get(name, i=i):
            return float(ds[name][i])

        rows.append(
            [
                f"{sw2:.3g}",
                get("q_star_theory"),
                get("c_star_theory"),
                get("xi_q_theory"),
                get("xi_q_window_theory"),
                get("xi_q_measured"),
                get("xi_q_err_measured"),
                get("xi_c_theory"),
                get("xi_c_window_theory"),
                get("xi_c_measured"),
                get("xi_c_err_measured"),
                int(get("c_stop_measured")) - BURN_IN,
            ]
        )
    text = _common.table(
        [
            "sigma_w^2",
            "q*",
            "c*",
            "xi_q th",
            "(window)",
            "xi_q meas",
            "+-",
            "xi_c th",
            "(window)",
            "xi_c meas",
            "+-",
            "c layers",
        ],
        rows,
    )
    return (
        f"Schoenholz et al. 2017, tanh, sigma_b^2 = {ds.attrs['sigma_b2']}, width "
        f"{ds.attrs['width']}, {ds.attrs['members']} members, depth "
        f"{ds.attrs['depth']}, {ds.attrs['dtype']}\n"
        f"edge of chaos at sigma_w^2 = {ds.attrs['critical_sigma_w2']:.4g}; "
        "th: -1/log of the linearised rate; (window): the infinite-width "
        "trajectory from the same start, fitted over the same layers as the "
        "measurement; nan: fewer than 3 layers above the noise floor; "
        "c layers: layers in the xi_c fit\n"
        f"{text}"
    )


def main(args: Args) -> xr.Dataset:
    start = time.perf_counter()
    with jax.enable_x64(args.dtype == "float64"):
        ds = run(args)
    _common.write_outputs(ds, args.out, NAME, plot, summary, start)
    return ds


if __name__ == "__main__":
    main(tyro.cli(Args))
