"""The numeric engine: `conv_general_dilated` and the friendly `conv`, as einsums.

Pipeline: validate (`ConvSpec`, dtypes) in Python -> one jitted function per spec that
transposes to canonical order, hands the padded, lhs-dilated, strided/dilated/grouped
contraction to a lowering strategy, casts and transposes back.
No convolution primitive is used anywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jax.interpreters import partial_eval as pe

from . import planner
from ._args import as_int, int_tuple
from ._autopart import partitioned, uses_rules
from ._gradients import input_tangent, kernel_tangent
from ._padding import apply_padding_mode
from ._sharding import Split, explicit_split, may_partition
from ._spec import ConvSpec, Padding, normalize_layout
from ._validate import check_operands, check_precision, check_preferred
from .strategies import STRATEGIES

__all__ = ["conv", "conv_general_dilated"]

_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def _lower(
    x: jax.Array,
    w: jax.Array,
    spec: ConvSpec,
    lowerings: planner.Lowerings,
    precision: lax.PrecisionLike,
    acc_dtype: np.dtype,
    tied: bool,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N_out, *out, F)`` by ``lowerings.values``, `w`
    after `x` if `tied` (`_after`); differentiated, as `_lower_jvp` says."""
    return STRATEGIES[lowerings.values].lower(spec, x, _tie(w, x, tied),
                                              precision=precision, acc_dtype=acc_dtype)


def _lower_jvp(
    spec: ConvSpec,
    lowerings: planner.Lowerings,
    precision: lax.PrecisionLike,
    acc_dtype: np.dtype,
    tied: bool,
    primals: tuple[jax.Array, jax.Array],
    tangents: tuple[Any, Any],
) -> tuple[jax.Array, jax.Array]:
    """Values and tangent ``conv(dx, w) + conv(x, dw)``, which reverse mode transposes
    into the gradients. Values by ``lowerings.differentiated``, the lowering fastest forward
    and backward together; the tangent of a dense convolution by `jconv._gradients`, whose
    transposes are the fast ones (where `planner.resolve` set ``lowerings.input_gradient``),
    any other by the same lowering (its own JVP).
    Symbolic-zero tangents are skipped."""
    x, w = primals
    dx, dw = tangents
    tied_w = _tie(w, x, tied)
    if lowerings.input_gradient is not None:
        y = STRATEGIES[lowerings.differentiated].lower(spec, x, tied_w, precision=precision,
                                                       acc_dtype=acc_dtype)
        terms = []
        if not isinstance(dx, SymbolicZero):
            terms.append(input_tangent(spec, lowerings.input_gradient, w, tied_w, dx,
                                       precision=precision, acc_dtype=acc_dtype))
        if not isinstance(dw, SymbolicZero):
            terms.append(kernel_tangent(spec, x, dw, lowering=lowerings.differentiated,
                                        precision=precision, acc_dtype=acc_dtype))
        return y, functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(y)
    def by(a: jax.Array, b: jax.Array) -> jax.Array:
        return STRATEGIES[lowerings.differentiated].lower(
            spec, a, _tie(b, a, tied), precision=precision, acc_dtype=acc_dtype)

    varying = [i for i, t in enumerate(tangents) if not isinstance(t, SymbolicZero)]

    def by_varying(*args: jax.Array) -> jax.Array:
        operands = list(primals)
        for i, a in zip(varying, args, strict=True):
            operands[i] = a
        return by(*operands)

    if not varying:
        y = by(x, w)
        return y, jnp.zeros_like(y)
    return jax.jvp(by_varying, tuple(primals[i] for i in varying),
                   tuple(tangents[i] for i in varying))


_lower.defjvp(_lower_jvp, symbolic_zeros=True)


