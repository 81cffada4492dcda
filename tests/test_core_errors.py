"""Bad input: each invalid call raises ValueError/TypeError naming the argument, its value
and the rule, before any computation, identically eagerly and under `jax.jit`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jconv
from jconv import _engine

DN = ("NHWC", "HWIO", "NHWC")
X = np.ones((2, 5, 5, 4), np.float32)  # (N, H, W, C)
W = np.ones((3, 3, 4, 6), np.float32)  # (H, W, I, O)


class Bad(NamedTuple):
    """An invalid call: operands, keyword arguments, the exception and its message."""

    name: str
    exc: type[Exception]
    match: str
    kwargs: dict[str, Any]
    lhs: np.ndarray = X
    rhs: np.ndarray = W
    friendly: bool = False  # jconv.conv instead of conv_general_dilated


def general(name: str, exc: type[Exception], match: str, lhs: np.ndarray = X,
            rhs: np.ndarray = W, **kw: Any) -> Bad:
    kw.setdefault("window_strides", (1, 1))
    kw.setdefault("padding", "VALID")
    kw.setdefault("dimension_numbers", DN)
    return Bad(name, exc, match, kw, lhs, rhs)


def friendly(name: str, exc: type[Exception], match: str, lhs: np.ndarray = X,
             rhs: np.ndarray = W, **kw: Any) -> Bad:
    return Bad(name, exc, match, kw, lhs, rhs, friendly=True)


ones = np.ones
CATALOGUE = [
    # ranks and shapes (rank 2, no spatial dimension, is a valid convolution, as in lax)
    general("rank_mismatch", ValueError,
            r"same number of dimensions: `lhs` has rank 4 \(shape \(2, 5, 5, 4\)\), `rhs` rank 3 "
            r"\(shape \(3, 4, 6\)\)", rhs=ones((3, 4, 6), np.float32)),
    general("channel_mismatch", ValueError,
            r"`rhs` input feature dimension \(=3\) must equal the `lhs` feature dimension "
            r"\(=4\) divided by `feature_group_count` \(=1\)", rhs=ones((3, 3, 3, 6), np.float32)),
    # strides and dilations
    general("stride_zero", ValueError, r"`window_strides\[0\]` \(=0\) must be >= 1",
            window_strides=(0, 1)),
    general("stride_negative", ValueError, r"`window_strides\[1\]` \(=-1\) must be >= 1",
            window_strides=(1, -1)),
    general("stride_float", TypeError, r"`window_strides\[0\]` \(=1.5\) must be an integer",
            window_strides=(1.5, 1)),
    general("stride_bool", TypeError,
            r"`window_strides\[0\]` \(=True\) must be an integer, not a bool",
            window_strides=(True, 1)),
    general("stride_length", ValueError,
            r"`window_strides` \(=\(1,\)\) must have one entry per spatial dimension \(=2\), got 1",
            window_strides=(1,)),
    general("stride_scalar", TypeError, r"`window_strides` \(=1\) must be a sequence of 2 integers",
            window_strides=1),
    general("lhs_dilation_zero", ValueError, r"`lhs_dilation\[0\]` \(=0\) must be >= 1",
            padding=((0, 0), (0, 0)), lhs_dilation=(0, 1)),
    general("lhs_dilation_string", TypeError, r"`lhs_dilation` \(='ab'\) must be a sequence",
            padding=((0, 0), (0, 0)), lhs_dilation="ab"),
    general("rhs_dilation_float", TypeError, r"`rhs_dilation\[1\]` \(=2.0\) must be an integer",
            rhs_dilation=(1, 2.0)),
    general("rhs_dilation_length", ValueError,
            r"`rhs_dilation` \(=\(1, 1, 1\)\) must have one entry per spatial dimension \(=2\)",
            rhs_dilation=(1, 1, 1)),
    # padding
    general("padding_count", ValueError, r"`padding` \(=\[\(1, 1\)\]\) must be .* 2 \(low, high\) "
            r"integer pairs.* Got 1 entries", padding=[(1, 1)]),
    general("padding_triple", TypeError, r"`padding` .* Entry 0 is \(1, 1, 1\)",
            padding=[(1, 1, 1), (1, 1)]),
    general("padding_flat_ints", TypeError, r"`padding` \(=\[1, 1\]\) .* Entry 0 is 1",
            padding=[1, 1]),
    general("padding_float", TypeError, r"`padding\[0\]\[0\]` \(=1.0\) must be an integer",
            padding=[(1.0, 1), (1, 1)]),
    general("padding_none", TypeError, r"`padding` \(=None\) must be 'SAME', 'SAME_LOWER', 'VALID'",
            padding=None),
    general("padding_unknown_string", ValueError, r"`padding` \(='FULL'\) must be 'SAME'",
            padding="FULL"),
    general("padding_string_with_lhs_dilation", ValueError,
            r"String `padding` \(='SAME'\) is not defined with `lhs_dilation` \(=\(2, 1\)\)",
            padding="SAME", lhs_dilation=(2, 1)),
    general("negative_padding_too_large", ValueError,
            r"`padding\[0\]` \(=\(-3, -3\)\) removes more than the input's spatial dimension 0 "
            r"holds \(=5", padding=[(-3, -3), (0, 0)]),
    # dimension numbers
    general("dn_unknown_letter", ValueError,
            r"`dimension_numbers` \(=\('NHWC', 'HWIO', 'NHXC'\)\) must name the same spatial "
            r"letters", dimension_numbers=("NHWC", "HWIO", "NHXC")),
    general("dn_duplicate_letter", ValueError,
            r"`dimension_numbers` lhs layout 'NHHC' must not repeat a letter",
            dimension_numbers=("NHHC", "HWIO", "NHWC")),
    general("dn_wrong_length", ValueError,
            r"`dimension_numbers` out layout 'NHWCX' has 5 letters but the operands have rank 4",
            dimension_numbers=("NHWC", "HWIO", "NHWCX")),
    general("dn_two_entries", ValueError,
            r"`dimension_numbers` \(=\('NHWC', 'HWIO'\)\) must have 3 entries",
            dimension_numbers=("NHWC", "HWIO")),
    general("dn_missing_O", ValueError,
            r"`dimension_numbers` rhs layout 'HWIX' must contain 'O' and 'I' exactly once",
            dimension_numbers=("NHWC", "HWIX", "NHWC")),
    general("dn_lowercase", ValueError,
            r"`dimension_numbers` lhs layout 'nhwc' must contain 'N' and 'C' exactly once",
            dimension_numbers=("nhwc", "hwio", "nhwc")),
    general("dn_single_string", TypeError, r"`dimension_numbers` \(='NHWC'\) must be None",
            dimension_numbers="NHWC"),
    general("dn_bad_permutation", ValueError,
            r"`dimension_numbers.rhs_spec` \(=\(3, 2, 0, 0\)\) must be a permutation of range\(4\)",
            dimension_numbers=lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 0), (0, 3, 1, 2))),
    # groups
    general("both_group_counts", ValueError,
            r"At most one of `feature_group_count` \(=2\) and `batch_group_count` \(=2\) "
            r"may be > 1",
            rhs=ones((3, 3, 2, 4), np.float32), feature_group_count=2, batch_group_count=2),
    general("feature_groups_not_dividing_C", ValueError,
            r"`feature_group_count` \(=3\) must divide the input feature dimension \(=4\)",
            rhs=ones((3, 3, 1, 6), np.float32), feature_group_count=3),
    general("feature_groups_not_dividing_F", ValueError,
            r"`feature_group_count` \(=2\) must divide the kernel's output feature "
            r"dimension \(=5\)",
            rhs=ones((3, 3, 2, 5), np.float32), feature_group_count=2),
    general("feature_groups_zero", ValueError, r"`feature_group_count` \(=0\) must be >= 1",
            feature_group_count=0),
    general("feature_groups_float", TypeError, r"`feature_group_count` \(=1.0\) must be an integer",
            feature_group_count=1.0),
    general("batch_not_divisible", ValueError,
            r"`batch_group_count` \(=2\) must divide the input batch dimension \(=3\)",
            lhs=ones((3, 5, 5, 4), np.float32), batch_group_count=2),
    general("batch_groups_not_dividing_F", ValueError,
            r"`batch_group_count` \(=2\) must divide the kernel's output feature dimension \(=5\)",
            rhs=ones((3, 3, 4, 5), np.float32), batch_group_count=2),
    # dtypes, precision, strategy
    general("mismatched_dtypes", TypeError,
            r"`lhs` \(dtype float32\) and `rhs` \(dtype float16\) must have the same dtype",
            rhs=W.astype(np.float16)),
    general("preferred_float_to_int", TypeError,
            r"`preferred_element_type` \(=int32\) is incompatible with the input dtype "
            r"\(=float32\)",
            preferred_element_type=jnp.int32),
    general("preferred_narrower", TypeError,
            r"`preferred_element_type` \(=float16\) must not be narrower than the input dtype",
            preferred_element_type=jnp.float16),
    general("preferred_not_a_dtype", TypeError,
            r"`preferred_element_type` \(='notadtype'\) is not a dtype",
            preferred_element_type="notadtype"),
    general("preferred_signedness", TypeError,
            r"`preferred_element_type` \(=uint32\) must be signed like the input dtype \(=int8\)",
            lhs=X.astype(np.int8), rhs=W.astype(np.int8), preferred_element_type=jnp.uint32),
    general("precision_unknown", ValueError, r"`precision` \(='bogus'\) must be None",
            precision="bogus"),
    general("strategy_unknown", ValueError, r"`strategy` \(='nope'\)", strategy="nope"),
    # the friendly API
    friendly("x_rank_2", ValueError, r"`x` \(shape \(2, 4\)\) must have rank >= 3",
             lhs=ones((2, 4), np.float32)),
    friendly("stride_zero", ValueError, r"`stride` \(=0\) must be >= 1", stride=0),
    friendly("stride_length", ValueError,
             r"`stride` \(=\(1, 1, 1\)\) must have one entry per spatial dimension \(=2\)",
             stride=(1, 1, 1)),
    friendly("dilation_bool", TypeError, r"`dilation` \(=True\) must be an integer, not a bool",
             dilation=True),
    friendly("groups_not_dividing", ValueError,
             r"`groups` \(=3\) must divide the number of input channels \(=4\)", groups=3),
    friendly("groups_not_dividing_filters", ValueError,
             r"`groups` \(=4\) must divide the number of filters \(=6\)",
             rhs=ones((3, 3, 1, 6), np.float32), groups=4),
    friendly("padding_per_dim_count", ValueError,
             r"`padding` \(=\(1, 2, 3\)\) as integers must have one entry per spatial dimension",
             padding=(1, 2, 3)),
    friendly("padding_unknown_string", ValueError, r"`padding` \(='full'\)", padding="full"),
    friendly("layout_unknown", ValueError, r"`layout` \(='NHCW'\) must be 'NHWC'", layout="NHCW"),
    friendly("layout_rank", ValueError,
             r"`layout` \(='NCDHW'\) names 3 spatial dimensions but the input has 2",
             layout="NCDHW"),
    friendly("layout_not_string", TypeError, r"`layout` \(=3\) must be a string", layout=3),
    friendly("bias_shape", ValueError, r"`bias` \(shape \(5,\)\) must have shape \(6,\)",
             bias=np.ones(5, np.float32)),
    friendly("bias_dtype", TypeError,
             r"`bias` \(dtype int32\) must have the output's dtype \(float32\)",
             bias=np.ones(6, np.int32)),
]


def _call(bad: Bad) -> Callable[[Any, Any], jax.Array]:
    if bad.friendly:
        return lambda a, b: jconv.conv(a, b, **bad.kwargs)
    return lambda a, b: jconv.conv_general_dilated(a, b, **bad.kwargs)


@pytest.fixture
def no_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the numeric engine unreachable: validation must fail before it runs."""

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the engine ran before the bad input was rejected")

    monkeypatch.setattr(_engine, "_run", forbidden)


