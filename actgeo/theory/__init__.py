"""Infinite-width predictions of the quantities actgeo measures, for any activation.

* :mod:`.gaussian`: Gaussian expectations of activations (closed forms from
  the registry where they exist, accurate quadrature otherwise).
* :mod:`.maps`: the q-map, c-map (tracked as ``1 - c``), ``chi_1``,
  ``chi_c``, and their iteration through depth.
* :mod:`.criticality`: every fixed point with its stability, depth scales,
  the edge of chaos, ``critical_sigma_w``, phase diagrams.
* :mod:`.predictions`: per-layer predictions beside each kernel measurement.
* :mod:`.paths`: length and curvature of a circle's image through depth
  (Poole et al. 2016).
* :mod:`.spectra`: free-probability mean and variance of the Jacobian
  spectrum per layer (Pennington et al. 2017, 2018).

``sigma_w`` and ``sigma_b`` are standard deviations throughout. Enable
float64 (``jax.config.update("jax_enable_x64", True)``) for results to
``1e-12``; float32 results are clipped so that no correlation exceeds 1.
"""

from actgeo.theory.criticality import (
    DepthScales,
    EdgeOfChaos,
    FixedPoints,
    PhaseDiagram,
    c_star,
    critical_sigma_w,
    depth_scales,
    edge_of_chaos,
    phase_diagram,
    q_fixed_points,
    q_star,
)
from actgeo.theory.gaussian import (
    Quadrature,
    expect,
    expect_pair,
    pair_moment,
    second_moment,
    slope_moment,
    slope_pair_moment,
)
from actgeo.theory.maps import (
    Trajectory,
    c_map,
    chi_1,
    chi_c,
    iterate,
    log_q_map,
    one_minus_c_map,
    q_map,
    q_slope,
)
from actgeo.theory.paths import CurvaturePrediction, chi_2, curvature_prediction
from actgeo.theory.predictions import LayerPrediction, predict, predict_statistics
from actgeo.theory.spectra import SpectrumMoments, jacobian_spectrum_moments

__all__ = [
    "CurvaturePrediction",
    "DepthScales",
    "EdgeOfChaos",
    "FixedPoints",
    "LayerPrediction",
    "PhaseDiagram",
    "Quadrature",
    "SpectrumMoments",
    "Trajectory",
    "c_map",
    "c_star",
    "chi_1",
    "chi_2",
    "chi_c",
    "critical_sigma_w",
    "curvature_prediction",
    "depth_scales",
    "edge_of_chaos",
    "expect",
    "expect_pair",
    "iterate",
    "jacobian_spectrum_moments",
    "log_q_map",
    "one_minus_c_map",
    "pair_moment",
    "phase_diagram",
    "predict",
    "predict_statistics",
    "q_fixed_points",
    "q_map",
    "q_slope",
    "q_star",
    "second_moment",
    "slope_moment",
    "slope_pair_moment",
]