def _never(x: jax.Array) -> jax.Array:
    """False, read off `x`: whether its first two elements have more one bits than bits.

    XLA cannot fold it, so whatever depends on it is computed after `x` exists. It is a
    reduction, which XLA computes once: one element read into `_after`'s select was fused
    into every element of the kernel it ties, and with it the fused producer of `x`. 3x3
    over 8 x 28 x 28 x 256 in 32 groups on `direct` (72 multiply-adds an element), then a
    ReLU and a 3x3 layer to 64 channels on Winograd (its kernel transform: 10 fusions of
    16,384 elements): 33-34.5 ms against 21-22.6 with the reduction (alternating in one
    process), 6.1 and 6.7 apart.
    """
    first = x.reshape(-1)[:2]
    if jnp.iscomplexobj(first):
        first = jnp.real(first)
    if first.dtype == jnp.bool_:
        first = first.astype(jnp.uint8)
    width = 8 * first.dtype.itemsize
    bits = lax.bitcast_convert_type(first, jnp.dtype(f"uint{width}"))
    return jnp.all(lax.population_count(bits) > width)


def _select_after(w: jax.Array, x: jax.Array) -> jax.Array:
    """`_after`'s program: `w` selected on `_never` of `x` (`w` itself where `x` is empty)."""
    if x.size == 0:
        return w
    return lax.select(jnp.broadcast_to(_never(x), w.shape), jnp.zeros_like(w), w)


_after_p = Primitive("jconv_after")
_after_p.def_impl(lambda w, x: w)  # eagerly there is nothing to order
_after_p.def_abstract_eval(lambda w, x: w)
mlir.register_lowering(_after_p, mlir.lower_fun(_select_after, multiple_results=False))


def _after(w: jax.Array, x: jax.Array) -> jax.Array:
    """`w`, computed no earlier than `x`.

    XLA's CPU scheduler starts work as soon as its operands exist, and a kernel's
    transforms (``TRANSFORMS_KERNEL``: transposed, Winograd-transformed, ...) depend on
    the parameters alone: every layer's were computed at the start of the program and held
    until their layer ran. In a ResNet-18 forward (batch 8, 112x112) that held 37 MB of
    scatter's transposed kernels, made the program's temporaries 74 MB against lax's 13,
    and put them over glibc's 32 MB limit for reusing memory, so that every call faulted
    all of them in afresh. Tied to the input, the temporaries are 30 MB. The tie is exact
    (a select on a predicate that is always false, `_select_after`) and costs one
    element's read. It is itself a copy of the kernel, held from the forward pass to the
    backward where the input gradient reads it: an input gradient that makes no copy of the
    kernel (scatter's, `jconv._gradients.input_tangent`) reads it untied (ResNet-18's
    training step: 74 MB of temporaries against 81 tied).

    It is a primitive, linear in `w` and constant in `x`: its derivative is `w`'s tangent
    tied to `x`, its transpose passes the cotangent on, a batch ties to its first member's
    input (the kernel stays unbatched), and partial evaluation with `w` known and `x` not
    (`jax.linear_transpose` in `x`) gives `w` untied, so that the convolution stays linear
    in `x` alone.
    """
    return _after_p.bind(w, x)


def _after_jvp(primals: tuple[Any, Any], tangents: tuple[Any, Any]) -> tuple[Any, Any]:
    """The tie and `w`'s tangent tied likewise (`x`'s tangent has no effect)."""
    w, x = primals
    dw = tangents[0]
    y = _after_p.bind(w, x)
    return y, dw if type(dw) is ad.Zero else _after_p.bind(dw, x)


def _after_transpose(ct: Any, w: Any, x: Any) -> tuple[Any, Any]:
    """The cotangent is `w`'s as it is; `x`'s is zero."""
    zero_x = ad.Zero(x.aval) if ad.is_undefined_primal(x) else None
    return ct, zero_x


def _after_batched(args: tuple[jax.Array, jax.Array], dims: tuple[int | None, int | None]
                   ) -> tuple[jax.Array, int | None]:
    """One tie for the whole batch (its first member's input), so that a kernel tied to a
    vmapped input stays unbatched; over an empty batch, none (nothing to wait for)."""
    w, x = args
    if dims[1] is not None:
        if x.shape[dims[1]] == 0:
            return w, dims[0]
        x = lax.index_in_dim(x, 0, dims[1], keepdims=False)
    return _after_p.bind(w, x), dims[0]


