"""Scatter: one product of every input sample with every tap, then a shifted sum.

``Y[n, p, k, f] = sum_c xp[n, p, c] * w[k, c, f]`` is one matrix product
``(N * prod(positions), C_g) @ (C_g, prod(window) * F)`` (depth ``C_g``, width
``prod(window) * F``), and for stride 1 ``out[n, o, f] = sum_k Y[n, o + k*d, k, f]``: each
tap's products are a window slice of ``Y`` and XLA fuses the ``prod(window)`` slices and
adds into a single loop. The positions are those of the padded input ``xp``. Where that
would waste products on padding (lhs dilation, or more than `SLICE_MAX_PADDING` times the
input's positions) only the real samples are multiplied instead: sample ``x[n, i]`` sits at
``lo + s*i`` of ``xp`` (``s`` the lhs dilation) and meets tap ``k`` at output
``o = lo + s*i - k*d``, so each tap's products are spread by one `lax.pad` (``s - 1`` zeros
between, edges ``lo - k*d``, negative to crop) instead of sliced: the padded or lhs-dilated
input is never built and a transposed convolution skips ``prod(s)``-fold work. Temporary
memory: ``Y``, ``prod(window) * F / C`` times the input; the lowering runs over batch
chunks once that is large (`batch_chunk`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import sympy as sp
from jax import lax

from .._spec import ConvSpec
from ._common import (
    Cost,
    Expr,
    Geometry,
    check_one_group,
    chunked_cost,
    group_input,
    group_kernel,
    lower_chunked,
    make_cost,
    offsets,
    window_slice,
)
from ._model import NEVER, Prediction, copy_seconds, gemm_rate

AUTO = True
"""`strategy="auto"` may pick scatter."""
ACCURACY = "summation"
"""Rounding error of summing the taps in the accumulation dtype (lax's class on the CPU;
exact on small-integer data)."""
TRANSFORMS_KERNEL = True
"""The kernel is copied, transposed to ``(C, taps * F)`` for the one GEMM
(`jconv.strategies`)."""
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

BACKWARD = 0.8
"""Gradients over the forward's predicted arithmetic."""
BACKWARD_COPY = 0.6
"""Gradients over the forward's predicted copies."""
SLOW_TAPS = 9
"""Slows with the square root of its taps past this many: its fused sum reads one strided
row of the products per tap for every output (fitted on 1-D k = 15, 31 and 3-D 3x3x3)."""
FUSED_DEPTHWISE_TAPS = 15
"""With one input channel per group XLA fuses the broadcast products into the shifted sum
for windows of up to this many taps and stores them from 16 on (measured: 1-D windows of 15
and 16 taps, 3x5 and 4x4, 3x3x3)."""


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
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
    """``(N, *in, C), (*window, Cg, F) -> (N, *out, F)``: all taps' products, sliced (or where
    `spreads`, spread) and summed, per batch chunk when the products are big."""
    return _lower(spec, x, w, False, precision=precision, acc_dtype=acc_dtype)


