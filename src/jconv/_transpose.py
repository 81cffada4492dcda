"""Transposed convolution in JAX's and PyTorch's conventions, as `conv_general_dilated`.

A transposed convolution with stride ``s`` is a stride-1 convolution of the input dilated by
``s`` (``lhs_dilation=s``), padded by ``(lo, hi)`` from `transpose_padding`, with the kernel
used as given (lax's default) or spatially flipped with in/out channels swapped (PyTorch's, and
lax's ``transpose_kernel=True``): the gradient of a forward conv with respect to its input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ._args import as_int, int_tuple
from ._engine import conv_general_dilated
from ._spec import (
    adjoint_padding,
    canonical_layouts,
    dilated_size,
    normalize_layout,
    parse_dimension_numbers,
)
from ._validate import check_operands

__all__ = ["conv_transpose", "conv_transpose_torch", "transpose_padding"]


def transpose_padding(
    window: int, stride: int, padding: str | tuple[int, int], output_padding: int = 0
) -> tuple[int, int]:
    """(low, high) padding of the lhs-dilated input for one spatial dim of a transposed conv.

    `window` is the dilated window ``d*(k-1)+1``. `padding` is the *forward* conv's padding:
    ``"SAME"``/``"VALID"`` give lax's `conv_transpose` geometry (out ``i*s`` and
    ``i*s + max(k-s, 0)``); a pair ``(p_lo, p_hi)`` gives ``(k-1-p_lo, k-1-p_hi)``, PyTorch's
    geometry, out ``(i-1)*s + k - p_lo - p_hi``; `output_padding` is added on the high side.
    """
    if isinstance(padding, str):
        valid = padding == "VALID"
        total = window + stride - 2 + (max(window - stride, 0) if valid else 0)
        lo = window - 1 if valid or stride > window - 1 else -(-total // 2)
        return lo, total - lo + output_padding
    return adjoint_padding(window, padding, output_padding)


def conv_transpose(
    lhs: jax.typing.ArrayLike,
    rhs: jax.typing.ArrayLike,
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    transpose_kernel: bool = False,
    precision: lax.PrecisionLike = None,
    preferred_element_type: Any = None,
    use_consistent_padding: bool = False,
    *,
    strategy: str = "auto",
) -> jax.Array:
    """Drop-in for `jax.lax.conv_transpose`: same arguments, same results.

    Layout defaults to channels last (``NHWC``, kernel ``HWIO``) for any spatial rank.
    `padding` ``"SAME"``/``"VALID"`` is the forward conv's; pairs are the transposed conv's
    own padding unless ``use_consistent_padding=True`` (then they are the forward conv's,
    PyTorch's meaning). The kernel is **not** flipped unless ``transpose_kernel=True``
    (which also swaps its ``I`` and ``O`` axes, as in Keras's ``Conv2DTranspose``).

    >>> conv_transpose(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 5)), (2, 2), "SAME").shape
    (1, 8, 8, 5)
    """
    lhs, rhs = check_operands(lhs, rhs)
    if lhs.ndim != rhs.ndim or lhs.ndim < 2:
        raise ValueError(
            f"`lhs` (shape {tuple(lhs.shape)}) and `rhs` (shape {tuple(rhs.shape)}) must have "
            "the same rank >= 2."
        )
    n = lhs.ndim - 2
    if not isinstance(transpose_kernel, bool):
        raise TypeError(f"`transpose_kernel` (={transpose_kernel!r}) must be a bool.")
    if not isinstance(use_consistent_padding, bool):
        raise TypeError(
            f"`use_consistent_padding` (={use_consistent_padding!r}) must be a bool."
        )
    dnums = normalize_layout("NHWC", n) if dimension_numbers is None else dimension_numbers
    perms, _ = parse_dimension_numbers(dnums, lhs.ndim)
    strides_t = int_tuple("strides", strides, n, minimum=1, broadcast=False)
    rhs_dil = int_tuple("rhs_dilation", rhs_dilation, n, minimum=1, broadcast=False)
    window = [dilated_size(rhs.shape[a], d) for a, d in zip(perms.rhs[2:], rhs_dil, strict=True)]
    kind = padding.upper() if isinstance(padding, str) else None
    if isinstance(padding, str) and kind not in ("SAME", "VALID"):
        raise ValueError(
            f"`padding` (={padding!r}) must be 'SAME', 'VALID' or a sequence of {n} "
            "(low, high) integer pairs."
        )
    if kind is not None or use_consistent_padding:
        fwd: list[str | tuple[int, int]] = (
            [kind] * n if kind is not None else list(_pairs("padding", padding, n))
        )
        pads: Any = [
            transpose_padding(k, s, p) for k, s, p in zip(window, strides_t, fwd, strict=True)
        ]
        for i, (a, s, (lo, hi)) in enumerate(zip(perms.lhs[2:], strides_t, pads, strict=True)):
            if dilated_size(lhs.shape[a], s) + lo + hi < 0:
                raise ValueError(
                    f"`padding` (={padding!r}) crops spatial dimension {i} below zero: the "
                    f"transposed conv pads its stride-dilated input "
                    f"(={dilated_size(lhs.shape[a], s)}) by ({lo}, {hi})."
                )
    else:
        pads = padding
    if transpose_kernel:
        rhs = jnp.flip(rhs, perms.rhs[2:]).swapaxes(perms.rhs[0], perms.rhs[1])
    return conv_general_dilated(
        lhs, rhs, (1,) * n, pads, strides_t, rhs_dil, dnums,
        precision=precision, preferred_element_type=preferred_element_type, strategy=strategy,
    )


def _pairs(name: str, value: Any, n: int) -> list[tuple[int, int]]:
    msg = f"`{name}` (={value!r}) must be a sequence of {n} (low, high) integer pairs."
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != n:
        raise ValueError(msg)
    out = []
    for i, pair in enumerate(value):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(msg)
        out.append((as_int(f"{name}[{i}][0]", pair[0]), as_int(f"{name}[{i}][1]", pair[1])))
    return out


def conv_transpose_torch(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
    *,
    precision: lax.PrecisionLike = None,
    strategy: str = "auto",
) -> jax.Array:
    """`torch.nn.functional.conv_transpose{1,2,3}d` (any spatial rank), channels first.

    Args:
      x: ``(N, C_in, *spatial)``.
      w: ``(C_in, C_out // groups, *window)``, PyTorch's transposed-conv weight.
      bias: optional ``(C_out,)``.
      stride, padding, output_padding, dilation: an int or one per spatial dim; the output
        size is ``(i-1)*s - 2*p + d*(k-1) + output_padding + 1``, and PyTorch's rule
        ``output_padding < max(stride, dilation)`` holds.

    >>> conv_transpose_torch(jnp.ones((1, 4, 5, 5)), jnp.ones((4, 3, 3, 3)), stride=2,
    ...                      padding=1, output_padding=1).shape
    (1, 3, 10, 10)
    """
    x_arr, w_arr = check_operands(x, w)
    if x_arr.ndim < 3 or w_arr.ndim != x_arr.ndim:
        raise ValueError(
            f"`x` (shape {tuple(x_arr.shape)}) must be (N, C_in, *spatial) with rank >= 3 and "
            f"`w` (shape {tuple(w_arr.shape)}) (C_in, C_out // groups, *window) of the same rank."
        )
    n = x_arr.ndim - 2
    s = int_tuple("stride", stride, n, minimum=1, broadcast=True)
    p = int_tuple("padding", padding, n, minimum=0, broadcast=True)
    op = int_tuple("output_padding", output_padding, n, minimum=0, broadcast=True)
    d = int_tuple("dilation", dilation, n, minimum=1, broadcast=True)
    g = as_int("groups", groups, minimum=1)
    for i in range(n):
        if op[i] >= max(s[i], d[i]):
            raise ValueError(
                f"`output_padding` (={op}) must be smaller than `stride` (={s}) or `dilation` "
                f"(={d}) in every dimension; dimension {i} breaks it."
            )
    c_in, c_out_g, window = w_arr.shape[0], w_arr.shape[1], w_arr.shape[2:]
    if x_arr.shape[1] != c_in:
        raise ValueError(
            f"`w` (shape {tuple(w_arr.shape)}) must have C_in (=shape[0]) equal to the input's "
            f"channels (=x.shape[1] = {x_arr.shape[1]})."
        )
    if c_in % g:
        raise ValueError(f"`groups` (={g}) must divide the input channels (={c_in}).")
    # (C_in, C_out/g, *K) -> forward kernel (C_out, C_in/g, *K), spatially flipped
    wf = w_arr.reshape(g, c_in // g, c_out_g, *window).swapaxes(1, 2)
    wf = jnp.flip(wf.reshape(g * c_out_g, c_in // g, *window), tuple(range(2, 2 + n)))
    pads = [
        transpose_padding(dilated_size(k, di), si, (pi, pi), oi)
        for k, di, si, pi, oi in zip(window, d, s, p, op, strict=True)
    ]
    for i, (size, (lo, hi), k, di) in enumerate(zip(x_arr.shape[2:], pads, window, d, strict=True)):
        out = dilated_size(size, s[i]) + lo + hi - dilated_size(k, di) + 1
        if out < 0:
            raise ValueError(
                f"`padding` (={p}) is too large: spatial dimension {i} would have output size "
                f"(i-1)*s - 2*p + d*(k-1) + output_padding + 1 = {out}, which must be >= 0."
            )
    y = conv_general_dilated(
        x_arr, wf, (1,) * n, pads, s, d, canonical_layouts(n, channels_last=False),
        feature_group_count=g, precision=precision, strategy=strategy,
    )
    if bias is None:
        return y
    b = jnp.asarray(bias)
    if b.shape != (g * c_out_g,) or b.dtype != y.dtype:
        raise ValueError(
            f"`bias` (shape {tuple(b.shape)}, dtype {b.dtype}) must have shape "
            f"({g * c_out_g},) and the output's dtype ({y.dtype})."
        )
    return y + b.reshape(1, -1, *([1] * n))
