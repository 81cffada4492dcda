"""Winograd F(4x4, 3x3): 4x fewer multiplies than summing the 9 taps, at more round-off.

Three GEMMs over ``a^2 = 36`` transform points per 4x4 output tile (`lower_tiles`: the
transforms as GEMMs over a copy of the tiles, where `winograd` adds), with the matrices of
Lavin and Gray (2016) for F(4, 3). Their entries reach 8 (``A^T``) and 1/24 (``G``): the
rounding error measured about 20x that of F(2x2, 3x3) (a few 1e-6 of ``sum |x| |w|`` in
float32, against about 1e-7), the price of the fewer multiplies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp
from jax import lax

from .._spec import ConvSpec
from ._common import Cost, Geometry, check_rank, chunked_cost, lower_chunked, make_cost
from ._model import Prediction
from .winograd import predict_tiles, tile_blocks, tiles_applicable, untile

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
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

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
    return lower_chunked(spec, x, w, cost_of, lower_tiles, precision=precision,
                         acc_dtype=acc_dtype)


def lower_tiles(
    spec: ConvSpec,
    xp: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, Hp, Wp, C)`` padded, ``(3, 3, Cg, F) -> (N, Ho, Wo, F)`` by F(m x m, 3x3),
    ``m = 4``, ``a = m + 2``: tiles ``d (a^2, G, R, C_g)`` (``R = N T_h T_w``, one copy of the
    padded input), input transform ``(B^T (x) B^T) d`` (a GEMM of depth ``a^2``), channel
    mixing batched over points and groups, output transform ``(A^T (x) A^T) M``; every
    intermediate keeps the transform point leading, so no transpose sits between them."""
    m, a = AT.shape
    g, cg, fq = spec.feature_group_count, spec.group_in_features, spec.group_out_features
    # tile (i, j) is rows m*i .. m*i + a - 1: block i of m rows and 2 rows of block i + 1
    xb = tile_blocks(spec, xp, m, acc_dtype)
    n, th, tw = xb.shape[0], xb.shape[1] - 1, xb.shape[3] - 1
    xr = jnp.concatenate([xb[:, :th], xb[:, 1:, :2]], axis=2)  # (N, Th, a, Tw + 1, m, G, Cg)
    xc = jnp.concatenate([xr[:, :, :, :tw], xr[:, :, :, 1:, :2]], axis=4)  # (..., a, Tw, a, ..)
    d = xc.transpose(2, 4, 5, 0, 1, 3, 6).reshape(a * a, g, n * th * tw, cg)
    v = jnp.einsum("pq,qgrc->pgrc", jnp.asarray(np.kron(BT, BT), acc_dtype), d,
                   precision=precision)
    u = jnp.einsum("pk,kcgf->pgcf", jnp.asarray(np.kron(G, G), acc_dtype),
                   w.astype(acc_dtype).reshape(9, cg, g, fq), precision=lax.Precision.HIGHEST)
    prod = jnp.einsum("pgrc,pgcf->pgrf", v, u, precision=precision)
    y = jnp.einsum("sp,pgrf->sgrf", jnp.asarray(np.kron(AT, AT), acc_dtype), prod,
                   precision=precision)
    return untile(spec, y.reshape(m, m, g, n, th, tw, fq))


def cost_of(geo: Geometry) -> Cost:
    """F(m x m, 3x3) (`lower_tiles`, ``m = 4``) with ``a = m + 2`` and ``R = N ceil(o_0/m)
    ceil(o_1/m)`` tiles. FLOPs: input transform ``2 a^4 R C``, mixing ``2 a^2 R C_g F``,
    output transform ``2 m^2 a^2 R F``, kernel transform ``18 a^2 C_g F``. Temp: the padded
    input, and two tile-sized buffers live at once (the tiles and their transform, ``a^2 R C``
    each, or the transform and the products, ``a^2 R F``), and the transformed kernel
    ``a^2 C_g F``."""
    m, a = AT.shape
    tiles = geo.n * sp.ceiling(geo.out[0] / m) * sp.ceiling(geo.out[1] / m)
    c, f = geo.g * geo.cg, geo.g * geo.fq
    flops = (2 * a**4 * tiles * c + 2 * a * a * tiles * geo.cg * f + 2 * m * m * a * a * tiles * f
             + 18 * a * a * geo.cg * f)
    temp = geo.pad * geo.in_elems + a * a * (tiles * (c + sp.Max(c, f)) + geo.cg * f)
    return make_cost(flops=flops, temp_elems=temp, moved_elems=temp + geo.out_elems, geo=geo)


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

