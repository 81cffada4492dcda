"""Transposed convolution against lax.conv_transpose, PyTorch and a float64 scatter reference."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

import jconv
from jconv._transpose import conv_transpose, conv_transpose_torch, transpose_padding

TORCH_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def rel(a: object, b: object) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a64.shape == b64.shape, (a64.shape, b64.shape)
    return float(np.max(np.abs(a64 - b64), initial=0.0) / max(np.max(np.abs(b64), initial=0), 1))


def scatter_reference(
    x: np.ndarray, w: np.ndarray, s: tuple, p: tuple, op: tuple, g: int, d: tuple
) -> np.ndarray:
    """PyTorch's transposed conv from its definition: every input pixel scatters its kernel.

    ``out[n, g*Cog + o, i*s + k*d - p] += x[n, g*Cig + c, i] * w[g*Cig + c, o, k]``.
    """
    n, c_in = x.shape[:2]
    c_out_g, window = w.shape[1], w.shape[2:]
    size = [(i - 1) * si - 2 * pi + di * (k - 1) + oi + 1
            for i, k, si, pi, oi, di in zip(x.shape[2:], window, s, p, op, d, strict=True)]
    out = np.zeros((n, g * c_out_g, *size))
    cig = c_in // g
    for idx in itertools.product(*(range(i) for i in x.shape[2:])):
        for k in itertools.product(*(range(kk) for kk in window)):
            pos = [i * si + kk * di - pi for i, kk, si, di, pi in zip(idx, k, s, d, p, strict=True)]
            if any(q < 0 or q >= sz for q, sz in zip(pos, size, strict=True)):
                continue
            for gi in range(g):
                xs = x[(slice(None), slice(gi * cig, (gi + 1) * cig), *idx)].astype(np.float64)
                ws = w[(slice(gi * cig, (gi + 1) * cig), slice(None), *k)].astype(np.float64)
                out[(slice(None), slice(gi * c_out_g, (gi + 1) * c_out_g), *pos)] += xs @ ws
    return out


def _rand(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ lax convention
LAX_CASES = [
    # (lhs, rhs, strides, padding, rhs_dilation, dimension_numbers, transpose_kernel, consistent)
    ((2, 5, 3), (3, 3, 4), (2,), "SAME", None, None, False, False),
    ((2, 5, 3), (4, 3, 4), (3,), "VALID", (2,), None, False, False),
    ((1, 5, 6, 3), (3, 3, 3, 2), (2, 2), "SAME", None, None, False, False),
    ((1, 5, 6, 3), (3, 2, 2, 3), (1, 3), "VALID", (2, 1), None, True, False),
    ((1, 5, 6, 3), (3, 3, 3, 2), (2, 1), ((1, 2), (0, 0)), None, None, False, False),
    ((1, 5, 6, 3), (3, 3, 3, 2), (2, 3), ((1, 1), (2, 0)), (1, 2), None, False, True),
    ((1, 5, 6, 3), (3, 3, 2, 3), (2, 2), ((0, 1), (1, 1)), None, None, True, True),
    ((2, 3, 5, 6), (4, 3, 3, 2), (2, 2), "SAME", None, ("NCHW", "OIHW", "NCHW"), False, False),
    ((2, 3, 5, 6), (4, 3, 2, 3), (3, 2), "VALID", None, ("NCHW", "IOHW", "NHWC"), True, False),
    ((1, 4, 3, 5, 2), (2, 3, 2, 2, 3), (2, 1, 2), "SAME", (1, 2, 1), None, False, False),
    ((1, 4, 3, 5, 2), (2, 2, 3, 3, 2), (1, 2, 3), "VALID", None, None, True, False),
    ((1, 2, 3, 4, 2), (2, 2, 2, 2, 3), (2, 2, 2), ((1, 0), (0, 1), (1, 1)), None, None, False,
     True),
]


@pytest.mark.parametrize("case", LAX_CASES, ids=lambda c: f"{c[0]}-{c[2]}-{c[3]}-{c[6]}")
def test_matches_lax_conv_transpose(case: tuple) -> None:
    lhs_s, rhs_s, strides, padding, rdil, dn, tk, ucp = case
    rng = np.random.default_rng(0)
    x, w = _rand(rng, lhs_s), _rand(rng, rhs_s)
    kw = dict(rhs_dilation=rdil, dimension_numbers=dn, transpose_kernel=tk,
              use_consistent_padding=ucp)
    want = lax.conv_transpose(x, w, strides, padding, precision="highest", **kw)
    got = conv_transpose(x, w, strides, padding, precision="highest", **kw)
    assert rel(got, want) < 1e-5


@given(
    n=st.integers(1, 3),
    strides=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    window=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    dil=st.lists(st.integers(1, 2), min_size=3, max_size=3),
    pad_kind=st.sampled_from(["SAME", "VALID", "pairs", "consistent"]),
    pads=st.lists(st.integers(0, 2), min_size=6, max_size=6),
    tk=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_lax(
    n: int, strides: list, window: list, dil: list, pad_kind: str, pads: list, tk: bool,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    x = _rand(rng, (2, *([4, 3, 3][:n]), 2))
    w = _rand(rng, (*window[:n], *((3, 2) if tk else (2, 3))))
    padding = pad_kind if pad_kind in ("SAME", "VALID") else [
        (pads[2 * i], pads[2 * i + 1]) for i in range(n)]
    kw = dict(rhs_dilation=dil[:n], transpose_kernel=tk,
              use_consistent_padding=pad_kind == "consistent")
    eff = [di * (k - 1) + 1 for k, di in zip(window[:n], dil[:n], strict=True)]
    if pad_kind == "consistent" and any(
        (i - 1) * s + 1 + sum(transpose_padding(k, s, p)) < 0
        for i, s, k, p in zip(x.shape[1:-1], strides, eff, padding, strict=False)
    ):  # the padding would crop more than the dilated input holds: both must refuse
        with pytest.raises(ValueError, match="Negative padding"):
            lax.conv_transpose(x, w, strides[:n], padding, **kw)
        with pytest.raises(ValueError, match=r"`padding` .* crops spatial dimension \d below"):
            conv_transpose(x, w, strides[:n], padding, **kw)
        return
    want = lax.conv_transpose(x, w, strides[:n], padding, precision="highest", **kw)
    got = conv_transpose(x, w, strides[:n], padding, precision="highest", **kw)
    assert rel(got, want) < 1e-5


def test_transpose_padding_is_the_gradient_geometry() -> None:
    """For SAME/VALID the output size is i*s and i*s + max(k-s, 0), lax's promise."""
    for k, s, i in itertools.product(range(1, 6), range(1, 4), range(1, 5)):
        lo, hi = transpose_padding(k, s, "SAME")
        assert (i - 1) * s + 1 + lo + hi - k + 1 == i * s
        lo, hi = transpose_padding(k, s, "VALID")
        assert (i - 1) * s + 1 + lo + hi - k + 1 == i * s + max(k - s, 0)


