"""Drop-in fidelity with `jax.lax.conv_general_dilated`: operand dtypes as lax canonicalises
them, precision arguments as lax takes them."""

from __future__ import annotations

import re
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


# --------------------------------------------------------------------------- bad input
X, W = jnp.ones((2, 3, 8, 8)), jnp.ones((4, 3, 3, 3))
BAD_CALLS = {  # name: overrides of (lhs, rhs, window_strides, padding) and keywords
    "padding as one pair": dict(padding=(3, 3)),
    "padding with too few pairs": dict(padding=[(1, 1)]),
    "padding entry of three": dict(padding=[(1, 1, 1), (1, 1)]),
    "padding of floats": dict(padding=[(1.5, 1), (1, 1)]),
    "padding cropping past the input": dict(padding=[(-9, 0), (0, 0)]),
    "strides of the wrong length": dict(window_strides=(1,)),
    "zero stride": dict(window_strides=(0, 1)),
    "negative stride": dict(window_strides=(-1, 1)),
    "float stride": dict(window_strides=(1.0, 1)),
    "one int for the strides": dict(window_strides=1),
    "zero lhs dilation": dict(lhs_dilation=(0, 1)),
    "rhs dilation of the wrong length": dict(rhs_dilation=(1, 1, 1)),
    "groups not dividing": dict(feature_group_count=2),
    "zero groups": dict(feature_group_count=0),
    "batch groups not dividing": dict(batch_group_count=3),
    "both group kinds": dict(feature_group_count=3, batch_group_count=2,
                             rhs=jnp.ones((6, 1, 3, 3))),
    "ranks differ": dict(rhs=jnp.ones((4, 3, 3))),
    "channels differ": dict(rhs=jnp.ones((4, 2, 3, 3))),
    "layouts name other letters": dict(dimension_numbers=("NCHW", "OIHW", "NCHX")),
    "two layouts": dict(dimension_numbers=("NCHW", "OIHW")),
    "one layout string": dict(dimension_numbers="NCHW"),
    "layouts of another rank": dict(dimension_numbers=("NCH", "OIH", "NCH")),
    "dtypes differ": dict(rhs=jnp.ones((4, 3, 3, 3), jnp.int32)),
    "complex with float": dict(rhs=jnp.ones((4, 3, 3, 3), jnp.complex64)),
    "unknown precision": dict(precision="fast"),
    "float to int accumulation": dict(preferred_element_type=jnp.int32),
    "narrower accumulation": dict(preferred_element_type=jnp.float16),
    "string padding with lhs dilation": dict(padding="SAME", lhs_dilation=(2, 2)),
}
DELIBERATE = {  # lax's class here is an accident of its implementation: jconv's is clearer
    "unknown padding string": (dict(padding="FULL"), RuntimeError, ValueError),
    "rank-1 operands": (dict(lhs=jnp.ones((3,)), rhs=jnp.ones((3,)), window_strides=()),
                        IndexError, ValueError),
    "a string operand": (dict(lhs="abc"), AttributeError, TypeError),
}


def _call(f, kw: dict) -> object:
    kw = dict(kw)
    args = (kw.pop("lhs", X), kw.pop("rhs", W), kw.pop("window_strides", (1, 1)),
            kw.pop("padding", "SAME"))
    return f(*args, **kw)


def _raised(f, kw: dict) -> BaseException:
    with pytest.raises(Exception) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lax's NumPy shape arithmetic warns on a zero stride
        _call(f, kw)
    return info.value


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_input_raises_lax_class_with_a_message_naming_the_argument(name: str) -> None:
    """Where lax raises, jconv raises the same class (or a subclass, `ConvArgumentError`
    where lax raises TypeError for some and ValueError for other malformed structures),
    before running anything: eagerly and under jit alike."""
    kw = BAD_CALLS[name]
    lax_error = _raised(lax.conv_general_dilated, kw)
    ours = _raised(jconv.conv_general_dilated, kw)
    assert isinstance(ours, type(lax_error)), (type(ours), type(lax_error))
    assert "`" in str(ours)  # names the argument in backticks
    arrays = {k: v for k, v in kw.items() if k in ("lhs", "rhs")}
    rest = {k: v for k, v in kw.items() if k not in arrays}
    lhs, rhs = arrays.get("lhs", X), arrays.get("rhs", W)
    with pytest.raises(type(ours), match=re.escape(str(ours)[:40])):
        jax.jit(lambda a, b: _call(jconv.conv_general_dilated, dict(rest, lhs=a, rhs=b)))(lhs, rhs)


