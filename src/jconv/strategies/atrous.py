"""Atrous: a rhs-dilated (dilated, "à trous") convolution as one dense one over
``prod(d)`` times the images.

With rhs dilation ``d`` (stride 1, no lhs dilation) output ``o`` reads the padded input
``xp`` at ``o + d*k``. For ``o = d*q + r``, ``0 <= r < d``, those are ``xr[q + k]`` with
``xr[j] = xp[d*j + r]``, so

``out[d*q + r] = sum_k xr[q + k] * w[k]``,

an undilated VALID stride-1 convolution of the phase image ``xr`` with the kernel itself.
The ``prod(d)`` phase images, the padded input rounded up to a multiple of ``d`` and
reshaped (`to_phases`), are stacked into the batch: one convolution of the whole kernel,
which runs with the lowering of `INNER_LOWERINGS` that predicts the fastest forward for it
(`inner_lowering`), F(2x2, 3x3) Winograd for a dilated 3x3 layer. Its outputs are
interleaved back and cropped (`from_phases`). The FLOPs are the inner convolution's: the
dilated taps only, over the outputs rounded up to a multiple of ``d``.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._spec import ConvSpec, canonical_layouts
from . import accumulate, hybrid, patches, scatter, shift, winograd
from ._common import Cost, Geometry, fastest, make_cost
from ._model import Prediction, copy_seconds

ArrayT = TypeVar("ArrayT", jax.Array, np.ndarray)

AUTO = True
"""`strategy="auto"` may pick atrous for rhs-dilated convolutions."""
ACCURACY = "summation"
"""Rounding error of summing the taps in the accumulation dtype (lax's class on the CPU;
exact on small-integer data)."""
TRANSFORMS_KERNEL = True
"""Its inner lowering may copy the kernel (`jconv.strategies`)."""
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

BACKWARD = 2.0
"""Gradients over the forward's predicted arithmetic."""
BACKWARD_COPY = 1.0
"""Gradients over the forward's predicted copies (the phase split's adjoint is the
interleave's kind of copy)."""
INNER_LOWERINGS = tuple(m for m in (shift, patches, hybrid, scatter, accumulate, winograd)
                        if m.ACCURACY == ACCURACY and m.DIFFERENTIATED)
"""The lowerings the inner convolution may run with: those of its own accuracy class, so
that atrous's error is the summation error it states, that may run a differentiated call's
values, as atrous does (not `direct`)."""


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
    """Why atrous cannot run ``spec``, or None."""
    if all(d == 1 for d in spec.rhs_dilation):
        return "it needs rhs dilation (a dilated convolution), got none"
    if any(s != 1 for s in spec.window_strides) or any(d != 1 for d in spec.lhs_dilation):
        return (f"it needs stride 1 and lhs dilation 1, got {spec.window_strides} and "
                f"{spec.lhs_dilation}")
    if spec.batch_group_count != 1:
        return f"it does not support batch_group_count (={spec.batch_group_count})"
    return None


def phases(spec: ConvSpec) -> int:
    """``prod(d)``: the phase images per input image."""
    return math.prod(spec.rhs_dilation)


