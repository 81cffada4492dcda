"""Direct multiply-adds: every tap and input channel as a broadcast product, no dot.

``out[n, o, g, m] = sum_k sum_c xp[n, o*s + k*d, g, c] * w[k, c, g, m]`` written as
``prod(window) * C_g`` elementwise multiply-adds that XLA fuses into one loop over the
output: no slice, no product is stored. Its autodiff, however, keeps output-sized buffers
per term (measured: 2*terms+1 outputs per layer), so the planner uses it for
undifferentiated calls over few input channels per group only (thin groups, ``1 < C_g <=
MAX_PLANNED_CG``, and dense layers over RGB images or a few feature maps, ``1 < C <=
MAX_PLANNED_DENSE_C``, or ``MAX_PLANNED_VECTOR_C`` into one vector of features), where a dot
would have a contraction of size ``C_g`` and could not use the matrix units anyway
(depthwise convolutions, ``C_g = 1``, are planned on `shift`'s fused path instead).
"""

from __future__ import annotations

import dataclasses

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
from ._model import NEVER, Prediction, elementwise_seconds

AUTO = True
"""`strategy="auto"` may pick the direct lowering (few input channels per group, `predict`)."""
ACCURACY = "summation"
"""Rounding error of summing the taps in the accumulation dtype (lax's class on the CPU;
exact on small-integer data)."""
TRANSFORMS_KERNEL = False
"""The kernel is read as it is (`jconv.strategies`)."""
DIFFERENTIATED = False
"""`auto` never runs it for a differentiated call's values (`jconv.planner`): its output is
one elementwise loop, which XLA fuses into the output's consumers and computes again there.
3x3 over 8 x 28 x 28 x 256 in 32 groups, one step pulling back ``y - t``: followed by a
ReLU and a 3x3 layer to 64 channels on Winograd, 58 ms against 46 with Winograd's values.
The input gradient, a convolution of the cotangent, does run here (planned
undifferentiated): its windows all read the padded cotangent, stored once (`reaching`);
the step without the next layer takes 34-39 ms (100 ms while one window read the
cotangent's producer; 55 with Winograd throughout)."""

MAX_PLANNED_CG = 8
"""Largest ``C_g`` the planner considers for more than one group: autodiff stores a product
per term."""
MAX_PLANNED_DENSE_C = 4
"""Largest input channel count the planner considers for one group at any output width.
Forward, against the other lowerings timed beside it (2-core x86, alternating): over 2-4
channels 0.21-1.04x on 14 layers (3x3 over 128 x 32 x 32 x 3 to 16: 1.1 ms against 3.5)."""
MAX_PLANNED_VECTOR_C = 8
"""Largest input channel count the planner considers for one group whose outputs fill at
most one vector (``F <= VECTOR_BYTES / itemsize``). 3x3, forward, against the planner's
pick without it (fastest samples, alternating, 2-core x86): 0.43-0.94x where ``F <= 8``
on 11 layers (8 -> 8 over 128 x 32 x 32: 2.6 ms against scatter's 5.2; 8 -> 8 over 1 x 330
x 330: 2.2 against Winograd's 3.1; 5 -> 8 over 4 x 64 x 64: 0.33 against 0.77), and
1.0-1.7x where ``F`` spans two vectors or more (8 -> 12: 1.12, 8 -> 16: 1.00-1.31, 8 -> 32:
1.72), which the other lowerings' predictions at ``C_g <= 8`` do not tell apart."""
VECTOR_BYTES = 32
"""Bytes of one vector register (x86 AVX2, the CPUs measured). XLA's fused loop computes the
output features a vector at a time: 8 -> 4 channels take what 8 -> 8 do (0.64 ms against
0.75 over 8 x 56 x 56), so `predict` counts the features rounded up to whole vectors."""
BACKWARD = 17.0
"""Gradients over the forward's predicted arithmetic: autodiff keeps a buffer per term."""
BACKWARD_COPY = 17.0
"""Gradients over the forward's predicted copies (none are predicted)."""
UNROLL_BASE = 0.45
UNROLL_PER_TERM = 0.006
"""The predicted time per multiply-add, on the elementwise rate, is ``UNROLL_BASE +
UNROLL_PER_TERM * terms``: the more terms the loop unrolls (each reads another input
element), the slower each. Measured over 26 dense and grouped layers on the CPU, on the
scale of the other lowerings' predictions: 0.6 at 27 terms (3x3 over 3 channels), about 1
at 72 (3x3 over 8), 1.5-2 at 216 (3x3x3 over 8)."""
MAX_TERMS = 512
"""Largest ``prod(window) * C_g`` this lowering unrolls (the traced graph grows with it)."""


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
    """Why the direct lowering cannot run ``spec``, or None."""
    terms = spec.taps * spec.group_in_features
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
    """``(N, *in, C), (*window, Cg, F) -> (N_out, *out, F)`` by fused multiply-adds, over
    the padding `reaching` (the extra outputs cropped)."""
    del precision  # elementwise products are exact in the accumulation dtype
    out = spec.canonical_out_shape
    spec = reaching(spec)
    xp = pad_input(spec, x)
    wg = group_kernel(spec, w).astype(acc_dtype)  # (*window, Cg, B, G, Fq)
    lead = (1,) * (1 + spec.num_spatial)
    acc = jnp.zeros((*spec.canonical_out_shape[:-1], *wg.shape[-3:]), acc_dtype)
    for k in offsets(spec):
        xs = group_input(spec, window_slice(spec, xp, k)).astype(acc_dtype)  # (B, Nb, *o, G, Cg)
        xs = jnp.moveaxis(xs, 0, -3)  # (Nb, *o, B, G, Cg)
        for c in range(xs.shape[-1]):
            acc = acc + xs[..., c, None] * wg[k][c].reshape(*lead, *wg.shape[-3:])
    return lax.slice(acc.reshape(*acc.shape[:-3], spec.out_features), (0,) * len(out), out)


