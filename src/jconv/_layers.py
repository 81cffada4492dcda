"""Layer variants as plain functions: depthwise, depthwise-separable, masked, locally connected.

All of them reduce to `jconv.conv` / einsum; none uses a convolution primitive.

- depthwise: every input channel gets its own ``M`` kernels (channel multiplier) and the maps
  are **kept separate**: ``C -> C*M`` maps, output channel ``c*M + m``.
- depthwise-separable: depthwise, then a 1x1 conv that sums over the ``C*M`` maps
  (MobileNet, Keras ``SeparableConv2D``).
- grouped: `jconv.conv` with ``groups=G``.
- masked: the kernel times a fixed 0/1 (or any) mask, as Flax's ``Conv(mask=...)``.
- locally connected: a different kernel at every output position (`local_conv`, equal to
  lax's locally connected convolution).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._args import as_int
from ._engine import conv
from ._spec import ConvSpec, Padding, normalize_layout, parse_dimension_numbers
from ._validate import check_operand, check_operands, check_precision, check_preferred
from .strategies._common import offsets, pad_input, spatial_letters, window_slice

__all__ = [
    "conv_general_dilated_patches",
    "depthwise_conv",
    "local_conv",
    "masked_conv",
    "separable_conv",
]


def _channels_last(layout: str, ndim: int) -> bool:
    return normalize_layout(layout, ndim - 2)[0].endswith("C")


def depthwise_conv(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    *,
    stride: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    bias: jax.typing.ArrayLike | None = None,
    layout: str = "NHWC",
    padding_mode: str = "zeros",
    strategy: str = "auto",
    precision: lax.PrecisionLike = None,
) -> jax.Array:
    """Depthwise convolution with channel multiplier ``M``: ``C`` maps in, ``C*M`` out.

    Args:
      x: ``(N, *spatial, C)`` ("NHWC") or ``(N, C, *spatial)`` ("NCHW").
      w: ``(*window, C, M)`` for "NHWC" (Keras ``DepthwiseConv2D``'s kernel) or
        ``(C*M, 1, *window)`` for "NCHW" (PyTorch ``Conv2d(C, C*M, k, groups=C)``).
      Other arguments as in `jconv.conv`. Output channel ``c*M + m`` is channel ``c``
      correlated with its ``m``-th kernel; channels are never summed.

    >>> depthwise_conv(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 2))).shape
    (1, 8, 8, 6)
    """
    x_arr, w_arr = check_operands(x, w)
    if x_arr.ndim < 3 or w_arr.ndim != x_arr.ndim:
        raise ValueError(
            f"`x` (shape {tuple(x_arr.shape)}) and `w` (shape {tuple(w_arr.shape)}) must have "
            "the same rank >= 3."
        )
    last = _channels_last(layout, x_arr.ndim)
    c = x_arr.shape[-1] if last else x_arr.shape[1]
    if last:
        if w_arr.shape[-2] != c:
            raise ValueError(
                f"`w` (shape {tuple(w_arr.shape)}) must be (*window, C, M) with C (=shape[-2]) "
                f"equal to the input's channels (={c})."
            )
        w_arr = w_arr.reshape(*w_arr.shape[:-2], 1, c * w_arr.shape[-1])
    elif w_arr.shape[1] != 1 or w_arr.shape[0] % max(c, 1):
        raise ValueError(
            f"`w` (shape {tuple(w_arr.shape)}) must be (C*M, 1, *window) with C the input's "
            f"channels (={c})."
        )
    return conv(
        x_arr, w_arr, stride=stride, padding=padding, dilation=dilation, groups=c, bias=bias,
        layout=layout, padding_mode=padding_mode, strategy=strategy, precision=precision,
    )


def separable_conv(
    x: jax.typing.ArrayLike,
    depthwise_w: jax.typing.ArrayLike,
    pointwise_w: jax.typing.ArrayLike,
    *,
    stride: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    bias: jax.typing.ArrayLike | None = None,
    layout: str = "NHWC",
    padding_mode: str = "zeros",
    strategy: str = "auto",
    precision: lax.PrecisionLike = None,
) -> jax.Array:
    """Depthwise-separable conv: `depthwise_conv` then a 1x1 conv summing the ``C*M`` maps.

    `depthwise_w` as in `depthwise_conv`; `pointwise_w` is ``(1, ..., 1, C*M, F)`` ("NHWC",
    Keras ``SeparableConv2D``) or ``(F, C*M, 1, ..., 1)`` ("NCHW"). Stride, padding and
    dilation apply to the depthwise step; `bias` ``(F,)`` to the result.

    >>> separable_conv(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 2)),
    ...                jnp.ones((1, 1, 6, 16))).shape
    (1, 8, 8, 16)
    """
    y = depthwise_conv(
        x, depthwise_w, stride=stride, padding=padding, dilation=dilation, layout=layout,
        padding_mode=padding_mode, strategy=strategy, precision=precision,
    )
    pw = jnp.asarray(pointwise_w)
    window = pw.shape[:-2] if _channels_last(layout, y.ndim) else pw.shape[2:]
    if pw.ndim != y.ndim or any(k != 1 for k in window):
        raise ValueError(
            f"`pointwise_w` (shape {tuple(pw.shape)}) must be a 1x1 kernel of rank {y.ndim}: "
            "(1, ..., 1, C*M, F) for channels-last or (F, C*M, 1, ..., 1) for channels-first."
        )
    return conv(
        y, pw, padding="VALID", bias=bias, layout=layout, strategy=strategy, precision=precision
    )


def masked_conv(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    **conv_kwargs: Any,
) -> jax.Array:
    """`jconv.conv` with kernel ``w * mask`` (Flax's ``Conv(mask=...)``).

    `mask` must broadcast to ``w.shape`` (a 0/1 mask zeroes taps, and their gradients);
    `conv_kwargs` are `jconv.conv`'s keywords.

    >>> m = jnp.ones((3, 3, 1, 4)).at[2:].set(0)            # causal in H
    >>> masked_conv(jnp.ones((1, 8, 8, 1)), jnp.ones((3, 3, 1, 4)), m).shape
    (1, 8, 8, 4)
    """
    x_arr, w_arr = check_operands(x, w)
    mask_arr = jnp.asarray(mask)
    try:
        shape = np.broadcast_shapes(mask_arr.shape, w_arr.shape)
    except ValueError as e:
        raise ValueError(
            f"`mask` (shape {tuple(mask_arr.shape)}) must broadcast to the kernel's shape "
            f"{tuple(w_arr.shape)}."
        ) from e
    if shape != w_arr.shape:
        raise ValueError(
            f"`mask` (shape {tuple(mask_arr.shape)}) must broadcast to the kernel's shape "
            f"{tuple(w_arr.shape)} without enlarging it."
        )
    return conv(x_arr, w_arr * mask_arr.astype(w_arr.dtype), **conv_kwargs)


def local_conv(
    lhs: jax.typing.ArrayLike,
    rhs: jax.typing.ArrayLike,
    window_strides: Sequence[int],
    padding: Padding,
    filter_shape: Sequence[int],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    precision: lax.PrecisionLike = None,
) -> jax.Array:
    """Locally connected (unshared) conv: a drop-in for lax's locally connected conv.

    `rhs` has the output's spatial sizes in its spatial axes and ``I = C * prod(filter_shape)``
    ordered channel-major, then window offsets row-major in the kernel layout's spatial order:
    ``out[n, o, f] = sum_{c, k} x[n, o*s + k*d - p_lo, c] * rhs[o, (c, k), f]``.

    >>> local_conv(jnp.ones((1, 3, 6, 6)), jnp.ones((4, 12, 5, 5)), (1, 1), "VALID",
    ...            (2, 2)).shape
    (1, 4, 5, 5)
    """
    lhs_arr, rhs_arr = check_operands(lhs, rhs)
    ndim = lhs_arr.ndim
    if ndim < 2 or rhs_arr.ndim != ndim:
        raise ValueError(
            f"`lhs` (shape {tuple(lhs_arr.shape)}) and `rhs` (shape {tuple(rhs_arr.shape)}) "
            "must have the same rank >= 2."
        )
    perms, _ = parse_dimension_numbers(dimension_numbers, ndim)
    spec = _window_spec(lhs_arr.shape, filter_shape, rhs_arr.shape[perms.rhs[0]],
                        window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers)
    c, taps = spec.in_features, spec.taps
    want = [0] * ndim
    want[perms.rhs[0]] = spec.out_features
    want[perms.rhs[1]] = c * taps
    for axis, o in zip(perms.rhs[2:], spec.out_spatial, strict=True):
        want[axis] = o
    if tuple(rhs_arr.shape) != tuple(want):
        raise ValueError(
            f"`rhs` (shape {tuple(rhs_arr.shape)}) must have shape {tuple(want)}: the output's "
            f"spatial sizes {spec.out_spatial}, I = C * prod(filter_shape) = "
            f"{c} * {taps} and O = {spec.out_features}."
        )
    return _local(lhs_arr, rhs_arr, spec=spec, precision=check_precision(precision))


def conv_general_dilated_patches(
    lhs: jax.typing.ArrayLike,
    filter_shape: Sequence[int],
    window_strides: Sequence[int],
    padding: Padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    precision: lax.PrecisionLike = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """Every window of the input as a feature vector: a drop-in for lax's
    `conv_general_dilated_patches`, built from window slices (no convolution, no products).

    ``out[n, o, c*K + k] = x[n, o*s + k*d - p_lo, c]`` with ``K = prod(filter_shape)``,
    offsets ``k`` row-major in the kernel layout's spatial order; the output has the layout
    of `dimension_numbers`' output with ``C*K`` features. These are the patches that the
    `patches` lowering contracts with the kernel.

    >>> conv_general_dilated_patches(jnp.ones((1, 3, 6, 6)), (2, 2), (1, 1), "VALID").shape
    (1, 12, 5, 5)
    """
    x = check_operand("lhs", lhs)
    check_precision(precision)  # no products are computed: validated, as lax does
    if x.ndim < 2:
        raise ValueError(
            f"`lhs` (shape {tuple(x.shape)}) must have rank >= 2: batch, feature and any number "
            "of spatial dimensions."
        )
    spec = _window_spec(x.shape, filter_shape, 1, window_strides, padding, lhs_dilation,
                        rhs_dilation, dimension_numbers)
    pet = check_preferred(preferred_element_type, jnp.dtype(x.dtype))
    out_dtype = jnp.dtype(x.dtype) if pet is None else pet
    return _patches_run(x, spec=spec, out_dtype=out_dtype)


def _window_spec(
    lhs_shape: Sequence[int],
    filter_shape: Any,
    out_features: int,
    window_strides: Any,
    padding: Any,
    lhs_dilation: Any,
    rhs_dilation: Any,
    dimension_numbers: Any,
) -> ConvSpec:
    """The spec of `lhs` against a shared kernel of window `filter_shape` (validated here),
    ``C`` input channels and `out_features` filters, in `dimension_numbers`' rhs layout."""
    ndim = len(lhs_shape)
    perms, _ = parse_dimension_numbers(dimension_numbers, ndim)
    n = ndim - 2
    if isinstance(filter_shape, (str, bytes)) or not isinstance(filter_shape, Sequence) or len(
        filter_shape
    ) != n:
        raise ValueError(
            f"`filter_shape` (={filter_shape!r}) must be a sequence of {n} window sizes."
        )
    window = tuple(as_int(f"filter_shape[{i}]", k, minimum=1) for i, k in enumerate(filter_shape))
    shared = [0] * ndim
    shared[perms.rhs[0]] = out_features
    shared[perms.rhs[1]] = lhs_shape[perms.lhs[1]]
    for axis, k in zip(perms.rhs[2:], window, strict=True):
        shared[axis] = k
    return ConvSpec.from_lax(lhs_shape, shared, window_strides, padding, lhs_dilation,
                             rhs_dilation, dimension_numbers)


def _patches(spec: ConvSpec, x: jax.Array) -> jax.Array:
    """``(N, *in, C) -> (N, *out, C*K)``: the window slices, channel-major (``c*K + k``)."""
    if 0 in spec.out_spatial:
        return jnp.zeros((spec.batch, *spec.out_spatial, spec.in_features * spec.taps), x.dtype)
    xp = pad_input(spec, x)
    patches = jnp.stack([window_slice(spec, xp, k) for k in offsets(spec)], axis=-1)
    return patches.reshape(*patches.shape[:-2], -1)


@functools.partial(jax.jit, static_argnames=("spec", "out_dtype"))
def _patches_run(lhs: jax.Array, *, spec: ConvSpec, out_dtype: jnp.dtype) -> jax.Array:
    """The user's ``lhs`` -> its patches in the user's output layout."""
    y = _patches(spec, jnp.transpose(lhs, spec.lhs_to_canonical)).astype(out_dtype)
    return jnp.transpose(y, spec.canonical_to_out)


@functools.partial(jax.jit, static_argnames=("spec", "precision"))
def _local(lhs: jax.Array, rhs: jax.Array, *, spec: ConvSpec, precision: Any) -> jax.Array:
    """``(N, *S, C)`` and a kernel per output position ``(*out, C*K, F)``, both in the user's
    layouts -> the output in the user's layout: the window slices stacked into patches, one
    einsum over channels and offsets per position."""
    patches = _patches(spec, jnp.transpose(lhs, spec.lhs_to_canonical))  # (N, *out, C*K)
    w = jnp.transpose(rhs, spec.rhs_to_canonical)  # (*out, C*K, F)
    s = spatial_letters(spec.num_spatial)
    y = jnp.einsum(f"N{s}I,{s}IF->N{s}F", patches, w, precision=precision)
    return jnp.transpose(y, spec.canonical_to_out)
