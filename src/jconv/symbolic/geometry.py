"""Output sizes of convolutions as SymPy expressions, for numbers or integer symbols.

One general rule covers every case: the input of size ``i`` is lhs-dilated to
``(i - 1) * lhs_d + 1``, padded by ``(lo, hi)``, and a window of effective size
``d * (k - 1) + 1`` slides with stride ``s``:

    out = floor(((i - 1) * lhs_d + 1 + lo + hi - d * (k - 1) - 1) / s) + 1

String paddings are the JAX rules: 'VALID' is (0, 0); 'SAME' gives ``out = ceil(i / s)``
with total pad ``max((out - 1) * s + d * (k - 1) + 1 - i, 0)``, the odd pad on the high side
('SAME_LOWER': on the low side).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import sympy as sp

__all__ = [
    "Size",
    "as_size",
    "effective_window",
    "output_padding",
    "output_size",
    "same_padding",
    "size_symbols",
    "transposed_output_size",
]

Size: TypeAlias = int | sp.Expr


def size_symbols(names: str) -> tuple[sp.Symbol, ...]:
    """Positive integer symbols, e.g. ``size_symbols("i k s")``."""
    out = sp.symbols(names, integer=True, positive=True, seq=True)
    return tuple(out)


def as_size(value: Any, name: str) -> sp.Expr:
    """`value` (an int or a SymPy expression) as a SymPy expression; TypeError naming `name`
    otherwise."""
    if isinstance(value, bool):
        raise TypeError(f"`{name}` (={value!r}) must be an integer or a SymPy expression.")
    if isinstance(value, int):
        return sp.Integer(value)
    if isinstance(value, sp.Expr):
        return value
    raise TypeError(f"`{name}` (={value!r}) must be an integer or a SymPy expression.")


def effective_window(k: Size, d: Size = 1) -> sp.Expr:
    """Window size after dilation: ``d * (k - 1) + 1``."""
    return as_size(d, "d") * (as_size(k, "k") - 1) + 1


def same_padding(i: Size, k: Size, s: Size = 1, d: Size = 1, *,
                 lower: bool = False) -> tuple[sp.Expr, sp.Expr]:
    """(lo, hi) pads of JAX's 'SAME' ('SAME_LOWER' with ``lower=True``)."""
    i_, s_ = as_size(i, "i"), as_size(s, "s")
    total = sp.Max((sp.ceiling(i_ / s_) - 1) * s_ + effective_window(k, d) - i_, 0)
    small, big = sp.floor(total / 2), total - sp.floor(total / 2)
    return (big, small) if lower else (small, big)


def output_size(
    i: Size,
    k: Size,
    s: Size = 1,
    padding: str | tuple[Size, Size] = (0, 0),
    d: Size = 1,
    lhs_d: Size = 1,
) -> sp.Expr:
    """Output size along one spatial dimension.

    >>> output_size(28, 3, 2, "SAME"), output_size(28, 3, 1, (1, 1), d=2)
    (14, 26)
    """
    i_, s_, ld = as_size(i, "i"), as_size(s, "s"), as_size(lhs_d, "lhs_d")
    if isinstance(padding, str):
        kind = padding.upper()
        if kind not in ("SAME", "SAME_LOWER", "VALID"):
            raise ValueError(
                f"`padding` (={padding!r}) must be 'SAME', 'SAME_LOWER', 'VALID' or a "
                "(lo, hi) pair."
            )
        if ld != 1:
            raise ValueError(
                f"String `padding` (={padding!r}) is not defined with `lhs_d` (={lhs_d})."
            )
        if kind != "VALID":
            return sp.ceiling(i_ / s_)
        lo, hi = sp.Integer(0), sp.Integer(0)
    else:
        if isinstance(padding, Sequence) and len(padding) == 2:
            lo, hi = as_size(padding[0], "padding[0]"), as_size(padding[1], "padding[1]")
        else:
            raise ValueError(f"`padding` (={padding!r}) must be a string or a (lo, hi) pair.")
    out = sp.floor(((i_ - 1) * ld + 1 + lo + hi - effective_window(k, d)) / s_) + 1
    return sp.Max(out, 0) if out.is_number else out


def output_padding(i: Size, k: Size, s: Size, p: Size = 0, d: Size = 1) -> sp.Expr:
    """The ``a`` term of a transposed conv that restores size ``i``: ``(i + 2p - k_eff) mod s``."""
    return sp.Mod(as_size(i, "i") + 2 * as_size(p, "p") - effective_window(k, d), as_size(s, "s"))


def transposed_output_size(i: Size, k: Size, s: Size = 1, p: Size = 0, a: Size = 0,
                           d: Size = 1) -> sp.Expr:
    """Transposed conv (PyTorch convention): ``(i - 1) * s - 2p + d * (k - 1) + a + 1``.

    Equal to `output_size` of the lhs-dilated conv it lowers to: ``lhs_d = s``, stride 1,
    padding ``(d*(k-1) - p, d*(k-1) - p + a)``.
    """
    return ((as_size(i, "i") - 1) * as_size(s, "s") - 2 * as_size(p, "p")
            + effective_window(k, d) - 1 + as_size(a, "a") + 1)
