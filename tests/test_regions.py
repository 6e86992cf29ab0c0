"""Exact linear-region walks and 2-D region counts against independent references.

References: dense sampling of activation patterns with the float64 NumPy
forward pass of ``_reference``, a hand-built network whose boundaries along a
line are known (two of them 1e-6 apart, and a neuron that crosses twice
within 1e-6), the arrangement of lines of a one-layer network counted in
closed form, and the Kac-Rice zero-crossing rate of :mod:`actgeo.theory` for
He-initialised relu networks on great circles.
"""

from __future__ import annotations

import itertools
import math
import warnings

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import actgeo
from actgeo.kernels.distances import neuron_distances
from actgeo.kernels.regions import (
    count_regions_2d,
    normalised_changes,
    walk_circle,
    walk_segment,
)
from actgeo.networks import MLPParams
from actgeo.theory.predictions import predict

# One shape for most tests, so the walks compile once per activation.
D, N, L = 4, 12, 3
SAMPLES = 100_001
PIECEWISE = ("relu", "leaky_relu", "hard_tanh")


def _params(seed=0, depth=L, width=N, sigma_w=1.5, sigma_b=0.3, readout=None):
    p = ref.random_params(seed, D, width, depth, sigma_w=sigma_w, sigma_b=sigma_b)
    w_out = b_out = None
    if readout:
        rng = np.random.default_rng(seed + 100)
        w_out = rng.normal(size=(readout, width)) / math.sqrt(width)
        b_out = rng.normal(size=readout) * 0.1
    jax_params = MLPParams(
        *(jnp.asarray(a, jnp.float32) for a in p),
        None if w_out is None else jnp.asarray(w_out, jnp.float32),
        None if b_out is None else jnp.asarray(b_out, jnp.float32),
    )
    # The reference runs on the float32 values the kernel sees.
    ref_params = ref.Params(*(np.asarray(a, np.float64) for a in jax_params[:4]))
    return jax_params, ref_params, w_out, b_out


def _points(seed, count, scale=2.0):
    rng = np.random.default_rng(seed)
    return [np.float32(rng.normal(size=D) * scale) for _ in range(count)]


def _assert_matches_sampling(walk, changes, t_grid):
    """Same changes per layer, and every crossing inside a sampled bracket."""
    np.testing.assert_array_equal(np.asarray(walk.counts), changes.sum(axis=(0, 2)))
    n = int(walk.count)
    times = np.asarray(walk.times)
    assert np.all(np.isnan(times[n:])) and np.all(np.diff(times[:n]) >= 0)
    step = t_grid[1] - t_grid[0]
    for t, layer, neuron in zip(
        times[:n], np.asarray(walk.layer)[:n], np.asarray(walk.neuron)[:n], strict=True
    ):
        k = int(np.floor((t - t_grid[0]) / step))
        # float32 walk against float64 samples: the neighbouring bracket too.
        near = changes[max(k - 1, 0) : k + 2, layer, neuron]
        assert near.any(), (t, layer, neuron)


@pytest.mark.parametrize("activation", PIECEWISE)
def test_segment_walk_matches_dense_sampling(activation):
    params, p64, _, _ = _params()
    a, b = _points(1, 2)
    walk = walk_segment(params, activation, a, b)
    t = np.linspace(0.0, 1.0, SAMPLES)
    x = a[None].astype(np.float64) + t[:, None] * (b - a)[None].astype(np.float64)
    changes = ref.pattern_changes(p64, x, activation)
    assert int(walk.count) >= 5 and not bool(walk.truncated)
    _assert_matches_sampling(walk, changes, t)
    gaps = np.asarray(walk.gaps)
    assert np.all(np.isnan(gaps[int(walk.count) + 1 :]))
    np.testing.assert_allclose(np.nansum(gaps), np.linalg.norm(b - a), rtol=1e-5)
    np.testing.assert_allclose(float(walk.length), np.linalg.norm(b - a), rtol=1e-6)


