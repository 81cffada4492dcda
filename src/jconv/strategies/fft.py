"""FFT: correlation by the convolution theorem, channels mixed by an einsum per frequency.

``X = rfftn(xp)``, ``W = rfftn(w dilated)`` over lengths ``L >= padded`` (a 2-3-5-smooth
size), ``Y[n, nu, f] = sum_c X[n, nu, c] * conj(W[nu, c, f])`` (the channel sum, as a
complex einsum), ``out = irfftn(Y)[o*s]``. Circular wrap-around never reaches the kept
outputs because ``L >= padded``. The work is ``O(L log L)`` per channel instead of
``O(L * k)``, but the kernel is transformed at the full length and the channel mixing is
one small GEMM per frequency, so it pays off only for large windows; in 1-D, the short
tiles of `dft` are faster.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import sympy as sp
from jax import lax

from .._spec import ConvSpec
from ._common import Cost, Geometry, make_cost, pad_input, spatial_letters
from ._model import NEVER, Prediction, copy_seconds, fft_seconds

AUTO = True
"""`strategy="auto"` may pick the FFT for windows of `MIN_TAPS` taps and more."""
ACCURACY = "normwise"
"""Error bounded normwise only (the transforms' round-off spreads over every output):
planned only where the caller asks for speed (`jconv.planner.allows_normwise`)."""
TRANSFORMS_KERNEL = True
"""The kernel is copied, padded and Fourier-transformed (`jconv.strategies`)."""
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

MIN_TAPS = 49
"""Planned only for windows of at least this many taps (7x7, or k >= 49 in 1-D): its
round-off is spread over every output, so small convolutions of exact values (integers,
ones) would no longer come out exact; it pays off only for large windows anyway."""
BACKWARD = 1.0
"""Gradients over the forward's predicted arithmetic: the transposes of the transforms."""
BACKWARD_COPY = 1.0
"""Gradients over the forward's predicted copies."""


def fast_length(n: int) -> int:
    """Smallest ``m >= n`` whose prime factors are 2, 3 and 5."""
    m = max(n, 1)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
    """Why the FFT lowering cannot run ``spec``, or None."""
    if not jnp.issubdtype(dtype, jnp.floating):
        return f"it needs a real floating dtype, got {jnp.dtype(dtype)}"
    if not 1 <= spec.num_spatial <= 3:
        return f"jnp.fft transforms 1 to 3 axes, got {spec.num_spatial} spatial dims"
    return None


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N_out, *out, F)`` through the frequency domain."""
    ns = spec.num_spatial
    axes = tuple(range(1, ns + 1))
    lengths = tuple(fast_length(p) for p in spec.padded_in)
    b, g = spec.batch_group_count, spec.feature_group_count
    cg, fq = spec.group_in_features, spec.group_out_features
    x = pad_input(spec, x).astype(acc_dtype)
    # dilate the kernel with zeros between taps: (*effective_window, Cg, F)
    wd = lax.pad(w.astype(acc_dtype), jnp.zeros((), acc_dtype),
                 [(0, 0, d - 1) for d in spec.rhs_dilation] + [(0, 0, 0), (0, 0, 0)])
    xf = jnp.fft.rfftn(x, s=lengths, axes=axes)  # (N, *L', C)
    wf = jnp.conj(jnp.fft.rfftn(wd, s=lengths, axes=tuple(range(ns))))  # (*L', Cg, F)
    xf = xf.reshape(b, spec.batch // b, *xf.shape[1:-1], g, cg)
    wf = wf.reshape(*wf.shape[:-1], b, g, fq)
    s = spatial_letters(ns)
    yf = jnp.einsum(f"BN{s}GC,{s}CBGF->N{s}BGF", xf, wf, precision=precision)
    yf = yf.reshape(*yf.shape[: ns + 1], spec.out_features)
    y = jnp.fft.irfftn(yf, s=lengths, axes=axes)
    start = [0] * (ns + 2)
    kept = ((o - 1) * st + 1 for o, st in zip(spec.out_spatial, spec.window_strides, strict=True))
    limit = [y.shape[0], *kept, y.shape[-1]]
    return lax.slice(y, start, limit, (1, *spec.window_strides, 1)).astype(acc_dtype)


def cost_of(geo: Geometry, lengths: tuple[sp.Expr | int, ...] | None = None) -> Cost:
    """FLOPs: ``2.5 L log2 L`` per real transform (``N*C`` forward, ``C_g*F`` kernel,
    ``N*F`` inverse) plus 8 real FLOPs per complex multiply-add of the channel mixing over
    the ``L_h = prod(L[:-1]) * (L[-1]//2 + 1)`` frequencies; temp: padded input, the three
    complex spectra and the real inverse transform (``L`` defaults to ``padded``)."""
    ls = geo.padded if lengths is None else lengths
    big_l = sp.Mul(*ls)
    half = sp.Mul(*ls[:-1]) * (sp.floor(ls[-1] / 2) + 1)
    c, f = geo.g * geo.cg, geo.g * geo.fq
    fft_flops = sp.Rational(5, 2) * big_l * sp.log(big_l, 2)
    flops = fft_flops * (geo.n * c + geo.cg * f + geo.n * f) + 8 * geo.n * half * geo.cg * f
    temp = geo.pad * geo.in_elems + 2 * half * (geo.n * c + geo.cg * f + geo.n * f) + (
        geo.n * big_l * f)
    return make_cost(flops=flops, temp_elems=temp, moved_elems=temp, geo=geo)


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of the FFT lowering for ``spec`` at its 2-3-5-smooth transform lengths."""
    lengths = tuple(fast_length(p) for p in spec.padded_in)
    return cost_of(Geometry.from_spec(spec, dtype), lengths)


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols`, transform lengths ``p_i``."""
    return cost_of(Geometry.symbols(num_spatial))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """Transforms and mixing at the FFT rate, spectra moved at the copy rate; `NEVER`
    below `MIN_TAPS` taps."""
    if spec.taps < MIN_TAPS:
        return NEVER
    flops, _, moved = cost(spec, dtype).evaluate()
    return Prediction.scaled(fft_seconds(flops), copy_seconds(moved), BACKWARD,
                             BACKWARD_COPY)
