"""Hanin & Rolnick 2019: linear regions of relu networks at initialisation.

Hanin and Rolnick, "Complexity of linear regions in deep networks" (ICML
2019). At initialisation the number of linear regions a line crosses, per
unit length, grows with the number of neurons, not exponentially with depth;
and the distance from a point to the nearest region boundary shrinks like one
over the number of neurons. relu, He initialisation (``sigma_w = sqrt(2)``,
standard deviation), ``sigma_b = 0`` by default; several depths at fixed
width.

Measurements (exact, :mod:`actgeo.kernels.regions`):

(a) region changes along segments between pairs of digits images (inputs
    normalised to ``|x|^2 / D = 1``), counted by the exact walk, per unit
    length and divided by the number of neurons ``L N``;
(b) the distance from digits images to the nearest region boundary
    (:func:`actgeo.kernels.neuron_distances`, the minimum over all neurons of
    ``|z_i| / |J_i|``), times ``L N``;
(c) the exact partition of the square around three digits images in the
    plane through them, for a small network with a random readout of 10
    classes, with its decision boundary.

Theory beside the measurements. (a) With ``sigma_b = 0`` the network is
positively homogeneous, so the sign pattern along a segment is that along
its central projection on a sphere: an arc of angle ``phi`` between the end
points. Kac-Rice on that circle (:func:`actgeo.theory.predict`,
``zero_crossings`` per unit arc length at radius ``r = sqrt(D q_in)``)
predicts ``zero_crossings * r * phi`` sign changes per neuron and layer
(``phi / pi`` for He relu at every layer). For ``sigma_b > 0`` the column is
NaN. (b) Treating the ``L N`` neuron distances as independent, each the
predicted ``s_l |T_D|`` (:func:`actgeo.theory.predict`,
``log10_delta_in_median``), the nearest one has mean
``int_0^inf prod_l P(s_l |T_D| > x)^N dx``.

Run ``python experiments/hanin2019_regions.py --quick`` (small, CPU) or
without ``--quick`` (width 128, 64 members, depths to 32: an accelerator).
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
import matplotlib
import numpy as np
import tyro
import xarray as xr
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from scipy import integrate, stats
from tqdm.auto import tqdm

import actgeo
from actgeo.data import digits
from actgeo.kernels.distances import neuron_distances
from actgeo.kernels.regions import count_regions_2d, walk_segment
from actgeo.theory.predictions import predict

NAME = "hanin2019_regions"
ACTIVATION = "relu"
SIGMA_W = math.sqrt(2.0)
CLASSES = 10

_QUICK = dict(
    width=32, members=12, depths=(1, 2, 4, 8), lines=12, points=64, plane_width=12
)
_FULL = dict(
    width=128,
    members=64,
    depths=(1, 2, 4, 8, 16, 32),
    lines=32,
    points=256,
    plane_width=32,
)


@dataclasses.dataclass
class Args:
    """Reproduce Hanin & Rolnick 2019 at initialisation (relu, He)."""

    out: pathlib.Path = _common.RESULTS / NAME
    """Folder for the PNG, the numbers (.zarr) and the table."""
    quick: bool = False
    """Small sizes for a CPU (width 32, 12 members, depths 1-8)."""
    width: int | None = None
    """Hidden width N (when omitted: 128, or 32 with --quick)."""
    members: int | None = None
    """Random networks per depth (when omitted: 64, or 12 with --quick)."""
    depths: tuple[int, ...] | None = None
    """Depths L (when omitted: 1..32, or 1..8 with --quick)."""
    lines: int | None = None
    """Segments between digits pairs per network (32, or 12 with --quick)."""
    points: int | None = None
    """Digits images for the boundary distances (256, or 64 with --quick)."""
    plane_width: int | None = None
    """Width of the 3-layer network of the partition figure (32, or 12)."""
    plane_depth: int = 3
    """Depth of the network of the partition figure."""
    sigma_b: float = 0.0
    """Bias standard deviation (the segment theory needs 0)."""
    seed: int = 0
    """Root seed."""
    progress: bool = True
    """Show progress bars."""


def _resolve(args: Args) -> dict:
    return _common.preset_sizes(args, _QUICK, _FULL)


@functools.partial(jax.jit, static_argnames=("max_crossings",))
def _measure(params, starts, ends, points, *, max_crossings):
    """Per member: changes per layer ``(E, P, L)``, lengths ``(E, P)``,
    truncation flags ``(E, P)`` and region distances ``(E, B)``."""

    def one(p):
        walks = jax.vmap(
            lambda a, b: walk_segment(p, ACTIVATION, a, b, max_crossings=max_crossings)
        )(starts, ends)
        region = neuron_distances(p, points, ACTIVATION).region[-1]
        return walks.counts, walks.length, walks.truncated, region

    return jax.vmap(one)(params)


def _nearest_boundary_theory(depth, width, dim, sigma_b) -> float:
    """Mean of the smallest of ``L N`` independent neuron distances."""
    pred = predict(ACTIVATION, SIGMA_W, sigma_b, depth, width=width, input_dim=dim)
    median = stats.t.ppf(0.75, dim)  # median of |T_D|
    scales = 10.0 ** np.asarray(pred.log10_delta_in_median, np.float64) / median

    def survival(x):
        tails = 2.0 * stats.t.sf(x / scales, dim)
        return float(np.exp(width * np.sum(np.log(tails))))

    value, _ = integrate.quad(survival, 0.0, np.inf, limit=200)
    return value


def _arc_theory(depth, width, dim, sigma_b, angles) -> np.ndarray:
    """Sign changes per neuron and layer on segments of these angles: ``(P, L)``."""
    if sigma_b != 0.0:
        return np.full((angles.size, depth), np.nan)
    pred = predict(ACTIVATION, SIGMA_W, sigma_b, depth, width=width, input_dim=dim)
    per_radian = np.asarray(pred.zero_crossings, np.float64) * math.sqrt(dim)
    return angles[:, None] * per_radian[None]


def _plane(x3: np.ndarray):
    """Centre, orthonormal ``u``, ``v`` and extent of the plane through 3 points."""
    center = x3.mean(axis=0)
    basis, _ = np.linalg.qr((x3[1:] - x3[0]).T)
    coords = (x3 - center) @ basis
    extent = 1.25 * float(np.abs(coords).max())
    return center, basis[:, 0], basis[:, 1], extent, coords


def run(args: Args) -> xr.Dataset:
    sizes = _resolve(args)
    width, members = sizes["width"], sizes["members"]
    depths = tuple(int(d) for d in sizes["depths"])
    n_lines, n_points = sizes["lines"], sizes["points"]
    data = digits(2 * n_lines + n_points + 3, seed=args.seed)
    x = data.x.astype(np.float32)
    dim = x.shape[1]
    starts, ends = x[:n_lines], x[n_lines : 2 * n_lines]
    points = x[2 * n_lines : 2 * n_lines + n_points]
    cosine = np.sum(starts * ends, 1) / (
        np.linalg.norm(starts, axis=1) * np.linalg.norm(ends, axis=1)
    )
    angles = np.arccos(np.clip(cosine, -1.0, 1.0)).astype(np.float64)
    root = jax.random.key(args.seed)

    out = {k: [] for k in ("changes", "length", "distance")}
    theory_changes, theory_distance = [], []
    max_depth = max(depths)
    for depth in tqdm(depths, desc="depth", disable=not args.progress):
        spec = actgeo.NetworkSpec(
            input_dim=dim,
            width=width,
            depth=depth,
            activation=ACTIVATION,
            sigma_w=SIGMA_W,
            sigma_b=args.sigma_b,
        )
        measure = functools.partial(
            _measure,
            starts=jnp.asarray(starts),
            ends=jnp.asarray(ends),
            points=jnp.asarray(points),
            max_crossings=max(64, 2 * depth * width),
        )
        counts, length, truncated, region = _common._run(
            measure,
            spec,
            members,
            jax.random.fold_in(root, depth),
            n_lines + n_points,
            jnp.float32,
            args.progress,
            f"L={depth}",
        )
        if np.any(truncated):
            raise RuntimeError(
                f"depth {depth}: a walk reached max_crossings; raise it in _measure"
            )
        pad = np.full((*counts.shape[:2], max_depth - depth), np.nan)
        out["changes"].append(np.concatenate([counts / width, pad], axis=2))
        out["length"].append(length)
        out["distance"].append(region)
        arc = _arc_theory(depth, width, dim, args.sigma_b, angles)
        theory_changes.append(
            np.concatenate([arc, np.full((n_lines, max_depth - depth), np.nan)], 1)
        )
        theory_distance.append(
            _nearest_boundary_theory(depth, width, dim, args.sigma_b)
        )

    # (c) The partition of a plane through three images, with a readout.
    center, u, v, extent, corners = _plane(x[-3:].astype(np.float64))
    plane_spec = actgeo.NetworkSpec(
        input_dim=dim,
        width=sizes["plane_width"],
        depth=args.plane_depth,
        activation=ACTIVATION,
        sigma_w=SIGMA_W,
        sigma_b=args.sigma_b,
        readout=CLASSES,
    )
    plane_params = jax.tree.map(
        lambda a: a[0],
        actgeo.sample(plane_spec, 1, key=jax.random.fold_in(root, 10_000)),
    )
    f32 = functools.partial(np.asarray, dtype=np.float32)
    part = count_regions_2d(
        plane_params, ACTIVATION, f32(center), f32(u), f32(v), extent
    )
    region_of_vertex = np.concatenate(
        [np.full(len(p), k) for k, p in enumerate(part.polygons)]
    )

    neurons = np.array(depths) * width
    ds = xr.Dataset(
        {
            "changes_per_neuron": (
                ("depth", "member", "line", "layer"),
                np.stack(out["changes"]),
            ),
            "changes_per_neuron_theory": (
                ("depth", "line", "layer"),
                np.stack(theory_changes),
            ),
            "line_length": (("depth", "member", "line"), np.stack(out["length"])),
            "line_angle": ("line", angles),
            "region_distance": (
                ("depth", "member", "point"),
                np.stack(out["distance"]),
            ),
            "region_distance_theory": ("depth", np.array(theory_distance)),
            "neurons": ("depth", neurons),
            "partition_vertices": (("vertex", "xy"), np.concatenate(part.polygons)),
            "partition_region": ("vertex", region_of_vertex),
            "partition_edge_layer": ("vertex", np.concatenate(part.edge_layers)),
            "partition_area": ("region", part.areas),
            "decision_segments": (("segment", "end", "xy"), part.decision),
            "decision_classes": (("segment", "pair"), part.decision_classes),
            "plane_points": (("image", "xy"), corners),
        },
        coords={"depth": list(depths), "layer": np.arange(1, max_depth + 1)},
        attrs=dict(
            figure="Hanin & Rolnick 2019, region counts and boundary distances",
            activation=ACTIVATION,
            sigma_w=SIGMA_W,
            sigma_b=args.sigma_b,
            sigma_convention="standard deviations",
            width=width,
            members=members,
            input_dim=dim,
            data="scikit-learn digits, centred, |x|^2 / D = 1",
            seed=args.seed,
            plane_width=sizes["plane_width"],
            plane_depth=args.plane_depth,
            plane_regions=part.count,
            plane_extent=extent,
            plane_readout=CLASSES,
            errors="standard error of the mean over members",
            distance_theory="independent-neuron approximation",
        ),
    )
    return ds


def _per_unit_length(ds: xr.Dataset):
    """Changes per unit length per neuron, all layers: ``(depth, member)``."""
    total = ds["changes_per_neuron"].sum("layer", skipna=True)
    depth = xr.DataArray(np.asarray(ds["depth"]), dims="depth")
    per = total / (ds["line_length"] * depth)
    return per.mean("line")


def _theory_per_unit_length(ds: xr.Dataset):
    depth = xr.DataArray(np.asarray(ds["depth"]), dims="depth")
    total = ds["changes_per_neuron_theory"].sum("layer", skipna=True, min_count=1)
    per = total / (ds["line_length"].mean("member") * depth)
    return per.mean("line")


def plot(ds: xr.Dataset, path: pathlib.Path) -> None:
    fig = Figure(figsize=(16, 5), layout="constrained")
    ax_a, ax_b, ax_c, ax_d = fig.subplots(1, 4)
    depths = np.asarray(ds["depth"])
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.85, depths.size))
    for k, depth in enumerate(depths):
        # Per member (mean over its segments), then mean and s.e. over members.
        per_member = np.asarray(ds["changes_per_neuron"][k].mean("line"))
        per_layer, per_layer_se = _common.mean_and_error(per_member, axis=0)
        theory = ds["changes_per_neuron_theory"][k].mean("line")
        layers = ds["layer"][:depth]
        ax_a.errorbar(
            layers,
            per_layer[:depth],
            per_layer_se[:depth],
            fmt="o-",
            ms=4,
            color=colors[k],
            label=f"L={depth}",
        )
        ax_a.plot(layers, theory[:depth], "--", color=colors[k], lw=1)
    ax_a.plot([], [], "k--", lw=1, label="theory (arc)")
    ax_a.set(xlabel="layer l", ylabel="sign changes per neuron per segment")
    ax_a.set_title("(a) changes per neuron, by layer", fontsize=10)
    ax_a.legend(fontsize=8)

    measured = _per_unit_length(ds)
    mean, se = _common.mean_and_error(np.asarray(measured), axis=1)
    ax_b.errorbar(depths, mean, se, fmt="o-", label="measured")
    ax_b.plot(depths, np.asarray(_theory_per_unit_length(ds)), "k--", label="theory")
    ax_b.set(
        xscale="log",
        xticks=depths,
        xticklabels=depths,
        xlabel="depth L",
        ylabel="changes / (length L N)",
    )
    ax_b.xaxis.set_minor_formatter(NullFormatter())
    ax_b.set_ylim(0, None)
    ax_b.set_title("(b) changes / (length x neurons)", fontsize=10)
    ax_b.legend(fontsize=8)

    scaled = ds["region_distance"] * ds["neurons"]
    mean, se = _common.mean_and_error(np.asarray(scaled.mean("point")), axis=1)
    ax_c.errorbar(depths, mean, se, fmt="o-", label="mean")
    median = np.asarray(scaled.median(("member", "point")))
    ax_c.plot(depths, median, "s-", ms=4, label="median")
    ax_c.plot(
        depths,
        np.asarray(ds["region_distance_theory"] * ds["neurons"]),
        "k--",
        label="theory (independent neurons)",
    )
    ax_c.set(
        xscale="log",
        xticks=depths,
        xticklabels=depths,
        xlabel="depth L",
        ylabel="distance x L N",
    )
    ax_c.xaxis.set_minor_formatter(NullFormatter())
    ax_c.set_ylim(0, None)
    ax_c.set_title("(c) distance to nearest boundary x neurons", fontsize=10)
    ax_c.legend(fontsize=8)

    _plot_partition(ds, ax_d)
    fig.suptitle(
        f"Hanin & Rolnick 2019: relu, He init, sigma_b={ds.attrs['sigma_b']:g}, "
        f"N={ds.attrs['width']}, {ds.attrs['members']} networks per depth, digits"
    )
    fig.savefig(path, dpi=120)


def _plot_partition(ds: xr.Dataset, ax) -> None:
    verts = np.asarray(ds["partition_vertices"])
    region = np.asarray(ds["partition_region"])
    layer = np.asarray(ds["partition_edge_layer"])
    starts = np.flatnonzero(np.r_[True, region[1:] != region[:-1]])
    stops = np.r_[starts[1:], region.size]
    polys = [verts[a:b] for a, b in zip(starts, stops, strict=True)]
    rng = np.random.default_rng(0)
    faces = rng.uniform(0.55, 0.95, (len(polys), 3))
    ax.add_collection(PolyCollection(polys, facecolors=faces, edgecolors="none"))
    depth = int(ds.attrs["plane_depth"])
    layer_colors = matplotlib.colormaps["plasma"](np.linspace(0, 0.8, depth))
    for poly, labels in zip(
        polys, [layer[a:b] for a, b in zip(starts, stops, strict=True)], strict=True
    ):
        edges = np.stack([poly, np.roll(poly, -1, axis=0)], axis=1)
        inner = labels >= 0
        ax.add_collection(
            LineCollection(edges[inner], colors=layer_colors[labels[inner]], lw=0.5)
        )
    segs = np.asarray(ds["decision_segments"])
    if segs.size:
        ax.add_collection(LineCollection(segs, colors="k", lw=1.8))
    pts = np.asarray(ds["plane_points"])
    ax.plot(pts[:, 0], pts[:, 1], "w*", ms=12, mec="k")
    e = float(ds.attrs["plane_extent"])
    ax.set(xlim=(-e, e), ylim=(-e, e), aspect="equal", xlabel="s", ylabel="t")
    ax.set_title(
        f"(d) {ds.attrs['plane_regions']} regions (N={ds.attrs['plane_width']}, "
        f"L={depth}); edges coloured by layer\nblack: decision boundary; "
        "stars: the three digits",
        fontsize=9,
    )


def summary(ds: xr.Dataset) -> str:
    measured = np.asarray(_per_unit_length(ds))
    theory = np.asarray(_theory_per_unit_length(ds))
    scaled = np.asarray((ds["region_distance"] * ds["neurons"]).mean("point"))
    rows = []
    for k, depth in enumerate(np.asarray(ds["depth"])):
        per_neuron = ds["changes_per_neuron"][k].sum("layer") / depth
        per_neuron_th = ds["changes_per_neuron_theory"][k].sum("layer") / depth
        m, se = _common.mean_and_error(measured[k])
        dm, dse = _common.mean_and_error(scaled[k])
        rows.append(
            [
                int(depth),
                int(ds["neurons"][k]),
                float(per_neuron.mean()),
                float(per_neuron_th.mean()),
                m,
                se,
                float(theory[k]),
                dm,
                dse,
                float(ds["region_distance_theory"][k] * ds["neurons"][k]),
            ]
        )
    text = _common.table(
        [
            "L",
            "L N",
            "chg/neuron",
            "theory",
            "chg/(len LN)",
            "s.e.",
            "theory",
            "dist x LN",
            "s.e.",
            "theory",
        ],
        rows,
    )
    return (
        f"Hanin & Rolnick 2019, relu He init, sigma_b = {ds.attrs['sigma_b']:g}, "
        f"width {ds.attrs['width']}, {ds.attrs['members']} members per depth, "
        f"{ds.sizes['line']} digits segments, {ds.sizes['point']} digits points\n"
        "chg/neuron: sign changes per neuron along a segment (theory: Kac-Rice on "
        "the segment's arc); chg/(len LN): changes per unit length / neurons; "
        "dist x LN: mean distance to the nearest region boundary x neurons "
        "(theory: independent neurons)\n"
        f"{text}\n\n"
        f"partition (d): {ds.attrs['plane_regions']} regions in the square "
        f"|s|, |t| <= {ds.attrs['plane_extent']:.3g} of the plane through 3 "
        f"images, width {ds.attrs['plane_width']}, depth {ds.attrs['plane_depth']}, "
        f"{ds.sizes['segment']} decision-boundary segments"
    )


def main(args: Args) -> xr.Dataset:
    start = time.perf_counter()
    ds = run(args)
    _common.write_outputs(ds, args.out, NAME, plot, summary, start)
    return ds


if __name__ == "__main__":
    main(tyro.cli(Args))