@pytest.mark.parametrize("activation", PIECEWISE)
def test_circle_walk_matches_dense_sampling(activation):
    params, p64, _, _ = _params()
    c, u, v = _points(2, 3)
    walk = walk_circle(params, activation, c, u, v)
    t = np.linspace(0.0, 2 * np.pi, SAMPLES)
    x = c[None] + np.cos(t)[:, None] * u[None] + np.sin(t)[:, None] * v[None]
    changes = ref.pattern_changes(p64, x, activation)
    assert int(walk.count) >= 20
    _assert_matches_sampling(walk, changes, t)
    # The pieces add up to the ellipse's perimeter (trapezoid reference).
    speed = np.linalg.norm(-np.sin(t)[:, None] * u + np.cos(t)[:, None] * v, axis=1)
    perimeter = np.trapezoid(speed, t)
    np.testing.assert_allclose(np.nansum(np.asarray(walk.gaps)), perimeter, rtol=1e-5)
    # A closed path: as many regions as crossings.
    assert np.sum(np.isfinite(np.asarray(walk.gaps))) == int(walk.count)


def test_residual_walk_matches_dense_sampling():
    params, p64, _, _ = _params(seed=3)
    a, b = _points(4, 2)
    walk = walk_segment(params, "relu", a, b, residual=0.5)
    t = np.linspace(0.0, 1.0, SAMPLES)
    x = a[None].astype(np.float64) + t[:, None] * (b - a)[None].astype(np.float64)
    _assert_matches_sampling(walk, ref.pattern_changes(p64, x, "relu", 0.5), t)


def _constructed():
    """A relu net on R^2 whose crossings along x0 in [0, 1] are known.

    Layer 1: x0 - 0.2, x0 - 0.4, 0.4 - x0 (two kinks at the same point),
    x0 - (0.4 + 1e-6). Layer 2: relu(n0) - 0.5 and relu(n0) - (0.5 + 1e-6)
    (kinks 1e-6 apart at t = 0.7), 5e-7 - relu(n1) - relu(n2) (positive only
    within 5e-7 of 0.4: two crossings 1e-6 apart) and 0.1 - relu(n3).
    """
    w_in = np.zeros((4, 2))
    w_in[:, 0] = [1.0, 1.0, -1.0, 1.0]
    b_in = np.array([-0.2, -0.4, 0.4, -0.4 - 1e-6])
    w = np.zeros((1, 4, 4))
    w[0, 0, 0] = w[0, 1, 0] = 1.0
    w[0, 2, 1] = w[0, 2, 2] = -1.0
    w[0, 3, 3] = -1.0
    b = np.array([[-0.5, -0.5 - 1e-6, 5e-7, 0.1]])
    expected = [
        (0.2, 0, 0),
        (0.4 - 5e-7, 1, 2),
        (0.4, 0, 1),
        (0.4, 0, 2),
        (0.4 + 5e-7, 1, 2),
        (0.4 + 1e-6, 0, 3),
        (0.5 + 1e-6, 1, 3),
        (0.7, 1, 0),
        (0.7 + 1e-6, 1, 1),
    ]
    return ref.Params(w_in, b_in, w, b), expected


def test_walk_finds_boundaries_closer_than_any_sampling_step():
    p, expected = _constructed()
    start, end = np.zeros(2), np.array([1.0, 0.0])
    with jax.enable_x64(True):
        params = MLPParams(*(jnp.asarray(a) for a in p))
        walk = walk_segment(params, "relu", jnp.asarray(start), jnp.asarray(end))
        n = int(walk.count)
        assert n == len(expected)
        np.testing.assert_array_equal(np.asarray(walk.counts), [4, 5])
        np.testing.assert_allclose(
            np.asarray(walk.times)[:n], [e[0] for e in expected], rtol=0, atol=1e-12
        )
        found = sorted(
            zip(
                np.round(np.asarray(walk.times)[:n], 9),
                np.asarray(walk.layer)[:n],
                np.asarray(walk.neuron)[:n],
                strict=True,
            )
        )
        want = sorted((round(t, 9), layer, i) for t, layer, i in expected)
        assert [f[1:] for f in found] == [w[1:] for w in want]
        # Region sizes along the path: the gaps between the known crossings.
        edges = np.concatenate([[0.0], [e[0] for e in expected], [1.0]])
        np.testing.assert_allclose(
            np.asarray(walk.gaps)[: n + 1], np.diff(edges), rtol=0, atol=1e-12
        )
    # Sampling every 1e-4 sees the layer-2 neuron's pair not at all.
    t = (np.arange(10_000) + 0.5) * 1e-4
    changes = ref.pattern_changes(p, start[None] + t[:, None] * end[None], "relu")
    np.testing.assert_array_equal(changes.sum(axis=(0, 2)), [4, 3])


