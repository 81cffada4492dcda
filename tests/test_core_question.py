"""The question jconv answers, as executable cases.

"A conv layer with F filters gets C feature maps: are they merged, averaged or kept
separately?" Each filter holds one kernel per input channel; its output map is the **sum**
of the C per-channel correlations, so the layer outputs exactly F maps. Every output below
is compared with correlations computed independently of jconv (`correlate`, NumPy slices;
`conv_reference`, NumPy loops).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from reference import conv_reference, rel_err

import jconv
from jconv.symbolic import layer_model

N, M = 28, 28


def _rand(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def correlate(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'SAME' cross-correlation of one 2-D map with one odd k x k kernel, float64:
    ``out[i, j] = sum_{a, b} image[i + a - k//2, j + b - k//2] * kernel[a, b]``."""
    k = kernel.shape[0]
    padded = np.pad(image.astype(np.float64), k // 2)
    out = np.zeros(image.shape)
    for a in range(k):
        for b in range(k):
            out += kernel[a, b] * padded[a:a + image.shape[0], b:b + image.shape[1]]
    return out


def per_channel(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(C, N, H, W, F)``: the correlation of every input map with every kernel of ``w``."""
    return np.stack([
        np.stack([np.stack([correlate(x[n, :, :, c], w[:, :, c, f]) for f in range(w.shape[3])],
                           axis=-1) for n in range(x.shape[0])])
        for c in range(x.shape[3])
    ])


@pytest.mark.parametrize("strategy", ["shift", "patches"])
def test_grayscale_through_10_filters_gives_10_maps(strategy: str) -> None:
    x = _rand((1, N, M, 1), 0)  # one n x m grayscale image
    w = _rand((3, 3, 1, 10), 1)  # 10 filters of 3x3 over 1 channel
    y = jconv.conv(x, w, strategy=strategy)
    assert y.shape == (1, N, M, 10)
    # map f is the image correlated with filter f, and nothing else
    assert rel_err(y, per_channel(x, w)[0]) <= 1e-5


@pytest.mark.parametrize("strategy", ["shift", "patches"])
def test_10_filters_over_10_maps_sum_the_per_channel_correlations(strategy: str) -> None:
    maps = np.asarray(jconv.conv(_rand((1, N, M, 1), 0), _rand((3, 3, 1, 10), 1)))
    w = _rand((3, 3, 10, 10), 2)  # second layer: 3x3x10x10, one 3x3 kernel per (c, f)
    y = np.asarray(jconv.conv(maps, w, strategy=strategy))
    assert y.shape == (1, N, M, 10)  # still 10 maps, not 10 x 10 = 100

    corr = per_channel(maps, w)  # (C=10, 1, N, M, F=10), independent of jconv
    assert rel_err(y, corr.sum(axis=0)) <= 1e-5  # the sum over the 10 channels
    assert rel_err(y, corr.mean(axis=0)) > 0.5  # not their average (off by a factor C)
    for c in (0, 9):  # nor any single channel's correlation
        assert rel_err(y, corr[c]) > 0.5


def test_rgb_with_10_filters_uses_270_weights() -> None:
    x = _rand((2, N, M, 3), 3)
    w = _rand((3, 3, 3, 10), 4)
    y = jconv.conv(x, w)
    assert y.shape == (2, N, M, 10)
    spec = jconv.ConvSpec.from_lax(x.shape, w.shape, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert layer_model(spec)["weights"].value == 270  # jconv's model counts 3 * 3 * 3 * 10
    # the 3 colour channels are summed per filter, never kept apart
    assert rel_err(y, per_channel(x, w).sum(axis=0)) <= 1e-5


def test_20_filters_3x3_over_10_channels_use_1800_weights() -> None:
    x = _rand((1, N, M, 10), 5)
    w = _rand((3, 3, 10, 20), 6)
    y = jconv.conv(x, w)
    assert y.shape == (1, N, M, 20)
    spec = jconv.ConvSpec.from_lax(x.shape, w.shape, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert layer_model(spec)["weights"].value == 1800
    assert spec.macs == N * M * 1800  # every weight is used once per output position
    assert rel_err(y, per_channel(x, w).sum(axis=0)) <= 1e-5


def test_channels_do_not_multiply_with_depth() -> None:
    """Three stacked layers of 10 filters keep 10 maps; a depthwise stack multiplies them,
    each of its maps one input map correlated with one kernel."""
    x = _rand((1, 12, 12, 1), 7)
    y = x
    for i in range(3):
        y = jconv.conv(y, _rand((3, 3, y.shape[-1], 10), 10 + i))
        assert y.shape[-1] == 10
    z = x
    for i in range(3):  # keep every per-channel map: depthwise with channel multiplier 10
        c = z.shape[-1]
        w = _rand((3, 3, 1, 10 * c), 20 + i)
        z_next = jconv.conv(z, w, groups=c)
        # output map c * 10 + m is input map c correlated with kernel c * 10 + m
        for out in (0, 10 * c - 1):
            want = correlate(np.asarray(z)[0, :, :, out // 10], w[:, :, 0, out])
            assert rel_err(np.asarray(z_next)[0, :, :, out], want) <= 1e-5
        z = z_next
    assert z.shape[-1] == 1000


def test_question_under_jit_and_x64() -> None:
    maps = _rand((1, 8, 8, 10), 8).astype(np.float64)
    w = _rand((3, 3, 10, 10), 9).astype(np.float64)
    with jax.enable_x64(True):
        y = np.asarray(jax.jit(jconv.conv)(maps, w))
    ref = conv_reference(maps, w, (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1))
    assert rel_err(y, ref) <= 1e-12
