"""Winograd F(2x2, 3x3) and F(2, 3): 3x3 (2-D) and 3-tap (1-D) stride-1 convolutions with
2.25x and 1.5x fewer multiplies.

With ``B^T`` (4x4), ``G`` (4x3), ``A^T`` (2x4) the minimal-filtering matrices of Lavin and
Gray (2016), every 2x2 output tile is ``A^T [(G w G^T) (.) (B^T d B)] A`` for the 4x4 input
tile ``d``. ``B^T`` and ``A^T`` hold only 0 and +-1, so their transforms are adds
(`lower_2d`), written over the tile's rows, then its columns:

- each of the 16 transform points ``V_p = (B^T d B)_p`` is a sum of four of the tile's
  elements (strided slices of the padded input), which XLA fuses into the operand of that
  point's GEMM: no tile is ever copied;
- channel mixing ``M_p = V_p U_p`` (``U = G w G^T``, adds and halvings over the kernel's
  taps, `kernel_points`), one GEMM of depth ``C_g`` per point and feature group,
  ``(R, C_g) @ (C_g, F_g)`` over ``R = N T_h T_w`` tiles;
- ``Y = A^T M A``: each output is a sum of nine points' products, fused into the output's
  interleave into ``(N, H, W, F)``.

`winograd4` is F(4x4, 3x3) with the transforms as GEMMs over a copy of the tiles (its
coefficients 2, 4, 5 make adds the slower way).

In 1-D (`lower_1d`) each 2-output tile reads 4 samples, and the transforms are the rows of
``B^T``, ``G``, ``A^T`` themselves, written as adds that XLA fuses into the tile copy and
the output's interleave: four GEMMs ``(N * T, C) @ (C, F)`` (one per transform point) do
``4/6`` of the dense multiplies, and no product of every tap is stored (as `scatter`
stores three for a 3-tap window).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp
from jax import lax

from .._spec import ConvSpec
from ._common import (
    Cost,
    Geometry,
    check_one_group,
    check_rank,
    chunked_cost,
    lower_chunked,
    make_cost,
)
from ._model import Prediction, copy_seconds, gemm_rate

AUTO = True
"""`strategy="auto"` may pick F(2x2, 3x3): its rounding error is that of summing the taps."""
ACCURACY = "summation"
"""Rounding error of summing the taps in the accumulation dtype (lax's class on the CPU;
exact on small-integer data)."""
TRANSFORMS_KERNEL = True
"""The kernel is copied, Winograd-transformed, ``G w G^T`` (`jconv.strategies`)."""
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

OVERHEAD = 1.0
"""Predicted time over the cost at the model's rates: the transforms are adds fused into the
GEMMs' operands and the output's copy (measured against scatter's time, the summing lowering
it is planned against: F(2, 3) 0.69-0.97x at C = 64-256, F(2x2, 3x3) 0.65-0.84x at
C = 16-64)."""
BACKWARD = 0.6
"""Gradients over the forward's predicted arithmetic: the transposes of its GEMMs."""
BACKWARD_COPY = 0.3
"""Gradients over the forward's predicted copies."""

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
    """Why Winograd F(2x2, 3x3) or F(2, 3) cannot run ``spec``, or None."""
    if spec.num_spatial == 1 and spec.window == (3,):
        return tiles_applicable(spec, dtype, 1)
    if spec.num_spatial != 2 or spec.window != (3, 3):
        return f"it needs a 1-D 3-tap or a 2-D 3x3 window, got {spec.window}"
    return tiles_applicable(spec, dtype, 2)


def tiles_applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike, rank: int) -> str | None:
    """Why F(m, 3) per axis cannot run ``spec`` (window of 3 per axis of ``rank`` axes), or
    None."""
    if spec.num_spatial != rank or spec.window != (3,) * rank:
        return f"it needs a {rank}-D {'x'.join('3' * rank)} window, got {spec.window}"
    if spec.window_strides != (1,) * rank or spec.rhs_dilation != (1,) * rank:
        return (f"it needs stride 1 and rhs dilation 1, got {spec.window_strides} and "
                f"{spec.rhs_dilation}")
    if spec.batch_group_count != 1:
        return f"it does not support batch_group_count (={spec.batch_group_count})"
    if not jnp.issubdtype(dtype, jnp.floating):
        return f"it needs a real floating dtype, got {jnp.dtype(dtype)}"
    return None


