"""Drop-in fidelity with `jax.lax.conv_general_dilated`: operand dtypes as lax canonicalises
them, precision arguments as lax takes them."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jconv

ARGS = dict(window_strides=(1, 1), padding="SAME")


@pytest.mark.parametrize("lhs_dtype, rhs_dtype", [
    (jnp.float32, np.float64), (np.float64, jnp.float32), (np.float64, np.float64),
    (jnp.int32, np.int64), (np.int64, np.int64),
])
def test_numpy_operands_are_canonicalised_like_lax(lhs_dtype: object, rhs_dtype: object) -> None:
    """With 64-bit types off, a NumPy float64 (int64) operand is float32 (int32), as for lax:
    same result dtype, same values, no warning."""
    rng = np.random.default_rng(0)

    def operand(shape: tuple[int, ...], dtype: object) -> object:
        a = rng.integers(-3, 4, shape)  # NumPy for the 64-bit dtypes, JAX otherwise
        return a.astype(dtype) if dtype in (np.float64, np.int64) else jnp.asarray(a, dtype)

    lhs, rhs = operand((1, 2, 5, 5), lhs_dtype), operand((3, 2, 3, 3), rhs_dtype)
    want = lax.conv_general_dilated(lhs, rhs, **ARGS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = jconv.conv_general_dilated(lhs, rhs, **ARGS)
        jitted = jax.jit(lambda a, b: jconv.conv_general_dilated(a, b, **ARGS))(lhs, rhs)
    assert got.dtype == jitted.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(want))


def test_different_canonical_dtypes_still_raise_type_error() -> None:
    """float32 with int32 is refused, by lax and by jconv, with the same class."""
    lhs, rhs = jnp.ones((1, 2, 5, 5), jnp.float32), jnp.ones((3, 2, 3, 3), jnp.int32)
    with pytest.raises(TypeError):
        lax.conv_general_dilated(lhs, rhs, **ARGS)
    with pytest.raises(TypeError, match=r"`lhs`.*`rhs`.*same dtype"):
        jconv.conv_general_dilated(lhs, rhs, **ARGS)


@pytest.mark.parametrize("precision", [
    "fastest", "bfloat16", "tensorfloat32", "high", "highest", "float32", "default",
    lax.Precision.HIGH, ("highest", "fastest"), lax.DotAlgorithmPreset.F32_F32_F32,
    "F32_F32_F32",
])
def test_every_precision_lax_takes_is_taken(precision: object) -> None:
    """Names, aliases, pairs and algorithm presets: lax accepts them, so does jconv, with
    values equal to lax's at that precision."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 3, 9, 9)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((4, 3, 3, 3)), jnp.float32)
    want = lax.conv_general_dilated(x, w, **ARGS, precision=precision)  # type: ignore[arg-type]
    got = jconv.conv_general_dilated(x, w, **ARGS, precision=precision)  # type: ignore[arg-type]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["HIGHEST", "fast", 3, ("highest",) * 3])
def test_precisions_lax_refuses_raise_value_error_before_running(precision: object) -> None:
    x, w = jnp.ones((1, 2, 5, 5)), jnp.ones((3, 2, 3, 3))
    with pytest.raises(ValueError):
        lax.conv_general_dilated(x, w, **ARGS, precision=precision)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`precision`"):
        jax.eval_shape(lambda a, b: jconv.conv_general_dilated(
            a, b, **ARGS, precision=precision), x, w)  # type: ignore[arg-type]
