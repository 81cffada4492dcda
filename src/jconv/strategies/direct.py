"""Direct multiply-adds: every tap and input channel as a broadcast product, no dot.

``out[n, o, g, m] = sum_k sum_c xp[n, o*s + k*d, g, c] * w[k, c, g, m]`` written as
``prod(window) * C_g`` elementwise multiply-adds that XLA fuses into one loop over the
output: no slice, no product is stored. Its autodiff, however, keeps output-sized
buffers per term (measured: 2*terms+1 outputs per layer), so the planner uses it for
thin groups only (``1 < C_g <= MAX_PLANNED_CG``), where a dot would have a contraction of
size ``C_g`` and could not use the matrix units anyway (depthwise convolutions, ``C_g = 1``,
are planned on `shift`'s fused path instead).
"""

from __future__ import annotations

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
"""`strategy="auto"` may pick the direct lowering (for thin groups, `predict`)."""
ACCURACY = "summation"
"""Rounding error of summing the taps in the accumulation dtype (lax's class on the CPU;
exact on small-integer data)."""
TRANSFORMS_KERNEL = False
"""The kernel is read as it is (`jconv.strategies`)."""
DIFFERENTIATED = False
"""`auto` never runs it for a differentiated call's values (`jconv.planner`): its output is
one elementwise loop, which XLA fuses into each of the output's consumers and computes
again there. A training step's cotangent reads the output (``y - t``, a ReLU's mask), and
3x3 over 8 x 28 x 28 x 256 in 32 groups took 677 ms a step with the squared error's
cotangent and 139 ms behind a ReLU, against 35 ms with a cotangent independent of ``y``;
with Winograd's values, 94-114 ms. The input gradient, a convolution of that cotangent,
still runs here (planned undifferentiated): XLA computes the cotangent's producer again in
each of its reads (forced Winograd throughout: 47 ms), but planned elsewhere 2-channel
groups took 166 ms against 35."""

MAX_PLANNED_CG = 8
"""Largest ``C_g`` the planner considers: autodiff stores a product per term."""
BACKWARD = 17.0
"""Gradients over the forward's predicted arithmetic: autodiff keeps a buffer per term."""
BACKWARD_COPY = 17.0
"""Gradients over the forward's predicted copies (none are predicted)."""
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


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of the direct lowering for ``spec`` (see `cost_of`)."""
    return cost_of(Geometry.from_spec(spec, dtype))


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols`."""
    return cost_of(Geometry.symbols(num_spatial))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """Fused multiply-adds at the elementwise rate for thin groups (``1 < C_g <=
    MAX_PLANNED_CG``, more than one group); `NEVER` otherwise."""
    if not (spec.groups > 1 and 1 < spec.group_in_features <= MAX_PLANNED_CG):
        return NEVER
    flops = float(cost(spec, dtype).flops)
    return Prediction.scaled(elementwise_seconds(flops), 0.0, BACKWARD, BACKWARD_COPY)
