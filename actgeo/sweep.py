"""Sweeps: a grid of (activation, data set) cells -> a resumable zarr store.

For each cell, an ensemble of random MLPs with that activation (at its
customary initialisation unless ``sigma_w`` is given, or on its edge of chaos
with ``init="critical"``) is measured on that data set with
:func:`actgeo.ensemble.run_ensemble`, and the cell's per-layer statistics are
written into its region of an xarray dataset stored as zarr, together with the
infinite-width prediction of the same statistics
(:func:`actgeo.theory.predict_statistics`), followed by a done mark. Running
the same sweep again skips cells already done; a store written with different
settings is refused.

Member ``i`` of a cell depends only on ``(seed, cell, i)``: the cell's key is
``fold_in(key(seed), crc32("activation/dataset"))``, so a cell's networks do
not change when other cells are added or removed.

Store layout (dimensions): ``activation``, ``dataset``, ``layer`` (1..L),
``member``, ``quantile`` (levels of log10 distance) and ``bin``. Per-member
scalars (``q``, ``correlation``, ``log10_jacobian_norm``, ``saturated``,
``retention_first``, ``retention_target``) have dims ``(activation, dataset,
member, layer)``; each distance (``delta_in``, ``delta_rep``, ``region``) has
``{name}_quantiles`` of log10 distance ``(activation, dataset, layer,
quantile)``, ``{name}_log10_mean``, finite and non-finite counts, and the full
histogram ``{name}_histogram``. ``retention_target`` is NaN for data sets
without a known target geometry (digits). The theory's predictions
(``theory_q``, ``theory_correlation``, ``theory_log10_jacobian_norm``,
``theory_log10_delta_in_median``, ``theory_log10_delta_rep_median``) have dims
``(activation, dataset, layer)`` and are NaN where the network lies outside the
theory's scope.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import os
import pathlib
import platform
import shutil
import zlib
from collections.abc import Callable
from typing import Literal

import jax
import numpy as np
import xarray as xr
import zarr
from tqdm.auto import tqdm

import actgeo
from actgeo import data as data_lib
from actgeo import theory
from actgeo.activations import get_activation
from actgeo.activations import names as activation_names
from actgeo.ensemble import (
    DISTANCES,
    SCALARS,
    EnsembleResult,
    member_mesh,
    plan_chunks,
    run_ensemble,
)
from actgeo.kernels.histogram import Bins
from actgeo.kernels.statistics import StatsConfig
from actgeo.networks import NetworkSpec

__all__ = [
    "QUANTILES",
    "THEORY",
    "SweepConfig",
    "cell_key",
    "open_results",
    "predict_cell",
    "run_sweep",
]

QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
_MAX_TEMPLATE_BYTES = 4 << 30
DEFAULT_ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "sigmoid", "erf")
# Statistics the infinite-width theory predicts, stored as ``theory_{name}``.
THEORY = (
    "q",
    "correlation",
    "log10_jacobian_norm",
    "log10_delta_in_median",
    "log10_delta_rep_median",
)
_INITS = ("gaussian", "orthogonal", "critical")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Settings of a sweep; everything that changes its numbers.

    Attributes:
      activations: registered activation names, one cell row each.
      datasets: built-in data sets (``digits``, ``sphere``).
      members: random networks per cell.
      width: hidden width ``N``.
      depth: number of layers ``L``; statistics are kept for layers 1..L.
      inputs: inputs per network whose boundary distances are measured
        (Jacobians propagated).
      probe: probe inputs per network (forward only), half fitting and half
        scoring the retention probes; the distance inputs are the first
        ``inputs`` of them.
      sphere_dim: input dimension of the sphere data set.
      sigma_w: weight scale for every activation, or ``None`` for each
        activation's customary value (or, with ``init="critical"``, its edge
        of chaos).
      sigma_b: bias standard deviation.
      init: ``gaussian``, ``orthogonal``, or ``critical``: Gaussian weights
        with each activation's ``sigma_w`` on its edge of chaos at
        ``sigma_b`` (:func:`actgeo.theory.critical_sigma_w`), where
        ``chi_1 = 1`` at a stable fixed point ``q*``.
      ridge: retention probe penalty, relative to the features' variance.
      seed: root seed, in ``0..2**32 - 1``.
      dtype: ``float32``, or ``float64`` (needs ``jax_enable_x64``) to check
        what float32's floor does to a result.
    """

    activations: tuple[str, ...] = DEFAULT_ACTIVATIONS
    datasets: tuple[str, ...] = data_lib.DATASETS
    members: int = 256
    width: int = 128
    depth: int = 32
    inputs: int = 8
    probe: int = 512
    sphere_dim: int = 16
    sigma_w: float | None = None
    sigma_b: float = 0.0
    init: Literal["gaussian", "orthogonal", "critical"] = "gaussian"
    ridge: float = 0.1
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self):
        problems = []
        if not self.activations:
            problems.append("activations: expected at least one name")
        for name in self.activations:
            try:
                get_activation(name)
            except ValueError as err:
                problems.append(str(err))
        if len(set(self.activations)) != len(self.activations):
            problems.append(f"activations: names repeat in {self.activations}")
        if not self.datasets:
            problems.append("datasets: expected at least one name")
        for name in self.datasets:
            if name not in data_lib.DATASETS:
                problems.append(
                    f"datasets: unknown name {name!r}; valid names are "
                    f"{', '.join(data_lib.DATASETS)}"
                )
        if len(set(self.datasets)) != len(self.datasets):
            problems.append(f"datasets: names repeat in {self.datasets}")
        for field in ("members", "width", "depth", "inputs", "sphere_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{field}: expected a positive integer, got {value!r}")
        n_digits = data_lib._digits_arrays()[0].shape[0]
        if not isinstance(self.probe, int) or self.probe < 4:
            problems.append(f"probe: expected an integer >= 4, got {self.probe!r}")
        elif "digits" in self.datasets and self.probe > n_digits:
            problems.append(
                f"probe: digits has {n_digits} images, fewer than probe={self.probe}"
            )
        elif isinstance(self.inputs, int) and self.inputs > self.probe:
            problems.append(
                f"inputs: the distance inputs are taken from the probe inputs, so "
                f"inputs ({self.inputs}) must not exceed probe ({self.probe})"
            )
        if self.sigma_w is not None and not (
            np.isfinite(self.sigma_w) and self.sigma_w > 0
        ):
            problems.append(
                f"sigma_w: expected a positive finite number, got {self.sigma_w}"
            )
        if not (np.isfinite(self.sigma_b) and self.sigma_b >= 0):
            problems.append(
                f"sigma_b: expected a non-negative finite number, got {self.sigma_b}"
            )
        if self.init not in _INITS:
            problems.append(
                f"init: expected one of {', '.join(_INITS)}, got {self.init!r}"
            )
        if self.init == "critical" and self.sigma_w is not None:
            problems.append(
                f"init: 'critical' takes each activation's sigma_w from its edge "
                f"of chaos, so sigma_w={self.sigma_w} cannot be given too; drop "
                "sigma_w or choose another init"
            )
        critical = {}
        names_valid = all(name in activation_names() for name in self.activations)
        sigma_b_valid = np.isfinite(self.sigma_b) and self.sigma_b >= 0
        if self.init == "critical" and names_valid and sigma_b_valid:
            critical, found = _critical_sigma_w(self.activations, self.sigma_b)
            problems += found
        if not (np.isfinite(self.ridge) and self.ridge > 0):
            problems.append(f"ridge: expected a positive number, got {self.ridge}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            problems.append(
                f"seed: expected an integer in 0..2**32 - 1, got {self.seed!r}"
            )
        if self.dtype not in ("float32", "float64"):
            problems.append(f"dtype: expected float32 or float64, got {self.dtype!r}")
        if problems:
            raise ValueError("; ".join(problems))
        # Not a field: derived from the fields, and kept out of the settings.
        object.__setattr__(self, "_critical", critical)

    def spec(self, activation: str, dataset: str) -> NetworkSpec:
        """The network family of one cell."""
        dim = 64 if dataset == "digits" else self.sphere_dim
        critical = self.init == "critical"
        return NetworkSpec(
            input_dim=dim,
            width=self.width,
            depth=self.depth,
            activation=activation,
            sigma_w=self._critical[activation] if critical else self.sigma_w,
            sigma_b=self.sigma_b,
            init="gaussian" if critical else self.init,
        )

    def stats_config(self) -> StatsConfig:
        return StatsConfig(bins=Bins(), ridge=self.ridge)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def _critical_sigma_w(
    activations: tuple[str, ...], sigma_b: float
) -> tuple[dict[str, float], list[str]]:
    """Each activation's edge-of-chaos ``sigma_w`` at ``sigma_b``, and problems.

    An activation without an edge of chaos at ``sigma_b`` (relu has one only
    at ``sigma_b = 0``) gives a problem naming it instead of a value.
    """
    values, problems = {}, []
    for name in activations:
        try:
            values[name] = float(theory.critical_sigma_w(name, sigma_b))
        except ValueError as err:
            problems.append(
                f"init: 'critical' needs an edge of chaos, and {name} has none at "
                f"sigma_b={sigma_b} ({err})"
            )
    return values, problems


