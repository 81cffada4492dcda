"""Padding geometry and modes of `jconv.conv` against PyTorch, Flax and NumPy references."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from hypothesis import assume, given
from hypothesis import strategies as st
from jax import lax
from reference import conv_reference

import jconv
from jconv._padding import padding_pairs

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
TORCH_MODULE = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}


def rel(a: object, b: object) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a64.shape == b64.shape, (a64.shape, b64.shape)
    return float(np.max(np.abs(a64 - b64), initial=0.0) / max(np.max(np.abs(b64), initial=0), 1))


def _rand(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _torch_module(n: int, w: np.ndarray, b: np.ndarray, **kw: object) -> torch.nn.Module:
    m = TORCH_MODULE[n](w.shape[1] * kw["groups"], w.shape[0], w.shape[2:], **kw)  # type: ignore[operator]
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(w))
        m.bias.copy_(torch.from_numpy(b))
    return m


# ------------------------------------------------------------------ vs PyTorch
TORCH_CASES = [
    # (x shape NC..., w shape OI..., stride, padding, dilation, groups)
    ((2, 3, 9), (4, 3, 3), 1, 1, 1, 1),
    ((2, 4, 9), (4, 2, 4), 2, 3, 1, 2),
    ((2, 3, 9), (2, 3, 3), 1, "same", 2, 1),
    ((2, 3, 9), (2, 3, 4), 1, "same", 1, 1),         # even kernel: extra pad on the high side
    ((1, 3, 6, 7), (4, 3, 3, 3), 1, 1, 1, 1),
    ((1, 3, 6, 7), (4, 3, 3, 2), 2, (2, 1), (1, 2), 1),
    ((1, 4, 6, 7), (6, 2, 3, 3), 1, "same", (2, 1), 2),
    ((1, 2, 4, 5, 6), (3, 2, 3, 2, 3), 1, "same", 1, 1),
    ((1, 2, 4, 5, 6), (3, 2, 3, 3, 3), 2, 1, 1, 1),
]


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "replicate"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}")
def test_matches_torch_padding_mode(case: tuple, mode: str) -> None:
    """torch.nn.Conv*d(padding_mode=...) pads with F.pad, then convolves with padding 0."""
    xs, ws, s, p, d, g = case
    n = len(xs) - 2
    rng = np.random.default_rng(0)
    x, w, b = _rand(rng, xs), _rand(rng, ws), _rand(rng, ws[:1])
    module = _torch_module(n, w, b, stride=s, padding=p, dilation=d, groups=g, padding_mode=mode)
    with torch.no_grad(), warnings.catch_warnings():
        # PyTorch notes that an even kernel with 'same' copies the input; the result is exact
        warnings.filterwarnings("ignore", message="Using padding='same'", category=UserWarning)
        want = module(torch.from_numpy(x)).numpy()
    padding = "SAME_TORCH" if p == "same" else p
    got = jconv.conv(
        x, w, stride=s, padding=padding, dilation=d, groups=g, bias=b, layout="NCHW",
        padding_mode=mode, precision="highest",
    )
    assert rel(got, want) < 1e-5


@given(
    n=st.integers(1, 3),
    mode=st.sampled_from(["circular", "reflect", "replicate"]),
    k=st.lists(st.integers(1, 4), min_size=3, max_size=3),
    d=st.lists(st.integers(1, 2), min_size=3, max_size=3),
    s=st.integers(1, 3),
    pads=st.lists(st.integers(0, 2), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_vs_torch_pad_then_conv(
    n: int, mode: str, k: list, d: list, s: int, pads: list, seed: int
) -> None:
    """F.pad(x, mode) + F.conv*d == jconv.conv(padding=pairs, padding_mode=mode), channels last."""
    rng = np.random.default_rng(seed)
    sizes = (5, 4, 3)[:n]
    x = _rand(rng, (2, *sizes, 2))
    w = _rand(rng, (*k[:n], 2, 3))
    pairs = [(pads[i], (pads[i] + i) % 3) for i in range(n)]
    # PyTorch rejects a window larger than the padded input (an empty output)
    assume(all(i + lo + hi >= di * (ki - 1) + 1
               for i, (lo, hi), di, ki in zip(sizes, pairs, d, k, strict=False)))
    torch_pad = [v for lo_hi in reversed(pairs) for v in lo_hi]  # F.pad: last dim first
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    xt = F.pad(xt, torch_pad, mode=mode)
    wt = torch.from_numpy(np.moveaxis(w, (-1, -2), (0, 1)).copy())
    want = TORCH_CONV[n](xt, wt, None, s, 0, d[:n]).numpy()
    got = jconv.conv(
        x, w, stride=s, padding=pairs, dilation=d[:n], padding_mode=mode, precision="highest"
    )
    assert rel(got, np.moveaxis(want, 1, -1)) < 1e-5


# ------------------------------------------------------------------ vs Flax
FLAX_CASES = [
    # (kernel_size, strides, kernel_dilation, input spatial)
    ((3,), 1, 1, (9,)),
    ((4,), 2, 1, (9,)),
    ((3,), 1, 3, (9,)),
    ((3, 3), 1, 1, (6, 7)),
    ((2, 3), 2, (2, 1), (6, 7)),
    ((3, 2, 3), 1, 1, (4, 5, 6)),
]


@pytest.mark.parametrize(
    "case,flax_padding",
    [(c, p) for c in FLAX_CASES for p in ("CIRCULAR", "REFLECT", "CAUSAL")
     if p != "CAUSAL" or len(c[0]) == 1],  # Flax implements CAUSAL for 1-D only
    ids=str,
)
def test_matches_flax_padding(case: tuple, flax_padding: str) -> None:
    """Flax's CIRCULAR/REFLECT == SAME_TORCH geometry; CAUSAL == CAUSAL."""
    ks, s, d, spatial = case
    layer = nnx.Conv(3, 4, ks, strides=s, kernel_dilation=d, padding=flax_padding,
                     precision="highest", rngs=nnx.Rngs(0))
    x = _rand(np.random.default_rng(1), (2, *spatial, 3))
    want = layer(jnp.asarray(x))
    padding, mode = {
        "CIRCULAR": ("SAME_TORCH", "circular"),
        "REFLECT": ("SAME_TORCH", "reflect"),
        "CAUSAL": ("CAUSAL", "zeros"),
    }[flax_padding]
    got = jconv.conv(x, layer.kernel[...], stride=s, padding=padding, dilation=d,
                     bias=layer.bias[...], padding_mode=mode, precision="highest")
    assert rel(got, want) < 1e-5


