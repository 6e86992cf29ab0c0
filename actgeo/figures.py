"""Figures and summary tables drawn from a sweep's results store, and theory maps.

The sweep's figure and table read an ``xarray.Dataset`` as written by
:func:`actgeo.sweep.run_sweep`; nothing recomputes a measurement, and the
theory's predictions drawn beside the measurements are read from the same
store. The phase diagram and the edge-of-chaos curves are computed by
:func:`theory_dataset` from :mod:`actgeo.theory` and drawn from that dataset.

``sigma_w`` and ``sigma_b`` are standard deviations throughout.
"""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import xarray as xr

__all__ = [
    "plot_edge_of_chaos",
    "plot_phase_diagram",
    "plot_sweep",
    "summary_table",
    "sweep_figure",
    "theory_dataset",
]


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
    return _save(sweep_figure(ds), path)


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


def _padded(curves: list[np.ndarray], fill) -> np.ndarray:
    """Stacks 1-D arrays of different lengths into ``(len(curves), longest)``."""
    longest = max([1, *(len(c) for c in curves)])
    out = np.full((len(curves), longest), fill, dtype=np.result_type(fill, *curves))
    for i, c in enumerate(curves):
        out[i, : len(c)] = c
    return out


def _curve(activation: str) -> tuple[tuple[np.ndarray, ...], str | None]:
    """One activation's edge of chaos ``(q*, sigma_w, sigma_b, stable)``.

    An activation without one gives empty arrays and the theory's reason.
    """
    from actgeo import theory

    try:
        eoc = theory.edge_of_chaos(activation)
    except ValueError as err:
        empty = np.zeros(0)
        return (empty, empty, empty, np.zeros(0, bool)), str(err)
    arrays = (eoc.q_star, eoc.sigma_w, eoc.sigma_b, eoc.stable)
    arrays = tuple(
        np.asarray(a, bool if i == 3 else float) for i, a in enumerate(arrays)
    )
    if eoc.q_star.size == 0:
        return arrays, (
            f"{activation}: chi_1 = 1 at a fixed point of the q-map only where "
            "sigma_b^2 would be negative"
        )
    return arrays, None


def theory_dataset(
    activation: str,
    activations: tuple[str, ...],
    sigma_w: np.ndarray,
    sigma_b: np.ndarray,
) -> xr.Dataset:
    """The phase diagram of one activation and edge-of-chaos curves of several.

    Args:
      activation: registered name whose phase diagram is computed on the grid.
      activations: registered names whose edge-of-chaos curves are computed.
      sigma_w: ``(W,)`` weight standard deviations of the grid.
      sigma_b: ``(S,)`` bias standard deviations of the grid.

    Returns:
      A dataset with ``q_star``, ``chi_1`` and ``c_star`` of dims ``(sigma_b,
      sigma_w)`` (:func:`actgeo.theory.phase_diagram`); the phase-diagram
      activation's edge of chaos as ``phase_eoc_*`` of dim ``phase_point``;
      and each curve's ``eoc_q_star``, ``eoc_sigma_w``, ``eoc_sigma_b`` and
      ``eoc_stable`` of dims ``(curve, point)``
      (:func:`actgeo.theory.edge_of_chaos`), padded with NaN (``False`` for
      ``eoc_stable``) past each curve's end. Activations without an edge of
      chaos are listed with the theory's reason in the attribute
      ``no_edge_of_chaos`` (a JSON object).
    """
    from actgeo import theory

    grid = theory.phase_diagram(activation, sigma_w, sigma_b)
    traced = {name: _curve(name) for name in dict.fromkeys((*activations, activation))}
    missing = {name: why for name, (_, why) in traced.items() if why is not None}
    curves = [traced[name][0] for name in activations]
    phase = traced[activation][0]
    plane = ("sigma_b", "sigma_w")
    variables = {
        "q_star": (plane, np.asarray(grid.q_star, float)),
        "chi_1": (plane, np.asarray(grid.chi_1, float)),
        "c_star": (plane, np.asarray(grid.c_star, float)),
    }
    fields = ("q_star", "sigma_w", "sigma_b", "stable")
    for k, field in enumerate(fields):
        fill = False if field == "stable" else np.nan
        variables[f"eoc_{field}"] = (
            ("curve", "point"),
            _padded([c[k] for c in curves], fill),
        )
        variables[f"phase_eoc_{field}"] = (("phase_point",), phase[k])
    ds = xr.Dataset(
        variables,
        coords={
            "sigma_w": np.asarray(sigma_w, float),
            "sigma_b": np.asarray(sigma_b, float),
            "curve": np.array(activations, dtype=object),
        },
    )
    texts = {
        "q_star": "fixed point q* of the q-map reached from q = 1 (inf: diverges)",
        "chi_1": "chi_1 = sigma_w^2 E[phi'(u)^2], u ~ N(0, q*); above 1: chaotic",
        "c_star": "fixed point c* of the c-map at q*, reached from c = 0",
        "eoc_q_star": "edge of chaos: the fixed point q* along the curve",
        "eoc_sigma_w": "edge of chaos: weight standard deviation",
        "eoc_sigma_b": "edge of chaos: bias standard deviation",
        "eoc_stable": "edge of chaos: the fixed point q* is stable",
    }
    for name, text in texts.items():
        ds[name].attrs["description"] = text
        if name.startswith("eoc_"):
            ds[f"phase_{name}"].attrs["description"] = text + f" ({activation})"
    ds.attrs.update(
        activation=activation,
        no_edge_of_chaos=json.dumps(missing),
        convention="sigma_w, sigma_b are standard deviations: W_ij ~ "
        "N(0, sigma_w^2 / fan_in), b_i ~ N(0, sigma_b^2)",
    )
    return ds


