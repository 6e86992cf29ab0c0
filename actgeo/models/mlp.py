"""The random MLP of a :class:`~actgeo.networks.NetworkSpec` as a Flax NNX module.

``z^1 = W^1 x + b^1``, ``z^l = W^l phi(z^(l-1)) + b^l`` for ``l = 2..L``
(Poole et al. 2016), or ``z^l = z^(l-1) + alpha (W^l phi(z^(l-1)) + b^l)``
with ``spec.residual = alpha``, and the readout ``W^out phi(z^L) + b^out``
when ``spec.readout`` is set.

The parameters are the arrays of :class:`~actgeo.networks.MLPParams`, each an
``nnx.Param``: ``w_in (N, D)``, ``b_in (N,)``, ``w (L-1, N, N)``,
``b (L-1, N)``, ``w_out (K, N)``, ``b_out (K,)``. At initialisation
``MLP(spec, key=key, member=i)`` holds exactly ``actgeo.sample(spec, [i],
key=key)`` (member ``i`` of the random ensemble), so a trained model starts
from the network the kernels measure at initialisation. Layers ``2..L`` run
under ``lax.scan``.

Axis letters: ``B`` inputs, ``D`` input dimension, ``N`` width, ``L`` layers,
``K`` outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from actgeo.activations import Activation
from actgeo.models._checks import check_input, check_key, check_member
from actgeo.networks import MLPParams, NetworkSpec, sample

__all__ = ["MLP", "ResidualMLP"]


def _check_params(spec: NetworkSpec, params) -> None:
    if not isinstance(params, MLPParams):
        raise TypeError(f"params: expected MLPParams, got {type(params).__name__}")
    d, n, l, k = spec.input_dim, spec.width, spec.depth, spec.readout
    expected = {
        "w_in": (n, d),
        "b_in": (n,),
        "w": (l - 1, n, n),
        "b": (l - 1, n),
        "w_out": None if k is None else (k, n),
        "b_out": None if k is None else (k,),
    }
    problems = []
    for name, shape in expected.items():
        value = getattr(params, name)
        got = None if value is None else tuple(jnp.shape(value))
        if got != shape:
            problems.append(f"{name}: expected {shape}, got {got}")
    if problems:
        raise ValueError(
            "params: shapes do not match the spec (one network, no member axis): "
            + "; ".join(problems)
        )


class MLP(nnx.Module):
    """A fully connected network of a :class:`~actgeo.networks.NetworkSpec`.

    Args:
      spec: the network family (shapes, activation, initialisation).
      key: typed key from ``jax.random.key``; with ``member``, it fixes the
        initial weights, ``actgeo.sample(spec, [member], key=key)[0]``.
      member: index of the ensemble member to initialise as.
      dtype: float dtype of the parameters.
      params: one network's :class:`~actgeo.networks.MLPParams` to start
        from instead of ``key`` (trained weights, say).

    Attributes:
      spec: the spec (static).
      w_in, b_in, w, b, w_out, b_out: ``nnx.Param`` s in the layout of
        :class:`~actgeo.networks.MLPParams` (``w_out`` and ``b_out`` are
        ``None`` without a readout).
    """

    def __init__(
        self,
        spec: NetworkSpec,
        *,
        key: jax.Array | None = None,
        member: int = 0,
        dtype=jnp.float32,
        params: MLPParams | None = None,
    ):
        if not isinstance(spec, NetworkSpec):
            raise TypeError(f"spec: expected a NetworkSpec, got {type(spec).__name__}")
        if (key is None) == (params is None):
            raise TypeError("MLP: pass exactly one of key= and params=")
        if params is None:
            check_key(key)
            check_member(member)
            params = jax.tree.map(
                lambda a: a[0], sample(spec, [member], key=key, dtype=dtype)
            )
        else:
            _check_params(spec, params)
        self.spec = spec
        self.w_in = nnx.Param(jnp.asarray(params.w_in))
        self.b_in = nnx.Param(jnp.asarray(params.b_in))
        self.w = nnx.Param(jnp.asarray(params.w))
        self.b = nnx.Param(jnp.asarray(params.b))
        if spec.readout is None:
            self.w_out = self.b_out = None
        else:
            self.w_out = nnx.Param(jnp.asarray(params.w_out))
            self.b_out = nnx.Param(jnp.asarray(params.b_out))

    @property
    def act(self) -> Activation:
        """The activation's registry entry."""
        return self.spec.act

    def params(self) -> MLPParams:
        """Current parameter values as one network's :class:`MLPParams`."""
        return MLPParams(
            self.w_in[...],
            self.b_in[...],
            self.w[...],
            self.b[...],
            None if self.w_out is None else self.w_out[...],
            None if self.b_out is None else self.b_out[...],
        )

    def _check_members(self) -> None:
        if jnp.ndim(self.w_in[...]) != 2:
            raise ValueError(
                "MLP: this model holds a whole ensemble (parameters with a leading "
                "member axis); take one with actgeo.models.member(graphdef, state, i) "
                "or vmap over the state"
            )

    def _first(self, x: jax.Array) -> jax.Array:
        self._check_members()
        x = check_input(x, (self.spec.input_dim,), "MLP")
        w_in = self.w_in[...]
        return x.astype(w_in.dtype) @ w_in.T + self.b_in[...][None]

    def _scan(self, z1: jax.Array, keep: bool):
        act, alpha = self.spec.act, self.spec.residual

        def body(z, layer):
            w, b = layer
            new = act.fn(z) @ w.T + b[None]
            if alpha is not None:
                new = z + alpha * new
            return new, (new if keep else None)

        return jax.lax.scan(body, z1, (self.w[...], self.b[...]))

    def preactivations(self, x: jax.Array) -> jax.Array:
        """Preactivations ``z^l`` of every hidden layer.

        Args:
          x: ``(B, D)`` inputs.

        Returns:
          ``(L, B, N)``.
        """
        z1 = self._first(x)
        _, zs = self._scan(z1, keep=True)
        return jnp.concatenate([z1[None], zs], axis=0)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, K)`` with a readout, else ``phi(z^L)`` ``(B, N)``.

        Args:
          x: ``(B, D)`` inputs.
        """
        z_last, _ = self._scan(self._first(x), keep=False)
        h = self.spec.act.fn(z_last)
        if self.w_out is None:
            return h
        return h @ self.w_out[...].T + self.b_out[...][None]


class ResidualMLP(MLP):
    """:class:`MLP` of a residual spec (``spec.residual`` set); refuses others."""

    def __init__(self, spec: NetworkSpec, **kwargs):
        if isinstance(spec, NetworkSpec) and spec.residual is None:
            raise ValueError(
                "spec: ResidualMLP expects spec.residual to be set (the residual "
                "scale alpha); use MLP for a plain network"
            )
        super().__init__(spec, **kwargs)