@pytest.mark.parametrize("n", [1, 2, 3])
def test_causal_any_rank(n: int) -> None:
    """CAUSAL pads (d*(k-1), 0) everywhere: output t sees inputs <= t only, size kept."""
    rng = np.random.default_rng(2)
    spatial, k, d = (6, 5, 4)[:n], (3, 2, 2)[:n], (2, 1, 2)[:n]
    x, w = _rand(rng, (1, *spatial, 2)), _rand(rng, (*k, 2, 3))
    got = jconv.conv(x, w, padding="CAUSAL", dilation=d, precision="highest")
    pads = [(di * (ki - 1), 0) for ki, di in zip(k, d, strict=True)]
    want = conv_reference(x, w, (1,) * n, pads, (1,) * n, d)
    assert got.shape == (1, *spatial, 3)
    assert rel(got, want) < 1e-5
    # output at the first position of every dim depends on no later input
    first = (0,) + (0,) * n
    jac = jax.jacobian(lambda x: jconv.conv(x, w, padding="CAUSAL", dilation=d)[first])(x)
    assert np.all(np.asarray(jac)[(slice(None), 0, *([0] * n))] != 0)
    later = np.asarray(jac).copy()
    later[(slice(None), 0, *([0] * n))] = 0
    assert np.all(later == 0)


def test_torch_same_differs_from_jax_same_when_strided() -> None:
    """JAX SAME depends on the stride (out = ceil(i/s)); SAME_TORCH pads d*(k-1) regardless."""
    x, w = jnp.ones((1, 8, 1)), jnp.ones((4, 1, 1))
    dn = ("N0C", "0IO", "N0C")
    assert padding_pairs("SAME", x.shape, w.shape, (2,), (1,), dn) == ((1, 1),)
    assert padding_pairs("SAME_TORCH", x.shape, w.shape, (2,), (1,), dn) == ((1, 2),)
    assert padding_pairs("CAUSAL", x.shape, w.shape, (2,), (3,), dn) == ((9, 0),)
    want = lax.conv_general_dilated(x, w, (2,), "SAME", dimension_numbers=dn)
    assert rel(jconv.conv(x, w, stride=2, padding="SAME"), want) < 1e-6
    assert jconv.conv(x, w, stride=2, padding="SAME_TORCH").shape == (1, 4, 1)
    assert jconv.conv(x, w, stride=2, padding="SAME_TORCH", padding_mode="circular").shape == (
        1, 4, 1)


def test_padding_mode_gradients_match_torch() -> None:
    rng = np.random.default_rng(3)
    x, w = _rand(rng, (1, 2, 5, 6)), _rand(rng, (3, 2, 3, 3))
    for mode in ("circular", "reflect", "replicate"):
        xt = torch.from_numpy(x).requires_grad_()
        y = F.conv2d(F.pad(xt, [1, 1, 2, 0], mode=mode), torch.from_numpy(w))
        (y**2).sum().backward()
        assert xt.grad is not None

        def loss(x: jax.Array, mode: str = mode) -> jax.Array:
            y = jconv.conv(x, w, padding=[(2, 0), (1, 1)], layout="NCHW", padding_mode=mode,
                           precision="highest")
            return (y**2).sum()

        assert rel(jax.grad(loss)(x), xt.grad.numpy()) < 1e-5


# ------------------------------------------------------------------ bad input
BAD = [
    (dict(padding_mode="wrap"), ValueError,
     r"`padding_mode` \(='wrap'\) must be one of \['zeros', 'circular', 'reflect', 'replicate'\]"),
    (dict(padding=4, padding_mode="reflect"), ValueError,
     r"`padding_mode` \(='reflect'\) pads spatial dimension 0 by \(4, 4\); each side must be "
     r"less than the input size \(=4\)"),
    (dict(padding=5, padding_mode="circular"), ValueError,
     r"each side must be at most the input size \(=4\)"),
    (dict(padding=[(-1, 0), (0, 0)], padding_mode="replicate"), ValueError,
     r"`padding_mode` \(='replicate'\) needs non-negative pads"),
    (dict(padding="FULL"), ValueError, r"`padding` \(='FULL'\) must be"),
]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("kw,exc,match", BAD)
def test_bad_input(kw: dict, exc: type, match: str, jit: bool) -> None:
    x, w = jnp.ones((1, 4, 5, 2)), jnp.ones((3, 3, 2, 2))

    def f(x: jax.Array, w: jax.Array) -> jax.Array:
        return jconv.conv(x, w, **kw)

    with pytest.raises(exc, match=match):
        (jax.jit(f) if jit else f)(x, w)
