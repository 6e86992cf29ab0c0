"""Hanin & Rolnick 2019: linear regions of relu networks during training.

Hanin and Rolnick, "Complexity of linear regions in deep networks" (ICML
2019), the figures over training: while a relu network learns (MNIST in the
paper, scikit-learn's digits here), the number of linear regions a line
through the data crosses, per unit length and per neuron, stays close to its
value at initialisation, and so does the distance from a data point to the
nearest region boundary times the number of neurons; training does not
produce the exponentially many regions that depth allows.

Setup: ``E`` relu MLPs (He initialisation, ``sigma_w = sqrt(2)``, standard
deviation, ``sigma_b = 0`` by default; width 32, depth 3, a readout of 10
classes) trained together with Adam on a stratified split of digits
(:func:`actgeo.data.digits_split`, ``|x|^2 / D = 1`` on average). At chosen
steps :func:`actgeo.models.geometry_hook` measures every member at fixed
test points:

(a) activation-pattern changes along segments between pairs of test points,
    counted exactly (:func:`actgeo.kernels.walk_segment`), per unit length
    and per neuron, per layer; their mean over layers is ``changes / (length
    L N)``, the paper's normalisation;
(b) the median over test points of the distance to the nearest region
    boundary (the minimum of ``|z_i| / |J_i|`` over all ``L N`` neurons,
    exact for relu), times ``L N``;
(c) the test accuracy, and the log10 median Frobenius norm of the
    Jacobian of the logits, beside the median distance to a neuron's
    boundary and the retention of the first layer's signed distances.

Run ``python experiments/hanin2019_training.py --quick`` (4 members, 1000
steps, about 40 s on a 2-core CPU) or without ``--quick`` (16 members,
10 000 steps, 256 points, 32 segments: about 45 s on the same CPU).
"""

from __future__ import annotations

import dataclasses
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
from flax import nnx
from matplotlib.figure import Figure

import actgeo
from actgeo.data import digits_split
from actgeo.models import ensemble, geometry_hook
from actgeo.training import Hook, make_optimizer, train

NAME = "hanin2019_training"
ACTIVATION = "relu"
SIGMA_W = math.sqrt(2.0)
CLASSES = 10

_QUICK = dict(
    members=4,
    steps=1000,
    measure_at=(0, 10, 30, 100, 300, 1000),
    points=64,
    lines=8,
)
_FULL = dict(
    members=16,
    steps=10_000,
    measure_at=(0, 10, 30, 100, 300, 1000, 3000, 10_000),
    points=256,
    lines=32,
)


@dataclasses.dataclass
class Args:
    """Reproduce Hanin & Rolnick 2019 during training (relu, digits, Adam)."""

    out: pathlib.Path = _common.RESULTS / NAME
    """Folder for the PNG, the numbers (.zarr) and the table."""
    quick: bool = False
    """Small sizes for a CPU (4 members, 1000 steps, 64 points, 8 segments)."""
    width: int = 32
    """Hidden width N."""
    depth: int = 3
    """Hidden layers L."""
    members: int | None = None
    """Networks trained together (when omitted: 16, or 4 with --quick)."""
    steps: int | None = None
    """Adam steps (when omitted: 10 000, or 1000 with --quick)."""
    measure_at: tuple[int, ...] | None = None
    """Steps at which the geometry is measured (roughly log-spaced)."""
    points: int | None = None
    """Test points measured (256, or 64 with --quick)."""
    lines: int | None = None
    """Segments between pairs of test points (32, or 8 with --quick)."""
    learning_rate: float = 1e-3
    """Adam's learning rate."""
    batch_size: int = 32
    """Minibatch size."""
    sigma_b: float = 0.0
    """Bias standard deviation at initialisation."""
    seed: int = 0
    """Root seed (weights, minibatch order, points and segments)."""
    progress: bool = True
    """Print the steps as they are measured."""


def _resolve(args: Args) -> dict:
    sizes = _common.preset_sizes(args, _QUICK, _FULL)
    sizes["measure_at"] = tuple(
        sorted({int(s) for s in sizes["measure_at"] if s <= sizes["steps"]})
    )
    return sizes


