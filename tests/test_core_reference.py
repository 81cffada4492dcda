"""jconv equals an independent float64 NumPy loop reference written from the definition.

``out[n, o, f] = sum_{k, c} x[n, o*s + k*d - p_lo, c] * w[k, c, f]`` (see reference.py),
evaluated for every registered strategy (those that decline a case by their own
``applicable`` are skipped), in float64 under ``jax.enable_x64``, plus float32 and complex.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _core_cases import EDGE, TABLE, Case, make_case, run_jconv, strategy_reason
from reference import conv_reference, rel_err

from jconv.strategies import STRATEGIES

ALL = sorted(STRATEGIES)


def _skip_if_declined(case: Case, strategy: str, dtype: type) -> None:
    reason = strategy_reason(case, strategy, dtype)
    if reason is not None:
        pytest.skip(f"{strategy} declines: {reason}")


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("case", TABLE + EDGE, ids=str)
def test_float64_matches_reference(case: Case, strategy: str) -> None:
    _skip_if_declined(case, strategy, np.float64)
    x, w = case.operands(np.float64, seed=1)
    with jax.enable_x64(True):
        got = run_jconv(case, x, w, strategy)
        assert got.dtype == np.float64
        got = np.asarray(got)
    assert rel_err(got, case.reference_out(x, w)) <= 1e-12


@pytest.mark.parametrize("strategy", ["shift", "patches"])
@pytest.mark.parametrize("name", ["2d_all", "3d_mixed", "2d_batch_groups", "1d_depthwise"])
def test_float32_and_complex64_match_reference(name: str, strategy: str) -> None:
    case = TABLE[[c.name for c in TABLE].index(name)]
    for dtype, tol in ((np.float32, 1e-5), (np.complex64, 1e-5)):
        x, w = case.operands(dtype, seed=2)
        got = run_jconv(case, x, w, strategy)
        assert got.dtype == dtype
        assert rel_err(got, case.reference_out(x, w)) <= tol


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
