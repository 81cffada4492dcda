"""The gradients of a dense convolution as two convolutions, as lax computes them.

Reverse mode transposes the tangent ``conv(dx, w) + conv(x, dw)``. A lowering's own
transpose is mechanical: each tap's product padded back into the input's gradient, or a
Winograd transform's adjoint over overlapping tiles; each kernel offset's GEMM of depth
``N * out`` over residuals the forward kept (row patches, window slices, tiles), read back
from memory. Measured on the benchmark's dense cases (2-core x86), that made the
gradients 1-6x lax's. For a dense convolution (`applies`) the engine computes each term
so that its transpose is the fast one:

- ``conv(dx, w)`` (`input_tangent`) is the transpose of the input gradient written as a
  convolution of the cotangent with the flipped kernel (`ConvSpec.input_gradient`), by a
  lowering the planner picks for that convolution: reverse mode transposes it back.
  Scatter and Winograd read the forward kernel as it is (`scatter.lower_flipped`,
  `winograd.lower_flipped`), making no flipped copy: scatter's XLA would compute in the
  forward pass and hold; fused into Winograd's kernel transform, its transposed reads made
  a 512-channel layer's input gradient 47 ms against its forward's 8.
- ``conv(x, dw)`` (`kernel_tangent`) loops over blocks of outputs (`blocked`,
  `BLOCK_BYTES`), each block rematerialised (`jax.checkpoint`) with its patches built
  channel-major, ``(taps * C, outputs)``, from rows of the input transposed: its
  transpose, the kernel gradient, is one GEMM a block that contracts both operands along
  their contiguous axis while the block is in cache. A layer planned on Winograd loops over
  Winograd's own transpose instead where it pays (`winograd_kernel_gradient`: in 1-D, four
  GEMMs over a chunk's transformed tiles; in 2-D, 16, where a chunk's tiles are deep
  enough and their transform stays in cache; on the CPU). Grouped layers, one-tap layers
  that read more channels than they write, and batches XLA may split over devices take the
  hybrid lowering (`jconv.strategies.hybrid`) over chunks of `CHUNK` images instead: a loop
  that pads one chunk, builds its row patches and adds one GEMM per leading offset.

Forward mode computes the same two convolutions by the transposes of those loops. Both
terms are exact-class (sums of products), whatever lowering computes the values.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from ._sharding import partition_factor, transposed, vary_like
from ._spec import ConvSpec
from .strategies import STRATEGIES, hybrid, scatter, winograd
from .strategies._common import Geometry, in_batch_chunks, offsets, pad_input, window_slice

__all__ = [
    "BLOCK_BYTES",
    "BLOCK_STEPS",
    "CHUNK",
    "WINOGRAD_KERNEL_GRADIENT_BYTES",
    "WINOGRAD_KERNEL_GRADIENT_DEPTH",
    "WINOGRAD_KERNEL_GRADIENT_PLATFORMS",
    "applies",
    "blocked",
    "chunk",
    "input_tangent",
    "kernel_tangent",
    "temp_bytes",
    "winograd_kernel_gradient",
]

CHUNK = 2
"""Images per chunk of the kernel gradient (measured best of 1, 2 and 8 on dense 3x3
C = 16-256, 1x1, a 3x3 stride-2 and the 7x7/2 stem), and at most per step of its blocks
(`_blocks`)."""


def applies(spec: ConvSpec) -> bool:
    """Whether the engine may compute `spec`'s gradients here: at least one spatial
    dimension, more than one input channel per group, no batch groups. The others
    (depthwise, products, batch groups) keep their lowering's own transpose: a per-channel
    reduction. The planner decides (`planner.Lowerings.input_gradient`), within the memory
    budget (`temp_bytes`)."""
    return (spec.num_spatial > 0 and spec.batch_group_count == 1
            and spec.group_in_features > 1 and not spec.empty)


BLOCK_STEPS = 16
"""Steps a loop of whole images (`_blocks`) takes where its patches allow more than `CHUNK`
images a step: a large batch of small images in steps of two is a long loop of small GEMMs.
Measured (kernel gradient alone, then forward and backward, times lax's; 2-core x86):
3x3 over 128 x 16 x 16 x 64 in 32 steps of 4 images (as many as `BLOCK_BYTES` holds) 0.72
and 0.53, in 64 steps of 2 0.84 and 0.57; over 128 x 8 x 8 x 128 in 16 steps 0.85 and 0.72
against 1.05 and 0.82; 3x3/2 over 128 x 32 x 32 x 16 in 16 steps 0.82 and 0.83 against 1.00
and 0.87, with 1-4 MB more temporaries."""

BLOCK_BYTES = 4 * 2**20
"""Bytes of a blocked kernel gradient's patches a step holds at most, counted in float32
(`blocked`, `_blocks`), unless one row of the leading spatial axis holds more. Measured
(2-core x86, alternating with lax; ms):

- 1-D, batch 8 x 4096 samples, C = F = 64: k = 15 in steps of 1024 outputs (3.8 MiB of
  patches) 29.5-31 against lax's 24-25 and the hybrid's two-image chunks' 70-75 (row-major
  patches contracted along their long axis); 2048 outputs 31, 4096 47. k = 31: 67-75
  against lax's 50-56 and the chunks' 138-145; 4096 outputs 109.
