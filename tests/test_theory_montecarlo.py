"""Monte-Carlo checks of every per-layer prediction of :mod:`actgeo.theory`.

Ensembles of random MLPs (width ``N = 512``, ``D = 64``, float32) are measured
with :mod:`actgeo.kernels` and compared, layer by layer, with
:func:`actgeo.theory.predict` (float64): ``q``, the correlation of a pair,
``log10 |J|_F``, ``chi_1``, the medians of ``delta_in`` and ``delta_rep``, the
length of the image of a great circle of radius ``sqrt(D q_in)`` and the zero
crossings per unit arc length along it (Kac-Rice). The circle is sampled at
``S`` points with :func:`actgeo.kernels.preactivations`; segment lengths are
summed and sign changes counted per neuron. ``chi_1`` is measured as the ratio
of successive ``|J t|^2`` along the circle's tangent ``t``.
:func:`actgeo.theory.predict_statistics` is checked against
:func:`actgeo.ensemble.run_ensemble` for inputs of different lengths.

Measurements run in float32: rounding (``1e-7`` relative) is far below every
tolerance here, and nothing at depth 6 nears the float32 range.

Every comparison passes when

    |measured - predicted| <= Z * SE + finite width + finite D + sampling

* ``SE``: standard error of the ensemble mean, the standard deviation over
  members divided by ``sqrt(E)``. ``Z = 4.5``: with ``SE`` estimated from 32
  members (Student's t, 31 degrees of freedom) one comparison exceeds
  ``Z * SE`` by chance with probability ``9e-5``, and the allowances below
  add margin on top, so the 250 comparisons of a run rarely fail by chance.
* Finite width: the theory ignores fluctuations at finite ``N``, which bias
  the ensemble means by ``O(1/N)`` per layer, accumulating with depth. The
  allowance at layer ``l`` is ``C l / N`` (relative, or in nats for ``log10``
  quantities, absolute for the correlation), with ``C`` per quantity in
  :data:`FINITE_WIDTH`: about 1.5 times the largest ``|bias| N / l`` measured
  at ``N = 64`` and ``N = 128`` with 768 to 1024 members (``D = 16``), where
  the bias stands well above the noise, over the four cases below.
* Finite ``D``: the theory treats the radial direction of ``J_i`` (along
  ``x``) like the others. The ratio ``rho_l = |J^l x^|^2 / |J^l t|^2``
  (``t`` orthogonal to ``x``) is measured; the radial direction then
  changes ``|J|_F^2`` by the factor ``(D - 1 + rho_l) / D``, which is the
  allowance of ``log10 |J|_F`` and of ``delta_in``. ``rho`` is 1 for relu
  (``J x = z``), 0.04 to 0.19 for tanh, and grows to 3.9 at layer 6 for
  silu. ``delta_in`` also carries the correlation of ``z_i`` with the radial
  component of ``J_i``: ``0.5 log10(1 + 1/D)`` (at layer 1 of a relu net the
  exact shift of the median is 0.0018 decades for ``D = 64``).
* Sampling of the circle: segment sums are Richardson-extrapolated from ``S``
  and ``S/2`` points (chords fall short of arcs by ``O(1/S^2)``); crossings
  missed between samples are allowed for by ``|n(S) - n(S/2)|``.

Histogram medians are interpolated inside bins of 0.0117 decades; for smooth
densities the interpolation error is below ``1e-4`` decades.

The default run measures 32 members (about 20 s); ``--runslow`` adds 256
members with ``S = 1024`` (about 2 minutes on two cores).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from actgeo.activations import get_activation, switched
from actgeo.ensemble import run_ensemble
from actgeo.kernels import Bins, histogram, layer_statistics, preactivations
from actgeo.networks import MLPParams, NetworkSpec, sample
from actgeo.theory import LayerPrediction, predict, predict_statistics

D, N, L = 64, 512, 6
Q_IN, C_IN = 1.0, 0.5
N_PAIRS = 4
Z = 4.5
BINS = Bins()
LOG10_E = math.log10(math.e)

# C of the finite-width allowance C * l / N, per quantity. Largest measured
# |bias| * N / l (N = 64, 128): q 1.8 (silu), correlation 0.32 (silu, absolute),
# log10 |J|_F past the radial share 0.6 nats (tanh 2.5), tangent |J t|^2 1.8
# (silu), chi_1 0.9 (silu), delta_in past the radial share 1.3 nats (tanh 2.5:
# the eigenvalues of J^T J spread, so |J_i|^2 has fewer effective degrees of
# freedom than D), delta_rep 2.6 nats (silu: q^l(x) varies across inputs of
# equal length, and a median of logs sits Var(ln q) / 4 below the log of the
# mean), trajectory length 0.85 (tanh 2.5), zero crossings 0.75 (tanh 2.5).
# For silu the biases grow faster than l past layer 6 (q +13% and |J t|^2
# +23% at layer 10 of N = 512): keep depth at 6.
FINITE_WIDTH = {
    "q": 3.0,
    "correlation": 0.5,
    "log10_jacobian_norm": 1.0,
    "tangent_jacobian": 3.0,
    "chi_1": 1.5,
    "delta_in": 2.0,
    "delta_rep": 4.0,
    "trajectory_length": 1.5,
    "zero_crossings": 1.5,
}

# (activation, sigma_w, sigma_b); silu has no closed-form kernel (quadrature).
CASES = (
    ("tanh", 1.3, 0.3),
    ("tanh", 2.5, 0.3),
    ("relu", math.sqrt(2.0), 0.0),
    ("silu", math.sqrt(2.0), 0.0),
)
ACTIVATIONS = tuple(sorted({a for a, _, _ in CASES}))


def _unit_frame(rng, d):
    """Two orthonormal vectors of ``R^d``."""
    g = rng.normal(size=(2, d))
    u = g[0] / np.linalg.norm(g[0])
    v = g[1] - (g[1] @ u) * u
    return u, v / np.linalg.norm(v)


def _pairs(rng, d, q, cosines):
    """Pairs ``(a_k, b_k)`` with ``|.|^2 / d = q[k]`` and cosines ``cosines[k]``.

    ``q`` is ``(K, 2)``; returns ``(2K, d)``, rows ``a_0, b_0, a_1, ...``.
    """
    rows = []
    for (qa, qb), c in zip(q, cosines, strict=True):
        u, v = _unit_frame(rng, d)
        rows.append(math.sqrt(d * qa) * u)
        rows.append(math.sqrt(d * qb) * (c * u + math.sqrt(1.0 - c * c) * v))
    return np.asarray(rows)


def _tangents(rng, x):
    """A unit vector orthogonal to each row of ``x``, and the unit radials."""
    radial = x / np.linalg.norm(x, axis=1, keepdims=True)
    t = rng.normal(size=x.shape)
    t = t - np.sum(t * radial, axis=1, keepdims=True) * radial
    return t / np.linalg.norm(t, axis=1, keepdims=True), radial


def _circle(u, v, radius, s):
    theta = 2.0 * np.pi * np.arange(s) / s
    return radius * (np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * v)


def _radial_tangential(params, x, radial, tangent, activation):
    """``|J^l x^_b|^2`` and ``|J^l t_b|^2`` for each input: ``(L, B)`` each."""

    def f(inputs):
        return preactivations(params, inputs, activation)

    _, j_rad = jax.jvp(f, (x,), (radial,))
    _, j_tan = jax.jvp(f, (x,), (tangent,))
    return jnp.sum(j_rad * j_rad, axis=-1), jnp.sum(j_tan * j_tan, axis=-1)


def _circle_measures(z, arc):
    """Per-layer measures of a closed path sampled at ``S`` points, ``z (L, S, N)``.

    Returns the path length and the mean of ``|dz / ds|^2`` (chords over
    arcs), both Richardson-extrapolated from ``S`` and ``S/2`` points, and the
    sign changes per neuron at ``S`` and at ``S/2`` points. ``arc`` is the
    arc length between successive points.
    """

    def segments(path, h):
        dz = jnp.roll(path, -1, axis=1) - path
        sq = jnp.sum(dz * dz, axis=-1)
        pos = path > 0
        changes = jnp.sum(pos != jnp.roll(pos, -1, axis=1), axis=(1, 2))
        return (
            jnp.sum(jnp.sqrt(sq), axis=-1),
            jnp.mean(sq, axis=-1) / (h * h),
            changes / path.shape[-1],
        )

    length, speed, cross = segments(z, arc)
    length_2, speed_2, cross_2 = segments(z[:, ::2], 2.0 * arc)
    return (
        length + (length - length_2) / 3.0,
        speed + (speed - speed_2) / 3.0,
        cross,
        cross_2,
    )


@functools.partial(jax.jit, static_argnames=("arc",))
def _measure(params, x, radial, tangent, circle, choice, *, arc):
    """Everything measured on each member of ``params`` (leading axis ``E``).

    The activation is ``ACTIVATIONS[choice]``, chosen at run time: one
    compiled program serves every case.
    """
    activation = switched(ACTIVATIONS, choice)

    def one(p):
        stats = layer_statistics(p, x, activation)
        rad, tan = _radial_tangential(p, x, radial, tangent, activation)
        z = preactivations(p, circle, activation)
        length, speed, cross, cross_2 = _circle_measures(z, arc)
        return dict(
            q=stats.q,
            correlation=stats.correlation,
            log10_jacobian_norm=stats.log10_jacobian_norm,
            delta_in=stats.delta_in.counts,
            delta_rep=stats.delta_rep.counts,
            radial=rad,
            tangential=tan,
            length=length,
            speed=speed,
            crossings=cross,
            crossings_half=cross_2,
        )

    return jax.lax.map(one, params)


def _mean_se(values):
    """Mean over members (axis 0) and its standard error."""
    values = np.asarray(values, np.float64)
    return values.mean(0), values.std(0, ddof=1) / math.sqrt(values.shape[0])


def _medians(counts):
    """Pooled log10 medians of ``(E, L, bins)`` counts, and their standard errors.

    The errors are those of the mean of the per-member medians.
    """
    counts = np.asarray(counts)
    per_member = histogram.quantiles(counts, BINS, [0.5])[..., 0]
    pooled = histogram.quantiles(counts.sum(0), BINS, [0.5])[..., 0]
    return pooled, per_member.std(0, ddof=1) / math.sqrt(counts.shape[0])


def _radial_share(rho, d):
    """``|0.5 log10((d - 1 + rho) / d)|``: the radial direction's effect, decades."""
    return np.abs(0.5 * np.log10((d - 1.0 + rho) / d))