@pytest.mark.usefixtures("no_computation")
def test_every_mistake_gets_its_own_message() -> None:
    """jconv's messages for the catalogue's distinct mistakes are pairwise distinct, and each
    names an argument in backticks (a generic "invalid convolution" would fail this)."""
    messages = []
    for bad in CATALOGUE:
        with pytest.raises(bad.exc) as info:
            _call(bad)(bad.lhs, bad.rhs)
        messages.append(str(info.value))
    assert len(CATALOGUE) >= 25
    assert len(set(messages)) == len(messages)
    assert all("`" in m for m in messages)


@pytest.mark.usefixtures("no_computation")
@pytest.mark.parametrize("bad", CATALOGUE, ids=lambda b: ("conv-" if b.friendly else "") + b.name)
def test_bad_input_raises_eagerly(bad: Bad) -> None:
    with pytest.raises(bad.exc, match=bad.match):
        _call(bad)(bad.lhs, bad.rhs)


@pytest.mark.usefixtures("no_computation")
@pytest.mark.parametrize("bad", CATALOGUE, ids=lambda b: ("conv-" if b.friendly else "") + b.name)
def test_bad_input_raises_under_jit(bad: Bad) -> None:
    with pytest.raises(bad.exc, match=bad.match):
        jax.jit(_call(bad))(bad.lhs, bad.rhs)


