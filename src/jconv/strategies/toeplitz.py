"""Toeplitz band: ``R`` outputs of a 1-D convolution per row of one GEMM.

Output ``o = R*q + r`` reads ``xp[s*o + d*k] = X[q, s*r + d*k]`` from the row
``X[q, j] = xp[s*R*q + j]`` of ``W = s*(R - 1) + d*(k - 1) + 1`` samples, so

``out[n, R*q + r, f] = sum_{j, c} X[n, q, j, c] * Wb[j, c, r, f]``,
``Wb[s*r + d*k, c, r, f] = w[k, c, f]`` (zero elsewhere: a band, one shifted copy of the
kernel per ``r``): one GEMM ``(N * Q, W * C) @ (W * C, R * F)`` whose output is already
``(N, out, F)``. Patches (``R = 1``) copy ``k * C`` input samples per output, the band
``W * C / R``: for a long window with a small stride over few channels (a raw-audio stem,
80 taps at stride 4 on one channel) that is several times fewer, the GEMM is ``R`` times
wider, and the multiplies by the band's zeros cost ``W / k`` times the dense FLOPs. The rows
are built from ``E + 1`` contiguous block slices of the input cut into blocks of ``s*R``.
A non-finite sample reaches every output of its row (``0 * inf``), as in Winograd's tiles.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import sympy as sp
from jax import lax

from .._spec import ConvSpec
from ._common import Cost, Expr, Geometry, check_rank, make_cost, pad_input
from ._model import NEVER, Prediction, copy_seconds, gemm_rate

AUTO = True
"""`strategy="auto"` may pick the band (1-D, one group, windows of `MIN_SPAN_PER_STRIDE`
strides and more, up to `MAX_PLANNED_C` input channels)."""
ACCURACY = "summation"
"""Rounding error of summing the taps in the accumulation dtype (lax's class on the CPU;
exact on small-integer data): the band's zeros add exact zeros."""
TRANSFORMS_KERNEL = True
"""The kernel is copied into the band, ``R`` shifted copies (`jconv.strategies`)."""
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

MIN_SPAN_PER_STRIDE = 4
"""Planned only where the dilated window spans at least this many strides: below, the
band's zeros cost more than the copies it saves (a 3-tap window at 16 channels measured
1.34x lax against scatter's 1.06x; 7 taps 1.46x against 1.86-2.43x for the others)."""
MAX_PLANNED_C = 16
"""Planned only for at most this many input channels: the band trades multiplies by zeros
for copies, which pays where a deep, wide GEMM is not already on offer (at 64 channels, 15
taps measured 1.78x lax against scatter's 1.24x)."""
MAX_ROWS = 32
"""Most outputs per row considered (`rows`)."""
OVERHEAD = 1.0
"""Predicted time over the cost at the model's rates (hybrid's in 1-D): on M5's stem the band
measured 0.6-0.75x hybrid's forward."""
BACKWARD = 2.0
"""Gradients over the forward's predicted arithmetic: the two transposed GEMMs."""
BACKWARD_COPY = 1.0
"""Gradients over the forward's predicted copies: the rows' adjoint adds them back."""


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
    """Why the band cannot run ``spec`` (it needs one spatial dimension and one group), or
    None."""
    if spec.num_spatial != 1:
        return f"it needs 1 spatial dimension, got {spec.num_spatial}"
    if spec.groups != 1:
        return (f"it needs one group, got feature_group_count={spec.feature_group_count} "
                f"and batch_group_count={spec.batch_group_count}")
    return None


def _sizes(o: Expr, k: Expr, s: Expr, d: Expr, r: Expr) -> tuple[Expr, Expr, Expr]:
    """``(Q, W, E)``: rows ``ceil(o / R)``, row width, and the blocks of ``s*R`` a row
    reaches past its own."""
    width = s * (r - 1) + d * (k - 1) + 1
    rows = sp.ceiling(sp.Rational(1) * o / r)
    extra = sp.Max(0, sp.ceiling(sp.Rational(1) * (d * (k - 1) + 1 - s) / (s * r)))
    return rows, width, extra