def _layers(n):
    return np.arange(1, n + 1, dtype=np.float64)


class _Checks:
    """Collects every comparison, so that one failure message shows them all."""

    def __init__(self, label):
        self.label = label
        self.rows = []

    def add(self, name, predicted, measured, se, allowance):
        predicted, measured = np.asarray(predicted), np.asarray(measured)
        tol = Z * np.asarray(se) + np.asarray(allowance)
        bad = ~(np.abs(measured - predicted) <= tol)
        self.rows.append((name, predicted, measured, tol, bad))

    def relative(self, name, predicted, measured, se, allowance):
        """Compares ``measured / predicted`` with 1 (allowance relative)."""
        predicted = np.asarray(predicted)
        self.add(
            name,
            np.ones_like(predicted),
            np.asarray(measured) / predicted,
            np.asarray(se) / predicted,
            allowance,
        )

    def table(self):
        lines = [f"{self.label}: layer, predicted, measured, |diff| / tolerance"]
        for name, predicted, measured, tol, bad in self.rows:
            for l in range(predicted.shape[0]):
                flag = "  <-- FAIL" if bad[l] else ""
                ratio = abs(measured[l] - predicted[l]) / tol[l]
                lines.append(
                    f"  {name:24s} {l + 1:2d} {predicted[l]:11.5g} "
                    f"{measured[l]:11.5g} {ratio:6.2f}{flag}"
                )
        return "\n".join(lines)

    def failed(self) -> bool:
        return any(bad.any() for *_, bad in self.rows)

    def assert_all(self):
        if self.failed():
            raise AssertionError("theory and ensemble disagree:\n" + self.table())


