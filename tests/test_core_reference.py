"""Every lowering equals an independent float64 NumPy loop reference written from the definition.

``out[n, o, f] = sum_{k, c} x[n, o*s + k*d - p_lo, c] * w[k, c, f]`` (see reference.py),
evaluated for every registered lowering on every configuration of `TABLE`, `EDGE` and the
lowering-specific `LOWERING_ROWS`, in float64 under ``jax.enable_x64``. A lowering that
declines a configuration by its own ``applicable`` must refuse it when forced. float32 and
complex64 are checked for every lowering on a few configurations that together reach each
one. The reference is computed once per configuration and shared by all lowerings; it is
itself checked against lax in test_core_lax.py and by hand below.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from _core_cases import (
    EDGE,
    LOWERING_ROWS,
    LOWERING_ROWS_IN_TABLE,
    TABLE,
    Case,
    make_case,
    run_jconv,
    strategy_reason,
)
from reference import conv_reference, rel_err

from jconv.strategies import STRATEGIES

ALL = sorted(STRATEGIES)
ROWS = TABLE + EDGE + [r for i, r in enumerate(LOWERING_ROWS) if i not in LOWERING_ROWS_IN_TABLE]
BY_NAME = {c.name: c for c in ROWS}

ROUNDOFF = {"winograd4": 1e-4}
"""float32 error allowed relative to ``max |reference|`` where it is not 1e-5: F(4x4, 3x3)
rounds more (test_strategies.py::test_winograd4_trades_accuracy_for_multiplies)."""


@functools.cache
def _reference(case: Case, dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Operands (seeded by the configuration's row) and the float64 reference, once per row."""
    x, w = case.operands(dtype, seed=ROWS.index(case))
    return x, w, case.reference_out(x, w)


def _declines(case: Case, strategy: str, dtype: type) -> bool:
    """True if `strategy` declines `case`; then forcing it must raise (the engine returns
    zeros for an empty convolution without lowering, so nothing is refused there)."""
    if strategy_reason(case, strategy, dtype) is None:
        return False
    x, w, _ = _reference(case, dtype)
    if not case.spec().empty:
        with pytest.raises(ValueError, match=f"`strategy` \\(='{strategy}'\\) cannot run this"):
            run_jconv(case, x, w, strategy)
    return True


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("case", ROWS, ids=str)
def test_float64_matches_reference(case: Case, strategy: str) -> None:
    with jax.enable_x64(True):
        if _declines(case, strategy, np.float64):
            return
        x, w, want = _reference(case, np.float64)
        got = run_jconv(case, x, w, strategy)
        assert got.dtype == np.float64
        assert rel_err(np.asarray(got), want) <= 1e-12


CROP_THEN_PAD = [
    make_case("2d_crop_then_pad", spatial=(9, 7), padding=((-1, 1), (0, 0))),
    make_case("2d_crop_then_pad_groups", spatial=(9, 7), padding=((-1, 1), (-1, 1)), channels=4,
              filters=6, fgc=2),
]
"""Negative low padding with a high padding no larger: XLA's own CPU convolution reads past
the input there (openxla/xla#48713: jax 0.10.2's lax returned the next row's samples and
uninitialised memory on these), so only the reference tells the lowerings right."""


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("case", CROP_THEN_PAD, ids=str)
def test_a_crop_then_a_pad_matches_the_reference(case: Case, strategy: str) -> None:
    if strategy_reason(case, strategy, np.float32) is not None:
        return
    x, w = case.operands(np.float32, seed=0)
    got = run_jconv(case, x, w, strategy)
    assert rel_err(np.asarray(got), case.reference_out(x, w)) <= ROUNDOFF.get(strategy, 1e-5)


# Together these reach every lowering: 2d_same (winograd), 1d_valid and 1d_depthwise (dft),
# 1d_lhs_dil and a 2-D lhs-dilated row (polyphase), 1d_rhs_dil (atrous), stride-1 rows
# (scatter), groups of every kind, 3-D.
LOW_PRECISION_ROWS = ["2d_all", "3d_mixed", "2d_batch_groups", "1d_depthwise", "2d_same",
                      "1d_lhs_dil", "1d_rhs_dil", LOWERING_ROWS[17].name]


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("name", LOW_PRECISION_ROWS)
def test_float32_and_complex64_match_reference(name: str, strategy: str) -> None:
    case = BY_NAME[name]
    ran = 0
    for dtype in (np.float32, np.complex64):
        if _declines(case, strategy, dtype):
            continue
        x, w, want = _reference(case, dtype)
        got = run_jconv(case, x, w, strategy)
        assert got.dtype == dtype
        assert rel_err(got, want) <= ROUNDOFF.get(strategy, 1e-5), dtype
        ran += 1
    if name in ("2d_all", "2d_same") and strategy in ("shift", "patches", "direct"):
        assert ran == 2  # the general lowerings take complex operands


def test_every_lowering_runs_float32_somewhere() -> None:
    """`LOW_PRECISION_ROWS` leave no lowering unchecked in float32."""
    for strategy in ALL:
        assert any(strategy_reason(BY_NAME[n], strategy, np.float32) is None
                   for n in LOW_PRECISION_ROWS), strategy


def test_reference_is_the_definition() -> None:
    """Spot-check the reference itself on a hand-computed 1-D case (no JAX involved)."""
    x = np.arange(1.0, 6.0).reshape(1, 5, 1)  # [1, 2, 3, 4, 5]
    w = np.array([1.0, 10.0]).reshape(2, 1, 1)
    # stride 2, rhs dilation 2, pads (1, 0): positions o*2 + k*2 - 1 for o = 0, 1
    got = conv_reference(x, w, (2,), ((1, 0),), (1,), (2,))
    # o=0: x[-1]*1 + x[1]*10 = 20; o=1: x[1]*1 + x[3]*10 = 2 + 40 = 42
    np.testing.assert_array_equal(got.ravel(), [20.0, 42.0])
    # lhs dilation 2: dilated input [1, 0, 2, 0, 3, 0, 4, 0, 5]; window 2, VALID, stride 3
    # o=0: 1 + 0*10; o=1: 0 + 3*10; o=2: 4 + 0*10
    got = conv_reference(x, w, (3,), ((0, 0),), (2,), (1,))
    np.testing.assert_array_equal(got.ravel(), [1.0, 30.0, 4.0])
    # feature groups: channel c of group g meets only filter block g
    x = np.array([[[1.0, 2.0]]])  # (N=1, W=1, C=2)
    w = np.array([[[3.0, 5.0]]])  # (K=1, C/g=1, F=2), g=2
    np.testing.assert_array_equal(conv_reference(x, w, (1,), ((0, 0),), (1,), (1,), 2).ravel(),
                                  [3.0, 10.0])


def test_sum_over_channels_matches_reference_by_hand() -> None:
    """Two channels, one filter: the output is the sum of the two channel correlations."""
    case = make_case("sum", spatial=(4, 4), channels=2, filters=1, padding="VALID")
    x, w = case.operands(np.float64, seed=3)
    want = sum(
        conv_reference(x[..., c:c + 1], w[:, :, c:c + 1, :], (1, 1), ((0, 0),) * 2, (1, 1),
                       (1, 1))
        for c in range(2)
    )
    with jax.enable_x64(True):
        got = np.asarray(run_jconv(case, x, w))
    assert rel_err(got, want) <= 1e-12
