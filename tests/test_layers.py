"""Depthwise, separable, grouped, masked and locally connected convs vs their parts and lax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from jax import lax

import jconv

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def rel(a: object, b: object) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a64.shape == b64.shape, (a64.shape, b64.shape)
    return float(np.max(np.abs(a64 - b64), initial=0.0) / max(np.max(np.abs(b64), initial=0), 1))


def _rand(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _lax_nhwc(x: np.ndarray, w: np.ndarray, **kw: object) -> jax.Array:
    n = x.ndim - 2
    letters = "".join(str(i) for i in range(n))
    dn = (f"N{letters}C", f"{letters}IO", f"N{letters}C")
    return lax.conv_general_dilated(x, w, dimension_numbers=dn, precision="highest", **kw)  # type: ignore[arg-type]


DW_CASES = [
    # (spatial, window, channels, multiplier, stride, dilation)
    ((9,), (3,), 3, 1, 1, 1),
    ((9,), (4,), 2, 3, 2, 1),
    ((6, 7), (3, 3), 3, 2, 1, 1),
    ((6, 7), (3, 2), 4, 1, (2, 1), (1, 2)),
    ((4, 5, 4), (2, 3, 2), 2, 2, 1, 1),
]


@pytest.mark.parametrize("case", DW_CASES, ids=str)
def test_depthwise_is_per_channel_convs_stacked(case: tuple) -> None:
    """Channel c, kernel m -> output map c*M + m; no channel is summed with another."""
    spatial, window, c, m, s, d = case
    n = len(spatial)
    rng = np.random.default_rng(0)
    x, w = _rand(rng, (2, *spatial, c)), _rand(rng, (*window, c, m))
    st, dl = (s,) * n if isinstance(s, int) else s, (d,) * n if isinstance(d, int) else d
    parts = [
        _lax_nhwc(x[..., ci : ci + 1], w[..., ci : ci + 1, :], window_strides=st,
                  padding="SAME", rhs_dilation=dl)
        for ci in range(c)
    ]
    got = jconv.depthwise_conv(x, w, stride=s, dilation=d, precision="highest")
    assert got.shape[-1] == c * m
    assert rel(got, jnp.concatenate(parts, axis=-1)) < 1e-5


@pytest.mark.parametrize("n", [1, 2, 3])
def test_depthwise_channels_first_matches_torch(n: int) -> None:
    rng = np.random.default_rng(1)
    c, m = 3, 2
    x, w = _rand(rng, (2, c, *(6, 5, 4)[:n])), _rand(rng, (c * m, 1, *(3, 2, 3)[:n]))
    want = TORCH_CONV[n](torch.from_numpy(x), torch.from_numpy(w), None, 1, 1, 1, c).numpy()
    got = jconv.depthwise_conv(x, w, padding=1, layout="NCHW", precision="highest")
    assert rel(got, want) < 1e-5


@pytest.mark.parametrize("case", DW_CASES, ids=str)
def test_separable_is_depthwise_then_pointwise(case: tuple) -> None:
    spatial, window, c, m, s, d = case
    n = len(spatial)
    rng = np.random.default_rng(2)
    x, dw = _rand(rng, (2, *spatial, c)), _rand(rng, (*window, c, m))
    pw, b = _rand(rng, (*(1,) * n, c * m, 5)), _rand(rng, (5,))
    got = jconv.separable_conv(x, dw, pw, stride=s, dilation=d, bias=b, precision="highest")
    # composition of the parts
    mid = jconv.depthwise_conv(x, dw, stride=s, dilation=d, precision="highest")
    bb = b.reshape((1,) * (n + 1) + (5,))
    parts = jnp.einsum("...c,cf->...f", mid, pw.reshape(c * m, 5), precision="highest") + bb
    assert rel(got, parts) < 1e-5
    # and one dense conv whose kernel is W[k, c, f] = sum_m dw[k, c, m] * pw[c*M + m, f]
    dense = np.einsum("...cm,cmf->...cf", dw, pw.reshape(c, m, 5))
    st, dl = (s,) * n if isinstance(s, int) else s, (d,) * n if isinstance(d, int) else d
    want = _lax_nhwc(x, dense, window_strides=st, padding="SAME", rhs_dilation=dl) + bb
    assert rel(got, want) < 1e-5


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_is_concatenated_group_convs(groups: int) -> None:
    rng = np.random.default_rng(3)
    x, w = _rand(rng, (2, 6, 5, 4)), _rand(rng, (3, 3, 4 // groups, 8))
    fg = 8 // groups
    cg = 4 // groups
    parts = [
        _lax_nhwc(x[..., g * cg : (g + 1) * cg], w[..., g * fg : (g + 1) * fg],
                  window_strides=(1, 2), padding="VALID")
        for g in range(groups)
    ]
    got = jconv.conv(x, w, stride=(1, 2), padding="VALID", groups=groups, precision="highest")
    assert rel(got, jnp.concatenate(parts, axis=-1)) < 1e-5


def test_masked_matches_flax_mask_and_blocks_gradients() -> None:
    rng = np.random.default_rng(4)
    mask = np.ones((3, 3, 2, 4), np.float32)
    mask[2:] = 0
    mask[1, 2:] = 0  # PixelCNN-style: only taps above and left of the centre (and it)
    layer = nnx.Conv(2, 4, (3, 3), mask=jnp.asarray(mask), precision="highest",
                     rngs=nnx.Rngs(0))
    x = _rand(rng, (2, 6, 6, 2))
    w, b = layer.kernel[...], layer.bias[...]
    got = jconv.masked_conv(x, w, mask, bias=b, precision="highest")
    assert rel(got, layer(jnp.asarray(x))) < 1e-5
    gw = jax.grad(lambda w: jconv.masked_conv(x, w, mask).sum())(w)
    assert np.all(np.asarray(gw)[mask == 0] == 0) and np.any(np.asarray(gw)[mask == 1] != 0)


LOCAL_CASES = [
    # (lhs shape, filter_shape, strides, padding, lhs_dil, rhs_dil, dimension_numbers)
    ((2, 3, 7), (3,), (1,), "VALID", None, None, None),
    ((2, 3, 7), (2,), (2,), "SAME", None, (2,), None),
    ((2, 3, 7, 6), (3, 2), (2, 1), "SAME", None, (1, 2), None),
    ((2, 7, 6, 3), (3, 3), (1, 1), ((1, 0), (2, 1)), None, None, ("NHWC", "HWIO", "NHWC")),
    ((2, 6, 7, 3), (2, 3), (1, 2), ((0, 1), (1, 0)), (2, 1), None, ("NWHC", "WHIO", "NHWC")),
    ((2, 3, 7, 6), (3, 2), (1, 1), "SAME", None, None, ("NCHW", "WHOI", "NHCW")),
    ((1, 2, 4, 5, 3), (2, 3, 2), (1, 2, 1), "SAME", None, None, None),
]


def _local_rhs_shape(lhs_shape: tuple, fs: tuple, strides: tuple, padding: object,
                     ldil: object, rdil: object, dn: object) -> tuple:
    spec = lax.conv_dimension_numbers(lhs_shape, lhs_shape, dn)
    c = lhs_shape[spec.lhs_spec[1]]
    shared = [0] * len(lhs_shape)
    shared[spec.rhs_spec[0]], shared[spec.rhs_spec[1]] = 5, c
    for a, k in zip(spec.rhs_spec[2:], fs, strict=True):
        shared[a] = k
    out = jax.eval_shape(
        lambda x, w: lax.conv_general_dilated(x, w, strides, padding, ldil, rdil, dn),
        jax.ShapeDtypeStruct(lhs_shape, jnp.float32),
        jax.ShapeDtypeStruct(tuple(shared), jnp.float32),
    ).shape
    rhs = [0] * len(lhs_shape)
    rhs[spec.rhs_spec[0]], rhs[spec.rhs_spec[1]] = 5, c * int(np.prod(fs))
    for a, o in zip(spec.rhs_spec[2:], (out[i] for i in spec.out_spec[2:]), strict=True):
        rhs[a] = o
    return tuple(rhs)


@pytest.mark.parametrize("case", LOCAL_CASES, ids=str)
def test_local_matches_lax_local(case: tuple) -> None:
    lhs_s, fs, strides, padding, ldil, rdil, dn = case
    rng = np.random.default_rng(5)
    x = _rand(rng, lhs_s)
    w = _rand(rng, _local_rhs_shape(lhs_s, fs, strides, padding, ldil, rdil, dn))
    args = (strides, padding, fs, ldil, rdil, dn)
    want = lax.conv_general_dilated_local(x, w, *args, precision="highest")
    got = jconv.local_conv(x, w, *args, precision="highest")
    assert rel(got, want) < 1e-5


def test_local_gradients_match_lax() -> None:
    lhs_s, fs, strides, padding, ldil, rdil, dn = LOCAL_CASES[2]
    rng = np.random.default_rng(7)
    x = _rand(rng, lhs_s)
    w = _rand(rng, _local_rhs_shape(lhs_s, fs, strides, padding, ldil, rdil, dn))
    args = (strides, padding, fs, ldil, rdil, dn)
    gl = jax.grad(lambda x, w: (lax.conv_general_dilated_local(x, w, *args) ** 2).sum(),
                  argnums=(0, 1))(x, w)
    gj = jax.grad(lambda x, w: (jconv.local_conv(x, w, *args) ** 2).sum(), argnums=(0, 1))(x, w)
    assert rel(gj[0], gl[0]) < 1e-4 and rel(gj[1], gl[1]) < 1e-4


def test_local_with_tied_weights_is_a_conv() -> None:
    """Copying one kernel to every output position turns the local conv into an ordinary conv."""
    rng = np.random.default_rng(6)
    x, k = _rand(rng, (2, 7, 6, 3)), _rand(rng, (3, 2, 3, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    flat = np.moveaxis(k, 2, 0).reshape(3 * 3 * 2, 4)  # I = (c, kh, kw), channel-major
    w = np.broadcast_to(flat, (5, 5, 18, 4))
    got = jconv.local_conv(x, w, (1, 1), "VALID", (3, 2), dimension_numbers=dn,
                           precision="highest")
    want = _lax_nhwc(x, k, window_strides=(1, 1), padding="VALID")
    assert rel(got, want) < 1e-5


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("jit", [False, True])
def test_bad_input(jit: bool) -> None:
    x = jnp.ones((1, 6, 6, 3))
    cases = [
        (lambda x: jconv.depthwise_conv(x, jnp.ones((3, 3, 2, 2))), ValueError,
         r"`w` \(shape \(3, 3, 2, 2\)\) must be \(\*window, C, M\) with C \(=shape\[-2\]\) "
         r"equal to the input's channels \(=3\)"),
        (lambda x: jconv.separable_conv(x, jnp.ones((3, 3, 3, 1)), jnp.ones((3, 3, 3, 4))),
         ValueError, r"`pointwise_w` \(shape \(3, 3, 3, 4\)\) must be a 1x1 kernel"),
        (lambda x: jconv.masked_conv(x, jnp.ones((3, 3, 3, 4)), jnp.ones((2, 3, 1, 1))),
         ValueError, r"`mask` \(shape \(2, 3, 1, 1\)\) must broadcast"),
        (lambda x: jconv.local_conv(x, jnp.ones((4, 4, 26, 5)), (1, 1), "VALID", (3, 3),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC")),
         ValueError, r"`rhs` \(shape \(4, 4, 26, 5\)\) must have shape \(4, 4, 27, 5\)"),
        (lambda x: jconv.local_conv(x, jnp.ones((4, 4, 27, 5)), (1, 1), "VALID", (3,),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC")),
         ValueError, r"`filter_shape` \(=\(3,\)\) must be a sequence of 2 window sizes"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            (jax.jit(fn) if jit else fn)(x)
    ok = jconv.local_conv(x, jnp.ones((4, 4, 27, 5)), (1, 1), "VALID", (3, 3),
                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert ok.shape == (1, 4, 4, 5)
