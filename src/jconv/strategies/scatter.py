"""Scatter: one product of every input sample with every tap, then a shifted sum.

For stride 1, input sample ``x[n, i]`` sits at ``lo + s*i`` in the padded, lhs-dilated
input (``s`` the lhs dilation) and tap ``k`` meets it at output ``o = lo + s*i - k*d``, so

``Y[n, i, k, f] = sum_c x[n, i, c] * w[k, c, f]``  (one matrix product
``(N * prod(in), C_g) @ (C_g, prod(window) * F)``, depth ``C_g``, width ``prod(window) * F``)

``out[n, o, f] = sum_k Y[n, (o - lo + k*d) / s, k, f]`` where that index is a whole number
in range: each tap's slice of ``Y`` is spread by one `lax.pad` (``s - 1`` zeros between, edges
``lo - k*d``, negative to crop) and XLA fuses the ``prod(window)`` pads and adds into a
single loop. Neither the padded input nor its lhs dilation is ever built, and no product
is taken with a padding zero: for a transposed convolution this skips the ``prod(s)``-fold
work on zeros. Temporary memory: ``Y``, ``prod(window) * F / C`` times the input; the
lowering runs over batch chunks once that is large (`batch_chunk`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import sympy as sp
from jax import lax

from .._spec import ConvSpec
from ._common import (
    Cost,
    Geometry,
    batch_chunk,
    group_input,
    group_kernel,
    in_batch_chunks,
    make_cost,
    offsets,
)


def applicable(spec: ConvSpec, dtype: jnp.dtype) -> str | None:
    """Why scatter cannot run ``spec``, or None."""
    if any(s != 1 for s in spec.window_strides):
        return f"it needs window strides of 1, got {spec.window_strides}"
    if spec.batch_group_count != 1:
        return f"it does not support batch_group_count (={spec.batch_group_count})"
    return None


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N, *out, F)``: all taps' products, spread and summed
    (per batch chunk when the products are big)."""
    chunk = batch_chunk(spec, float(cost_of(Geometry.from_spec(spec, x.dtype.itemsize))
                                    .temp_bytes))
    return in_batch_chunks(spec, x, chunk, lambda s, xc: _lower_all(
        s, xc, w, precision=precision, acc_dtype=acc_dtype))


def _lower_all(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N, *out, F)`` in one piece."""
    taps = math.prod(spec.window)
    g, cg = spec.feature_group_count, spec.in_features // spec.feature_group_count
    wg = group_kernel(spec, w).reshape(taps, cg, g, -1)  # (K, Cg, G, Fq)
    if g == 1:  # one matrix product, no transposes of the input
        y = jnp.matmul(x.reshape(-1, cg), jnp.moveaxis(wg, 0, 1).reshape(cg, -1),
                       precision=precision, preferred_element_type=acc_dtype)
    else:
        xg = group_input(spec, x)[0].reshape(-1, g, cg)  # (M, G, Cg)
        y = jnp.einsum("MGC,KCGF->MKGF", xg, wg, precision=precision,
                       preferred_element_type=acc_dtype)
    y = y.reshape(*x.shape[:-1], taps, spec.out_features)  # (N, *in, K, F)
    zero = jnp.zeros((), acc_dtype)
    acc = jnp.zeros((spec.batch, *spec.out_spatial, spec.out_features), acc_dtype)
    for t, k in enumerate(offsets(spec)):
        config = _spread(spec, k)
        if config is not None:
            acc = acc + lax.pad(y[..., t, :], zero, [(0, 0, 0), *config, (0, 0, 0)])
    return acc


def _spread(spec: ConvSpec, k: tuple[int, ...]) -> list[tuple[int, int, int]] | None:
    """Per spatial axis the `lax.pad` config putting tap ``k``'s products on the outputs they
    reach (``o = lo + s*i - k*d``); None if they reach none."""
    config = []
    for (lo, _), s, d, i, o, ki in zip(spec.padding, spec.lhs_dilation, spec.rhs_dilation,
                                       spec.in_spatial, spec.out_spatial, k, strict=True):
        first = lo - ki * d  # output of the first sample
        last = first + s * (i - 1)
        if last < 0 or first >= o:
            return None
        config.append((first, o - last - 1, s - 1))
    return config


def cost_of(geo: Geometry) -> Cost:
    """FLOPs ``2 * N * prod(in) * C_g * prod(window) * F``: a multiply and an add for every
    input sample, tap and channel (products that fall off the output included). Temp: the
    products ``Y``, written once and read once by the fused sum; none when ``Y`` is the
    output itself (one tap, no padding) or when, with one input channel per group, XLA
    fuses the broadcast products into the sum."""
    products = geo.n * sp.Mul(*geo.inp) * geo.taps * geo.g * geo.fq
    fused = geo.cg == 1 and geo.g != 1
    temp = 0 if fused else geo.copies_window * products
    return make_cost(
        flops=2 * products * geo.cg,
        temp_elems=temp,
        moved_elems=temp + geo.out_elems,
        geo=geo,
    )


def cost(spec: ConvSpec, itemsize: int = 4) -> Cost:
    """Cost of scatter for ``spec`` (see `cost_of`); over batch chunks (`batch_chunk`) the
    products scale with the chunk."""
    full = cost_of(Geometry.from_spec(spec, itemsize))
    chunk = batch_chunk(spec, float(full.temp_bytes))
    if chunk == spec.batch:
        return full
    return dataclasses.replace(full, temp_bytes=full.temp_bytes * sp.Rational(chunk, spec.batch))
