"""Figures and summary tables drawn from a sweep's results store.

Everything here reads an ``xarray.Dataset`` as written by
:func:`actgeo.sweep.run_sweep`; nothing recomputes a measurement.
"""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import xarray as xr

__all__ = ["plot_sweep", "summary_table"]


def _median(ds: xr.Dataset, name: str) -> xr.DataArray:
    return ds[f"{name}_quantiles"].sel(quantile=0.5)


def _band(ds: xr.Dataset, name: str):
    q = ds[f"{name}_quantiles"]
    return q.sel(quantile=0.25), q.sel(quantile=0.75)


def plot_sweep(ds: xr.Dataset, path: str | pathlib.Path) -> pathlib.Path:
    """Draws the sweep figure to a PNG and returns its path.

    One row per data set; columns: median log10 neuron boundary distance in
    input space and in representation space, retention of the first layer's
    signed distances, and retention of the known target distance where the
    data set has one (median over members; held-out R^2 is unbounded below,
    so a mean would follow a few collapsed members). Bands are interquartile
    ranges. One line per activation.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = ds["done"].values
    settings = json.loads(ds.attrs.get("settings", "{}"))
    datasets = list(ds["dataset"].values)
    activations = list(ds["activation"].values)
    columns = [
        ("delta_in", "median log10 distance to neuron\nboundary, input space"),
        (
            "delta_rep",
            "median log10 distance to neuron\nboundary, representation space",
        ),
        (
            "retention_first",
            "layer-1 signed distances: held-out\nR^2 of a ridge probe, median",
        ),
        (
            "retention_target",
            "target's signed distance: held-out\nR^2 of a ridge probe, median",
        ),
    ]
    fig, axes = plt.subplots(
        len(datasets),
        len(columns),
        figsize=(4.2 * len(columns), 3.3 * len(datasets)),
        squeeze=False,
        constrained_layout=True,
    )
    from matplotlib.ticker import MaxNLocator

    colours = plt.get_cmap("tab10" if len(activations) <= 10 else "tab20")
    layer = ds["layer"].values
    for r, dataset in enumerate(datasets):
        for c, (name, title) in enumerate(columns):
            ax = axes[r, c]
            for a, activation in enumerate(activations):
                if not done[a, r]:
                    continue
                colour = colours(a % colours.N)
                marker = "o" if len(layer) <= 4 else None
                cell = dict(activation=activation, dataset=dataset)
                if name.startswith("delta"):
                    ax.plot(
                        layer,
                        _median(ds, name).sel(cell),
                        color=colour,
                        marker=marker,
                        label=activation,
                    )
                    lo, hi = _band(ds, name)
                    ax.fill_between(
                        layer,
                        lo.sel(cell),
                        hi.sel(cell),
                        color=colour,
                        alpha=0.15,
                        lw=0,
                    )
                else:
                    values = ds[name].sel(cell).values
                    if np.all(np.isnan(values)):
                        continue
                    with warnings.catch_warnings():
                        # Layers where every member overflowed are all NaN.
                        warnings.simplefilter("ignore", RuntimeWarning)
                        lo, mid, hi = np.nanpercentile(values, [25, 50, 75], axis=0)
                    ax.plot(layer, mid, color=colour, marker=marker, label=activation)
                    ax.fill_between(layer, lo, hi, color=colour, alpha=0.15, lw=0)
                    ax.set_ylim(-0.5, 1.02)
            if name == "retention_target" and not ax.lines:
                ax.text(
                    0.5,
                    0.5,
                    "no known target geometry",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="0.4",
                )
            ax.set_title(f"{dataset}: {title}", fontsize=9)
            ax.set_xlabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(
        f"{settings.get('members', '?')} random MLPs per cell, width "
        f"{settings.get('width', '?')}, {settings.get('init', '?')} init, "
        f"sigma_b = {settings.get('sigma_b', '?')}, probe ridge "
        f"{settings.get('ridge', '?')}",
        fontsize=10,
    )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pick_layers(depth: int) -> list[int]:
    layers = sorted({1, min(8, depth), depth})
    return layers


def summary_table(ds: xr.Dataset) -> str:
    """A plain-text table: per cell, median log10 distances and retention.

    Columns give, at a few layers, the median log10 distance to a neuron's
    boundary in input space (``in``) and representation space (``rep``), the
    median over members of the held-out R^2 of the layer-1 probe (``R2
    first``) and of the target probe (``R2 target``), and the mean fraction
    of saturated units (``sat``).
    """
    layers = _pick_layers(int(ds["layer"].values[-1]))
    done = ds["done"].values
    header = ["activation", "dataset", "sigma_w"]
    for l in layers:
        header += [f"in@{l}", f"rep@{l}"]
    for l in layers[1:]:
        header += [f"R2 first@{l}", f"R2 target@{l}", f"sat@{l}"]
    rows = []
    for a, activation in enumerate(ds["activation"].values):
        for s, dataset in enumerate(ds["dataset"].values):
            if not done[a, s]:
                continue
            cell = dict(activation=activation, dataset=dataset)
            row = [
                str(activation),
                str(dataset),
                f"{float(ds['sigma_w'].sel(cell)):.3g}",
            ]
            for l in layers:
                for name in ("delta_in", "delta_rep"):
                    row.append(_fmt(float(_median(ds, name).sel(layer=l, **cell))))
            for l in layers[1:]:
                for name in ("retention_first", "retention_target", "saturated"):
                    values = ds[name].sel(layer=l, **cell).values
                    if np.all(np.isnan(values)):
                        row.append(_fmt(np.nan))
                    elif name == "saturated":
                        row.append(_fmt(np.mean(values)))
                    else:
                        row.append(_fmt(np.median(values)))
            rows.append(row)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
        for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += [
        "  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows
    ]
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.2f}"
