"""Layout converters: round trips, and equal outputs across PyTorch, Flax, lax and jconv."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

import jconv
from jconv.convert import (
    convert_input,
    convert_kernel,
    flax_to_torch,
    keras_depthwise_to_torch,
    torch_depthwise_to_keras,
    torch_to_flax,
    torch_transpose_to_flax,
)

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
TORCH_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def rel(a: object, b: object) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a64.shape == b64.shape, (a64.shape, b64.shape)
    return float(np.max(np.abs(a64 - b64), initial=0.0) / max(np.max(np.abs(b64), initial=0), 1))


def _rand(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@given(
    src=st.permutations("OIHWD"),
    dst=st.permutations("OIHWD"),
    seed=st.integers(0, 100),
)
def test_round_trip_any_layout_strings(src: list, dst: list, seed: int) -> None:
    a, b = "".join(src), "".join(dst)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((2, 3, 4, 5, 6)).astype(np.float32)
    there = convert_kernel(w, a, b)
    for letter in "OIHWD":  # every named axis keeps its size
        assert there.shape[b.index(letter)] == w.shape[a.index(letter)]
    probe = tuple(int(rng.integers(0, size)) for size in w.shape)  # and every entry its letters
    assert there[tuple(probe[a.index(c)] for c in b)] == w[probe]
    assert np.array_equal(convert_kernel(there, b, a), w)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_families_and_dimension_numbers_round_trip(n: int) -> None:
    rng = np.random.default_rng(0)
    w = _rand(rng, (5, 3, *(4, 2, 3)[:n]))  # OI + spatial
    hwio = torch_to_flax(w)
    assert hwio.shape == (*(4, 2, 3)[:n], 3, 5)
    assert np.array_equal(flax_to_torch(hwio), w)
    letters = "".join(str(i) for i in range(n))
    dn = lax.conv_dimension_numbers((1,) * (n + 2), (1,) * (n + 2),
                                    (f"N{letters}C", f"{letters[::-1]}OI", f"N{letters}C"))
    other = convert_kernel(w, "OIHW", dn)
    assert np.array_equal(convert_kernel(other, dn, "OIHW"), w)
    x = _rand(rng, (2, 3, *(5, 4, 3)[:n]))
    assert np.array_equal(convert_input(convert_input(x, "NCHW", "NHWC"), "NHWC", "NCHW"), x)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2])
def test_torch_weights_give_torch_outputs(n: int, groups: int) -> None:
    """PyTorch (NCHW, OIHW) vs jconv channels-last with converted input and weight."""
    rng = np.random.default_rng(1)
    x, w, b = _rand(rng, (2, 4, *(6, 5, 4)[:n])), _rand(rng, (6, 4 // groups, *(3, 2, 3)[:n])), \
        _rand(rng, (6,))
    want = TORCH_CONV[n](torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), 2, 1, 1,
                         groups).numpy()
    got = jconv.conv(convert_input(x, "NCHW", "NHWC"), torch_to_flax(w), stride=2, padding=1,
                     groups=groups, bias=b, precision="highest")
    assert rel(convert_input(got, "NHWC", "NCHW"), want) < 1e-5


def test_flax_weights_give_flax_outputs_in_torch() -> None:
    layer = nnx.Conv(3, 4, (3, 2), strides=(1, 2), padding=((1, 1), (0, 1)),
                     precision="highest", rngs=nnx.Rngs(0))
    x = _rand(np.random.default_rng(2), (2, 6, 7, 3))
    want = layer(jnp.asarray(x))
    wt = torch.from_numpy(np.array(flax_to_torch(layer.kernel[...])))
    xt = torch.from_numpy(np.array(convert_input(x, "NHWC", "NCHW")))
    got = F.conv2d(F.pad(xt, [0, 1, 1, 1]), wt, torch.from_numpy(np.array(layer.bias[...])),
                   (1, 2)).numpy()
    assert rel(convert_input(got, "NCHW", "NHWC"), want) < 1e-5


@pytest.mark.parametrize("dn", [("NCHW", "OIHW", "NCHW"), ("NHWC", "WHOI", "NCHW"),
                                ("NWCH", "IWOH", "NHWC")])
def test_dimension_numbers_give_equal_outputs(dn: tuple) -> None:
    rng = np.random.default_rng(3)
    x_nhwc, w_hwio = _rand(rng, (2, 6, 5, 3)), _rand(rng, (3, 2, 3, 4))
    want = lax.conv_general_dilated(x_nhwc, w_hwio, (1, 2), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision="highest")
    strides = tuple({"H": 1, "W": 2}[c] for c in dn[1] if c in "HW")  # kernel's spatial order
    got = jconv.conv_general_dilated(
        convert_input(x_nhwc, "NHWC", dn), convert_kernel(w_hwio, "HWIO", dn),
        strides, "SAME", dimension_numbers=dn, precision="highest",
    )
    assert rel(convert_input(got, (dn[2], dn[1], dn[2]), "NHWC"), want) < 1e-5


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("tk", [False, True])
def test_torch_transposed_weights(n: int, tk: bool) -> None:
    """torch ConvTranspose == lax.conv_transpose / jconv.conv_transpose with converted weights."""
    rng = np.random.default_rng(4)
    x, w = _rand(rng, (2, 3, *(5, 4, 3)[:n])), _rand(rng, (3, 4, *(3, 2, 3)[:n]))
    s, p, op = (2, 1, 2)[:n], (1, 0, 1)[:n], (1, 0, 1)[:n]
    want = TORCH_T[n](torch.from_numpy(x), torch.from_numpy(w), None, s, p, op).numpy()
    k = torch_transpose_to_flax(w, transpose_kernel=tk)
    xl = convert_input(x, "NCHW", "NHWC")
    pads = [(pi, pi - oi) for pi, oi in zip(p, op, strict=True)]  # output_padding on the high side
    ref = lax.conv_transpose(xl, k, s, pads, transpose_kernel=tk, use_consistent_padding=True,
                             precision="highest")
    got = jconv.conv_transpose(xl, k, s, pads, transpose_kernel=tk, use_consistent_padding=True,
                               precision="highest")
    assert rel(convert_input(ref, "NHWC", "NCHW"), want) < 1e-5
    assert rel(convert_input(got, "NHWC", "NCHW"), want) < 1e-5


def test_depthwise_keras_torch_round_trip_and_outputs() -> None:
    rng = np.random.default_rng(5)
    c, m = 3, 2
    kw = _rand(rng, (3, 3, c, m))
    tw = keras_depthwise_to_torch(kw)
    assert tw.shape == (c * m, 1, 3, 3)
    assert np.array_equal(torch_depthwise_to_keras(tw, c), kw)
    x = _rand(rng, (2, 6, 6, c))
    got = jconv.depthwise_conv(x, kw, padding=1, precision="highest")
    want = F.conv2d(torch.from_numpy(np.array(convert_input(x, "NHWC", "NCHW"))),
                    torch.from_numpy(np.array(tw)), None, 1, 1, 1, c).numpy()
    assert rel(convert_input(got, "NHWC", "NCHW"), want) < 1e-5


@pytest.mark.parametrize(
    "fn,exc,match",
    [
        (lambda: convert_kernel(jnp.ones((2, 3, 4, 5)), "OIHH", "HWIO"), ValueError,
         r"`src` \(='OIHH'\) must name 4 distinct axes including 'O' and 'I'"),
        (lambda: convert_kernel(jnp.ones((2, 3, 4, 5)), "OIHW", 7), TypeError,
         r"`dst` \(=7\) must be a layout string"),
        (lambda: convert_input(jnp.ones((2, 3, 4)), "NCHWD", "NHWC"), ValueError,
         r"`src` \(='NCHWD'\) must name 3 distinct axes including 'N' and 'C'"),
        (lambda: torch_depthwise_to_keras(jnp.ones((6, 1, 3, 3)), 4), ValueError,
         r"`channels` \(=4\) dividing shape\[0\]"),
    ],
)
def test_bad_input(fn: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        fn()  # type: ignore[operator]
    with pytest.raises(exc, match=match):
        jax.jit(lambda: fn())()  # type: ignore[operator]


def test_every_rank_two_family_permutation() -> None:
    """All 24 layouts of a 2-D kernel, to and from HWIO, by letter."""
    w = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(4, 5, 3, 2)  # HWIO
    for perm in itertools.permutations("HWIO"):
        lay = "".join(perm)
        out = convert_kernel(w, "HWIO", lay)
        assert out.shape == tuple(w.shape["HWIO".index(c)] for c in lay)
        assert np.array_equal(convert_kernel(out, lay, "HWIO"), w)
