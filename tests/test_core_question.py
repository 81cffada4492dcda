"""The question jconv answers, as executable cases.

"A conv layer with F filters gets C feature maps: are they merged, averaged or kept
separately?" Each filter holds one kernel per input channel; its output map is the **sum**
of the C per-channel correlations, so the layer outputs exactly F maps.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from reference import conv_reference, rel_err

import jconv

N, M = 28, 28


def _rand(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("strategy", ["shift", "patches"])
def test_grayscale_through_10_filters_gives_10_maps(strategy: str) -> None:
    x = _rand((1, N, M, 1), 0)  # one n x m grayscale image
    w = _rand((3, 3, 1, 10), 1)  # 10 filters of 3x3 over 1 channel
    y = jconv.conv(x, w, strategy=strategy)
    assert y.shape == (1, N, M, 10)
    assert w.size == 90


@pytest.mark.parametrize("strategy", ["shift", "patches"])
def test_10_filters_over_10_maps_sum_the_per_channel_correlations(strategy: str) -> None:
    maps = np.asarray(jconv.conv(_rand((1, N, M, 1), 0), _rand((3, 3, 1, 10), 1)))
    w = _rand((3, 3, 10, 10), 2)  # second layer: 3x3x10x10, one 3x3 kernel per (c, f)
    assert w.shape == (3, 3, 10, 10) and w.size == 900
    y = np.asarray(jconv.conv(maps, w, strategy=strategy))
    assert y.shape == (1, N, M, 10)  # still 10 maps, not 10 x 10 = 100

    # each (channel c, filter f) correlation on its own: jconv on the single-channel slice
    per_channel = np.stack(
        [np.asarray(jconv.conv(maps[..., c:c + 1], w[:, :, c:c + 1, :], strategy=strategy))
         for c in range(10)]
    )  # (C=10, 1, N, M, F=10)
    assert per_channel.shape == (10, 1, N, M, 10)
    summed, averaged = per_channel.sum(axis=0), per_channel.mean(axis=0)
    assert rel_err(y, summed) <= 1e-5
    assert rel_err(y, averaged) > 0.5  # the average is off by a factor C
    np.testing.assert_allclose(y / 10, averaged, rtol=1e-4, atol=1e-5 * np.abs(y).max())

    # the same per-channel correlations from the float64 loop reference, independently
    pads = ((1, 1), (1, 1))
    ref = sum(
        conv_reference(maps[..., c:c + 1], w[:, :, c:c + 1, :], (1, 1), pads, (1, 1), (1, 1))
        for c in range(10)
    )
    assert rel_err(y, ref) <= 1e-5


def test_rgb_with_10_filters_uses_270_weights() -> None:
    x = _rand((2, N, M, 3), 3)
    w = _rand((3, 3, 3, 10), 4)
    assert math.prod(w.shape) == 3 * 3 * 3 * 10 == 270
    y = jconv.conv(x, w)
    assert y.shape == (2, N, M, 10)
    # the 3 colour channels are summed per filter, never kept apart
    per_channel = sum(np.asarray(jconv.conv(x[..., c:c + 1], w[:, :, c:c + 1])) for c in range(3))
    assert rel_err(y, per_channel) <= 1e-5


def test_20_filters_3x3_over_10_channels_use_1800_weights() -> None:
    x = _rand((1, N, M, 10), 5)
    w = _rand((3, 3, 10, 20), 6)
    assert w.size == 3 * 3 * 10 * 20 == 1800
    assert jconv.conv(x, w).shape == (1, N, M, 20)
    spec = jconv.ConvSpec.from_lax(x.shape, w.shape, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert math.prod(spec.rhs_shape) == 1800
    assert spec.macs == N * M * 1800  # every weight is used once per output position


def test_channels_do_not_multiply_with_depth() -> None:
    """Three stacked layers of 10 filters keep 10 maps; a depthwise stack multiplies them."""
    x = _rand((1, 12, 12, 1), 7)
    y = x
    for i in range(3):
        y = jconv.conv(y, _rand((3, 3, y.shape[-1], 10), 10 + i))
        assert y.shape[-1] == 10
    z = x
    for i in range(3):  # keep every per-channel map: depthwise with channel multiplier 10
        c = z.shape[-1]
        z = jconv.conv(z, _rand((3, 3, 1, 10 * c), 20 + i), groups=c)
    assert z.shape[-1] == 1000


def test_question_under_jit_and_x64() -> None:
    maps = _rand((1, 8, 8, 10), 8).astype(np.float64)
    w = _rand((3, 3, 10, 10), 9).astype(np.float64)
    with jax.enable_x64(True):
        y = np.asarray(jax.jit(jconv.conv)(maps, w))
    ref = conv_reference(maps, w, (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1))
    assert rel_err(y, ref) <= 1e-12