def _predict64(*args, **kwargs) -> LayerPrediction:
    with jax.enable_x64(True):
        return LayerPrediction(*(np.asarray(a) for a in predict(*args, **kwargs)))


def _scaled(base: MLPParams, sigma_w: float, sigma_b: float) -> MLPParams:
    # sample() draws standard normals and scales weights by sigma_w / sqrt(fan_in)
    # and biases by sigma_b: one draw at unit scales serves every case.
    return MLPParams(
        base.w_in * sigma_w, base.b_in * sigma_b, base.w * sigma_w, base.b * sigma_b
    )


KEY = 2026
CHUNK = 32


def _base_chunk(start: int, stop: int, depth: int) -> MLPParams:
    """Members ``start..stop-1`` at unit scales: ``sigma_w = sigma_b = 1``."""
    spec = NetworkSpec(D, N, depth, "linear", 1.0, 1.0)
    return sample(spec, np.arange(start, stop), key=jax.random.key(KEY))


@pytest.fixture(scope="module")
def base_ensemble():
    """The default 32 members at unit scales, shared by the cases (680 MB)."""
    return _base_chunk(0, CHUNK, L)


@functools.cache
def _geometry():
    """Pairs of inputs, a tangent and a radial per input, the circle's plane."""
    rng = np.random.default_rng(0)
    q = np.full((N_PAIRS, 2), Q_IN)
    x = _pairs(rng, D, q, [C_IN] * N_PAIRS)
    tangent, radial = _tangents(rng, x)
    u, v = _unit_frame(rng, D)
    return x, tangent, radial, (u, v)


