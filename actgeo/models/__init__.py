"""Flax NNX models whose parameters the kernels can measure.

* :class:`MLP` (and :class:`ResidualMLP`): the random network of a
  :class:`~actgeo.networks.NetworkSpec`, initialised bit for bit as
  :func:`actgeo.sample` draws it, trainable with optax.
* :func:`critical_spec`: a spec with ``sigma_w`` on the edge of chaos.
* :class:`CNN`: a small same-padded convolutional network for images.
* :func:`ensemble` and :func:`member`: ``E`` models as one state with a
  leading member axis, for ``jax.vmap``.
* :mod:`.adapter`: from a model to the kernels' inputs.

Importing this package imports Flax; :mod:`actgeo.kernels` never does.
"""

from actgeo.models import adapter
from actgeo.models.adapter import as_params, preactivation_fn, row_norms
from actgeo.models.cnn import CNN, CNNParams
from actgeo.models.critical import critical_spec
from actgeo.models.geometry import geometry_hook
from actgeo.models.mlp import MLP, ResidualMLP
from actgeo.models.stacked import ensemble, ensemble_size, member

__all__ = [
    "CNN",
    "MLP",
    "CNNParams",
    "ResidualMLP",
    "adapter",
    "as_params",
    "critical_spec",
    "ensemble",
    "ensemble_size",
    "geometry_hook",
    "member",
    "preactivation_fn",
    "row_norms",
]