def _accuracy_hook(steps, data, progress: bool) -> Hook:
    """Test accuracy of every member at the geometry's steps."""
    x = jnp.asarray(data.x_test)
    y = jnp.asarray(data.y_test)

    def fn(graphdef, state, step):
        def one(member_state):
            logits = nnx.merge(graphdef, member_state)(x)
            return jnp.mean(jnp.argmax(logits, axis=-1) == y)

        accuracy = jax.vmap(one)(state)
        if progress:
            print(f"step {step}: test accuracy {np.asarray(accuracy).round(3)}")
        return {"test_accuracy_at": accuracy}

    return Hook(steps, fn, dims={"test_accuracy_at": ("member",)})


def run(args: Args) -> xr.Dataset:
    sizes = _resolve(args)
    data = digits_split(seed=args.seed)
    dim = data.x_train.shape[1]
    spec = actgeo.NetworkSpec(
        input_dim=dim,
        width=args.width,
        depth=args.depth,
        activation=ACTIVATION,
        sigma_w=SIGMA_W,
        sigma_b=args.sigma_b,
        readout=CLASSES,
    )
    root = jax.random.key(args.seed)
    graphdef, state = ensemble(spec, sizes["members"], jax.random.fold_in(root, 0))
    steps = sizes["measure_at"]
    geometry = geometry_hook(
        steps,
        data,
        points=sizes["points"],
        lines=sizes["lines"],
        key=jax.random.fold_in(root, 2),
    )
    result = train(
        graphdef,
        state,
        data,
        optimizer=make_optimizer("adam", args.learning_rate),
        key=jax.random.fold_in(root, 1),
        batch_size=args.batch_size,
        steps=sizes["steps"],
        eval_every=max(1, sizes["steps"] // 10),
        hooks=[geometry, _accuracy_hook(steps, data, args.progress)],
    )
    history = result.history
    neurons = args.depth * args.width
    keep = [
        "log10_delta_in",
        "log10_region_distance",
        "changes_per_length",
        "retention_first",
        "log10_output_jacobian",
        "test_accuracy_at",
    ]
    ds = history[keep].drop_vars(["layer", "layer_name"], errors="ignore")
    ds = ds.rename({"hook_step": "measure_step"})
    ds = ds.assign(
        train_loss=history["train_loss"],
        test_loss=history["test_loss"],
        test_accuracy=history["test_accuracy"],
        changes_per_length_network=ds["changes_per_length"].mean("hidden_layer"),
        region_distance_x_neurons=(10.0 ** ds["log10_region_distance"][..., -1])
        * neurons,
    )
    ds = ds.drop_vars(["layer", "layer_name"], errors="ignore")
    ds = ds.assign_coords(hidden_layer=np.arange(1, args.depth + 1))
    ds.attrs = dict(
        figure="Hanin & Rolnick 2019, linear regions during training",
        activation=ACTIVATION,
        sigma_w=SIGMA_W,
        sigma_b=args.sigma_b,
        sigma_convention="standard deviations",
        width=args.width,
        depth=args.depth,
        neurons=neurons,
        members=sizes["members"],
        steps=sizes["steps"],
        optimizer="adam",
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        points=sizes["points"],
        lines=sizes["lines"],
        input_dim=dim,
        data=data.description,
        seed=args.seed,
        changes="exact walk (actgeo.kernels.walk_segment), counts / (length N)",
        region_distance="median over test points of the distance to the nearest "
        "region boundary (all L N neurons)",
        retention_probe_ridge=0.1,
        errors="standard error of the mean over members",
    )
    return ds


def _x(ds: xr.Dataset) -> np.ndarray:
    """Steps on a log axis: step 0 drawn at 1."""
    return np.maximum(np.asarray(ds["measure_step"]), 1)


def _band(ax, x, values, label, color=None, fmt="o-"):
    mean, se = _common.mean_and_error(np.asarray(values), axis=1)
    ax.errorbar(x, mean, se, fmt=fmt, ms=4, color=color, label=label)


def plot(ds: xr.Dataset, path: pathlib.Path) -> None:
    fig = Figure(figsize=(16, 4.5), layout="constrained")
    ax_a, ax_b, ax_c, ax_d = fig.subplots(1, 4)
    x = _x(ds)
    depth = ds.sizes["hidden_layer"]
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.85, depth))
    for l in range(depth):
        _band(
            ax_a,
            x,
            ds["changes_per_length"][:, :, l],
            f"layer {l + 1}",
            colors[l],
            "o--",
        )
    _band(ax_a, x, ds["changes_per_length_network"], "all layers", "k")
    ax_a.set(xscale="log", xlabel="step (0 at 1)", ylabel="changes / (length N)")
    ax_a.set_ylim(0, None)
    ax_a.set_title("(a) pattern changes per unit length per neuron", fontsize=10)
    ax_a.legend(fontsize=8)

    _band(ax_b, x, ds["region_distance_x_neurons"], "median over points")
    ax_b.set(xscale="log", xlabel="step (0 at 1)", ylabel="distance x L N")
    ax_b.set_ylim(0, None)
    ax_b.set_title("(b) distance to the nearest boundary x neurons", fontsize=10)

    _band(ax_c, x, ds["test_accuracy_at"], "test accuracy", "C2")
    ax_c.set(xscale="log", xlabel="step (0 at 1)", ylabel="test accuracy")
    ax_c.set_ylim(0, 1)
    ax_c2 = ax_c.twinx()
    _band(ax_c2, x, ds["log10_output_jacobian"], "log10 |df/dx|", "C3", "s--")
    ax_c2.set_ylabel("log10 median |d logits / dx|_F")
    ax_c.set_title("(c) accuracy and output Jacobian", fontsize=10)
    handles = ax_c.get_legend_handles_labels()
    more = ax_c2.get_legend_handles_labels()
    ax_c.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8)

    for l in range(depth):
        _band(ax_d, x, ds["log10_delta_in"][:, :, l], f"layer {l + 1}", colors[l])
    ax_d.set(xscale="log", xlabel="step (0 at 1)", ylabel="log10 median delta_in")
    ax_d2 = ax_d.twinx()
    _band(ax_d2, x, ds["retention_first"][:, :, -1], "retention (last)", "C1", "s:")
    ax_d2.set(ylabel="retention R^2 of layer-1 distances, layer L", ylim=(None, 1))
    ax_d.set_title("(d) neuron distances; retention at layer L", fontsize=10)
    handles = ax_d.get_legend_handles_labels()
    more = ax_d2.get_legend_handles_labels()
    ax_d.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8)

    a = ds.attrs
    fig.suptitle(
        f"Hanin & Rolnick 2019 during training: relu, He init, N={a['width']}, "
        f"L={a['depth']}, {a['members']} networks, Adam lr={a['learning_rate']:g}, "
        "digits"
    )
    fig.savefig(path, dpi=120)


