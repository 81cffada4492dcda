"""Shift-and-sum: one channel contraction per kernel offset, accumulated.

``out[n, o, f] = sum_k sum_c xp[n, o*s + k*d, c] * w[k, c, f]``: the outer sum is a Python
loop over the ``prod(window)`` offsets (unrolled at trace time), the inner one an einsum
(a single matrix product without groups). XLA copies each strided window slice, runs one
dot per offset and adds the ``prod(window)`` products in one fused loop at the end, so
they are all alive at once: that is the temporary memory. With one input channel per group
(depthwise) the products are broadcast multiplies fused into that sum (on copies one cache
line wider where the kernel is large, `_line_padded`); the kernel's tangent is a loop over
the offsets (`_depthwise_loop`), so that its transpose, the kernel gradient, keeps one
window slice alive at a time, and the input gradient is a fused correlation like the
forward (`_input_tangent`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from .._sharding import transposed, vary_like
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
    pad_input,
    ungroup_output,
    window_slice,
)
from ._model import Prediction, copy_seconds, elementwise_seconds, gemm_rate

AUTO = True
"""`strategy="auto"` may pick shift-and-sum."""
ACCURACY = "summation"
"""Rounding error of summing the taps in the accumulation dtype (lax's class on the CPU;
exact on small-integer data)."""
TRANSFORMS_KERNEL = True
"""The kernel is copied, sliced per offset for the GEMMs (`jconv.strategies`)."""
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

BACKWARD = 0.5
"""Gradients over the forward's predicted arithmetic: two GEMMs per tap, transposed."""
BACKWARD_COPY = 0.5
"""Gradients over the forward's predicted copies (each slice becomes a pad of the cotangent)."""
FUSED_DEPTHWISE_SPEEDUP = 2.5
"""Depthwise products fuse into one loop: that many times the elementwise rate."""
BACKWARD_DEPTHWISE = 4.0
"""Depthwise gradients over the forward's time: the kernel gradient copies and reduces one
window slice per tap, in a loop, where the forward fused everything into one loop; the
input gradient is one fused correlation like the forward (`_input_tangent`). Measured (a
layer's step less its forward, over the forward; 2-core x86): 2.2-4.7x on 3x3-7x7 over
128-672 channels, 8.4x on 3x3 over 32 channels at 112 x 112."""


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
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
        return _depthwise(spec, jnp.dtype(acc_dtype), xp, w)
    wg = group_kernel(spec, w)
    terms = [
        contract(spec, group_input(spec, window_slice(spec, xp, k)), wg[k], "",
                 precision=precision, acc_dtype=acc_dtype)
        for k in offsets(spec)
    ]
    return ungroup_output(spec, functools.reduce(jnp.add, terms))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _depthwise(spec: ConvSpec, acc_dtype: jnp.dtype, xp: jax.Array, w: jax.Array) -> jax.Array:
    """``(N, *padded, C), (*window, 1, F) -> (N, *out, F)`` with one input channel per group:
    the per-offset products summed in one fused loop (`_depthwise_sum`), on line-padded
    copies where the kernel is large (`_line_padded`). Differentiated, the
    kernel's tangent is `_depthwise_loop`, the input's `_input_tangent` (`_depthwise_jvp`)."""
    return _depthwise_sum(spec, *_line_padded(spec, xp, w), acc_dtype)


def _depthwise_sum(spec: ConvSpec, xp: jax.Array, w: jax.Array, acc_dtype: jnp.dtype) -> jax.Array:
    """``(N, *padded, C'), (*window, 1, F') -> (N, *out, F)``: one broadcast product per
    offset, all added at once (XLA fuses them into one loop). Channels past ``C`` and ``F``
    (`_line_padded`'s) are never read."""
    c, f = spec.in_features, spec.out_features
    terms = [_depthwise_product(spec, window_slice(spec, xp, k)[..., :c], w[k][0][:f], acc_dtype)
             for k in offsets(spec)]
    return functools.reduce(jnp.add, terms)


LINE_BYTES = 64
"""A cache line: the channels `_line_padded` adds."""
LINE_PAD_KERNEL_BYTES = 20 * 2**10
"""Depthwise kernels of more bytes are line-padded (`_line_padded`). The loop reads the
whole kernel and as many bytes of input window for each output pixel; past 20 KiB the two
outgrow a 32 KiB L1 cache. Measured (2-core x86, forward, shift's time padded over unpadded,
the median of four heap layouts): kernels of 24-25 KiB 0.68-0.75 (5x5 over 256 channels,
7x7 over 128), of 12-20 KiB 0.78-1.10 (3x3 over 512 and 576, 5x5 over 160 and 192, 7x7
over 96), of 4-9 KiB 0.80-1.14."""
LINE_PADDED_PLATFORMS = ("cpu",)
"""Where `_line_padded` pads: XLA's CPU loops."""