def tile_blocks(spec: ConvSpec, xp: jax.Array, m: int, acc_dtype: jnp.dtype) -> jax.Array:
    """``(N, Hp, Wp, C)`` padded ``-> (N, Th + 1, m, Tw + 1, m, G, Cg)``: zeros to whole
    tiles of ``m x m`` outputs and one block more, in blocks of ``m`` rows and columns (tile
    ``(t, s)`` reads blocks ``t, t + 1`` and ``s, s + 1``; ``Th = ceil(Ho / m)``)."""
    th, tw = (-(-o // m) for o in spec.out_spatial)
    x = xp.astype(acc_dtype)
    x = jnp.pad(x, ((0, 0), (0, m * th + m - x.shape[1]), (0, m * tw + m - x.shape[2]), (0, 0)))
    return x.reshape(x.shape[0], th + 1, m, tw + 1, m, spec.feature_group_count,
                     spec.group_in_features)


def untile(spec: ConvSpec, y: jax.Array) -> jax.Array:
    """``(m, m, G, N, Th, Tw, Fq) -> (N, Ho, Wo, F)``: output tiles interleaved, cropped."""
    m, _, _, n, th, tw, _ = y.shape
    ho, wo = spec.out_spatial
    y = y.transpose(3, 4, 0, 5, 1, 2, 6).reshape(n, m * th, m * tw, spec.out_features)
    return y[:, :ho, :wo]


def lower_2d(
    spec: ConvSpec,
    xp: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
    flipped: bool = False,
) -> jax.Array:
    """``(N, Hp, Wp, C)`` padded, ``(3, 3, Cg, F) -> (N, Ho, Wo, F)`` by F(2x2, 3x3): the
    transforms as adds (their coefficients are 0, +-1 and +-1/2), the mixing as one GEMM per
    transform point; `flipped`: `w` as `lower_flipped` reads it."""
    g, cg, fq = spec.feature_group_count, spec.group_in_features, spec.group_out_features
    xb = tile_blocks(spec, xp, 2, acc_dtype)
    th, tw = xb.shape[1] - 1, xb.shape[3] - 1
    # tile element (i, j), (N, Th, Tw, G, Cg): row 2t + i and column 2s + j of tile (t, s)
    rows = [xb[:, :th, i] if i < 2 else xb[:, 1:, i - 2] for i in range(4)]
    d = [[r[:, :, :tw, j] if j < 2 else r[:, :, 1:, j - 2] for j in range(4)] for r in rows]
    # B^T d B over the tile's rows, then its columns: 16 points, each fused into its GEMM's
    # operand
    cols = [_rows(BT, list(col)) for col in zip(*d, strict=True)]  # [j][p]
    v = [t for p in zip(*cols, strict=True) for t in _rows(BT, list(p))]
    u = [up.reshape(cg, g, fq) for up in kernel_points(w.astype(acc_dtype), 2, flipped)]
    prods = [jnp.einsum("ntsgc,cgf->gntsf", vp, up, precision=precision)
             for vp, up in zip(v, u, strict=True)]
    # A^T M A over the points' rows, then their columns, fused into the output's interleave
    half = [_rows(AT, prods[4 * p:4 * p + 4]) for p in range(4)]  # [p][s]
    return untile(spec, jnp.stack([jnp.stack(_rows(AT, list(col)))
                                   for col in zip(*half, strict=True)], axis=1))


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, H, W, C), (3, 3, Cg, F) -> (N, Ho, Wo, F)`` by Winograd F(2x2, 3x3), or
    ``(N, L, C), (3, Cg, F) -> (N, out, F)`` by F(2, 3), over batch chunks when the temp
    bytes call for it."""
    tiles = lower_1d if spec.num_spatial == 1 else lower_2d
    return lower_chunked(spec, x, w, cost_of, tiles, precision=precision, acc_dtype=acc_dtype)


def lower_flipped(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """`lower` of a dense convolution's input gradient from the forward kernel as it is,
    ``(N, *in, C), (*window, F, C) -> (N, *out, F)``, as `scatter.lower_flipped` reads it
    (`jconv._gradients.input_tangent`; one group). Reversing the window permutes the
    transform points (`FLIP`), and the GEMMs contract the kernel's second channel axis: no
    flipped copy is made. Fused into the transform's adds, the flip's transposed reads made a
    512-channel layer's input gradient 47 ms against its forward's 8."""
    check_one_group(spec)
    tiles = lower_1d if spec.num_spatial == 1 else lower_2d
    return lower_chunked(spec, x, w, cost_of, functools.partial(tiles, flipped=True),
                         precision=precision, acc_dtype=acc_dtype)


FLIP = (3, 1, 2, 0)
"""F(2, 3)'s kernel transform points of a reversed 3-tap window: ``G``'s first and last
rows read the first and last taps, its middle rows are symmetric in them."""


def kernel_points(w: jax.Array, rank: int, flipped: bool = False) -> list[jax.Array]:
    """``(3,) * rank + (Cg, F)`` kernel ``->`` its transform ``G w G^T`` (2-D) or ``G w``
    (1-D) at each of the ``4 ** rank`` points, ``(Cg, F)`` each: adds and halvings (exact)
    over the window's rows, then its columns. Each point is its own array, read in place by
    its GEMM (as one GEMM of depth 9, ``(16, 9) @ (9, Cg F)``, the transform of a 512x512
    kernel took 17-22 ms on 2 cores; as adds, 2.5). `flipped`: the transform of the kernel
    reversed in its window with its channel axes swapped (`lower_flipped`), ``(F, Cg)``
    read transposed."""
    if rank == 1:
        u = _rows(G, list(w))
    else:
        u = [up for r in _rows(G, list(w)) for up in _rows(G, list(r))]
    if not flipped:
        return u
    order = [sum(4 ** (rank - 1 - a) * FLIP[i] for a, i in enumerate(p))
             for p in np.ndindex(*(4,) * rank)]
    return [u[q].T for q in order]


def _rows(mat: np.ndarray, terms: list[jax.Array]) -> list[jax.Array]:
    """``[sum_q mat[p, q] terms[q] for p]``, adding the nonzero terms in order (a
    coefficient of +-1 is an add or a subtraction, any other a product)."""
    out = []
    for row in mat:
        acc: jax.Array | None = None
        for coef, term in zip(row, terms, strict=True):
            if coef == 0:
                continue
            t = term if abs(coef) == 1 else term * term.dtype.type(abs(coef))
            acc = (t if coef > 0 else -t) if acc is None else (acc + t if coef > 0 else acc - t)
        assert acc is not None
        out.append(acc)
    return out


def lower_1d(
    spec: ConvSpec,
    xp: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
    flipped: bool = False,
) -> jax.Array:
    """``(N, Lp, C)`` padded, ``(3, Cg, F) -> (N, out, F)`` by F(2, 3): tile ``t`` is samples
    ``2t .. 2t + 3``, two blocks of 2; `flipped`: `w` as `lower_flipped` reads it."""
    n, c = xp.shape[0], xp.shape[-1]
    (o,) = spec.out_spatial
    t = -(-o // 2)
    g, cg, f = spec.feature_group_count, spec.group_in_features, spec.out_features
    x = xp.astype(acc_dtype)
    x = jnp.pad(x, ((0, 0), (0, 2 * t + 2 - x.shape[1]), (0, 0)))  # (N, 2T + 2, C)
    xb = x.reshape(n, t + 1, 2, c)
    v = _rows(BT, [xb[:, :t, 0], xb[:, :t, 1], xb[:, 1:, 0], xb[:, 1:, 1]])
    u = kernel_points(w.astype(acc_dtype), 1, flipped)  # 4 x (Cg, F)
    if g == 1:
        prods = [jnp.matmul(vi.reshape(n * t, c), ui, precision=precision,
                            preferred_element_type=acc_dtype).reshape(n, t, f)
                 for vi, ui in zip(v, u, strict=True)]
    else:
        prods = [jnp.einsum("ntgc,cgf->ntgf", vi.reshape(n, t, g, cg), ui.reshape(cg, g, -1),
                            precision=precision, preferred_element_type=acc_dtype
                            ).reshape(n, t, f) for vi, ui in zip(v, u, strict=True)]
    y = jnp.stack(_rows(AT, prods), axis=2)  # (N, T, 2, F)
    return y.reshape(n, 2 * t, f)[:, :o]


def cost_of(geo: Geometry) -> Cost:
    """Cost of F(2x2, 3x3) (`cost_of_2d`), or in 1-D of F(2, 3) (`cost_of_1d`)."""
    return cost_of_1d(geo) if geo.num_spatial == 1 else cost_of_2d(geo)


def _adds(mat: np.ndarray) -> int:
    """FLOPs of one `_rows` pass: an add per nonzero past a row's first, a product per
    coefficient other than +-1."""
    return int(sum(np.count_nonzero(r) - 1 + np.count_nonzero(np.abs(r[r != 0]) != 1)
                   for r in mat))


def cost_of_2d(geo: Geometry) -> Cost:
    """F(2x2, 3x3) (`lower_2d`) over ``R = N ceil(o_0/2) ceil(o_1/2)`` tiles.

    FLOPs: input transform ``8 adds(B^T) R C`` (`_adds`; over the tiles' rows, then their
    columns), mixing ``2 * 16 R C_g F``, output transform ``6 adds(A^T) R F``, kernel
    transform ``7 adds(G) C_g F`` (over the kernel's 3 columns, then 4 rows of points).
    Moved: the padded input, the points' tiles and products, the output, and the kernel
    read and transformed (``25 C_g F``: at 4x4 and 7x7 images with 256-512 channels the
    transform outweighs the tiles). Temp: the padded input, the
    16 points' transformed tiles or their products, ``16 R max(C, F)`` (XLA fuses each
    point's adds into its GEMM's operand, and the products feed the output's adds
    together), and the transformed kernel ``16 C_g F``; with one channel per group the
    products are elementwise and fuse into the output's adds, which leaves a second copy of
    the padded input and four tile elements' slices ``4 R C`` (measured)."""
    tiles = geo.n * sp.ceiling(geo.out[0] / 2) * sp.ceiling(geo.out[1] / 2)
    c, f = geo.g * geo.cg, geo.g * geo.fq
    flops = (8 * _adds(BT) * tiles * c + 2 * 16 * tiles * geo.cg * f + 6 * _adds(AT) * tiles * f
             + 7 * _adds(G) * geo.cg * f)
    temp = sp.Piecewise(
        (geo.pad * geo.in_elems + 16 * (tiles * sp.Max(c, f) + geo.cg * f), sp.Gt(geo.cg, 1)),
        (2 * geo.pad * geo.in_elems + 4 * tiles * c + 16 * geo.cg * f, True))
    moved = (geo.pad * geo.in_elems + 16 * tiles * (c + f) + geo.out_elems
             + (9 + 16) * geo.cg * f)
    return make_cost(flops=flops, temp_elems=temp, moved_elems=moved, geo=geo)


def cost_of_1d(geo: Geometry) -> Cost:
    """F(2, 3) over ``R = N ceil(o/2)`` tiles. FLOPs: input transform ``4 R C`` (its adds),
    mixing ``2 * 4 R C_g F``, output transform ``4 R F``, kernel transform ``10 C_g F``.
    Temp: the padded input, about two of the four transformed tiles and two of the four
    products at a time (the dots free their operands as they go; measured 0.84-1.1x on
    C = 8-256), and the transformed kernel ``4 C_g F``."""
    tiles = geo.n * sp.ceiling(geo.out[0] / 2)
    c, f = geo.g * geo.cg, geo.g * geo.fq
    flops = (_adds(BT) * tiles * c + 2 * 4 * tiles * geo.cg * f + _adds(AT) * tiles * f
             + _adds(G) * geo.cg * f)
    temp = geo.pad * geo.in_elems + 2 * tiles * (c + f) + 4 * geo.cg * f
    moved = geo.pad * geo.in_elems + 4 * tiles * (c + f) + geo.out_elems
    return make_cost(flops=flops, temp_elems=temp, moved_elems=moved, geo=geo)


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of Winograd F(2x2, 3x3) for ``spec``, batch chunks included."""
    return chunked_cost(spec, dtype, cost_of)


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols` (1-D and 2-D)."""
    if num_spatial != 1:
        check_rank("winograd", num_spatial, 2)
    return cost_of(Geometry.symbols(num_spatial))


def predict_tiles(spec: ConvSpec, c: Cost, overhead: float, backward: float,
                  backward_copy: float) -> Prediction:
    """Cost ``c`` of F(m x m, 3x3) (or F(2, 3)) at GEMMs of depth ``C_g`` and width ``F_g``
    (the mixing), times ``overhead``, with the given backward factors."""
    flops, _, moved = c.evaluate()
    rate = gemm_rate(spec.group_in_features, spec.group_out_features)
    return Prediction.scaled(overhead * flops / rate, overhead * copy_seconds(moved),
                             backward, backward_copy)


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """`predict_tiles` of F(2x2, 3x3)'s (F(2, 3)'s) cost."""
    return predict_tiles(spec, cost(spec, dtype), OVERHEAD, BACKWARD, BACKWARD_COPY)