def _measure_case(base: MLPParams, case, s: int) -> dict[str, np.ndarray]:
    """Per-member measurements of one case on a chunk of the unit-scale draw."""
    activation, sigma_w, sigma_b = case
    params = _scaled(base, sigma_w, sigma_b)
    x, tangent, radial, (u, v) = _geometry()
    radius = math.sqrt(D * Q_IN)
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    out = _measure(
        params,
        f32(x),
        f32(radial),
        f32(tangent),
        f32(_circle(u, v, radius, s)),
        jnp.asarray(ACTIVATIONS.index(activation), jnp.int32),
        arc=2.0 * math.pi * radius / s,
    )
    return jax.device_get(out)


def _check_scaling(case, depth):
    # The scaled draw is the ensemble sample() makes for this spec.
    activation, sigma_w, sigma_b = case
    spec = NetworkSpec(D, N, depth, activation, sigma_w, sigma_b)
    want = sample(spec, np.arange(2), key=jax.random.key(KEY))
    got = _scaled(_base_chunk(0, 2, depth), sigma_w, sigma_b)
    for field in ("w_in", "b_in", "w", "b"):
        np.testing.assert_allclose(
            getattr(got, field),
            getattr(want, field),
            rtol=1e-6,
            atol=1e-7,
            err_msg=field,
        )


