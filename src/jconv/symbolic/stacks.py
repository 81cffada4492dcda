"""Stacks of layers: totals, receptive field, effective stride and padding, asymptotics.

For layers l = 1..L with windows k_l (dilation folded in: k_l <- d_l (k_l - 1) + 1), strides
s_l and low pads p_l, output position 0 of the stack sees the input window starting at
``-P0`` of size ``r0``; neighbouring outputs are ``S0`` input positions apart:

    r0 = 1 + sum_l (k_l - 1) prod_{i<l} s_i,   S0 = prod_l s_l,   P0 = sum_l p_l prod_{i<l} s_i
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import sympy as sp

from .geometry import Size, effective_window
from .layer import Formula

__all__ = [
    "asymptotic_order",
    "effective_padding",
    "effective_stride",
    "receptive_field",
    "stack_totals",
    "uniform_stack",
]


def _check_lengths(**seqs: Sequence[Size] | None) -> int:
    lengths = {name: len(v) for name, v in seqs.items() if v is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Per-layer sequences must have equal lengths, got {lengths}.")
    return next(iter(lengths.values()))


def receptive_field(k: Sequence[Size], s: Sequence[Size] | None = None,
                    d: Sequence[Size] | None = None) -> sp.Expr:
    """``r0 = 1 + sum_l (k_l - 1) prod_{i<l} s_i`` with ``k_l`` dilated by ``d_l``."""
    n = _check_lengths(k=k, s=s, d=d)
    s_ = list(s) if s is not None else [1] * n
    d_ = list(d) if d is not None else [1] * n
    total, jump = sp.Integer(1), sp.Integer(1)
    for kl, sl, dl in zip(k, s_, d_, strict=True):
        total += (effective_window(kl, dl) - 1) * jump
        jump *= sl
    return total


def effective_stride(s: Sequence[Size]) -> sp.Expr:
    """``S0 = prod_l s_l``: input distance between neighbouring outputs of the stack."""
    return sp.Mul(*(sp.sympify(v) for v in s))


def effective_padding(p: Sequence[Size], s: Sequence[Size]) -> sp.Expr:
    """``P0 = sum_l p_l prod_{i<l} s_i``: the stack's low padding, in input positions."""
    _check_lengths(p=p, s=s)
    total, jump = sp.Integer(0), sp.Integer(1)
    for pl, sl in zip(p, s, strict=True):
        total += sp.sympify(pl) * jump
        jump *= sl
    return total


def uniform_stack(L: Size, k: Size, s: Size = 1, p: Size = 0, d: Size = 1) -> dict[str, sp.Expr]:
    """Closed forms of r0, S0, P0 for L identical layers, summed with ``Sum(...).doit()``."""
    l_ = sp.Symbol("l", integer=True, positive=True)
    k_e, s_, p_ = effective_window(k, d), sp.sympify(s), sp.sympify(p)
    return {
        "receptive_field": sp.simplify(1 + sp.Sum((k_e - 1) * s_ ** (l_ - 1), (l_, 1, L)).doit()),
        "stride": s_ ** sp.sympify(L),
        "padding": sp.simplify(sp.Sum(p_ * s_ ** (l_ - 1), (l_, 1, L)).doit()),
    }


def stack_totals(layers: Iterable[Mapping[str, Formula]],
                 keys: Sequence[str] = ("weights", "biases", "params", "macs", "flops_dense",
                                        "out_bytes")) -> dict[str, int | sp.Expr]:
    """Sum of each key's value over per-layer `layer_model` dicts."""
    items = list(layers)
    return {key: sum((m[key].value for m in items), sp.Integer(0)) for key in keys}


def asymptotic_order(expr: sp.Expr, *variables: sp.Symbol) -> sp.Order:
    """``Order(expr, (x, oo), ...)`` jointly in every variable (SymPy's default point is 0)."""
    if not variables:
        variables = tuple(sorted(sp.sympify(expr).free_symbols, key=str))
    return sp.Order(expr, *((v, sp.oo) for v in variables))
