"""Polyphase: a lhs-dilated (transposed) convolution as ``prod(s)`` small dense ones.

With lhs dilation ``s`` (stride 1, no rhs dilation), the padded input ``xp`` holds real
samples only at positions ``j = b + s*i`` (``b = pad_lo mod s``); everything else is a
zero the other lowerings would multiply. For output phase ``r = o mod s`` only the taps
``k = k0(r) + s*m`` with ``k0 = (b - r) mod s`` meet real samples, so

``out[s*q + r] = sum_m xs[q + c_r + m] * w[k0 + s*m]``,  ``xs[i] = xp[b + s*i]``,

a VALID stride-1 convolution of the undilated input with a sub-kernel, ``c_r`` in {0, 1}.
Each phase runs with the lowering of `PHASE_LOWERINGS` that predicts the fastest forward
for it; the phases are interleaved back. FLOPs drop by ``prod(s)`` against computing on the
zeros.
"""

from __future__ import annotations

import itertools
import math
from types import ModuleType

import jax
import jax.numpy as jnp
import sympy as sp
from jax import lax

from .._spec import ConvSpec, canonical_layouts
from . import dft, fft, hybrid, patches, scatter, shift, winograd
from ._common import Cost, Geometry, fastest, make_cost
from ._model import Prediction, copy_seconds, gemm_rate

AUTO = True
"""`strategy="auto"` may pick polyphase for lhs-dilated (transposed) convolutions."""
ACCURACY = "summation"
"""Rounding error of summing the taps in the accumulation dtype (lax's class on the CPU;
exact on small-integer data)."""
TRANSFORMS_KERNEL = True
"""The kernel is copied, split into strided phases (`jconv.strategies`)."""
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

BACKWARD = 2.0
"""Gradients over the forward's predicted arithmetic."""
BACKWARD_COPY = 0.2
"""Gradients over the forward's predicted copies."""
PHASE_LOWERINGS = tuple(m for m in (shift, patches, hybrid, scatter, winograd, fft, dft)
                        if m.ACCURACY == ACCURACY)
"""The lowerings a phase (a VALID stride-1 convolution) may run with: those of its own
accuracy class, so that polyphase's error is the summation error it states. Not `direct`:
XLA fuses every phase's elementwise loop into the output's interleave, where each output
then computes all the phases' sums and keeps one (3x3 lhs-dilated 2 over 8 x 56 x 56 x 4
to 16: 3.9 ms on `direct` phases against 1.8 on the others; over 8 channels 6.0 against
1.3)."""


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
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


def _phase_spec(spec: ConvSpec, phase: tuple[tuple[int, ...], ...]) -> ConvSpec:
    """The VALID stride-1 convolution that computes one phase (`_phase`)."""
    return ConvSpec.from_lax(
        (spec.batch, *(o + t - 1 for _, t, _, o in phase), spec.in_features),
        (*(t for _, t, _, _ in phase), *spec.rhs_shape[-2:]), (1,) * spec.num_spatial,
        "VALID", dimension_numbers=canonical_layouts(spec.num_spatial),
        feature_group_count=spec.feature_group_count,
    )


def _live(phase: tuple[tuple[int, ...], ...]) -> bool:
    """True if the phase has outputs that meet real samples."""
    return all(t > 0 and o > 0 for _, t, _, o in phase)


def phase_lowering(sub: ConvSpec, dtype: jax.typing.DTypeLike) -> ModuleType:
    """The lowering of `PHASE_LOWERINGS` that can run ``sub`` and predicts the fastest
    forward for it."""
    return fastest(PHASE_LOWERINGS, sub, dtype)


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
    strides = spec.lhs_dilation
    n, f = spec.batch, spec.out_features
    xs = _real_samples(spec, x)
    if xs is None:  # cropping removed every real sample: the window slides over zeros only
        return jnp.zeros((n, *spec.out_spatial, f), acc_dtype)
    y = None
    for r in itertools.product(*(range(s) for s in strides)):
        geo = _phase(spec, r)
        if not _live(geo):
            continue  # this phase of the output only ever meets zeros
        wr = w[tuple(slice(k0, None, s) for (k0, *_), s in zip(geo, strides, strict=True))]
        lim = [n, *(c + o + t - 1 for _, t, c, o in geo), xs.shape[-1]]
        xr = lax.slice(xs, [0, *(c for _, _, c, _ in geo), 0], lim)
        sub = _phase_spec(spec, geo)
        yr = phase_lowering(sub, x.dtype).lower(
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


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of the polyphase lowering for ``spec``: the phases' own lowerings
    (`phase_lowering`; the largest one's temp bytes, XLA reuses them phase to phase) plus
    the real samples and the phase outputs."""
    geo = Geometry.from_spec(spec, dtype)
    base = cost_of(geo, math.prod(spec.lhs_dilation))
    if applicable(spec, dtype) is not None:
        return base
    flops, inner_temp = sp.Integer(0), sp.Integer(0)
    for r in itertools.product(*(range(s) for s in spec.lhs_dilation)):
        phase = _phase(spec, r)
        if not _live(phase):
            continue
        sub = _phase_spec(spec, phase)
        inner = phase_lowering(sub, dtype).cost(sub, dtype)
        flops += inner.flops
        inner_temp = sp.Max(inner_temp, inner.temp_bytes)
    return Cost(flops=flops, temp_bytes=base.temp_bytes + inner_temp,
                moved_bytes=base.moved_bytes)


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols` with ``S`` phases (the phases'
    own lowerings not included)."""
    return cost_of(Geometry.symbols(num_spatial), sp.Symbol("S", integer=True, positive=True))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """Phase GEMMs of depth ``C_g`` and width ``F_g``, and the copies."""
    flops, _, moved = cost(spec, dtype).evaluate()
    rate = gemm_rate(spec.group_in_features, spec.group_out_features)
    return Prediction.scaled(flops / rate, copy_seconds(moved), BACKWARD, BACKWARD_COPY)