def _compare_case(case, out: dict[str, np.ndarray], depth: int) -> _Checks:
    """Every per-layer prediction of ``predict`` against the measurements."""
    activation, sigma_w, sigma_b = case
    pred = _predict64(
        activation, sigma_w, sigma_b, depth, width=N, input_dim=D, q_in=Q_IN, c_in=C_IN
    )
    circumference = 2.0 * math.pi * math.sqrt(D * Q_IN)
    width = _layers(depth) / N  # l / N
    fw = {k: c * width for k, c in FINITE_WIDTH.items()}
    checks = _Checks(f"{activation} sigma_w={sigma_w:.4g} sigma_b={sigma_b}")

    q, q_se = _mean_se(out["q"])
    checks.relative("q", pred.q, q, q_se, fw["q"])
    c, c_se = _mean_se(out["correlation"])
    checks.add("correlation", pred.correlation, c, c_se, fw["correlation"])

    # The theory's a_l is |J t|^2 / N along directions t orthogonal to x; the
    # trajectory length of the great circle carries it.
    a_pred = (pred.trajectory_length / (2.0 * math.pi)) ** 2 / (D * Q_IN * N)
    # The radial column's variance over a_l, measured and predicted: the
    # prediction's own recursion for dz/d|x| must match to 15% (finite width
    # moves it by up to 10% at layer 6 for silu), and what remains of the
    # difference is the allowance of |J|_F and delta_in.
    rho = out["radial"].sum((0, 2)) / out["tangential"].sum((0, 2))
    rho_pred = 10.0 ** (2.0 * pred.log10_jacobian_norm) / (N * a_pred) - (D - 1.0)
    np.testing.assert_allclose(rho, rho_pred, rtol=0.15, err_msg="radial/tangential")
    radial = np.abs(0.5 * np.log10((D - 1.0 + rho) / (D - 1.0 + rho_pred)))
    log_j, log_j_se = _mean_se(out["log10_jacobian_norm"])
    checks.add(
        "log10 |J|_F",
        pred.log10_jacobian_norm,
        log_j,
        log_j_se,
        LOG10_E * fw["log10_jacobian_norm"] + radial,
    )

    a, a_se = _mean_se(out["speed"] / N)
    checks.relative("|J t|^2 / N", a_pred, a, a_se, fw["tangent_jacobian"])
    chi, chi_se = _mean_se(out["speed"][:, 1:] / out["speed"][:, :-1])
    checks.relative("chi_1", pred.chi_1[:-1], chi, chi_se, fw["chi_1"][:-1])

    d_in, d_in_se = _medians(out["delta_in"])
    checks.add(
        "log10 delta_in median",
        pred.log10_delta_in_median,
        d_in,
        d_in_se,
        LOG10_E * fw["delta_in"] + radial + 0.5 * math.log10(1.0 + 1.0 / D),
    )
    d_rep, d_rep_se = _medians(out["delta_rep"])
    rep_first = np.zeros(depth)
    rep_first[0] = 0.5 * math.log10(1.0 + 1.0 / D)  # layer 1 is delta_in
    checks.add(
        "log10 delta_rep median",
        pred.log10_delta_rep_median,
        d_rep,
        d_rep_se,
        LOG10_E * fw["delta_rep"] + 0.5 * math.log10(1.0 + 1.0 / N) + rep_first,
    )

    length, length_se = _mean_se(out["length"])
    checks.relative(
        "trajectory length",
        pred.trajectory_length,
        length,
        length_se,
        fw["trajectory_length"],
    )
    crossings = out["crossings"] / circumference
    cross, cross_se = _mean_se(crossings)
    missed = np.abs(out["crossings"] - out["crossings_half"]).mean(0) / circumference
    checks.relative(
        "zero crossings / length",
        pred.zero_crossings,
        cross,
        cross_se,
        fw["zero_crossings"] + missed / pred.zero_crossings + 1e-6,
    )
    return checks


@pytest.mark.parametrize("case", CASES, ids=[f"{a}-{w:.3g}-{b:g}" for a, w, b in CASES])
def test_layer_predictions_match_ensembles(case, base_ensemble):
    # 32 members, S = 512 points on the circle.
    _check_scaling(case, L)
    out = _measure_case(base_ensemble, case, 512)
    _compare_case(case, out, L).assert_all()


@pytest.mark.slow
def test_layer_predictions_match_large_ensembles():
    # 256 members and S = 1024: the standard errors shrink by about 3, so the
    # finite-width and finite-D allowances carry most of each tolerance.
    members, s = 256, 1024
    parts = {case: [] for case in CASES}
    for start in range(0, members, CHUNK):
        base = _base_chunk(start, start + CHUNK, L)
        for case in CASES:
            parts[case].append(_measure_case(base, case, s))
    failures = []
    for case, chunks in parts.items():
        out = jax.tree.map(lambda *a: np.concatenate(a), *chunks)
        checks = _compare_case(case, out, L)
        if checks.failed():
            failures.append(checks.table())
    assert not failures, "\n".join(failures)