def test_distance_along_the_path_bounds_and_meets_the_normal_distance():
    params, p64, _, _ = _params(seed=5)
    a, b = _points(6, 2)
    walk = walk_segment(params, "relu", a, b)
    n = int(walk.count)
    times = np.asarray(walk.times)[:n].astype(np.float64)
    edges = np.concatenate([[0.0], times, [1.0]])
    inner = (edges[1:] - edges[:-1]) > 1e-4
    mids = 0.5 * (edges[:-1] + edges[1:])[inner]
    d = (b - a).astype(np.float64)
    x = a[None] + mids[:, None] * d[None]
    region = np.asarray(
        neuron_distances(params, jnp.asarray(x, jnp.float32), "relu").region
    )[-1]
    forward = (edges[1:][inner] - mids) * np.linalg.norm(d)
    backward = (mids - edges[:-1][inner]) * np.linalg.norm(d)
    assert np.all(forward >= region * (1 - 1e-4))
    assert np.all(backward >= region * (1 - 1e-4))
    # The next crossing's neuron: its distance along the line, |z| / |J d^|,
    # from the float64 reference forward pass, is the walk's forward gap.
    zs, js = ref.forward(p64, x, "relu")
    ahead = np.flatnonzero(inner)
    for row, k in enumerate(ahead):
        if k == n:  # the last piece ends at the segment's end, not a boundary
            continue
        layer, neuron = int(walk.layer[k]), int(walk.neuron[k])
        slope = js[layer, row, neuron] @ (d / np.linalg.norm(d))
        along = abs(zs[layer, row, neuron]) / abs(slope)
        # float32 crossing parameters: about 1e-7 relative error in t.
        np.testing.assert_allclose(
            forward[row], along, rtol=1e-4, atol=1e-6 * np.linalg.norm(d)
        )


def test_he_relu_great_circle_sign_changes_match_kac_rice():
    width, members = N, 24
    spec = actgeo.NetworkSpec(input_dim=D, width=width, depth=L, activation="relu")
    params = actgeo.sample(spec, members, key=jax.random.key(0))
    rng = np.random.default_rng(7)
    basis, _ = np.linalg.qr(rng.normal(size=(D, 2)))
    radius = math.sqrt(D * 1.0)  # q_in = 1
    u, v = (np.float32(radius * basis[:, k]) for k in range(2))
    center = np.zeros(D, np.float32)

    walks = jax.vmap(lambda p: walk_circle(p, "relu", center, u, v))(params)
    assert not np.any(np.asarray(walks.truncated))
    per_neuron = np.asarray(walks.counts) / width  # (E, L)
    theory = predict("relu", math.sqrt(2.0), 0.0, L, width=width, input_dim=D)
    expected = np.asarray(theory.zero_crossings) * 2 * math.pi * radius
    np.testing.assert_allclose(expected, 2.0, rtol=1e-5)
    # A hyperplane through the origin cuts a great circle exactly twice.
    np.testing.assert_array_equal(per_neuron[:, 0], 2.0)
    mean = per_neuron.mean(axis=0)
    se = per_neuron.std(axis=0, ddof=1) / math.sqrt(members)
    # Finite width: deeper layers lose neurons that never change sign.
    assert np.all(np.abs(mean - expected) < 4 * se + 0.25), (mean, se)
    # vmap and an eager call give the same walk for a member.
    one = walk_circle(jax.tree.map(lambda a: a[3], params), "relu", center, u, v)
    np.testing.assert_array_equal(np.asarray(one.counts), np.asarray(walks.counts)[3])
    per_layer, total = normalised_changes(walks, width)
    np.testing.assert_allclose(
        np.asarray(per_layer), per_neuron / (2 * math.pi * radius), rtol=1e-4
    )
    np.testing.assert_allclose(
        np.asarray(total), per_neuron.mean(axis=1) / (2 * math.pi * radius), rtol=1e-4
    )


