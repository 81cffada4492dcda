"""DFT tiles: 1-D correlation by overlap-save, every transform a GEMM with a real DFT matrix.

The padded input is cut into tiles of ``T`` samples that overlap by ``k_eff - 1`` (``k_eff``
the dilated window), so each tile yields ``step = T - k_eff + 1`` outputs. Per tile, with the
length-``T`` DFT ``X_q = sum_t x_t e^{-2 pi i q t / T}`` and ``W_q`` the kernel's, circular
correlation is ``Y_q = X_q conj(W_q)``, exact for the first ``step`` outputs. The ``T`` real
numbers of a real signal's spectrum are kept as ``T/2`` pairs (``(Re X_q, Im X_q)`` for
``0 < q < T/2``, ``(X_0, X_{T/2})`` for pair 0), so the three stages are real einsums:

- input transform ``V[h, u, c, tile] = sum_t B[t, h, u] x[t, c, tile]`` (``B``:
  ``(T, T/2, 2)``; the tiles are copied once into ``(T, C, tiles)`` order),
- channel mixing per pair ``M[h, v, f, tile] = sum_{u, c} K[h, v, f, u, c] V[h, u, c, tile]``
  (``K``: the 2x2 real form of multiplying by ``conj(W_q)``; one GEMM batched over pairs
  and feature groups),
- inverse ``y[tile, s, f] = sum_{h, v} A[h, v, s] M[h, v, f, tile]`` (``A``:
  ``(T/2, 2, step)``, only the outputs kept), then one transposed copy into ``(N, L, F)``.

With the pair axis leading and the tiles trailing, no transpose separates the GEMMs.
The mixing does ``4 T C_g F`` FLOPs per tile where direct summation does
``2 k step C_g F``: for long windows (``k >= ~15`` at 64 channels) the tiles win, like
Winograd does for 3x3. Round-off spreads over every output, as in `fft`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp
from jax import lax

from .._spec import ConvSpec
from ._common import Cost, Expr, Geometry, check_rank, make_cost, pad_input
from ._model import NEVER, Prediction, copy_seconds, gemm_rate

AUTO = True
"""`strategy="auto"` may pick DFT tiles for windows of `MIN_TAPS` taps and more."""
ACCURACY = "normwise"
"""Error bounded normwise only (the DFT matrices' round-off spreads over every output):
planned only where the caller asks for speed (`jconv.planner.allows_normwise`)."""
TRANSFORMS_KERNEL = True
"""The kernel is copied, padded and Fourier-transformed (`jconv.strategies`)."""
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

MIN_TAPS = 7
"""Planned only for windows of at least this many taps: round-off spreads over every
output as in `fft`; at 64 channels the tiles measured 1.7x (forward) and 1.05x
(forward+backward) the native convolution at k = 7, 0.6-1.0x from k = 15."""
OVERHEAD = 2.2
"""Predicted time over the cost at the model's rates: the transform GEMMs are shallower than
the mixing, and the output takes a transposed copy."""
BACKWARD = 1.0
"""Gradients over the forward's predicted arithmetic: the transposes of its three GEMMs."""
BACKWARD_COPY = 1.0
"""Gradients over the forward's predicted copies."""

TILE_QUANTUM = 16
"""Tile lengths are multiples of this (even, so the spectrum pairs up; SIMD-friendly)."""
MAX_TILE = 1024
"""Longest tile considered: the DFT matrices are ``T x T``."""


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
    """Why the DFT-tile lowering cannot run ``spec``, or None."""
    if spec.num_spatial != 1:
        return f"it needs 1 spatial dimension, got {spec.num_spatial}"
    if spec.window_strides != (1,):
        return f"it needs stride 1, got {spec.window_strides}"
    if spec.batch_group_count != 1:
        return f"it does not support batch_group_count (={spec.batch_group_count})"
    if not jnp.issubdtype(dtype, jnp.floating):
        return f"it needs a real floating dtype, got {jnp.dtype(dtype)}"
    if tile_length(spec) is None:
        return (f"its dilated window (={spec.effective_window[0]}) needs tiles longer than "
                f"MAX_TILE (={MAX_TILE})")
    return None


def _flops_per_tile(t: Expr, step: Expr, c: Expr, cg: Expr, f: Expr) -> Expr:
    """Input transform ``2 T^2 C``, mixing ``4 T C_g F`` (``T/2`` pairs of 2x2 blocks),
    inverse ``2 T step F``: ints for `tile_length`, SymPy for `cost_of`."""
    return 2 * t * t * c + 4 * t * cg * f + 2 * t * step * f


@functools.lru_cache(maxsize=1024)
def tile_length(spec: ConvSpec) -> int | None:
    """The tile length ``T`` with the fewest FLOPs: a multiple of `TILE_QUANTUM` with
    ``step >= k_eff - 1`` (a tile's overlap comes from the next tile alone), up to the one
    tile that covers every output; None if that exceeds `MAX_TILE`."""
    (k,), (out,) = spec.effective_window, spec.out_spatial
    c, f = spec.in_features, spec.out_features
    cg = spec.group_in_features
    q = TILE_QUANTUM
    lo = q * -(-max(2 * k - 2, 2) // q)
    hi = min(MAX_TILE, q * -(-(out + k - 1) // q))
    if lo > MAX_TILE:
        return None
    return min(range(lo, max(hi, lo) + 1, q),
               key=lambda t: -(-out // (t - k + 1)) * _flops_per_tile(t, t - k + 1, c, cg, f))


@functools.lru_cache(maxsize=64)
def _matrices(t: int, step: int, k: int, dil: int) -> tuple[np.ndarray, ...]:
    """``B (T, T/2, 2)``, ``A (T/2, 2, step)`` and the kernel's ``cos``/``-sin`` rows
    ``(T/2 + 1, k)`` at taps ``j * dil``, in float64."""
    h = t // 2
    ang = 2 * np.pi * np.outer(np.arange(t), np.arange(h)) / t  # (T, T/2)
    b = np.stack([np.cos(ang), -np.sin(ang)], axis=-1)
    b[:, 0, 1] = np.cos(np.pi * np.arange(t))  # pair 0 carries X_{T/2} as its second part
    ang = 2 * np.pi * np.outer(np.arange(h), np.arange(step)) / t  # (T/2, step)
    a = np.stack([2 * np.cos(ang), -2 * np.sin(ang)], axis=1) / t
    a[0, 0], a[0, 1] = 1 / t, np.cos(np.pi * np.arange(step)) / t
    ang = 2 * np.pi * np.outer(np.arange(h + 1), np.arange(k) * dil) / t  # (T/2 + 1, k)
    return b, a, np.cos(ang), -np.sin(ang)


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, L, C), (k, Cg, F) -> (N, L_out, F)`` by overlap-save DFT tiles."""
    t = tile_length(spec)
    assert t is not None
    (k,), (keff,), (out,) = spec.window, spec.effective_window, spec.out_spatial
    step, h = t - keff + 1, t // 2
    n, c, f = spec.batch, spec.in_features, spec.out_features
    g = spec.feature_group_count
    cg, fq = spec.group_in_features, spec.group_out_features
    tiles = -(-out // step)
    mats = _matrices(t, step, k, spec.rhs_dilation[0])
    bm, am, wc, ws = (jnp.asarray(m, acc_dtype) for m in mats)
    xp = pad_input(spec, x).astype(acc_dtype)
    xp = jnp.pad(xp, ((0, 0), (0, (tiles + 1) * step - xp.shape[1]), (0, 0)))
    body = xp[:, : tiles * step].reshape(n, tiles, step, c)
    halo = xp[:, step:].reshape(n, tiles, step, c)[:, :, : keff - 1]
    xt = jnp.concatenate([body, halo], axis=2).transpose(2, 3, 0, 1)  # (T, C, N, tiles)
    v = jnp.einsum("tcni,thu->hucni", xt, bm, precision=precision)
    v = v.reshape(h, 2, g, cg, n * tiles).transpose(0, 2, 1, 3, 4).reshape(h, g, 2 * cg, -1)
    # kernel spectrum W = re + i im, (T/2 + 1, Cg, F); Y = X conj(W) as a 2x2 real map
    wa = w.astype(acc_dtype)
    re = jnp.einsum("qj,jcf->qcf", wc, wa, precision=lax.Precision.HIGHEST)
    im = jnp.einsum("qj,jcf->qcf", ws, wa, precision=lax.Precision.HIGHEST)
    zero = jnp.zeros_like(re[0])
    kmat = jnp.stack([jnp.stack([re[:h], -im[:h]], axis=2),  # from Re X: to (Re Y, Im Y)
                      jnp.stack([im[:h], re[:h]], axis=2)], axis=1)  # from Im X
    pair0 = jnp.stack([jnp.stack([re[0], zero], axis=1),  # X_0 -> Y_0
                       jnp.stack([zero, re[h]], axis=1)])  # X_{T/2} -> Y_{T/2}
    kmat = kmat.at[0].set(pair0)  # (T/2, u, Cg, v, F)
    kmat = kmat.reshape(h, 2 * cg, 2, g, fq).transpose(0, 3, 2, 4, 1).reshape(h, g, 2 * fq, -1)
    m = jnp.einsum("hgjk,hgkr->hgjr", kmat, v, precision=precision)  # j: (Re/Im Y, F_g)
    m = m.reshape(h, g, 2, fq, n, tiles).transpose(0, 2, 1, 3, 4, 5).reshape(h, 2, f, n, tiles)
    y = jnp.einsum("hvfni,hvs->nisf", m, am, precision=precision)
    return y.reshape(n, tiles * step, f)[:, :out]


def cost_of(geo: Geometry, tile: sp.Expr | int | None = None) -> Cost:
    """FLOPs: per tile of length ``T`` (``step = T - k_eff + 1`` outputs, ``k_eff = p - o + 1``)
    ``2 T^2 C`` (input transform) ``+ 4 T C_g F`` (mixing: ``T/2`` pairs of 2x2 blocks)
    ``+ 2 T step F`` (inverse), over ``N ceil(o / step)`` tiles, plus the kernel's transform
    ``4 (T/2 + 1) k C_g F``; temp: two tile-sized buffers live at once (the tiles and their
    transform, or the transform and the products: ``T max(C, F)`` each per tile) and the
    mixing matrices ``2 T C_g F`` (which XLA fuses into the products where they are small:
    2 KB over 8 channels). ``T`` is a symbol if not given."""
    t = sp.Symbol("T", integer=True, positive=True) if tile is None else sp.sympify(tile)
    (k,), (p,), (o,) = geo.window, geo.padded, geo.out
    step = t - (p - o + 1) + 1
    tiles = geo.n * sp.ceiling(o / step)
    c, f = geo.g * geo.cg, geo.g * geo.fq
    flops = tiles * _flops_per_tile(t, step, c, geo.cg, f) + 4 * (t / 2 + 1) * k * geo.cg * f
    temp = 2 * tiles * t * sp.Max(c, f) + 2 * t * geo.cg * f
    moved = geo.pad * geo.in_elems + tiles * t * c + tiles * step * f
    return make_cost(flops=flops, temp_elems=temp, moved_elems=moved, geo=geo)


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of the DFT-tile lowering for ``spec`` at its `tile_length` (1-D specs)."""
    t = tile_length(spec) if spec.num_spatial == 1 else None
    if t is None:
        raise ValueError(f"`spec` must be a 1-D convolution the dft lowering can run, got {spec}")
    return cost_of(Geometry.from_spec(spec, dtype), t)


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols` with tile length ``T`` (1-D only)."""
    check_rank("dft", num_spatial, 1)
    return cost_of(Geometry.symbols(num_spatial))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """GEMMs of depth ``2 C_g`` and width ``2 F_g`` (the 2x2 real blocks of the mixing),
    times `OVERHEAD`; `NEVER` below `MIN_TAPS` taps."""
    if spec.taps < MIN_TAPS:
        return NEVER
    flops, _, moved = cost(spec, dtype).evaluate()
    rate = gemm_rate(2 * spec.group_in_features, 2 * spec.group_out_features)
    return Prediction.scaled(OVERHEAD * flops / rate, copy_seconds(moved), BACKWARD,
                             BACKWARD_COPY)
