"""Output sizes, element counts and bytes from jconv.symbolic against real arrays.

References: arrays of `jconv.conv_general_dilated` as traced by `jax.eval_shape` (shape, size,
bytes),
`jax.lax.padtype_to_pads` for the SAME split, and PyTorch's `conv_transpose1d` output shape
for the transposed-convolution formula (Dumoulin and Visin, arXiv:1603.07285, Relationship 14).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import jconv
from jconv import ConvSpec
from jconv._spec import normalize_layout
from jconv.symbolic import (
    layer_model,
    output_padding,
    output_size,
    same_padding,
    size_symbols,
    transposed_output_size,
)

_DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16)


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    n = draw(st.sampled_from((1, 1, 2, 2, 2, 3)))
    spatial = tuple(draw(st.integers(1, 7 if n < 3 else 4)) for _ in range(n))
    window = tuple(draw(st.integers(1, 3)) for _ in range(n))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(n))
    rhs_d = tuple(draw(st.integers(1, 2)) for _ in range(n))
    lhs_d = tuple(draw(st.sampled_from((1, 1, 2))) for _ in range(n))
    if any(d > 1 for d in lhs_d) or draw(st.booleans()):
        padding: object = tuple(
            (draw(st.integers(-1, 3)), draw(st.integers(-1, 3))) for _ in range(n))
    else:
        padding = draw(st.sampled_from(("SAME", "SAME_LOWER", "VALID")))
    groups = draw(st.sampled_from((1, 1, 2, 3)))
    bgroups = 1 if groups > 1 else draw(st.sampled_from((1, 1, 2)))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * bgroups * draw(st.integers(1, 2))
    batch = bgroups * draw(st.integers(1, 2))
    return {
        "spatial": spatial, "window": window, "strides": strides, "rhs_d": rhs_d,
        "lhs_d": lhs_d, "padding": padding, "groups": groups, "bgroups": bgroups,
        "cin": cin, "cout": cout, "batch": batch,
        "layout": draw(st.sampled_from(("NHWC", "NCHW"))),
        "dtype": draw(st.sampled_from(_DTYPES)),
    }


@settings(max_examples=3 * settings.default.max_examples)
@given(conv_cases())
def test_formulas_equal_shapes_sizes_and_bytes_of_engine_arrays(case: dict) -> None:
    n = len(case["spatial"])
    dnums = normalize_layout(case["layout"], n)
    cl = case["layout"] == "NHWC"
    lhs_shape = ((case["batch"], *case["spatial"], case["cin"]) if cl
                 else (case["batch"], case["cin"], *case["spatial"]))
    kshape = (*case["window"], case["cin"] // case["groups"], case["cout"])
    rhs_shape = kshape if cl else (kshape[-1], kshape[-2], *case["window"])
    args = (case["strides"], case["padding"], case["lhs_d"], case["rhs_d"], dnums,
            case["groups"], case["bgroups"])
    try:
        spec = ConvSpec.from_lax(lhs_shape, rhs_shape, *args)
    except ValueError:  # e.g. negative padding larger than the input
        return
    dtype = case["dtype"]
    x = jnp.asarray(np.random.default_rng(0).standard_normal(lhs_shape), dtype)
    w = jnp.asarray(np.random.default_rng(1).standard_normal(rhs_shape), dtype)
    b = jnp.zeros((case["cout"],), dtype)
    # the engine's output as traced (shapes and dtypes are fixed at trace time)
    y = jax.eval_shape(lambda x, w: jconv.conv_general_dilated(x, w, *args), x, w)
    y_nbytes = y.size * y.dtype.itemsize

    m = layer_model(spec, bias=True, dtype=dtype)
    out_sp = tuple(y.shape[1:-1]) if cl else tuple(y.shape[2:])
    assert tuple(max(m[f"out_{j}"].value, 0) for j in range(n)) == out_sp
    # the public one-dimension formula, with the string padding when one was given
    for j in range(n):
        pad = case["padding"] if isinstance(case["padding"], str) else case["padding"][j]
        o = output_size(case["spatial"][j], case["window"][j], case["strides"][j], pad,
                        case["rhs_d"][j], case["lhs_d"][j])
        assert max(int(o), 0) == out_sp[j]
    if all(o > 0 for o in out_sp):
        assert m["out_elements"].value == y.size
        assert m["out_bytes"].value == y_nbytes
    else:
        assert y.size == 0
    assert m["in_bytes"].value == x.nbytes
    assert m["weights"].value == w.size
    assert m["weight_bytes"].value == w.nbytes
    assert m["biases"].value == b.size and m["bias_bytes"].value == b.nbytes
    assert m["params"].value == w.size + b.size


@pytest.mark.parametrize("i", range(1, 12))
@pytest.mark.parametrize(("k", "s", "d"), [(1, 1, 1), (3, 1, 1), (3, 2, 1), (4, 3, 1),
                                           (3, 2, 2), (5, 4, 1), (2, 2, 3)])
def test_same_padding_split_equals_lax(i: int, k: int, s: int, d: int) -> None:
    eff = d * (k - 1) + 1
    for kind, lower in (("SAME", False), ("SAME_LOWER", True)):
        (lo, hi), = lax.padtype_to_pads((i,), (eff,), (s,), kind)
        got = same_padding(i, k, s, d, lower=lower)
        assert (int(got[0]), int(got[1])) == (lo, hi)
        assert int(output_size(i, k, s, kind, d)) == (i + lo + hi - eff) // s + 1


@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("p", [0, 1, 2])
@pytest.mark.parametrize("d", [1, 2])
def test_transposed_size_with_output_padding_restores_input(s: int, k: int, p: int,
                                                            d: int) -> None:
    """a = (i + 2p - k_eff) mod s makes the transposed conv return exactly size i (torch)."""
    for i in range(max(d * (k - 1) + 1 - 2 * p, 1), 12):
        o = int(output_size(i, k, s, (p, p), d))
        a = int(output_padding(i, k, s, p, d))
        if a >= max(s, d):  # torch's rule for output_padding
            continue
        x = torch.zeros(1, 1, o)
        w = torch.zeros(1, 1, k)
        y = torch.nn.functional.conv_transpose1d(x, w, stride=s, padding=p, output_padding=a,
                                                 dilation=d)
        assert y.shape[-1] == i == int(transposed_output_size(o, k, s, p, a, d))
        # the same size through jconv: lhs-dilated conv with pads (d(k-1) - p, d(k-1) - p + a)
        q = d * (k - 1) - p
        yj = jax.eval_shape(
            lambda x, w, q=q, a=a: jconv.conv_general_dilated(
                x, w, (1,), ((q, q + a),), (s,), (d,), ("NWC", "WIO", "NWC")),
            jax.ShapeDtypeStruct((1, o, 1), jnp.float32),
            jax.ShapeDtypeStruct((k, 1, 1), jnp.float32))
        assert yj.shape[1] == i == int(output_size(o, k, 1, (q, q + a), d, lhs_d=s))


def test_symbolic_output_size_and_the_a_term() -> None:
    i, k, s, p = size_symbols("i k s p")
    assert output_size(i, k, s, (p, p)) == sp.floor((i + 2 * p - k) / s) + 1
    assert output_size(i, k, s, "SAME") == sp.ceiling(i / s)
    # the transposed conv with a = (i + 2p - k) mod s returns i
    o = output_size(i, k, s, (p, p))
    back = transposed_output_size(o, k, s, p, output_padding(i, k, s, p))
    for vals in ({i: 9, k: 3, s: 2, p: 1}, {i: 10, k: 4, s: 3, p: 0}, {i: 7, k: 2, s: 4, p: 2}):
        assert back.subs(vals) == vals[i]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`padding` \(='FULL'\)"):
        output_size(5, 3, 1, "FULL")
    with pytest.raises(ValueError, match="lhs_d"):
        output_size(5, 3, 1, "SAME", lhs_d=2)
    with pytest.raises(TypeError, match=r"`k` \(=1.5\)"):
        output_size(5, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`spec`"):
        layer_model((1, 2, 3))  # type: ignore[arg-type]