def summary(ds: xr.Dataset) -> str:
    rows = []
    for k, step in enumerate(np.asarray(ds["measure_step"])):
        row = [int(step)]
        for name in (
            "test_accuracy_at",
            "changes_per_length_network",
            "region_distance_x_neurons",
        ):
            m, se = _common.mean_and_error(np.asarray(ds[name][k]))
            row += [float(m), float(se)]
        row.append(float(ds["log10_output_jacobian"][k].mean()))
        row.append(float(ds["retention_first"][k, :, -1].mean()))
        rows.append(row)
    text = _common.table(
        [
            "step",
            "test acc",
            "s.e.",
            "chg/(len LN)",
            "s.e.",
            "dist x LN",
            "s.e.",
            "log10|df/dx|",
            "retention L",
        ],
        rows,
    )
    a = ds.attrs
    first = ds["changes_per_length_network"][0].mean()
    last = ds["changes_per_length_network"][-1].mean()
    d_first = ds["region_distance_x_neurons"][0].mean()
    d_last = ds["region_distance_x_neurons"][-1].mean()
    return (
        f"Hanin & Rolnick 2019 during training: relu He init, sigma_b = "
        f"{a['sigma_b']:g}, width {a['width']}, depth {a['depth']}, "
        f"{a['members']} members, Adam lr {a['learning_rate']:g}, batch "
        f"{a['batch_size']}, {a['steps']} steps on digits; {a['points']} test "
        f"points, {a['lines']} segments\n"
        "chg/(len LN): exact pattern changes per unit length / neurons; dist x "
        "LN: median distance to the nearest region boundary x neurons; "
        "log10|df/dx|: log10 median Frobenius norm of the logits' Jacobian; "
        "retention L: held-out R^2 of layer-1 signed distances from layer L\n"
        f"{text}\n\n"
        f"last / first measurement: changes {float(last / first):.3g}, "
        f"distance x LN {float(d_last / d_first):.3g}"
    )


def main(args: Args) -> xr.Dataset:
    start = time.perf_counter()
    ds = run(args)
    _common.write_outputs(ds, args.out, NAME, plot, summary, start)
    return ds


if __name__ == "__main__":
    main(tyro.cli(Args))
