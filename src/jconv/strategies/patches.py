"""Patches (im2col): stack every kernel offset's window slice, contract in one einsum.

``P[n, o, k, c] = xp[n, o*s + k*d, c]``; ``out[n, o, f] = sum_{k, c} P[n, o, k, c] w[k, c, f]``.
Temporary memory is the patches tensor, ``prod(window)`` times the size of one slice.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from .._spec import ConvSpec
from ._common import contract, group_input, group_kernel, offsets, ungroup_output, window_slice


def lower(
    spec: ConvSpec, xp: jax.Array, w: jax.Array, *, precision: lax.PrecisionLike, acc_dtype: jnp.dtype
) -> jax.Array:
    """``(N, *padded, C), (*window, Cg, F) -> (N_out, *out, F)`` by one patches einsum."""
    p = jnp.stack([window_slice(spec, xp, k) for k in offsets(spec)], axis=-2)
    pg = group_input(spec, p)  # (B, Nb, *out, K, G, Cg)
    wg = group_kernel(spec, w.reshape(math.prod(spec.window), *w.shape[-2:]))
    y = contract(spec, pg, wg, "K", precision=precision, acc_dtype=acc_dtype)
    return ungroup_output(spec, y)
