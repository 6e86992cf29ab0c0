"""Input checks shared by the theory's eager entry points."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from actgeo.activations import Activation

# A Gaussian moment counts as convergent when the integrand beyond 9 standard
# deviations carries less than this fraction of the total.
_TAIL_FRACTION = 1e-9


def check_sigma(sigma_w, sigma_b) -> tuple[float, float]:
    """Returns ``(sigma_w, sigma_b)`` as floats, or raises naming every problem."""
    problems = []
    values = []
    for name, value, strict in (
        ("sigma_w", sigma_w, True),
        ("sigma_b", sigma_b, False),
    ):
        try:
            x = float(value)
        except (TypeError, ValueError):
            problems.append(f"{name}: expected a number, got {value!r}")
            values.append(math.nan)
            continue
        if not math.isfinite(x) or x < 0 or (strict and x == 0):
            what = "positive" if strict else "non-negative"
            problems.append(
                f"{name}: expected a {what} finite standard deviation, got {value!r}"
            )
        values.append(x)
    if problems:
        raise ValueError("; ".join(problems))
    return values[0], values[1]


def check_moments(act: Activation, q_max: float) -> None:
    """Raises if ``E[phi(u)^2]`` or ``E[phi'(u)^2]`` diverges for ``q <= q_max``.

    Activations with closed-form kernels pass. Otherwise the integrand's tail
    at 9 and 12 standard deviations is compared with the moment itself, at
    ``q`` from ``1e-6`` to ``q_max``: a tail that is not finite, not
    negligible, or growing means the Gaussian moment diverges (as for
    ``exp(z^2)``) and no quadrature can be trusted.
    """
    if act.kernel is not None and act.slope_kernel is not None:
        return
    qs = np.geomspace(1e-6, max(q_max, 1e-6), 13)
    z = np.array([-12.0, -9.0, -3.0, -1.0, 0.0, 1.0, 3.0, 9.0, 12.0])
    density = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    for q in qs:
        u = jnp.asarray(math.sqrt(q) * z)
        for what, fn in (("phi", act.fn), ("phi'", act.derivative)):
            with np.errstate(over="ignore", invalid="ignore"):
                values = np.asarray(fn(u), np.float64) ** 2 * density
            bulk = float(np.max(values[2:7])) if np.all(np.isfinite(values)) else 0.0
            tail9 = max(values[1], values[7])
            tail12 = max(values[0], values[8])
            if not np.all(np.isfinite(values)) or (
                tail9 > _TAIL_FRACTION * max(bulk, 1e-300) and tail12 >= tail9
            ):
                raise ValueError(
                    f"activation: the Gaussian moment E[{what}(u)^2] of "
                    f"{act.name!r} diverges or is not finite at q = {q:.3g} "
                    "(its tail outgrows the Gaussian); the theory needs "
                    "activations with finite Gaussian second moments"
                )
