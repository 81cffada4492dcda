"""Every lowering against `jax.lax.conv_general_dilated`: gradients, dtypes, costs, and the
paths particular to one lowering.

Values of every lowering on every table configuration, and refusals of the ones a
lowering declines, are checked in test_core_reference.py against the float64 loop
reference. Here: reverse-mode gradients of each lowering against lax's on configurations
that reach every kind of hyper-parameter (`LOWERING_ROWS`: 1-D and 2-D, strides, padding
kinds, rhs and lhs dilation, feature groups including depthwise, batch groups),
forward-mode on the depthwise ones, integer and bfloat16 operands, each lowering's cost
model against its symbolic formula, and each lowering's own switches (tiles, chunks, paths).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from _core_cases import LOWERING_ROWS, Case, run_jconv, run_lax
from jax import lax
from reference import conv_reference

import jconv
from jconv import ConvSpec
from jconv.strategies import STRATEGIES, Geometry, shift

NAMES = sorted(STRATEGIES)
HI = lax.Precision.HIGHEST


def _dn(ns: int) -> tuple[str, str, str]:
    s = "DHW"[-ns:] if ns > 1 else "W"
    return (f"N{s}C", f"{s}IO", f"N{s}C")


def _operands(i: int) -> tuple[Case, jax.Array, jax.Array]:
    """Row ``i`` of `LOWERING_ROWS` and float32 operands seeded by the row index."""
    case = LOWERING_ROWS[i]
    x, w = case.operands(np.float32, seed=i)
    return case, jax.device_put(x), jax.device_put(w)


ROUNDOFF = {"winograd4": 1e-4}
"""Error allowed relative to ``sum |x| |w|`` in float32 where it is not 1e-5: F(4x4, 3x3)
rounds more (`test_winograd4_trades_accuracy_for_multiplies`)."""


def _scale(x: jax.Array, w: jax.Array, kw: dict) -> np.ndarray:
    """sum |x| |w| per output: the natural scale of the rounding error."""
    return np.asarray(lax.conv_general_dilated(jnp.abs(x), jnp.abs(w), **kw)) + 1e-6


def _applies(name: str, case: Case, dtype: object = jnp.float32) -> bool:
    return STRATEGIES[name].applicable(case.spec(), jnp.dtype(dtype)) is None


GRAD_ROWS = (0, 1, 2, 3, 4, 6, 8, 11, 12, 13, 15, 16, 17)
"""Dense, grouped, strided and dilated, depthwise (multiplier 2, with lhs dilation, 1-D),
explicit pads, batch groups, 1-D strided and dilated, 15 taps, lhs dilation."""


def _compare(got: dict[str, Any], want: Any, taps: int) -> None:
    """Each lowering's result (a pytree like `want`) against lax's, within its rounding
    (`ROUNDOFF` times ``max |lax|`` per tap); every mismatching lowering is named."""
    bad = {}
    for name, value in got.items():
        for g, r in zip(jax.tree.leaves(value), jax.tree.leaves(want), strict=True):
            r = np.asarray(r)
            tol = ROUNDOFF.get(name, 1e-5) * float(np.max(np.abs(r), initial=0.0)) * taps
            try:
                np.testing.assert_allclose(np.asarray(g), r, atol=tol + 1e-5, rtol=1e-4)
            except AssertionError as e:
                bad[name] = str(e)
    assert not bad, bad


@pytest.mark.parametrize("i", GRAD_ROWS, ids=lambda i: LOWERING_ROWS[i].name)
def test_gradients_match_lax(i: int) -> None:
    """Reverse mode, both arguments, of every lowering that applies to the row, against
    lax's gradients computed once; the lowerings' gradients are compiled in one program."""
    case, x, w = _operands(i)
    names = [n for n in NAMES if _applies(n, case)]
    assert {"shift", "patches", "hybrid"} <= set(names)
    spec = case.spec()
    ct = jax.device_put(np.random.default_rng(100 + i).standard_normal(spec.out_shape)
                        .astype(np.float32))

    def grads(conv: Any) -> Any:
        return jax.grad(lambda a, b: jnp.sum(conv(a, b) * ct), (0, 1))

    want = grads(lambda a, b: run_lax(case, a, b, precision=HI))(x, w)
    got = jax.jit(lambda a, b: {
        n: grads(lambda p, q, n=n: run_jconv(case, p, q, n, precision=HI))(a, b)
        for n in names})(x, w)
    _compare(got, want, math.prod(spec.window))


JVP_ROWS = (0, 3, 6, 16)
"""A dense row and the depthwise ones (channel multiplier 2, lhs dilation, 1-D)."""


@pytest.mark.parametrize("i", JVP_ROWS, ids=lambda i: LOWERING_ROWS[i].name)
def test_forward_mode_matches_lax(i: int) -> None:
    """`jax.jvp` in both arguments and in the kernel alone (the depthwise shift lowering
    has its own tangent rule) of every lowering that applies, against lax's."""
    case, x, w = _operands(i)
    names = [n for n in NAMES if _applies(n, case)]
    rng = np.random.default_rng(200 + i)
    dx = jax.device_put(rng.standard_normal(x.shape).astype(np.float32))
    dw = jax.device_put(rng.standard_normal(w.shape).astype(np.float32))

    def tangents(conv: Any, a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
        return (jax.jvp(conv, (a, b), (dx, dw))[1],
                jax.jvp(lambda v: conv(a, v), (b,), (dw,))[1])

    want = tangents(lambda a, b: run_lax(case, a, b, precision=HI), x, w)
    got = jax.jit(lambda a, b: {
        n: tangents(lambda p, q, n=n: run_jconv(case, p, q, n, precision=HI), a, b)
        for n in names})(x, w)
    _compare(got, want, math.prod(case.spec().window))


def test_depthwise_kernel_gradient_keeps_few_slices_alive() -> None:
    """Depthwise shift's kernel gradient copies one window slice per offset in a loop: its
    temporaries stay under 6 slices for 25 offsets (transposing the fused sum kept 24)."""
    x = jnp.ones((2, 16, 16, 32), jnp.float32)
    w = jnp.ones((5, 5, 1, 32), jnp.float32)
    kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=_dn(2),
              feature_group_count=32)
    ct = jnp.ones(x.shape, jnp.float32)

    def grad_w(a, b):
        return jax.grad(lambda v: jnp.sum(
            jconv.conv_general_dilated(a, v, **kw, strategy="shift") * ct))(b)

    temp = jax.jit(grad_w).lower(x, w).compile().memory_analysis().temp_size_in_bytes
    assert temp < 6 * x.size * x.dtype.itemsize


