"""Context retention: held-out R^2 of a ridge probe from a layer to a target.

The probe is linear ridge regression with an intercept, fitted on the first
``n_train`` inputs and scored on the rest. Features are centred on the
training mean and divided by their root-mean-square, and the penalty is
``lambda = ridge * n_train`` in those units: a fraction ``ridge`` of the
features' average variance times the sample count, so it means the same at
every layer whatever the representation's scale. The fit is solved in the
dual (an ``n_train x n_train`` system), which equals the primal ridge
solution exactly and is cheaper when the width exceeds the training set.

The score is the variance-weighted held-out R^2 over all targets,
``1 - sum SSE / sum SST`` with ``SST`` about the test targets' mean (as
scikit-learn's ``r2_score(..., multioutput="variance_weighted")``). It is 1
for a perfect probe, 0 for predicting the mean, and negative for worse.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from actgeo.precision import full_precision


@full_precision
def ridge_predictions(
    features: jax.Array, targets: jax.Array, n_train: int, ridge: float | jax.Array
) -> jax.Array:
    """Held-out predictions of a ridge probe, fitted once for every target.

    Args:
      features: ``(P, N)`` representation of ``P`` inputs.
      targets: ``(P, T)`` values to recover.
      n_train: the first ``n_train`` rows fit the probe; the rest are predicted.
      ridge: penalty relative to the features' variance (see module doc).

    Returns:
      ``(P - n_train, T)`` predictions. If the features are constant on the
      training set, the probe predicts the training mean. The system solved is
      the smaller of the primal ``N x N`` and the dual ``n_train x n_train``.
    """
    x_tr, x_te = features[:n_train], features[n_train:]
    y_tr = targets[:n_train]
    mu = jnp.mean(x_tr, axis=0)
    x_tr = x_tr - mu[None]
    x_te = x_te - mu[None]
    rms = jnp.sqrt(jnp.mean(x_tr * x_tr))
    informative = jnp.logical_not(rms == 0)
    rms = jnp.where(informative, rms, jnp.ones_like(rms))
    # Multiply by the reciprocal rather than divide: XLA rewrites a division
    # by a broadcast scalar into this form in some programs and not in others
    # (a sharded one, say), which moved the result by an ulp between them.
    inv_rms = 1.0 / rms
    x_tr = x_tr * inv_rms
    x_te = x_te * inv_rms
    y_mu = jnp.mean(y_tr, axis=0)
    y_c = y_tr - y_mu[None]
    lam = ridge * n_train
    width = features.shape[-1]
    if width <= n_train:
        system = x_tr.T @ x_tr + lam * jnp.eye(width, dtype=x_tr.dtype)
        factor = jax.scipy.linalg.cho_factor(system, lower=True)
        pred = x_te @ jax.scipy.linalg.cho_solve(factor, x_tr.T @ y_c)
    else:
        system = x_tr @ x_tr.T + lam * jnp.eye(n_train, dtype=x_tr.dtype)
        factor = jax.scipy.linalg.cho_factor(system, lower=True)
        pred = (x_te @ x_tr.T) @ jax.scipy.linalg.cho_solve(factor, y_c)
    return jnp.where(informative, pred, jnp.zeros_like(pred)) + y_mu[None]


def r2_score(truth: jax.Array, pred: jax.Array) -> jax.Array:
    """Variance-weighted R^2 of ``pred`` against ``truth`` (both ``(P, T)``).

    0 where the truth has no variance; NaN if either holds a NaN.
    """
    sse = jnp.sum((truth - pred) ** 2)
    sst = jnp.sum((truth - jnp.mean(truth, axis=0, keepdims=True)) ** 2)
    constant = sst == 0
    sst_safe = jnp.where(constant, jnp.ones_like(sst), sst)
    return jnp.where(constant, jnp.zeros_like(sst), 1.0 - sse / sst_safe)


@full_precision
def ridge_r2(
    features: jax.Array, targets: jax.Array, n_train: int, ridge: float | jax.Array
) -> jax.Array:
    """Held-out R^2 of a ridge probe from ``features (P, N)`` to ``targets``.

    ``targets`` is ``(P, T)`` or ``(P,)``; the first ``n_train`` rows fit the
    probe and the rest score it (see the module doc for the penalty).
    """
    if targets.ndim == 1:
        targets = targets[:, None]
    pred = ridge_predictions(features, targets, n_train, ridge)
    return r2_score(targets[n_train:], pred)
