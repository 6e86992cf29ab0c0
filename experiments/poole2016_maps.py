"""Poole et al. 2016, Figs 1-2: the length and correlation maps of tanh networks.

Poole, Lahiri, Raghu, Sohl-Dickstein and Ganguli, "Exponential expressivity in
deep neural networks through transient chaos" (NeurIPS 2016). tanh,
``sigma_b = 0.3``, ``sigma_w`` in {1.3, 2.5, 4} (standard deviations, as in
the paper and in actgeo).

Panels: (a) ``q^l`` against layer from several input lengths ``q_in``;
(b) the q-map ``q -> q'`` with its fixed points; (c) the c-map at ``q*``;
(d) ``c^l`` against layer from several input cosines; (e) ``c*`` against
``sigma_w`` (the line) with the correlation measured at the last layers;
(f) ``chi_1`` at ``q*`` against ``sigma_w``. Lines are the infinite-width
theory (:mod:`actgeo.theory`); dots are ensemble means over random networks
with standard errors over members.

Inputs: pairs of vectors in ``R^D`` with ``|x|^2 / D = q_in`` and cosine
``c_in``; the pairs start at ``q^1 = q*`` so that the c-map is seen at its
fixed length.

Run ``python experiments/poole2016_maps.py --quick`` (small, CPU) or without
``--quick`` (width 1000, 256 members: an accelerator).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time

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
from actgeo.theory.criticality import c_star, critical_sigma_w, q_fixed_points, q_star
from actgeo.theory.gaussian import Quadrature
from actgeo.theory.maps import c_map, chi_1, iterate, q_map

NAME = "poole2016_maps"
ACTIVATION = "tanh"
SIGMA_B = 0.3
SIGMA_WS = (1.3, 2.5, 4.0)
# Input lengths |x|^2 / D of single inputs (panels a, b); the ones in
# Q_TRAJECTORIES are drawn as trajectories in (a).
Q_IN = tuple(float(q) for q in np.geomspace(0.01, 10.0, 10))
Q_TRAJECTORIES = (0, 4, 9)
# Input cosines of pairs at q^1 = q* (panels c, d, e); C_TRAJECTORIES are
# drawn in (d), C_SWEEP is followed to the last layers in (e).
C_IN = (-0.9, -0.5, 0.0, 0.3, 0.6, 0.8, 0.9, 0.97, 0.99)
C_TRAJECTORIES = (1, 2, 4, 7)
C_SWEEP = 2
SWEEP_RANGE = (0.5, 4.5)
FINE_POINTS = 100
# Theory curves use the cheaper quadrature (about 1e-6 relative error, far
# below the ensembles' sampling error).
QUAD = Quadrature.fast()

_QUICK = dict(width=128, members=16, depth=20, sweep_points=8)
_FULL = dict(width=1000, members=256, depth=30, sweep_points=16)


@dataclasses.dataclass
class Args:
    """Reproduce Poole et al. 2016, Figs 1-2 (tanh, sigma_b = 0.3)."""

    out: pathlib.Path = _common.RESULTS / NAME
    """Folder for the PNG, the numbers (.zarr) and the table."""
    quick: bool = False
    """Small sizes for a CPU (width 128, 16 members, 20 layers)."""
    width: int | None = None
    """Hidden width N (when omitted: 1000, or 128 with --quick)."""
    members: int | None = None
    """Random networks per setting (when omitted: 256, or 16 with --quick)."""
    depth: int | None = None
    """Layers L (when omitted: 30, or 20 with --quick)."""
    sweep_points: int | None = None
    """sigma_w values in the c* sweep (when omitted: 16, or 8 with --quick)."""
    input_dim: int = 32
    """Input dimension D."""
    seed: int = 0
    """Root seed."""
    progress: bool = True
    """Show progress bars."""


def _resolve(args: Args) -> dict:
    return _common.preset_sizes(args, _QUICK, _FULL)


def _inputs(key, dim, sigma_w, q_pair):
    """Pairs at ``q^1 = q*`` (first ``2 len(C_IN)`` rows), then single inputs."""
    k_pair, k_single = jax.random.split(key)
    pairs = _common.input_pairs(k_pair, dim, q_pair, C_IN, jnp.float32)
    single = _common.inputs_at(k_single, dim, Q_IN, jnp.float32)
    return jnp.concatenate([pairs, single])


def _measure(spec, members, key, x, progress, desc):
    q, one_minus_c = _common.measure_lengths(
        spec, x, members, key=key, n_pairs=len(C_IN), progress=progress, desc=desc
    )
    return q[:, :, 2 * len(C_IN) :], 1.0 - one_minus_c


Q_GRID = np.geomspace(1e-2, 2e2, 200)
C_GRID = np.linspace(-1.0, 1.0, 201)


@functools.partial(jax.jit, static_argnames=("depth",))
def _theory(sigma_w, *, depth):
    """Every theory curve at one ``sigma_w`` (traced: one compilation)."""
    qs = q_star(ACTIVATION, sigma_w, SIGMA_B, quadrature=QUAD)
    q_pair = (qs - SIGMA_B**2) / sigma_w**2

    def q_traj(q0):
        return jnp.exp(
            iterate(ACTIVATION, sigma_w, SIGMA_B, depth, q0, 0.0, QUAD).log_q
        )

    def c_traj(c0):
        traj = iterate(ACTIVATION, sigma_w, SIGMA_B, depth, q_pair, c0, QUAD)
        return 1.0 - traj.one_minus_c

    return dict(
        q_star=qs,
        q_in_pair=q_pair,
        chi_1=chi_1(ACTIVATION, qs, sigma_w, QUAD),
        c_star=c_star(ACTIVATION, sigma_w, SIGMA_B, q=qs, quadrature=QUAD),
        q_th=jax.vmap(q_traj)(jnp.asarray(Q_IN)).T,  # (L, q_in)
        c_th=jax.vmap(c_traj)(jnp.asarray(C_IN)).T,  # (L, c_in)
        qmap_th=jax.vmap(lambda q: q_map(ACTIVATION, q, sigma_w, SIGMA_B, QUAD))(
            jnp.asarray(Q_GRID)
        ),
        cmap_th=jax.vmap(lambda c: c_map(ACTIVATION, qs, c, sigma_w, SIGMA_B, QUAD))(
            jnp.asarray(C_GRID)
        ),
    )


@functools.partial(jax.jit, static_argnames=("depth",))
def _sweep_theory(sigma_w, *, depth):
    """``q_in`` of the pairs at ``q*`` and the sweep pair's ``c^l`` (L,)."""
    qs = q_star(ACTIVATION, sigma_w, SIGMA_B, quadrature=QUAD)
    q_pair = (qs - SIGMA_B**2) / sigma_w**2
    traj = iterate(ACTIVATION, sigma_w, SIGMA_B, depth, q_pair, C_IN[C_SWEEP], QUAD)
    return dict(q_in_pair=q_pair, c_th=1.0 - traj.one_minus_c)