def test_non_array_operand() -> None:
    with pytest.raises(TypeError, match=r"`lhs` \(='abc'\) must be an array"):
        jconv.conv_general_dilated("abc", W, (1, 1), "VALID", dimension_numbers=DN)


def test_string_dtype_operand() -> None:
    with pytest.raises(TypeError, match=r"`rhs` has dtype <U1; convolution needs a numeric"):
        jconv.conv_general_dilated(X, np.full(W.shape, "a"), (1, 1), "VALID", dimension_numbers=DN)


# Calls lax's checks accept that jconv rejects on purpose: a bool stride or a float group
# count is almost surely a bug in the caller.
STRICTER_THAN_LAX = {"stride_bool", "feature_groups_float"}


@pytest.mark.parametrize(
    "bad", [b for b in CATALOGUE if not b.friendly and "strategy" not in b.kwargs],
    ids=lambda b: b.name,
)
def test_lax_rejects_it_too(bad: Bad) -> None:
    """Every other catalogue entry for the lax signature is invalid for lax as well."""
    if bad.name in STRICTER_THAN_LAX:
        # lax's checks accept it (traced only: compiled eagerly, a float group count fails
        # in XLA's lowering, and lax's cache of compiled primitives, keyed by parameters
        # that compare equal, 1.0 == 1, would hand that failure to valid calls later on)
        jax.eval_shape(lambda a, b: lax.conv_general_dilated(a, b, **bad.kwargs),
                       bad.lhs, bad.rhs)
        return
    with pytest.raises((ValueError, TypeError, RuntimeError, RuntimeWarning)):
        lax.conv_general_dilated(bad.lhs, bad.rhs, **bad.kwargs)
