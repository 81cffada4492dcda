"""Patches (im2col): the window slices concatenated on the channel axis, one contraction.

``P[n, o, (k, c)] = xp[n, o*s + k*d, c]``; ``out[n, o, f] = sum_{k, c} P[n, o, (k, c)]
w[k, c, f]``. Without groups the slices are concatenated on the last axis so that ``P``
is already the ``(N * prod(out), prod(window) * C)`` matrix of one GEMM (no transpose);
with groups they are stacked before the per-group channel axis. Temporary memory is the
patches tensor, ``prod(window)`` times one slice.
"""

from __future__ import annotations

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
from ._model import Prediction, copy_seconds, gemm_rate

AUTO = True
"""`strategy="auto"` may pick patches."""
ACCURACY = "summation"
"""Rounding error of summing the taps in the accumulation dtype (lax's class on the CPU;
exact on small-integer data)."""
TRANSFORMS_KERNEL = False
"""The kernel is read as it is (`jconv.strategies`)."""
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

OVERHEAD = 1.5
"""Predicted time over the cost at the model's rates: XLA's CPU backend writes the
concatenation of the slices at a fraction of memory bandwidth."""
BACKWARD = 2.0
"""Gradients over the forward's predicted arithmetic: two GEMMs of the forward's size on the
patches it built. Its own transposes run for single-channel convolutions only (dense ones
take the engine's, depthwise ones plan shift); on a raw-audio stem (80 taps, stride 4)
they measured about 4x its forward."""
BACKWARD_COPY = 2.0
"""Gradients over the forward's predicted copies: the patches' adjoint adds them back."""


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
    """None: patches handles every convolution."""
    return None


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N_out, *out, F)`` by one patches einsum
    (per batch chunk when the patches are big, see `batch_chunk`)."""
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
    """``(N, *padded, C), (*window, Cg, F) -> (N_out, *out, F)`` by one patches einsum."""
    slices = [window_slice(spec, xp, k) for k in offsets(spec)]
    if spec.groups == 1:
        p = jnp.concatenate(slices, axis=-1)  # (N, *out, K*C)
        y = contract(spec, p[None, ..., None, :], w, "", precision=precision,
                     acc_dtype=acc_dtype)
        return ungroup_output(spec, y)
    pg = jnp.stack([group_input(spec, s) for s in slices], axis=-3)  # (B, Nb, *out, K, G, Cg)
    wg = group_kernel(spec, w.reshape(spec.taps, *w.shape[-2:]))
    y = contract(spec, pg, wg, "K", precision=precision, acc_dtype=acc_dtype)
    return ungroup_output(spec, y)


def cost_of(geo: Geometry) -> Cost:
    """FLOPs ``2*MACs``. Temp, as XLA schedules it: the patches tensor; in 1-D the slices
    fuse into the concatenation and the padded input stays live beside it, in 2-D and up
    the slices are copied first and all but one are live with the patches."""
    slice_elems = geo.out_pixels * geo.g * geo.cg
    patches = geo.copies_window * geo.taps * slice_elems
    if geo.num_spatial == 1:
        temp = geo.pad * geo.in_elems + patches
    else:
        temp = patches + geo.copies_window * (geo.taps - 1) * slice_elems
    return make_cost(
        flops=2 * geo.macs,
        temp_elems=temp,
        moved_elems=geo.pad * geo.in_elems + 2 * patches + geo.out_elems,
        geo=geo,
    )


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of the patches lowering for ``spec`` (see `cost_of`); when it runs over batch
    chunks (each padded in the loop), its temporaries scale with the chunk."""
    return chunked_cost(spec, dtype, cost_of)


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols`."""
    return cost_of(Geometry.symbols(num_spatial))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """One GEMM of depth ``prod(window) * C_g`` and width ``F_g``, and the patches' copies,
    both times `OVERHEAD`."""
    flops, _, moved = cost(spec, dtype).evaluate()
    rate = gemm_rate(spec.taps * spec.group_in_features, spec.group_out_features)
    return Prediction.scaled(OVERHEAD * flops / rate, OVERHEAD * copy_seconds(moved),
                             BACKWARD, BACKWARD_COPY)
