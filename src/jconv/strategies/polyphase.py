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
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N, *out, F)`` phase by phase; the lhs-dilated
    input is never built (`_real_samples`)."""
    from .._planner import plan  # the planner imports this module
    from . import STRATEGIES

    ns, strides = spec.num_spatial, spec.lhs_dilation
    n, f = spec.batch, spec.out_features
    xs = _real_samples(spec, x)
    if xs is None:  # cropping removed every real sample: the window slides over zeros only
        return jnp.zeros((n, *spec.out_spatial, f), acc_dtype)
    y = None
    for r in itertools.product(*(range(s) for s in strides)):
        geo = _phase(spec, r)
        if any(t == 0 for _, t, _, _ in geo) or any(o == 0 for *_, o in geo):
            continue  # this phase of the output only ever meets zeros
        wr = w[tuple(slice(k0, None, s) for (k0, *_), s in zip(geo, strides, strict=True))]
        lim = [n, *(c + o + t - 1 for _, t, c, o in geo), xs.shape[-1]]
        xr = lax.slice(xs, [0, *(c for _, _, c, _ in geo), 0], lim)
        sub = ConvSpec.from_lax(
            xr.shape, wr.shape, (1,) * ns, "VALID",
            dimension_numbers=_canonical(ns), feature_group_count=spec.feature_group_count,
        )
        yr = STRATEGIES[plan(sub, jnp.dtype(x.dtype))].lower(
            sub, xr, wr, precision=precision, acc_dtype=acc_dtype).astype(acc_dtype)
        # phase r holds outputs r + s*q: spread them with s - 1 zeros between (one fused add)
        pad = [(0, 0, 0), *((ri, size - ri - s * (o - 1) - 1, s - 1)
                            for ri, s, size, (*_, o) in zip(r, strides, spec.out_spatial, geo,
                                                            strict=True)), (0, 0, 0)]
        yr = lax.pad(yr, jnp.zeros((), acc_dtype), pad)
        y = yr if y is None else y + yr
    return jnp.zeros((n, *spec.out_spatial, f), acc_dtype) if y is None else y


def _real_samples(spec: ConvSpec, x: jax.Array) -> jax.Array | None:
    """``xs[n, i, c] = xp[n, b + s*i, c]`` (``b = pad_lo mod s``): the positions of the padded,
    lhs-dilated input ``xp`` that can hold real samples, taken straight from ``x`` as one
    plain pad (``pad_lo // s`` before, negative to crop); None when there are none."""
    config = [(0, 0, 0)]
    for (lo, _), s, size, p in zip(spec.padding, spec.lhs_dilation, x.shape[1:-1],
                                   spec.padded_in, strict=True):
        b = lo % s
        length = len(range(b, p, s))
        if length == 0:
            return None
        config.append((lo // s, length - size - lo // s, 0))
    config.append((0, 0, 0))
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def _canonical(ns: int) -> tuple[str, str, str]:
    letters = "".join(str(i) for i in range(ns))
    return (f"N{letters}C", f"{letters}IO", f"N{letters}C")


def cost_of(geo: Geometry, phases: sp.Expr | int = 1) -> Cost:
    """FLOPs ``2*MACs / phases`` (only the taps that meet real samples); temp: the real
    samples (`_real_samples`) and the phase outputs, which one fused loop of padded adds
    interleaves into the output."""
    real = geo.in_elems / phases
    return make_cost(
        flops=2 * geo.macs / phases,
        temp_elems=real + geo.out_elems,
        moved_elems=real + 2 * geo.out_elems + geo.taps / phases * geo.out_elems,
        geo=geo,
    )


def cost(spec: ConvSpec, itemsize: int = 4) -> Cost:
    """Cost of the polyphase lowering for ``spec``: the phases' own lowerings (as the
    planner picks them; the largest one's temp bytes, XLA reuses them phase to phase) plus
    the real samples and the phase outputs."""
    from .._planner import plan
    from . import STRATEGIES

    geo = Geometry.from_spec(spec, itemsize)
    phases = math.prod(spec.lhs_dilation)
    base = cost_of(geo, phases)
    if applicable(spec, jnp.dtype(jnp.float32)) is not None:
        return base
    dtype = jnp.dtype({2: jnp.float16, 8: jnp.float64}.get(itemsize, jnp.float32))
    flops, inner_temp = sp.Integer(0), sp.Integer(0)
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
        inner_temp = sp.Max(inner_temp, inner.temp_bytes / itemsize)
    return make_cost(flops=flops, temp_elems=base.temp_bytes / itemsize + inner_temp,
                     moved_elems=base.moved_bytes / itemsize, geo=geo)