# ------------------------------------------------------------------ PyTorch convention
TORCH_CASES = [
    # (x shape, w shape, stride, padding, output_padding, groups, dilation)
    ((2, 4, 7), (4, 3, 3), 2, 1, 1, 1, 1),
    ((2, 4, 7), (4, 2, 4), 3, 2, 2, 2, 1),
    ((1, 6, 5), (6, 1, 3), 1, 0, 1, 3, 2),
    ((2, 4, 5, 6), (4, 3, 3, 3), 2, 1, 1, 1, 1),
    ((2, 4, 5, 6), (4, 2, 3, 2), (2, 3), (1, 0), (0, 2), 2, (2, 1)),
    ((1, 3, 8, 8), (3, 5, 5, 5), 1, 5, 0, 1, 1),          # padding > k-1: negative pads
    ((1, 4, 4, 3), (4, 3, 2, 2), 3, 0, 2, 4, 1),          # depthwise-like, groups == C_in
    ((1, 2, 3, 4, 3), (2, 2, 3, 2, 3), (2, 1, 2), (1, 0, 1), (1, 0, 0), 1, (1, 2, 1)),
    ((1, 4, 3, 3, 3), (4, 1, 2, 2, 2), 2, 0, 1, 2, 1),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: f"{c[0]}-s{c[2]}-p{c[3]}-g{c[5]}")
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_torch_conv_transpose(case: tuple, with_bias: bool) -> None:
    xs, ws, s, p, op, g, d = case
    rng = np.random.default_rng(1)
    x, w = _rand(rng, xs), _rand(rng, ws)
    b = _rand(rng, (ws[1] * g,)) if with_bias else None
    n = len(xs) - 2
    want = TORCH_T[n](
        torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b),
        s, p, op, g, d,
    ).numpy()
    got = conv_transpose_torch(x, w, b, s, p, op, g, d, precision="highest")
    assert rel(got, want) < 1e-5


