"""Validators of hyper-parameters in plain Python (no JAX), shared by `ConvSpec` and every
public entry point: each returns the value in normal form or raises a `TypeError` /
`ValueError` naming the argument, its value and the rule."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ConvArgumentError", "as_int", "int_tuple", "is_intlike", "listify"]


class ConvArgumentError(ValueError, TypeError):
    """A malformed structural argument (operand ranks, layout strings, padding pairs): both
    a `ValueError` and a `TypeError`, since lax raises one or the other for these, so code
    that catches lax's class catches jconv's (as NumPy's ``AxisError`` is both a
    ``ValueError`` and an ``IndexError``)."""


def as_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return `value` as a Python int, or raise a TypeError/ValueError naming `name`."""
    if isinstance(value, bool):
        raise TypeError(f"`{name}` (={value!r}) must be an integer, not a bool.")
    try:
        out = operator.index(value)
    except TypeError as e:
        raise TypeError(
            f"`{name}` (={value!r}) must be an integer, got {type(value).__name__}."
        ) from e
    if minimum is not None and out < minimum:
        raise ValueError(f"`{name}` (={out}) must be >= {minimum}.")
    return out


def listify(value: Any) -> Any:
    """A NumPy array of rank >= 1 as nested lists (lax accepts arrays as sequences)."""
    return value.tolist() if isinstance(value, np.ndarray) and value.ndim >= 1 else value


def int_tuple(name: str, value: Any, n: int, *, minimum: int, broadcast: bool) -> tuple[int, ...]:
    """Normalise an int or a length-`n` sequence of ints to a tuple of ints."""
    value = listify(value)
    if value is None:
        return (1,) * n
    if broadcast and not isinstance(value, (Sequence,)) and is_intlike(value):
        return (as_int(name, value, minimum=minimum),) * n
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"`{name}` (={value!r}) must be a sequence of {n} integers"
            + (" or a single integer." if broadcast else ".")
        )
    if len(value) != n:
        raise ValueError(
            f"`{name}` (={tuple(value)!r}) must have one entry per spatial dimension "
            f"(={n}), got {len(value)}."
        )
    return tuple(as_int(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(value))


def is_intlike(value: Any) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True
