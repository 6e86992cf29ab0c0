"""actgeo: how activation functions preserve geometry through depth."""

from actgeo import activations, kernels, networks
from actgeo.activations import Activation, get_activation, register
from actgeo.networks import MLPParams, NetworkSpec, sample

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "MLPParams",
    "NetworkSpec",
    "activations",
    "get_activation",
    "kernels",
    "networks",
    "register",
    "sample",
]
