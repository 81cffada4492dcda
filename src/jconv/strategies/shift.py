"""Shift-and-sum: one channel contraction per kernel offset, accumulated.

``out[n, o, f] = sum_k sum_c xp[n, o*s + k*d, c] * w[k, c, f]``: the outer sum is a Python
loop over the ``prod(window)`` offsets (unrolled at trace time), the inner one an einsum.
Temporary memory is one output-sized accumulator; no patches tensor is built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._spec import ConvSpec
from ._common import contract, group_input, group_kernel, offsets, ungroup_output, window_slice


def lower(
    spec: ConvSpec, xp: jax.Array, w: jax.Array, *, precision: lax.PrecisionLike, acc_dtype: jnp.dtype
) -> jax.Array:
    """``(N, *padded, C), (*window, Cg, F) -> (N_out, *out, F)`` by shift-and-sum."""
    wg = group_kernel(spec, w)
    acc = jnp.zeros((*spec.canonical_out_shape[:-1], spec.batch_group_count,
                     spec.feature_group_count, spec.out_features // spec.groups), acc_dtype)
    for k in offsets(spec):
        xs = group_input(spec, window_slice(spec, xp, k))
        acc = acc + contract(spec, xs, wg[k], "", precision=precision, acc_dtype=acc_dtype)
    return ungroup_output(spec, acc)
