"""Receptive field, effective stride/padding and totals of stacks, measured with jax.grad.

The receptive field of output position j of a stack is read off the gradient of that output
with respect to the input (ones everywhere: every path adds a positive amount). Formulas:
Araujo, Norris, Sim, "Computing receptive fields of convolutional neural networks",
Distill 2019, eqs. (2) and (4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

import jconv
from jconv import ConvSpec
from jconv.symbolic import (
    asymptotic_order,
    effective_padding,
    effective_stride,
    layer_model,
    receptive_field,
    stack_totals,
    uniform_stack,
)

Layer = tuple[int, int, int, int]  # (k, s, d, p)


def measured_window(layers: list[Layer], j: int, size: int) -> tuple[int, int]:
    """(first input index, extent) that output j of the 1-D stack depends on."""

    def out_j(x: jax.Array) -> jax.Array:
        y = x[None, :, None]
        for k, s, d, p in layers:
            y = jconv.conv(y, jnp.ones((k, 1, 1), jnp.float32), stride=s, padding=((p, p),),
                           dilation=d, layout="NWC")
        return y[0, j, 0]

    g = np.asarray(jax.grad(out_j)(jnp.ones((size,), jnp.float32)))
    hit = np.nonzero(g)[0]
    return int(hit[0]), int(hit[-1] - hit[0] + 1)


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 2),
                          st.integers(0, 2)), min_size=1, max_size=4))
def test_receptive_field_stride_and_padding_equal_gradient_support(layers: list[Layer]) -> None:
    ks, ss, ds, ps = (list(v) for v in zip(*layers, strict=True))
    r0 = int(receptive_field(ks, ss, ds))
    s0, p0 = int(effective_stride(ss)), int(effective_padding(ps, ss))
    size = 2 * (r0 + p0 + 2 * s0) + 4
    # outputs whose receptive field lies inside the input: j*S0 - P0 >= 0
    j = -(-p0 // s0)
    start, extent = measured_window(layers, j, size)
    assert extent == r0
    assert start == j * s0 - p0
    start2, _ = measured_window(layers, j + 1, size)
    assert start2 - start == s0


@pytest.mark.parametrize(("k", "s", "p", "d"), [(3, 1, 1, 1), (3, 2, 1, 1), (2, 2, 0, 1),
                                                (3, 1, 2, 2), (5, 3, 2, 1)])
def test_uniform_stack_closed_forms(k: int, s: int, p: int, d: int) -> None:
    """Closed forms from Sum(...).doit() equal the per-layer sums and the measurement."""
    L = sp.Symbol("L", integer=True, positive=True)
    closed = uniform_stack(L, k, s, p, d)
    for depth in range(1, 6):
        assert closed["receptive_field"].subs(L, depth) == receptive_field(
            [k] * depth, [s] * depth, [d] * depth)
        assert closed["stride"].subs(L, depth) == effective_stride([s] * depth)
        assert closed["padding"].subs(L, depth) == effective_padding([p] * depth, [s] * depth)
    depth = 3
    r0 = int(closed["receptive_field"].subs(L, depth))
    s0, p0 = int(closed["stride"].subs(L, depth)), int(closed["padding"].subs(L, depth))
    j = -(-p0 // s0)
    start, extent = measured_window([(k, s, d, p)] * depth, j, 2 * (r0 + p0 + 2 * s0) + 4)
    assert (start, extent) == (j * s0 - p0, r0)


def test_uniform_stack_symbolic() -> None:
    L, k = sp.symbols("L k", integer=True, positive=True)
    assert sp.expand(uniform_stack(L, k)["receptive_field"]) == sp.expand(L * (k - 1) + 1)
    assert sp.simplify(uniform_stack(L, k, 2)["receptive_field"] - (1 + (k - 1) * (2**L - 1))) == 0


def test_stack_totals_equal_real_weight_arrays() -> None:
    """A 2-D stack: totals of weights, biases, MACs and output bytes over L layers."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 17, 15, 3)), jnp.float32)
    plan = [(8, 3, 1, 1), (8, 3, 2, 2), (16, 1, 1, 1), (16, 3, 2, 16)]  # (F, k, stride, groups)
    models, w_size, b_size, out_bytes, macs = [], 0, 0, 0, 0
    for f, k, s, g in plan:
        w = jnp.asarray(rng.standard_normal((k, k, x.shape[-1] // g, f)), jnp.float32)
        b = jnp.zeros((f,), jnp.float32)
        spec = ConvSpec.from_lax(x.shape, w.shape, (s, s), "SAME", None, None,
                                 ("NHWC", "HWIO", "NHWC"), g)
        models.append(layer_model(spec))
        y = jconv.conv(x, w, stride=s, groups=g, bias=b)
        w_size, b_size, out_bytes = w_size + w.size, b_size + b.size, out_bytes + y.nbytes
        macs += y.size * k * k * (x.shape[-1] // g)
        x = y
    totals = stack_totals(models)
    assert totals["weights"] == w_size and totals["biases"] == b_size
    assert totals["params"] == w_size + b_size
    assert totals["out_bytes"] == out_bytes
    assert totals["macs"] == macs


def test_asymptotic_order_for_all_variables() -> None:
    L, k, c, n, m = sp.symbols("L k c n m", integer=True, positive=True)
    order = asymptotic_order(L * (k**2 * c**2 + c) + 7, L, k, c)
    assert order == sp.Order(L * k**2 * c**2, (L, sp.oo), (k, sp.oo), (c, sp.oo))
    assert asymptotic_order(L * n * m * c + n * m) == sp.Order(
        L * n * m * c, (L, sp.oo), (c, sp.oo), (m, sp.oo), (n, sp.oo))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        receptive_field([3, 3], [1])
