"""Pallas: a fused implicit-GEMM kernel, one dot per kernel offset on windows held on chip.

``out[n, o, f] = sum_k sum_c xp[n, o*s + k*d, c] * w[k, c, f]``, as shift-and-sum, but
computed by one `jax.experimental.pallas` kernel: no window slice is ever written to
memory. The padded, lhs-dilated input (`pad_input`) is laid out as rows:

- strides become phases: spatial dim ``i`` of the padded input is split into ``s_i``
  phases of ``q_i = ceil(padded_i / s_i)`` samples (a reshape when every stride is 1), so
  that offset ``k`` reads phase ``(k_i*d_i) mod s_i`` from sample ``o_i + (k_i*d_i) // s_i``;
- each phase image is flattened to ``prod(q)`` rows of ``C`` channels. On the *wide*
  output grid ``(o_0, q_1, ..., q_{n-1})`` (every dim but the first as wide as the
  phase image) the window of offset ``k`` is then one contiguous run of rows, the output
  rows shifted by a constant (`Layout.taps`).

The kernel runs over tiles of (batch image, up to ``BLOCK`` wide output rows, up to
``BLOCK`` filters); each tile accumulates, for every kernel offset and up to ``BLOCK`` input
channels at a time, the dot of the shifted window rows with that offset's kernel slice, in
the accumulation dtype: the windows exist only as the kernel's operand tiles (on a TPU the
whole image's rows sit in VMEM, on a GPU each window tile is loaded from global memory).
The wide columns beyond the output (``q_i - o_i`` per row) are computed and cropped
afterwards. Channels, filters and rows are padded to the tiles with zeros.

Opt-in (``AUTO = False``, ``strategy="pallas"``). On the CPU the kernel runs in Pallas'
interpret mode (``interpret=True``: exact, but a loop over the tiles, far slower than the
XLA lowerings) and `predict` is `NEVER`; on GPU (Triton, unpipelined: `TRITON_STAGES`)
and TPU (Mosaic) it is compiled and `predict` is finite. On an H200 it matched lax to
4.8e-7 at ``Precision.HIGHEST`` and ran dense 3x3 forward at 1.1-4.9x cuDNN's time, ahead
of the XLA lowerings (``benchmarks/README.md``). The rule for tuning: a lowering is timed
where its prediction is finite on the default backend, so this one on GPU and TPU only,
never on the CPU.
(`jconv.tune` times `jconv.planner.candidates`, which holds ``AUTO`` lowerings only.)

Gradients: a `pallas_call` has no transpose, so the lowering carries a `jax.custom_jvp`
whose tangent is computed by `shift` (exact, the same accuracy class): forward and reverse
mode of any order work, the values still coming from the kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.experimental import pallas as pl

from .._spec import ConvSpec
from . import shift
from ._common import Cost, Expr, Geometry, make_cost, offsets, pad_input
from ._model import NEVER, Prediction, copy_seconds, gemm_rate

AUTO = False
"""Opt-in: ``strategy="pallas"`` only (see the module docstring for the tuner's rule)."""
ACCURACY = "summation"
"""Rounding error of summing the taps in the accumulation dtype, as shift-and-sum."""
TRANSFORMS_KERNEL = False
"""The kernel is read as it is (`jconv.strategies`)."""
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

BACKWARD = 2.0
"""Gradients over the forward's predicted arithmetic: `shift`'s transposes, two GEMMs of the
forward's size (input and kernel gradients). Not fitted: stated, not measured on a GPU."""
BACKWARD_COPY = 2.0
"""Gradients over the forward's predicted copies: `shift`'s transposes pad the cotangent
once per offset where the kernel's layout copied the input once. Not fitted."""
BLOCK = 128
"""Largest tile along wide output rows, filters and input channels (a power of 2: Triton's
tiles must be; a multiple of 128: TPU lanes)."""
MIN_BLOCK = 16
"""Smallest tile (Triton's dots take no fewer than 16 rows, columns and depth)."""
TRITON_WARPS = 8
"""Warps per Triton program (one tile) on a GPU."""
TRITON_STAGES = 1
"""Triton's software pipelining depth over the input-channel loop: none. Every kernel offset's
dot is unrolled in the loop's body, so each extra stage holds all their operand tiles again
in shared memory: on an H200, 2 and 3 stages asked for 0.3-1.2 MB of the 227 KB there."""
COMPILED_DTYPES = frozenset(jnp.dtype(t) for t in (jnp.float16, jnp.bfloat16, jnp.float32))
"""Operand dtypes the compiled (GPU, TPU) kernel takes; interpreted on the CPU, any real
dtype runs."""
ON_CHIP_BYTES = {"tpu": 16 * 2**20}
"""On-chip memory a tile's blocks must fit in, per platform that stages blocks there (TPU
VMEM, each block double-buffered); Triton reads the image from global memory, tile by
tile."""


def _tile(size: int) -> int:
    """A power-of-2 tile between `MIN_BLOCK` and `BLOCK` covering ``size`` if it can."""
    return min(BLOCK, max(MIN_BLOCK, pl.next_power_of_2(size)))


def _round_up(size: int, tile: int) -> int:
    return -(-size // tile) * tile


def _row_tile(rows: int) -> int:
    """The largest power-of-2 tile of wide rows, `MIN_BLOCK` to `BLOCK`, that pads `rows` by
    at most a quarter (else `MIN_BLOCK`)."""
    return next((t for t in (BLOCK, BLOCK // 2, BLOCK // 4)
                 if _round_up(rows, t) - rows <= rows // 4), MIN_BLOCK)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The row layout and tiles of one spec.

    ``phases``: ``s`` per spatial dim; ``q``: samples per phase and dim; ``taps``: per
    kernel offset (row-major), ``(phase, row shift)``; ``wide``: rows of the wide output
    grid ``o_0 * prod(q[1:])``; ``rows``: rows per phase image held by the kernel (the
    phase image, or the wide rows and the largest shift if more); ``bm``, ``bc``, ``bf``:
    tiles of wide rows, input channels, filters; ``cp``, ``fp``, ``mp``: channels, filters
    and wide rows padded to them.
    """

    phases: tuple[int, ...]
    q: tuple[int, ...]
    taps: tuple[tuple[int, int], ...]
    wide: int
    rows: int
    bm: int
    bc: int
    bf: int
    cp: int
    fp: int
    mp: int

    @classmethod
    def of(cls, spec: ConvSpec) -> Layout:
        """The layout and tiles of ``spec`` (see the module docstring)."""
        s = spec.window_strides
        q = tuple(-(-p // st) for p, st in zip(spec.padded_in, s, strict=True))
        row_strides = [math.prod(q[i + 1:]) for i in range(len(q))]
        taps = []
        for k in offsets(spec):
            t = [ki * d for ki, d in zip(k, spec.rhs_dilation, strict=True)]
            phase = int(np.ravel_multi_index([ti % st for ti, st in zip(t, s, strict=True)],
                                             s)) if s else 0
            row = sum(ti // st * rs for ti, st, rs in zip(t, s, row_strides, strict=True))
            taps.append((phase, row))
        wide = math.prod(spec.out_spatial[:1]) * math.prod(q[1:])
        bm, bc, bf = _row_tile(wide), _tile(spec.in_features), _tile(spec.out_features)
        mp = _round_up(wide, bm)
        return cls(
            phases=s, q=q, taps=tuple(taps), wide=wide,
            rows=max(math.prod(q), mp + max((r for _, r in taps), default=0)),
            bm=bm, bc=bc, bf=bf, cp=_round_up(spec.in_features, bc),
            fp=_round_up(spec.out_features, bf), mp=mp,
        )

    def on_chip_bytes(self, itemsize: int, acc_itemsize: int) -> int:
        """Bytes of one tile's blocks: the image's rows, the kernel's and the output's tile,
        each double-buffered."""
        image = math.prod(self.phases) * self.rows * self.cp * itemsize
        kernel = len(self.taps) * self.cp * self.bf * itemsize
        return 2 * (image + kernel + self.bm * self.bf * acc_itemsize)


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
    """Why the Pallas kernel cannot run ``spec`` with operands of ``dtype`` on the default
    backend, or None (`refusal`)."""
    return refusal(spec, dtype, jax.default_backend())


def refusal(spec: ConvSpec, dtype: jax.typing.DTypeLike, platform: str) -> str | None:
    """Why the Pallas kernel cannot run ``spec`` with operands of ``dtype`` on `platform`
    ("cpu": interpreted; "gpu", "cuda", "rocm", "tpu": compiled), or None."""
    dt = jnp.dtype(dtype)
    if spec.feature_group_count != 1:
        return (f"pallas runs dense convolutions only (feature_group_count 1), not "
                f"feature_group_count={spec.feature_group_count}")
    if spec.batch_group_count != 1:
        return (f"pallas runs dense convolutions only (batch_group_count 1), not "
                f"batch_group_count={spec.batch_group_count}")
    if jnp.issubdtype(dt, jnp.complexfloating):
        return f"pallas takes real operands, not {dt}"
    if platform == "cpu":
        return None
    if dt not in COMPILED_DTYPES:
        return (f"pallas compiled on {platform} takes float16, bfloat16 or float32 "
                f"operands, not {dt}")
    limit = ON_CHIP_BYTES.get(platform)
    if limit is not None:
        acc = 4 if dt.itemsize < 4 else dt.itemsize
        need = Layout.of(spec).on_chip_bytes(dt.itemsize, acc)
        if need > limit:
            return (f"pallas holds one image on chip: its tiles need {need} bytes, more "
                    f"than the {limit} of {platform}")
    return None


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, C, F) -> (N, *out, F)`` by the kernel; tangents (and so
    gradients) by `shift`."""
    return _fused(spec, precision, jnp.dtype(acc_dtype), x, w)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _fused(spec: ConvSpec, precision: lax.PrecisionLike, acc_dtype: jnp.dtype,
           x: jax.Array, w: jax.Array) -> jax.Array:
    """``(N, *in, C), (*window, C, F) -> (N, *out, F)``: pad, lay out as rows, run the
    kernel, crop."""
    layout = Layout.of(spec)
    rows = _rows(spec, layout, pad_input(spec, x))
    c, f = spec.in_features, spec.out_features
    wk = jnp.pad(w.reshape(spec.taps, c, f), ((0, 0), (0, layout.cp - c), (0, layout.fp - f)))
    y = _call(spec, layout, precision, acc_dtype, rows.dtype)(rows, wk)
    return _crop(spec, layout, y)


def _fused_jvp(spec: ConvSpec, precision: lax.PrecisionLike, acc_dtype: jnp.dtype,
               primals: tuple[jax.Array, jax.Array],
               tangents: tuple[Any, Any]) -> tuple[jax.Array, jax.Array]:
    """Values by the kernel; the tangent ``conv(dx, w) + conv(x, dw)`` by `shift`, whose
    transpose reverse mode takes (symbolic-zero tangents skipped)."""
    x, w = primals
    dx, dw = tangents
    y = _fused(spec, precision, acc_dtype, x, w)
    terms = [shift.lower(spec, a, b, precision=precision, acc_dtype=acc_dtype)
             for a, b, t in ((dx, w, dx), (x, dw, dw)) if not isinstance(t, SymbolicZero)]
    return y, functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(y)


_fused.defjvp(_fused_jvp, symbolic_zeros=True)


def _rows(spec: ConvSpec, layout: Layout, xp: jax.Array) -> jax.Array:
    """``(N, *padded, C) -> (N, prod(s), rows, cp)``: each dim split into its stride's
    phases, each phase image flattened to rows, zeros to the layout's rows and channels."""
    n, c = xp.shape[0], xp.shape[-1]
    s, q = layout.phases, layout.q
    grow = [(0, qi * si - p) for qi, si, p in zip(q, s, xp.shape[1:-1], strict=True)]
    xp = jnp.pad(xp, [(0, 0), *grow, (0, layout.cp - c)])
    split = xp.reshape(n, *(d for qi, si in zip(q, s, strict=True) for d in (qi, si)),
                       layout.cp)
    ns = len(s)
    order = (0, *(2 + 2 * i for i in range(ns)), *(1 + 2 * i for i in range(ns)), 2 * ns + 1)
    flat = jnp.transpose(split, order).reshape(n, math.prod(s), math.prod(q), layout.cp)
    return jnp.pad(flat, ((0, 0), (0, 0), (0, layout.rows - math.prod(q)), (0, 0)))


def _crop(spec: ConvSpec, layout: Layout, y: jax.Array) -> jax.Array:
    """``(N, mp, fp) -> (N, *out, F)``: the wide grid's real outputs and filters."""
    out = spec.out_spatial
    y = y[:, :layout.wide, :spec.out_features]
    y = y.reshape(y.shape[0], *out[:1], *layout.q[1:], spec.out_features)
    return y[(slice(None), slice(None), *(slice(o) for o in out[1:]))]


def _call(spec: ConvSpec, layout: Layout, precision: lax.PrecisionLike, acc_dtype: jnp.dtype,
          dtype: jnp.dtype) -> Any:
    """The `pallas_call` over tiles ``(image, filters, wide rows)``: ``(N, prod(s), rows,
    cp), (taps, cp, fp) -> (N, mp, fp)`` in ``acc_dtype``, interpreted on the CPU."""
    lo = layout
    n, phases = spec.batch, math.prod(lo.phases)
    itemsize = jnp.dtype(dtype).itemsize
    estimate = pl.CostEstimate(
        flops=2 * n * lo.mp * lo.fp * lo.cp * len(lo.taps), transcendentals=0,
        bytes_accessed=itemsize * (n * phases * lo.rows * lo.cp + len(lo.taps) * lo.cp * lo.fp)
        + jnp.dtype(acc_dtype).itemsize * n * lo.mp * lo.fp)
    return pl.pallas_call(
        functools.partial(_kernel, lo, precision),
        out_shape=jax.ShapeDtypeStruct((n, lo.mp, lo.fp), acc_dtype),
        grid=(n, lo.fp // lo.bf, lo.mp // lo.bm),
        in_specs=[
            pl.BlockSpec((1, phases, lo.rows, lo.cp), lambda i, f, m: (i, 0, 0, 0)),
            pl.BlockSpec((len(lo.taps), lo.cp, lo.bf), lambda i, f, m: (0, 0, f)),
        ],
        out_specs=pl.BlockSpec((1, lo.bm, lo.bf), lambda i, f, m: (i, m, f)),
        interpret=jax.default_backend() == "cpu",
        compiler_params=_compiler_params(),
        cost_estimate=estimate,
        name="jconv_pallas_conv",
    )


def _compiler_params() -> Any:
    """Triton's on a GPU (Pallas' default there, Mosaic GPU, stages each block in shared
    memory, and the image's rows do not fit); the platform's defaults elsewhere."""
    if jax.default_backend() == "gpu":
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=TRITON_WARPS, num_stages=TRITON_STAGES)
    return None


def _kernel(layout: Layout, precision: lax.PrecisionLike, x_ref: Any, w_ref: Any,
            o_ref: Any) -> None:
    """One tile: ``o[bm, bf] = sum_k sum_c x[phase_k, m0 + shift_k + (0..bm), c] w[k, c,
    f0 + (0..bf)]``, input channels ``bc`` at a time, in the output's dtype."""
    bm, bc = layout.bm, layout.bc
    m0 = pl.multiple_of(pl.program_id(2) * bm, bm)

    def channels(c0: Any, acc: jax.Array) -> jax.Array:
        for t, (phase, row) in enumerate(layout.taps):
            window = x_ref[0, phase, pl.ds(m0 + row, bm), pl.ds(c0, bc)]
            acc = acc + jnp.dot(window, w_ref[t, pl.ds(c0, bc), :], precision=precision,
                                preferred_element_type=acc.dtype)
        return acc

    acc = jnp.zeros(o_ref.shape[1:], o_ref.dtype)
    chunks = layout.cp // bc
    if chunks == 1:
        acc = channels(0, acc)
    else:
        acc = lax.fori_loop(
            0, chunks, lambda i, a: channels(pl.multiple_of(i * bc, bc), a), acc)
    o_ref[0] = acc


def _tiled(size: Expr) -> Expr:
    """``size`` rounded up to its tile (`_tile`), as SymPy."""
    tile = sp.Min(BLOCK, sp.Max(MIN_BLOCK, 2 ** sp.ceiling(sp.log(size, 2))))
    return sp.ceiling(size / tile) * tile


def cost_of(geo: Geometry) -> Cost:
    """FLOPs ``2*MACs``: the products that reach the output (the kernel also multiplies the
    wide columns and the tiles' zeros, `predict`'s `Layout` overhead). Temp, the buffers
    around the compiled kernel: the padded input, its rows (the padded input's samples,
    channels padded to their tile; the rows' rounding to tiles and the halo left out) and
    the wide output (``o_0 * prod(p_i)`` rows at stride 1; ``prod(o)`` when strided, whose
    phases' wide columns are left out), filters padded to their tile; each written once."""
    wide = sp.Mul(*geo.out[:1], *(o + (1 - geo.strided) * (p - o)
                                  for o, p in zip(geo.out[1:], geo.padded[1:], strict=True)))
    rows = geo.n * sp.Mul(*geo.padded) * _tiled(geo.g * geo.cg)
    temp = geo.pad * geo.in_elems + rows + geo.n * wide * _tiled(geo.g * geo.fq)
    return make_cost(flops=2 * geo.macs, temp_elems=temp, moved_elems=temp, geo=geo)


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of the Pallas kernel for ``spec`` (see `cost_of`)."""
    return cost_of(Geometry.from_spec(spec, dtype))


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols`."""
    return cost_of(Geometry.symbols(num_spatial))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """`NEVER` on the CPU (interpreted). Compiled: the kernel's dots, the wide rows and
    padded tiles included, at the GEMM rate of depth ``C`` and width ``F``, and the layout's
    copies."""
    if jax.default_backend() == "cpu":
        return NEVER
    flops, _, moved = cost(spec, dtype).evaluate()
    lo = Layout.of(spec)
    padded = lo.mp * lo.cp * lo.fp / max(1, math.prod(spec.out_spatial) * spec.in_features
                                         * spec.out_features)
    rate = gemm_rate(spec.in_features, spec.out_features)
    return Prediction.scaled(padded * flops / rate, copy_seconds(moved), BACKWARD,
                             BACKWARD_COPY)