- 2-D, 3x3: 1 x 256 x 256 x 16 in steps of 1024, 2048 and 4096 outputs (2.3 MiB) 9.5, 7.1
  and 5.7 against lax's 26 and the hybrid's 27; 4 x 128 x 128 x 32: 19.6, 17.4 and 16.2
  (4.5 MiB) against lax's 16 and the hybrid's 41-46."""


def blocked(spec: ConvSpec) -> bool:
    """Whether `kernel_tangent` runs `spec` over blocks of outputs (`_blocks`): one group, no
    batch split over devices (whose chunks `in_batch_chunks` keeps on them), a window that
    reaches at most one block past its own, and not one tap reading more channels than it
    writes: there the hybrid's GEMM reads the input in place, where the blocks copy it
    transposed (1x1 over 8 x 28 x 28 x 512 to 128: 11.8 ms against the blocks' 15.7; lax
    22; with C <= F the blocks took 0.7-0.9x the hybrid's time)."""
    if spec.feature_group_count != 1 or partition_factor(spec.batch) > 1:
        return False
    if spec.taps == 1 and spec.in_features > spec.out_features:
        return False
    _, rows, blocks = _blocks(spec)
    return blocks == 1 or _span(spec, rows) <= 2 * rows * spec.window_strides[0]


def _blocks(spec: ConvSpec) -> tuple[int, int, int]:
    """``(images a step, rows a block, blocks an image)``, rows along the leading spatial axis
    (each row all the outputs of the other axes): as few blocks as fit their patches in
    `BLOCK_BYTES` (a row at least), or each image whole, as many a step as fit (dividing the
    batch) but at most `CHUNK`, or the batch over `BLOCK_STEPS` where that is more; the whole
    batch in one step where the kernel-sized buffer a loop carries would outweigh it (late
    layers: big kernels, small images). More images a step held more temporaries for no
    speed: ResNet-18's training step (batch 8 at 112 x 112) 84 MB with up to eight, 74 with
    two, at 0.75x lax's time both."""
    t, row = spec.out_spatial[0], math.prod(spec.out_spatial[1:])
    outputs = BLOCK_BYTES // (4 * spec.taps * spec.in_features)  # a step's, at most
    if t * row > outputs:
        blocks = -(-t // max(1, outputs // row))
        return 1, -(-t // blocks), blocks  # rows evened out over the blocks
    n = spec.batch
    images = max(i for i in range(1, min(max(CHUNK, n // BLOCK_STEPS), n) + 1)
                 if n % i == 0 and (i == 1 or i * t * row <= outputs))
    if images < n and _step_elems(spec, images, t) + math.prod(spec.rhs_shape) >= (
            _step_elems(spec, n, t)):
        return n, t, 1  # one step: a loop would carry a kernel-sized buffer
    return images, t, 1


def _step_elems(spec: ConvSpec, images: int, rows: int) -> int:
    """Temporary elements of one step over `rows` output rows of `images` images: their
    input (padded, then transposed) and their patches (strided windows copied before they
    are stacked)."""
    c, row_in = spec.in_features, math.prod(spec.padded_in[1:])
    copies = 2 if spec.strided else 1
    patches = spec.taps * c * rows * math.prod(spec.out_spatial[1:])
    return images * (2 * _span(spec, rows) * row_in * c + copies * patches)


def _span(spec: ConvSpec, rows: int) -> int:
    """Input rows (along the leading spatial axis) that `rows` consecutive output rows read:
    ``(rows - 1)`` strides and the window's dilated size."""
    return (rows - 1) * spec.window_strides[0] + spec.effective_window[0]


def _blocked_temp(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> float:
    """Temporary bytes of `blocked`'s kernel gradient: a step's (`_step_elems`); where an
    image has several blocks, the input's blocks and the cotangent padded to whole blocks;
    where it loops, the kernel-sized buffer it carries (measured: 3x3 over 8 x 4 x 4 x 512
    holds 10.0 MB in steps of one or two images, 4.7 in one step; its kernel is 9.4)."""
    images, rows, blocks = _blocks(spec)
    elems = _step_elems(spec, images, rows)
    if blocks > 1:
        row_in, row_out = math.prod(spec.padded_in[1:]), math.prod(spec.out_spatial[1:])
        elems += spec.batch * blocks * (_span(spec, rows) * row_in * spec.in_features
                                        + rows * row_out * spec.out_features)
    if spec.batch * blocks > images:
        elems += math.prod(spec.rhs_shape)
    return float(jnp.dtype(dtype).itemsize * elems)


def _blocked_tangent(
    spec: ConvSpec,
    x: jax.Array,
    dw: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, C, F) -> (N, *out, F)``: ``conv(x, dw)`` over blocks of rows
    of the leading spatial axis (`_blocks`), each a rematerialised step. A step stacks its
    block's windows into patches ``(taps * C, outputs)`` from the block's input transposed
    to ``(C, images, rows, *rest)``, so that the transpose's GEMM, ``patches @ cotangent``,
    reads both along their rows. Whole images are padded in their step; an image of
    several blocks is cut into them first, each with the halo its last windows read."""
    n, c, f = spec.batch, spec.in_features, spec.out_features
    s, t = spec.window_strides[0], spec.out_spatial[0]
    images, rows, blocks = _blocks(spec)
    stride = rows * s  # input rows between blocks
    width = _span(spec, rows)
    if blocks == 1:
        # one image a step: the loop reads x as it is (XLA copied the whole input to
        # relayout a loop operand with a unit axis)
        xb = x if images == 1 else x.reshape(n // images, images, *x.shape[1:])

        def block(xi: jax.Array) -> jax.Array:
            return pad_input(spec, xi[None] if images == 1 else xi)[:, :width]
    else:
        xp = pad_input(spec, x)  # (N, P, *rest, C)
        rest = xp.shape[2:-1]
        xp = lax.pad(xp, jnp.zeros((), xp.dtype),
                     [(0, 0, 0), (0, (blocks + 1) * stride - xp.shape[1], 0)]
                     + [(0, 0, 0)] * (len(rest) + 1))
        own = xp[:, :blocks * stride].reshape(n, blocks, stride, *rest, c)
        ahead = xp[:, stride:].reshape(n, blocks, stride, *rest, c)
        xb = jnp.concatenate([own, ahead[:, :, :max(width - stride, 0)]], axis=2)[:, :, :width]
        xb = xb.reshape(n * blocks, width, *rest, c)

        def block(xi: jax.Array) -> jax.Array:
            return xi[None]
    wk = dw.reshape(spec.taps * c, f)
    # a step is a VALID convolution of its padded rows
    sub = dataclasses.replace(spec, lhs_shape=(images, width, *spec.padded_in[1:], c),
                              padding=((0, 0),) * spec.num_spatial,
                              lhs_dilation=(1,) * spec.num_spatial)

    def step(xi: jax.Array, w: jax.Array) -> jax.Array:  # (images, *, C) -> (M, F)
        xi = block(xi)  # (images, width, *rest, C)
        patches = jnp.stack([jnp.moveaxis(window_slice(sub, xi, k), -1, 0)
                             for k in offsets(spec)])  # (taps, C, images, rows, *out_rest)
        patches = patches.reshape(spec.taps * c, images * math.prod(sub.out_spatial))
        return lax.dot_general(patches, w, (((0,), (0,)), ((), ())), precision=precision,
                               preferred_element_type=acc_dtype)

    ys = lax.map(lambda xi: jax.checkpoint(step)(xi, wk), xb)  # (steps, M, F)
    return ys.reshape(n, blocks * rows, *spec.out_spatial[1:], f)[:, :t]


def chunk(spec: ConvSpec) -> int:
    """Images per chunk of the kernel gradient: at most `CHUNK` (or the batch's split over
    devices, a multiple of which every chunk must be) and dividing the batch; the whole
    batch where the loop would hold more temporary bytes than the hybrid over the whole
    batch (it carries the kernel's gradient and adds a chunk's to it: two kernel-sized
    buffers, which late layers' kernels make larger than their row patches)."""
    n, p = spec.batch, partition_factor(spec.batch)
    c = max(c for c in range(p, n + 1, p) if n % c == 0 and c <= max(CHUNK, p))
    if c == n:
        return n
    loop = _hybrid_temp(_chunk_of(spec, c), jnp.float32) + 2 * 4 * math.prod(spec.rhs_shape)
    return c if loop < _hybrid_temp(spec, jnp.float32) else n


def temp_bytes(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> float:
    """Temporary bytes of the kernel gradient (`kernel_tangent` transposed): the blocks'
    (`blocked`), or the hybrid's on one chunk and, where it loops, the two kernel-sized
    buffers it carries."""
    if blocked(spec):
        return _blocked_temp(spec, dtype)
    c = chunk(spec)
    carried = 0 if c == spec.batch else 2 * jnp.dtype(dtype).itemsize * math.prod(spec.rhs_shape)
    return _hybrid_temp(_chunk_of(spec, c), dtype) + carried


def _chunk_of(spec: ConvSpec, images: int) -> ConvSpec:
    return dataclasses.replace(spec, lhs_shape=(images, *spec.lhs_shape[1:]))


def _hybrid_temp(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> float:
    """The hybrid's temporary bytes on `spec`, unchunked (as `kernel_tangent` runs it)."""
    return float(hybrid.cost_of(Geometry.from_spec(spec, dtype)).temp_bytes)


def input_tangent(
    spec: ConvSpec,
    lowering: str,
    w: jax.Array,
    tied_w: jax.Array,
    dx: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(*window, Cg, F), (N, *in, C) -> (N_out, *out, F)``: ``conv(dx, w)``, as the
    transpose of the input gradient by `lowering` (`input_gradient`,
    `planner.Lowerings.input_gradient`). `tied_w` is `w` tied to the layer's input
    (`jconv._engine._after`, itself a copy)."""
    if spec.input_gradient().empty:
        # an input of zero size (padding alone makes the output): no term
        return jnp.zeros(spec.canonical_out_shape, acc_dtype)

    def gradient(ct: jax.Array) -> jax.Array:
        return input_gradient(spec, lowering, w, tied_w, ct, precision=precision,
                              acc_dtype=acc_dtype).astype(dx.dtype)

    # its transpose (a lowering with its own JVP rule, such as `pallas`, transposes
    # through that)
    return transposed(gradient, spec.canonical_out_shape, dx.dtype, dx).astype(acc_dtype)


def input_gradient(
    spec: ConvSpec,
    lowering: str,
    w: jax.Array,
    tied_w: jax.Array,
    ct: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(*window, Cg, F), (N, *out, F) -> (N, *in, C)``: the input gradient of `spec` from
    the output cotangent `ct`, by `lowering` on `ConvSpec.input_gradient`, as a training
    step runs it (`input_tangent`'s transpose): the flipped kernel (`ConvSpec.flip_kernel`)
    is a copy of `tied_w` (`w` tied to the layer's input), except that scatter and Winograd
    on one group read the unflipped kernel (`lower_flipped`: scatter `w`, Winograd, whose
    transform is a copy, `tied_w`)."""
    grad_spec = spec.input_gradient()
    if lowering == "scatter" and spec.feature_group_count == 1 and spec.taps > 1:
        kernel, lower = w, scatter.lower_flipped
    elif lowering == "winograd" and spec.feature_group_count == 1:
        kernel, lower = tied_w, winograd.lower_flipped
    else:
        kernel, lower = spec.flip_kernel(tied_w), STRATEGIES[lowering].lower
    return lower(grad_spec, ct, kernel, precision=precision, acc_dtype=acc_dtype)


WINOGRAD_KERNEL_GRADIENT_DEPTH = 3
"""A 2-D Winograd layer's kernel gradient is Winograd's own transpose where a chunk's tiles
(its GEMMs' depth) are at least this many times ``C_g``. Measured against the hybrid's
kernel gradient (2-core x86, two-image chunks): 0.75-0.87x at 56x56x64, 28x28x64 (tiles
24x and 6x ``C_g``) and 28x28x128 (3x); 1.1x at 16x16x64 (2x); 1.0-2x at 14x14x128-256 and
1.5-3x at 7x7 and 4x4 with 256-512 channels (below 1x), where the 16 points' ``C_g x F``
products outweigh their shallow GEMMs."""

WINOGRAD_KERNEL_GRADIENT_BYTES = 8 * 2**20
"""Nor where a chunk's transformed tiles (16 points, float32) exceed these bytes: out of
cache, its 16 GEMMs lose to the blocks'. Measured against the blocks (kernel gradient alone
and forward+backward, alternating with lax; 2-core x86): 64 x 28 x 28 x 32 (0.8 MB) 1.11-1.67
against 1.45-3.31 and 0.79-1.15 against 1.26-1.80 lax's; 128 x 32 x 32 x 16 (0.5 MB) 1.39
against 1.74 forward+backward; 8 x 28 x 28 x 128 (3.2 MB) 0.78 against 1.02; 8 x 56 x 56 x
64 (6.4 MB) alike (0.82, 0.86); over the bound 1 x 128 x 128 x 64 (17 MB) 1.26 against 0.82,
4 x 128 x 128 x 32 1.55 against 1.34, 1 x 330 x 330 x 8 0.66 against 0.31, with 1.3-2x the
blocks' temporaries."""


WINOGRAD_KERNEL_GRADIENT_PLATFORMS = ("cpu",)
"""Where Winograd's own transpose is ever taken. On an NVIDIA H200 (the layer suite's dense
cases at batch x16, forward+backward, alternating with lax), it took 1.49x the hybrid's time
at 56x56x64, 1.85x at 28x28x128, the same at 14x14x256 and 1.14x in 1-D (k = 3, C = 64):
its 16 per-point GEMMs a chunk are launches, not cache reuse, there."""


def winograd_kernel_gradient(spec: ConvSpec, platform: str) -> bool:
    """Whether a layer whose values run Winograd takes its kernel gradient by Winograd's own
    transpose (one GEMM per transform point, of depth a chunk's tiles, then the kernel
    transform's adds transposed) rather than the hybrid's, on `platform` (a
    `jax.default_backend()` name): on the `WINOGRAD_KERNEL_GRADIENT_PLATFORMS`, in 1-D,
    and in 2-D where a chunk's tiles are at least `WINOGRAD_KERNEL_GRADIENT_DEPTH` times
    ``C_g`` and their transform fits `WINOGRAD_KERNEL_GRADIENT_BYTES`."""
    if platform not in WINOGRAD_KERNEL_GRADIENT_PLATFORMS:
        return False
    if spec.num_spatial == 1:
        return True
    tiles = chunk(spec) * math.prod(-(-o // 2) for o in spec.out_spatial)
    cg = spec.group_in_features
    return (tiles >= WINOGRAD_KERNEL_GRADIENT_DEPTH * cg
            and 16 * 4 * tiles * cg <= WINOGRAD_KERNEL_GRADIENT_BYTES)  # 16 points, float32


def kernel_gradient_like(spec: ConvSpec, values: str, platform: str) -> str:
    """The lowering whose forward on `spec` the kernel gradient runs like (`kernel_tangent`)
    after lowering `values` computed the values, on `platform`: Winograd's own transpose
    (`winograd_kernel_gradient`), the blocks' patches (`blocked`) or the hybrid's chunks.
    The planner ranks a dense layer's differentiated values by it: transposed 3x3/2, 64 ->
    32 channels over 8 x 28 x 28 (2-core x86) took 13.1 ms a step with Winograd's values
    and kernel gradient, 17.2 with scatter's values, the forward's pick, and the hybrid's."""
    if values == "winograd" and winograd_kernel_gradient(spec, platform):
        return "winograd"
    return "patches" if blocked(spec) else "hybrid"


def kernel_tangent(
    spec: ConvSpec,
    x: jax.Array,
    dw: jax.Array,
    *,
    lowering: str,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N_out, *out, F)``: ``conv(x, dw)`` by Winograd
    over rematerialised chunks of images (`chunk`) where `lowering` (the values') is
    `winograd` and its transpose pays on the default backend (`winograd_kernel_gradient`);
    else over blocks of outputs where `blocked`; else by the hybrid lowering over chunks
    (`kernel_gradient_like` names the three)."""
    like = kernel_gradient_like(spec, lowering, jax.default_backend())
    lower_padded = hybrid.lower_padded
    if like == "winograd":
        lower_padded = winograd.lower_1d if spec.num_spatial == 1 else winograd.lower_2d
    # varying as `x` from the start: inside `shard_map`, the transpose sums the kernel's
    # gradient over the devices, not its transform's (16/9 of its bytes for Winograd)
    dw = vary_like(dw, x)
    if like == "patches":
        return _blocked_tangent(spec, x, dw, precision=precision, acc_dtype=acc_dtype)

    def step(sub: ConvSpec, xc: jax.Array, wc: jax.Array) -> jax.Array:
        return jax.checkpoint(lambda a, b: lower_padded(
            sub, pad_input(sub, a), b, precision=precision, acc_dtype=acc_dtype))(xc, wc)

    return in_batch_chunks(spec, x, dw, chunk(spec), step)