def test_silu_is_quadrature_only():
    # The quadrature path of the theory is what the silu case exercises.
    assert get_activation("silu").kernel is None
    assert get_activation("relu").kernel is not None


def test_predict_statistics_matches_run_ensemble():
    _compare_statistics(members=24).assert_all()


def _compare_statistics(*, members):
    """``predict_statistics`` against ``run_ensemble``, tanh 1.3 / 0.3, D = 32.

    Inputs of different lengths, pooled as ``layer_statistics`` pools them:
    the distance medians are those of mixtures over inputs, ``q`` averages
    over the probe inputs and the correlation over pairs of unequal lengths.
    """
    d = 32
    spec = NetworkSpec(d, N, L, "tanh", 1.3, 0.3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, d))
    x *= np.sqrt(d * np.geomspace(0.25, 4.0, 8))[:, None] / np.linalg.norm(
        x, axis=1, keepdims=True
    )
    q_pairs = [(0.5, 2.0), (1.0, 1.0), (3.0, 0.3), (1.5, 0.8)]
    probe_x = _pairs(rng, d, q_pairs, [0.9, 0.5, 0.0, -0.4])
    key = jax.random.key(7)
    # One member per call: per-member histograms give the medians' errors.
    results = [
        run_ensemble(spec, x, members=[i], key=key, probe_x=probe_x)
        for i in range(members)
    ]
    with jax.enable_x64(True):
        pred = predict_statistics(spec, x, probe_x)
        pred = LayerPrediction(*(np.asarray(a) for a in pred))

    tangent, radial = _tangents(rng, x)
    params = sample(spec, 4, key=jax.random.key(8))
    measure = functools.partial(_radial_tangential, activation=spec.activation)
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    rad, tan = jax.jit(jax.vmap(measure, in_axes=(0, None, None, None)))(
        params, f32(x), f32(radial), f32(tangent)
    )
    # (E, L, B): the largest radial effect over inputs, per layer.
    rho = np.asarray(rad).sum(0) / np.asarray(tan).sum(0)
    radial_allowance = _radial_share(rho, d).max(1)

    def scalars(name):
        return _mean_se(np.concatenate([r.scalars[name] for r in results]))

    def medians(name):
        counts = np.stack([r.distances[name].counts for r in results])
        return _medians(counts)

    fw = {k: c * _layers(L) / N for k, c in FINITE_WIDTH.items()}
    checks = _Checks("predict_statistics vs run_ensemble, tanh 1.3 / 0.3")
    q, q_se = scalars("q")
    checks.relative("q", pred.q, q, q_se, fw["q"])
    c, c_se = scalars("correlation")
    checks.add("correlation", pred.correlation, c, c_se, fw["correlation"])
    log_j, log_j_se = scalars("log10_jacobian_norm")
    checks.add(
        "log10 |J|_F",
        pred.log10_jacobian_norm,
        log_j,
        log_j_se,
        LOG10_E * fw["log10_jacobian_norm"] + radial_allowance,
    )
    d_in, d_in_se = medians("delta_in")
    checks.add(
        "log10 delta_in median",
        pred.log10_delta_in_median,
        d_in,
        d_in_se,
        LOG10_E * fw["delta_in"] + radial_allowance + 0.5 * math.log10(1 + 1 / d),
    )
    d_rep, d_rep_se = medians("delta_rep")
    rep_first = np.zeros(L)
    rep_first[0] = 0.5 * math.log10(1.0 + 1.0 / d)
    checks.add(
        "log10 delta_rep median",
        pred.log10_delta_rep_median,
        d_rep,
        d_rep_se,
        LOG10_E * fw["delta_rep"] + 0.5 * math.log10(1.0 + 1.0 / N) + rep_first,
    )
    return checks