@pytest.mark.slow
def test_he_relu_great_circle_sign_changes_match_kac_rice_at_width_64():
    width, depth, members = 64, 6, 64
    spec = actgeo.NetworkSpec(input_dim=16, width=width, depth=depth)
    params = actgeo.sample(spec, members, key=jax.random.key(1))
    rng = np.random.default_rng(8)
    basis, _ = np.linalg.qr(rng.normal(size=(16, 2)))
    radius = 4.0
    u, v = (np.float32(radius * basis[:, k]) for k in range(2))
    center = np.zeros(16, np.float32)
    walks = jax.vmap(lambda p: walk_circle(p, "relu", center, u, v))(params)
    per_neuron = np.asarray(walks.counts) / width
    theory = predict("relu", math.sqrt(2.0), 0.0, depth, width=width, input_dim=16)
    expected = np.asarray(theory.zero_crossings) * 2 * math.pi * radius
    mean = per_neuron.mean(axis=0)
    se = per_neuron.std(axis=0, ddof=1) / math.sqrt(members)
    assert np.all(np.abs(mean - expected) < 4 * se + 0.1), (mean, se)


def _plane(seed):
    c, u, v = _points(seed, 3, scale=1.0)
    return c, u, v


def _grid_patterns(p64, activation, c, u, v, extent, points):
    g = np.linspace(-extent, extent, points)
    s, t = (a.ravel() for a in np.meshgrid(g, g))
    x = c[None] + s[:, None] * u[None] + t[:, None] * v[None]
    phi, _ = ref.ACTIVATIONS[activation]
    z = x @ p64.w_in.T + p64.b_in
    zs = [z]
    for w, b in zip(p64.w, p64.b, strict=True):
        z = phi(z) @ w.T + b
        zs.append(z)
    pat = ref.patterns(np.stack(zs, axis=1), activation)  # (S, L, N)
    return pat, np.stack(zs, axis=1)


@pytest.mark.parametrize("activation", ["relu", "hard_tanh"])
def test_one_layer_regions_are_an_arrangement_of_lines(activation):
    params, p64, _, _ = _params(seed=9, depth=1)
    c, u, v = _plane(10)
    extent = 4.0
    regions = count_regions_2d(params, activation, c, u, v, extent)
    # Lines alpha + beta s + gamma t = kink, one per neuron and kink.
    alpha = p64.w_in @ c + p64.b_in
    beta, gamma = p64.w_in @ u, p64.w_in @ v
    lines = [
        (alpha[i] - k, beta[i], gamma[i])
        for i in range(N)
        for k in ref.KINKS[activation]
    ]
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * extent
    crossing = [
        line
        for line in lines
        if np.ptp(np.sign(line[0] + corners @ np.array(line[1:]))) > 0
    ]
    inside = 0
    for (a1, b1, g1), (a2, b2, g2) in itertools.combinations(crossing, 2):
        det = b1 * g2 - b2 * g1
        if abs(det) < 1e-12:
            continue
        s = (-a1 * g2 + a2 * g1) / det
        t = (-b1 * a2 + b2 * a1) / det
        inside += abs(s) < extent and abs(t) < extent
    assert regions.count == 1 + len(crossing) + inside
    assert regions.count > 20
    np.testing.assert_allclose(regions.areas.sum(), (2 * extent) ** 2, rtol=1e-9)


