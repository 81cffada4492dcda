"""Per-layer formulas of one `ConvSpec`: shapes, parameters, MACs, FLOPs, bytes, error bound.

Symbols (positive integers): ``N`` batch, ``C_in``, ``C_out``, ``g`` feature groups and, per
spatial dimension x in (h, w) for 2-D (w for 1-D, d h w for 3-D, 0 1 ... beyond):
input ``H``/``W`` (``i_x`` beyond 3-D), window ``k_x``, stride ``s_x``, rhs dilation ``d_x``,
pads ``p^lo_x``, ``p^hi_x`` (integers); lhs dilation ``l_x`` and batch groups ``B`` appear only
when the spec uses them.

Two FLOP conventions:

- ``flops_dense``: ``2 * MACs`` (every tap, padding included) plus one add per output for a
  bias;
- ``flops_xla``: what ``compile().cost_analysis()["flops"]`` reports for
  ``lax.conv_general_dilated`` on XLA: ``2 * N * C_out * (C_in / g) * prod_x T_x`` where
  ``T_x`` counts the (output position, kernel tap) pairs of dimension x that land on a real
  input element (not padding, not a hole of the lhs dilation); except a conv that is an
  elementwise product (window 1, no stride, padding or dilation, ``C_in = C_out = g``),
  which XLA rewrites to a multiply: 1 flop per output. Defined for
  ``batch_group_count == 1`` (XLA expands batch-grouped convolutions before counting).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import sympy as sp

from .._spec import ConvSpec
from .error import UNIT_ROUNDOFF, gamma
from .geometry import output_size
from .memory import tensor_bytes, tensor_elements

__all__ = [
    "Formula",
    "cost_analysis_flops",
    "dimension_names",
    "layer_model",
    "symbols",
    "unroll_sums",
    "xla_taps",
]



@dataclass(frozen=True)
class Formula:
    """A named expression and its value at one layer's numbers."""

    name: str
    expr: sp.Expr
    value: int | sp.Expr

    def latex(self) -> str:
        """``expr = value`` in LaTeX (the value alone when the expression is a number)."""
        if sp.sympify(self.expr).is_number:
            return sp.latex(self.value)
        return f"{sp.latex(self.expr)} = {sp.latex(self.value)}"

    def __str__(self) -> str:
        if sp.sympify(self.expr).is_number:
            return str(self.value)
        return f"{self.expr} = {self.value}"

    def __repr__(self) -> str:
        return f"Formula({self.name}: {self})"

    def _repr_latex_(self) -> str:
        """Jupyter shows ``name: expr = value`` typeset."""
        name = self.name.replace("_", r"\_")
        return rf"$\text{{{name}}}: {self.latex()}$"

    def subs(self, *args: Any, **kwargs: Any) -> sp.Expr:
        """`expr.subs(...)`: the formula at other sizes, e.g. ``f.subs(symbols.N, 8)``."""
        return self.expr.subs(*args, **kwargs)


class _Symbols:
    """The size symbols of the formulas, by name: ``symbols.N``, ``symbols.C_in``,
    ``symbols.H``, ``symbols.k_h``, ``symbols.L`` (depth)... equal to those inside every
    `Formula`, so ``formula.expr.subs(symbols.N, 8)`` works; ``symbols["p^lo_h"]`` for the
    names that are not identifiers."""

    _NAMES = ("N C_in C_out g B L D H W k_d k_h k_w s_d s_h s_w d_d d_h d_w l_d l_h l_w u")

    def __getattr__(self, name: str) -> sp.Symbol:
        return self[name]

    def __getitem__(self, name: str) -> sp.Symbol:
        if name.startswith(("p^lo_", "p^hi_")):
            return sp.Symbol(name, integer=True)
        if name == "u":
            return sp.Symbol("u", positive=True)
        if name.startswith("_") or not name:
            raise AttributeError(name)
        return _pos(name)

    def __dir__(self) -> list[str]:
        return self._NAMES.split()

    def __repr__(self) -> str:
        return f"jconv.symbolic.symbols({', '.join(self._NAMES.split())}, p^lo_h, p^hi_h, ...)"


symbols = _Symbols()


def cost_analysis_flops(cost: Any) -> float | None:
    """``flops`` of ``compiled.cost_analysis()``, which may be a dict, a list of dicts or None.

    None when the backend gives no analysis; 0.0 when the dict lacks the key (XLA omits it
    for a convolution with no tap on real input).
    """
    if cost is None:
        return None
    if isinstance(cost, list | tuple):
        if not cost:
            return None
        cost = cost[0]
    if not isinstance(cost, Mapping):
        raise TypeError(f"`cost` (={cost!r}) must be a dict, a list of dicts or None.")
    return float(cost.get("flops", 0.0))


