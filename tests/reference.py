"""An independent float64 NumPy reference for N-D convolution, written from the definition.

``out[n, o, f] = sum_{k, c} x[n, o*s + k*d - p_lo, c] * w[k, c, f]`` where ``x`` is read in
lhs-dilated coordinates (a position ``q`` holds ``x[q // l]`` when ``q % l == 0`` and 0
otherwise) and positions outside ``[0, dilated size)`` read 0. It uses no JAX at all: only
Python loops over output positions, kernel offsets and groups, and a float64 dot over the
channels of one group. Other test modules import it; keep the signature stable.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = ["conv_reference", "rel_err"]


def conv_reference(
    x: np.ndarray,
    w: np.ndarray,
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
    lhs_dil: Sequence[int],
    rhs_dil: Sequence[int],
    fgc: int = 1,
    bgc: int = 1,
) -> np.ndarray:
    """Convolution of ``x (N, *S, C)`` with ``w (*K, C // fgc, F)`` -> ``(N // bgc, *O, F)``.

    Canonical channels-last layout, explicit ``(low, high)`` pads (negative allowed), one
    stride, lhs dilation and rhs dilation per spatial dim. Feature groups split ``C`` and
    ``F`` into ``fgc`` contiguous blocks; batch groups split ``N`` and ``F`` into ``bgc``
    contiguous blocks (output block ``b`` reads batch block ``b``). The result is float64
    (complex128 for complex inputs).
    """
    x = np.asarray(x)
    w = np.asarray(w)
    dt = np.complex128 if np.iscomplexobj(x) or np.iscomplexobj(w) else np.float64
    x, w = x.astype(dt), w.astype(dt)
    n_in, *in_sp, c_in = x.shape
    *win, cg, f_out = w.shape
    nsp = len(in_sp)
    assert len(win) == nsp and len(strides) == len(pads) == len(lhs_dil) == len(rhs_dil) == nsp
    assert c_in == cg * fgc and f_out % (fgc * bgc) == 0 and n_in % bgc == 0
    dil_in = [0 if i == 0 else (i - 1) * ld + 1 for i, ld in zip(in_sp, lhs_dil, strict=True)]
    eff_win = [0 if k == 0 else (k - 1) * d + 1 for k, d in zip(win, rhs_dil, strict=True)]
    padded = [i + lo + hi for i, (lo, hi) in zip(dil_in, pads, strict=True)]
    out_sp = [max((p - k) // s + 1, 0) for p, k, s in zip(padded, eff_win, strides, strict=True)]
    n_out = n_in // bgc
    out = np.zeros((n_out, *out_sp, f_out), dt)
    f_fg = f_out // fgc  # filters per feature group
    f_bg = f_out // bgc  # filters per batch group
    for o in itertools.product(*(range(m) for m in out_sp)):
        for k in itertools.product(*(range(m) for m in win)):
            src = []
            for axis in range(nsp):
                q = o[axis] * strides[axis] + k[axis] * rhs_dil[axis] - pads[axis][0]
                if q < 0 or q >= dil_in[axis] or q % lhs_dil[axis]:
                    break
                src.append(q // lhs_dil[axis])
            else:
                for f in range(f_out):
                    g, b = f // f_fg, f // f_bg
                    xs = x[(slice(b * n_out, (b + 1) * n_out), *src, slice(g * cg, (g + 1) * cg))]
                    out[(slice(None), *o, f)] += xs @ w[(*k, slice(None), f)]
    return out


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """``max |got - want| / max |want|`` in float64 (0 for empty arrays, abs error if want == 0)."""
    got64 = np.asarray(got).astype(np.complex128 if np.iscomplexobj(got) else np.float64)
    want64 = np.asarray(want).astype(np.complex128 if np.iscomplexobj(want) else np.float64)
    assert got64.shape == want64.shape, (got64.shape, want64.shape)
    if want64.size == 0:
        return 0.0
    err = float(np.max(np.abs(got64 - want64)))
    scale = float(np.max(np.abs(want64)))
    return err / scale if scale > 0 else err