def reaching(spec: ConvSpec) -> ConvSpec:
    """`spec` with its leading spatial axis padded further on the high side, for as many more
    outputs as it takes for every tap's window to reach into the padding.

    XLA turns a window slice that lies inside the unpadded input into a slice of the input
    itself, so the input's producer (a ReLU, the ``y - t`` of a training step's cotangent)
    is computed again inside the fused loop, which then runs scalar: 3x3 over
    8 x 28 x 28 x 256 in 32 groups, 44 ms behind a ReLU against 7 ms on a stored input. With
    every window reaching the padding, the padded input is the loop's only read of ``x``.
    """
    if not spec.num_spatial:
        return spec
    (lo, hi), *rest = spec.padding
    d, s = spec.rhs_dilation[0], spec.window_strides[0]
    first = max(0, -(-lo // d))  # the first tap whose window starts inside the input
    if first >= spec.window[0]:
        return spec
    # its last window position must pass the input's end (lo + dilated_in)
    more = -(-(lo + spec.dilated_in[0] - first * d) // s) - spec.out_spatial[0] + 1
    if more <= 0:
        return spec
    return dataclasses.replace(spec, padding=((lo, hi + more * s), *rest))


def cost_of(geo: Geometry) -> Cost:
    """FLOPs ``2*MACs``; temp: the padded input only, which every window reads (`reaching`:
    stored even where the spec does not pad; its few extra rows are not counted)."""
    return make_cost(
        flops=2 * geo.macs,
        temp_elems=geo.in_elems,
        moved_elems=geo.in_elems + geo.out_elems,
        geo=geo,
    )


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of the direct lowering for ``spec`` (see `cost_of`)."""
    return cost_of(Geometry.from_spec(spec, dtype))


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols`."""
    return cost_of(Geometry.symbols(num_spatial))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """Fused multiply-adds at the elementwise rate over the output features rounded up to
    whole vectors (`VECTOR_BYTES`), slower the more terms the loop unrolls
    (`UNROLL_PER_TERM`), for few input channels per group (``1 < C_g <= MAX_PLANNED_CG``
    in groups; in one, ``1 < C <= MAX_PLANNED_DENSE_C``, or ``<= MAX_PLANNED_VECTOR_C``
    into one vector of features); `NEVER` otherwise."""
    lanes = VECTOR_BYTES // jnp.dtype(dtype).itemsize
    f = spec.out_features
    most = (MAX_PLANNED_CG if spec.groups > 1 else
            MAX_PLANNED_VECTOR_C if f <= lanes else MAX_PLANNED_DENSE_C)
    if not 1 < spec.group_in_features <= most:
        return NEVER
    terms = spec.taps * spec.group_in_features
    whole_vectors = -(-f // lanes) * lanes / f
    seconds = elementwise_seconds(float(cost(spec, dtype).flops) * whole_vectors)
    return Prediction.scaled(seconds * (UNROLL_BASE + UNROLL_PER_TERM * terms), 0.0,
                             BACKWARD, BACKWARD_COPY)
