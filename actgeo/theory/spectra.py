"""Free-probability moments of the Jacobian spectrum of wide random networks.

Pennington, Schoenholz and Ganguli 2017 ("Resurrecting the sigmoid in deep
learning through dynamical isometry") and 2018 ("The emergence of spectral
universality in deep networks") compute the spectrum of ``J J^T`` from the
S-transforms of its free factors. Only its first two moments are needed to
tell dynamical isometry (all singular values near 1) from its failure, and
under free multiplicative convolution they combine simply: the means
``m1`` multiply and the normalised variances ``v = m2 / m1^2 - 1`` add
(``phi(abab) = phi(a^2) phi(b)^2 + phi(a)^2 phi(b^2) - phi(a)^2 phi(b)^2``
for free ``a, b``).

Convention of this library: ``J^l = dz^l/dx = W^l D^(l-1) W^(l-1) ... D^1
W^1`` with ``D^k = diag(phi'(z^k))``: ``l`` weight matrices and ``l - 1``
derivative diagonals, the first layer ``N x D``. (Pennington et al. write
``J = prod_l D^l W^l``, one diagonal per weight; their depth-``L`` results
are ours at ``l = L`` plus one more diagonal.) Moments are over the ``N``
eigenvalues of ``J J^T``, ``m_k = tr (J J^T)^k / N``; when ``N > D`` these
count ``N - D`` zeros. With ``W_ij`` of variance ``sigma_w^2 / fan_in``:

* ``W^1 W^1^T``: mean ``sigma_w^2``; ``v = N / D`` for Gaussian weights
  (Marchenko-Pastur), ``max(N / D - 1, 0)`` for orthogonal ones (a scaled
  projection of rank ``D`` when ``N > D``, ``sigma_w^2 I`` otherwise);
* square ``W^k`` (``k >= 2``): mean ``sigma_w^2``; ``v = 1`` Gaussian,
  ``0`` orthogonal;
* ``(D^k)^2``: mean ``mu_1(q^k)``, ``v = mu_2 / mu_1^2 - 1``, with
  ``mu_j(q) = E[phi'(u)^(2j)]``, ``u ~ N(0, q)``, and ``q^k`` the layer's
  length from the q-map.

Hence ``m1(J^l J^l^T) = sigma_w^2 prod_(k<l) chi_1(q^k)`` with
``chi_1 = sigma_w^2 mu_1`` (the mean is 1 on the edge of chaos at a fixed
point), and ``v_l = v(W^1) + sum_(k<l) (v(D^k) + v(W))``. At criticality
relu has ``v(D) = 1`` at any ``q``: ``v_l = 2 l - 1`` (Gaussian, square
first layer) or ``l - 1`` (orthogonal), growing linearly, never isometric.
For tanh-like activations ``v(D) -> 0`` as ``q* -> 0``, so orthogonal
weights approach dynamical isometry. Linear networks: ``v_l = l`` for
Gaussian square layers (the Fuss-Catalan ``m2 = l + 1`` of a product of
``l`` Wishart matrices normalised to mean 1) and exactly 0 for orthogonal
ones.

Approximations, stated: infinite width (finite-``N`` corrections are
``O(l / N)``; a square Gaussian layer's ``v`` is ``1 + 1/N`` at width
``N``), the diagonals treated as free of the weights with ``z^k`` Gaussian
of variance ``q^k`` (mean-field), the input's length ``q_in`` fixed. Plain
MLPs only (no residual form).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from actgeo.activations import Activation, get_activation
from actgeo.theory.gaussian import Quadrature, _float, expect, slope_moment
from actgeo.theory.maps import _safe_q, iterate
from actgeo.theory.validate import check_sigma

__all__ = ["SpectrumMoments", "jacobian_spectrum_moments", "weight_variance"]

_INITS = ("gaussian", "orthogonal")


class SpectrumMoments(NamedTuple):
    """Per-layer moments of the eigenvalues of ``J^l J^l^T`` (each ``(L,)``).

    Attributes:
      log_mean: ``log m1``, finite where ``m1`` overflows.
      mean: ``m1 = tr(J J^T) / N``.
      normalized_variance: ``v = m2 / m1^2 - 1``.
      variance: ``m2 - m1^2 = v m1^2``.
      slope_variance: ``v(D^l)`` of layer ``l``'s squared slopes
        ``phi'(z^l)^2`` (what layer ``l + 1`` adds besides its weights).
    """

    log_mean: jax.Array
    mean: jax.Array
    normalized_variance: jax.Array
    variance: jax.Array
    slope_variance: jax.Array


def weight_variance(init: str, rows: int, cols: int) -> float:
    """``v`` of ``W W^T`` over its ``rows`` eigenvalues (infinite-size limit)."""
    ratio = rows / cols
    if init == "gaussian":
        return ratio
    return max(ratio - 1.0, 0.0)


def _check(activation, sigma_w, sigma_b, depth, init, width, input_dim, q_in=1.0):
    problems = []
    if isinstance(depth, bool) or not (
        isinstance(depth, int | np.integer) and depth >= 1
    ):
        problems.append(f"depth: expected a positive int, got {depth!r}")
    if init not in _INITS:
        problems.append(f"init: expected one of {_INITS}, got {init!r}")
    if (width is None) != (input_dim is None):
        problems.append(
            "width, input_dim: give both (a first layer N x D) or neither (square), "
            f"got width={width!r}, input_dim={input_dim!r}"
        )
    for name, value in (("width", width), ("input_dim", input_dim)):
        if value is not None and not (
            isinstance(value, int | np.integer) and value >= 1
        ):
            problems.append(f"{name}: expected a positive int or None, got {value!r}")
    if not isinstance(q_in, jax.core.Tracer):
        q = np.asarray(q_in)
        if q.shape != () or q.dtype == bool or not (np.isfinite(q) and q > 0):
            problems.append(
                f"q_in: expected a positive finite input length, got {q_in!r}"
            )
    if not any(isinstance(v, jax.core.Tracer) for v in (sigma_w, sigma_b)):
        try:
            check_sigma(sigma_w, sigma_b)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError("; ".join(problems))
    return get_activation(activation)


def jacobian_spectrum_moments(
    activation: str | Activation,
    sigma_w: jax.Array | float,
    sigma_b: jax.Array | float,
    depth: int,
    q_in: jax.Array | float = 1.0,
    *,
    init: str = "gaussian",
    width: int | None = None,
    input_dim: int | None = None,
    quadrature: Quadrature | None = None,
) -> SpectrumMoments:
    """Mean and variance of the eigenvalues of ``J^l J^l^T``, layers ``1..L``.

    Args:
      activation: name or :class:`~actgeo.activations.Activation`.
      sigma_w, sigma_b: standard deviations (traced; vmap over grids).
      depth: ``L`` (static).
      q_in: the input's ``|x|^2 / D``; layer 1 has ``q^1 = sigma_w^2 q_in +
        sigma_b^2``.
      init: ``"gaussian"`` or ``"orthogonal"`` weights.
      width, input_dim: ``N`` and ``D`` of the first layer (static), which
        set its ``v``; both ``None`` for a square first layer.
      quadrature: rule for ``E[phi'(u)^4]`` (and ``E[phi'^2]`` without a
        closed form).

    Returns:
      :class:`SpectrumMoments` with ``(L,)`` arrays (module docstring for the
      formulas and approximations).
    """
    act = _check(activation, sigma_w, sigma_b, depth, init, width, input_dim, q_in)
    sigma_w, sigma_b, q_in = (_float(v) for v in (sigma_w, sigma_b, q_in))
    ratio_rows, ratio_cols = (1, 1) if width is None else (width, input_dim)
    v_first = weight_variance(init, ratio_rows, ratio_cols)
    v_square = weight_variance(init, 1, 1)
    log_q = iterate(act, sigma_w, sigma_b, depth, q_in, 0.0, quadrature).log_q

    def slopes(lq):
        q = _safe_q(lq)
        mu1 = slope_moment(act, q, quadrature)
        mu2 = expect(
            lambda u: act.derivative(u) ** 4, q, kinks=act.kinks, quadrature=quadrature
        )
        safe = jnp.where(mu1 > 0, mu1, jnp.ones_like(mu1))
        # mu2 >= mu1^2 (Jensen); rounding must not make v negative.
        v = jnp.maximum(mu2 / safe**2 - 1.0, 0.0)
        v = jnp.where(mu1 > 0, v, jnp.full_like(mu1, jnp.inf))
        return jnp.log(mu1), v

    log_mu1, v_slope = jax.vmap(slopes)(log_q)
    log_w = 2.0 * jnp.log(sigma_w)
    # Layer l has the diagonals of layers 1..l-1: shift by one.
    log_chi = log_w + log_mu1[:-1]
    zero = jnp.zeros((1,), log_w.dtype)
    log_mean = log_w + jnp.concatenate([zero, jnp.cumsum(log_chi)])
    v = v_first + jnp.concatenate([zero, jnp.cumsum(v_slope[:-1] + v_square)])
    mean = jnp.exp(log_mean)
    return SpectrumMoments(
        log_mean=log_mean,
        mean=mean,
        normalized_variance=v,
        variance=v * jnp.exp(2.0 * log_mean),
        slope_variance=v_slope,
    )