def dimension_names(num_spatial: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input size names, suffixes) per spatial dimension, e.g. (("H", "W"), ("h", "w"))."""
    if num_spatial == 1:
        return ("W",), ("w",)
    if num_spatial == 2:
        return ("H", "W"), ("h", "w")
    if num_spatial == 3:
        return ("D", "H", "W"), ("d", "h", "w")
    suffixes = tuple(str(j) for j in range(num_spatial))
    return tuple(f"i_{x}" for x in suffixes), suffixes


def _pos(name: str) -> sp.Symbol:
    return sp.Symbol(name, integer=True, positive=True)


def xla_taps(i: sp.Expr, k: sp.Expr, s: sp.Expr, lo: sp.Expr, d: sp.Expr, o: sp.Expr,
             lhs_d: sp.Expr | int = 1) -> sp.Expr:
    """Pairs (output o', tap t) with ``o'*s + t*d - lo`` on a real input element of one dim.

    With ``lhs_d == 1`` this is ``sum_t max(0, min(o - 1, floor((i - 1 + lo - t d) / s))
    - max(0, ceil((lo - t d) / s)) + 1)``; otherwise an explicit double sum of indicators.
    """
    t = sp.Symbol("t", integer=True, nonnegative=True)
    if lhs_d == 1:
        term = sp.Max(0, sp.Min(o - 1, sp.floor((i - 1 + lo - t * d) / s))
                      - sp.Max(0, sp.ceiling((lo - t * d) / s)) + 1)
        return sp.Sum(term, (t, 0, k - 1))
    q = sp.Symbol("q", integer=True, nonnegative=True)
    pos = q * s + t * d - lo
    hit = sp.Piecewise(
        (1, sp.And(sp.Eq(sp.Mod(pos, lhs_d), 0), pos >= 0, pos <= (i - 1) * lhs_d)), (0, True)
    )
    return sp.Sum(sp.Sum(hit, (q, 0, o - 1)), (t, 0, k - 1))


def unroll_sums(expr: sp.Expr) -> sp.Expr:
    """Each ``Sum`` over whole-number limits written out term by term: SymPy's own
    evaluation of ``Sum(Max(0, floor(-t/3) + 1), (t, 0, 0))`` returns 0 under some hash
    seeds (the correct value is 1)."""
    def unroll(s: sp.Sum) -> sp.Expr:
        (t, lo, hi), = s.limits
        return sp.Add(*(s.function.xreplace({t: sp.Integer(i)})
                        for i in range(int(lo), int(hi) + 1)))

    return expr.replace(
        lambda e: isinstance(e, sp.Sum) and len(e.limits) == 1
        and all(v.is_Integer for v in e.limits[0][1:]),
        unroll)


def layer_model(
    spec: ConvSpec, *, bias: bool = True, dtype: jax.typing.DTypeLike = jnp.float32,
    free: Any = (),
) -> dict[str, Formula]:
    """Formulas of one convolution, each with its value at `spec`'s numbers.

    Keys: ``out_0 .. out_{n-1}`` (output size per spatial dim), ``out_elements``,
    ``weights``, ``biases``, ``params``, ``macs``, ``flops_dense``, ``flops_xla`` (present
    only when ``batch_group_count == 1``), ``in_bytes``, ``weight_bytes``, ``bias_bytes``,
    ``out_bytes`` (at ``dtype``'s item size), ``error_bound`` (``gamma_K`` at ``dtype``'s
    unit roundoff; ``dtype`` one of `UNIT_ROUNDOFF`'s floats).

    `free` names sizes to keep symbolic (symbols of `jconv.symbolic.symbols` or their
    names, e.g. ``free=("N", "H", "W")``): each value is then a formula of those sizes
    (``"N"`` stays free in the MACs, ``"H"`` in the output size...).

    >>> spec = ConvSpec.from_lax((1, 28, 28, 1), (3, 3, 1, 10), (1, 1), "SAME",
    ...                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    >>> str(layer_model(spec)["params"])
    'C_in*C_out*k_h*k_w/g + C_out = 100'
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"`spec` (={spec!r}) must be a jconv.ConvSpec.")
    name = jnp.dtype(dtype).name
    if name not in UNIT_ROUNDOFF:
        raise ValueError(f"`dtype` (={name}) must be one of {sorted(UNIT_ROUNDOFF)}.")
    itemsize = jnp.dtype(dtype).itemsize
    n = spec.num_spatial
    in_names, suf = dimension_names(n)
    N, C_in, C_out, g = _pos("N"), _pos("C_in"), _pos("C_out"), _pos("g")
    vals: dict[sp.Symbol, int] = {N: spec.batch, C_in: spec.in_features,
                                  C_out: spec.out_features, g: spec.feature_group_count}
    n_out: sp.Expr = N
    if spec.batch_group_count > 1:
        B = _pos("B")
        vals[B] = spec.batch_group_count
        n_out = N / B
    use_lhs = any(v != 1 for v in spec.lhs_dilation)
    i_s, k_s, o_s, taps = [], [], [], []
    elementwise_conditions: list[tuple[sp.Expr, int]] = []
    for j in range(n):
        x = suf[j]
        i, k, s, d = _pos(in_names[j]), _pos(f"k_{x}"), _pos(f"s_{x}"), _pos(f"d_{x}")
        lo, hi = sp.Symbol(f"p^lo_{x}", integer=True), sp.Symbol(f"p^hi_{x}", integer=True)
        vals.update({i: spec.in_spatial[j], k: spec.window[j], s: spec.window_strides[j],
                     d: spec.rhs_dilation[j], lo: spec.padding[j][0], hi: spec.padding[j][1]})
        ld: sp.Expr | int = 1
        if use_lhs:
            ld = _pos(f"l_{x}")
            vals[ld] = spec.lhs_dilation[j]
        o = output_size(i, k, s, (lo, hi), d, ld)
        elementwise_conditions += [(k, 1), (s, 1), (d, 1), (lo, 0), (hi, 0), (ld, 1)]
        i_s.append(i)
        k_s.append(k)
        o_s.append(o)
        taps.append(xla_taps(i, k, s, lo, d, o, ld))

    keep = {str(v) for v in (free if isinstance(free, list | tuple | set | frozenset)
                             else (free,))}
    unknown = keep - {str(a) for a in vals}
    if unknown:
        raise ValueError(f"`free` (={sorted(keep)}) names sizes this layer does not have: "
                         f"{sorted(unknown)}; it has {sorted(str(a) for a in vals)}.")
    fixed = {a: sp.Integer(b) for a, b in vals.items() if str(a) not in keep}

    def make(name: str, expr: sp.Expr) -> Formula:
        value = sp.sympify(expr).xreplace(fixed)
        value = unroll_sums(value).doit() if not keep else sp.simplify(value)
        return Formula(name, expr, int(value) if value.is_Integer else value)

    out: dict[str, Formula] = {}
    for j, o in enumerate(o_s):
        out[f"out_{j}"] = make(f"out_{j}", o)
    window = tensor_elements(k_s)
    out_el = tensor_elements([n_out, *o_s, C_out])
    weights = window * C_in / g * C_out
    biases = C_out if bias else sp.Integer(0)
    macs = tensor_elements([n_out, *o_s, C_out]) * window * C_in / g
    out["out_elements"] = make("out_elements", out_el)
    out["weights"] = make("weights", weights)
    out["biases"] = make("biases", biases)
    out["params"] = make("params", weights + biases)
    out["macs"] = make("macs", macs)
    out["flops_dense"] = make("flops_dense", 2 * macs + (out_el if bias else 0))
    if spec.batch_group_count == 1:
        # XLA's algebraic simplifier turns an elementwise-product conv into one multiply
        # per output (1 flop): window 1, no stride, padding or dilation, and one input
        # and one output channel per group.
        elementwise = sp.And(sp.Eq(C_in, g), sp.Eq(C_out, g),
                             *(sp.Eq(v, w) for v, w in elementwise_conditions))
        out["flops_xla"] = make("flops_xla", sp.Piecewise(
            (n_out * sp.Mul(*o_s) * C_out, elementwise),
            (2 * N * C_out * C_in / g * sp.Mul(*taps), True)))
    out["in_bytes"] = make("in_bytes", tensor_bytes([N, *i_s, C_in], itemsize))
    out["weight_bytes"] = make("weight_bytes", weights * itemsize)
    out["bias_bytes"] = make("bias_bytes", biases * itemsize)
    out["out_bytes"] = make("out_bytes", out_el * itemsize)
    u = UNIT_ROUNDOFF[name]
    K_val = spec.taps * spec.group_in_features
    u_sym = sp.Symbol("u", positive=True)
    K = window * C_in / g
    bound = K * u_sym / (1 - K * u_sym)
    # gamma_K exists only for K*u < 1; beyond that the a-priori bound is vacuous (oo).
    value = gamma(K_val, u) if K_val * u < 1 else sp.oo
    if keep:
        value = bound.xreplace(fixed).subs(u_sym, u)
    out["error_bound"] = Formula("error_bound", bound, value)
    return out
