"""Figures and summary tables drawn from a sweep's results store.

Everything here reads an ``xarray.Dataset`` as written by
:func:`actgeo.sweep.run_sweep`; nothing recomputes a measurement, and the
theory's predictions drawn beside the measurements are read from the same
store.
"""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import xarray as xr

__all__ = ["plot_sweep", "summary_table", "sweep_figure"]


def _median(ds: xr.Dataset, name: str) -> xr.DataArray:
    return ds[f"{name}_quantiles"].sel(quantile=0.5)


_COLUMNS = (
    ("delta_in", "median log10 distance to neuron\nboundary, input space"),
    ("delta_rep", "median log10 distance to neuron\nboundary, representation space"),
    (
        "retention_first",
        "layer-1 signed distances: held-out\nR^2 of a ridge probe, median",
    ),
    (
        "retention_target",
        "target's signed distance: held-out\nR^2 of a ridge probe, median",
    ),
    ("q", "log10 q = log10 |z^l|^2 / N,\nmedian over members"),
    ("correlation", "correlation c^l of input pairs,\nmedian over members"),
)
# Where each column's infinite-width prediction is stored, and how it is drawn.
_THEORY = {
    "delta_in": ("theory_log10_delta_in_median", lambda v: v),
    "delta_rep": ("theory_log10_delta_rep_median", lambda v: v),
    "q": ("theory_q", np.log10),
    "correlation": ("theory_correlation", lambda v: v),
}


def _member_quartiles(values: np.ndarray) -> np.ndarray:
    """Quartiles over members of ``values (E, L)``, ignoring NaN: ``(3, L)``."""
    with warnings.catch_warnings():
        # Layers where every member overflowed are all NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(values, [25, 50, 75], axis=0)


def _measured(ds: xr.Dataset, name: str, cell: dict) -> np.ndarray | None:
    """Quartiles ``(3, L)`` of one column's measurement, or ``None`` if absent."""
    if name.startswith("delta"):
        q = ds[f"{name}_quantiles"].sel(cell)
        return np.stack([q.sel(quantile=v).values for v in (0.25, 0.5, 0.75)])
    values = ds[name].sel(cell).values.astype(float)
    if np.all(np.isnan(values)):
        return None
    if name == "q":
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.log10(values)
    return _member_quartiles(values)


def _predicted(ds: xr.Dataset, name: str, cell: dict) -> np.ndarray | None:
    """One column's infinite-width prediction ``(L,)``, or ``None`` if there is none."""
    if name not in _THEORY or _THEORY[name][0] not in ds:
        return None
    variable, transform = _THEORY[name]
    values = ds[variable].sel(cell).values.astype(float)
    if not np.isfinite(values).any():
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        return transform(values)


def sweep_figure(ds: xr.Dataset):
    """The sweep figure as a matplotlib ``Figure`` (see :func:`plot_sweep`)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    done = ds["done"].values
    settings = json.loads(ds.attrs.get("settings", "{}"))
    datasets = list(ds["dataset"].values)
    activations = list(ds["activation"].values)
    fig, axes = plt.subplots(
        len(datasets),
        len(_COLUMNS),
        figsize=(3.7 * len(_COLUMNS), 3.2 * len(datasets)),
        squeeze=False,
        constrained_layout=True,
    )
    colours = plt.get_cmap("tab10" if len(activations) <= 10 else "tab20")
    layer = ds["layer"].values
    marker = "o" if len(layer) <= 4 else None
    any_theory = False
    for r, dataset in enumerate(datasets):
        for c, (name, title) in enumerate(_COLUMNS):
            ax = axes[r, c]
            for a, activation in enumerate(activations):
                if not done[a, r]:
                    continue
                colour = colours(a % colours.N)
                cell = dict(activation=activation, dataset=dataset)
                measured = _measured(ds, name, cell)
                if measured is None:
                    continue
                lo, mid, hi = measured
                ax.plot(layer, mid, color=colour, marker=marker, label=activation)
                ax.fill_between(layer, lo, hi, color=colour, alpha=0.15, lw=0)
                predicted = _predicted(ds, name, cell)
                if predicted is not None:
                    ax.plot(layer, predicted, color=colour, ls="--", lw=1.2)
                    any_theory = True
            if name.startswith("retention"):
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
    handles, _ = axes[0, 0].get_legend_handles_labels()
    if any_theory:
        handles.append(
            Line2D([], [], color="0.3", ls="--", label="infinite-width theory")
        )
    axes[0, 0].legend(handles=handles, fontsize=8)
    fig.suptitle(
        f"{settings.get('members', '?')} random MLPs per cell, width "
        f"{settings.get('width', '?')}, {settings.get('init', '?')} init, "
        f"sigma_b = {settings.get('sigma_b', '?')}, probe ridge "
        f"{settings.get('ridge', '?')}; bands: interquartile ranges",
        fontsize=10,
    )
    return fig


def plot_sweep(ds: xr.Dataset, path: str | pathlib.Path) -> pathlib.Path:
    """Draws the sweep figure to a PNG and returns its path.

    One row per data set; columns: median log10 neuron boundary distance in
    input space and in representation space, retention of the first layer's
    signed distances, retention of the known target distance where the data
    set has one (median over members; held-out R^2 is unbounded below, so a
    mean would follow a few collapsed members), ``log10 q`` and the
    correlation of input pairs. Bands are interquartile ranges; one colour
    per activation. Dashed lines of the same colour are the infinite-width
    predictions stored beside the measurements (``theory_*``), where the
    network lies in the theory's scope.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = sweep_figure(ds)
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
    infinite-width theory's prediction of both at the last layer (``theory
    in``, ``theory rep``; ``-`` outside its scope), the median over members
    of the held-out R^2 of the layer-1 probe (``R2 first``) and of the target
    probe (``R2 target``), and the mean fraction of saturated units (``sat``).
    """
    layers = _pick_layers(int(ds["layer"].values[-1]))
    last = layers[-1]
    done = ds["done"].values
    header = ["activation", "dataset", "sigma_w"]
    for l in layers:
        header += [f"in@{l}", f"rep@{l}"]
    header += [f"theory in@{last}", f"theory rep@{last}"]
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
            for name in ("delta_in", "delta_rep"):
                variable = f"theory_log10_{name}_median"
                value = ds[variable].sel(layer=last, **cell) if variable in ds else None
                row.append(_fmt(np.nan if value is None else float(value)))
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
