"""Independent float64 NumPy references for the kernel and statistics tests.

Nothing here calls actgeo's kernels: the forward pass, the forward-mode
Jacobians (chain rule), the distances, the histogram binning and the ridge
probe are written from the formulas in DESIGN.md, so a test that compares the
library with them compares two independent computations.

Axis letters: ``B`` inputs, ``D`` input dimension, ``N`` width, ``L`` layers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import special
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score


def _relu(z):
    return np.maximum(z, 0.0)


def _relu_prime(z):
    return (z > 0).astype(np.float64)


def _tanh_prime(z):
    return 1.0 / np.cosh(z) ** 2


def _gelu(z):
    return z * special.ndtr(z)


def _gelu_prime(z):
    return special.ndtr(z) + z * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _sigmoid_prime(z):
    e = np.exp(-np.abs(z))
    return e / (1.0 + e) ** 2


# name -> (phi, phi'), float64 NumPy.
ACTIVATIONS = {
    "relu": (_relu, _relu_prime),
    "tanh": (np.tanh, _tanh_prime),
    "gelu": (_gelu, _gelu_prime),
    "sigmoid": (special.expit, _sigmoid_prime),
}


class Params(NamedTuple):
    """One network's parameters as float64 NumPy arrays (no member axis)."""

    w_in: np.ndarray  # (N, D)
    b_in: np.ndarray  # (N,)
    w: np.ndarray  # (L-1, N, N)
    b: np.ndarray  # (L-1, N)


def random_params(
    seed: int, d: int, n: int, depth: int, sigma_w: float = 1.5, sigma_b: float = 0.3
) -> Params:
    """Gaussian ``W ~ N(0, sigma_w^2 / fan_in)`` and ``b ~ N(0, sigma_b^2)``.

    Drawn with NumPy, so the kernel tests need not compile a sampler.
    """
    rng = np.random.default_rng(seed)
    return Params(
        rng.normal(size=(n, d)) * sigma_w / math.sqrt(d),
        rng.normal(size=n) * sigma_b,
        rng.normal(size=(depth - 1, n, n)) * sigma_w / math.sqrt(n),
        rng.normal(size=(depth - 1, n)) * sigma_b,
    )


def forward(p: Params, x: np.ndarray, activation: str, residual=None):
    """``z^l`` and ``J^l = dz^l/dx`` of every layer, by the chain rule.

    Returns ``z (L, B, N)`` and ``J (L, B, N, D)``.
    """
    phi, phi_prime = ACTIVATIONS[activation]
    x = np.asarray(x, np.float64)
    z = x @ p.w_in.T + p.b_in
    j = np.broadcast_to(p.w_in, (x.shape[0], *p.w_in.shape)).copy()
    zs, js = [z], [j]
    for w, b in zip(p.w, p.b, strict=True):
        z_new = phi(z) @ w.T + b
        # J^l = W diag(phi'(z^(l-1))) J^(l-1), for each input.
        j_new = np.einsum("nm,bm,bmd->bnd", w, phi_prime(z), j)
        if residual is not None:
            z_new = z + residual * z_new
            j_new = j + residual * j_new
        z, j = z_new, j_new
        zs.append(z)
        js.append(j)
    return np.stack(zs), np.stack(js)


def distances(p: Params, zs, js, residual=None):
    """``delta_in (L, B, N)``, ``delta_rep (L, B, N)``, ``region (L, B)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        delta_in = np.abs(zs) / np.linalg.norm(js, axis=-1)
        alpha = 1.0 if residual is None else residual
        row_norms = [np.linalg.norm(p.w_in, axis=-1)]
        row_norms += [alpha * np.linalg.norm(w, axis=-1) for w in p.w]
        delta_rep = np.abs(zs) / np.stack(row_norms)[:, None, :]
    region = np.minimum.accumulate(delta_in.min(axis=-1), axis=0)
    return delta_in, delta_rep, region


def bin_counts(log_values: np.ndarray, lo: float, hi: float, count: int):
    """Histogram of the finite values over ``count`` equal bins of ``[lo, hi]``.

    A value exactly on an inner edge goes to the bin on its right; values
    outside the range go to the edge bins.
    """
    v = np.ravel(log_values)
    v = v[np.isfinite(v)]
    index = np.clip(np.floor((v - lo) / (hi - lo) * count), 0, count - 1)
    return np.bincount(index.astype(np.int64), minlength=count)


def ridge_r2(features, targets, n_train: int, ridge: float) -> float:
    """Held-out R^2 of scikit-learn's ridge, in the units of actgeo's probe.

    Features are centred on the training rows and divided by their RMS over
    all training entries; the penalty is ``ridge * n_train`` in those units.
    """
    features = np.asarray(features, np.float64)
    targets = np.asarray(targets, np.float64).reshape(features.shape[0], -1)
    x_tr, x_te = features[:n_train], features[n_train:]
    mu = x_tr.mean(axis=0)
    rms = np.sqrt(np.mean((x_tr - mu) ** 2))
    model = Ridge(alpha=ridge * n_train, fit_intercept=True, solver="cholesky")
    model.fit((x_tr - mu) / rms, targets[:n_train])
    pred = model.predict((x_te - mu) / rms)
    return r2_score(targets[n_train:], pred, multioutput="variance_weighted")


# Piecewise-linear activations and activation patterns (float64 NumPy) --------


def _leaky_relu(z):
    return np.where(z > 0, z, 0.01 * z)


def _leaky_relu_prime(z):
    return np.where(z > 0, 1.0, 0.01)


def _hard_tanh(z):
    return np.clip(z, -1.0, 1.0)


def _hard_tanh_prime(z):
    return ((z > -1.0) & (z <= 1.0)).astype(np.float64)


ACTIVATIONS["leaky_relu"] = (_leaky_relu, _leaky_relu_prime)
ACTIVATIONS["hard_tanh"] = (_hard_tanh, _hard_tanh_prime)

# name -> kinks, in increasing order.
KINKS = {"relu": (0.0,), "leaky_relu": (0.0,), "hard_tanh": (-1.0, 1.0)}


def patterns(zs: np.ndarray, activation: str) -> np.ndarray:
    """Piece index of every preactivation: the number of kinks strictly below."""
    return sum((zs > k).astype(np.int64) for k in KINKS[activation])


def pattern_changes(p: Params, x: np.ndarray, activation: str, residual=None):
    """Which neurons change piece between consecutive points of ``x (S, D)``.

    Returns a bool array ``(S - 1, L, N)``.
    """
    phi, _ = ACTIVATIONS[activation]
    z = np.asarray(x, np.float64) @ p.w_in.T + p.b_in
    zs = [z]
    for w, b in zip(p.w, p.b, strict=True):
        z_new = phi(z) @ w.T + b
        z = z_new if residual is None else z + residual * z_new
        zs.append(z)
    pat = patterns(np.stack(zs), activation)  # (L, S, N)
    return np.transpose(pat[:, 1:] != pat[:, :-1], (1, 0, 2))
