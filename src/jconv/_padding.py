"""Padding geometry and padding modes for the friendly `jconv.conv`.

`padding` says *how much* to pad, `padding_mode` says *with what*:

- geometry (`padding`): ``"SAME"`` / ``"SAME_LOWER"`` / ``"VALID"`` / explicit pairs, read from
  `ConvSpec` exactly as lax does (``SAME`` depends on the stride); plus the two
  stride-independent kinds that lax lacks: ``"SAME_TORCH"`` (PyTorch's ``padding='same'``,
  also Flax's geometry for ``CIRCULAR``/``REFLECT``: ``d*(k-1)`` in total, ``lo = total // 2``)
  and ``"CAUSAL"`` (``(d*(k-1), 0)`` in every spatial dimension, Flax's and Keras's causal).
- fill (`padding_mode`): ``"zeros"`` (the conv pads itself), or ``"circular"``, ``"reflect"``,
  ``"replicate"`` (the input is padded explicitly with `jnp.pad`, then convolved ``VALID``).

`padding_pairs` is the one place where these (low, high) pairs are derived.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ._spec import ConvSpec

__all__ = ["PADDING_MODES", "apply_padding_mode", "padding_pairs"]

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
_JNP_MODE = {"circular": "wrap", "reflect": "reflect", "replicate": "edge"}
_STRIDE_FREE = ("SAME_TORCH", "CAUSAL")


def padding_pairs(
    padding: Any,
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    dimension_numbers: tuple[str, str, str],
    groups: int = 1,
) -> tuple[tuple[int, int], ...]:
    """(low, high) zero-padding pairs per spatial dim, in the kernel's spatial order.

    lax's kinds (``SAME``, ``SAME_LOWER``, ``VALID``, pairs) come from `ConvSpec`;
    ``SAME_TORCH`` and ``CAUSAL`` are derived here from the dilated window ``d*(k-1)+1``.
    """
    kind = padding.upper() if isinstance(padding, str) else None
    if kind in _STRIDE_FREE:
        spec = ConvSpec.from_lax(
            x_shape, w_shape, strides, "VALID", rhs_dilation=dilations,
            dimension_numbers=dimension_numbers, feature_group_count=groups,
        )
        totals = [k - 1 for k in spec.effective_window]
        if kind == "CAUSAL":
            return tuple((t, 0) for t in totals)
        return tuple((t // 2, t - t // 2) for t in totals)
    spec = ConvSpec.from_lax(
        x_shape, w_shape, strides, padding, rhs_dilation=dilations,
        dimension_numbers=dimension_numbers, feature_group_count=groups,
    )
    return spec.padding


def _check_mode(padding_mode: Any) -> str:
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ValueError(
            f"`padding_mode` (={padding_mode!r}) must be one of {list(PADDING_MODES)}."
        )
    return padding_mode


def apply_padding_mode(
    x: jax.Array,
    w_shape: Sequence[int],
    padding: Any,
    padding_mode: str,
    strides: Sequence[int],
    dilations: Sequence[int],
    dimension_numbers: tuple[str, str, str],
    groups: int = 1,
) -> tuple[jax.Array, Any]:
    """Return ``(x', padding')`` such that ``conv(x', w, padding=padding')`` realises the mode.

    For ``"zeros"`` with a lax kind, `x` and `padding` are returned unchanged (the conv pads);
    otherwise `x` is padded here and `padding'` is all ``(0, 0)``.
    Non-zero modes follow PyTorch's limits: ``circular`` pads at most the dimension's size,
    ``reflect`` strictly less; none of them accepts a negative pad.
    """
    mode = _check_mode(padding_mode)
    kind = padding.upper() if isinstance(padding, str) else None
    if mode == "zeros" and kind not in _STRIDE_FREE:
        return x, padding
    pairs = padding_pairs(
        padding, x.shape, w_shape, strides, dilations, dimension_numbers, groups
    )
    n = len(pairs)
    if mode == "zeros":
        return x, pairs
    spec = ConvSpec.from_lax(
        x.shape, w_shape, strides, pairs, rhs_dilation=dilations,
        dimension_numbers=dimension_numbers, feature_group_count=groups,
    )
    # spatial axes of the user's lhs, in the kernel's (= ConvSpec's canonical) spatial order
    axes = spec.lhs_to_canonical[1:-1]
    widths = [(0, 0)] * x.ndim
    for i, (axis, (lo, hi)) in enumerate(zip(axes, pairs, strict=True)):
        size = x.shape[axis]
        if lo < 0 or hi < 0:
            raise ValueError(
                f"`padding` (={padding!r}) gives ({lo}, {hi}) for spatial dimension {i}; "
                f"`padding_mode` (={mode!r}) needs non-negative pads."
            )
        if mode == "reflect" and max(lo, hi) >= size:
            bad = f"less than the input size (={size})"
        elif mode == "circular" and max(lo, hi) > size:
            bad = f"at most the input size (={size})"
        elif mode == "replicate" and size == 0 and lo + hi > 0:
            bad = "zero for an empty dimension"
        else:
            widths[axis] = (lo, hi)
            continue
        raise ValueError(
            f"`padding_mode` (={mode!r}) pads spatial dimension {i} by ({lo}, {hi}); each "
            f"side must be {bad}."
        )
    xp = jnp.pad(x, widths, mode=_JNP_MODE[mode])
    return xp, ((0, 0),) * n
