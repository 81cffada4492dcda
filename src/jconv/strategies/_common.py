"""Shared pieces of the lowerings: window slices and the grouped channel contraction."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax import lax

from .._spec import ConvSpec


def offsets(spec: ConvSpec) -> Iterator[tuple[int, ...]]:
    """All kernel offsets ``k`` (tuples over spatial dims), row-major."""
    return itertools.product(*(range(k) for k in spec.window))


def window_slice(spec: ConvSpec, xp: jax.Array, k: tuple[int, ...]) -> jax.Array:
    """``xp[:, o*s + k*d, :]`` for every output position ``o``: shape ``(N, *out, C)``."""
    start = [0, *(ki * d for ki, d in zip(k, spec.rhs_dilation)), 0]
    limit = [
        xp.shape[0],
        *(ki * d + (o - 1) * s + 1 for ki, d, o, s in zip(
            k, spec.rhs_dilation, spec.out_spatial, spec.window_strides)),
        xp.shape[-1],
    ]
    return lax.slice(xp, start, limit, (1, *spec.window_strides, 1))


def group_input(spec: ConvSpec, x: jax.Array) -> jax.Array:
    """``(N, *sp, C) -> (B, N // B, *sp, G, C // G)`` for batch groups B, feature groups G."""
    b, g = spec.batch_group_count, spec.feature_group_count
    n, c = x.shape[0], x.shape[-1]
    return x.reshape(b, n // b, *x.shape[1:-1], g, c // g)


def group_kernel(spec: ConvSpec, w: jax.Array) -> jax.Array:
    """``(..., Cg, F) -> (..., Cg, B, G, F // (B*G))``: output features are group-major."""
    b, g = spec.batch_group_count, spec.feature_group_count
    f = w.shape[-1]
    return w.reshape(*w.shape[:-1], b, g, f // (b * g))


def ungroup_output(spec: ConvSpec, y: jax.Array) -> jax.Array:
    """``(N_out, *out, B, G, Fq) -> (N_out, *out, F)``."""
    return y.reshape(*y.shape[:-3], spec.out_features)


def spatial_letters(spec: ConvSpec) -> str:
    """One einsum letter per spatial dimension."""
    return "abdehijlmpqrtuvwxyz"[: spec.num_spatial]


def contract(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    extra: str,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """Sum over input channels (and the `extra` axes) of grouped input times grouped kernel.

    ``x``: ``(B, Nb, *out, *extra, G, Cg)``; ``w``: ``(*extra, Cg, B, G, Fq)``;
    returns ``(Nb, *out, B, G, Fq)``. Channels are **summed**, never averaged.
    """
    s = spatial_letters(spec)
    eq = f"BN{s}{extra}GC,{extra}CBGF->N{s}BGF"
    return jnp.einsum(eq, x, w, precision=precision, preferred_element_type=acc_dtype)
