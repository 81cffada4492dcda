"""Shift-and-sum: one channel contraction per kernel offset, accumulated.

``out[n, o, f] = sum_k sum_c xp[n, o*s + k*d, c] * w[k, c, f]``: the outer sum is a Python
loop over the ``prod(window)`` offsets (unrolled at trace time), the inner one an einsum
(a single matrix product without groups). XLA copies each strided window slice, runs one
dot per offset and adds the ``prod(window)`` products in one fused loop at the end, so
they are all alive at once: that is the temporary memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .._spec import ConvSpec
from ._common import (
    Cost,
    Geometry,
    chunked_cost,
    contract,
    group_input,
    group_kernel,
    lower_chunked,
    make_cost,
    offsets,
    ungroup_output,
    window_slice,
)


def applicable(spec: ConvSpec, dtype: jnp.dtype) -> str | None:
    """None: shift-and-sum handles every convolution."""
    return None


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N_out, *out, F)`` by shift-and-sum."""
    return lower_chunked(spec, x, w, cost_of, _lower_all, precision=precision,
                         acc_dtype=acc_dtype)


def _lower_all(
    spec: ConvSpec,
    xp: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *padded, C), (*window, Cg, F) -> (N_out, *out, F)`` by shift-and-sum."""
    if spec.depthwise:
        terms = [_depthwise_product(spec, window_slice(spec, xp, k), w[k][0], acc_dtype)
                 for k in offsets(spec)]
        return functools.reduce(jnp.add, terms)
    wg = group_kernel(spec, w)
    terms = [
        contract(spec, group_input(spec, window_slice(spec, xp, k)), wg[k], "",
                 precision=precision, acc_dtype=acc_dtype)
        for k in offsets(spec)
    ]
    return ungroup_output(spec, functools.reduce(jnp.add, terms))


def _depthwise_product(
    spec: ConvSpec, xs: jax.Array, wk: jax.Array, acc_dtype: jnp.dtype
) -> jax.Array:
    """``(N, *out, C), (F,) -> (N, *out, F)`` with one input channel per group: a broadcast
    product (input channel ``g`` feeds outputs ``g*Fq .. g*Fq + Fq - 1``), which XLA fuses
    with the sum over offsets and whose transposes are fused reductions, not dots. Kept in
    the plain layout: in the grouped one (unit axes for B and Cg) XLA's gradients took twice
    as long."""
    fq = spec.out_features // spec.feature_group_count
    xs = xs.astype(acc_dtype)
    if fq > 1:
        xs = jnp.repeat(xs, fq, axis=-1)
    return xs * wk.astype(acc_dtype).reshape((1,) * (xs.ndim - 1) + (-1,))


def cost_of(geo: Geometry) -> Cost:
    """FLOPs ``2*MACs`` (the adds of the products included). Temp, as XLA schedules it:
    the padded input and, with more than one tap, one output-sized product per offset (all
    live until the fused final sum); with one input channel per group (depthwise) XLA fuses
    the products into the sum, leaving the padded input only."""
    slice_elems = geo.out_pixels * geo.g * geo.cg
    several = 0 if all(k == 1 for k in geo.window) else 1
    products = 0 if (geo.cg == 1 and geo.g != 1) else several * geo.taps * geo.out_elems
    return make_cost(
        flops=2 * geo.macs,
        temp_elems=geo.pad * geo.in_elems + products,
        moved_elems=geo.pad * geo.in_elems
        + geo.copies_window * geo.taps * slice_elems + products,
        geo=geo,
    )


def cost(spec: ConvSpec, itemsize: int = 4) -> Cost:
    """Cost of shift-and-sum for ``spec`` (see `cost_of`); when it runs over batch chunks
    (`batch_chunk`) only the padded input stays whole, the rest scales with the chunk."""
    return chunked_cost(spec, itemsize, cost_of)
