"""The three readings of "what happens to C input maps in a conv layer with F filters".

L layers of k x k filters, F filters each, 'SAME' padding and stride 1 (maps stay H x W),
on C0 input maps. Per example; biases counted (one per output map):

- "sum" (H1, what every framework does): each filter sums its C per-channel correlations,
  so every layer outputs F maps. Weights of layer l: k^2 C_{l-1} F.
- "average" (H2): average the C maps, then F single-channel k x k kernels: F maps, k^2 F
  weights per layer; equal to H1 with tied per-channel kernels w / C.
- "keep" (H3): keep every per-channel map of every filter: a depthwise conv with channel
  multiplier F, C_l = C0 F^l maps, k^2 C_{l-1} F weights.

"activations" counts the elements of all L layer outputs (what backprop stores).
"""

from __future__ import annotations

import sympy as sp

from .geometry import Size

__all__ = ["hypotheses"]


def hypotheses(L: Size, F: Size, C0: Size, H: Size, W: Size, k: Size, *,
               itemsize: int = 4) -> dict[str, dict[str, sp.Expr]]:
    """{"sum"|"average"|"keep": {"channels", "params", "activations", "activation_bytes"}}.

    Closed forms obtained with ``Sum(..., (l, 1, L)).doit()``; "channels" is C_L.

    >>> hypotheses(3, 8, 3, 32, 32, 3)["keep"]["channels"]
    1536
    """
    l_ = sp.Symbol("l", integer=True, positive=True)
    L_, F_, C0_, H_, W_, k_ = (sp.sympify(v) for v in (L, F, C0, H, W, k))

    def c_sum(layer: sp.Expr) -> sp.Expr:
        return sp.Piecewise((C0_, sp.Eq(layer, 0)), (F_, True))

    def c_keep(layer: sp.Expr) -> sp.Expr:
        return C0_ * F_**layer

    out: dict[str, dict[str, sp.Expr]] = {}
    # H1: layer 1 sees C0 maps, every later layer F maps.
    params_sum = (k_**2 * C0_ * F_ + F_) + sp.Sum(k_**2 * F_ * F_ + F_, (l_, 2, L_)).doit()
    acts_sum = sp.Sum(H_ * W_ * F_, (l_, 1, L_)).doit()
    out["sum"] = {"channels": c_sum(L_), "params": params_sum, "activations": acts_sum}
    params_avg = sp.Sum(k_**2 * F_ + F_, (l_, 1, L_)).doit()
    out["average"] = {"channels": F_, "params": params_avg, "activations": acts_sum}
    params_keep = sp.Sum(k_**2 * c_keep(l_ - 1) * F_ + c_keep(l_), (l_, 1, L_)).doit()
    acts_keep = sp.Sum(H_ * W_ * c_keep(l_), (l_, 1, L_)).doit()
    out["keep"] = {"channels": c_keep(L_), "params": params_keep, "activations": acts_keep}
    for h in out.values():
        for key in ("channels", "params", "activations"):
            h[key] = sp.simplify(h[key])
        h["activation_bytes"] = h["activations"] * itemsize
    return out
