"""Winograd F(2x2, 3x3): 2-D 3x3 stride-1 convolutions with 2.25x fewer multiplies.

With ``B^T`` (4x4), ``G`` (4x3), ``A^T`` (2x4) the minimal-filtering matrices of Lavin and
Gray (2016), every 2x2 output tile is ``A^T [(G w G^T) (.) (B^T d B)] A`` for the 4x4 input
tile ``d``. Written as: the input transform as 16 fused linear combinations of strided
slices, the channel contraction as one batched einsum over the 16 transform points
``(16, N*T_h*T_w, C) x (16, C, F)``, the output transform as fused combinations again.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp
from jax import lax

from .._spec import ConvSpec
from ._common import Cost, Geometry, make_cost, pad_input

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def applicable(spec: ConvSpec, dtype: jnp.dtype) -> str | None:
    """Why Winograd F(2x2, 3x3) cannot run ``spec``, or None."""
    if spec.num_spatial != 2 or spec.window != (3, 3):
        return f"it needs a 2-D 3x3 window, got {spec.window}"
    if spec.window_strides != (1, 1) or spec.rhs_dilation != (1, 1):
        return (f"it needs stride 1 and rhs dilation 1, got {spec.window_strides} and "
                f"{spec.rhs_dilation}")
    if spec.batch_group_count != 1:
        return f"it does not support batch_group_count (={spec.batch_group_count})"
    if not jnp.issubdtype(dtype, jnp.floating):
        return f"it needs a real floating dtype, got {jnp.dtype(dtype)}"
    return None


def _combine(mat: np.ndarray, parts: list[jax.Array]) -> list[jax.Array]:
    """``out[i] = sum_j mat[i, j] * parts[j]`` with the zero terms skipped."""
    out = []
    for row in mat:
        terms = [p if c == 1 else (-p if c == -1 else p * jnp.asarray(c, p.dtype))
                 for c, p in zip(row, parts, strict=True) if c != 0]
        acc = terms[0]
        for t in terms[1:]:
            acc = acc + t
        out.append(acc)
    return out


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, H, W, C), (3, 3, Cg, F) -> (N, Ho, Wo, F)`` by Winograd F(2x2, 3x3)."""
    xp = pad_input(spec, x)
    n, c = xp.shape[0], xp.shape[-1]
    ho, wo = spec.out_spatial
    th, tw = -(-ho // 2), -(-wo // 2)
    g, f = spec.feature_group_count, spec.out_features
    x = xp.astype(acc_dtype)
    extra_h, extra_w = 2 * th + 2 - xp.shape[1], 2 * tw + 2 - xp.shape[2]
    x = jnp.pad(x, ((0, 0), (0, max(extra_h, 0)), (0, max(extra_w, 0)), (0, 0)))
    rows = [lax.slice_in_dim(x, a, a + 2 * th - 1, 2, axis=1) for a in range(4)]
    rows = _combine(BT, rows)  # 4 x (N, Th, Wp', C)
    v = []
    for r in rows:
        cols = [lax.slice_in_dim(r, b, b + 2 * tw - 1, 2, axis=2) for b in range(4)]
        v += _combine(BT, cols)  # 4 x (N, Th, Tw, C)
    vt = jnp.stack(v).reshape(16, n * th * tw, g, c // g)
    gm = jnp.asarray(G, acc_dtype)
    u = jnp.einsum("ia,jb,abcf->ijcf", gm, gm, w.astype(acc_dtype),
                   precision=lax.Precision.HIGHEST)
    u = u.reshape(16, c // g, g, f // g)
    m = jnp.einsum("tPgc,tcgf->tPgf", vt, u, precision=precision,
                   preferred_element_type=acc_dtype)
    m = m.reshape(4, 4, n, th, tw, f)
    cols_out = [_combine(AT, [m[a, b] for b in range(4)]) for a in range(4)]  # [a][q]
    y = [_combine(AT, [cols_out[a][q] for a in range(4)]) for q in range(2)]  # [q][p]
    out = jnp.stack([jnp.stack([y[q][p] for q in range(2)], axis=3) for p in range(2)], axis=2)
    out = out.reshape(n, 2 * th, 2 * tw, f)
    return out[:, :ho, :wo, :]


def cost_of(geo: Geometry) -> Cost:
    """FLOPs: the 16-point batched contraction ``2 * 16 * N*T_h*T_w * C_g * F`` plus the
    transforms (32 adds per input tile and channel, 24 per output tile and feature);
    temp: the transformed input and the transformed products (16 per tile); the padding
    fuses into the input transform."""
    th, tw = sp.ceiling(geo.out[0] / 2), sp.ceiling(geo.out[1] / 2)
    tiles = geo.n * th * tw
    c, f = geo.g * geo.cg, geo.g * geo.fq
    flops = 2 * 16 * tiles * geo.cg * f + 32 * tiles * c + 24 * tiles * f
    temp = 16 * tiles * (c + f)
    return make_cost(flops=flops, temp_elems=temp, moved_elems=temp + geo.out_elems, geo=geo)


def cost(spec: ConvSpec, itemsize: int = 4) -> Cost:
    """Cost of Winograd F(2x2, 3x3) for ``spec`` (see `cost_of`)."""
    return cost_of(Geometry.from_spec(spec, itemsize))