@given(
    n=st.integers(1, 3),
    s=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    k=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    d=st.lists(st.integers(1, 2), min_size=3, max_size=3),
    p=st.lists(st.integers(0, 2), min_size=3, max_size=3),
    op_raw=st.lists(st.integers(0, 2), min_size=3, max_size=3),
    g=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_torch_and_scatter_reference(
    n: int, s: list, k: list, d: list, p: list, op_raw: list, g: int, seed: int
) -> None:
    s, k, d, p = tuple(s[:n]), tuple(k[:n]), tuple(d[:n]), tuple(p[:n])
    op = tuple(o % max(si, di) for o, si, di in zip(op_raw[:n], s, d, strict=True))
    sizes = (3, 2, 2)[:n]
    # keep every output size positive (PyTorch rejects empty outputs)
    p = tuple(min(pi, ((i - 1) * si + di * (ki - 1) + oi) // 2)
              for pi, i, si, di, ki, oi in zip(p, sizes, s, d, k, op, strict=True))
    rng = np.random.default_rng(seed)
    x, w = _rand(rng, (2, 2 * g, *sizes)), _rand(rng, (2 * g, 2, *k))
    got = np.asarray(conv_transpose_torch(x, w, None, s, p, op, g, d, precision="highest"))
    want_t = TORCH_T[n](torch.from_numpy(x), torch.from_numpy(w), None, s, p, op, g, d).numpy()
    assert rel(got, want_t) < 1e-5
    assert rel(got, scatter_reference(x, w, s, p, op, g, d)) < 1e-5


@pytest.mark.parametrize("s,p,op,d,g", [(2, 1, 1, 1, 1), (3, 0, 2, 2, 2), (1, 2, 0, 2, 1)])
def test_torch_convention_is_the_gradient_of_conv(s: int, p: int, op: int, d: int, g: int) -> None:
    """conv_transpose(x, w) == VJP of the forward conv (weight w read as (out, in/g, k))."""
    rng = np.random.default_rng(2)
    x, w = _rand(rng, (2, 4, 5, 4)), _rand(rng, (4, 3, 3, 2))
    y = conv_transpose_torch(x, w, None, s, p, op, g, d, precision="highest")
    z0 = jnp.zeros((2, 3 * g, *y.shape[2:]), jnp.float32)

    def fwd(z: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(
            z, jnp.asarray(w), (s, s), [(p, p)] * 2, rhs_dilation=(d, d),
            feature_group_count=g, precision="highest",
        )

    out, vjp = jax.vjp(fwd, z0)
    assert out.shape == x.shape
    assert rel(y, vjp(jnp.asarray(x))[0]) < 1e-5


def test_under_jit_and_grad() -> None:
    rng = np.random.default_rng(3)
    x, w = _rand(rng, (1, 4, 5, 5)), _rand(rng, (4, 2, 3, 3))
    f = jax.jit(lambda x, w: conv_transpose_torch(x, w, None, 2, 1, 1, 2))
    assert rel(f(x, w), conv_transpose_torch(x, w, None, 2, 1, 1, 2)) < 1e-6
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    (F.conv_transpose2d(xt, wt, None, 2, 1, 1, 2) ** 2).sum().backward()
    gx, gw = jax.grad(lambda x, w: (f(x, w) ** 2).sum(), argnums=(0, 1))(x, w)
    assert xt.grad is not None and wt.grad is not None
    assert rel(gx, xt.grad.numpy()) < 1e-5
    assert rel(gw, wt.grad.numpy()) < 1e-5


def test_reexported() -> None:
    assert jconv.conv_transpose is conv_transpose
    assert jconv.conv_transpose_torch is conv_transpose_torch


# ------------------------------------------------------------------ bad input
BAD_TORCH = [
    (dict(stride=2, output_padding=2), ValueError,
     r"`output_padding` \(=\(2, 2\)\) must be smaller"),
    (dict(groups=3), ValueError, r"`groups` \(=3\) must divide the input channels \(=4\)"),
    (dict(padding=-1), ValueError, r"`padding` \(=-1\) must be >= 0"),
    (dict(stride=(1, 2, 3)), ValueError, r"`stride` .* one entry per spatial dimension"),
    (dict(dilation=1.5), TypeError, r"`dilation` \(=1.5\)"),
    (dict(padding=4), ValueError, r"`padding` \(=\(4, 4\)\) is too large: spatial dimension 0 "
     r"would have output size .* = -1, which must be >= 0"),
]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("kw,exc,match", BAD_TORCH)
def test_torch_bad_input(kw: dict, exc: type, match: str, jit: bool) -> None:
    x, w = jnp.ones((1, 4, 5, 5)), jnp.ones((4, 2, 3, 3))

    def f(x: jax.Array, w: jax.Array) -> jax.Array:
        return conv_transpose_torch(x, w, **kw)

    with pytest.raises(exc, match=match):
        (jax.jit(f) if jit else f)(x, w)


@pytest.mark.parametrize("jit", [False, True])
def test_lax_bad_input(jit: bool) -> None:
    x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 4))
    cases = [
        (lambda x, w: conv_transpose(x, w, (2, 2), "FULL"), ValueError,
         r"`padding` \('FULL'\)|`padding` \(='FULL'\) must be 'SAME', 'VALID'"),
        (lambda x, w: conv_transpose(x, w, (2, 2), "SAME", transpose_kernel=1), TypeError,
         r"`transpose_kernel` \(=1\) must be a bool"),
        (lambda x, w: conv_transpose(x, w, (0, 2), "SAME"), ValueError,
         r"`strides\[0\]` \(=0\) must be >= 1"),
        (lambda x, w: conv_transpose(x, w, (2, 2), [(1, 1)], use_consistent_padding=True),
         ValueError, r"`padding` \(=\[\(1, 1\)\]\) must be a sequence of 2 \(low, high\)"),
        (lambda x, w: conv_transpose(x, w[..., :1, :], (2, 2), "SAME"), ValueError,
         r"input feature dimension \(=1\)"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            (jax.jit(fn) if jit else fn)(x, w)
