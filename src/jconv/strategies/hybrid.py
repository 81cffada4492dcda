"""Hybrid: patches along the last spatial axis, shift-and-sum along the others.

``P[n, p, o_last, (k_last, c)] = xp[n, p, o_last*s + k_last*d, c]`` (the ``k_last``
offsets concatenated on the channel axis, every leading position ``p`` kept); then
``out[n, o, f] = sum_{k_lead} P[n, o_lead*s + k_lead*d, o_last, :] @ w[k_lead]`` with one
contraction of depth ``k_last * C_g`` per leading offset. Temporary memory: the
row-patches tensor (``k_last`` times the input) and one product per leading offset.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import sympy as sp
from jax import lax

from .._spec import ConvSpec
from ._common import (
    Cost,
    Geometry,
    chunked_cost,
    contract,
    group_kernel,
    lower_chunked,
    make_cost,
    offsets,
    ungroup_output,
    window_slice,
)
from ._model import Prediction, copy_seconds, gemm_rate

AUTO = True
"""`strategy="auto"` may pick the hybrid."""
ACCURACY = "summation"
"""Rounding error of summing the taps in the accumulation dtype (lax's class on the CPU;
exact on small-integer data)."""
TRANSFORMS_KERNEL = True
"""The kernel is copied, sliced per leading offset for the GEMMs (`jconv.strategies`)."""
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

OVERHEAD_3D = 2.5
"""Predicted time over the cost at the model's rates for 3-D and up: nine copies of rows
three times wider than the input."""
BACKWARD = 2.0
"""Gradients over the forward's predicted arithmetic: two GEMMs per leading offset."""
BACKWARD_COPY = 0.6
"""Gradients over the forward's predicted copies."""
CHUNK_ABOVE_BYTES = 16 * 2**20
"""The hybrid runs over batch chunks (`_common.batch_chunk`) once its temp bytes exceed this,
half the other lowerings' bound: its row patches and slices are read several times over.
Measured against 32 MiB (2-core x86, forward, alternating with lax): 3x3/2 over 128 x 32 x
32 x 16 to 32 0.97 against 1.23 lax's, over 128 x 16 x 16 x 64 to 128 0.70 against 0.94,
over 8 x 56 x 56 x 64 to 128 0.67 against 0.80; 7x7/2 over 8 x 112 x 112 x 3 to 32 alike
(0.41, 0.40); forward and backward alike or 0.93-0.97x as long."""


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
    """Why the hybrid cannot run ``spec`` (no spatial dimension to take patches along), or
    None (in 1-D it is plain patches)."""
    if spec.num_spatial == 0:
        return "it needs at least one spatial dimension"
    return None


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N_out, *out, F)``: row patches, shifted."""
    return lower_chunked(spec, x, w, cost_of, lower_padded, precision=precision,
                         acc_dtype=acc_dtype, above=CHUNK_ABOVE_BYTES)


def lower_padded(
    spec: ConvSpec,
    xp: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *padded, C), (*window, Cg, F) -> (N_out, *out, F)``: row patches, shifted."""
    lead_none = (None,) * (spec.num_spatial - 1)
    kl = spec.window[-1]
    p = jnp.concatenate(
        [window_slice(spec, xp, (*lead_none, j)) for j in range(kl)], axis=-1
    )  # (N, *padded_lead, o_last, kl*C)
    b, g = spec.batch_group_count, spec.feature_group_count
    wg = group_kernel(spec, w)  # (*window, Cg, B, G, Fq)
    terms = []
    for k in sorted({k[:-1] for k in offsets(spec)}):
        sl = window_slice(spec, p, (*k, None))
        sl = sl.reshape(b, spec.batch // b, *spec.out_spatial, kl, g, spec.group_in_features)
        terms.append(contract(spec, sl, wg[k], "K", precision=precision, acc_dtype=acc_dtype))
    return ungroup_output(spec, functools.reduce(jnp.add, terms))


def cost_of(geo: Geometry) -> Cost:
    """FLOPs ``2*MACs``. Temp, as XLA schedules it: the row patches ``P`` and, in 2-D and
    up, one copied slice of ``P`` per leading offset (the products accumulate in place); in
    1-D (no leading axis) the padded input stays live beside ``P``."""
    kl = geo.window[-1]
    lead_taps = sp.Mul(*geo.window[:-1])
    rows = geo.copies_window * geo.n * sp.Mul(*geo.padded[:-1]) * geo.out[-1] * kl * geo.g * geo.cg
    slice_elems = geo.out_pixels * kl * geo.g * geo.cg
    if geo.num_spatial == 1:
        temp = geo.pad * geo.in_elems + rows
    else:
        temp = rows + geo.copies_window * lead_taps * slice_elems
    return make_cost(
        flops=2 * geo.macs,
        temp_elems=temp,
        moved_elems=geo.pad * geo.in_elems + rows + lead_taps * (slice_elems + geo.out_elems),
        geo=geo,
    )


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of the hybrid lowering for ``spec`` (see `cost_of`); when it runs over batch chunks
    (`batch_chunk`, each padded in the loop), its temporaries scale with the chunk."""
    return chunked_cost(spec, dtype, cost_of, CHUNK_ABOVE_BYTES)


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols`."""
    return cost_of(Geometry.symbols(num_spatial))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """One GEMM of depth ``k_last * C_g`` and width ``F_g`` per leading offset, and the row
    patches' copies (times `OVERHEAD_3D` in 3-D and up)."""
    flops, _, moved = cost(spec, dtype).evaluate()
    scale = OVERHEAD_3D if spec.num_spatial >= 3 else 1.0
    rate = gemm_rate(spec.window[-1] * spec.group_in_features, spec.group_out_features)
    return Prediction.scaled(scale * flops / rate, scale * copy_seconds(moved),
                             BACKWARD, BACKWARD_COPY)