@pytest.mark.parametrize("activation", ["relu", "hard_tanh"])
def test_deep_regions_tile_the_square_and_contain_every_sampled_pattern(activation):
    params, p64, _, _ = _params(seed=11)
    c, u, v = _plane(12)
    extent = 1.5
    regions = count_regions_2d(params, activation, c, u, v, extent)
    np.testing.assert_allclose(regions.areas.sum(), (2 * extent) ** 2, rtol=1e-6)
    keys = {p.tobytes() for p in regions.patterns.astype(np.int64)}
    assert len(keys) == regions.count
    pat, _ = _grid_patterns(p64, activation, c, u, v, extent, 301)
    sampled = {p.tobytes() for p in pat}
    assert sampled <= keys
    assert regions.count >= len(sampled) > 50
    # Each polygon's centroid lies in its own region.
    centroids = np.stack([poly.mean(axis=0) for poly in regions.polygons])
    x = c[None] + centroids[:, :1] * u[None] + centroids[:, 1:] * v[None]
    zs, _ = ref.forward(p64, x, activation)
    np.testing.assert_array_equal(
        np.transpose(ref.patterns(zs, activation), (1, 0, 2)), regions.patterns
    )
    layers = np.concatenate(regions.edge_layers)
    assert set(np.unique(layers)) == {-1, *range(L)}


def test_zero_bias_regions_with_constant_neurons_tile_the_square():
    # Without biases, where every first-layer neuron is off the second layer
    # is exactly 0: its neurons are constant there and on the left piece.
    # Boundaries coincide too (a second-layer neuron fed by one live neuron
    # shares its line), so crossing one edge can flip two neurons at once.
    params, p64, _, _ = _params(seed=17, width=4, sigma_w=1.4, sigma_b=0.0)
    c, u, v = _plane(18)
    extent = 4.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coverage check stays silent
        regions = count_regions_2d(params, "relu", c, u, v, extent)
    np.testing.assert_allclose(regions.areas.sum(), (2 * extent) ** 2, rtol=1e-9)
    flat = regions.patterns[:, 0].sum(axis=1) == 0
    assert flat.any() and np.all(regions.patterns[flat, 1:] == 0)
    pat, _ = _grid_patterns(p64, "relu", c, u, v, extent, 201)
    assert {p.tobytes() for p in pat} <= {
        p.tobytes() for p in regions.patterns.astype(np.int64)
    }