def _line_padded(spec: ConvSpec, xp: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(N, *padded, C), (*window, 1, F) -> (N, *padded, C'), (*window, 1, F')``: copies
    with one cache line of zero channels more, where the kernel holds more than
    `LINE_PAD_KERNEL_BYTES` (on `LINE_PADDED_PLATFORMS`); else ``xp`` and ``w``.

    XLA's fused loop reads every offset's kernel row and input window for each output
    vector. Once they outgrow L1 those reads come from L2, and with a power-of-two channel
    count the offsets' rows lie a multiple of 1 KiB apart and contend for a few cache sets;
    the line breaks that stride. Measured (2-core x86, forward, SAME, stride 1, ms): 7x7
    over 8 x 28 x 28 x 256 10.8 -> 3.6; 5x5 over 8 x 14 x 14 x 512 3.2 -> 0.9 and over
    8 x 7 x 7 x 1024 3.1 -> 0.5; 7x7 over 8 x 14 x 14 x 384 2.2 -> 1.3; 5x5 over 8 x 14 x 14
    x 672 and 8 x 7 x 7 x 1152 unchanged (1.2, 0.6). Each copy sits behind an optimization
    barrier, else XLA folds the slice of the padding back onto the unpadded operand."""
    line = line_padding(spec.taps, w.shape[-1], w.dtype.itemsize)
    if not line:
        return xp, w

    def padded(a: jax.Array) -> jax.Array:
        return lax.optimization_barrier(jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, line)]))

    return padded(xp), padded(w)


def line_padding(taps: int, features: int, itemsize: int) -> int:
    """Channels `_line_padded` adds to a depthwise kernel of ``taps`` offsets over
    ``features`` channels of ``itemsize`` bytes (and to its input): one `LINE_BYTES` line
    past `LINE_PAD_KERNEL_BYTES` on `LINE_PADDED_PLATFORMS`, else 0."""
    if (taps * features * itemsize <= LINE_PAD_KERNEL_BYTES
            or jax.default_backend() not in LINE_PADDED_PLATFORMS):
        return 0
    return max(1, LINE_BYTES // itemsize)


def _depthwise_loop(spec: ConvSpec, xp: jax.Array, w: jax.Array, acc_dtype: jnp.dtype) -> jax.Array:
    """`_depthwise_sum` as a `lax.scan` over the offsets with a rematerialised body: its
    transpose, the kernel gradient, copies one window slice per step and reduces it with
    the cotangent, the steps sharing one buffer. Transposing the fused sum instead makes XLA
    copy every offset's slice before reducing it and keep all the copies alive (depthwise
    5x5, C = 256, 28x28, batch 8: 154 MB of temporaries, 38,000 page faults and 56 ms per
    forward+backward; this way 15 MB, none, 26-37 ms)."""
    ks = jnp.asarray(list(offsets(spec)), jnp.int32)
    out = vary_like(jnp.zeros((xp.shape[0], *spec.out_spatial, spec.out_features), acc_dtype),
                    xp, w)  # inside shard_map, the carry varies as the body's sum does

    @jax.checkpoint
    def step(acc: jax.Array, kw: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        k, wk = kw
        return acc + _depthwise_product(spec, window_slice(spec, xp, k), wk, acc_dtype), None

    return lax.scan(step, out, (ks, w.reshape(len(ks), -1)))[0]


def _depthwise_jvp(
    spec: ConvSpec,
    acc_dtype: jnp.dtype,
    primals: tuple[jax.Array, jax.Array],
    tangents: tuple[Any, Any],
) -> tuple[jax.Array, jax.Array]:
    """Values as `_depthwise`; the tangent ``conv(dx, w) + conv(x, dw)`` (bilinear), the
    input's term by `_input_tangent`, the kernel's by `_depthwise_loop`. Symbolic-zero
    tangents are skipped."""
    xp, w = primals
    dxp, dw = tangents
    y = _depthwise_sum(spec, *_line_padded(spec, xp, w), acc_dtype)
    terms = []
    if not isinstance(dxp, SymbolicZero):
        terms.append(_input_tangent(spec, acc_dtype, w, dxp))
    if not isinstance(dw, SymbolicZero):
        terms.append(_depthwise_loop(spec, xp, dw, acc_dtype))
    return y, functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(y)


def _input_tangent(spec: ConvSpec, acc_dtype: jnp.dtype, w: jax.Array, dxp: jax.Array
                   ) -> jax.Array:
    """``(*window, 1, F), (N, *padded, C) -> (N, *out, F)``: ``conv(dxp, w)``. With one
    output channel per input channel, as the transpose of the input gradient: reverse mode
    then runs that gradient as a correlation of the cotangent, padded, with the flipped
    kernel (`ConvSpec.input_gradient`; line-padded like the forward, `_line_padded`).
    Transposing ``conv(dxp, w)`` itself sums one padded product per offset, each reading
    the cotangent with bounds tests. Measured (2-core x86, input gradient alone, ms; SAME):
    3x3 over 8 x 56 x 56 x 128 4.6 -> 1.9, over 8 x 112 x 112 x 32 4.8 -> 1.8 (stride 2:
    4.0 -> 1.2); 5x5 over 8 x 28 x 28 x 256 8.0 -> 3.4; 7x7 32.6 -> 3.7; 3x3 over 8 x 14 x
    14 x 1024 1.2 -> 1.1. With a channel multiplier the gradient is no longer depthwise:
    the plain transpose."""
    if spec.group_out_features != 1:
        return _depthwise_sum(spec, dxp, w, acc_dtype)
    n = spec.num_spatial
    valid = dataclasses.replace(spec, lhs_shape=dxp.shape, padding=((0, 0),) * n,
                                lhs_dilation=(1,) * n)  # the padded input's VALID convolution
    grad, kernel = valid.input_gradient(), valid.flip_kernel(w)

    def gradient(ct: jax.Array) -> jax.Array:
        return _depthwise_sum(grad, *_line_padded(grad, pad_input(grad, ct), kernel), acc_dtype)

    return transposed(gradient, valid.canonical_out_shape, acc_dtype, dxp.astype(acc_dtype))


_depthwise.defjvp(_depthwise_jvp, symbolic_zeros=True)


def _depthwise_product(
    spec: ConvSpec, xs: jax.Array, wk: jax.Array, acc_dtype: jnp.dtype
) -> jax.Array:
    """``(N, *out, C), (F,) -> (N, *out, F)`` with one input channel per group: a broadcast
    product (input channel ``g`` feeds outputs ``g*Fq .. g*Fq + Fq - 1``), which XLA fuses
    with the sum over offsets and whose transposes are fused reductions, not dots. Kept in
    the plain layout: in the grouped one (unit axes for B and Cg) XLA's gradients took twice
    as long."""
    fq = spec.group_out_features
    xs = xs.astype(acc_dtype)
    if fq > 1:
        xs = jnp.repeat(xs, fq, axis=-1)
    return xs * wk.astype(acc_dtype).reshape((1,) * (xs.ndim - 1) + (-1,))


def cost_of(geo: Geometry) -> Cost:
    """FLOPs ``2*MACs`` (the adds of the products included). Temp, as XLA schedules it:
    the padded input and, with more than one tap, one output-sized product per offset (all
    live until the fused final sum); with one input channel per group (depthwise) XLA fuses
    the products into the sum, leaving the padded input only, or `_line_padded`'s copies of
    the input and the kernel."""
    slice_elems = geo.out_pixels * geo.g * geo.cg
    several = 0 if all(k == 1 for k in geo.window) else 1
    products = 0 if geo.depthwise else several * geo.taps * geo.out_elems
    padded = geo.pad * geo.in_elems
    line = line_padding(geo.taps, geo.g * geo.fq, geo.itemsize) if geo.depthwise else 0
    if line:  # `_line_padded`'s copies
        channels = geo.g * geo.cg
        padded = geo.in_elems * (channels + line) / channels + geo.taps * (geo.g * geo.fq + line)
    return make_cost(
        flops=2 * geo.macs,
        temp_elems=padded + products,
        moved_elems=padded + geo.copies_window * geo.taps * slice_elems + products,
        geo=geo,
    )


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of shift-and-sum for ``spec`` (see `cost_of`); when it runs over batch chunks
    (`batch_chunk`, each padded in the loop), its temporaries scale with the chunk."""
    return chunked_cost(spec, dtype, cost_of)


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols` (a dense, not depthwise, spec)."""
    return cost_of(Geometry.symbols(num_spatial))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """One GEMM of depth ``C_g`` and width ``F_g`` per tap, and the slices' copies; depthwise,
    fused elementwise products (`FUSED_DEPTHWISE_SPEEDUP`) and `BACKWARD_DEPTHWISE`."""
    flops, _, moved = cost(spec, dtype).evaluate()
    if spec.depthwise:
        arith = elementwise_seconds(flops) / FUSED_DEPTHWISE_SPEEDUP
        return Prediction(arith, 0.0, BACKWARD_DEPTHWISE * arith)
    rate = gemm_rate(spec.group_in_features, spec.group_out_features)
    return Prediction.scaled(flops / rate, copy_seconds(moved), BACKWARD, BACKWARD_COPY)
