"""Bytes of a convolution's operands and result (dense, contiguous arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp

__all__ = ["tensor_bytes", "tensor_elements"]


def tensor_elements(shape: Sequence[int | sp.Expr]) -> sp.Expr:
    """Number of elements ``prod(shape)`` (``jax.Array.size``)."""
    return sp.Mul(*(sp.sympify(d) for d in shape))


def tensor_bytes(shape: Sequence[int | sp.Expr], itemsize: int | sp.Expr = 4) -> sp.Expr:
    """``prod(shape) * itemsize`` (``jax.Array.nbytes``)."""
    return tensor_elements(shape) * sp.sympify(itemsize)
