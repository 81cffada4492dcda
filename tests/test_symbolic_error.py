"""Every lowering's float32 error bound (`jconv.symbolic.error_bound`) against its observed error.

For each lowering of `jconv.strategies.STRATEGIES` that can run the case, the float32 engine
output (``strategy=name``) is compared with a float64 `lax` reference at HIGHEST precision.
One call covers signed and nonnegative data: the batch holds ``x`` and ``|x|``, each group's
features ``w`` and ``|w|``. The observed error must stay below the bound plus the reference's
own error (``gamma_K(2**-53) sum |x| |w|``, eq. (3.5) in float64), and the bound must not be
vacuous: on nonnegative data the observed error reaches at least `MIN_RATIO` of it. The
normwise lowerings' bounds exceed the summation bound ``gamma_K sum |x| |w|`` of the case.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from jax import lax

import jconv
from jconv import ConvSpec
from jconv._spec import canonical_layouts
from jconv.strategies import STRATEGIES
from jconv.symbolic import (
    ErrorBound,
    error_bound,
    gamma,
    layer_model,
    symbols,
    unit_roundoff,
)

MIN_RATIO = 1e-4
"""Least observed error over bound (largest over the nonnegative outputs) a bound must reach."""

# name: (lhs, kernel, strides, padding, lhs_dilation, groups[, rhs_dilation]); channels
# last. The phases of the lhs-dilated ones are 1-D windows of 8 and 7 taps (within `dft`'s
# range) and 3x3; the rhs-dilated 3x3's phase images (`atrous`) run on Winograd.
CASES: dict[str, tuple[Any, ...]] = {
    "3x3": ((1, 8, 8, 16), (3, 3, 16, 4), (1, 1), "SAME", (1, 1), 1),
    "3x3-strided": ((1, 9, 9, 8), (3, 3, 8, 4), (2, 2), "SAME", (1, 1), 1),
    "1d-k15": ((1, 40, 8), (15, 8, 4), (1,), "SAME", (1,), 1),
    "1d-k3": ((1, 41, 16), (3, 16, 4), (1,), "SAME", (1,), 1),
    "5x5-depthwise": ((1, 8, 8, 4), (5, 5, 1, 4), (1, 1), "SAME", (1, 1), 4),
    "1d-k15-transposed": ((1, 24, 16), (15, 16, 8), (1,), ((7, 8),), (2,), 1),
    "6x6-transposed": ((1, 5, 5, 4), (6, 6, 4, 4), (1, 1), ((5, 5), (5, 5)), (2, 2), 1),
    "3x3-dilated": ((1, 14, 14, 16), (3, 3, 16, 4), (1, 1), "SAME", (1, 1), 1, (2, 2)),
}


def _setup(name: str) -> tuple[ConvSpec, np.ndarray, np.ndarray, dict[str, Any]]:
    """The case with ``x, |x|`` on the batch and ``w, |w|`` on each group's features."""
    lhs, rhs, strides, padding, lhs_d, groups, *rhs_d = CASES[name]
    rng = np.random.default_rng(list(CASES).index(name))
    x = rng.standard_normal(lhs).astype(np.float32)
    w = rng.standard_normal(rhs).astype(np.float32)
    x = np.concatenate([x, np.abs(x)])
    wg = w.reshape(*rhs[:-1], groups, rhs[-1] // groups)
    w = np.concatenate([wg, np.abs(wg)], axis=-1).reshape(*rhs[:-1], 2 * rhs[-1])
    kw = {"window_strides": strides, "padding": padding, "lhs_dilation": lhs_d,
          "rhs_dilation": rhs_d[0] if rhs_d else None,
          "dimension_numbers": canonical_layouts(len(strides)), "feature_group_count": groups}
    spec = ConvSpec.from_lax(x.shape, w.shape, strides, padding, lhs_d, kw["rhs_dilation"],
                             kw["dimension_numbers"], groups)
    return spec, x, w, kw


@functools.cache
def _reference(name: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``lax`` outputs on ``(x, w)`` and on ``(|x|, |w|)``, HIGHEST precision."""
    _, x, w, kw = _setup(name)
    with jax.enable_x64(True):
        def ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.asarray(lax.conv_general_dilated(
                jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float64), **kw,
                precision=lax.Precision.HIGHEST))
        return ref(x, w), ref(np.abs(x), np.abs(w))


def _nonnegative(spec: ConvSpec, a: np.ndarray) -> np.ndarray:
    """The outputs (or output maps) of ``|x|`` with ``|w|``: second batch half, second half
    of every group's features."""
    n, g = a.shape[0], spec.feature_group_count
    a = a.reshape(*a.shape[:-1], g, 2, -1)[n // 2:, ..., 1, :]
    return a.reshape(*a.shape[:-2], -1)


def _ratio(spec: ConvSpec, observed: np.ndarray, allowed: np.ndarray) -> float:
    """Largest observed error over bound on the nonnegative data."""
    obs, bound = _nonnegative(spec, observed), _nonnegative(spec, allowed)
    return float(np.max(obs[bound > 0] / bound[bound > 0]))


def _maps(spec: ConvSpec, a: np.ndarray) -> np.ndarray:
    """2-norm of each output map over its positions: ``(N, *out, F) -> (N, F)``."""
    return np.sqrt(np.sum(a * a, axis=tuple(range(1, spec.num_spatial + 1))))


TRANSPOSED = ("polyphase", "scatter", "dft")
"""The lowerings run on the lhs-dilated cases (the others are covered above)."""
PAIRS = [(c, s) for c in CASES for s in STRATEGIES
         if ("transposed" not in c or s in TRANSPOSED)
         and STRATEGIES[s].applicable(_setup(c)[0], jnp.float32) is None]


def test_every_lowering_is_checked_on_some_case() -> None:
    assert {s for _, s in PAIRS} == set(STRATEGIES)


@pytest.mark.parametrize(("case", "lowering"), PAIRS, ids=[f"{c}-{s}" for c, s in PAIRS])
def test_observed_error_stays_below_the_bound(case: str, lowering: str) -> None:
    spec, x, w, kw = _setup(case)
    bound = error_bound(lowering, spec, jnp.float32)
    y = jconv.conv_general_dilated(jnp.asarray(x), jnp.asarray(w), **kw, strategy=lowering)
    y64, s64 = _reference(case)
    err = np.abs(np.asarray(y, np.float64) - y64)
    K = spec.taps * spec.group_in_features
    g64 = float(gamma(K, unit_roundoff("float64")))
    ref_err = g64 * s64 * (1 + g64)  # the float64 reference's own error
    b = bound.evaluate(x, w)
    if bound.kind == "componentwise":
        assert b.shape == err.shape
        assert np.all(err <= b + ref_err)
        observed, allowed = err, b
    else:
        assert b.shape == (spec.out_batch, spec.out_features)
        assert np.all(_maps(spec, err) <= b + _maps(spec, ref_err))
        observed, allowed = _maps(spec, err), b
    assert _ratio(spec, observed, allowed) >= MIN_RATIO
    # the summation bound of the same case; the normwise class states a larger one
    summation = float(layer_model(spec, dtype=jnp.float32)["error_bound"].value) * s64
    if STRATEGIES[lowering].ACCURACY == "normwise":
        assert np.all(_maps(spec, b) > _maps(spec, summation) if bound.kind == "componentwise"
                      else b > _maps(spec, summation))
    if lowering in ("shift", "patches", "hybrid", "direct", "scatter", "pallas"):
        np.testing.assert_allclose(b, summation, rtol=1e-8)


def test_depths_counted_from_the_matrices_match_a_count_by_hand() -> None:
    spec = ConvSpec.from_lax((1, 8, 8, 24), (3, 3, 8, 6), (1, 1), "SAME", None, None,
                             canonical_layouts(2), 3)
    u = unit_roundoff("float32")
    # summing: the K = 9 * 8 products of eq. (3.5), as layer_model states
    shift = error_bound("shift", spec)
    assert shift.depth == 72 and shift.formula.value == layer_model(spec)[
        "error_bound"].value * sp.Symbol("y_abs", nonnegative=True)
    # F(2x2, 3x3): B^T (x) B^T rows of 4 entries +-1 (3 additions), G (x) G rows of up to 9
    # powers of two (8), A^T (x) A^T rows of 9 entries +-1 (8); the channel sum C_g = 8
    wino = error_bound("winograd", spec)
    assert wino.depth == 3 + 8 + 8 + 8
    assert wino.formula.value == gamma(27, u) * sp.Symbol("y_abs", nonnegative=True)
    assert {symbols.u, symbols.C_in, symbols.g} < wino.formula.expr.free_symbols
    assert wino.formula.expr.subs({symbols.C_in: 24, symbols.g: 3, symbols.u: u}) == \
        wino.formula.value
    # F(2, 3) in 1-D: rows of 2 entries +-1 (1 addition), 3 halves (2), 3 entries +-1 (2)
    spec_1d = ConvSpec.from_lax((1, 8, 24), (3, 8, 6), (1,), "SAME", None, None,
                                canonical_layouts(1), 3)
    assert error_bound("winograd", spec_1d).depth == 1 + 2 + 8 + 2
    # F(4x4, 3x3): a row of 16 powers of two (15); rows of 9 entries 1/36, inexact and not a
    # power of two (8 + 1 product + 1 stored); rows of 25 powers of two (24)
    assert error_bound("winograd4", spec).depth == 15 + 10 + 24 + 8
    fft_bound = error_bound("fft", spec)
    assert fft_bound.kind == "normwise" and fft_bound.depth is None
    (eps,) = fft_bound.parts
    # lengths 10 x 10 (2 * 5): S = 1 + 4 stages per axis, eta ~ (1 + 4 sqrt 2) u
    eta = float(u) * (1 + 4 * np.sqrt(2))
    assert float(eps.value) == pytest.approx((1 + 5 * eta) ** 2 - 1, rel=1e-5)


def test_dft_bound_counts_the_matrices_the_lowering_stores() -> None:
    from jconv.strategies import dft
    from jconv.symbolic import bounds

    for k, dil, length in ((15, 1, 40), (7, 3, 100), (31, 1, 64)):
        spec = ConvSpec.from_lax((1, length, 2), (k, 2, 2), (1,), "SAME", None, (dil,),
                                 canonical_layouts(1))
        t = dft.tile_length(spec)
        assert t is not None
        step = t - spec.effective_window[0] + 1
        stored = dft._matrices(t, step, k, dil)
        parts = bounds._dft_parts(spec, "float32")
        for name, mat in zip(("B", "A", "cos", "sin"), stored, strict=True):
            f, exact, err = parts[name]
            np.testing.assert_array_equal(f, mat.astype(np.float32))
            # exact values: the stored ones within float32 rounding (2**-24 relative), or
            # a rounding residue where the exact value is 0
            close = np.abs(f - exact) <= 2.0**-24 * np.abs(exact) * 1.01 + err + 1e-300
            assert np.all(close | ((exact == 0) & (np.abs(f) < 1e-12)))


def test_layouts_and_bad_arguments() -> None:
    nchw = ConvSpec.from_lax((2, 3, 9, 9), (4, 3, 3, 3), (1, 1), "SAME",
                             dimension_numbers=("NCHW", "OIHW", "NCHW"))
    nhwc = ConvSpec.from_lax((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), "SAME",
                             dimension_numbers=canonical_layouts(2))
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((2, 9, 9, 3)), rng.standard_normal((3, 3, 3, 4))
    for name in ("patches", "winograd4", "fft"):
        a = error_bound(name, nhwc).evaluate(x, w)
        b = error_bound(name, nchw).evaluate(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1))
        np.testing.assert_allclose(b if a.shape == b.shape else b.transpose(0, 2, 3, 1), a)
    with pytest.raises(ValueError, match=r"`lowering` \(='karatsuba'\) must be one of"):
        error_bound("karatsuba", nhwc)
    with pytest.raises(ValueError, match=r"`lowering` \(='dft'\) cannot run `spec`"):
        error_bound("dft", nhwc)
    with pytest.raises(ValueError, match="`dtype`"):
        error_bound("shift", nhwc, jnp.int32)
    with pytest.raises(TypeError, match="`spec`"):
        error_bound("shift", (2, 9, 9, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`x` \(shape \(9, 9\)\)"):
        error_bound("shift", nhwc).evaluate(x[0, :, :, 0], w)


@pytest.mark.parametrize(("case", "lowering"), [("3x3", "shift"), ("3x3", "winograd4"),
                                                 ("3x3", "fft"), ("1d-k15", "dft")])
def test_float16_results_stay_below_their_bound(case: str, lowering: str) -> None:
    """float16 operands: float32 arithmetic, then one rounding to float16 (``u_out``)."""
    spec, x, w, kw = _setup(case)
    x16, w16 = x.astype(np.float16), w.astype(np.float16)
    bound = error_bound(lowering, spec, jnp.float16)
    assert isinstance(bound, ErrorBound) and bound.dtype == "float16"
    if lowering == "shift":
        u32, u16 = unit_roundoff("float32"), unit_roundoff("float16")
        assert bound.formula.value == (gamma(bound.depth, u32) * (1 + u16) + u16) * sp.Symbol(
            "y_abs", nonnegative=True)
    y = jconv.conv_general_dilated(jnp.asarray(x16), jnp.asarray(w16), **kw, strategy=lowering)
    assert y.dtype == jnp.float16
    with jax.enable_x64(True):
        y64, s64 = (np.asarray(lax.conv_general_dilated(
            jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float64), **kw,
            precision=lax.Precision.HIGHEST)) for a, b in ((x16, w16), (np.abs(x16), np.abs(w16))))
    err = np.abs(np.asarray(y, np.float64) - y64)
    g64 = float(gamma(spec.taps * spec.group_in_features, unit_roundoff("float64")))
    b = bound.evaluate(x16, w16)
    if bound.kind == "componentwise":
        assert np.all(err <= b + 2 * g64 * s64)
    else:
        assert np.all(_maps(spec, err) <= b + _maps(spec, 2 * g64 * s64))
