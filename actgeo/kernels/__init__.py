"""Pure JAX kernels over one network, to be vmapped over ensemble members.

Each function takes one network's parameters and a batch of inputs; layers run
under ``lax.scan``. :func:`actgeo.ensemble.run_ensemble` adds the member axis
and chunking.

* :mod:`.forward`, :mod:`.distances`, :mod:`.statistics`: preactivations,
  input Jacobians, boundary distances and their streamed statistics.
* :mod:`.spectra`: singular values of the layer-wise Jacobians, accumulated
  through depth as QR factors in log scale.
* :mod:`.paths`: lines, circles and planes through input space; length and
  curvature of their images, zero crossings, local complexity.
* :mod:`.regions`: exact walks from linear region to linear region of
  piecewise-linear networks, and the exact partition of a square of a plane.
"""

from actgeo.kernels.distances import Distances, neuron_distances
from actgeo.kernels.forward import jacobians, preactivations, readout
from actgeo.kernels.histogram import Bins, LogSummary
from actgeo.kernels.paths import (
    Crossings,
    Path,
    PathMeasures,
    Plane,
    circle,
    circle_through,
    great_circle,
    line,
    local_complexity,
    orthonormal_directions,
    plane,
    random_great_circle,
    random_line,
    trajectory,
    zero_crossings,
)
from actgeo.kernels.probe import r2_score, ridge_predictions, ridge_r2
from actgeo.kernels.regions import (
    PlaneRegions,
    RegionWalk,
    count_regions_2d,
    normalised_changes,
    walk_circle,
    walk_segment,
)
from actgeo.kernels.spectra import (
    SPECTRUM_BINS,
    SpectrumSummary,
    log_singular_values,
    product_log_singular_values,
    summarize_spectrum,
)
from actgeo.kernels.statistics import (
    LayerStats,
    StatsConfig,
    layer_statistics,
    measure_function,
)

__all__ = [
    "SPECTRUM_BINS",
    "Bins",
    "Crossings",
    "Distances",
    "LayerStats",
    "LogSummary",
    "Path",
    "PathMeasures",
    "Plane",
    "PlaneRegions",
    "RegionWalk",
    "SpectrumSummary",
    "StatsConfig",
    "circle",
    "circle_through",
    "count_regions_2d",
    "great_circle",
    "jacobians",
    "layer_statistics",
    "line",
    "local_complexity",
    "log_singular_values",
    "measure_function",
    "neuron_distances",
    "normalised_changes",
    "orthonormal_directions",
    "plane",
    "preactivations",
    "product_log_singular_values",
    "r2_score",
    "random_great_circle",
    "random_line",
    "readout",
    "ridge_predictions",
    "ridge_r2",
    "summarize_spectrum",
    "trajectory",
    "walk_circle",
    "walk_segment",
    "zero_crossings",
]
