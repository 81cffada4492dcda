"""Forward rounding-error bound of the length-K dot products a convolution is made of.

Each output is ``y = sum_{j<K} x_j w_j`` with ``K = prod(window) * C_in / g`` terms. In
floating point with unit roundoff ``u`` and any summation order (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., Sec. 3.1, eq. (3.5)):

    |fl(y) - y| <= gamma_K * sum_j |x_j| |w_j|,     gamma_K = K u / (1 - K u),   K u < 1.

That is the bound of the lowerings that sum the products; `jconv.symbolic.bounds` states
every lowering's own (transforms included) with `error_bound`.
"""

from __future__ import annotations

import sympy as sp

__all__ = ["UNIT_ROUNDOFF", "gamma", "unit_roundoff"]

UNIT_ROUNDOFF: dict[str, sp.Rational] = {
    "float64": sp.Rational(1, 2**53),
    "float32": sp.Rational(1, 2**24),
    "float16": sp.Rational(1, 2**11),
    "bfloat16": sp.Rational(1, 2**8),
}


def unit_roundoff(dtype: str) -> sp.Rational:
    """``u = 2**-p`` for a dtype with p significand bits (float32: 2**-24)."""
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"`dtype` (={dtype!r}) must be one of {sorted(UNIT_ROUNDOFF)}.")
    return UNIT_ROUNDOFF[dtype]


def gamma(K: int | sp.Expr, u: sp.Expr | None = None) -> sp.Expr:
    """``gamma_K = K u / (1 - K u)``; symbolic ``u`` when not given."""
    u_ = sp.Symbol("u", positive=True) if u is None else sp.sympify(u)
    k = sp.sympify(K)
    if (k * u_).is_number and not (k * u_ < 1):
        raise ValueError(f"`K * u` (={k * u_}) must be < 1 for the bound gamma_K to exist.")
    return k * u_ / (1 - k * u_)