@pytest.mark.parametrize("name", sorted(DELIBERATE))
def test_deliberately_different_exception_classes(name: str) -> None:
    """The differences README lists: lax's class, jconv's ValueError or TypeError."""
    kw, theirs, ours = DELIBERATE[name]
    assert isinstance(_raised(lax.conv_general_dilated, kw), theirs)
    assert type(_raised(jconv.conv_general_dilated, kw)) is ours


def test_a_float_group_count_is_always_a_type_error() -> None:
    """lax raises NotImplementedError for ``feature_group_count=2.0`` but takes ``1.0`` once
    its cache holds the call with ``1`` (equal hashes); jconv refuses floats every time."""
    for groups in (1.0, 3.0):
        with pytest.raises(TypeError, match="`feature_group_count`"):
            jconv.conv_general_dilated(X, W, (1, 1), "SAME", feature_group_count=groups)


# --------------------------------------------------------------------------- 0-D
ZERO_D = [  # lhs (N, C), rhs (I, O) in ("NC", "IO", "NC"), keywords
    ((10, 5), (5, 7), {}),
    ((12, 6), (3, 8), dict(feature_group_count=2)),
    ((12, 6), (6, 8), dict(batch_group_count=2)),
    ((4, 6), (1, 6), dict(feature_group_count=6)),
]


@pytest.mark.parametrize("row", range(len(ZERO_D)))
def test_convolutions_without_spatial_dimensions_are_products(row: int) -> None:
    """No spatial dimension: the channel contraction alone (a grouped matrix product), as lax
    computes it, by every lowering that can run it."""
    xs, ws, kw = ZERO_D[row]
    rng = np.random.default_rng(row)
    x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
    w = jnp.asarray(rng.standard_normal(ws), jnp.float32)
    args = dict(dimension_numbers=("NC", "IO", "NC"), precision="highest", **kw)
    want = lax.conv_general_dilated(x, w, (), "VALID", **args)
    spec = jconv.ConvSpec.from_lax(xs, ws, (), "VALID", **{k: v for k, v in args.items()
                                                          if k != "precision"})
    ran = 0
    for name, mod in jconv.strategies.STRATEGIES.items():
        if mod.applicable(spec, jnp.float32) is not None:
            continue
        got = jconv.conv_general_dilated(x, w, (), "VALID", **args, strategy=name)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
        ran += 1
    assert ran >= 3
    got = jconv.conv_general_dilated(x, w, (), "SAME", **args)  # strings pad nothing
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    if not kw:  # the dense case is exactly the matrix product
        np.testing.assert_allclose(np.asarray(got), np.asarray(x) @ np.asarray(w), rtol=1e-5)


def test_zero_d_transpose_patches_and_local() -> None:
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((10, 5)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((5, 7)), jnp.float32)
    dn = ("NC", "IO", "NC")
    np.testing.assert_allclose(
        np.asarray(jconv.lax.conv_transpose(x, w, (), "VALID", dimension_numbers=dn)),
        np.asarray(lax.conv_transpose(x, w, (), "VALID", dimension_numbers=dn)), rtol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(jconv.lax.conv_general_dilated_patches(x, (), (), "VALID")),
        np.asarray(lax.conv_general_dilated_patches(x, (), (), "VALID")))
    wl = jnp.asarray(rng.standard_normal((7, 5)), jnp.float32)  # (O, I) in lax's default
    np.testing.assert_allclose(
        np.asarray(jconv.lax.conv_general_dilated_local(x, wl, (), "VALID", ())),
        np.asarray(lax.conv_general_dilated_local(x, wl, (), "VALID", ())), rtol=1e-5)


