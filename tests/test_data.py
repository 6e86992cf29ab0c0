"""Built-in inputs: digits and the sphere with an exact signed distance."""

from __future__ import annotations

import numpy as np
import pytest

from actgeo import data


def test_digits_are_real_scaled_and_distinct():
    inputs = data.digits(300, seed=1)
    assert inputs.x.shape == (300, 64)
    assert inputs.x.dtype == np.float32
    assert inputs.target is None
    assert set(np.unique(inputs.labels)) == set(range(10))
    assert np.unique(inputs.x, axis=0).shape[0] == 300
    full = data.digits(1797)
    np.testing.assert_allclose(np.mean(np.sum(full.x**2, axis=1)) / 64, 1.0, rtol=1e-5)
    assert not np.array_equal(data.digits(10, seed=2).x, data.digits(10, seed=3).x)


def test_sphere_target_is_the_exact_signed_distance():
    inputs = data.sphere(500, 6, seed=4)
    radius = np.linalg.norm(inputs.x.astype(np.float64), axis=1)
    big_r = radius - inputs.target
    np.testing.assert_allclose(big_r, big_r[0], rtol=1e-5)
    np.testing.assert_allclose(np.mean(radius**2) / 6, 1.0, rtol=0.1)
    ratio = radius / big_r
    assert ratio.min() >= 0.2 - 1e-5 and ratio.max() <= 3.0 + 1e-5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: data.digits(0), "n: expected 1..1797"),
        (lambda: data.digits(5000), "n: expected 1..1797"),
        (lambda: data.sphere(0, 3), "n: expected a positive"),
        (lambda: data.sphere(3, 0), "dim: expected a positive"),
        (lambda: data.sphere(3, 2, spread=(2.0, 1.0)), "spread"),
        (lambda: data.load("mnist", 3), "dataset: unknown name 'mnist'"),
    ],
)
def test_bad_requests_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