def test_square_centred_where_every_boundary_meets():
    # Zero biases and the square centred on the origin: every first-layer
    # line passes through the center, whose own pattern (all neurons on the
    # left piece of relu) is a region of zero area. The N lines through one
    # point cut the square into 2 N sectors.
    params, _, _, _ = _params(seed=19, depth=1, sigma_b=0.0)
    _, u, v = _plane(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        regions = count_regions_2d(params, "relu", np.zeros(D, np.float32), u, v, 2.0)
    assert regions.count == 2 * N
    np.testing.assert_allclose(regions.areas.sum(), 16.0, rtol=1e-9)


def test_larger_squares_never_lose_regions():
    # A larger square contains the smaller one, so the count cannot fall;
    # small regions near the center stay resolved at any extent.
    params, _, _, _ = _params(seed=21, depth=2, width=6)
    c, u, v = _plane(22)
    counts = [
        count_regions_2d(params, "relu", c, u, v, extent).count
        for extent in (2.0, 1e2, 1e4, 1e7)
    ]
    assert counts == sorted(counts), counts
    assert counts[-1] == counts[-2] > counts[0]


def test_fine_grid_finds_every_region_of_a_small_net():
    params, p64, _, _ = _params(seed=13, depth=2, width=5, sigma_b=0.5)
    c, u, v = _plane(14)
    regions = count_regions_2d(params, "relu", c, u, v, 1.0)
    pat, _ = _grid_patterns(p64, "relu", c, u, v, 1.0, 1501)
    assert len({p.tobytes() for p in pat}) == regions.count
    # The smallest region spans several grid cells.
    assert regions.areas.min() > 4 * (2.0 / 1500) ** 2


@pytest.mark.parametrize("outputs", [2, 3])
def test_decision_boundary_segments_separate_the_argmax_classes(outputs):
    params, p64, w_out, b_out = _params(seed=15, readout=outputs)
    c, u, v = _plane(16)
    regions = count_regions_2d(params, "relu", c, u, v, 1.5)
    segs, classes = regions.decision, regions.decision_classes
    assert len(segs) > 0 and segs.shape == (len(classes), 2, 2)
    ends = segs.reshape(-1, 2)
    x = c[None] + ends[:, :1] * u[None] + ends[:, 1:] * v[None]
    zs, _ = ref.forward(p64, x, "relu")
    f = np.maximum(zs[-1], 0) @ w_out.T + b_out  # (2S, K)
    a, b = np.repeat(classes, 2, axis=0).T
    rows = np.arange(len(ends))
    scale = np.abs(f).max()
    np.testing.assert_allclose(f[rows, a], f[rows, b], atol=1e-4 * scale)
    assert np.all(f[rows, a] >= f.max(axis=1) - 1e-4 * scale)
    # Every argmax change between neighbouring grid points has a segment near.
    _, zg = _grid_patterns(p64, "relu", c, u, v, 1.5, 61)
    label = (np.maximum(zg[:, -1], 0) @ w_out.T + b_out).argmax(axis=1)
    assert len(np.unique(label)) > 1


def test_walks_refuse_bad_input():
    params, _, _, _ = _params()
    a, b = _points(1, 2)
    with pytest.raises(ValueError, match=r"'tanh' is smooth.*zero_crossings"):
        walk_segment(params, "tanh", a, b)
    with pytest.raises(ValueError, match="'linear' has none"):
        walk_segment(params, "linear", a, b)
    with pytest.raises(ValueError, match="zero-length segment"):
        walk_segment(params, "relu", a, a.copy())
    with pytest.raises(ValueError, match=r"start: expected shape \(D,\)"):
        walk_segment(params, "relu", a[:2], b)
    with pytest.raises(ValueError, match="end: contains NaN"):
        walk_segment(params, "relu", a, np.full(D, np.nan, np.float32))
    with pytest.raises(ValueError, match="max_crossings: expected a positive"):
        walk_segment(params, "relu", a, b, max_crossings=0)
    with pytest.raises(ValueError, match=r"max_crossings=2 .*larger max_crossings"):
        walk_segment(params, "relu", a, b, max_crossings=2)
    with pytest.raises(ValueError, match="u, v: expected two non-parallel"):
        walk_circle(params, "relu", a, b, 2 * b)
    with pytest.raises(ValueError, match="v: expected a nonzero direction"):
        walk_circle(params, "relu", a, b, np.zeros(D, np.float32))
    with pytest.raises(ValueError, match="one network's parameters"):
        walk_segment(jax.tree.map(lambda x: x[None], params), "relu", a, b)


def test_plane_counting_refuses_bad_input():
    params, _, _, _ = _params()
    c, u, v = _plane(3)
    with pytest.raises(ValueError, match="extent: expected a positive"):
        count_regions_2d(params, "relu", c, u, v, 0.0)
    with pytest.raises(ValueError, match="extent: expected a positive"):
        count_regions_2d(params, "relu", c, u, v, math.nan)
    with pytest.raises(ValueError, match="u, v: expected two non-parallel"):
        count_regions_2d(params, "relu", c, u, -3 * u, 1.0)
    with pytest.raises(ValueError, match="'gelu' is smooth"):
        count_regions_2d(params, "gelu", c, u, v, 1.0)
    with pytest.raises(ValueError, match="more than max_regions=10"):
        count_regions_2d(params, "relu", c, u, v, 2.0, max_regions=10)