def _after_partial_eval(trace: Any, w: Any, x: Any) -> Any:
    """`w` itself where it is known and `x` is not: nothing known can wait for `x`."""
    if w.pval.is_known() and not x.pval.is_known():
        return w
    return trace.default_process_primitive(_after_p, (w, x), {})


ad.primitive_jvps[_after_p] = _after_jvp
ad.primitive_transposes[_after_p] = _after_transpose
batching.primitive_batchers[_after_p] = _after_batched
pe.custom_partial_eval_rules[_after_p] = _after_partial_eval


def _tie(w: jax.Array, x: jax.Array, tied: bool) -> jax.Array:
    """`_after(w, x)` if `tied`, else `w`."""
    return _after(w, x) if tied else w


def _lower_by(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    lowerings: planner.Lowerings,
    precision: lax.PrecisionLike,
    acc_dtype: np.dtype,
    tied: bool = True,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N_out, *out, F)`` by `lowerings`.

    `tied`: a lowering's copies of a kernel of several offsets (``TRANSFORMS_KERNEL``; a
    1x1 kernel is read as it is) come after the input (`_after`). `jconv._autopart`'s ops
    tie their forward only: their transposes are pullbacks from zero, whose primal (a halo
    exchange, on a split input) the tie would keep alive.
    """
    tied = tied and spec.taps > 1 and any(
        STRATEGIES[n].TRANSFORMS_KERNEL for n in (lowerings.values, lowerings.differentiated))
    if lowerings.values == lowerings.differentiated and lowerings.input_gradient is None:
        # plain autodiff of the one lowering
        return STRATEGIES[lowerings.values].lower(spec, x, _tie(w, x, tied),
                                                  precision=precision, acc_dtype=acc_dtype)
    return _lower(x, w, spec, lowerings, precision, acc_dtype, tied)


@functools.partial(jax.jit, static_argnames=("spec", "strategy", "lowerings", "precision",
                                             "out_dtype", "split", "rules"))
def _run(
    lhs: jax.Array,
    rhs: jax.Array,
    *,
    spec: ConvSpec,
    strategy: str,
    lowerings: planner.Lowerings,
    precision: lax.PrecisionLike,
    out_dtype: np.dtype,
    split: Split | None = None,
    rules: bool = True,
) -> jax.Array:
    """The user's ``lhs``, ``rhs`` -> output in the user's layout, by ``lowerings``
    (`planner.resolve`'s for `strategy`); on
    explicitly sharded operands per device, as ``split`` says
    (`jconv._sharding.explicit_split`); where XLA may partition the program (and
    `rules`), per device as the operands' shardings say, planned on the shard
    (`jconv._autopart`)."""
    acc_dtype = jnp.float32 if out_dtype in _LOW_PRECISION else out_dtype
    x = jnp.transpose(lhs, spec.lhs_to_canonical)
    w = jnp.transpose(rhs, spec.rhs_to_canonical)
    if spec.empty:
        return jnp.transpose(jnp.zeros(spec.canonical_out_shape, out_dtype),
                             spec.canonical_to_out)

    def by(chosen: planner.Lowerings, tied: bool
           ) -> Callable[[ConvSpec, jax.Array, jax.Array], jax.Array]:
        return functools.partial(_lower_by, lowerings=chosen, precision=precision,
                                 acc_dtype=acc_dtype, tied=tied)

    def plan(local: ConvSpec, tied: bool = True
             ) -> Callable[[ConvSpec, jax.Array, jax.Array], jax.Array]:
        """The function computing one device's `local` convolution (planned on it)."""
        return by(planner.resolve(strategy, local, out_dtype, precision), tied)

    if split is not None:
        y = split.run(plan(split.local), x, w)
    elif rules and may_partition():
        y = partitioned(spec, plan, functools.partial(by, lowerings), x, w, acc_dtype)
    else:
        y = by(lowerings, True)(spec, x, w)
    return jnp.transpose(y.astype(out_dtype), spec.canonical_to_out)


def conv_general_dilated(
    lhs: jax.typing.ArrayLike,
    rhs: jax.typing.ArrayLike,
    window_strides: Sequence[int],
    padding: Padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: lax.PrecisionLike = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
    *,
    strategy: str = "auto",
) -> jax.Array:
    """Drop-in for `jax.lax.conv_general_dilated`, computed as an einsum over channels.

    Same arguments, same results: ``out[n, o, f] = sum_{k, c} x[n, o*s + k*d - p_lo, c]
    * w[k, c, f]`` with ``x`` lhs-dilated, groups as an extra einsum index. `strategy`
    picks the lowering: ``"auto"`` (the planner's choice, `jconv.planner`) or a key of
    `jconv.strategies.STRATEGIES` (``"shift"``, ``"patches"``, ``"winograd"``, ...).

    >>> x, w = jnp.ones((2, 1, 28, 28)), jnp.ones((10, 1, 3, 3))   # NCHW, OIHW
    >>> conv_general_dilated(x, w, (1, 1), "SAME").shape
    (2, 10, 28, 28)
    """
    lhs, rhs = check_operands(lhs, rhs)
    spec = ConvSpec.from_lax(
        lhs.shape, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, batch_group_count,
    )
    pet = check_preferred(preferred_element_type, jnp.dtype(lhs.dtype))
    prec = check_precision(precision)
    out_dtype = pet if pet is not None else jnp.dtype(lhs.dtype)
    # explicitly sharded operands: planned and run per device (`_sharding`)
    split = None if spec.empty else explicit_split(jax.typeof(lhs), jax.typeof(rhs), spec,
                                                   out_sharding)
    local = spec if split is None else split.local
    # planned as accumulated; a call XLA may partition is budgeted per device (`_autopart`)
    lowerings = planner.resolve(strategy, local, out_dtype, prec,
                                budgeted=split is not None or not (uses_rules()
                                                                   and may_partition()))
    y = _run(lhs, rhs, spec=spec, strategy=strategy, lowerings=lowerings, precision=prec,
             out_dtype=out_dtype, split=split, rules=uses_rules())
    # `out_sharding` as in lax (Flax's nnx.Conv always passes it, usually None)
    return y if out_sharding is None else _with_sharding(y, out_sharding)


def conv(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    *,
    stride: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    bias: jax.typing.ArrayLike | None = None,
    layout: str = "NHWC",
    strategy: str = "auto",
    precision: lax.PrecisionLike = None,
    padding_mode: str = "zeros",
) -> jax.Array:
    """N-D convolution (cross-correlation) with channels-last defaults.

    Args:
      x: input ``(N, *spatial, C)`` for ``layout="NHWC"``, ``(N, C, *spatial)`` for "NCHW".
      w: kernel ``(*window, C // groups, F)`` (HWIO) or ``(F, C // groups, *window)`` (OIHW).
      stride, dilation: an int for every spatial dim, or one per dim.
      padding: "SAME", "SAME_LOWER", "VALID", "SAME_TORCH" (PyTorch's 'same': d*(k-1) in
        total whatever the stride), "CAUSAL" ((d*(k-1), 0) per dim), an int (both sides of
        every dim), one int per dim, or one (low, high) pair per dim.
      padding_mode: what fills the padding: "zeros", "circular", "reflect" or "replicate".
      groups: feature groups; ``groups == C`` is a depthwise convolution.
      bias: optional ``(F,)``, added to every output position.
      layout: "NHWC" or "NCHW" (any spatial rank), or a rank-specific name like "NCW".

    Each of the F output maps is the **sum** over the C // groups input channels of their
    per-channel correlations with that filter's kernels.

    >>> conv(jnp.ones((1, 28, 28, 1)), jnp.ones((3, 3, 1, 10))).shape
    (1, 28, 28, 10)
    """
    x_arr, w_arr = check_operands(x, w)
    if x_arr.ndim < 3:
        raise ValueError(
            f"`x` (shape {tuple(x_arr.shape)}) must have rank >= 3: batch, at least one "
            "spatial dimension, channels."
        )
    n = x_arr.ndim - 2
    dnums = normalize_layout(layout, n)
    strides = int_tuple("stride", stride, n, minimum=1, broadcast=True)
    dilations = int_tuple("dilation", dilation, n, minimum=1, broadcast=True)
    _check_groups(groups, x_arr.shape[dnums[0].index("C")], w_arr, dnums[1])
    x_arr, pads = apply_padding_mode(
        x_arr, w_arr.shape, _friendly_padding(padding, n), padding_mode, strides, dilations, dnums,
        groups,
    )
    b = _check_bias(bias, w_arr, dnums[1], jnp.dtype(x_arr.dtype))
    y = conv_general_dilated(
        x_arr, w_arr, strides, pads, rhs_dilation=dilations, dimension_numbers=dnums,
        feature_group_count=groups, precision=precision, strategy=strategy,
    )
    if b is None:
        return y
    channel_axis = dnums[2].index("C")
    return y + b.reshape([b.size if a == channel_axis else 1 for a in range(y.ndim)])


def _check_bias(bias: Any, w: jax.Array, rhs_layout: str, dtype: np.dtype) -> jax.Array | None:
    """`bias` as an array of shape ``(F,)`` and the output's dtype, checked before running."""
    if bias is None:
        return None
    b = jnp.asarray(bias)
    if w.ndim != len(rhs_layout):
        return b  # the rank mismatch is reported by ConvSpec
    f = w.shape[rhs_layout.index("O")]
    if b.shape != (f,):
        raise ValueError(f"`bias` (shape {tuple(b.shape)}) must have shape ({f},), one per filter.")
    if b.dtype != dtype:
        raise TypeError(f"`bias` (dtype {b.dtype}) must have the output's dtype ({dtype}).")
    return b


def _check_groups(groups: Any, channels: int, w: jax.Array, rhs_layout: str) -> None:
    """`groups` must be a positive int dividing the input channels and the filter count."""
    g = as_int("groups", groups, minimum=1)
    if w.ndim != len(rhs_layout):
        return  # the rank mismatch is reported by ConvSpec
    filters = w.shape[rhs_layout.index("O")]
    for what, size in (("input channels", channels), ("filters", filters)):
        if size % g:
            raise ValueError(f"`groups` (={g}) must divide the number of {what} (={size}).")


def _friendly_padding(padding: Any, n: int) -> Any:
    """int -> symmetric pairs; per-dim ints -> symmetric pairs; strings and pairs unchanged."""
    if isinstance(padding, str):
        return padding
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        return ((int(padding), int(padding)),) * n
    if isinstance(padding, Sequence) and all(
        isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in padding
    ):
        if len(padding) != n:
            raise ValueError(
                f"`padding` (={padding!r}) as integers must have one entry per spatial "
                f"dimension (={n}), got {len(padding)}."
            )
        return tuple((int(p), int(p)) for p in padding)
    return padding


def _with_sharding(y: jax.Array, out_sharding: Any) -> jax.Array:
    """`out_sharding` (a `NamedSharding`, or a `PartitionSpec` on the mesh in context) on
    the output: on explicit mesh axes its type (`jax.sharding.reshard`, which moves nothing
    when the output already has it), otherwise a constraint for XLA's partitioner."""
    mesh = (out_sharding.mesh if isinstance(out_sharding, jax.sharding.NamedSharding)
            else jax.sharding.get_abstract_mesh())
    if mesh.explicit_axes:
        return jax.sharding.reshard(y, out_sharding)
    return lax.with_sharding_constraint(y, out_sharding)
