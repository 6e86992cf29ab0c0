"""actgeo: how activation functions preserve geometry through depth."""

from actgeo import activations, kernels, networks
from actgeo.activations import Activation, get_activation, register
from actgeo.networks import MLPParams, NetworkSpec, sample

__version__ = "0.1.0"


def __getattr__(name):
    # actgeo.models imports Flax; load it on first use so that `import actgeo`
    # (and the kernels) stay free of it.
    if name == "models":
        import importlib

        return importlib.import_module("actgeo.models")
    raise AttributeError(f"module 'actgeo' has no attribute {name!r}")


__all__ = [
    "Activation",
    "MLPParams",
    "NetworkSpec",
    "activations",
    "get_activation",
    "kernels",
    "models",
    "networks",
    "register",
    "sample",
]
