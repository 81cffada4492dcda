"""Validators of operands, dtypes and precisions shared by every public entry point (the
plain-Python ones for hyper-parameters are in `_args`): each returns the value in normal
form or raises a `TypeError`/`ValueError` naming the argument, its value and the rule,
before any tracing, so errors are the same eagerly and under `jax.jit`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["check_operand", "check_operands", "check_precision", "check_preferred"]


def check_operand(name: str, a: Any) -> jax.Array:
    """An array of a numeric (or bool) dtype, or a TypeError naming `name`. NumPy arrays
    become JAX arrays first, so their dtypes are canonicalised as lax's are (float64 is
    float32 while 64-bit types are off)."""
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        try:
            a = jnp.asarray(a)
        except TypeError as e:
            raise TypeError(f"`{name}` (={a!r}) must be an array.") from e
    dt = np.dtype(a.dtype) if isinstance(a, (np.ndarray, np.generic)) else jnp.dtype(a.dtype)
    if not (jnp.issubdtype(dt, jnp.number) or dt == jnp.dtype(bool)):
        raise TypeError(f"`{name}` has dtype {dt}; convolution needs a numeric or bool dtype.")
    # device_put canonicalises the dtype as jnp.asarray does, without compiling a program
    return jax.device_put(a) if isinstance(a, (np.ndarray, np.generic)) else a


def check_operands(lhs: Any, rhs: Any) -> tuple[jax.Array, jax.Array]:
    """`check_operand` of both, which must then have one dtype (TypeError otherwise)."""
    out = [check_operand("lhs", lhs), check_operand("rhs", rhs)]
    if jnp.dtype(out[0].dtype) != jnp.dtype(out[1].dtype):
        raise TypeError(
            f"`lhs` (dtype {out[0].dtype}) and `rhs` (dtype {out[1].dtype}) must have the same "
            "dtype; cast one of them explicitly."
        )
    return out[0], out[1]

def check_preferred(preferred: Any, dtype: np.dtype) -> np.dtype | None:
    """Validate `preferred_element_type` against the input dtype, as lax does."""
    if preferred is None:
        return None
    try:
        pet = jnp.dtype(preferred)
    except TypeError as e:
        raise TypeError(f"`preferred_element_type` (={preferred!r}) is not a dtype.") from e
    int_to_float = jnp.issubdtype(dtype, jnp.integer) and jnp.issubdtype(pet, jnp.floating)
    if not int_to_float:
        for kind in (jnp.integer, jnp.floating, jnp.complexfloating):
            if jnp.issubdtype(dtype, kind) and not jnp.issubdtype(pet, kind):
                raise TypeError(
                    f"`preferred_element_type` (={pet}) is incompatible with the input dtype "
                    f"(={dtype}): allowed are integer->integer, integer->floating, "
                    "floating->floating and complex->complex."
                )
        if jnp.issubdtype(dtype, jnp.signedinteger) and not jnp.issubdtype(pet, jnp.signedinteger):
            raise TypeError(
                f"`preferred_element_type` (={pet}) must be signed like the input dtype (={dtype})."
            )
    if pet.itemsize < jnp.dtype(dtype).itemsize:
        raise TypeError(
            f"`preferred_element_type` (={pet}) must not be narrower than the input dtype "
            f"(={dtype})."
        )
    return pet

def _precision_name_ok(p: str) -> bool:
    """True for the names lax takes: a `lax.Precision` member or alias ('fastest',
    'tensorfloat32', ...) or a `lax.DotAlgorithmPreset` name."""
    try:
        lax.Precision(p)
    except ValueError:
        return p in lax.DotAlgorithmPreset.__members__
    return True


def check_precision(precision: Any) -> Any:
    """None, a `lax.Precision`, one of its names or aliases, a `lax.DotAlgorithmPreset`
    (or its name), or a pair of precisions, as lax takes them; made hashable."""
    items = precision if isinstance(precision, (list, tuple)) else (precision,)
    if len(items) not in (1, 2):
        raise ValueError(f"`precision` (={precision!r}) must be one precision or a pair.")
    for p in items:
        if p is None or isinstance(p, (lax.Precision, lax.DotAlgorithmPreset)):
            continue
        if not isinstance(p, str) or not _precision_name_ok(p):
            raise ValueError(
                f"`precision` (={precision!r}) must be None, a lax.Precision or one of its "
                "names ('default', 'fastest', 'bfloat16', 'high', 'tensorfloat32', "
                "'highest', 'float32'), a lax.DotAlgorithmPreset, or a pair of these."
            )
    return tuple(precision) if isinstance(precision, list) else precision