def _draw_curve(ax, sigma_w, sigma_b, stable, **style) -> bool:
    """Draws an edge-of-chaos curve: solid where q* is stable, dotted elsewhere.

    A curve of one point (relu's, at ``sigma_b = 0``) is drawn as a marker.
    Returns whether a dotted (unstable) part was drawn.
    """
    keep = np.isfinite(sigma_w) & np.isfinite(sigma_b)
    sigma_w, sigma_b, stable = sigma_w[keep], sigma_b[keep], stable[keep]
    if len(sigma_w) == 1:
        ax.plot(sigma_b, sigma_w, "o", clip_on=False, zorder=5, **style)
        return False
    ax.plot(sigma_b, np.where(stable, sigma_w, np.nan), "-", **style)
    # The dotted part reaches the neighbouring stable points, leaving no gap.
    unstable = ~stable
    unstable[1:] |= ~stable[:-1]
    unstable[:-1] |= ~stable[1:]
    if np.count_nonzero(~stable) and np.count_nonzero(unstable) > 1:
        ax.plot(
            sigma_b,
            np.where(unstable, sigma_w, np.nan),
            ":",
            **{**style, "label": None},
        )
        return True
    return False


def _stability_legend(ax, dotted: bool, **legend) -> None:
    """A legend of the axes' labelled lines, explaining the dotted style if used."""
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    if dotted:
        handles.append(Line2D([], [], color="0.3", ls=":", label="q* unstable"))
    if handles:
        ax.legend(handles=handles, **legend)


def _save(fig, path: str | pathlib.Path) -> pathlib.Path:
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_phase_diagram(ds: xr.Dataset, path: str | pathlib.Path) -> pathlib.Path:
    """Draws ``chi_1`` and ``c*`` over the ``(sigma_b, sigma_w)`` grid to a PNG.

    ``chi_1`` is coloured on a log scale centred on 1 (red: chaotic, blue:
    ordered); ``c*`` on a linear scale. The activation's edge of chaos
    (:func:`theory_dataset`) is drawn over both: solid where its fixed point
    is stable, dotted where not.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colors

    activation = ds.attrs.get("activation", "?")
    sigma_w, sigma_b = ds["sigma_w"].values, ds["sigma_b"].values
    chi = ds["chi_1"].values
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.nanmax(np.abs(np.log10(chi[(chi > 0) & np.isfinite(chi)])))
    # At most a decade either side of 1, so that the colours resolve the edge
    # of chaos; values beyond saturate.
    span = 10 ** float(np.clip(spread, 0.1, 1.0))
    c_star = ds["c_star"].values
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), constrained_layout=True)
    c_low = np.nanmin(c_star) if np.isfinite(c_star).any() else 0.0
    panels = (
        (chi, colors.LogNorm(1 / span, span), "RdBu_r", "chi_1 (log scale)", "both"),
        (c_star, colors.Normalize(min(0.0, c_low), 1.0), "viridis", "c*", "neither"),
    )
    dotted = False
    for ax, (values, norm, cmap, label, extend) in zip(axes, panels, strict=True):
        mesh = ax.pcolormesh(
            sigma_b, sigma_w, values.T, norm=norm, cmap=cmap, shading="nearest"
        )
        fig.colorbar(mesh, ax=ax, label=label, extend=extend)
        dotted |= _draw_curve(
            ax,
            ds["phase_eoc_sigma_w"].values,
            ds["phase_eoc_sigma_b"].values,
            ds["phase_eoc_stable"].values,
            color="k",
            lw=1.5,
            label="edge of chaos",
        )
        ax.set_xlim(sigma_b[0], sigma_b[-1])
        ax.set_ylim(sigma_w[0], sigma_w[-1])
        ax.set_xlabel("sigma_b (bias standard deviation)")
        ax.set_ylabel("sigma_w (weight standard deviation)")
        ax.set_title(f"{activation}: {label.split()[0]} at the fixed point q*")
    _stability_legend(axes[0], dotted, fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_edge_of_chaos(ds: xr.Dataset, path: str | pathlib.Path) -> pathlib.Path:
    """Draws each activation's edge of chaos, ``sigma_w`` against ``sigma_b``.

    The axes span the dataset's phase-diagram grid. Solid where the fixed
    point ``q*`` is stable, dotted where not; a curve of one point (relu) is
    a marker. Activations without an edge of chaos are named in a note.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.8, 4.4), constrained_layout=True)
    curves = list(ds["curve"].values)
    colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    dotted = False
    for k, name in enumerate(curves):
        curve = ds.sel(curve=name)
        if not np.isfinite(curve["eoc_sigma_w"].values).any():
            continue
        dotted |= _draw_curve(
            ax,
            curve["eoc_sigma_w"].values,
            curve["eoc_sigma_b"].values,
            curve["eoc_stable"].values,
            color=colours(k % colours.N),
            lw=1.5,
            label=str(name),
        )
    missing = json.loads(ds.attrs.get("no_edge_of_chaos", "{}"))
    missing = [name for name in curves if name in missing]
    if missing:
        ax.text(
            0.98,
            0.02,
            "no edge of chaos: " + ", ".join(missing),
            ha="right",
            va="bottom",
            transform=ax.transAxes,
            color="0.4",
            fontsize=8,
        )
    ax.set_xlim(0, float(ds["sigma_b"].values[-1]))
    ax.set_ylim(0, float(ds["sigma_w"].values[-1]))
    ax.set_xlabel("sigma_b (bias standard deviation)")
    ax.set_ylabel("sigma_w (weight standard deviation)")
    ax.set_title("edge of chaos: chi_1 = 1 at the fixed point q*", fontsize=10)
    ax.grid(alpha=0.3)
    _stability_legend(ax, dotted, fontsize=8)
    return _save(fig, path)