def _phase_length(spec: ConvSpec) -> tuple[int, ...]:
    """Per axis ``ceil(p / d)``: a phase image's length (the padded input rounded up to a
    multiple of ``d``)."""
    return tuple(-(-p // d) for p, d in zip(spec.padded_in, spec.rhs_dilation, strict=True))


def round_up(spec: ConvSpec) -> tuple[int, ...]:
    """Per axis the zeros after the spec's padding that round the padded input up to a
    multiple of ``d`` (``d * ceil(p / d) - p``)."""
    return tuple(q * d - p for q, d, p in
                 zip(_phase_length(spec), spec.rhs_dilation, spec.padded_in, strict=True))


def inner_spec(spec: ConvSpec) -> ConvSpec:
    """The VALID stride-1 undilated convolution of the ``N * prod(d)`` phase images
    (`to_phases`) with the whole kernel."""
    return ConvSpec.from_lax(
        (spec.batch * phases(spec), *_phase_length(spec), spec.in_features), spec.rhs_shape,
        (1,) * spec.num_spatial, "VALID", dimension_numbers=canonical_layouts(spec.num_spatial),
        feature_group_count=spec.feature_group_count,
    )


def inner_lowering(inner: ConvSpec, dtype: jax.typing.DTypeLike) -> ModuleType:
    """The lowering of `INNER_LOWERINGS` that can run ``inner`` (`inner_spec`) and predicts
    the fastest forward for it."""
    return fastest(INNER_LOWERINGS, inner, dtype)


def to_phases(spec: ConvSpec, x: jax.Array) -> jax.Array:
    """``(N, *in, C) -> (N * prod(d), *ceil(p / d), C)``: the padded input (zeros to a
    multiple of ``d`` after the spec's padding, negative crops), split (`split_phases`)."""
    config = [(lo, hi + extra, 0) for (lo, hi), extra in
              zip(spec.padding, round_up(spec), strict=True)]
    return split_phases(spec, lax.pad(x, jnp.zeros((), x.dtype),
                                      [(0, 0, 0), *config, (0, 0, 0)]))


def split_phases(spec: ConvSpec, xp: ArrayT) -> ArrayT:
    """``(N, *d * ceil(p / d), C) -> (N * prod(d), *ceil(p / d), C)``: each padded image's
    phases ``xr[j] = xp[d*j + r]``, stacked image-major (a device's images stay its own).
    Reshapes and a transpose only, on a JAX or a NumPy array."""
    ns: int = spec.num_spatial
    d, q = spec.rhs_dilation, _phase_length(spec)
    xp = xp.reshape(spec.batch, *(v for pair in zip(q, d, strict=True) for v in pair),
                    spec.in_features)
    # (N, q0, d0, q1, d1, ..., C) -> (N, d0, d1, ..., q0, q1, ..., C)
    order = (0, *(2 + 2 * i for i in range(ns)), *(1 + 2 * i for i in range(ns)), 1 + 2 * ns)
    return xp.transpose(order).reshape(spec.batch * phases(spec), *q, spec.in_features)


def from_phases(spec: ConvSpec, y: ArrayT) -> ArrayT:
    """``(N * prod(d), *m, F) -> (N, *out, F)``: the inner convolution's outputs
    (`inner_spec`) interleaved, ``out[d*q + r] = y_r[q]``, and cropped to the spec's (on a
    JAX or a NumPy array)."""
    ns: int = spec.num_spatial
    d, m = spec.rhs_dilation, y.shape[1:-1]
    f = y.shape[-1]
    y = y.reshape(spec.batch, *d, *m, f)
    # (N, d0, d1, ..., m0, m1, ..., F) -> (N, m0, d0, m1, d1, ..., F)
    order = (0, *(v for i in range(ns) for v in (1 + ns + i, 1 + i)), 1 + 2 * ns)
    y = y.transpose(order).reshape(spec.batch, *(mi * di for mi, di in zip(m, d, strict=True)),
                                   f)
    return y[(slice(None), *(slice(0, o) for o in spec.out_spatial))]


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N, *out, F)``: the phase images' convolution by
    `inner_lowering`, interleaved."""
    inner = inner_spec(spec)
    y = inner_lowering(inner, x.dtype).lower(inner, to_phases(spec, x), w,
                                             precision=precision, acc_dtype=acc_dtype)
    return from_phases(spec, y)


def cost_of(geo: Geometry) -> Cost:
    """FLOPs ``2*MACs``; temp and bytes moved: the phase images, one copy of the padded
    input (in place of the pad a padded lowering makes); the interleave fuses into the inner
    lowering's output copy (the inner lowering's own buffers not included)."""
    return make_cost(flops=2 * geo.macs, temp_elems=geo.in_elems, moved_elems=geo.in_elems,
                     geo=geo)


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of atrous for ``spec``: the phase split (`cost_of`, on the phase images' sizes)
    plus the inner lowering's own cost on `inner_spec`."""
    if applicable(spec, dtype) is not None:
        return cost_of(Geometry.from_spec(spec, dtype))
    inner = inner_spec(spec)
    inner_geo = Geometry.from_spec(inner, dtype)
    base = cost_of(inner_geo)
    own = inner_lowering(inner, dtype).cost(inner, dtype)
    return Cost(flops=own.flops, temp_bytes=base.temp_bytes + own.temp_bytes,
                moved_bytes=base.moved_bytes + own.moved_bytes)


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols` (the inner lowering's own cost not
    included)."""
    return cost_of(Geometry.symbols(num_spatial))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """The inner lowering's prediction on `inner_spec`, plus the phase split's copy."""
    inner = inner_spec(spec)
    own = inner_lowering(inner, dtype).predict(inner, dtype)
    split = float(cost_of(Geometry.from_spec(inner, dtype)).moved_bytes)
    return Prediction.scaled(own.arithmetic, own.copies + copy_seconds(split), BACKWARD,
                             BACKWARD_COPY)
