"""Gradients of jconv: `check_grads` (orders 1 and 2, fwd and rev) and VJPs equal to lax's.

Each lowering's own gradients are compared with lax's in test_strategies.py; second
derivatives under `jax.checkpoint` and `jax.jit`, by the default strategy too, in
test_core_transforms.py.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _core_cases import EDGE, TABLE, Case, make_case, run_jconv, run_lax
from jax.test_util import check_grads
from reference import conv_reference, rel_err

from jconv import ConvSpec
from jconv._spec import canonical_layouts

# Small windows keep the second-order checks quick; together they cover every
# hyper-parameter (each case names the ones it exercises).
GRAD_CASES = [
    (make_case("1d_stride_pads_lhs_rhs_dil", spatial=(5,), window=(2,), strides=(2,),
               padding=((2, -1),), lhs_dil=(2,), rhs_dil=(2,)), "shift"),
    (make_case("2d_groups_dil_stride", spatial=(4, 3), window=(2, 2), channels=4, filters=2,
               fgc=2, strides=(1, 2), rhs_dil=(2, 1), padding="SAME"), "patches"),
    (make_case("2d_batch_groups_same_lower", spatial=(3, 4), window=(2, 1), batch=4, filters=2,
               bgc=2, padding="SAME_LOWER"), "shift"),
    (make_case("2d_depthwise_odd_dn_cdn", spatial=(3, 4), window=(1, 2), channels=2,
               filters=4, fgc=2, dn=("CWNH", "HOWI", "WNCH"), dn_kind="cdn",
               padding=((1, 0), (0, 1))), "patches"),
    (make_case("3d_valid_none", spatial=(3, 2, 3), window=(2, 1, 2), dn_kind="none",
               padding="VALID", channels=1, filters=2), "shift"),
]


@pytest.mark.parametrize(("case", "strategy"), GRAD_CASES, ids=lambda v: str(v))
def test_check_grads_orders_1_and_2(case: Case, strategy: str) -> None:
    x, w = case.operands(np.float64, seed=4)
    with jax.enable_x64(True):
        check_grads(
            lambda a, b: run_jconv(case, a, b, strategy), (x, w), order=2,
            modes=("fwd", "rev"), atol=1e-6, rtol=1e-6,
        )


# every table case, the two strategies taking turns (each sees every kind of case)
VJP_CASES = [(case, ("shift", "patches")[i % 2]) for i, case in enumerate(TABLE)]


@pytest.mark.parametrize(("case", "strategy"), VJP_CASES, ids=lambda v: str(v))
def test_vjp_matches_lax(case: Case, strategy: str) -> None:
    x, w = case.operands(np.float32, seed=5)
    want, lax_vjp = jax.vjp(lambda a, b: run_lax(case, a, b), x, w)
    got, vjp = jax.vjp(lambda a, b: run_jconv(case, a, b, strategy), x, w)
    ct = np.random.default_rng(6).standard_normal(want.shape).astype(np.float32)
    assert rel_err(got, want) <= 1e-5
    for g, ref in zip(vjp(ct), lax_vjp(ct), strict=True):
        assert g.shape == ref.shape and g.dtype == ref.dtype
        assert rel_err(g, ref) <= 1e-5


@pytest.mark.parametrize("strategy", ["auto", "shift"])
@pytest.mark.parametrize("case", EDGE, ids=lambda c: c.name)
def test_vjp_of_empty_shapes_matches_lax(case: Case, strategy: str) -> None:
    """Gradients where an operand or the output is empty, or the input is empty and padding
    alone makes the output (``auto``: a dense layer's gradients by the engine's two
    convolutions, the input gradient's then empty)."""
    x, w = case.operands(np.float32, seed=5)
    want, lax_vjp = jax.vjp(lambda a, b: run_lax(case, a, b), x, w)
    got, vjp = jax.vjp(lambda a, b: run_jconv(case, a, b, strategy), x, w)
    ct = np.random.default_rng(6).standard_normal(want.shape).astype(np.float32)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, ref in zip(vjp(ct), lax_vjp(ct), strict=True):
        assert g.shape == ref.shape and g.dtype == ref.dtype
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)


def test_input_gradient_is_the_adjoint_convolution() -> None:
    """`ConvSpec.input_gradient` with `ConvSpec.flip_kernel` (the convolution the engine
    plans for a dense convolution's input gradient) is the adjoint of ``x -> conv(x, w)``:
    ``<conv(x, w), ct> == <x, conv'(ct, w')>`` for random inputs, float64, over random
    strides, paddings (negative too), lhs and rhs dilations and feature groups, both sides
    by the NumPy reference."""
    rng = np.random.default_rng(11)
    checked = 0
    while checked < 60:
        ns = int(rng.integers(1, 3))
        g = int(rng.choice([1, 2, 3]))
        cg, fq = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        pairs = tuple((int(rng.integers(-1, 4)), int(rng.integers(-1, 4))) for _ in range(ns))
        dims = [tuple(int(rng.integers(lo, hi)) for _ in range(ns))
                for lo, hi in ((1, 8), (1, 4), (1, 4), (1, 3), (1, 3))]
        ins, window, strides, lhs_dil, rhs_dil = dims
        try:
            spec = ConvSpec.from_lax((2, *ins, g * cg), (*window, cg, g * fq), strides, pairs,
                                     lhs_dil, rhs_dil, canonical_layouts(ns), g)
        except ValueError:
            continue
        if spec.empty:
            continue
        grad = spec.input_gradient()
        w = rng.standard_normal(spec.rhs_shape)
        ct = rng.standard_normal(spec.canonical_out_shape)
        dx = conv_reference(ct, spec.flip_kernel(w), grad.window_strides, grad.padding,
                            grad.lhs_dilation, grad.rhs_dilation, g)
        assert dx.shape == spec.lhs_shape, spec
        for _ in range(2):
            x = rng.standard_normal(spec.lhs_shape)
            y = conv_reference(x, w, spec.window_strides, spec.padding, spec.lhs_dilation,
                               spec.rhs_dilation, g)
            np.testing.assert_allclose(np.sum(y * ct), np.sum(x * dx), rtol=1e-10, atol=1e-10)
        checked += 1
