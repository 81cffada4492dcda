"""Forward rounding-error bound of every lowering, as a formula and as numbers for given operands.

`error_bound(lowering, spec, dtype)` states how far the lowering's result on operands of
``dtype`` may lie from the exact convolution: the lowering computes in the accumulation
dtype (`accumulation_dtype`, unit roundoff ``u``; no underflow or overflow) and a 16-bit
result is rounded once more (``u_out``). References: N. J. Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., SIAM 2002 (Lemma 3.1, eq. (3.5), Lemma 3.5,
Theorem 24.2).

Componentwise bounds (every output element), from one lemma: a value computed by sums and
products in which every term (monomial) of the exact result passes through at most ``D``
roundings satisfies ``|fl(y) - y| <= gamma_D y_abs`` (Lemma 3.1 on each monomial; a
summation of ``K`` products is the case ``D = K``, eq. (3.5)). ``y_abs`` is the same
algorithm evaluated exactly on the absolute values of the operands and of every constant
matrix entry (no cancellation: the sum of the monomials' moduli), and ``D`` the longest
chain of roundings, counted from the lowering's own matrices: per stage, a row of ``n``
stored nonzero coefficients adds ``n - 1`` additions (any order), one rounding for a
product unless the coefficient is a power of two, and one or two for a coefficient stored
inexactly (its relative error over ``u``, rounded up); a product of two computed values
adds one, a channel sum of ``C_g`` products ``C_g``.

- summing lowerings (``shift``, ``patches``, ``hybrid``, ``direct``, ``scatter``,
  ``toeplitz`` (whose band's zeros add exact zeros), and
  ``pallas`` where registered: each output a sum of the ``K = prod(window) C_g`` products
  ``x w``, in some order): ``D = K``, ``y_abs = sum |x| |w|`` (eq. (3.5));
- ``winograd``/``winograd4``, ``y = A^T [sum_c (G w_c G^T) (.) (B^T d_c B)] A`` as three
  GEMMs with the Kronecker matrices ``B^T (x) B^T``, ``G (x) G``, ``A^T (x) A^T``:
  ``D = D_B + D_G + C_g + D_A``, ``y_abs = |A^T| [sum_c (|G| |w_c| |G^T|) (.) (|B^T| |d_c|
  |B|)] |A|``; in 1-D, F(2, 3) with ``B^T``, ``G``, ``A^T`` themselves (``D = C_g + 5``);
- ``dft`` (per tile: real DFT matrix ``B``, the kernel's spectrum through ``cos``/``sin``
  rows, the 2x2 real mixing over ``(Re, Im) x C_g``, inverse matrix ``A``):
  ``D = D_B + D_W + 2 C_g + D_A``, ``y_abs`` the tiles evaluated with ``|B|``, ``|cos|``,
  ``|sin|``, ``|A|``. Entries that are zero in exact arithmetic but a rounding residue
  (about 1e-16) in the stored matrices add the terms they make, bounded by ``y_abs``
  evaluated with and without them;
- ``polyphase``: each output is one phase's output (the phases' sum adds zeros), so its
  bound is that of the lowering that runs its phase (`polyphase.phase_lowering`);
- ``atrous``: each output is one output of its inner convolution over the phase images
  (the split and interleave only move values), so its bound is the inner lowering's
  (`atrous.inner_lowering`) on the phase images.

Normwise bound (``fft``, per output map, in the 2-norm over its positions): Theorem 24.2
(radix-2 Cooley-Tukey: ``||fl(FFT x) - FFT x|| <= (S eta / (1 - S eta)) ||FFT x||``,
``eta = mu + gamma_4 (sqrt 2 + mu)``, ``mu = u`` the twiddles' error, ``S = log2 n``
stages) with the stages of a 2-3-5-smooth length counted as ``S = sum_p s_p`` over its
prime factors, ``s_2 = 1``, ``s_3 = 3``, ``s_5 = 4`` (a radix-p pass computed as a p-point
DFT, with its constants and twiddles stored to ``mu``, has normwise error at most
``(sqrt 2 gamma_{p+1} + mu) sqrt p + mu + sqrt 2 gamma_2 <= s_p eta``, Lemma 3.5), one
transform per axis (``prod_i (1 + eps_i) - 1``). This models the FFT library (mixed-radix
real transforms) after the radix-2 analysis; the real transforms are taken to be as accurate
as the complex ones. Composed: with
``eps`` the transforms' bound, ``eps_i = (1 + eps)(1 + u) - 1`` the inverse's (its
``1/L``), ``gamma = sqrt 2 gamma_{C_g + 2}`` the complex channel sum's (Lemma 3.5) and,
over the channels ``c`` of each output feature, ``A1 = sum ||x_c||_2 ||w_c||_1``,
``A2 = sum ||x_c||_2 ||w_c||_2``, ``A3 = sum ||x_c||_1 ||w_c||_2`` (``x_c`` the padded
input, Parseval and Young's inequality ``||x * w||_2 <= ||x||_2 ||w||_1``):

    ||fl(y) - y||_2 <= sqrt 2 (1 + eps_i) E + eps_i A1,
    E = (gamma (1 + eps) + eps) (A1 + eps sqrt(L) A2) + eps A3,

``sqrt 2`` for the Hermitian extension of the half spectrum, ``L = prod(lengths)``.

The evaluations run in float64 and are multiplied by ``1 + 2**-30`` to cover their own
rounding (chains below 2**22 roundings at ``2**-53``).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from .._spec import ConvSpec, canonical_layouts
from ..strategies import STRATEGIES, atrous, dft, fft, polyphase, winograd, winograd4
from .error import UNIT_ROUNDOFF, gamma
from .layer import Formula

__all__ = ["SUMMING", "ErrorBound", "accumulation_dtype", "error_bound"]

SUMMING = ("shift", "accumulate", "patches", "hybrid", "direct", "scatter", "pallas",
           "toeplitz")
"""Lowerings whose outputs are each a sum of the ``K = prod(window) C_g`` products
(``toeplitz`` adds its band's zero products too: exactly, no rounding)."""
SAFETY = 1 + 2.0**-30
"""Factor over the float64 evaluations, covering their own rounding."""
FFT_STAGES = {2: 1, 3: 3, 5: 4}
"""Radix-2 stages of Theorem 24.2 counted for a pass of each prime radix."""

_U = sp.Symbol("u", positive=True)
_C_IN, _G = sp.Symbol("C_in", positive=True, integer=True), sp.Symbol("g", positive=True,
                                                                        integer=True)
_Y_ABS = sp.Symbol("y_abs", nonnegative=True)
_A1, _A2, _A3 = (sp.Symbol(f"A{j}", nonnegative=True) for j in (1, 2, 3))
_L = sp.Symbol("L", positive=True, integer=True)
_S = sp.Symbol("S", positive=True, integer=True)
_EPS = sp.Symbol("epsilon", nonnegative=True)
_U_OUT = sp.Symbol("u_out", positive=True)


def accumulation_dtype(dtype: str) -> str:
    """The dtype a lowering computes in for operands of ``dtype`` (the engine's: float32
    for the 16-bit floats, whose results are rounded back to them)."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype


@dataclass(frozen=True)
class ErrorBound:
    """One lowering's forward error bound on one `ConvSpec` in one dtype.

    ``kind`` is ``"componentwise"`` (``|fl(y) - y| <= factor * y_abs`` per output) or
    ``"normwise"`` (on the 2-norm of each output map's error); ``depth`` the ``D`` of
    ``gamma_D`` (None for ``fft``); ``formula`` the bound in SymPy (``u``, ``C_in``, ``g``
    and the data-dependent ``y_abs`` or ``A1``, ``A2``, ``A3``) with its value at the
    spec's numbers; ``scale`` says what the factor multiplies; ``parts`` the sub-formulas
    the formula names (``fft``: ``epsilon``, the transforms' normwise bound, at one axis of
    ``S`` stages; its value is over every axis); ``phases`` (``polyphase``) each output
    phase's bound; ``inner`` (``atrous``) its inner convolution's. `evaluate` gives numbers.
    """

    lowering: str
    kind: str
    depth: int | None
    formula: Formula
    scale: str
    spec: ConvSpec = field(repr=False)
    dtype: str = "float32"
    phases: tuple[tuple[tuple[int, ...], ErrorBound], ...] = field(default=(), repr=False)
    parts: tuple[Formula, ...] = field(default=(), repr=False)
    inner: ErrorBound | None = field(default=None, repr=False)

    def evaluate(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The bound for operands ``x`` and ``w`` in the spec's (user) layouts:
        componentwise, one bound per output element (``spec.out_shape``, the user's output
        layout); normwise, one bound per output map on the 2-norm of its error over the
        spatial positions, shape ``(N_out, F)``."""
        spec = self.spec
        for name, a, canonical, perm in (("x", x, spec.lhs_shape, spec.lhs_to_canonical),
                                         ("w", w, spec.rhs_shape, spec.rhs_to_canonical)):
            shape = tuple(canonical[perm.index(i)] for i in range(len(perm)))
            if np.shape(a) != shape:
                raise ValueError(f"`{name}` (shape {np.shape(a)}) must have the spec's shape "
                                 f"{shape}.")
        xc = np.transpose(np.asarray(x, np.float64), spec.lhs_to_canonical)
        wc = np.transpose(np.asarray(w, np.float64), spec.rhs_to_canonical)
        b = self.evaluate_canonical(xc, wc)
        return np.transpose(b, spec.canonical_to_out) if self.kind == "componentwise" else b

    def evaluate_canonical(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """`evaluate` on canonical float64 operands ``(N, *in, C)``, ``(*window, C_g, F)``;
        componentwise bounds come as ``(N_out, *out, F)``."""
        if self.lowering == "polyphase":
            return _polyphase_evaluate(self, x, w)
        if self.inner is not None:
            return _atrous_evaluate(self, self.inner, x, w)
        if self.lowering == "fft":
            return _fft_evaluate(self, x, w)
        factor = float(sp.sympify(self.formula.value).subs(_Y_ABS, 1))
        acc = accumulation_dtype(self.dtype)
        if math.isinf(factor):  # D u >= 1: no a-priori bound
            return np.full(self.spec.canonical_out_shape, np.inf)
        if self.lowering in SUMMING:
            return factor * _sum_abs(self.spec, _padded(self.spec, np.abs(x)), np.abs(w))
        if self.lowering in ("winograd", "winograd4"):
            mats = _winograd_matrices(self.lowering, acc, self.spec.num_spatial)[1]
            return factor * _winograd_abs(self.spec, np.abs(x), np.abs(w), mats)
        return _dft_evaluate(self, factor, np.abs(x), np.abs(w))


def error_bound(
    lowering: str, spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32
) -> ErrorBound:
    """The forward error bound of `lowering` (a key of `jconv.strategies.STRATEGIES`) on
    `spec` with arithmetic in `dtype` (the module docstring derives each one).

    >>> spec = ConvSpec.from_lax((1, 8, 8, 16), (3, 3, 16, 4), (1, 1), "SAME",
    ...                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    >>> b = error_bound("winograd", spec)
    >>> b.kind, b.depth, str(b.formula.expr)
    ('componentwise', 35, 'u*y_abs*(C_in/g + 19)/(-u*(C_in/g + 19) + 1)')
    >>> error_bound("shift", spec).depth
    144
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"`spec` (={spec!r}) must be a jconv.ConvSpec.")
    if lowering not in STRATEGIES:
        raise ValueError(f"`lowering` (={lowering!r}) must be one of {sorted(STRATEGIES)}.")
    name = jnp.dtype(dtype).name
    if name not in UNIT_ROUNDOFF:
        raise ValueError(f"`dtype` (={name}) must be one of {sorted(UNIT_ROUNDOFF)}.")
    why = STRATEGIES[lowering].applicable(spec, dtype)
    if why is not None:
        raise ValueError(f"`lowering` (={lowering!r}) cannot run `spec`: {why}.")
    acc = accumulation_dtype(name)
    u, v = UNIT_ROUNDOFF[acc], UNIT_ROUNDOFF[name] if acc != name else sp.Integer(0)
    cg = spec.group_in_features
    fixed = {_C_IN: spec.in_features, _G: spec.feature_group_count, _U: u, _U_OUT: v}
    if lowering in SUMMING:
        d_expr: sp.Expr = spec.taps * _C_IN / _G
        return _componentwise(lowering, spec, name, d_expr, fixed, "sum_j |x_j| |w_j|")
    if lowering in ("winograd", "winograd4"):
        depth = _winograd_matrices(lowering, acc, spec.num_spatial)[0]
        return _componentwise(lowering, spec, name, depth + _C_IN / _G, fixed,
                              "|A^T| [sum_c (|G| |w_c| |G^T|) (.) (|B^T| |d_c| |B|)] |A|"
                              if spec.num_spatial == 2 else
                              "|A^T| [sum_c (|G| |w_c|) (.) (|B^T| |d_c|)]")
    if lowering == "dft":
        depth = _dft_depth(spec, acc)
        return _componentwise(lowering, spec, name, depth + 2 * _C_IN / _G, fixed,
                              "the DFT tiles on |x|, |w| and the matrices' moduli")
    if lowering == "fft":
        lengths = tuple(fft.fast_length(p) for p in spec.padded_in)
        stages = [sum(FFT_STAGES[p] * m for p, m in _factor(n).items()) for n in lengths]
        eps_value = sp.Mul(*(1 + _fft_eps(sp.Integer(s), u) for s in stages)) - 1
        if not all(float(_fft_eps(sp.Integer(s), u)) < 1 for s in stages) or (cg + 2) * u >= 1:
            value: sp.Expr = sp.oo
        else:
            value = sp.N(_fft_expr(_EPS, _L, v != 0).xreplace(
                {**fixed, _L: math.prod(lengths), _EPS: eps_value}), 20)
        eps = Formula("epsilon", _fft_eps(_S, _U), sp.N(eps_value, 20))
        return ErrorBound(lowering, "normwise", None,
                          Formula("error_bound", _fft_expr(_EPS, _L, v != 0), value),
                          "A1, A2, A3: sums over channels of norms of x_c and w_c", spec, name,
                          parts=(eps,))
    if lowering == "atrous":
        return _atrous_bound(spec, name)
    return _polyphase_bound(spec, name)


# ------------------------------------------------------------------ shared pieces
def _componentwise(lowering: str, spec: ConvSpec, dtype: str, d_expr: sp.Expr,
                   fixed: dict[sp.Symbol, int | sp.Expr], scale: str) -> ErrorBound:
    """``gamma_D y_abs`` with ``D = d_expr`` (of ``C_in``, ``g``), or ``(gamma_D (1 + u_out)
    + u_out) y_abs`` when the result is rounded to a narrower dtype (``|y| <= y_abs``); oo
    when ``D u >= 1``."""
    depth = int(d_expr.xreplace(fixed))
    u, v = fixed[_U], fixed[_U_OUT]
    gam = d_expr * _U / (1 - d_expr * _U)
    expr = (gam * (1 + _U_OUT) + _U_OUT if v else gam) * _Y_ABS
    value = ((gamma(depth, u) * (1 + v) + v) * _Y_ABS if depth * u < 1 else sp.oo * _Y_ABS)
    return ErrorBound(lowering, "componentwise", depth, Formula("error_bound", expr, value),
                      scale, spec, dtype)


def _factor(n: int) -> dict[int, int]:
    """Prime factorisation of a 2-3-5-smooth ``n``."""
    out: dict[int, int] = {}
    for p in FFT_STAGES:
        while n % p == 0:
            n //= p
            out[p] = out.get(p, 0) + 1
    if n != 1:
        raise ValueError(f"`n` has a prime factor outside {sorted(FFT_STAGES)}: {n}.")
    return out


def _padded(spec: ConvSpec, x: np.ndarray) -> np.ndarray:
    """``(N, *in, C) -> (N, *padded, C)``: lhs dilation and padding (negative crops)."""
    src, dst = [], []
    for (lo, _), ld, size, p in zip(spec.padding, spec.lhs_dilation, x.shape[1:-1],
                                    spec.padded_in, strict=True):
        i = np.array([i for i in range(size) if 0 <= lo + ld * i < p], dtype=np.intp)
        src.append(i)
        dst.append(lo + ld * i)
    out = np.zeros((x.shape[0], *spec.padded_in, x.shape[-1]), x.dtype)
    n, c = np.arange(x.shape[0]), np.arange(x.shape[-1])
    out[np.ix_(n, *dst, c)] = x[np.ix_(n, *src, c)]
    return out


def _grouped(spec: ConvSpec, xs: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """``sum_{c in the group of f} xs[b(f) n, ..., c] ws[c, f]``: ``xs (N, *sp, C)``,
    ``ws (C_g, F)`` -> ``(N_out, *sp, F)``."""
    b, g = spec.batch_group_count, spec.feature_group_count
    n, c, f = xs.shape[0], xs.shape[-1], ws.shape[-1]
    xg = xs.reshape(b, n // b, *xs.shape[1:-1], g, c // g)
    wg = ws.reshape(c // g, b, g, f // (b * g))
    y = np.einsum("bn...gc,cbgf->n...bgf", xg, wg)
    return y.reshape(*y.shape[:-3], f)


def _sum_abs(spec: ConvSpec, xp: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_{k, c} xp[n, o s + k d, c] w[k, c, f]`` on the padded input, float64, times
    `SAFETY`: ``(N_out, *out, F)``."""
    y = np.zeros(spec.canonical_out_shape)
    for k in itertools.product(*(range(v) for v in spec.window)):
        sl = tuple(slice(ki * d, ki * d + (o - 1) * s + 1, s) for ki, d, o, s in zip(
            k, spec.rhs_dilation, spec.out_spatial, spec.window_strides, strict=True))
        y += _grouped(spec, xp[(slice(None), *sl)], w[k])
    return y * SAFETY


def _coefficient_roundings(f: np.ndarray, exact: np.ndarray, err: np.ndarray,
                           u: float) -> np.ndarray:
    """Roundings a stored coefficient ``f`` adds to a term: 1 for its product unless ``|f|``
    is a power of two, plus ``ceil(rho / u)`` for its relative error ``rho`` against the
    exact value (known to within ``err``; 0 when ``f`` is exact). Zero-valued exact
    coefficients get only the product's rounding."""
    mant = np.frexp(np.abs(f))[0]
    product = np.where((f == 0) | (mant == 0.5), 0, 1)
    rho = (np.abs(f - exact) + err) / np.maximum(np.abs(exact) - err, 1e-300)
    stored = np.where((f == exact) & (err == 0), 0, np.ceil(rho / u + 1e-9))
    return product + np.where(exact == 0, 0, stored).astype(int)


def _stage_depth(f: np.ndarray, roundings: np.ndarray, axes: tuple[int, ...]) -> int:
    """Longest chain through one stage contracting ``axes`` of the stored matrix ``f``:
    per row, ``nnz - 1`` additions plus the largest coefficient rounding."""
    nz = f != 0
    adds = nz.sum(axis=axes) - 1
    coef = np.where(nz, roundings, 0).max(axis=axes)
    return int(np.max(np.where(adds >= 0, adds + coef, 0)))


# ------------------------------------------------------------------ winograd
@functools.cache
@functools.lru_cache(maxsize=16)
def _winograd_matrices(lowering: str, acc: str, rank: int = 2
                       ) -> tuple[int, tuple[np.ndarray, ...]]:
    """``D_B + D_G + D_A`` in ``acc`` arithmetic and the moduli of the exact Kronecker
    matrices ``(B^T (x) B^T, G (x) G, A^T (x) A^T)`` (float64, with `SAFETY`); in 1-D
    (``rank = 1``) of ``B^T``, ``G``, ``A^T`` themselves."""
    mod: ModuleType = winograd if lowering == "winograd" else winograd4
    depth, mats = 0, []
    for m in (mod.BT, mod.G, mod.AT):
        exact_1d = [[Fraction(v).limit_denominator(10**6) for v in row] for row in m]
        if any(float(e) != v for row, er in zip(m, exact_1d, strict=True)
               for v, e in zip(row, er, strict=True)):
            raise ValueError(f"`{lowering}` matrices are not small rationals.")
        if rank == 1:  # the 1-D lowering multiplies by each entry in the accumulation dtype
            exact = exact_1d
            f = m.astype(acc).astype(np.float64)
        else:  # the 2-D lowering stores np.kron of the float64 matrices in that dtype
            exact = [[a * b for a in ra for b in rb] for ra in exact_1d for rb in exact_1d]
            f = np.kron(m, m).astype(acc).astype(np.float64)
        rows, cols = f.shape
        e_flat = [[exact[r][c] for c in range(cols)] for r in range(rows)]
        e64 = np.array([[float(v) for v in row] for row in e_flat])
        err = np.array([[float(abs(Fraction(float(v)) - v)) * 2 for v in row]
                        for row in e_flat])
        rnd = _coefficient_roundings(f, e64, err, float(UNIT_ROUNDOFF[acc]))
        depth += _stage_depth(f, rnd, (1,))
        mats.append(np.abs(e64) * SAFETY)
    return depth, tuple(mats)


def _winograd_abs(spec: ConvSpec, x: np.ndarray, w: np.ndarray,
                  mats: tuple[np.ndarray, ...]) -> np.ndarray:
    """The F(m x m, 3x3) (or F(m, 3)) tiles evaluated on ``|x|``, ``|w|`` with the
    matrices' moduli."""
    if spec.num_spatial == 1:
        return _winograd_abs_1d(spec, x, w, mats)
    bb, gg, aa = mats
    m2, a2 = aa.shape
    m, a = math.isqrt(m2), math.isqrt(a2)
    xp = _padded(spec, x)
    n, ho, wo = xp.shape[0], *spec.out_spatial
    th, tw = -(-ho // m), -(-wo // m)
    g, cg, fq = spec.feature_group_count, spec.group_in_features, spec.group_out_features
    full = np.zeros((n, m * th + 2, m * tw + 2, xp.shape[-1]))
    hh, ww = min(xp.shape[1], full.shape[1]), min(xp.shape[2], full.shape[2])
    full[:, :hh, :ww] = xp[:, :hh, :ww]
    win = np.lib.stride_tricks.sliding_window_view(full, (a, a), axis=(1, 2))[:, ::m, ::m]
    d = win.reshape(n, th, tw, g, cg, a * a)  # (N, Th, Tw, C, a, a) -> points last
    v = np.einsum("pq,nijgcq->nijgcp", bb, d)
    uw = np.einsum("pk,kcgf->pcgf", gg, w.reshape(9, cg, g, fq))
    prod = np.einsum("nijgcp,pcgf->nijpgf", v, uw)
    y = np.einsum("sp,nijpgf->nijsgf", aa, prod).reshape(n, th, tw, m, m, g * fq)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, m * th, m * tw, g * fq)
    return y[:, :ho, :wo] * SAFETY


def _winograd_abs_1d(spec: ConvSpec, x: np.ndarray, w: np.ndarray,
                     mats: tuple[np.ndarray, ...]) -> np.ndarray:
    """`_winograd_abs` of F(m, 3): tiles of ``a`` samples every ``m``."""
    bb, gg, aa = mats
    m, a = aa.shape
    xp = _padded(spec, x)
    n, (o,) = xp.shape[0], spec.out_spatial
    t = -(-o // m)
    g, cg, fq = spec.feature_group_count, spec.group_in_features, spec.group_out_features
    full = np.zeros((n, m * t + a - m, xp.shape[-1]))
    ll = min(xp.shape[1], full.shape[1])
    full[:, :ll] = xp[:, :ll]
    win = np.lib.stride_tricks.sliding_window_view(full, a, axis=1)[:, ::m]  # (N, T, C, a)
    d = win.reshape(n, t, g, cg, a)
    v = np.einsum("pq,ngcq->ngcp", bb, d.reshape(n * t, g, cg, a))
    uw = np.einsum("pk,kcgf->pcgf", gg, w.reshape(3, cg, g, fq))
    prod = np.einsum("rgcp,pcgf->rpgf", v, uw)
    y = np.einsum("sp,rpgf->rsgf", aa, prod).reshape(n, t * m, g * fq)
    return y[:, :o] * SAFETY


# ------------------------------------------------------------------ dft
def _trig(m: np.ndarray, t: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``cos`` or ``-sin`` of ``2 pi m / t`` (integers ``m``): float64 values from the
    reduced angle and their error bound (0 where the value is rational: 0, +-1/2, +-1)."""
    r = np.mod(m, t)
    twelfths = 12 * r
    on = twelfths % t == 0
    j = np.where(on, twelfths // t, 0)
    cos_rat = {0: 1.0, 2: 0.5, 3: 0.0, 4: -0.5, 6: -1.0, 8: -0.5, 9: 0.0, 10: 0.5}
    jj = j if kind == "cos" else (j - 3) % 12  # sin(30 j) = cos(30 (j - 3))
    rational = on & np.isin(jj, list(cos_rat))
    exact = np.vectorize(lambda k: cos_rat.get(int(k), 0.0), otypes=[float])(jj)
    approx = np.cos(2 * np.pi * r / t) if kind == "cos" else -np.sin(2 * np.pi * r / t)
    value = np.where(rational, exact if kind == "cos" else -exact, approx)
    return value, np.where(rational, 0.0, 2.0**-48)


@functools.lru_cache(maxsize=64)
def _dft_parts(spec: ConvSpec,
               acc: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per matrix of the `dft` lowering: (values stored in ``acc``, exact values to within
    ``err``, ``err``), for ``B (T, T/2, 2)``, ``A (T/2, 2, step)``, ``cos``/``-sin`` rows
    ``(T/2 + 1, k)`` (the stored ones built as the lowering builds them)."""
    t = dft.tile_length(spec)
    assert t is not None
    (k,), (keff,), (dil,) = spec.window, spec.effective_window, spec.rhs_dilation
    step, h = t - keff + 1, t // 2
    ang = 2 * np.pi * np.outer(np.arange(t), np.arange(h)) / t
    b = np.stack([np.cos(ang), -np.sin(ang)], axis=-1)
    b[:, 0, 1] = np.cos(np.pi * np.arange(t))
    mb = np.outer(np.arange(t), np.arange(h))
    bc, bce = _trig(mb, t, "cos")
    bs, bse = _trig(mb, t, "sin")
    be, berr = np.stack([bc, bs], -1), np.stack([bce, bse], -1)
    pair0, _ = _trig(np.arange(t) * h, t, "cos")  # cos(pi t) = cos(2 pi (h t) / T)
    be[:, 0, 1], berr[:, 0, 1] = pair0, 0.0
    ang = 2 * np.pi * np.outer(np.arange(h), np.arange(step)) / t
    a = np.stack([2 * np.cos(ang), -2 * np.sin(ang)], axis=1) / t
    a[0, 0], a[0, 1] = 1 / t, np.cos(np.pi * np.arange(step)) / t
    ma = np.outer(np.arange(h), np.arange(step))
    (ac, ace), (as_, ase) = _trig(ma, t, "cos"), _trig(ma, t, "sin")
    ae, aerr = 2 * np.stack([ac, as_], axis=1) / t, 2 * np.stack([ace, ase], axis=1) / t
    ae[0, 0], aerr[0, 0] = 1 / t, 0.0
    ae[0, 1], aerr[0, 1] = _trig(np.arange(step) * h, t, "cos")[0] / t, 0.0
    # 1/t, x/t: exact in float64 when t is a power of two; else within 2**-52 relative
    if t & (t - 1):
        aerr = aerr + np.abs(ae) * 2.0**-52
    ang = 2 * np.pi * np.outer(np.arange(h + 1), np.arange(k) * dil) / t
    mw = np.outer(np.arange(h + 1), np.arange(k) * dil)
    (wce, wcerr), (wse, wserr) = _trig(mw, t, "cos"), _trig(mw, t, "sin")
    b, a, wc, ws = (v.astype(acc).astype(np.float64)
                    for v in (b, a, np.cos(ang), -np.sin(ang)))
    return {"B": (b, be, berr), "A": (a, ae, aerr), "cos": (wc, wce, wcerr),
            "sin": (ws, wse, wserr)}


def _dft_depth(spec: ConvSpec, acc: str) -> int:
    """``D_B + D_W + D_A`` of `dft` (the mixing's ``2 C_g`` is added symbolically)."""
    u = float(UNIT_ROUNDOFF[acc])
    parts = _dft_parts(spec, acc)
    depth = 0
    for name, axes in (("B", (0,)), ("A", (0, 1)), ("cos", (1,))):
        f, e, err = parts[name]
        rnd = _coefficient_roundings(f, e, err, u)
        if name == "cos":
            fs, es, errs = parts["sin"]
            depth += max(_stage_depth(f, rnd, (1,)),
                         _stage_depth(fs, _coefficient_roundings(fs, es, errs, u), (1,)))
        else:
            depth += _stage_depth(f, rnd, axes)
    return depth


def _dft_abs(spec: ConvSpec, x: np.ndarray, w: np.ndarray,
             mats: dict[str, np.ndarray]) -> np.ndarray:
    """The `dft` tiles evaluated on ``|x|``, ``|w|`` with the given matrix moduli."""
    t = dft.tile_length(spec)
    assert t is not None
    (keff,), (out,) = spec.effective_window, spec.out_spatial
    step, h = t - keff + 1, t // 2
    n, g = spec.batch, spec.feature_group_count
    cg, fq = spec.group_in_features, spec.group_out_features
    tiles = -(-out // step)
    xp = _padded(spec, x)
    full = np.zeros((n, (tiles + 1) * step, xp.shape[-1]))
    m = min(full.shape[1], xp.shape[1])
    full[:, :m] = xp[:, :m]
    xt = np.stack([full[:, i * step: i * step + t] for i in range(tiles)], axis=1)
    v = np.einsum("nitc,thu->nihuc", xt, mats["B"]).reshape(n, tiles, h, 2, g, cg)
    re = np.einsum("qj,jcf->qcf", mats["cos"], w).reshape(h + 1, cg, g, fq)
    im = np.einsum("qj,jcf->qcf", mats["sin"], w).reshape(h + 1, cg, g, fq)
    kmat = np.stack([np.stack([re[:h], im[:h]], 2), np.stack([im[:h], re[:h]], 2)], 1)
    kmat[0] = 0.0
    kmat[0, 0, :, 0], kmat[0, 1, :, 1] = re[0], re[h]  # (T/2, u, C_g, v, G, F_q)
    mix = np.einsum("hucvgf,nihugc->nihvgf", kmat, v)
    y = np.einsum("hvs,nihvgf->nisgf", mats["A"], mix).reshape(n, tiles * step, g * fq)
    return y[:, :out] * SAFETY


def _dft_evaluate(bound: ErrorBound, factor: float, x: np.ndarray,
                  w: np.ndarray) -> np.ndarray:
    """``gamma_D y_abs`` plus the terms of the exactly-zero entries stored nonzero: those
    terms' sum is at most ``y_abs(with them) - y_abs(without them)`` (float64, so plus
    ``2 * 2**-30 y_abs`` for the two evaluations' own rounding)."""
    parts = _dft_parts(bound.spec, accumulation_dtype(bound.dtype))
    full, zeroed = {}, {}
    for name, (f, e, err) in parts.items():
        modulus = (np.abs(e) + err) * SAFETY
        full[name] = np.where(e == 0, np.abs(f), modulus)
        zeroed[name] = np.where(e == 0, 0.0, modulus)
    y_full = _dft_abs(bound.spec, x, w, full)
    if all(np.array_equal(full[k], zeroed[k]) for k in full):
        return factor * y_full
    y0 = _dft_abs(bound.spec, x, w, zeroed)
    return factor * y_full + np.maximum(y_full - y0, 0.0) + 2 * 2.0**-30 * y_full


# ------------------------------------------------------------------ fft
def _fft_eps(stages: sp.Expr, u: sp.Expr) -> sp.Expr:
    """Theorem 24.2's ``S eta / (1 - S eta)``, ``eta = mu + gamma_4 (sqrt 2 + mu)``,
    ``mu = u``."""
    eta = u + 4 * u / (1 - 4 * u) * (sp.sqrt(2) + u)
    return stages * eta / (1 - stages * eta)


def _fft_expr(eps: sp.Expr, length: sp.Expr, rounded: bool) -> sp.Expr:
    """The composed normwise bound (module docstring) of ``A1``, ``A2``, ``A3``; when the
    result is ``rounded`` to a narrower dtype, ``B (1 + u_out) + u_out A1``."""
    cg = _C_IN / _G
    gam = sp.sqrt(2) * (cg + 2) * _U / (1 - (cg + 2) * _U)
    eps_i = (1 + eps) * (1 + _U) - 1
    e = (gam * (1 + eps) + eps) * (_A1 + eps * sp.sqrt(length) * _A2) + eps * _A3
    bound = sp.sqrt(2) * (1 + eps_i) * e + eps_i * _A1
    return bound * (1 + _U_OUT) + _U_OUT * _A1 if rounded else bound


def _fft_evaluate(bound: ErrorBound, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(N_out, F)``: the normwise bound of each output map."""
    spec = bound.spec
    xp = _padded(spec, x)
    axes = tuple(range(1, spec.num_spatial + 1))
    x2, x1 = np.sqrt(np.sum(xp * xp, axis=axes)), np.sum(np.abs(xp), axis=axes)
    waxes = tuple(range(spec.num_spatial))
    w2, w1 = np.sqrt(np.sum(w * w, axis=waxes)), np.sum(np.abs(w), axis=waxes)
    a = {_A1: _grouped(spec, x2, w1), _A2: _grouped(spec, x2, w2), _A3: _grouped(spec, x1, w2)}
    if bound.formula.value == sp.oo:
        return np.full(a[_A1].shape, np.inf)
    fn = sp.lambdify([_A1, _A2, _A3], bound.formula.value, "numpy")
    return np.asarray(fn(a[_A1], a[_A2], a[_A3]), np.float64) * SAFETY


# ------------------------------------------------------------------ polyphase
@dataclass(frozen=True)
class _Phase:
    """Per axis: first tap ``k0``, taps, offset ``c`` into the real samples, outputs."""

    k0: tuple[int, ...]
    taps: tuple[int, ...]
    start: tuple[int, ...]
    outs: tuple[int, ...]


def _phases(spec: ConvSpec) -> list[tuple[tuple[int, ...], _Phase]]:
    """The live output phases ``r`` of a lhs-dilated stride-1 convolution: outputs
    ``s q + r`` are ``sum_m xs[q + c + m] w[k0 + s m]`` with ``xs[i] = xp[b + s i]``,
    ``b = lo mod s``, ``k0 = (b - r) mod s``, ``c = (r + k0 - b) / s``."""
    out = []
    for r in itertools.product(*(range(s) for s in spec.lhs_dilation)):
        k0s, taps, starts, outs = [], [], [], []
        for ri, s, (lo, _), k, o in zip(r, spec.lhs_dilation, spec.padding, spec.window,
                                        spec.out_spatial, strict=True):
            b = lo % s
            k0 = (b - ri) % s
            k0s.append(k0)
            taps.append(max(-(-(k - k0) // s), 0))
            starts.append((ri + k0 - b) // s)
            outs.append(max(-(-(o - ri) // s), 0))
        if all(t > 0 and o > 0 for t, o in zip(taps, outs, strict=True)):
            out.append((r, _Phase(tuple(k0s), tuple(taps), tuple(starts), tuple(outs))))
    return out


def _phase_spec(spec: ConvSpec, ph: _Phase) -> ConvSpec:
    """The VALID stride-1 convolution of one phase, canonical layouts."""
    return ConvSpec.from_lax(
        (spec.batch, *(o + t - 1 for t, o in zip(ph.taps, ph.outs, strict=True)),
         spec.in_features),
        (*ph.taps, *spec.rhs_shape[-2:]), (1,) * spec.num_spatial, "VALID",
        dimension_numbers=canonical_layouts(spec.num_spatial),
        feature_group_count=spec.feature_group_count)


def _polyphase_bound(spec: ConvSpec, dtype: str) -> ErrorBound:
    """Each phase's bound, by the lowering `polyphase.phase_lowering` picks for it."""
    names = {m: k for k, m in STRATEGIES.items()}
    phases = []
    for r, ph in _phases(spec):
        sub = _phase_spec(spec, ph)
        phases.append((r, error_bound(names[polyphase.phase_lowering(sub, dtype)], sub, dtype)))
    kinds = {b.kind for _, b in phases}
    kind = "componentwise" if kinds <= {"componentwise"} else "normwise"
    exprs = [b.formula.expr for _, b in phases] or [sp.Integer(0)]
    values = [b.formula.value for _, b in phases] or [sp.Integer(0)]
    depths = [b.depth for _, b in phases if b.depth is not None]
    lowerings = sorted({b.lowering for _, b in phases})
    return ErrorBound("polyphase", kind, max(depths) if depths and kind == "componentwise"
                      else None, Formula("error_bound", sp.Max(*exprs), sp.Max(*values)),
                      f"each phase's own bound ({', '.join(lowerings) or 'no phase'})", spec,
                      dtype, tuple(phases))


def _polyphase_evaluate(bound: ErrorBound, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Phase bounds on each phase's samples and sub-kernel, interleaved (componentwise) or
    combined as ``sqrt(sum_r B_r^2)`` per output map (normwise)."""
    spec = bound.spec
    xp = _padded(spec, x)
    xs = xp[(slice(None), *(slice(lo % s, None, s) for (lo, _), s in
                            zip(spec.padding, spec.lhs_dilation, strict=True)))]
    y = np.zeros(spec.canonical_out_shape)
    sq = np.zeros((spec.out_batch, spec.out_features))
    phases = dict(_phases(spec))
    for r, sub_bound in bound.phases:
        ph = phases[r]
        xr = xs[(slice(None), *(slice(c, c + o + t - 1) for c, t, o in
                                zip(ph.start, ph.taps, ph.outs, strict=True)))]
        wr = w[tuple(slice(k0, None, s) for k0, s in zip(ph.k0, spec.lhs_dilation,
                                                          strict=True))]
        b = sub_bound.evaluate_canonical(xr, wr)
        if sub_bound.kind == "componentwise":
            place = (slice(None), *(slice(ri, None, s) for ri, s in
                                    zip(r, spec.lhs_dilation, strict=True)))
            y[place] = b
            b = np.sqrt(np.sum(b * b, axis=tuple(range(1, b.ndim - 1))))
        sq += b * b
    return y if bound.kind == "componentwise" else np.sqrt(sq) * SAFETY



# ------------------------------------------------------------------ atrous
def _atrous_bound(spec: ConvSpec, dtype: str) -> ErrorBound:
    """The inner convolution's bound (`atrous.inner_spec`), by the lowering
    `atrous.inner_lowering` picks for it."""
    names = {m: k for k, m in STRATEGIES.items()}
    inner = atrous.inner_spec(spec)
    b = error_bound(names[atrous.inner_lowering(inner, dtype)], inner, dtype)
    return replace(b, lowering="atrous", spec=spec, inner=b,
                   scale=f"the inner convolution's ({b.lowering}): {b.scale}")


def _atrous_evaluate(bound: ErrorBound, inner: ErrorBound, x: np.ndarray,
                     w: np.ndarray) -> np.ndarray:
    """The inner bound on the phase images (the padded input rounded up to a multiple of
    ``d``, `atrous.round_up`, and split, `atrous.split_phases`, in float64), interleaved
    (`atrous.from_phases`)."""
    spec = bound.spec
    xp = np.pad(_padded(spec, x), [(0, 0), *((0, r) for r in atrous.round_up(spec)), (0, 0)])
    xs = atrous.split_phases(spec, xp)
    return atrous.from_phases(spec, inner.evaluate_canonical(xs, w))