def lower_flipped(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """`lower` with the kernel given flipped, for one group: ``(N, *in, C), (*window, F, C)
    -> (N, *out, F)``, where ``w[k, f, c]`` is the kernel's tap ``window - 1 - k`` from
    input channel ``c`` to output ``f`` (`ConvSpec.flip_kernel` of `w`). A dense
    convolution's input gradient is the cotangent convolved with the forward kernel so read
    (`jconv._gradients.input_tangent`). The GEMM reads `w` as the matrix
    ``(taps * F, C)``, contracting its second axis (no copy: XLA's GEMM reads it
    transposed), and the products are reversed instead of the kernel. A flipped copy
    would depend on the kernel alone: XLA's CPU scheduler computed such copies during the
    forward pass and held them until the backward."""
    check_one_group(spec)
    return _lower(spec, x, w, True, precision=precision, acc_dtype=acc_dtype)


def _lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    flipped: bool,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """`lower`, or `lower_flipped` if `flipped`."""
    spread = spreads(spec)
    lower_all = _spread_out if spread else _sliced
    return lower_chunked(spec, x, w, lambda geo: cost_of(geo, int(spread)),
                         functools.partial(lower_all, flipped=flipped),
                         precision=precision, acc_dtype=acc_dtype, padded=not spread)


SLICE_MAX_PADDING = 1.2
"""Multiply every padded position (and slice) while they are at most this many times the
input's positions, else multiply the real samples only (and spread): measured, dense 3x3 at
56x56 (1.07) slices 1.2-1.3x faster, at 14x14 (1.31) and dilated d = 2, 4 at 28x28 (1.31,
1.65) spreading is 1.1-1.4x faster."""


def spreads(spec: ConvSpec) -> bool:
    """True if scatter multiplies only the real samples and spreads the products (lhs
    dilation, or padding past `SLICE_MAX_PADDING`), False if it slices padded positions."""
    return any(s > 1 for s in spec.lhs_dilation) or (
        math.prod(spec.padded_in) > SLICE_MAX_PADDING * math.prod(spec.in_spatial))


def _products(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
    flipped: bool,
) -> jax.Array:
    """``(N, *positions, C), (*window, Cg, F) -> (N, *positions, prod(window), F)``: every
    position times every tap, one matrix product (an einsum per group with groups); where
    `flipped` (one group), `w` is ``(*window, F, C)`` with its taps reversed, as are the
    products, reversed back here (XLA fuses that into the slices that read them)."""
    taps, g, cg = spec.taps, spec.feature_group_count, spec.group_in_features
    if flipped:
        y = lax.dot_general(x.reshape(-1, cg), w.reshape(taps * spec.out_features, cg),
                            (((1,), (1,)), ((), ())), precision=precision,
                            preferred_element_type=acc_dtype)
        return y.reshape(*x.shape[:-1], taps, spec.out_features)[..., ::-1, :]
    wg = group_kernel(spec, w).reshape(taps, cg, g, -1)  # (K, Cg, G, Fq)
    if g == 1:  # one matrix product, no transposes of the input
        y = jnp.matmul(x.reshape(-1, cg), jnp.moveaxis(wg, 0, 1).reshape(cg, -1),
                       precision=precision, preferred_element_type=acc_dtype)
    else:
        xg = group_input(spec, x)[0].reshape(-1, g, cg)  # (M, G, Cg)
        y = jnp.einsum("MGC,KCGF->MKGF", xg, wg, precision=precision,
                       preferred_element_type=acc_dtype)
    return y.reshape(*x.shape[:-1], taps, spec.out_features)


def _sliced(
    spec: ConvSpec,
    xp: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
    flipped: bool,
) -> jax.Array:
    """``(N, *padded, C), (*window, Cg, F) -> (N, *out, F)`` without lhs dilation: tap ``k``'s
    products at ``o + k*d``, summed (padding zeros give zero products: no bounds checks)."""
    y = _products(spec, xp, w, precision=precision, acc_dtype=acc_dtype,
                  flipped=flipped)
    return functools.reduce(
        jnp.add, (window_slice(spec, y[..., t, :], k) for t, k in enumerate(offsets(spec))))


def _spread_out(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
    flipped: bool,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N, *out, F)``: the real samples' products, each
    tap's spread onto the outputs it reaches (`_spread`) and summed."""
    y = _products(spec, x, w, precision=precision, acc_dtype=acc_dtype,
                  flipped=flipped)
    zero = jnp.zeros((), acc_dtype)
    acc = jnp.zeros((spec.batch, *spec.out_spatial, spec.out_features), acc_dtype)
    for t, k in enumerate(offsets(spec)):
        config = _spread(spec, k)
        if config is not None:
            acc = acc + lax.pad(y[..., t, :], zero, [(0, 0, 0), *config, (0, 0, 0)])
    return acc


def _spread(spec: ConvSpec, k: tuple[int, ...]) -> list[tuple[int, int, int]] | None:
    """Per spatial axis the `lax.pad` config putting tap ``k``'s products on the outputs they
    reach (``o = lo + s*i - k*d``); None if they reach none (or there are no samples: an
    empty axis that padding alone gives outputs)."""
    config = []
    for (lo, _), s, d, i, o, ki in zip(spec.padding, spec.lhs_dilation, spec.rhs_dilation,
                                       spec.in_spatial, spec.out_spatial, k, strict=True):
        first = lo - ki * d  # output of the first sample
        last = first + s * (i - 1)
        if i == 0 or last < 0 or first >= o:
            return None
        config.append((first, o - last - 1, s - 1))
    return config


def cost_of(geo: Geometry, spread: Expr = 0) -> Cost:
    """FLOPs ``2 * N * prod(positions) * C_g * prod(window) * F``: a multiply and an add for
    every position, tap and channel (products that fall off the output included); the
    positions are the padded input's, or the real samples ``prod(in)`` where ``spread`` is 1
    (`spreads`). Temp: the products ``Y``, written once and read once by the fused sum (none
    when ``Y`` is the output itself, one tap and no padding, or when with one input channel
    per group XLA fuses the broadcast products into the sum, up to `FUSED_DEPTHWISE_TAPS`)
    and, unless spread, the padded input."""
    positions = spread * sp.Mul(*geo.inp) + (1 - spread) * sp.Mul(*geo.padded)
    products = geo.n * positions * geo.taps * geo.g * geo.fq
    fused = geo.depthwise and geo.taps <= FUSED_DEPTHWISE_TAPS
    temp = (0 if fused else geo.copies_window * products) + (
        (1 - spread) * geo.pad * geo.in_elems)
    return make_cost(
        flops=2 * products * geo.cg,
        temp_elems=temp,
        moved_elems=temp + geo.out_elems,
        geo=geo,
    )


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of scatter for ``spec`` (see `cost_of`); over batch chunks (`batch_chunk`, each
    padded in the loop when it slices) its temporaries scale with the chunk."""
    spread = spreads(spec)
    return chunked_cost(spec, dtype, lambda geo: cost_of(geo, int(spread)))


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols`, with ``spread`` a 0/1 symbol."""
    spread = sp.Symbol("spread", integer=True, nonnegative=True)
    return cost_of(Geometry.symbols(num_spatial), spread)


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """One GEMM of depth ``C_g`` and width ``prod(window) * F_g`` and the fused sum, slower
    past `SLOW_TAPS` taps; `NEVER` with groups. Its own transpose runs only on
    single-channel inputs (the engine computes the gradients of the others itself,
    `jconv._gradients`), where it measured 1.3-3.2x the best lowering's gradients at few
    channels: never planned differentiated there."""
    if spec.groups > 1:
        return NEVER
    flops, _, moved = cost(spec, dtype).evaluate()
    scale = math.sqrt(max(1.0, spec.taps / SLOW_TAPS))
    rate = gemm_rate(spec.group_in_features, spec.taps * spec.group_out_features)
    p = Prediction.scaled(scale * flops / rate, scale * copy_seconds(moved),
                          BACKWARD, BACKWARD_COPY)
    if spec.group_in_features == 1:
        return Prediction(p.arithmetic, p.copies, math.inf)
    return p
