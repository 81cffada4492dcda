"""Direct multiply-adds: every tap and input channel as a broadcast product, no dot.

``out[n, o, g, m] = sum_k sum_c xp[n, o*s + k*d, g, c] * w[k, c, g, m]`` written as
``prod(window) * C_g`` elementwise multiply-adds that XLA fuses into one loop over the
output: no slice, no product is stored. Its autodiff, however, keeps output-sized
buffers per term (measured: 2*terms+1 outputs per layer), so the planner uses it for
thin groups only (``1 < C_g <= 8``), where it is 5x faster than native forward and
backward. This is the lowering for depthwise convolutions
(``C_g = 1``) and other thin groups, where a dot would have a contraction of size
``C_g`` and could not use the matrix units anyway.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from .._spec import ConvSpec
from ._common import (
    Cost,
    Geometry,
    group_input,
    group_kernel,
    make_cost,
    offsets,
    pad_input,
    window_slice,
)

MAX_TERMS = 512
"""Largest ``prod(window) * C_g`` this lowering unrolls (the traced graph grows with it)."""


def applicable(spec: ConvSpec, dtype: jnp.dtype) -> str | None:
    """Why the direct lowering cannot run ``spec``, or None."""
    terms = math.prod(spec.window) * (spec.in_features // spec.feature_group_count)
    if terms > MAX_TERMS:
        return (
            f"it unrolls prod(window) * C/groups (={terms}) multiply-adds, more than "
            f"{MAX_TERMS}"
        )
    return None


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N_out, *out, F)`` by fused multiply-adds."""
    del precision  # elementwise products are exact in the accumulation dtype
    xp = pad_input(spec, x)
    wg = group_kernel(spec, w).astype(acc_dtype)  # (*window, Cg, B, G, Fq)
    lead = (1,) * (1 + spec.num_spatial)
    acc = jnp.zeros((*spec.canonical_out_shape[:-1], *wg.shape[-3:]), acc_dtype)
    for k in offsets(spec):
        xs = group_input(spec, window_slice(spec, xp, k)).astype(acc_dtype)  # (B, Nb, *o, G, Cg)
        xs = jnp.moveaxis(xs, 0, -3)  # (Nb, *o, B, G, Cg)
        for c in range(xs.shape[-1]):
            acc = acc + xs[..., c, None] * wg[k][c].reshape(*lead, *wg.shape[-3:])
    return acc.reshape(*acc.shape[:-3], spec.out_features)


def cost_of(geo: Geometry) -> Cost:
    """FLOPs ``2*MACs``; temp: the padded input only (the loop is fused)."""
    return make_cost(
        flops=2 * geo.macs,
        temp_elems=geo.pad * geo.in_elems,
        moved_elems=geo.pad * geo.in_elems + geo.out_elems,
        geo=geo,
    )


def cost(spec: ConvSpec, itemsize: int = 4) -> Cost:
    """Cost of the direct lowering for ``spec`` (see `cost_of`)."""
    return cost_of(Geometry.from_spec(spec, itemsize))