DEPTHWISE_ROWS = [
    # (input, window, strides, padding, lhs dilation, rhs dilation): line-padded kernels first
    ((2, 9, 9, 512), (5, 5), (1, 1), "SAME", (1, 1), (1, 1)),
    ((1, 12, 11, 256), (7, 7), (2, 3), ((1, 3), (2, 0)), (1, 1), (1, 2)),
    ((2, 40, 512), (31,), (2,), "SAME", (1,), (1,)),
    ((2, 9, 9, 32), (3, 3), (2, 2), "SAME", (1, 1), (1, 1)),
    ((2, 5, 6, 16), (3, 3), (1, 1), ((2, 1), (1, 2)), (2, 2), (1, 1)),
]


@pytest.mark.parametrize("row", range(len(DEPTHWISE_ROWS)))
def test_depthwise_shift_line_pads_past_l1_and_differentiates_exactly(row: int) -> None:
    """Depthwise shift (one output channel per input channel) on small-integer data, where
    float32 sums are exact: values against the float64 reference, reverse and forward mode
    against lax's, equal to the last bit. A kernel of more than
    `shift.LINE_PAD_KERNEL_BYTES` runs on copies one cache line wider
    (`shift._line_padded`), forward and input gradient; a smaller one on the operands as
    they are."""
    shape, window, strides, padding, lhs_dil, rhs_dil = DEPTHWISE_ROWS[row]
    c, ns = shape[-1], len(window)
    rng = np.random.default_rng(row)
    x = jnp.asarray(rng.integers(-3, 4, shape), jnp.float32)
    w = jnp.asarray(rng.integers(-3, 4, (*window, 1, c)), jnp.float32)
    kw = dict(window_strides=strides, padding=padding, lhs_dilation=lhs_dil,
              rhs_dilation=rhs_dil, dimension_numbers=_dn(ns), feature_group_count=c)
    spec = ConvSpec.from_lax(x.shape, w.shape, **kw)

    def conv(a: jax.Array, b: jax.Array) -> jax.Array:
        return jconv.conv_general_dilated(a, b, **kw, strategy="shift")

    def conv_lax(a: jax.Array, b: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(a, b, **kw, precision=HI)

    y, pull = jax.vjp(jax.jit(conv), x, w)
    want = conv_reference(np.asarray(x), np.asarray(w), strides, spec.padding, lhs_dil,
                          rhs_dil, c)
    np.testing.assert_array_equal(np.asarray(y), want)
    ct = jnp.asarray(rng.integers(-3, 4, y.shape), jnp.float32)
    for got, ref in zip(pull(ct), jax.vjp(conv_lax, x, w)[1](ct), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    tangents = (jnp.asarray(rng.integers(-3, 4, shape), jnp.float32), w[::-1])
    np.testing.assert_array_equal(np.asarray(jax.jvp(conv, (x, w), tangents)[1]),
                                  np.asarray(jax.jvp(conv_lax, (x, w), tangents)[1]))

    wide = f"{c + 16}]"  # one 64-byte line of float32 channels more
    forward = jax.jit(conv).lower(x, w).compile().as_text()
    input_gradient = jax.jit(lambda a, b, g: jax.vjp(lambda v: conv(v, b), a)[1](g)).lower(
        x, w, ct).compile().as_text()
    padded = math.prod(window) * c * 4 > shift.LINE_PAD_KERNEL_BYTES
    assert padded == (row < 3)
    assert (wide in forward) == padded
    assert (wide in input_gradient) == padded


@pytest.mark.parametrize(("strides", "dilation"), [((1, 2), (1, 1)), ((1, 1), (1, 1)),
                                                   ((1, 1), (2, 1))])
def test_integer_inputs_exact(strides: tuple[int, int], dilation: tuple[int, int]) -> None:
    """Integer convolutions are exact in every lowering that accepts integers."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.integers(-5, 5, (2, 7, 6, 4)), jnp.int32)
    w = jnp.asarray(rng.integers(-3, 3, (3, 3, 2, 4)), jnp.int32)
    kw = dict(window_strides=strides, padding="SAME", rhs_dilation=dilation,
              dimension_numbers=_dn(2), feature_group_count=2)
    want = np.asarray(
        lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), **kw)
    ).round().astype(np.int32)
    spec = ConvSpec.from_lax(x.shape, w.shape, **kw)
    for name in NAMES:
        if STRATEGIES[name].applicable(spec, jnp.dtype(jnp.int32)) is not None:
            strided = {"scatter"} if 2 in strides else set()
            dense = {"pallas", "toeplitz"}  # feature groups (toeplitz: also 1-D only)
            undilated = {"atrous"} if dilation == (1, 1) else set()
            assert name in ({"winograd", "winograd4", "fft", "dft", "polyphase"} | strided
                            | dense | undilated)
            continue
        got = jconv.conv_general_dilated(x, w, **kw, strategy=name)
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)


def test_bfloat16_accumulates_in_float32() -> None:
    case, x, w = _operands(0)
    x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    want = np.asarray(run_lax(case, x, w, preferred_element_type=jnp.float32))
    for name in ("shift", "patches", "hybrid", "direct"):
        got = run_jconv(case, x, w, name)
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2e-2, atol=0.1)


def test_refusals_name_the_rule() -> None:
    x = jnp.ones((1, 8, 8, 2))
    with pytest.raises(ValueError, match=r"winograd.*2-D 3x3 window"):
        jconv.conv(x, jnp.ones((5, 5, 2, 2)), strategy="winograd")
    with pytest.raises(ValueError, match=r"winograd.*stride 1"):
        jconv.conv(x, jnp.ones((3, 3, 2, 2)), stride=2, strategy="winograd")
    with pytest.raises(ValueError, match=r"fft.*real floating"):
        jconv.conv(jnp.ones((1, 8, 8, 2), jnp.int32), jnp.ones((3, 3, 2, 2), jnp.int32),
                   strategy="fft")
    with pytest.raises(ValueError, match=r"dft.*1 spatial dimension"):
        jconv.conv(x, jnp.ones((3, 3, 2, 2)), strategy="dft")
    with pytest.raises(ValueError, match=r"dft.*stride 1"):
        jconv.conv(jnp.ones((1, 8, 2)), jnp.ones((3, 2, 2)), stride=2, layout="NWC",
                   strategy="dft")
    with pytest.raises(ValueError, match=r"direct.*unrolls"):
        jconv.conv(jnp.ones((1, 8, 8, 64)), jnp.ones((3, 3, 64, 2)), strategy="direct")


COST_SPECS = {
    2: ConvSpec.from_lax((2, 10, 10, 6), (3, 3, 3, 4), (1, 1), "SAME", dimension_numbers=_dn(2),
                         feature_group_count=2),
    1: ConvSpec.from_lax((2, 64, 4), (9, 2, 6), (1,), "SAME", dimension_numbers=_dn(1),
                         feature_group_count=2),
    "toeplitz": ConvSpec.from_lax((2, 64, 2), (9, 2, 6), (3,), "SAME", (1,), (2,),
                                  dimension_numbers=_dn(1)),
    "winograd@1": ConvSpec.from_lax((2, 63, 4), (3, 2, 6), (1,), "SAME", dimension_numbers=_dn(1),
                                    feature_group_count=2),
}
"""Padded sizes 12 x 12 and 72: 2-3-5-smooth, so the FFT's transform lengths are the padded
sizes, as in its formula."""


@pytest.mark.parametrize("name", [*NAMES, "winograd@1"])
def test_cost_is_its_formula_at_the_spec(name: str) -> None:
    """`cost(spec, dtype)` equals `formula(num_spatial)` with the spec's numbers substituted
    (scatter's ``spread``, dft's tile ``T``, polyphase's phase count ``S`` and toeplitz's
    rows ``R``, stride ``s`` and dilation ``d`` included)."""
    from jconv.strategies.dft import tile_length
    from jconv.strategies.fft import fast_length
    from jconv.strategies.scatter import spreads
    from jconv.strategies.toeplitz import rows

    spec = COST_SPECS.get(name, COST_SPECS[1 if name == "dft" else 2])
    name = name.partition("@")[0]  # winograd@1: its 1-D F(2, 3)
    assert name in ("toeplitz", "winograd") or all(fast_length(p) == p for p in spec.padded_in)
    mod = STRATEGIES[name]
    c = mod.cost(spec, jnp.float32)
    assert isinstance(c.flops, sp.Expr) and isinstance(c.temp_bytes, sp.Expr)
    ns = spec.num_spatial
    sym, geo, num = mod.formula(ns), Geometry.symbols(ns), Geometry.from_spec(spec, jnp.float32)
    subs = {getattr(geo, a): getattr(num, a)
            for a in ("n", "cg", "fq", "g", "pad", "strided", "itemsize")}
    for a in ("out", "window", "padded", "inp"):
        subs.update(dict(zip(getattr(geo, a), getattr(num, a), strict=True)))
    named = {"spread": int(spreads(spec)), "T": tile_length(spec) if ns == 1 else None,
             "S": math.prod(spec.lhs_dilation)}
    if name == "toeplitz":
        named.update(R=rows(spec), s=spec.window_strides[0], d=spec.rhs_dilation[0])
    for free in sym.flops.free_symbols | sym.temp_bytes.free_symbols:
        if free not in subs:
            assert named.get(free.name) is not None, free
            subs[free] = named[free.name]
    for field in ("flops", "temp_bytes", "moved_bytes"):
        assert sp.simplify(getattr(sym, field).subs(subs) - getattr(c, field)) == 0, field
    if name in ("shift", "patches", "hybrid", "direct"):
        assert c.flops == 2 * spec.macs  # every dense tap, multiplies and adds
    if name == "scatter":
        assert c != STRATEGIES[name].formula(ns)  # the symbols were all bound


def test_fft_lengths_are_smooth() -> None:
    from jconv.strategies.fft import fast_length

    for n in (1, 7, 11, 97, 1000, 4127):
        m = fast_length(n)
        assert m >= n and m - n < max(n // 8, 4)
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        assert r == 1


def test_winograd_does_fewer_flops_than_summing_taps() -> None:
    """2.25x (F(2x2)) and 4x (F(4x4)) fewer multiplies in the channel mixing; with the
    transforms (F(2x2)'s adds, F(4x4)'s GEMMs), 0.46x and 0.45x the FLOPs of summing the 9
    taps at 64 channels."""
    spec = ConvSpec.from_lax((8, 56, 56, 64), (3, 3, 64, 64), (1, 1), "SAME",
                             dimension_numbers=_dn(2))
    dense = float(STRATEGIES["shift"].cost(spec).flops)
    f2, f4 = (float(STRATEGIES[n].cost(spec).flops) for n in ("winograd", "winograd4"))
    assert 0.44 * dense < f4 < f2 < 0.47 * dense


def test_winograd_transforms_are_adds_and_one_gemm_per_point() -> None:
    """F(2x2, 3x3) multiplies only in one GEMM of depth C_g per transform point (16): the
    tiles', outputs' and kernel's transforms are adds (and exact halvings; F(4x4, 3x3)
    keeps GEMMs of depth 36 and 9)."""
    spec = ConvSpec.from_lax((2, 10, 10, 8), (3, 3, 8, 4), (1, 1), "SAME",
                             dimension_numbers=_dn(2))
    x, w = (jax.ShapeDtypeStruct(s, jnp.float32) for s in (spec.lhs_shape, spec.rhs_shape))

    def dots(name: str) -> list[Any]:
        jaxpr = jax.make_jaxpr(lambda a, b: jconv.conv_general_dilated(
            a, b, (1, 1), "SAME", dimension_numbers=_dn(2), strategy=name))(x, w)
        found: list[Any] = []

        def walk(j: Any) -> None:
            for e in j.eqns:
                if e.primitive.name == "dot_general":
                    found.append(e)
                for sub in jax.extend.core.jaxprs_in_params(e.params):
                    walk(sub)
        walk(jaxpr.jaxpr)
        return found

    def depth(e: Any) -> int:
        return math.prod(e.invars[0].aval.shape[i] for i in e.params["dimension_numbers"][0][0])

    assert sorted(map(depth, dots("winograd"))) == [8] * 16  # the points' GEMMs alone
    assert {36, 9} <= set(map(depth, dots("winograd4")))


def test_winograd4_trades_accuracy_for_multiplies() -> None:
    """The rounding error relative to ``sum |x| |w|`` (float32 against float64): F(4x4, 3x3)
    stays below 1e-5 but is several times that of F(2x2, 3x3) and of summing taps, which
    is why `strategy="auto"` never takes it (`_planner.OPT_IN`)."""
    rng = np.random.default_rng(9)
    x, w = rng.standard_normal((2, 16, 16, 128)), rng.standard_normal((3, 3, 128, 64))
    kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=_dn(2))
    with jax.enable_x64(True):
        want = np.asarray(lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(w), **kw))
        scale = np.asarray(lax.conv_general_dilated(jnp.abs(jnp.asarray(x)),
                                                    jnp.abs(jnp.asarray(w)), **kw))
    err = {}
    for name in ("shift", "winograd", "winograd4"):
        got = jconv.conv_general_dilated(jnp.asarray(x, jnp.float32),
                                         jnp.asarray(w, jnp.float32), **kw, strategy=name)
        err[name] = float(np.max(np.abs(np.asarray(got, np.float64) - want) / scale))
    assert err["winograd4"] < 1e-5, err
    assert err["winograd4"] > 4 * max(err["shift"], err["winograd"]), err


DFT_CASES = [  # (input, window, F, padding, rhs dilation, feature groups)
    ((2, 300, 16), (9,), 8, "VALID", (1,), 2),
    ((3, 100, 6), (9,), 10, "SAME", (2,), 1),
    ((1, 500, 8), (31,), 8, ((20, 3),), (1,), 1),
    ((2, 50, 4), (15,), 4, "SAME", (1,), 1),  # one tile covers every output
]


@pytest.mark.parametrize("case", DFT_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-d{c[4]}-g{c[5]}")
def test_dft_tiles_are_exact_in_float64(case: tuple) -> None:
    """Overlap-save tiles with real DFT matrices: the same sums as the definition (float64
    loop) to round-off, so tiles, halos, pair 0 and the inverse's kept outputs are right."""
    from reference import conv_reference

    xs, win, f, pad, rd, g = case
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal(xs), rng.standard_normal((*win, xs[-1] // g, f))
    with jax.enable_x64(True):
        got = np.asarray(jconv.conv_general_dilated(
            jnp.asarray(x), jnp.asarray(w), (1,), pad, None, rd, _dn(1), g, strategy="dft"))
    pads = ConvSpec.from_lax(xs, w.shape, (1,), pad, None, rd, _dn(1), g).padding
    want = conv_reference(x, w, (1,), pads, (1,), rd, g)
    scale = conv_reference(np.abs(x), np.abs(w), (1,), pads, (1,), rd, g)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want) / (scale + 1e-300)) < 1e-12


@pytest.mark.parametrize("case", DFT_CASES[:3], ids=lambda c: f"{c[0]}-k{c[1]}")
def test_dft_cost_is_measured(case: tuple) -> None:
    """`dft.cost`: its symbolic form at the chosen tile, FLOPs against XLA's
    `cost_analysis()` (the GEMMs and the kernel transform; the rest is elementwise) and temp
    bytes against `memory_analysis()`."""
    from jconv.strategies import dft
    from jconv.symbolic import cost_analysis_flops, lowering_cost_formula

    xs, win, f, pad, rd, g = case
    ws = (*win, xs[-1] // g, f)
    spec = ConvSpec.from_lax(xs, ws, (1,), pad, None, rd, _dn(1), g)
    tile = dft.tile_length(spec)
    assert tile is not None and tile % dft.TILE_QUANTUM == 0
    assert tile >= 2 * (spec.effective_window[0] - 1)
    c = dft.cost(spec)
    geo, num = Geometry.symbols(1), Geometry.from_spec(spec)
    subs = {geo.n: num.n, geo.cg: num.cg, geo.fq: num.fq, geo.g: num.g, geo.pad: num.pad,
            geo.itemsize: 4, sp.Symbol("T", integer=True, positive=True): tile}
    for a in ("out", "window", "padded", "inp"):
        subs.update(dict(zip(getattr(geo, a), getattr(num, a), strict=True)))
    sym = dft.cost_of(geo)
    assert lowering_cost_formula("dft", 1) == sym
    with pytest.raises(ValueError, match="must be 1 for 'dft'"):
        lowering_cost_formula("dft", 2)
    with pytest.raises(ValueError, match="must be 2 for 'winograd4'"):
        lowering_cost_formula("winograd4", 1)
    assert sp.simplify(sym.flops.subs(subs) - c.flops) == 0
    assert sp.simplify(sym.temp_bytes.subs(subs) - c.temp_bytes) == 0
    args = (jax.ShapeDtypeStruct(xs, jnp.float32), jax.ShapeDtypeStruct(ws, jnp.float32))
    compiled = jax.jit(lambda a, b: jconv.conv_general_dilated(
        a, b, (1,), pad, None, rd, _dn(1), g, strategy="dft")).lower(*args).compile()
    flops = cost_analysis_flops(compiled.cost_analysis())
    assert flops is not None and abs(flops - float(c.flops)) <= 0.01 * float(c.flops)
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert 0.6 * float(c.temp_bytes) <= temp <= float(c.temp_bytes) * 1.05


def test_dft_uses_fewer_flops_for_long_windows() -> None:
    """At 64 channels the tiles need far fewer FLOPs than summing taps from k = 15 on (2.3x
    at k = 15, 4x at k = 31) and about as many at k = 3 (below `DFT_MIN_TAPS`)."""
    from jconv.strategies import dft

    def ratio(k: int) -> float:
        spec = ConvSpec.from_lax((8, 4096, 64), (k, 64, 64), (1,), "SAME",
                                 dimension_numbers=_dn(1))
        return float(STRATEGIES["shift"].cost(spec).flops / dft.cost(spec).flops)

    assert ratio(3) < 1.25 < 2 < ratio(15) < ratio(31)


@pytest.mark.parametrize("name", ["shift", "hybrid"])
def test_batch_chunked_path_matches_lax(name: str) -> None:
    """Big enough to run over batch chunks (`_common.batch_chunk`): values and gradients."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((8, 56, 56, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 64, 64)), jnp.float32)
    kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=_dn(2))
    hi = lax.Precision.HIGHEST
    want = lax.conv_general_dilated(x, w, **kw, precision=hi)
    got = jconv.conv_general_dilated(x, w, **kw, strategy=name, precision=hi)
    assert np.max(np.abs(np.asarray(got - want)) / _scale(x, w, kw)) < 1e-5
    gw = jax.grad(lambda b: jnp.sum(jconv.conv_general_dilated(x, b, **kw, strategy=name)))(w)
    rw = jax.grad(lambda b: jnp.sum(lax.conv_general_dilated(x, b, **kw)))(w)
    np.testing.assert_allclose(np.asarray(gw), np.asarray(rw), rtol=1e-3,
                               atol=1e-4 * float(jnp.max(jnp.abs(rw))))


@pytest.mark.parametrize(("size", "pads"), [(1, (-1, 1)), (2, (-4, 2)), (1, (-2, 3))])
def test_polyphase_when_cropping_removes_every_real_sample(size: int, pads: tuple) -> None:
    """lhs dilation 3 with a negative low pad that crops past the only real samples."""
    from reference import conv_reference

    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((1, size, 2)), rng.standard_normal((2, 2, 3))
    got = jconv.conv_general_dilated(
        jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), (1,), (pads,), (3,),
        dimension_numbers=("NWC", "WIO", "NWC"), strategy="polyphase")
    want = conv_reference(x, w, (1,), (pads,), (3,), (1,))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_polyphase_phases_avoid_direct_where_it_predicts_fastest() -> None:
    """A transposed layer over 4 channels: each phase alone is a dense convolution `direct`
    predicts fastest, yet the phases run on a dot (`polyphase.PHASE_LOWERINGS`): XLA fuses
    direct phases' loops into the output's interleave, where every output computes every
    phase (measured 3.9 ms against 1.8). The compiled program holds a dot."""
    from jconv.strategies import direct, polyphase

    dn = ("NHWC", "HWIO", "NHWC")
    xs, ws, pads = (8, 56, 56, 4), (3, 3, 4, 16), ((2, 2), (2, 2))
    spec = ConvSpec.from_lax(xs, ws, (1, 1), pads, (2, 2), dimension_numbers=dn)
    sub = polyphase._phase_spec(spec, polyphase._phase(spec, (0, 0)))
    others = [m for m in polyphase.PHASE_LOWERINGS
              if m is not direct and m.applicable(sub, jnp.float32) is None]
    assert direct.predict(sub).forward < min(m.predict(sub).forward for m in others)
    assert polyphase.phase_lowering(sub, jnp.float32) is not direct
    x = jax.ShapeDtypeStruct(xs, jnp.float32)
    w = jax.ShapeDtypeStruct(ws, jnp.float32)
    text = jax.jit(lambda a, b: jconv.conv_general_dilated(
        a, b, (1, 1), pads, (2, 2), dimension_numbers=dn, strategy="polyphase")
    ).lower(x, w).compile().as_text()
    assert " dot(" in text  # a direct phase would be elementwise fusions only


@pytest.mark.parametrize(("xs", "ws", "dilation", "pads", "groups"), [
    ((2, 13, 11, 8), (3, 3, 8, 6), (2, 3), ((2, 2), (3, 3)), 1),
    ((2, 12, 12, 8), (3, 2, 4, 6), (2, 2), ((1, -1), (3, 0)), 2),
    ((3, 40, 4), (3, 4, 5), (4,), ((4, 3),), 1),
    ((1, 7, 6, 8, 2), (2, 3, 2, 2, 3), (2, 1, 3), ((1, 1), (2, 2), (0, 3)), 1),
])
def test_atrous_is_one_dense_convolution_of_the_phase_images(
        xs: tuple[int, ...], ws: tuple[int, ...], dilation: tuple[int, ...],
        pads: tuple[tuple[int, int], ...], groups: int) -> None:
    """Atrous runs a dilated convolution as one undilated VALID one over ``N * prod(d)``
    phase images (`atrous.inner_spec`): on small integers its values and both gradients are
    lax's exactly (uneven dilations, negative padding, groups, 1-D and 3-D). Its temp bytes
    are checked against XLA's in test_memory.py."""
    from jconv.strategies import atrous

    ns = len(dilation)
    dn = _dn(ns)
    spec = ConvSpec.from_lax(xs, ws, (1,) * ns, pads, None, dilation, dn, groups)
    inner = atrous.inner_spec(spec)
    assert inner.batch == xs[0] * math.prod(dilation) and inner.rhs_shape == ws
    assert inner.rhs_dilation == (1,) * ns and inner.padding == ((0, 0),) * ns
    assert all(r < d for r, d in zip(atrous.round_up(spec), dilation, strict=True))

    rng = np.random.default_rng(len(xs))
    x = jnp.asarray(rng.integers(-3, 4, xs), jnp.float32)
    w = jnp.asarray(rng.integers(-3, 4, ws), jnp.float32)
    ct = jnp.asarray(rng.integers(-3, 4, spec.out_shape), jnp.float32)

    def run(conv: Any, **kw: Any) -> Any:
        def f(a: jax.Array, b: jax.Array) -> jax.Array:
            return conv(a, b, (1,) * ns, pads, None, dilation, dn, groups, **kw)
        y, vjp = jax.vjp(f, x, w)
        return y, *vjp(ct)

    for got, want in zip(jax.jit(lambda: run(jconv.conv_general_dilated,
                                             strategy="atrous"))(),
                         run(lax.conv_general_dilated, precision=HI), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_atrous_plans_a_dilated_layer_on_winograd_phase_images() -> None:
    """A dilated 3x3 layer over 64 channels (the benchmark's) plans atrous, forward and
    differentiated, and runs its phase images on Winograd, with fewer FLOPs than the
    dilated taps."""
    from jconv import planner
    from jconv.strategies import atrous, winograd

    dn = _dn(2)
    spec = ConvSpec.from_lax((8, 28, 28, 64), (3, 3, 64, 64), (1, 1), "SAME", None, (2, 2), dn)
    assert planner.plan(spec, jnp.float32) == "atrous"
    assert planner.plan(spec, jnp.float32, differentiated=True) == "atrous"
    inner = atrous.inner_spec(spec)
    assert inner.lhs_shape == (32, 16, 16, 64) and inner.out_spatial == (14, 14)
    assert atrous.inner_lowering(inner, jnp.float32) is winograd
    assert float(atrous.cost(spec).flops) < 2 * spec.macs / 2


SCATTER_ROWS = [i for i, c in enumerate(LOWERING_ROWS) if all(s == 1 for s in c.strides)
                and c.bgc == 1]


@functools.cache
def _lax_vjp(i: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...], np.ndarray]:
    """lax's values, scale ``sum |x| |w|``, VJP and cotangent for row ``i``, computed once
    (before either test clears JAX's caches) and shared by both scatter paths."""
    case, x, w = _operands(i)
    ct = jnp.asarray(np.random.default_rng(300 + i).standard_normal(case.spec().out_shape),
                     jnp.float32)
    want, vjp_ref = jax.vjp(lambda a, b: run_lax(case, a, b, precision=HI), x, w)
    scale = np.asarray(run_lax(case, jnp.abs(x), jnp.abs(w), precision=HI)) + 1e-6
    return np.asarray(want), scale, tuple(np.asarray(g) for g in vjp_ref(ct)), np.asarray(ct)


@pytest.mark.parametrize("limit", [0.0, 100.0], ids=["spread", "slice"])
def test_scatter_both_paths_match_lax(
    limit: float, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Scatter's two ways of placing products (slice padded positions, or spread the real
    samples' products with pads) each equal lax, values and VJPs, on every stride-1 row."""
    scatter = STRATEGIES["scatter"]
    refs = {i: _lax_vjp(i) for i in SCATTER_ROWS}
    monkeypatch.setattr(scatter, "SLICE_MAX_PADDING", limit)
    jax.clear_caches()  # trace afresh under the patched limit, and again after it
    request.addfinalizer(jax.clear_caches)
    for i in SCATTER_ROWS:
        case, x, w = _operands(i)
        assert scatter.spreads(case.spec()) == (limit == 0.0 or any(d > 1 for d in case.lhs_dil))
        want, scale, grads_ref, ct = refs[i]
        got, vjp = jax.vjp(lambda a, b, case=case: run_jconv(case, a, b, "scatter",
                                                              precision=HI), x, w)
        assert np.max(np.abs(np.asarray(got) - want) / scale) < 1e-5, case
        for g, r in zip(vjp(jnp.asarray(ct)), grads_ref, strict=True):
            np.testing.assert_allclose(np.asarray(g), r, rtol=1e-4, atol=1e-4)
    assert len(SCATTER_ROWS) >= 12


@pytest.mark.parametrize(("xs", "ks", "stride", "dilation", "padding", "lhs"), [
    ((2, 9, 7, 4), (3, 3), 1, 1, "SAME", 1),
    ((2, 9, 7, 4), (3, 3), 2, 1, "SAME", 1),
    ((2, 10, 7, 4), (3, 3), 2, 1, "VALID", 1),
    ((2, 9, 7, 4), (3, 2), 1, 2, ((2, 0), (1, 1)), 1),
    ((2, 9, 7, 4), (3, 3), 1, 1, ((-1, 1), (0, 0)), 1),
    ((2, 5, 5, 4), (3, 3), 1, 1, ((1, 1), (1, 1)), 2),
])
def test_direct_windows_all_reach_the_padding(xs: tuple[int, ...], ks: tuple[int, ...],
                                              stride: int, dilation: int, padding: Any,
                                              lhs: int) -> None:
    """`direct.reaching`: every tap's window along the leading axis reaches outside the
    unpadded input (so that XLA reads it from the stored padded input, not from the input's
    producer), its extra outputs are cropped and the values equal lax's exactly on
    integers (the float64 reference), in 2 groups; behind a ReLU, the fused multiply-adds
    never compute the ReLU."""
    from jconv.strategies import direct

    kw: dict[str, Any] = dict(window_strides=(stride, stride), padding=padding,
                              lhs_dilation=(lhs, lhs), rhs_dilation=(dilation, dilation),
                              dimension_numbers=_dn(2), feature_group_count=2)
    ws = (*ks, xs[-1] // 2, 6)
    spec = ConvSpec.from_lax(xs, ws, **kw)
    wide = direct.reaching(spec)
    (lo, _), extent = wide.padding[0], (xs[1] - 1) * lhs + 1
    assert wide.canonical_out_shape[0] == spec.canonical_out_shape[0]
    for k in range(ks[0]):
        rows = [k * dilation + o * stride for o in range(wide.canonical_out_shape[1])]
        assert min(rows) < lo or max(rows) >= lo + extent, (k, rows, lo, extent)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(-3, 4, xs), jnp.float32)
    w = jnp.asarray(rng.integers(-3, 4, ws), jnp.float32)

    def run(a: jax.Array, b: jax.Array) -> jax.Array:
        return jconv.conv_general_dilated(jnp.maximum(a, 0), b, **kw, strategy="direct")

    want = conv_reference(np.maximum(np.asarray(x), 0), np.asarray(w), (stride, stride),
                          spec.padding, (lhs, lhs), (dilation, dilation), 2)
    # lax reads out of bounds at pads (-1, 1) on the CPU (openxla/xla#48713)
    np.testing.assert_array_equal(jax.jit(run)(x, w), want)
    hlo = jax.jit(run).lower(x, w).compile().as_text()
    loops = [c for c in hlo.split("\n\n") if "multiply(" in c and "fused_computation" in c]
    assert loops and not any("maximum(" in c for c in loops)


@pytest.mark.parametrize(("window", "stride", "dilation", "padding"),
                         [(80, 4, 1, ((38, 38),)), (9, 1, 2, "SAME"), (11, 3, 1, ((-2, 5),))])
def test_toeplitz_band_is_exact_on_integers(window: int, stride: int, dilation: int,
                                            padding: Any) -> None:
    """The band's zeros add exact zeros: integer data gives lax's integers, values and both
    gradients, whatever the rows ``R`` (a ragged last row included)."""
    rng = np.random.default_rng(window)
    x = jnp.asarray(rng.integers(-3, 4, (2, 203, 2)), jnp.float32)
    w = jnp.asarray(rng.integers(-3, 4, (window, 2, 5)), jnp.float32)
    kw = dict(window_strides=(stride,), padding=padding, rhs_dilation=(dilation,),
              dimension_numbers=_dn(1))

    def loss(conv: Any, a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.sum(conv(a, b, **kw) ** 2)

    band = functools.partial(jconv.conv_general_dilated, strategy="toeplitz")
    ref = functools.partial(lax.conv_general_dilated, precision="highest")
    np.testing.assert_array_equal(band(x, w, **kw), ref(x, w, **kw))
    for got, want in zip(jax.grad(functools.partial(loss, band), (0, 1))(x, w),
                         jax.grad(functools.partial(loss, ref), (0, 1))(x, w), strict=True):
        np.testing.assert_array_equal(got, want)


def test_toeplitz_plans_a_raw_audio_stem_and_its_gradient_reads_the_rows() -> None:
    """80 taps at stride 4 on one channel: the band copies 23 samples per output where
    patches copy 80, and auto plans it for values and gradients. Its kernel gradient is one
    GEMM over the rows as they are: with the rows 3-D, XLA transposed the whole cotangent
    first (temporaries 2.1x the output's bytes; 1.2x as one matrix)."""
    from jconv.strategies import toeplitz

    dn = _dn(1)
    spec = ConvSpec.from_lax((2, 4000, 1), (80, 1, 64), (4,), ((38, 38),),
                             dimension_numbers=dn)
    assert jconv.planner.plan(spec, jnp.float32) == "toeplitz"
    assert jconv.planner.plan(spec, jnp.float32, differentiated=True) == "toeplitz"
    r = toeplitz.rows(spec)
    assert 2 <= r and (4 * (r - 1) + 80) / r < 80 / 2  # samples copied per output
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 4000, 1)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((80, 1, 64)), jnp.float32)

    def grad_w(conv: Any) -> Any:
        return jax.jit(jax.grad(lambda b: jnp.sum(conv(x, b, (4,), ((38, 38),),
                                                       dimension_numbers=dn) ** 2)))

    got = grad_w(jconv.conv_general_dilated)
    want = grad_w(functools.partial(lax.conv_general_dilated, precision="highest"))(w)
    np.testing.assert_allclose(got(w), want, rtol=2e-5, atol=2e-5 * float(jnp.abs(want).max()))
    out_bytes = 4 * math.prod(spec.out_shape)
    temp = got.lower(w).compile().memory_analysis().temp_size_in_bytes
    assert temp < 1.5 * out_bytes, (temp, out_bytes)


@pytest.mark.parametrize(("name", "xs", "ws", "strides", "padding"), [
    ("toeplitz", (2, 400, 1), (80, 1, 16), (4,), ((38, 38),)),
    ("toeplitz", (2, 203, 2), (9, 2, 5), (1,), "SAME"),
    ("winograd", (2, 63, 4), (3, 4, 6), (1,), "SAME"),
    ("winograd", (4, 64, 8), (3, 8, 8), (1,), "VALID"),
])
def test_one_dimensional_flops_match_xla(name: str, xs: tuple[int, ...], ws: tuple[int, ...],
                                        strides: tuple[int, ...], padding: Any) -> None:
    """The band's GEMM (zeros included) and F(2, 3)'s GEMMs, transforms and kernel
    transform, against XLA's `cost_analysis()` (which also counts the sign flips and the
    kernel's tie: within 4%)."""
    from jconv.symbolic import cost_analysis_flops

    spec = ConvSpec.from_lax(xs, ws, strides, padding, dimension_numbers=_dn(1))
    args = (jax.ShapeDtypeStruct(xs, jnp.float32), jax.ShapeDtypeStruct(ws, jnp.float32))
    compiled = jax.jit(lambda a, b: jconv.conv_general_dilated(
        a, b, strides, padding, dimension_numbers=_dn(1), strategy=name)).lower(*args).compile()
    flops = cost_analysis_flops(compiled.cost_analysis())
    predicted = float(STRATEGIES[name].cost(spec).flops)
    assert flops is not None and predicted <= flops <= 1.04 * predicted, (flops, predicted)
    if name == "toeplitz":  # the band's zeros: more than the dense multiply-adds
        assert predicted > 2 * spec.macs
