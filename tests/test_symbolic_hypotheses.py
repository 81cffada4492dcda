"""The three hypotheses of jconv.symbolic.hypotheses against real stacks built with jconv.

H1 "sum": standard conv (each filter sums its per-channel correlations).
H2 "average": mean over channels, then one k x k kernel per filter; the same as a standard
conv whose per-channel kernels are tied (w / C), checked numerically.
H3 "keep": depthwise conv with channel multiplier F (`groups = C`), C_L = C0 * F**L.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp

import jconv
from jconv.symbolic import asymptotic_order, hypotheses


def _measure(kind: str, L: int, F: int, C0: int, H: int, W: int, k: int) -> dict[str, int]:
    """Channels, free parameters and stored activation elements of a real L-layer stack."""
    rng = np.random.default_rng(L)
    x = jnp.asarray(rng.standard_normal((1, H, W, C0)), jnp.float32)
    params = acts = 0
    for _ in range(L):
        c = x.shape[-1]
        b = jnp.asarray(rng.standard_normal((F if kind != "keep" else c * F,)), jnp.float32)
        if kind == "sum":
            w = jnp.asarray(rng.standard_normal((k, k, c, F)), jnp.float32)
            y = jconv.conv(x, w, bias=b)
        elif kind == "average":
            w = jnp.asarray(rng.standard_normal((k, k, 1, F)), jnp.float32)
            y = jconv.conv(jnp.mean(x, axis=-1, keepdims=True), w, bias=b)
            tied = jnp.broadcast_to(w / c, (k, k, c, F))
            np.testing.assert_allclose(jconv.conv(x, tied, bias=b), y, rtol=1e-4, atol=1e-4)
        else:
            w = jnp.asarray(rng.standard_normal((k, k, 1, c * F)), jnp.float32)
            y = jconv.conv(x, w, groups=c, bias=b)
        params += w.size + b.size
        acts += y.size
        x = y
    return {"channels": x.shape[-1], "params": params, "activations": acts,
            "activation_bytes": acts * x.dtype.itemsize}


@pytest.mark.parametrize("kind", ["sum", "average", "keep"])
@pytest.mark.parametrize("L", [1, 2, 3])
def test_hypotheses_equal_measured_stacks(kind: str, L: int) -> None:
    F, C0, H, W, k = 3, 2, 5, 4, 3
    Ls = sp.Symbol("L", integer=True, positive=True)
    formulas = hypotheses(Ls, F, C0, H, W, k)[kind]
    measured = _measure(kind, L, F, C0, H, W, k)
    assert {key: int(e.subs(Ls, L)) for key, e in formulas.items()} == measured
    assert hypotheses(L, F, C0, H, W, k)[kind]["params"] == measured["params"]


def test_orders_h1_linear_h3_exponential() -> None:
    L, k, c, n, m = sp.symbols("L k c n m", integer=True, positive=True)
    h = hypotheses(L, c, c, n, m, k)
    assert asymptotic_order(h["sum"]["params"], L, k, c) == sp.Order(
        L * k**2 * c**2, (L, sp.oo), (k, sp.oo), (c, sp.oo))
    assert asymptotic_order(h["sum"]["activations"], L, n, m, c) == sp.Order(
        L * n * m * c, (L, sp.oo), (n, sp.oo), (m, sp.oo), (c, sp.oo))
    # H3: C_L = C0 * F**L with F = f + 1 >= 2 grows faster than every power L**p
    f, p, C0 = sp.symbols("f p C_0", positive=True)
    c_keep = hypotheses(L, f + 1, C0, n, m, k)["keep"]["channels"]
    assert sp.limit(c_keep / L**p, L, sp.oo) == sp.oo
