"""Built-in inputs: scikit-learn's digits and points with a known boundary.

* :func:`digits`: the 1797 8x8 handwritten digits that ship with
  scikit-learn (no download), as 64-dimensional vectors.
* :func:`sphere`: points around a sphere of radius ``R`` in ``R^D``, whose
  signed distance to that sphere, ``|x| - R``, is known exactly.

Inputs are scaled so that ``|x|^2 / D`` is about 1 on average (``q^0 = 1`` in
the mean-field convention), which puts every activation in the regime its
customary initialisation was designed for.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

__all__ = ["Inputs", "digits", "load", "sphere"]

DATASETS = ("digits", "sphere")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """A set of inputs and, where the geometry is known, a target distance.

    Attributes:
      name: data set name.
      x: ``(P, D)`` float32 inputs.
      target: ``(P,)`` signed distance to a surface of known geometry, or
        ``None``.
      labels: ``(P,)`` class labels, or ``None``.
      description: one line on what the inputs are.
    """

    name: str
    x: np.ndarray
    target: np.ndarray | None
    labels: np.ndarray | None
    description: str


@functools.cache
def _digits_arrays():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


def digits(n: int, *, seed: int = 0) -> Inputs:
    """``n`` distinct digit images, drawn without replacement, as ``(n, 64)``.

    Pixels (0..16) are centred per pixel over the whole data set and scaled
    by one global factor so that ``mean |x|^2 / 64 = 1``.
    """
    data, labels = _digits_arrays()
    if not 1 <= n <= data.shape[0]:
        raise ValueError(f"n: expected 1..{data.shape[0]} digit images, got {n}")
    centred = data - data.mean(axis=0, keepdims=True)
    centred /= np.sqrt(np.mean(np.sum(centred**2, axis=1)) / data.shape[1])
    pick = np.random.default_rng(seed).permutation(data.shape[0])[:n]
    return Inputs(
        name="digits",
        x=centred[pick].astype(np.float32),
        target=None,
        labels=labels[pick],
        description="scikit-learn digits, 8x8 pixels, centred, q0 = 1",
    )


def sphere(
    n: int, dim: int, *, seed: int = 0, spread: tuple[float, float] = (0.2, 3.0)
) -> Inputs:
    """``n`` points at radii ``U(spread) * R`` in uniform directions.

    ``R`` is chosen so that ``E|x|^2 / dim = 1``: ``R^2 = dim / E[U^2]``. The
    target is the signed distance to the sphere of radius ``R``, ``|x| - R``,
    exact by construction.
    """
    if n < 1:
        raise ValueError(f"n: expected a positive number of points, got {n}")
    if dim < 1:
        raise ValueError(f"dim: expected a positive dimension, got {dim}")
    lo, hi = spread
    if not 0 < lo < hi:
        raise ValueError(f"spread: expected 0 < lo < hi, got {spread}")
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    mean_square = (hi**3 - lo**3) / (3.0 * (hi - lo))
    big_r = np.sqrt(dim / mean_square)
    radius = big_r * rng.uniform(lo, hi, size=n)
    x = direction * radius[:, None]
    return Inputs(
        name="sphere",
        x=x.astype(np.float32),
        target=(radius - big_r).astype(np.float32),
        labels=None,
        description=(
            f"points in R^{dim} at radii {lo}-{hi} x R around a sphere of radius "
            f"R = {big_r:.3g}; target: signed distance to it"
        ),
    )


def load(name: str, n: int, *, dim: int = 16, seed: int = 0) -> Inputs:
    """Built-in inputs by name: ``"digits"`` or ``"sphere"`` (of dimension ``dim``)."""
    if name == "digits":
        return digits(n, seed=seed)
    if name == "sphere":
        return sphere(n, dim, seed=seed)
    raise ValueError(f"dataset: unknown name {name!r}; valid names are {DATASETS}")