def cost_of(geo: Geometry, s: Expr, d: Expr, r: Expr) -> Cost:
    """FLOPs: the whole band GEMM, ``2 * N * Q * W * C * R * F``. Temp: the input cut into
    ``Q + E`` blocks of ``s*R`` samples, the rows, the band and, where ``R`` does not divide
    the output length, the GEMM's result (then sliced)."""
    o, k = geo.out[0], geo.window[0]
    q, width, extra = _sizes(o, k, s, d, r)
    blocks = geo.n * (q + extra) * s * r * geo.cg
    rows = geo.n * q * width * geo.cg
    band = width * geo.cg * r * geo.fq
    result = geo.n * q * r * geo.fq
    ragged = sp.Min(1, q * r - o)  # 1 where the result is longer than the output
    return make_cost(
        flops=2 * geo.n * q * width * geo.cg * r * geo.fq,
        temp_elems=blocks + rows + band + ragged * result,
        moved_elems=2 * rows + band + geo.out_elems + ragged * geo.out_elems,
        geo=geo,
    )


def _numbers(spec: ConvSpec) -> tuple[int, int]:
    """The spec's stride and rhs dilation."""
    return spec.window_strides[0], spec.rhs_dilation[0]


def _predict_rows(spec: ConvSpec, dtype: jnp.dtype, r: int) -> Prediction:
    flops, _, moved = cost_of(Geometry.from_spec(spec, dtype), *_numbers(spec), r).evaluate()
    _, width, _ = _sizes(spec.out_spatial[0], spec.window[0], *_numbers(spec), r)
    rate = gemm_rate(int(width) * spec.in_features, r * spec.out_features)
    return Prediction.scaled(OVERHEAD * flops / rate, OVERHEAD * copy_seconds(moved),
                             BACKWARD, BACKWARD_COPY)


@functools.lru_cache(maxsize=1024)
def _rows(spec: ConvSpec, dtype: jnp.dtype) -> int:
    top = max(2, min(MAX_ROWS, spec.out_spatial[0]))
    return min(range(2, top + 1), key=lambda r: _predict_rows(spec, dtype, r).forward)


def rows(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> int:
    """``R``: the outputs per row (2 to `MAX_ROWS`) of least predicted forward time."""
    return _rows(spec, jnp.dtype(dtype))


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, L, C), (k, C, F) -> (N, out, F)`` by one band GEMM."""
    (o,), (k,), (s, d) = spec.out_spatial, spec.window, _numbers(spec)
    r = rows(spec, x.dtype)
    q, width, extra = (int(v) for v in _sizes(o, k, s, d, r))
    block = s * r
    # the padded input, then zeros (or a crop) to whole blocks
    xb = lax.pad(pad_input(spec, x), jnp.zeros((), x.dtype),
                 [(0, 0, 0), (0, (q + extra) * block - spec.padded_in[0], 0), (0, 0, 0)])
    xb = xb.reshape(x.shape[0], q + extra, block, x.shape[-1])
    xr = jnp.concatenate([xb[:, e:e + q] for e in range(extra + 1)], axis=2)[:, :, :width]
    (span,) = spec.effective_window
    zero = jnp.zeros((), w.dtype)
    band = jnp.stack([lax.pad(w, zero, [(s * i, width - s * i - span, d - 1), (0, 0, 0),
                                        (0, 0, 0)]) for i in range(r)], axis=2)
    # one (N * Q)-row matrix: its kernel gradient is then a plain transposed-lhs GEMM
    # (with the rows 3-D, XLA transposed the whole cotangent first: 2.3x the time)
    y = jnp.matmul(xr.reshape(x.shape[0] * q, width * x.shape[-1]),
                   band.reshape(width * x.shape[-1], r * w.shape[-1]),
                   precision=precision, preferred_element_type=acc_dtype)
    return y.reshape(x.shape[0], q * r, w.shape[-1])[:, :o]


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of the band for ``spec`` with its `rows` (see `cost_of`)."""
    return cost_of(Geometry.from_spec(spec, dtype), *_numbers(spec), rows(spec, dtype))


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols`, stride ``s``, rhs dilation ``d``
    and ``R`` outputs per row."""
    check_rank("toeplitz", num_spatial, 1)
    pos = functools.partial(sp.Symbol, integer=True, positive=True)
    return cost_of(Geometry.symbols(1), pos("s"), pos("d"), pos("R"))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """One GEMM of depth ``W * C`` and width ``R * F``, and the rows' copies, both times
    `OVERHEAD`, at the `rows` of least predicted time; `NEVER` for a window shorter than
    `MIN_SPAN_PER_STRIDE` strides or more than `MAX_PLANNED_C` input channels."""
    if (spec.effective_window[0] < MIN_SPAN_PER_STRIDE * spec.window_strides[0]
            or spec.in_features > MAX_PLANNED_C):
        return NEVER
    return _predict_rows(spec, jnp.dtype(dtype), rows(spec, dtype))
