"""Pure JAX kernels over one network, to be vmapped over ensemble members.

Each function takes one network's parameters and a batch of inputs; layers run
under ``lax.scan``. :func:`actgeo.ensemble.run_ensemble` adds the member axis
and chunking.
"""

from actgeo.kernels.distances import Distances, neuron_distances
from actgeo.kernels.forward import jacobians, preactivations, readout
from actgeo.kernels.histogram import Bins, LogSummary
from actgeo.kernels.probe import r2_score, ridge_predictions, ridge_r2
from actgeo.kernels.statistics import (
    LayerStats,
    StatsConfig,
    layer_statistics,
    measure_function,
)

__all__ = [
    "Bins",
    "Distances",
    "LayerStats",
    "LogSummary",
    "StatsConfig",
    "jacobians",
    "layer_statistics",
    "measure_function",
    "neuron_distances",
    "preactivations",
    "r2_score",
    "readout",
    "ridge_predictions",
    "ridge_r2",
]
