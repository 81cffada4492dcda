"""Winograd F(4x4, 3x3): 4x fewer multiplies than summing the 9 taps, at more round-off.

The same three GEMMs as `winograd` over ``a^2 = 36`` transform points per 4x4 output tile,
with the matrices of Lavin and Gray (2016) for F(4, 3). Their entries reach 8 (``A^T``)
and 1/24 (``G``): the rounding error measured about 20x that of F(2x2, 3x3) (a few 1e-6
of ``sum |x| |w|`` in float32, against about 1e-7), the price of the fewer multiplies.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._spec import ConvSpec
from ._common import Cost, Geometry, check_rank, chunked_cost, lower_chunked
from ._model import Prediction
from .winograd import lower_tiles, predict_tiles, tiles_applicable, tiles_cost_of

AUTO = False
"""`strategy="auto"` never picks F(4x4, 3x3): its rounding error measured 20-40x that of
summing the taps or of F(2x2, 3x3) (a few 1e-6 of ``sum |x| |w|`` in float32), a trade to
ask for with ``strategy="winograd4"``."""
ACCURACY = "normwise"
"""Error bounded normwise only (F(4x4, 3x3)'s transforms amplify round-off (entries up to 8
and 1/24)): planned only where the caller asks for speed
(`jconv.planner.allows_normwise`)."""
TRANSFORMS_KERNEL = True
"""The kernel is copied, Winograd-transformed, ``G w G^T`` (`jconv.strategies`)."""

OVERHEAD = 1.5
"""Predicted time over the cost at the model's rates (three GEMMs, two of depth 36)."""
BACKWARD = 0.6
"""Gradients over the forward's predicted arithmetic, as for F(2x2, 3x3)."""
BACKWARD_COPY = 0.3
"""Gradients over the forward's predicted copies, as for F(2x2, 3x3)."""

BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], np.float64)


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
    """Why F(4x4, 3x3) cannot run ``spec`` (2-D 3x3 only), or None."""
    return tiles_applicable(spec, dtype, 2)


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, H, W, C), (3, 3, Cg, F) -> (N, Ho, Wo, F)`` by Winograd F(4x4, 3x3)."""
    return lower_chunked(spec, x, w, cost_of, functools.partial(lower_tiles, matrices=(BT, G, AT)),
                         precision=precision, acc_dtype=acc_dtype)


def cost_of(geo: Geometry) -> Cost:
    """Cost of F(4x4, 3x3) (`winograd.tiles_cost_of` with ``m = 4``)."""
    return tiles_cost_of(geo, 4)


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of Winograd F(4x4, 3x3) for ``spec``, batch chunks included."""
    return chunked_cost(spec, dtype, cost_of)


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols` (2-D only)."""
    check_rank("winograd4", num_spatial, 2)
    return cost_of(Geometry.symbols(num_spatial))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """`winograd.predict_tiles` of F(4x4, 3x3)'s cost."""
    return predict_tiles(spec, cost(spec, dtype), OVERHEAD, BACKWARD, BACKWARD_COPY)

