"""Shared pieces of the lowerings: window slices, the grouped channel contraction, costs."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import sympy as sp
from jax import lax

from .._sharding import partition_factor
from .._spec import ConvSpec

Expr = Any
"""A size: a Python int or a SymPy expression (SymPy ships no precise type hints)."""


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The sizes a lowering's cost depends on, as ints or SymPy symbols.

    ``n``: batch (per batch group); ``out``/``window``/``padded``/``inp`` (the input before
    padding and lhs dilation): per spatial dim;
    ``cg``: input channels per group; ``fq``: output features per group; ``g``: groups
    (feature or batch); ``pad``: 1 if the spec pads or lhs-dilates the input, else 0;
    ``strided``: 1 if any stride exceeds 1, else 0; ``itemsize``: bytes per element;
    ``depthwise``: `ConvSpec.depthwise` (one input channel per feature group, where XLA
    fuses broadcast products instead of storing them; False in symbolic geometries).
    """

    n: Expr
    out: tuple[Expr, ...]
    window: tuple[Expr, ...]
    padded: tuple[Expr, ...]
    inp: tuple[Expr, ...]
    cg: Expr
    fq: Expr
    g: Expr
    pad: Expr
    strided: Expr
    itemsize: Expr
    depthwise: bool = False

    @classmethod
    def from_spec(cls, spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Geometry:
        """Numbers of a concrete spec with operands of ``dtype``."""
        return cls(
            n=spec.out_batch,
            out=spec.out_spatial,
            window=spec.window,
            padded=spec.padded_in,
            inp=spec.in_spatial,
            cg=spec.group_in_features,
            fq=spec.group_out_features,
            g=spec.groups,
            pad=int(spec.pads_input),
            strided=int(spec.strided),
            itemsize=jnp.dtype(dtype).itemsize,
            depthwise=spec.depthwise,
        )

    @classmethod
    def symbols(cls, num_spatial: int) -> Geometry:
        """A geometry of positive-integer SymPy symbols (``o_i``, ``k_i``, ``p_i``, ...)."""
        def pos(name: str) -> sp.Symbol:
            return sp.Symbol(name, integer=True, positive=True)

        return cls(
            n=pos("N"),
            out=tuple(pos(f"o_{i}") for i in range(num_spatial)),
            window=tuple(pos(f"k_{i}") for i in range(num_spatial)),
            padded=tuple(pos(f"p_{i}") for i in range(num_spatial)),
            inp=tuple(pos(f"i_{i}") for i in range(num_spatial)),
            cg=pos("C_g"),
            fq=pos("F_g"),
            g=pos("G"),
            pad=sp.Symbol("pad", integer=True, nonnegative=True),
            strided=sp.Symbol("strided", integer=True, nonnegative=True),
            itemsize=pos("b"),
        )

    # Element counts, all per whole tensor (every group, every batch).
    @property
    def taps(self) -> Expr:
        """Kernel offsets ``prod(window)``."""
        return sp.Mul(*self.window)

    @property
    def num_spatial(self) -> int:
        return len(self.out)

    @property
    def copies_window(self) -> Expr:
        """1 if a window slice is a real copy (more than one tap, padding or strides)."""
        if self.num_spatial and all(k == 1 for k in self.window):
            return sp.Max(self.pad, self.strided)
        return sp.Integer(1)

    @property
    def out_pixels(self) -> Expr:
        """``N * prod(out)``."""
        return self.n * sp.Mul(*self.out)

    @property
    def in_elems(self) -> Expr:
        """Padded input elements ``N * prod(padded) * C``."""
        return self.n * sp.Mul(*self.padded) * self.g * self.cg

    @property
    def out_elems(self) -> Expr:
        """Output elements ``N * prod(out) * F``."""
        return self.out_pixels * self.g * self.fq

    @property
    def macs(self) -> Expr:
        """Dense multiply-adds ``N * prod(out) * F * prod(window) * C_g``."""
        return self.out_elems * self.taps * self.cg


@dataclasses.dataclass(frozen=True)
class Cost:
    """A lowering's cost: ``flops`` (floating-point operations it performs, multiplies and
    adds counted separately), ``temp_bytes`` (bytes of intermediate buffers XLA keeps:
    what `compile().memory_analysis().temp_size_in_bytes` reports for the whole jitted
    convolution in NHWC/HWIO layout) and ``moved_bytes`` (bytes written to memory by the
    copies the lowering makes, the part that bounds it on a CPU)."""

    flops: sp.Expr
    temp_bytes: sp.Expr
    moved_bytes: sp.Expr

    def evaluate(self) -> tuple[float, float, float]:
        """``(flops, temp_bytes, moved_bytes)`` as floats (all symbols must be bound)."""
        return float(self.flops), float(self.temp_bytes), float(self.moved_bytes)


def make_cost(flops: Expr, temp_elems: Expr, moved_elems: Expr, geo: Geometry) -> Cost:
    """Build a `Cost` from element counts and the geometry's item size."""
    return Cost(
        flops=sp.sympify(flops),
        temp_bytes=sp.sympify(temp_elems * geo.itemsize),
        moved_bytes=sp.sympify(moved_elems * geo.itemsize),
    )


CHUNK_ABOVE_BYTES = 32 * 2**20
"""Lowerings whose temp bytes exceed this run over batch chunks (cache locality)."""
CHUNK_TARGET_BYTES = 16 * 2**20
"""Temp bytes aimed at per batch chunk."""


def batch_chunk(spec: ConvSpec, temp_bytes: float, above: int | None = None) -> int:
    """Images per chunk: the batch, or the largest divisor of it whose share of
    `temp_bytes` fits `CHUNK_TARGET_BYTES` when the whole exceeds `above` (default
    `CHUNK_ABOVE_BYTES`; measured, dense 3x3 C=64 at 56x56, batch 8: 2.2x -> 1.25x native
    with chunks of 2).
    Where XLA may split the batch over devices (`partition_factor`), chunks are multiples
    of the number of devices it can be split over (`in_batch_chunks`)."""
    n = spec.batch
    above = CHUNK_ABOVE_BYTES if above is None else above
    if spec.batch_group_count != 1 or n == 1 or temp_bytes <= above:
        return n
    per_image = temp_bytes / n
    p = partition_factor(n)
    fits = [c for c in range(p, n + 1, p)
            if n % c == 0 and c * per_image <= CHUNK_TARGET_BYTES]
    return max(fits, default=p)


def in_batch_chunks(
    spec: ConvSpec,
    xp: jax.Array,
    w: jax.Array,
    chunk: int,
    fn: Callable[[ConvSpec, jax.Array, jax.Array], jax.Array],
) -> jax.Array:
    """``fn(spec, xp, w)``, or `fn` mapped (`lax.map`) over batch chunks of `chunk` images.

    On one device (or inside `shard_map`) chunk ``j`` is images ``j*chunk ..``. Where XLA
    may split the batch over ``p`` devices (`partition_factor`), the batch is seen as ``p``
    blocks (those devices' shards) and chunk ``j`` takes ``chunk // p`` images of each
    block, `fn` mapped over the blocks (`jax.vmap`, each block with its own view of the
    kernel): a batch-sharded input keeps every chunk's images on their devices, the loop
    runs on every device at once with no gather, and the kernel's gradient is summed over
    the devices once, after the loop.
    """
    n = spec.batch
    if chunk >= n:
        return fn(spec, xp, w)
    m = n // chunk  # loop steps
    p = partition_factor(n)
    if p == 1:
        sub = dataclasses.replace(spec, lhs_shape=(chunk, *spec.lhs_shape[1:]))
        if chunk == 1:  # no unit axis in the loop's operands (XLA copies them to relayout)
            return lax.map(lambda xc: fn(sub, xc[None], w)[0], xp)
        ys = lax.map(lambda xc: fn(sub, xc, w), xp.reshape(m, chunk, *xp.shape[1:]))
        return ys.reshape(n, *ys.shape[2:])
    sub = dataclasses.replace(spec, lhs_shape=(chunk // p, *spec.lhs_shape[1:]))
    xs = jnp.moveaxis(xp.reshape(p, chunk // p, m, *xp.shape[1:]), 2, 0)  # (m, p, c/p, ..)
    wb = jnp.broadcast_to(w, (p, *w.shape))
    step = jax.vmap(lambda xc, wc: fn(sub, xc, wc))
    ys = lax.map(lambda xc: step(xc, wb), xs)  # (m, p, c/p, *out, F)
    return jnp.moveaxis(ys, 0, 2).reshape(n, *ys.shape[3:])


def pad_input(spec: ConvSpec, x: jax.Array) -> jax.Array:
    """``(N, *in, C) -> (N, *padded, C)``: the spec's padding (negative crops) and lhs
    dilation (zeros between samples), one `lax.pad`; ``x`` itself when there is neither."""
    config = [(lo, hi, d - 1) for (lo, hi), d in zip(spec.padding, spec.lhs_dilation, strict=True)]
    if all(c == (0, 0, 0) for c in config):
        return x
    return lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *config, (0, 0, 0)])


def lower_chunked(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    cost_of: Callable[[Geometry], Cost],
    lower_all: Callable[..., jax.Array],
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
    padded: bool = True,
    above: int | None = None,
) -> jax.Array:
    """``lower_all(spec, xp, w, ...)`` on the padded input ``xp`` (`pad_input`; ``x`` itself
    when not ``padded``), over batch chunks once `cost_of`'s temp bytes exceed `above`
    (`batch_chunk`), each chunk padded in the loop: XLA fuses the padding into the chunk's
    first reads, where a padded copy of the whole batch is one more pass and one more
    buffer (Winograd over 128 x 32 x 32 x 32 in chunks of 16 images: 17-18 ms against
    28; 4 x 128 x 128 x 32 one image a chunk: 7-8 against 11-12)."""
    full = cost_of(Geometry.from_spec(spec, x.dtype))
    chunk = batch_chunk(spec, float(full.temp_bytes), above)
    return in_batch_chunks(spec, x, w, chunk, lambda s, xc, wc: lower_all(
        s, pad_input(s, xc) if padded else xc, wc, precision=precision, acc_dtype=acc_dtype))


def chunked_cost(
    spec: ConvSpec,
    dtype: jax.typing.DTypeLike,
    cost_of: Callable[[Geometry], Cost],
    above: int | None = None,
) -> Cost:
    """`cost_of` for ``spec``, with the temp bytes of a `lower_chunked` run (chunking above
    `above`): over batch chunks (each padded in the loop) they scale with the chunk."""
    full = cost_of(Geometry.from_spec(spec, dtype))
    chunk = batch_chunk(spec, float(full.temp_bytes), above)
    if chunk == spec.batch:
        return full
    temp = full.temp_bytes * sp.Rational(chunk, spec.batch)
    return Cost(flops=full.flops, temp_bytes=sp.sympify(temp), moved_bytes=full.moved_bytes)


def offsets(spec: ConvSpec) -> Iterator[tuple[int, ...]]:
    """All kernel offsets ``k`` (tuples over spatial dims), row-major."""
    return itertools.product(*(range(k) for k in spec.window))


def window_slice(
    spec: ConvSpec, xp: jax.Array, k: tuple[int | None, ...] | jax.Array
) -> jax.Array:
    """``xp[:, o*s + k*d, :]`` for every output position ``o``: shape ``(N, *out, C)``.

    A ``None`` in ``k`` keeps that spatial axis whole (no slice, no stride). ``k`` may also
    be a traced ``(num_spatial,)`` integer array (one offset per step of a loop): then the
    window is a `lax.dynamic_slice`, strided afterwards.
    """
    if isinstance(k, jax.Array):
        extent = [(o - 1) * s + 1 for o, s in zip(spec.out_spatial, spec.window_strides,
                                                   strict=True)]
        zero = jnp.zeros((), k.dtype)
        start = [zero, *(k * jnp.asarray(spec.rhs_dilation, k.dtype)), zero]
        win = lax.dynamic_slice(xp, start, [xp.shape[0], *extent, xp.shape[-1]])
        if all(s == 1 for s in spec.window_strides):
            return win
        return lax.slice(win, [0] * win.ndim, win.shape, [1, *spec.window_strides, 1])
    start, limit, step = [0], [xp.shape[0]], [1]
    for ax, (ki, d, o, s) in enumerate(
        zip(k, spec.rhs_dilation, spec.out_spatial, spec.window_strides, strict=True)
    ):
        if ki is None:
            lo, hi, st = 0, xp.shape[ax + 1], 1
        else:
            lo, hi, st = ki * d, ki * d + (o - 1) * s + 1, s
        start.append(lo)
        limit.append(hi)
        step.append(st)
    start.append(0)
    limit.append(xp.shape[-1])
    step.append(1)
    return lax.slice(xp, start, limit, step)


def group_input(spec: ConvSpec, x: jax.Array) -> jax.Array:
    """``(N, *sp, C) -> (B, N // B, *sp, G, C // G)`` for batch groups B, feature groups G."""
    b, g = spec.batch_group_count, spec.feature_group_count
    n, c = x.shape[0], x.shape[-1]
    return x.reshape(b, n // b, *x.shape[1:-1], g, c // g)


def group_kernel(spec: ConvSpec, w: jax.Array) -> jax.Array:
    """``(..., Cg, F) -> (..., Cg, B, G, F // (B*G))``: output features are group-major."""
    b, g = spec.batch_group_count, spec.feature_group_count
    f = w.shape[-1]
    return w.reshape(*w.shape[:-1], b, g, f // (b * g))


def ungroup_output(spec: ConvSpec, y: jax.Array) -> jax.Array:
    """``(N_out, *out, B, G, Fq) -> (N_out, *out, F)``."""
    return y.reshape(*y.shape[:-3], spec.out_features)


def spatial_letters(num_spatial: int) -> str:
    """One einsum letter per spatial dimension (none of ``B, N, G, C, F, K`` or ``o``, ``k``,
    ``c``, ``f``, ``n``, which the lowerings' equations use for other axes)."""
    return "abdehijlmpqrtuvwxyz"[:num_spatial]


def contract(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    extra: str,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """Sum over input channels (and the `extra` axes) of grouped input times grouped kernel.

    ``x``: ``(B, Nb, *out, *extra, G, Cg)``; ``w``: ``(*extra, Cg, B, G, Fq)``;
    returns ``(Nb, *out, B, G, Fq)``. Channels are **summed**, never averaged. Without
    groups this is one plain matrix product ``(Nb, *out, extra * Cg) @ (extra * Cg, F)``
    (XLA emits a single dot with no transposes): only the trailing axes are merged, so
    that the batch and spatial axes stay apart for XLA's partitioner.
    """
    if spec.groups == 1:
        lead = x.shape[1:-2 - len(extra)]
        depth = math.prod(x.shape[-2 - len(extra):])
        y = jnp.matmul(
            x.reshape(*lead, depth), w.reshape(depth, spec.out_features),
            precision=precision, preferred_element_type=acc_dtype,
        )
        return y.reshape(*lead, 1, 1, spec.out_features)
    s = spatial_letters(spec.num_spatial)
    eq = f"BN{s}{extra}GC,{extra}CBGF->N{s}BGF"
    return jnp.einsum(eq, x, w, precision=precision, preferred_element_type=acc_dtype)


def check_rank(lowering: str, num_spatial: int, rank: int) -> None:
    """ValueError unless ``num_spatial == rank`` (for `formula` of a lowering of one rank)."""
    if num_spatial != rank:
        raise ValueError(f"`num_spatial` (={num_spatial!r}) must be {rank} for {lowering!r}.")


def check_one_group(spec: ConvSpec) -> None:
    """ValueError unless `spec` has one feature group (for a lowering's ``lower_flipped``,
    which reads the forward kernel's channel axes swapped)."""
    if spec.feature_group_count != 1:
        raise ValueError(f"`spec.feature_group_count` (={spec.feature_group_count}) must be "
                         "1 for a flipped kernel.")


def fastest(lowerings: Iterable[ModuleType], spec: ConvSpec,
            dtype: jax.typing.DTypeLike) -> ModuleType:
    """The lowering of `lowerings` that can run ``spec`` and predicts the fastest forward for
    it (the sub-convolutions of `polyphase` and `atrous`)."""
    return min((m for m in lowerings if m.applicable(spec, dtype) is None),
               key=lambda m: m.predict(spec, dtype).forward)