# --------------------------------------------------------------------------- entry points
PATCH_CASES = [  # lhs shape, filter, strides, padding, lhs dil, rhs dil, dimension numbers
    ((2, 3, 9, 8), (3, 2), (1, 1), "SAME", None, None, None),
    ((2, 9, 8, 3), (3, 3), (2, 1), "VALID", None, (1, 2), ("NHWC", "OIHW", "NHWC")),
    ((1, 4, 7), (4,), (2,), ((2, 1),), (2,), None, ("NCH", "OIH", "NHC")),
    ((2, 2, 5, 4, 3), (2, 2, 2), (1, 1, 1), "SAME_LOWER", None, None, None),
]


@pytest.mark.parametrize("row", range(len(PATCH_CASES)))
def test_patches_equal_lax(row: int) -> None:
    """`conv_general_dilated_patches`: the same windows in the same feature order (channel
    major) and layout as lax's, exactly."""
    shape, filt, st, pad, ld, rd, dn = PATCH_CASES[row]
    x = jnp.asarray(np.random.default_rng(row).standard_normal(shape), jnp.float32)
    args = (filt, st, pad, ld, rd, dn)
    want = lax.conv_general_dilated_patches(x, *args, precision=lax.Precision.HIGHEST)
    got = jconv.lax.conv_general_dilated_patches(x, *args)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    half = jconv.lax.conv_general_dilated_patches(x.astype(jnp.bfloat16), *args,
                                                  preferred_element_type=jnp.float32)
    assert half.dtype == jnp.float32


def test_conv_and_conv_with_general_padding_equal_lax() -> None:
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.standard_normal((2, 3, 9, 9)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((4, 3, 3, 2)), jnp.float32)
    for pad in ("SAME", "VALID"):
        np.testing.assert_allclose(
            np.asarray(jconv.lax.conv(x, w, (2, 1), pad, precision="highest")),
            np.asarray(lax.conv(x, w, (2, 1), pad, precision="highest")), rtol=1e-5, atol=1e-5)
    args = ((1, 2), ((1, 2), (0, 1)), (2, 1), (1, 2))
    np.testing.assert_allclose(
        np.asarray(jconv.lax.conv_with_general_padding(x, w, *args, precision="highest")),
        np.asarray(lax.conv_with_general_padding(x, w, *args, precision="highest")),
        rtol=1e-5, atol=1e-5)


def test_jconv_lax_offers_every_lax_conv_entry_point_with_lax_signatures() -> None:
    import inspect

    names = ["conv", "conv_with_general_padding", "conv_general_dilated", "conv_transpose",
             "conv_general_dilated_patches", "conv_general_dilated_local"]
    assert sorted(jconv.lax.__all__) == sorted([*names, "routed"])
    for name in names:
        ours = inspect.signature(getattr(jconv.lax, name)).parameters
        theirs = inspect.signature(getattr(lax, name)).parameters
        assert list(ours)[: len(theirs)] == list(theirs), name  # then jconv's `strategy`
        assert all(ours[p].kind == inspect.Parameter.KEYWORD_ONLY for p in list(ours)[len(theirs):])


def test_flax_linen_conv_transpose_and_local_run_on_jconv() -> None:
    """linen ``Conv`` takes jconv as its ``conv_general_dilated``; ``ConvTranspose`` and
    ``ConvLocal`` call `jax.lax` themselves and run on jconv inside `jconv.lax.routed`: the
    traced program holds no convolution primitive and the values equal lax's."""
    from flax import linen as nn

    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 9, 9, 3)), jnp.float32)
    layers = [
        (nn.Conv(4, (3, 3), precision="highest"),
         nn.Conv(4, (3, 3), precision="highest", conv_general_dilated=jconv.conv_general_dilated)),
        (nn.ConvTranspose(4, (3, 3), strides=(2, 2), precision="highest"), None),
        (nn.ConvLocal(4, (3, 3), precision="highest"), None),
    ]
    for plain, ours in layers:
        params = plain.init(jax.random.key(0), x)
        want = plain.apply(params, x)
        if ours is None:
            with jconv.lax.routed():
                got = plain.apply(params, x)
                jaxpr = str(jax.make_jaxpr(plain.apply)(params, x))
        else:
            got = ours.apply(params, x)
            jaxpr = str(jax.make_jaxpr(ours.apply)(params, x))
        assert "conv_general_dilated" not in jaxpr, type(plain).__name__
        assert "conv_general_dilated" in str(jax.make_jaxpr(plain.apply)(params, x))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