def predict_cell(
    spec: NetworkSpec, x: np.ndarray, probe_x: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The infinite-width prediction of one cell's statistics, pooled as measured.

    ``q`` and the correlation are measured on the probe inputs, the Jacobian
    norm and the distances on the distance inputs; each is predicted from the
    same inputs (:func:`actgeo.theory.predict_statistics`), with the theory's
    fast quadrature rule (about ``1e-6`` relative, far below the ensembles'
    sampling error, and half the time to trace).

    Args:
      spec: the cell's network family.
      x: ``(B, D)`` inputs whose distances are measured.
      probe_x: ``(P, D)`` probe inputs, or ``None`` when ``q`` and the
        correlation are measured on ``x``.

    Returns:
      ``theory_{name}`` for each name of :data:`THEORY`, arrays ``(L,)`` for
      layers 1..L; all NaN when the network lies outside the theory's scope
      (residual networks).
    """
    try:
        predicted = theory.predict_statistics(
            spec, x, probe_x, quadrature=theory.Quadrature.fast()
        )
    except NotImplementedError:
        return {f"theory_{name}": np.full(spec.depth, np.nan) for name in THEORY}
    return {
        f"theory_{name}": np.asarray(getattr(predicted, name), float) for name in THEORY
    }


def cell_key(seed: int, activation: str, dataset: str) -> jax.Array:
    """Key of one cell: depends on the seed and the cell's names only."""
    tag = zlib.crc32(f"{activation}/{dataset}".encode())
    return jax.random.fold_in(jax.random.key(seed), tag)


def _inputs(config: SweepConfig, dataset: str) -> data_lib.Inputs:
    return data_lib.load(dataset, config.probe, dim=config.sphere_dim, seed=config.seed)


def _template(config: SweepConfig) -> xr.Dataset:
    a, s = len(config.activations), len(config.datasets)
    e, l, q = config.members, config.depth, len(QUANTILES)
    bins = config.stats_config().bins
    cell = ("activation", "dataset")
    variables = {}
    for name in SCALARS:
        variables[name] = ((*cell, "member", "layer"), np.full((a, s, e, l), np.nan))
    for name in DISTANCES:
        variables[f"{name}_quantiles"] = (
            (*cell, "layer", "quantile"),
            np.full((a, s, l, q), np.nan),
        )
        variables[f"{name}_log10_mean"] = ((*cell, "layer"), np.full((a, s, l), np.nan))
        for count in ("finite", "n_zero", "n_inf", "n_nan", "n_clipped"):
            variables[f"{name}_{count}"] = (
                (*cell, "layer"),
                np.zeros((a, s, l), np.int64),
            )
        variables[f"{name}_histogram"] = (
            (*cell, "layer", "bin"),
            np.zeros((a, s, l, bins.count), np.int64),
        )
    for name in THEORY:
        variables[f"theory_{name}"] = ((*cell, "layer"), np.full((a, s, l), np.nan))
    variables["sigma_w"] = (cell, np.full((a, s), np.nan))
    variables["done"] = (cell, np.zeros((a, s), bool))
    centres = bins.edges[:-1] + bins.width / 2
    coords = {
        "activation": np.array(config.activations, dtype=object),
        "dataset": np.array(config.datasets, dtype=object),
        "member": np.arange(e),
        "layer": np.arange(1, l + 1),
        "quantile": list(QUANTILES),
        "bin": centres,
    }
    ds = xr.Dataset(variables, coords=coords)
    for name, text in _descriptions().items():
        ds[name].attrs["description"] = text
    ds.attrs.update(
        settings=config.to_json(),
        actgeo_version=actgeo.__version__,
        jax_version=jax.__version__,
        devices=", ".join(str(d) for d in jax.devices()),
        processes=jax.process_count(),
        versions=json.dumps(_versions(), sort_keys=True),
        distance_units=(
            "log10 of the distance; delta_in and region in the input's units, "
            "delta_rep in the units of the layer's input phi(z^(l-1))"
        ),
        probe=(
            "ridge probe from phi(z^l), features centred and divided by their RMS, "
            f"penalty {config.ridge} x n_train; held-out variance-weighted R^2"
        ),
        histogram_range=f"[{bins.lo}, {bins.hi}] log10, {bins.count} bins",
        retention_target="NaN where the data set has no known target geometry",
        theory=(
            "theory_*: infinite-width mean-field predictions for each cell's "
            "network and inputs (actgeo.theory.predict_statistics); NaN outside "
            "the theory's scope"
        ),
    )
    return ds


def _versions() -> dict[str, str]:
    """Versions of the packages that make the numbers."""
    import importlib.metadata as metadata

    found = {"python": platform.python_version()}
    for name in ("actgeo", "jax", "jaxlib", "numpy", "xarray", "zarr"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def _descriptions() -> dict[str, str]:
    text = {
        "q": "|z^l|^2 / N averaged over the probe inputs, per member",
        "correlation": "cosine of z^l between input pairs (0,1), (2,3), ..., mean",
        "log10_jacobian_norm": "log10 of the Frobenius norm of dz^l/dx, mean",
        "saturated": "fraction of units with slope under 1% of the peak slope",
        "retention_first": "held-out R^2 of a ridge probe from phi(z^l) to the "
        "first layer's signed distances z^1_i / |W^1_i|",
        "retention_target": "held-out R^2 of a ridge probe from phi(z^l) to the "
        "known signed distance (NaN: the data set has none)",
        "sigma_w": "weight standard deviation scale used for the cell",
        "theory_q": "infinite-width prediction of q, averaged over the probe inputs",
        "theory_correlation": "infinite-width prediction of the correlation of "
        "input pairs (0,1), (2,3), ..., mean",
        "theory_log10_jacobian_norm": "infinite-width prediction of log10 of the "
        "Frobenius norm of dz^l/dx, mean",
        "theory_log10_delta_in_median": "infinite-width prediction of the median "
        "log10 distance to a neuron's boundary in input space",
        "theory_log10_delta_rep_median": "infinite-width prediction of the median "
        "log10 distance to a neuron's hyperplane in representation space",
        "done": "the cell has been written completely",
        "quantile": "quantile levels of the log10 distance distributions",
        "bin": "centres of the log10 histogram bins",
    }
    spaces = {
        "delta_in": "distance from x to each neuron's boundary in input space, "
        "|z_i| / |J_i|",
        "delta_rep": "distance from phi(z^(l-1)) to each neuron's hyperplane, "
        "|z_i| / |W_i|",
        "region": "distance from x to the boundary of its linear region",
    }
    for name, what in spaces.items():
        text[f"{name}_quantiles"] = f"quantiles of log10 {what}"
        text[f"{name}_log10_mean"] = f"mean of the finite log10 {what}"
        text[f"{name}_finite"] = f"number of finite values of {what}"
        text[f"{name}_n_zero"] = "number of zero distances (on the boundary)"
        text[f"{name}_n_inf"] = "number of infinite distances (zero gradient)"
        text[f"{name}_n_nan"] = "number of NaN distances (overflow in the forward pass)"
        text[f"{name}_n_clipped"] = "finite values beyond the histogram range"
        text[f"{name}_histogram"] = f"histogram of log10 {what}"
    return text


def _cell_dataset(
    config: SweepConfig,
    result: EnsembleResult,
    sigma_w: float,
    predicted: dict[str, np.ndarray],
) -> xr.Dataset:
    cell = ("activation", "dataset")
    variables = {}
    for name in SCALARS:
        values = result.scalars.get(name)
        if values is None:
            values = np.full((config.members, config.depth), np.nan)
        variables[name] = ((*cell, "member", "layer"), values[None, None].astype(float))
    for name in DISTANCES:
        summary = result.distances[name]
        variables[f"{name}_quantiles"] = (
            (*cell, "layer", "quantile"),
            result.quantiles(name, QUANTILES)[None, None],
        )
        variables[f"{name}_log10_mean"] = (
            (*cell, "layer"),
            result.log10_mean(name)[None, None],
        )
        counts = np.asarray(summary.counts, np.int64)
        variables[f"{name}_finite"] = ((*cell, "layer"), counts.sum(-1)[None, None])
        for count in ("n_zero", "n_inf", "n_nan", "n_clipped"):
            value = np.asarray(getattr(summary, count), np.int64)
            variables[f"{name}_{count}"] = ((*cell, "layer"), value[None, None])
        variables[f"{name}_histogram"] = ((*cell, "layer", "bin"), counts[None, None])
    for name, values in predicted.items():
        variables[name] = ((*cell, "layer"), values[None, None])
    variables["sigma_w"] = (cell, np.array([[sigma_w]]))
    return xr.Dataset(variables)


def _settings_difference(stored: str | None, requested: str) -> str:
    try:
        old = json.loads(stored or "")
    except ValueError:
        return "the store has no readable settings"
    new = json.loads(requested)
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(
        f"{k}: stored {old.get(k)!r}, requested {new.get(k)!r}" for k in keys
    )


def _open_or_create(
    config: SweepConfig, store: pathlib.Path, overwrite: bool, mesh
) -> tuple[np.ndarray, bool]:
    """The done marks of the store at ``store`` and whether it was just created.

    An existing store is checked against ``config`` and resumed; otherwise
    (or with ``overwrite``) an empty one is made.
    """
    if store.exists() and not overwrite:
        try:
            existing = xr.open_zarr(store, consolidated=False)
        except Exception as err:
            raise ValueError(
                f"out: {store} exists but is not a readable results store ({err}); "
                "choose another --out or pass --overwrite"
            ) from err
        if existing.attrs.get("settings") != config.to_json():
            difference = _settings_difference(
                existing.attrs.get("settings"), config.to_json()
            )
            raise ValueError(
                f"out: {store} holds a sweep with different settings ({difference}); "
                "choose another --out, or pass --overwrite to replace it"
            )
        missing = [
            name
            for name in ("done", *(f"theory_{n}" for n in THEORY))
            if name not in existing
        ]
        if missing:
            raise ValueError(
                f"out: {store} lacks {', '.join(missing)} (an incomplete store, or "
                "one written by an older actgeo); choose another --out or pass "
                "--overwrite"
            )
        done = existing["done"].values.copy()
        _check_stored_sigma_w(config, store, done, existing["sigma_w"].values)
        _record_run(store, json.loads(existing.attrs.get("runs", "[]")), mesh)
        return done, False
    # Write the empty store beside its final place and move it in at once, so
    # that a run killed meanwhile leaves no half-made store behind.
    partial = store.with_name(store.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    template = _template(config)
    # One zarr chunk per cell and variable: writing a cell touches no other
    # cell's files, so a write killed half-way spoils nothing already done.
    encoding = {
        name: {
            "chunks": tuple(
                1 if dim in ("activation", "dataset") else size
                for dim, size in zip(var.dims, var.shape, strict=True)
            )
        }
        for name, var in template.data_vars.items()
    }
    template.to_zarr(partial, mode="w", consolidated=False, encoding=encoding)
    if store.is_dir():
        shutil.rmtree(store)
    elif store.exists():
        store.unlink()
    partial.rename(store)
    _record_run(store, [], mesh)
    return np.zeros((len(config.activations), len(config.datasets)), bool), True


def _record_run(store: pathlib.Path, runs: list[dict], mesh) -> None:
    """Adds this run (time, processes, devices, versions) to the store's ``runs``.

    A resumed store may be finished on other machines than it began on; the
    list says which ran: ``devices`` are the devices each process used (those
    of process 0), ``all_devices`` every device of the job.
    """
    runs = [
        *runs,
        {
            "started": datetime.datetime.now(datetime.UTC).isoformat(
                timespec="seconds"
            ),
            "processes": jax.process_count(),
            "devices": [str(d) for d in mesh.devices.flat],
            "all_devices": [str(d) for d in jax.devices()],
            "versions": _versions(),
        },
    ]
    group = zarr.open_group(store, mode="r+")
    group.attrs["runs"] = json.dumps(runs)


def _check_stored_sigma_w(
    config: SweepConfig, store: pathlib.Path, done: np.ndarray, stored: np.ndarray
) -> None:
    """Refuses to resume when a done cell's ``sigma_w`` is not what it would be now.

    The settings fix every ``sigma_w`` except the critical ones, which follow
    :func:`actgeo.theory.critical_sigma_w`; a store finished by a version of
    the theory that put the edge of chaos elsewhere must not be mixed.
    """
    changed = []
    for i, activation in enumerate(config.activations):
        for j, dataset in enumerate(config.datasets):
            now = config.spec(activation, dataset).sigma_w
            if done[i, j] and not np.isclose(stored[i, j], now, rtol=1e-6, atol=0):
                changed.append(
                    f"{activation}/{dataset} stored sigma_w={stored[i, j]:.7g}, "
                    f"now {now:.7g}"
                )
    if changed:
        raise ValueError(
            f"out: {store} holds cells whose sigma_w differs from this sweep's "
            f"({'; '.join(changed)}); choose another --out, or pass --overwrite "
            "to replace it"
        )


def open_results(out: str | pathlib.Path) -> xr.Dataset:
    """Opens the results store of a sweep written to ``out``."""
    store = pathlib.Path(out) / "results.zarr"
    if not store.exists():
        raise FileNotFoundError(f"out: no results store at {store}; run a sweep first")
    return xr.open_zarr(store, consolidated=False)


def run_sweep(
    config: SweepConfig,
    out: str | pathlib.Path,
    *,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    devices: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> xr.Dataset:
    """Runs every cell not yet done and returns the store's dataset.

    Each cell's members are measured in blocks of ``chunk_size`` members per
    device (:func:`actgeo.ensemble.run_ensemble`), and every block is saved
    to ``out/blocks`` as soon as it is computed; when a cell's blocks cover
    all its members they are combined (bit-identical to one run over all of
    them), written into the cell's region of ``results.zarr`` (every variable
    is chunked per cell), marked done, and removed. A run killed at any
    moment resumes with the same call: done cells are skipped, saved blocks
    are kept, and only missing members are computed.

    Under :func:`jax.distributed.initialize` with several processes, every
    process runs this same call: the blocks of each cell are dealt out among
    the processes (each on its local devices), and each cell is combined and
    written by one process, so no two processes write one file or zarr chunk.
    ``out`` must be a folder every process sees (a shared file system).

    Args:
      config: the sweep's settings.
      out: folder for ``results.zarr``.
      chunk_size, memory_budget: members and bytes per device per compiled
        call (see :func:`actgeo.ensemble.run_ensemble`); checked for every
        cell before any work starts.
      devices: how many of this process's devices to use (all by default).
      overwrite: replace an existing store instead of resuming it.
      progress: show a progress bar per cell.
      log: where to report each finished cell (a callable taking a line).

    Raises:
      ValueError: a store with different settings exists at ``out``, or
        ``out`` cannot be used.
      MemoryError: a cell cannot fit the memory budget.
      OSError: the store cannot be written (read-only, no space left); what
        was already written is kept.
    """
    log = log or (lambda _line: None)
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"out: {parent} is a file, so {out} cannot be a folder")
    store = out / "results.zarr"
    dtype = np.dtype(config.dtype)
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype: float64 needs 64-bit JAX; call "
            "jax.config.update('jax_enable_x64', True) first (the CLI does)"
        )
    per_member_bytes = 8 * config.depth * len(SCALARS)
    template_bytes = (
        len(config.activations)
        * len(config.datasets)
        * config.members
        * per_member_bytes
    )
    if template_bytes > _MAX_TEMPLATE_BYTES:
        raise ValueError(
            f"members: per-member results of {config.members} members need "
            f"{template_bytes / 2**30:.3g} GiB of host memory, above "
            f"{_MAX_TEMPLATE_BYTES / 2**30:.3g} GiB; use fewer members per sweep"
        )
    mesh = member_mesh(devices)
    stats_config = config.stats_config()
    inputs = {name: _inputs(config, name) for name in config.datasets}
    # Plan every cell first: a budget that one cell cannot meet fails before
    # any cell runs.
    block = {}
    for dataset in inputs:
        spec = config.spec(config.activations[0], dataset)
        chunk = plan_chunks(
            spec,
            config.inputs,
            config.probe,
            -(-config.members // mesh.devices.size),
            chunk_size=chunk_size,
            memory_budget=memory_budget,
            config=stats_config,
            dtype=dtype,
            device=mesh.devices.flat[0],
        ).chunk
        block[dataset] = chunk * mesh.devices.size
    n_processes, rank = jax.process_count(), jax.process_index()
    blocks = out / "blocks"

    def prepare():
        _check_writable(out, _store_bytes(config))
        done, created = _open_or_create(config, store, overwrite, mesh)
        if created:
            # Blocks left by a run whose store is gone belong to no store.
            shutil.rmtree(blocks, ignore_errors=True)
        return done

    done = _collective(
        prepare, (len(config.activations), len(config.datasets)), "opening the store"
    )
    _barrier("store ready")
    cells = [
        (i, j, activation, dataset)
        for i, activation in enumerate(config.activations)
        for j, dataset in enumerate(config.datasets)
    ]
    # Every process lists the saved blocks before any process adds one, so
    # all deal out the same missing work.
    saved = {
        (i, j): _saved_ranges(blocks / _cell_name(a, d))
        for i, j, a, d in cells
        if not done[i, j]
    }
    _barrier("blocks listed")
    # The theory is cheap (scalar recursions per input): predict every pending
    # cell first, so that a failure there stops the sweep before any cell runs.
    predicted = {
        (i, j): predict_cell(
            config.spec(activation, dataset),
            inputs[dataset].x[: config.inputs],
            inputs[dataset].x,
        )
        for i, j, activation, dataset in cells
        if not done[i, j]
    }
    for number, (i, j, activation, dataset) in enumerate(cells):
        folder = blocks / _cell_name(activation, dataset)
        owner = number % n_processes == rank
        if done[i, j]:
            if owner:
                shutil.rmtree(folder, ignore_errors=True)
            log(f"{activation:>10} / {dataset:<7} already done, skipped")
            continue
        inp = inputs[dataset]
        spec = config.spec(activation, dataset)
        missing = _missing_ranges(saved[i, j], config.members, block[dataset])
        mine = missing[rank::n_processes]
        bar = tqdm(
            total=sum(stop - start for start, stop in mine),
            unit="member",
            desc=f"{activation}/{dataset}",
            disable=not progress,
            leave=False,
        )
        with bar:
            for start, stop in mine:
                result = run_ensemble(
                    spec,
                    inp.x[: config.inputs],
                    members=np.arange(start, stop),
                    key=cell_key(config.seed, activation, dataset),
                    probe_x=inp.x,
                    probe_target=inp.target,
                    config=stats_config,
                    chunk_size=chunk_size,
                    memory_budget=memory_budget,
                    compile_for=config.activations,
                    dtype=dtype,
                    devices=mesh.devices.size,
                )
                _writing(folder, _save_block, result, folder, start, stop)
                bar.update(stop - start)
        _barrier(f"cell {i} {j} computed")
        if owner:
            result = _combine_blocks(folder, config.members, stats_config)
            region = {"activation": slice(i, i + 1), "dataset": slice(j, j + 1)}
            cell = _cell_dataset(config, result, spec.sigma_w, predicted[i, j])
            mark = xr.Dataset({"done": (("activation", "dataset"), np.array([[True]]))})
            for part in (cell, mark):
                _writing(store, part.to_zarr, store, region=region, consolidated=False)
            shutil.rmtree(folder, ignore_errors=True)
            log(f"{activation:>10} / {dataset:<7} done (sigma_w = {spec.sigma_w:.4g})")
    _barrier("sweep done")
    if rank == 0 and blocks.is_dir() and not any(blocks.iterdir()):
        blocks.rmdir()
    return xr.open_zarr(store, consolidated=False)


def _cell_name(activation: str, dataset: str) -> str:
    return f"{activation}.{dataset}"


def _block_path(folder: pathlib.Path, start: int, stop: int) -> pathlib.Path:
    return folder / f"members-{start:010d}-{stop:010d}.npz"


def _save_block(result: EnsembleResult, folder: pathlib.Path, start, stop) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result.save(_block_path(folder, start, stop))


def _saved_ranges(folder: pathlib.Path) -> list[tuple[int, int]]:
    """Member ranges ``[start, stop)`` of the blocks saved in ``folder``.

    Only whole blocks count: a block is written beside its final name and
    renamed, so a run killed while saving leaves a temporary file, ignored.
    """
    if not folder.is_dir():
        return []
    ranges = []
    for path in folder.glob("members-*-*.npz"):
        _, start, stop = path.stem.split("-")
        ranges.append((int(start), int(stop)))
    return sorted(ranges)


def _missing_ranges(
    saved: list[tuple[int, int]], members: int, block: int
) -> list[tuple[int, int]]:
    """The members ``0..members-1`` no saved range covers, in blocks of ``block``.

    Saved ranges may come from a run with another block size; a gap between
    them is cut into blocks starting at the gap.
    """
    missing, position = [], 0
    for start, stop in [*saved, (members, members)]:
        for first in range(position, start, block):
            missing.append((first, min(first + block, start)))
        position = max(position, stop)
    return missing


def _combine_blocks(
    folder: pathlib.Path, members: int, config: StatsConfig
) -> EnsembleResult:
    """The cell's result from its saved blocks, which must cover every member."""
    paths = sorted(folder.glob("members-*-*.npz"))
    parts = []
    for path in paths:
        try:
            parts.append(EnsembleResult.load(path, config))
        except Exception as err:
            raise RuntimeError(
                f"{path}: an unreadable block of saved members ({err}); delete it "
                "and rerun the same command to compute those members again"
            ) from err
    result = EnsembleResult.concatenate(parts)
    if not np.array_equal(result.members, np.arange(members)):
        raise RuntimeError(
            f"{folder}: saved blocks cover members {_describe(result.members)}, not "
            f"0..{members - 1}; rerun the same command to compute what is missing"
        )
    return result


def _describe(members: np.ndarray) -> str:
    return f"{members.size} of them, {members.min()}..{members.max()}"


def _store_bytes(config: SweepConfig) -> int:
    """An upper bound of the finished store's size on disk (uncompressed)."""
    a, s = len(config.activations), len(config.datasets)
    e, l = config.members, config.depth
    per_cell = (
        8
        * l
        * (
            e * len(SCALARS)
            + len(DISTANCES) * (config.stats_config().bins.count + 6 + len(QUANTILES))
            + len(THEORY)
        )
    )
    return a * s * per_cell


def _check_writable(out: pathlib.Path, needed: int) -> None:
    """Refuses, before any work, a folder that cannot be written or is too full."""
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".actgeo-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OSError(
            err.errno,
            f"out: cannot write to {out} ({err.strerror or err}); choose a writable "
            "--out",
        ) from err
    free = shutil.disk_usage(out).free
    if free < needed:
        if made:
            out.rmdir()
        raise OSError(
            errno.ENOSPC,
            f"out: {out} has {free / 2**20:.3g} MiB free, but the store may need "
            f"up to {needed / 2**20:.3g} MiB; free some space or choose another --out",
        )


def _writing(target: pathlib.Path, write: Callable, *args, **kwargs) -> None:
    """Calls ``write(*args, **kwargs)``; a file-system failure names ``target``.

    The error says that what was written before is kept and that the same
    command resumes.
    """
    try:
        write(*args, **kwargs)
    except OSError as err:
        reason = err.strerror or str(err)
        raise OSError(
            err.errno,
            f"out: writing {target} failed ({reason}); results written before are "
            "kept, and the same command resumes once the problem is fixed",
        ) from err


def _collective(
    step: Callable[[], np.ndarray], shape: tuple[int, ...], what: str
) -> np.ndarray:
    """Runs ``step`` on process 0 and hands its boolean array to every process.

    A failure on process 0 is raised there and, as a short error, on every
    other process, instead of leaving them waiting.
    """
    if jax.process_count() == 1:
        return step()
    from jax.experimental import multihost_utils

    failure, value = None, np.zeros(shape, bool)
    if jax.process_index() == 0:
        try:
            value = np.asarray(step(), bool)
        except Exception as err:  # raised below, once the others know
            failure = err
    ok = multihost_utils.broadcast_one_to_all(np.array(failure is None))
    if failure is not None:
        raise failure
    if not ok:
        raise RuntimeError(f"{what} failed on process 0; see its error")
    return np.asarray(multihost_utils.broadcast_one_to_all(value), bool)


def _barrier(name: str) -> None:
    """Waits for every process (nothing to wait for with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
