"""Polyphase: a lhs-dilated (transposed) convolution as ``prod(s)`` small dense ones.

With lhs dilation ``s`` (stride 1, no rhs dilation), the padded input ``xp`` holds real
samples only at positions ``j = b + s*i`` (``b = pad_lo mod s``); everything else is a
zero the other lowerings would multiply. For output phase ``r = o mod s`` only the taps
``k = k0(r) + s*m`` with ``k0 = (b - r) mod s`` meet real samples, so

``out[s*q + r] = sum_m xs[q + c_r + m] * w[k0 + s*m]``,  ``xs[i] = xp[b + s*i]``,

a VALID stride-1 convolution of the undilated input with a sub-kernel, ``c_r`` in {0, 1}.
Each phase runs through the planner's best lowering; the phases are interleaved back.
FLOPs drop by ``prod(s)`` against computing on the zeros.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import sympy as sp
from jax import lax

from .._spec import ConvSpec
from ._common import Cost, Geometry, make_cost


def applicable(spec: ConvSpec, dtype: jnp.dtype) -> str | None:
    """Why polyphase cannot run ``spec``, or None."""
    if all(d == 1 for d in spec.lhs_dilation):
        return "it needs lhs dilation (a transposed convolution), got none"
    if any(s != 1 for s in spec.window_strides) or any(d != 1 for d in spec.rhs_dilation):
        return (f"it needs stride 1 and rhs dilation 1, got {spec.window_strides} and "
                f"{spec.rhs_dilation}")
    if spec.batch_group_count != 1:
        return f"it does not support batch_group_count (={spec.batch_group_count})"
    return None


def _phase(spec: ConvSpec, r: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Per axis ``(k0, taps, c_r, outputs)`` of output phase ``r``."""
    out = []
    for ri, s, (lo, _), k, o in zip(r, spec.lhs_dilation, spec.padding, spec.window,
                                    spec.out_spatial, strict=True):
        b = lo % s
        k0 = (b - ri) % s
        taps = max(-(-(k - k0) // s), 0)
        outs = max(-(-(o - ri) // s), 0)
        out.append((k0, taps, (ri + k0 - b) // s, outs))
    return tuple(out)


def lower(
    spec: ConvSpec,
    xp: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *padded, C), (*window, Cg, F) -> (N, *out, F)`` phase by phase."""
    from .._planner import plan  # the planner imports this module
    from . import STRATEGIES

    ns, strides = spec.num_spatial, spec.lhs_dilation
    tiles = tuple(-(-o // s) for o, s in zip(spec.out_spatial, strides, strict=True))
    start = [0, *(lo % s for (lo, _), s in zip(spec.padding, strides, strict=True)), 0]
    n, f = spec.batch, spec.out_features
    if any(b >= size for b, size in zip(start[1:-1], spec.padded_in, strict=True)):
        # cropping removed every real sample: the window slides over zeros only
        return jnp.zeros((n, *spec.out_spatial, f), acc_dtype)
    xs = lax.slice(xp, start, xp.shape, (1, *strides, 1))
    phases = []
    for r in itertools.product(*(range(s) for s in strides)):
        geo = _phase(spec, r)
        if any(t == 0 for _, t, _, _ in geo) or any(o == 0 for *_, o in geo):
            y = jnp.zeros((n, *(o for *_, o in geo), f), acc_dtype)
        else:
            wr = w[tuple(slice(k0, None, s) for (k0, *_), s in zip(geo, strides, strict=True))]
            lim = [n, *(c + o + t - 1 for _, t, c, o in geo), xs.shape[-1]]
            xr = lax.slice(xs, [0, *(c for _, _, c, _ in geo), 0], lim)
            sub = ConvSpec.from_lax(
                xr.shape, wr.shape, (1,) * ns, "VALID",
                dimension_numbers=_canonical(ns), feature_group_count=spec.feature_group_count,
            )
            y = STRATEGIES[plan(sub, jnp.dtype(xp.dtype))].lower(
                sub, xr, wr, precision=precision, acc_dtype=acc_dtype)
        pad = [(0, 0, 0), *((0, t - o, 0) for t, (*_, o) in zip(tiles, geo, strict=True)),
               (0, 0, 0)]
        phases.append(lax.pad(y.astype(acc_dtype), jnp.zeros((), acc_dtype), pad))
    stacked = jnp.stack(phases).reshape(*strides, n, *tiles, f)
    # (*s, N, *T, F) -> (N, T0, s0, T1, s1, ..., F)
    perm = [ns] + [a for i in range(ns) for a in (ns + 1 + i, i)] + [2 * ns + 1]
    y = jnp.transpose(stacked, perm).reshape(n, *(t * s for t, s in zip(tiles, strides,
                                                                       strict=True)), f)
    return y[(slice(None), *(slice(0, o) for o in spec.out_spatial), slice(None))]


def _canonical(ns: int) -> tuple[str, str, str]:
    letters = "".join(str(i) for i in range(ns))
    return (f"N{letters}C", f"{letters}IO", f"N{letters}C")


def cost_of(geo: Geometry, phases: sp.Expr | int = 1) -> Cost:
    """FLOPs ``2*MACs / phases`` (only the taps that meet real samples); temp: the padded
    dilated input the engine builds, its undilated copy, the phase outputs and their
    interleaved copy."""
    real = geo.in_elems / phases
    return make_cost(
        flops=2 * geo.macs / phases,
        temp_elems=geo.in_elems + real + 2 * geo.out_elems,
        moved_elems=geo.in_elems + real + 2 * geo.out_elems + geo.taps / phases * geo.out_elems,
        geo=geo,
    )


def cost(spec: ConvSpec, itemsize: int = 4) -> Cost:
    """Cost of the polyphase lowering for ``spec``: the phases' own lowerings (as the
    planner picks them) plus the undilated input copy and the interleaving."""
    from .._planner import plan
    from . import STRATEGIES

    geo = Geometry.from_spec(spec, itemsize)
    phases = math.prod(spec.lhs_dilation)
    base = cost_of(geo, phases)
    if applicable(spec, jnp.dtype(jnp.float32)) is not None:
        return base
    dtype = jnp.dtype({2: jnp.float16, 8: jnp.float64}.get(itemsize, jnp.float32))
    flops, temp = sp.Integer(0), geo.in_elems / phases + 2 * geo.out_elems
    for r in itertools.product(*(range(s) for s in spec.lhs_dilation)):
        g = _phase(spec, r)
        if any(t == 0 for _, t, _, _ in g) or any(o == 0 for *_, o in g):
            continue
        sub = ConvSpec.from_lax(
            (spec.batch, *(o + t - 1 for _, t, _, o in g), spec.in_features),
            (*(t for _, t, _, _ in g), *spec.rhs_shape[-2:]), (1,) * spec.num_spatial,
            "VALID", dimension_numbers=_canonical(spec.num_spatial),
            feature_group_count=spec.feature_group_count,
        )
        inner = STRATEGIES[plan(sub, dtype)].cost(sub, itemsize)
        flops += inner.flops
        temp += inner.temp_bytes / itemsize
    return make_cost(flops=flops, temp_elems=temp, moved_elems=base.moved_bytes / itemsize,
                     geo=geo)
