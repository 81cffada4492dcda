"""Gradients of the VALID core convolution as einsum convolutions (a `jax.custom_vjp`).

For ``y[n, o, f] = sum_{k, c} xp[n, o*s + k*d, c] * w[k, c, f]`` (grouped):

- the input cotangent is a transposed convolution: the output cotangent ``g``,
  lhs-dilated by the strides and padded by ``d*(K-1)`` on both sides, correlated with the
  flipped kernel whose input and output feature axes are swapped (per group), at rhs
  dilation ``d``; it runs through the planner like any forward convolution;
- the weight cotangent is the correlation of the input with ``g``: for every kernel offset
  ``k``, ``dw[k, c, f] = sum_{n, o} xp[n, o*s + k*d, c] * g[n, o, f]``, one einsum per
  offset contracting over batch and output positions.

Both are exact (the same sums as reverse-mode autodiff, in another order); the tests compare
them with the gradients of `jax.lax.conv_general_dilated`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ._spec import ConvSpec
from .strategies import STRATEGIES
from .strategies._common import group_input, offsets, spatial_letters, window_slice

__all__ = ["CUSTOM_VJP", "lower"]

CUSTOM_VJP: frozenset[str] = frozenset()
"""Lowerings whose gradients use the einsum-convolution VJPs instead of autodiff. Empty:
a `jax.custom_vjp` cannot be differentiated in forward mode (`jax.jvp`, `jax.jacfwd`,
`check_grads(modes=("fwd",))`), which `conv_general_dilated` must support like lax."""


def lower(
    spec: ConvSpec,
    strategy: str,
    xp: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """Run lowering `strategy` on the padded canonical input, with einsum VJPs where they
    apply (floating dtypes, no batch groups, strategy in `CUSTOM_VJP`)."""
    floating = jnp.issubdtype(xp.dtype, jnp.floating)
    if strategy in CUSTOM_VJP and floating and spec.batch_group_count == 1:
        return _conv(xp, w, spec, strategy, precision, jnp.dtype(acc_dtype))
    return STRATEGIES[strategy].lower(spec, xp, w, precision=precision, acc_dtype=acc_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(
    xp: jax.Array,
    w: jax.Array,
    spec: ConvSpec,
    strategy: str,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    return STRATEGIES[strategy].lower(spec, xp, w, precision=precision, acc_dtype=acc_dtype)


def _conv_fwd(
    xp: jax.Array,
    w: jax.Array,
    spec: ConvSpec,
    strategy: str,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _conv(xp, w, spec, strategy, precision, acc_dtype), (xp, w)


def _conv_bwd(
    spec: ConvSpec,
    strategy: str,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
    res: tuple[jax.Array, jax.Array],
    g: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    xp, w = res
    dxp = input_cotangent(spec, w, g, precision=precision, acc_dtype=acc_dtype)
    dw = weight_cotangent(spec, xp, g, precision=precision, acc_dtype=acc_dtype)
    return dxp.astype(xp.dtype), dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def transposed_spec(spec: ConvSpec) -> ConvSpec:
    """The spec of the input-cotangent convolution: input ``g`` ``(N, *out, F)``, kernel
    ``(*window, F/G, C)``, lhs dilation = strides, pads ``d*(k-1)`` (+ the rows the forward
    never read on the high side), rhs dilation and feature groups as in ``spec``."""
    ns = spec.num_spatial
    letters = "".join(str(i) for i in range(ns))
    pads = []
    for o, s, e, p in zip(spec.out_spatial, spec.window_strides, spec.effective_window,
                          spec.padded_in, strict=True):
        pads.append((e - 1, e - 1 + p - ((o - 1) * s + e)))
    g = spec.feature_group_count
    return ConvSpec.from_lax(
        spec.canonical_out_shape,
        (*spec.window, spec.out_features // g, spec.in_features),
        (1,) * ns, pads, spec.window_strides, spec.rhs_dilation,
        (f"N{letters}C", f"{letters}IO", f"N{letters}C"), g,
    )


def input_cotangent(
    spec: ConvSpec, w: jax.Array, g: jax.Array, *, precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(*window, Cg, F), (N, *out, F) -> (N, *padded, C)``: the transposed convolution."""
    from ._planner import plan  # the planner imports the strategies, not this module

    tspec = transposed_spec(spec)
    ns, grp = spec.num_spatial, spec.feature_group_count
    cg, fq = spec.in_features // grp, spec.out_features // grp
    wt = w.astype(acc_dtype).reshape(*spec.window, cg, grp, fq)
    wt = jnp.flip(wt, axis=tuple(range(ns)))
    wt = jnp.transpose(wt, (*range(ns), ns + 2, ns + 1, ns))  # (*K, Fq, G, Cg)
    wt = wt.reshape(*spec.window, fq, grp * cg)
    config = [(0, 0, 0)]
    config += [(lo, hi, d - 1) for (lo, hi), d in zip(tspec.padding, tspec.lhs_dilation,
                                                      strict=True)]
    config += [(0, 0, 0)]
    gp = lax.pad(g.astype(acc_dtype), jnp.zeros((), acc_dtype), config)
    name = plan(tspec, jnp.dtype(acc_dtype))
    return STRATEGIES[name].lower(tspec, gp, wt, precision=precision, acc_dtype=acc_dtype)


def weight_cotangent(
    spec: ConvSpec, xp: jax.Array, g: jax.Array, *, precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *padded, C), (N, *out, F) -> (*window, Cg, F)``: one einsum per offset."""
    grp = spec.feature_group_count
    s = spatial_letters(spec)
    gg = g.astype(acc_dtype).reshape(*g.shape[:-1], grp, spec.out_features // grp)
    per_offset = []
    for k in offsets(spec):
        xs = group_input(spec, window_slice(spec, xp, k))[0]  # (N, *out, G, Cg)
        per_offset.append(jnp.einsum(f"N{s}GC,N{s}GF->CGF", xs, gg, precision=precision,
                                     preferred_element_type=acc_dtype))
    dw = jnp.stack(per_offset)  # (K, Cg, G, Fq)
    return dw.reshape(*spec.window, spec.in_features // grp, spec.out_features)