def _spec(sizes, dim, sigma_w):
    return actgeo.NetworkSpec(
        input_dim=dim,
        width=sizes["width"],
        depth=sizes["depth"],
        activation=ACTIVATION,
        sigma_w=float(sigma_w),
        sigma_b=SIGMA_B,
    )


def run(args: Args) -> xr.Dataset:
    sizes = _resolve(args)
    width, members, depth = sizes["width"], sizes["members"], sizes["depth"]
    dim = args.input_dim
    root = jax.random.key(args.seed)
    net_key, input_key = jax.random.split(root)
    layers = np.arange(1, depth + 1)

    # Common random numbers: every sigma_w uses the same underlying draws.
    panels = {}
    fixed = []
    for sigma_w in tqdm(SIGMA_WS, desc="sigma_w", disable=not args.progress):
        fixed.append(q_fixed_points(ACTIVATION, sigma_w, SIGMA_B))
        theory = jax.tree.map(np.asarray, _theory(sigma_w, depth=depth))
        x = _inputs(input_key, dim, sigma_w, theory["q_in_pair"])
        q, c = _measure(
            _spec(sizes, dim, sigma_w), members, net_key, x, args.progress, ""
        )
        for name, (mean, se) in (
            ("q", _common.mean_and_error(q)),
            ("c", _common.mean_and_error(c)),
        ):
            theory[name] = mean
            theory[name + "_se"] = se
        for name, value in theory.items():
            panels.setdefault(name, []).append(value)

    # (e): c* against sigma_w; the ensemble follows the c_in = 0 pair.
    sweep = np.linspace(*SWEEP_RANGE, sizes["sweep_points"])
    c_deep, c_deep_se, c_last_th = [], [], []
    last = max(1, min(3, depth // 4))
    for sigma_w in tqdm(sweep, desc="c* sweep", disable=not args.progress):
        theory = jax.tree.map(np.asarray, _sweep_theory(sigma_w, depth=depth))
        x = _inputs(input_key, dim, sigma_w, theory["q_in_pair"])
        _, c = _measure(_spec(sizes, dim, sigma_w), members, net_key, x, False, "")
        mean, se = _common.mean_and_error(c[:, -last:, C_SWEEP].mean(axis=1))
        c_deep.append(mean)
        c_deep_se.append(se)
        c_last_th.append(float(theory["c_th"][-1]))
    fine = np.linspace(*SWEEP_RANGE, FINE_POINTS)
    fine_theory = jax.jit(
        jax.vmap(
            lambda sw: (
                c_star(ACTIVATION, sw, SIGMA_B, quadrature=QUAD),
                chi_1(
                    ACTIVATION,
                    q_star(ACTIVATION, sw, SIGMA_B, quadrature=QUAD),
                    sw,
                    QUAD,
                ),
            )
        )
    )
    c_star_th, chi_fine = (np.asarray(v) for v in fine_theory(jnp.asarray(fine)))
    critical = critical_sigma_w(ACTIVATION, SIGMA_B)

    n_fixed = max(len(f.q) for f in fixed)

    def pad(values, fill):
        return np.array([list(v) + [fill] * (n_fixed - len(v)) for v in values])

    sw_dim, layer_dim = "sigma_w", "layer"
    ds = xr.Dataset(
        {
            "q_measured": ((sw_dim, layer_dim, "q_in"), np.stack(panels["q"])),
            "q_measured_se": ((sw_dim, layer_dim, "q_in"), np.stack(panels["q_se"])),
            "q_theory": ((sw_dim, layer_dim, "q_in"), np.stack(panels["q_th"])),
            "c_measured": ((sw_dim, layer_dim, "c_in"), np.stack(panels["c"])),
            "c_measured_se": ((sw_dim, layer_dim, "c_in"), np.stack(panels["c_se"])),
            "c_theory": ((sw_dim, layer_dim, "c_in"), np.stack(panels["c_th"])),
            "q_map": ((sw_dim, "q"), np.stack(panels["qmap_th"])),
            "c_map": ((sw_dim, "c"), np.stack(panels["cmap_th"])),
            "q_star": (sw_dim, np.array(panels["q_star"])),
            "chi_1": (sw_dim, np.array(panels["chi_1"])),
            "q_in_pair": (sw_dim, np.array(panels["q_in_pair"])),
            "c_star": (sw_dim, np.array(panels["c_star"])),
            "fixed_q": ((sw_dim, "root"), pad([f.q for f in fixed], np.nan)),
            "fixed_slope": ((sw_dim, "root"), pad([f.slope for f in fixed], np.nan)),
            "fixed_stable": (
                (sw_dim, "root"),
                pad([np.asarray(f.stable, float) for f in fixed], np.nan),
            ),
            "sweep_c_deep": ("sweep_sigma_w", np.array(c_deep)),
            "sweep_c_deep_se": ("sweep_sigma_w", np.array(c_deep_se)),
            "sweep_c_last_theory": ("sweep_sigma_w", np.array(c_last_th)),
            "c_star_theory": ("fine_sigma_w", c_star_th),
            "chi_1_theory": ("fine_sigma_w", chi_fine),
        },
        coords={
            sw_dim: list(SIGMA_WS),
            layer_dim: layers,
            "q_in": list(Q_IN),
            "c_in": list(C_IN),
            "q": Q_GRID,
            "c": C_GRID,
            "sweep_sigma_w": sweep,
            "fine_sigma_w": fine,
        },
        attrs=dict(
            figure="Poole et al. 2016, Figs 1-2",
            activation=ACTIVATION,
            sigma_b=SIGMA_B,
            sigma_convention="standard deviations",
            width=width,
            members=members,
            depth=depth,
            input_dim=dim,
            seed=args.seed,
            critical_sigma_w=critical,
            sweep_last_layers=last,
            sweep_c_in=C_IN[C_SWEEP],
            errors="standard error of the mean over members",
            random_numbers="the same member draws for every sigma_w",
        ),
    )
    return ds


def plot(ds: xr.Dataset, path: pathlib.Path) -> None:
    fig = Figure(figsize=(15, 9), layout="constrained")
    axes = fig.subplots(2, 3)
    (ax_a, ax_b, ax_c), (ax_d, ax_e, ax_f) = axes
    colors = matplotlib.colormaps["viridis"](
        np.linspace(0.0, 0.85, ds.sizes["sigma_w"])
    )
    layers = ds["layer"].values
    for i, sw in enumerate(ds["sigma_w"].values):
        col = colors[i]
        label = f"$\\sigma_w$={sw:g}"
        for j in Q_TRAJECTORIES:
            ax_a.plot(layers, ds["q_theory"][i, :, j], color=col, lw=1.2)
            ax_a.errorbar(
                layers,
                ds["q_measured"][i, :, j],
                ds["q_measured_se"][i, :, j],
                fmt="o",
                ms=3,
                color=col,
                label=label if j == Q_TRAJECTORIES[0] else None,
            )
        ax_b.plot(ds["q"], ds["q_map"][i], color=col, label=label)
        q1, q2 = ds["q_measured"][i, 0], ds["q_measured"][i, 1]
        ax_b.plot(q1, q2, "o", ms=4, color=col)
        roots = ds["fixed_q"][i].values
        stable = ds["fixed_stable"][i].values
        for r, s in zip(roots, stable, strict=True):
            if np.isfinite(r) and r > 0:
                face = col if s == 1 else "white"
                ax_b.plot(r, r, "*", ms=14, mfc=face, mec="k", zorder=5)
        ax_c.plot(ds["c"], ds["c_map"][i], color=col, label=label)
        ax_c.errorbar(
            ds["c_measured"][i, 0],
            ds["c_measured"][i, 1],
            ds["c_measured_se"][i, 1],
            fmt="o",
            ms=4,
            color=col,
        )
        for j in C_TRAJECTORIES:
            ax_d.plot(layers, ds["c_theory"][i, :, j], color=col, lw=1.2)
            ax_d.errorbar(
                layers,
                ds["c_measured"][i, :, j],
                ds["c_measured_se"][i, :, j],
                fmt="o",
                ms=3,
                color=col,
                label=label if j == C_TRAJECTORIES[0] else None,
            )
    ax_a.set(yscale="log", xlabel="layer l", ylabel="$q^l$")
    ax_a.set_title("(a) length $q^l$ from several $q_{in}$")
    ax_b.plot(ds["q"], ds["q"], "k--", lw=0.8)
    ax_b.set(xscale="log", yscale="log", xlabel="$q^{l}$", ylabel="$q^{l+1}$")
    ax_b.set_title("(b) q-map; stars: fixed points (filled: stable); dots: $q^1, q^2$")
    ax_c.plot(ds["c"], ds["c"], "k--", lw=0.8)
    ax_c.set(xlabel="$c^{l}$", ylabel="$c^{l+1}$")
    ax_c.set_title("(c) c-map at $q^*$; dots: measured $(c^1, c^2)$")
    ax_d.set(xlabel="layer l", ylabel="$c^l$")
    ax_d.set_title("(d) correlation $c^l$ from several $c_{in}$")
    crit = ds.attrs["critical_sigma_w"]
    ax_e.plot(ds["fine_sigma_w"], ds["c_star_theory"], "k-", label="theory $c^*$")
    ax_e.plot(
        ds["sweep_sigma_w"],
        ds["sweep_c_last_theory"],
        "k:",
        label=f"theory $c^L$ (L={ds.attrs['depth']})",
    )
    ax_e.errorbar(
        ds["sweep_sigma_w"],
        ds["sweep_c_deep"],
        ds["sweep_c_deep_se"],
        fmt="o",
        color="C3",
        label=f"measured, last {ds.attrs['sweep_last_layers']} layers",
    )
    ax_e.axvline(crit, color="gray", lw=0.8)
    ax_e.set(xlabel="$\\sigma_w$", ylabel="$c^*$")
    ax_e.set_title(f"(e) $c^*$ from $c_{{in}}$ = {ds.attrs['sweep_c_in']:g}")
    ax_f.plot(ds["fine_sigma_w"], ds["chi_1_theory"], "k-")
    ax_f.axhline(1.0, color="gray", lw=0.8)
    ax_f.axvline(crit, color="gray", lw=0.8, label=f"edge of chaos {crit:.3f}")
    ax_f.set(xlabel="$\\sigma_w$", ylabel="$\\chi_1$ at $q^*$")
    ax_f.set_title("(f) $\\chi_1$ (theory)")
    for ax in (ax_a, ax_b, ax_c, ax_d, ax_e, ax_f):
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Poole et al. 2016: tanh, $\\sigma_b$={ds.attrs['sigma_b']}, "
        f"N={ds.attrs['width']}, {ds.attrs['members']} networks; "
        "lines theory, dots ensemble mean ± s.e."
    )
    fig.savefig(path, dpi=120)


def summary(ds: xr.Dataset) -> str:
    rows = []
    for i, sw in enumerate(ds["sigma_w"].values):
        q_meas = float(ds["q_measured"][i, -1].mean())
        c0 = C_IN.index(C_IN[C_SWEEP])
        rows.append(
            [
                f"{sw:g}",
                float(ds["q_star"][i]),
                q_meas,
                float(ds["chi_1"][i]),
                float(ds["c_theory"][i, -1, c0]),
                float(ds["c_measured"][i, -1, c0]),
                float(ds["c_measured_se"][i, -1, c0]),
            ]
        )
    first = _common.table(
        ["sigma_w", "q* theory", "q^L meas", "chi_1", "c^L theory", "c^L meas", "s.e."],
        rows,
    )
    rows = []
    for k, sw in enumerate(ds["sweep_sigma_w"].values):
        rows.append(
            [
                f"{sw:.3g}",
                float(np.interp(sw, ds["fine_sigma_w"], ds["c_star_theory"])),
                float(ds["sweep_c_last_theory"][k]),
                float(ds["sweep_c_deep"][k]),
                float(ds["sweep_c_deep_se"][k]),
            ]
        )
    second = _common.table(
        ["sigma_w", "c* theory", "c^L theory", "c deep meas", "s.e."], rows
    )
    depth, last = ds.attrs["depth"], ds.attrs["sweep_last_layers"]
    return (
        f"Poole et al. 2016, tanh, sigma_b = {ds.attrs['sigma_b']}, "
        f"width {ds.attrs['width']}, {ds.attrs['members']} members, depth {depth}\n"
        f"q^L: mean over the {len(Q_IN)} single inputs at the last layer; "
        f"c^L: the pair with c_in = {C_IN[C_SWEEP]} at q^1 = q*\n"
        f"{first}\n\n"
        f"c* sweep (edge of chaos at sigma_w = {ds.attrs['critical_sigma_w']:.4g}); "
        f"measured c averaged over the last {last} layers\n{second}"
    )


def main(args: Args) -> xr.Dataset:
    start = time.perf_counter()
    ds = run(args)
    _common.write_outputs(ds, args.out, NAME, plot, summary, start)
    return ds


if __name__ == "__main__":
    main(tyro.cli(Args))
