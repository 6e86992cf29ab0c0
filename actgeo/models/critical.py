"""Specs on the edge of chaos (Poole et al. 2016; Schoenholz et al. 2017)."""

from __future__ import annotations

import dataclasses

from actgeo.networks import NetworkSpec

__all__ = ["critical_spec"]


def critical_spec(spec: NetworkSpec) -> NetworkSpec:
    """The spec with ``sigma_w`` on its activation's edge of chaos at ``sigma_b``.

    ``sigma_w`` becomes :func:`actgeo.theory.critical_sigma_w` of
    ``(spec.activation, spec.sigma_b)``, where ``chi_1 = sigma_w^2
    E[phi'(u)^2] = 1`` at the stable fixed point ``q*`` of the q-map (tanh at
    ``sigma_b = 0``: 1; relu: ``sqrt(2)``). Every other field is kept;
    orthogonal weights have the same entry variance, so the same mean-field
    ``chi_1``.

    Raises:
      ValueError: the spec is residual (the edge of chaos of plain networks
        does not apply to it), or the activation has no stable edge of chaos
        at ``spec.sigma_b`` (the relu family has one only at ``sigma_b = 0``).
    """
    if not isinstance(spec, NetworkSpec):
        raise TypeError(f"spec: expected a NetworkSpec, got {type(spec).__name__}")
    if spec.residual is not None:
        raise ValueError(
            "spec: critical_spec gives the edge of chaos of plain networks; "
            f"spec.residual is {spec.residual} (the residual recursion has another)"
        )
    from actgeo import theory

    sigma_w = theory.critical_sigma_w(spec.activation, spec.sigma_b)
    return dataclasses.replace(spec, sigma_w=float(sigma_w))
