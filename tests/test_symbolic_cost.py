"""FLOPs and rounding-error formulas of jconv.symbolic against XLA and float64 references.

- ``flops_xla`` equals ``compile().cost_analysis()["flops"]`` of `lax.conv_general_dilated`
  exactly (XLA counts 2 flops per kernel tap that lands on a real input element, per output
  feature and input channel of its group; padding and lhs-dilation holes are free).
- ``flops_dense`` (2 MACs + one add per output for the bias) equals XLA's count of
  ``conv + bias`` when nothing is padded or dilated.
- ``error_bound`` (Higham 2002, eq. (3.5)): ``|fl(y) - y| <= gamma_K sum |x||w|`` holds for
  float32 outputs of the jconv engine against float64 `lax` references.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax

import jconv
from jconv import ConvSpec
from jconv._spec import canonical_layouts
from jconv.symbolic import Formula, cost_analysis_flops, gamma, layer_model, unit_roundoff

DN2 = canonical_layouts(2)  # ("N01C", "01IO", "N01C"): channels last, like NHWC/HWIO


def xla_flops(fn: Any, *args: Any) -> float:
    """``cost_analysis()["flops"]``; the result may be a dict, a list of dicts or None."""
    flops = cost_analysis_flops(jax.jit(fn).lower(*args).compile().cost_analysis())
    if flops is None:
        pytest.skip("this backend gives no cost analysis")
    return flops


def test_cost_analysis_flops_accepts_every_return_form() -> None:
    assert cost_analysis_flops({"flops": 12.0, "bytes accessed": 3.0}) == 12.0
    assert cost_analysis_flops([{"flops": 7.0}]) == 7.0
    assert cost_analysis_flops({"bytes accessed": 3.0}) == 0.0  # no tap on real input
    assert cost_analysis_flops(None) is None and cost_analysis_flops([]) is None
    with pytest.raises(TypeError, match="`cost`"):
        cost_analysis_flops(3.0)


# (lhs NHWC-like, kernel HWIO-like, strides, padding, lhs_dilation, rhs_dilation, groups)
XLA_TABLE = [
    ((2, 7, 7, 3), (3, 3, 3, 8), (1, 1), "SAME", None, None, 1),
    ((1, 8, 8, 4), (3, 3, 4, 6), (2, 2), "SAME", None, None, 1),
    ((1, 9, 9, 2), (3, 3, 2, 4), (1, 1), "SAME", None, (2, 2), 1),
    ((1, 10, 10, 6), (3, 3, 2, 6), (2, 1), "SAME_LOWER", None, None, 3),
    ((1, 8, 8, 4), (5, 5, 1, 8), (1, 1), "SAME", None, None, 4),
    ((1, 6, 6, 3), (3, 3, 3, 2), (1, 1), ((2, 1), (0, 3)), None, None, 1),
    ((1, 8, 8, 2), (2, 2, 2, 2), (1, 1), ((-1, 2), (1, -2)), None, None, 1),
    ((1, 5, 5, 2), (3, 3, 2, 3), (1, 1), ((2, 2), (1, 1)), (2, 2), None, 1),
    ((1, 6, 4, 2), (3, 2, 2, 2), (2, 1), ((1, 3), (2, 0)), (3, 1), (1, 2), 1),
    ((2, 11, 3), (4, 3, 5), (3,), "SAME", None, None, 1),
    ((1, 5, 6, 4, 2), (3, 2, 3, 2, 3), (1, 2, 1), "SAME", None, (1, 1, 2), 1),
    ((4, 32, 32, 16), (3, 3, 16, 32), (1, 1), "VALID", None, None, 1),
    ((1, 224, 224, 3), (7, 7, 3, 64), (2, 2), ((3, 3), (3, 3)), None, None, 1),
    ((1, 112, 112, 32), (3, 3, 1, 32), (2, 2), "SAME", None, None, 32),
    ((1, 3, 3, 1), (5, 5, 1, 1), (1, 1), "SAME", None, None, 1),
    ((1, 7, 7, 2), (3, 3, 2, 4), (3, 3), "SAME", None, (3, 3), 1),
    ((1, 1, 5, 2), (4, 1, 1, 2), (1, 3), ((-1, 4), (3, 4)), None, None, 2),  # no real tap
    ((1, 4, 4, 3), (1, 1, 1, 3), (1, 1), "VALID", None, None, 3),  # rewritten to a multiply
    ((2, 5, 1), (1, 1, 1), (1,), "SAME", None, None, 1),  # rewritten to a multiply
    ((1, 4, 4, 3), (1, 1, 1, 6), (1, 1), "VALID", None, None, 3),  # 2 outputs per group
    ((1, 4, 4, 1), (1, 1, 1, 1), (2, 2), "VALID", None, None, 1),  # strided: a conv
]


@pytest.mark.parametrize("case", XLA_TABLE, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_flops_xla_equals_cost_analysis_exactly(case: tuple) -> None:
    lhs, rhs, strides, padding, lhs_d, rhs_d, groups = case
    dn = canonical_layouts(len(lhs) - 2)
    spec = ConvSpec.from_lax(lhs, rhs, strides, padding, lhs_d, rhs_d, dn, groups)

    def f(x: jax.Array, w: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(x, w, strides, padding, lhs_d, rhs_d, dn,
                                        feature_group_count=groups)

    measured = xla_flops(f, jnp.zeros(lhs, jnp.float32), jnp.zeros(rhs, jnp.float32))
    model = layer_model(spec, bias=False)
    assert model["flops_xla"].value == measured
    elementwise = set(rhs[:-2]) == {1} and rhs[-2] == 1 and rhs[-1] == groups
    if padding == "VALID" and lhs_d is None and rhs_d is None and not elementwise:
        assert model["flops_dense"].value == measured == 2 * spec.macs
    else:
        assert model["flops_xla"].value <= model["flops_dense"].value


@st.composite
def _xla_cases(draw: st.DrawFn) -> tuple:
    n = draw(st.integers(1, 2))
    g = draw(st.sampled_from((1, 2, 3)))
    lhs = (draw(st.integers(1, 2)), *(draw(st.integers(1, 9)) for _ in range(n)),
           g * draw(st.integers(1, 2)))
    rhs = (*(draw(st.integers(1, 4)) for _ in range(n)), lhs[-1] // g, g * draw(st.integers(1, 2)))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(n))
    rhs_d = tuple(draw(st.integers(1, 3)) for _ in range(n))
    lhs_d = tuple(draw(st.sampled_from((1, 1, 2, 3))) for _ in range(n))
    if any(d > 1 for d in lhs_d) or draw(st.booleans()):
        padding: Any = tuple((draw(st.integers(-2, 4)), draw(st.integers(-2, 4)))
                             for _ in range(n))
    else:
        padding = draw(st.sampled_from(("SAME", "SAME_LOWER", "VALID")))
    return lhs, rhs, strides, padding, lhs_d, rhs_d, g


@settings(max_examples=int(os.environ.get('JCONV_XLA_EXAMPLES', '40')), deadline=None)
@given(_xla_cases())
def test_flops_xla_equals_cost_analysis_on_drawn_configurations(case: tuple) -> None:
    lhs, rhs, strides, padding, lhs_d, rhs_d, groups = case
    dn = canonical_layouts(len(lhs) - 2)
    try:
        spec = ConvSpec.from_lax(lhs, rhs, strides, padding, lhs_d, rhs_d, dn, groups)
    except ValueError:
        return
    assume(0 not in spec.out_spatial)

    def f(x: jax.Array, w: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(x, w, strides, padding, lhs_d, rhs_d, dn,
                                        feature_group_count=groups)

    measured = xla_flops(f, jnp.zeros(lhs, jnp.float32), jnp.zeros(rhs, jnp.float32))
    assert layer_model(spec, bias=False)["flops_xla"].value == measured


def test_flops_xla_is_not_defined_for_batch_groups() -> None:
    spec = ConvSpec.from_lax((4, 6, 6, 2), (3, 3, 2, 4), (1, 1), "SAME", None, None, DN2,
                             1, 2)
    model = layer_model(spec)
    assert "flops_xla" not in model
    assert model["macs"].value == 2 * 36 * 4 * 9 * 2  # N / B outputs, C_in per output


@pytest.mark.parametrize(("lhs", "rhs", "strides", "groups"), [
    ((1, 6, 6, 3), (3, 3, 3, 4), (1, 1), 1),
    ((2, 9, 7, 4), (2, 3, 2, 6), (2, 1), 2),
])
def test_flops_dense_with_bias_equals_xla_conv_plus_bias(lhs: tuple, rhs: tuple,
                                                        strides: tuple, groups: int) -> None:
    spec = ConvSpec.from_lax(lhs, rhs, strides, "VALID", None, None, DN2, groups)

    def f(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(x, w, strides, "VALID", dimension_numbers=DN2,
                                        feature_group_count=groups) + b[None, None, None, :]

    args = (jnp.zeros(lhs, jnp.float32), jnp.zeros(rhs, jnp.float32),
            jnp.zeros((rhs[-1],), jnp.float32))
    assert layer_model(spec, bias=True)["flops_dense"].value == xla_flops(f, *args)


# (lhs, kernel, strides, padding, rhs_dilation, groups)
ERROR_TABLE = [
    ((2, 12, 12, 64), (3, 3, 64, 16), (1, 1), "SAME", (1, 1), 1),
    ((1, 10, 10, 512), (3, 3, 512, 8), (1, 1), "VALID", (1, 1), 1),
    ((1, 9, 9, 256), (3, 3, 64, 32), (2, 2), "SAME", (2, 2), 4),
    ((1, 16, 16, 32), (5, 5, 1, 64), (1, 1), "SAME", (1, 1), 32),
    ((1, 7, 7, 1024), (1, 1, 1024, 16), (1, 1), "VALID", (1, 1), 1),
    ((2, 12, 12, 32), (3, 3, 32, 16), (2, 1), "SAME", (1, 1), 1),
]
# lowerings that sum the K products (FFT and Winograd transform them: other bounds apply)
SUMMING = ("shift", "patches", "direct", "hybrid")


@pytest.mark.parametrize("strategy", SUMMING)
@pytest.mark.parametrize("case", ERROR_TABLE, ids=lambda c: f"{c[1]}-g{c[5]}")
def test_error_bound_holds_on_float32_engine_outputs(case: tuple, strategy: str) -> None:
    lhs, rhs, strides, padding, rhs_d, groups = case
    spec = ConvSpec.from_lax(lhs, rhs, strides, padding, None, rhs_d, DN2, groups)
    bound = layer_model(spec, dtype=jnp.float32)["error_bound"]
    K = int(np.prod(rhs[:-1]))
    assert bound.value == gamma(K, sp.Rational(1, 2**24))
    # the float64 reference is itself within gamma_K(2**-53) of the exact sum
    g64 = float(gamma(K, unit_roundoff("float64")))
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(lhs).astype(np.float32)
    w0 = rng.standard_normal(rhs).astype(np.float32)
    # signed data, then nonnegative data (no cancellation: largest error relative to the sum)
    for x, w in ((x0, w0), (np.abs(x0), np.abs(w0))):
        try:
            y = jconv.conv_general_dilated(jnp.asarray(x), jnp.asarray(w), strides, padding,
                                           None, rhs_d, DN2, groups, strategy=strategy)
        except ValueError as e:  # e.g. 'direct' unrolls at most a few hundred terms
            if "cannot run" not in str(e):
                raise
            pytest.skip(str(e))
        y32 = np.asarray(y)
        with jax.enable_x64(True):
            def ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
                return np.asarray(lax.conv_general_dilated(
                    jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float64), strides, padding,
                    None, rhs_d, DN2, groups, precision=lax.Precision.HIGHEST))
            y64, s64 = ref(x, w), ref(np.abs(x), np.abs(w))
        allowed = (float(bound.value) + g64) * s64 * (1 + g64)
        err = np.abs(y32.astype(np.float64) - y64)
        assert np.all(err <= allowed)


def test_formula_text_and_latex() -> None:
    spec = ConvSpec.from_lax((1, 28, 28, 1), (3, 3, 1, 10), (1, 1), "SAME", None, None, DN2)
    m = layer_model(spec)
    assert str(m["params"]) == "C_in*C_out*k_h*k_w/g + C_out = 100"
    assert m["params"].latex() == r"\frac{C_{in} C_{out} k_{h} k_{w}}{g} + C_{out} = 100"
    assert isinstance(m["weights"], Formula) and m["weights"].value == 90
    assert str(Formula("zero", sp.Integer(0), 0)) == "0"
    with pytest.raises(ValueError, match="`dtype`"):
        layer_model(spec, dtype=jnp.int32)
    with pytest.raises(ValueError, match=r"`K \* u`"):
        gamma(2**24, unit_roundoff("float32"))
    with pytest.raises(ValueError, match="`dtype`"):
        unit_roundoff("float8")


def test_error_bound_is_vacuous_not_an_error_when_k_u_reaches_one() -> None:
    # float16: u = 2**-11, so K = 3*3*256 = 2304 products exceed 1/u and gamma_K is undefined.
    spec = ConvSpec.from_lax((1, 4, 4, 256), (3, 3, 256, 2), (1, 1), "SAME",
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert layer_model(spec, dtype=jnp.float16)["error_bound"].value == sp.oo
    assert layer_model(spec, dtype=jnp.float32)["error_bound"].value < 1e-3
    # bfloat16 and float16 have the same item size, not the same roundoff
    bf16, f16 = (layer_model(spec, dtype=d) for d in (jnp.bfloat16, jnp.float16))
    assert bf16["out_bytes"].value == f16["out_bytes"].value
    assert bf16["error_bound"].value == sp.oo and unit_roundoff("bfloat16") > unit_roundoff(
        "float16")


def test_flops_xla_of_a_strided_single_sample_conv() -> None:
    """A window-1, stride-3 conv over one sample: XLA counts 8 flops. SymPy's own `Sum.doit`
    returned 0 for its tap count in some processes (it depends on hash seeds and cache
    state); the model writes sums over whole-number limits out term by term instead."""
    from jconv.symbolic.layer import unroll_sums

    args = ((2, 1, 2), (1, 1, 2), (3,), "SAME", (1,), (1,), canonical_layouts(1), 2)

    def f(x: jax.Array, w: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(x, w, *args[2:6], args[6], feature_group_count=2)

    measured = xla_flops(f, jnp.zeros(args[0], jnp.float32), jnp.zeros(args[1], jnp.float32))
    assert layer_model(ConvSpec.from_lax(*args), bias=False)["flops_xla"].value == measured == 8
    t = sp.Symbol("t", integer=True)
    assert unroll_sums(sp.Sum(sp.Max(0, sp.floor(-t / 3) + 1), (t, 0, 0))) == 1
    assert unroll_sums(sp.Sum(sp.Max(0, sp.floor(t / 3)), (t, 0, 5))) == 3
    assert unroll_sums(sp.Sum(t, (t, 2, 1))) == 0  # empty range
