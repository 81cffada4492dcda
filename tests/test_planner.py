"""The planner: choices from the cost model, the memory budget, the cache, bad input."""

from __future__ import annotations

import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jconv
from jconv import ConvSpec, _engine, _gradients, planner
from jconv.strategies import STRATEGIES, Prediction
from jconv.strategies import _common as strategies_common

F32 = jnp.dtype(jnp.float32)


def _spec(x: tuple[int, ...], k: tuple[int, ...], f: int, **kw) -> ConvSpec:
    ns = len(k)
    s = "DHW"[-ns:] if ns > 1 else "W"
    return ConvSpec.from_lax(x, (*k, x[-1] // kw.get("feature_group_count", 1), f),
                             kw.pop("window_strides", (1,) * ns), kw.pop("padding", "SAME"),
                             dimension_numbers=(f"N{s}C", f"{s}IO", f"N{s}C"), **kw)


@pytest.fixture(autouse=True)
def _default_budget():
    planner.set_memory_budget(None)
    yield
    planner.set_memory_budget(None)


def test_depthwise_uses_the_fused_shift_einsum() -> None:
    """Depthwise: XLA fuses the per-offset einsums (contraction of size 1) into one loop."""
    spec = _spec((8, 56, 56, 128), (3, 3), 128, feature_group_count=128)
    assert planner.plan(spec, F32) == "shift"


def test_thin_groups_use_direct_multiply_adds_undifferentiated_only() -> None:
    """Thin groups run `direct`'s multiply-adds; differentiated, another lowering computes
    the values (``direct.DIFFERENTIATED`` is False: XLA computes its elementwise loop again
    in each consumer of its output, which a training step's cotangent is). Every lowering
    states it; `direct` is the only one that may not."""
    spec = _spec((8, 28, 28, 256), (3, 3), 256, feature_group_count=32)
    assert planner.plan(spec, F32) == "direct"
    assert planner.plan(spec, F32, differentiated=True) != "direct"
    assert "direct" in planner.candidates(spec, F32)
    assert "direct" not in planner.candidates(spec, F32, differentiated=True)
    lowerings = planner.resolve("auto", spec, F32)
    assert lowerings.values == "direct" and lowerings.differentiated != "direct"
    assert {n for n, m in STRATEGIES.items() if m.DIFFERENTIATED is not True} == {"direct"}
    assert all(isinstance(m.DIFFERENTIATED, bool) for m in STRATEGIES.values())


@pytest.mark.parametrize(("x", "k", "f", "strides", "want"), [
    ((128, 32, 32, 3), (3, 3), 16, (1, 1), True),  # a CIFAR net's first layer
    ((8, 224, 224, 3), (3, 3), 32, (2, 2), True),  # MobileNet's stem
    ((8, 56, 56, 3), (3, 3), 64, (1, 1), True),
    ((2, 32, 32, 32, 4), (3, 3, 3), 8, (1, 1, 1), True),
    ((8, 4096, 2), (9,), 64, (1,), True),
    ((8, 56, 56, 3), (7, 7), 16, (1, 1), False),  # 147 terms
    ((2, 24, 24, 24, 4), (5, 5, 5), 16, (1, 1, 1), False),  # 500 terms
    ((8, 56, 56, 8), (3, 3), 16, (1, 1), False),  # 8 channels into two vectors
    ((8, 56, 56, 8), (3, 3), 12, (1, 1), False),
    ((8, 56, 56, 8), (3, 3), 4, (1, 1), False),  # half a vector: costs a whole one
    ((1, 330, 330, 8), (3, 3), 8, (1, 1), True),  # 8 channels into one vector
    ((128, 32, 32, 8), (3, 3), 8, (1, 1), True),
    ((4, 64, 64, 5), (3, 3), 8, (1, 1), True),
    ((8, 56, 56, 16), (3, 3), 16, (1, 1), False),  # 16: a dot's depth
])
def test_dense_layers_over_few_channels_use_direct_undifferentiated(
        x: tuple[int, ...], k: tuple[int, ...], f: int, strides: tuple[int, ...],
        want: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dense layer over at most `direct.MAX_PLANNED_DENSE_C` input channels, or
    `direct.MAX_PLANNED_VECTOR_C` into one vector of features, runs `direct`
    undifferentiated where it measured faster than every other lowering (forward ms,
    direct against the pick without it: 1.1 against 3.5 on the CIFAR layer, 1.9 against
    3.6 on the stem, 0.77 against 0.89, 2.4 against 11.4 on the volume, 0.54 against
    toeplitz's 0.80 in 1-D; over 8 channels to 8, 2.2 against Winograd's 3.1 and 2.6
    against scatter's 5.2; 5 -> 8, 0.33 against 0.77) and not where it measured slower:
    many terms (7x7 over 3 channels 3.6 against the hybrid's 3.2; 5x5x5 over 4, 111 against
    patches' 47), which `direct.UNROLL_PER_TERM` alone turns, and over 8 channels into more
    than one vector (to 16: 1.35 against the hybrid's 1.03; to 12: 1.38 against 1.23) or
    into half of one (to 4: 0.64 against scatter's 0.57, `direct.VECTOR_BYTES`)."""
    from jconv.strategies import direct

    spec = _spec(x, k, f, window_strides=strides)
    assert (planner.plan(spec, F32) == "direct") is want
    assert planner.plan(spec, F32, differentiated=True) != "direct"
    if not want and spec.in_features <= direct.MAX_PLANNED_DENSE_C:
        # without the per-term slowdown the pick would be direct's
        monkeypatch.setattr(direct, "UNROLL_BASE", 1.0)
        monkeypatch.setattr(direct, "UNROLL_PER_TERM", 0.0)
        planner._plan.cache_clear()
        try:
            assert planner.plan(spec, F32) == "direct"
        finally:
            planner._plan.cache_clear()


def test_transposed_convs_skip_the_zeros_unless_a_kernel_gradient_pays(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A transposed convolution's forward skips the zeros. Differentiated on the CPU, its
    values run Winograd, whose own transpose computes the kernel gradient
    (`_gradients.kernel_gradient_like`) for less than the patches' after scatter; where
    that transpose is not taken, the differentiated pick is the forward's."""
    spec = ConvSpec.from_lax((8, 28, 28, 64), (3, 3, 64, 32), (1, 1), ((2, 1), (2, 1)),
                             (2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    forward = planner.plan(spec, F32)
    assert forward in ("polyphase", "scatter")
    assert _gradients.kernel_gradient_like(spec, "winograd", "cpu") == "winograd"
    assert _gradients.kernel_gradient_like(spec, forward, "cpu") in ("hybrid", "patches")
    assert planner.plan(spec, F32, differentiated=True) == "winograd"
    monkeypatch.setattr(_gradients, "WINOGRAD_KERNEL_GRADIENT_PLATFORMS", ())
    planner._plan.cache_clear()
    try:
        assert _gradients.kernel_gradient_like(spec, "winograd", "cpu") != "winograd"
        assert planner.plan(spec, F32, differentiated=True) == forward
    finally:
        monkeypatch.undo()
        planner._plan.cache_clear()


@pytest.mark.parametrize(("x", "k", "f"), [
    ((4, 16, 16, 16, 32), (3, 3, 3), 32), ((2, 32, 32, 32, 16), (3, 3, 3), 16),
    ((8, 8, 8, 8, 64), (3, 3, 3), 64), ((1, 48, 48, 48, 8), (3, 3, 3), 16),
    ((8, 4096, 64), (31,), 64)])
def test_long_windows_sum_their_offsets_in_a_loop(
        x: tuple[int, ...], k: tuple[int, ...], f: int) -> None:
    """Windows of 27 taps and more run `accumulate` (measured the fastest forward on these
    four volumes, 0.29-0.90x shift's time, and 0.71-0.87x shift's at 1-D k = 31), values and
    gradients; shorter windows over the same channels do not (3x3 over one plane, 1-D
    k = 15, where it measured 1.01-1.51x shift's): `accumulate.LONG_WINDOW_OVERHEAD` scales
    long windows alone."""
    from jconv.strategies import accumulate

    spec = _spec(x, k, f)
    assert planner.plan(spec, F32) == "accumulate"
    assert planner.plan(spec, F32, differentiated=True) == "accumulate"
    short = (_spec((x[0] * x[1], *x[2:]), (3, 3), f) if len(k) == 3 else _spec(x, (15,), f))
    assert planner.plan(short, F32) != "accumulate"
    unscaled = STRATEGIES["accumulate"].predict(spec).forward / accumulate.LONG_WINDOW_OVERHEAD
    assert unscaled > STRATEGIES["shift"].predict(spec).forward  # what the constant overturns


def test_fft_is_not_picked_where_measured_slower() -> None:
    """Channel mixing per frequency is a batch of tiny GEMMs: FFT lost every benchmark case."""
    for k in (3, 15, 31):
        assert planner.plan(_spec((8, 4096, 64), (k,), 64), F32) != "fft"


def test_long_1d_windows_use_dft_tiles_when_speed_is_asked_for() -> None:
    """1-D, 64 channels: the DFT tiles measured 0.5-0.9x native (forward and backward) at
    k = 15 and 31; at k = 3 summing taps is faster and the tiles are not allowed. Their
    error is normwise only: by default (lax's accuracy class) they are never planned."""
    for k in (15, 31):
        spec = _spec((8, 4096, 64), (k,), 64)
        for precision in ("tensorfloat32", "bfloat16", "fastest"):
            assert planner.plan(spec, F32, precision=precision) == "dft"
            assert planner.plan(spec, F32, differentiated=True, precision=precision) == "dft"
        assert "dft" not in (planner.plan(spec, F32), planner.plan(spec, F32, differentiated=True))
        with jax.default_matmul_precision("tensorfloat32"):
            assert planner.plan(spec, F32) == "dft"
    spec = _spec((8, 4096, 64), (3,), 64)
    fast = dict(precision="tensorfloat32")
    assert "dft" not in (planner.plan(spec, F32, **fast),
                         planner.plan(spec, F32, differentiated=True, **fast))
    assert STRATEGIES["dft"].predict(spec).forward == math.inf


@pytest.mark.parametrize("precision", [None, "highest", "float32", "default",
                                       lax.Precision.DEFAULT, lax.Precision.HIGHEST,
                                       ("tensorfloat32", "highest")])
def test_default_calls_keep_lax_accuracy_class(precision: object) -> None:
    """Without a request for speed, auto plans only lowerings whose error is that of summing
    the taps: a 9x9 circular-padded convolution of ones is exact, as lax's is on the CPU
    (the DFT tiles, picked for a 1-D window of 31 taps over 64 channels when speed is asked
    for, are not)."""
    assert not planner.allows_normwise(precision)
    x, w = jnp.ones((2, 20, 20, 3), jnp.float32), jnp.ones((9, 9, 3, 4), jnp.float32)
    args = dict(window_strides=(1, 1), padding=((4, 4), (4, 4)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    spec = ConvSpec.from_lax(x.shape, w.shape, **args)
    for differentiated in (False, True):
        pick = planner.plan(spec, F32, differentiated=differentiated, precision=precision)
        assert STRATEGIES[pick].ACCURACY == "summation", pick
    y = jconv.conv_general_dilated(x, w, **args, precision=precision)  # type: ignore[arg-type]
    np.testing.assert_array_equal(np.asarray(y), np.asarray(lax.conv_general_dilated(x, w, **args)))
    long = _spec((8, 4096, 64), (31,), 64)
    assert STRATEGIES[planner.plan(long, F32, precision=precision)].ACCURACY == "summation"
    fast = planner.plan(long, F32, precision="bfloat16")
    assert STRATEGIES[fast].ACCURACY == "normwise", fast  # the fast class pays there


def test_lowerings_state_their_accuracy_class() -> None:
    """The Fourier lowerings and F(4x4, 3x3) are normwise-accurate only; the rest sum taps."""
    normwise = {n for n, m in STRATEGIES.items() if m.ACCURACY == "normwise"}
    assert normwise == {"fft", "dft", "winograd4"}
    assert {m.ACCURACY for m in STRATEGIES.values()} == {"normwise", "summation"}


def test_the_plan_follows_the_accumulation_dtype() -> None:
    """float16 operands accumulated in float32 plan (and compute) like float32 operands: the
    same lowering, the same result bit for bit."""
    rng = np.random.default_rng(3)
    x16 = jnp.asarray(rng.standard_normal((2, 8, 8, 32)), jnp.float16)
    w16 = jnp.asarray(rng.standard_normal((3, 3, 32, 64)), jnp.float16)
    args = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    spec = ConvSpec.from_lax(x16.shape, w16.shape, **args)
    # the item size moves the copies' predicted time: planned by the input, the two differ
    assert planner.plan(spec, jnp.float16) != planner.plan(spec, F32)
    got = jconv.conv_general_dilated(x16, w16, **args, preferred_element_type=jnp.float32)
    want = jconv.conv_general_dilated(x16.astype(jnp.float32), w16.astype(jnp.float32), **args)
    assert got.dtype == want.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("k", [1, 3, 7, 15])
def test_small_windows_of_exact_values_stay_exact(k: int) -> None:
    """Below `fft.MIN_TAPS` and `dft.MIN_TAPS` auto never takes the Fourier lowerings, whose
    round-off touches every output, nor for one channel, where summing taps costs less: a
    conv of ones over ones counts the taps exactly, as the definition does."""
    x, w = jnp.ones((1, 30, 1), jnp.float32), jnp.ones((k, 1, 1), jnp.float32)
    y = jconv.conv(x, w, padding=((k // 2, k // 2),), layout="NWC")
    taps = np.convolve(np.ones(30), np.ones(k), mode="same")
    np.testing.assert_array_equal(np.asarray(y)[0, :, 0], taps)
    assert planner.plan(_spec((1, 30, 1), (k,), 1), F32) not in ("fft", "dft")


def test_winograd4_is_only_taken_when_asked_for() -> None:
    """Opt-in (``AUTO = False``): auto never picks F(4x4, 3x3); a tuner may time it where the
    caller asks for speed (its accuracy class is normwise)."""
    assert not STRATEGIES["winograd4"].AUTO
    wide = _spec((8, 28, 28, 256), (3, 3), 256)
    assert "winograd4" not in planner.candidates(wide, F32, opt_in=True)
    assert "winograd4" in planner.candidates(wide, F32, "fastest", opt_in=True)
    for c in (16, 64, 128, 256):
        spec = _spec((8, 28, 28, c), (3, 3), c)
        picks = (planner.plan(spec, F32), planner.plan(spec, F32, differentiated=True))
        assert "winograd4" not in picks
    x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 3))
    y = jconv.conv(x, w, strategy="winograd4")
    np.testing.assert_allclose(np.asarray(y), np.asarray(jconv.conv(x, w)), rtol=1e-6)


def test_dense_uses_a_gemm_lowering() -> None:
    for spec in (_spec((8, 28, 28, 128), (3, 3), 128), _spec((8, 28, 28, 128), (1, 1), 256)):
        assert planner.plan(spec, F32) in ("shift", "patches", "hybrid", "winograd", "scatter")


def test_integer_dtypes_never_get_fft_or_winograd() -> None:
    spec = _spec((8, 4096, 64), (31,), 64)
    assert planner.plan(spec, jnp.dtype(jnp.int32)) not in ("fft", "winograd")
    spec = _spec((8, 28, 28, 128), (3, 3), 128, feature_group_count=4)
    assert planner.plan(spec, F32) == "winograd"
    assert planner.plan(spec, jnp.dtype(jnp.int32)) != "winograd"


@pytest.mark.parametrize("differentiated", [False, True])
def test_the_plan_follows_what_the_lowerings_state(
    monkeypatch: pytest.MonkeyPatch, differentiated: bool
) -> None:
    """The planner is a plain choice over the modules' statements: a lowering that states the
    least time is picked (differentiated, the kernel gradient runs like it too,
    `_gradients.kernel_gradient_like`), one that states ``AUTO = False`` never is, one that
    states it cannot run the spec never is."""
    spec = _spec((4, 20, 20, 32), (3, 3), 32)
    before = planner.plan(spec, F32, differentiated=differentiated)
    other = next(n for n, m in STRATEGIES.items()
                 if n != before and m.AUTO and m.applicable(spec, F32) is None)
    time = Prediction(1e-12, 0.0, 1e-12)
    monkeypatch.setattr(STRATEGIES[other], "predict", lambda spec, dtype=F32: time)
    monkeypatch.setattr(_gradients, "kernel_gradient_like", lambda spec, values, platform: other)
    planner._plan.cache_clear()
    assert planner.plan(spec, F32, differentiated=differentiated) == other
    monkeypatch.setattr(STRATEGIES[other], "AUTO", False)
    planner._plan.cache_clear()
    assert planner.plan(spec, F32, differentiated=differentiated) == before
    monkeypatch.setattr(STRATEGIES[other], "AUTO", True)
    monkeypatch.setattr(STRATEGIES[other], "applicable", lambda spec, dtype: "not today")
    planner._plan.cache_clear()
    assert planner.plan(spec, F32, differentiated=differentiated) == before
    planner._plan.cache_clear()


@pytest.mark.single_device
def test_budget_excludes_big_lowerings_and_forced_ones_raise() -> None:
    spec = _spec((8, 56, 56, 64), (3, 3), 64)
    patches = float(STRATEGIES["patches"].cost(spec).temp_bytes)
    direct_free = min(float(m.cost(spec).temp_bytes) for m in STRATEGIES.values()
                      if m.AUTO and m.applicable(spec, F32) is None)
    budget = int(direct_free) + 1
    assert budget < patches
    planner.set_memory_budget(budget)
    pick = planner.plan(spec, F32)
    assert float(STRATEGIES[pick].cost(spec).temp_bytes) <= budget
    x = jax.ShapeDtypeStruct((8, 56, 56, 64), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)
    # raised while tracing (eval_shape allocates nothing), eagerly and under jit alike
    with pytest.raises(ValueError, match=r"'patches'.*exceed the memory budget"):
        jax.eval_shape(lambda a, b: jconv.conv(a, b, strategy="patches"), x, w)
    with pytest.raises(ValueError, match=r"'patches'.*exceed the memory budget"):
        jax.jit(lambda a, b: jconv.conv(a, b, strategy="patches")).lower(x, w)


@pytest.mark.single_device
def test_nothing_fits_raises() -> None:
    planner.set_memory_budget(1)
    with pytest.raises(ValueError, match="No lowering fits the memory budget"):
        jconv.conv(jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2)))


def test_default_budget_is_a_fraction_of_available_memory() -> None:
    avail = planner.available_memory()
    assert avail > 0
    assert abs(planner.get_memory_budget() - planner.BUDGET_FRACTION * avail) <= 0.05 * avail
    planner.set_memory_budget(12345)
    assert planner.get_memory_budget() == 12345


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "1GB"])
def test_bad_budget(bad: object) -> None:
    with pytest.raises(ValueError, match="`nbytes`"):
        planner.set_memory_budget(bad)  # type: ignore[arg-type]


def test_choice_is_cached_per_spec() -> None:
    spec = _spec((2, 12, 12, 8), (3, 3), 8)
    planner.plan(spec, F32)
    before = planner._plan.cache_info().hits
    assert planner.plan(spec, F32) == planner.plan(spec, F32)
    assert planner._plan.cache_info().hits == before + 2


@pytest.mark.single_device
def test_the_cached_choice_follows_the_batch_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch split over devices (`partition_factor`) keeps the kernel gradient's chunks on
    their devices, which changes the differentiated pick of 3x3 16 -> 64 over 2 x 14 x 14
    (Winograd unsplit, the hybrid split in two): the cache must not serve one split's pick
    to the other."""
    spec = _spec((2, 14, 14, 16), (3, 3), 64)

    def split(devices: int) -> str:
        for module in (planner, _gradients, strategies_common):
            monkeypatch.setattr(module, "partition_factor", lambda n: math.gcd(n, devices))
        return planner.plan(spec, F32, differentiated=True)

    cached = [split(1), split(2), split(1)]
    planner._plan.cache_clear()
    planner._fits.cache_clear()
    fresh = split(2)
    assert cached == [split(1), fresh, cached[0]]
    assert cached[0] != fresh


@pytest.mark.parametrize("bad", ["fast", "", None, 3])
def test_unknown_strategy_raises_eagerly_and_under_jit(bad: object) -> None:
    x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
    with pytest.raises(ValueError, match="`strategy`"):
        jconv.conv(x, w, strategy=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`strategy`"):
        jax.jit(lambda a, b: jconv.conv(a, b, strategy=bad))(x, w)  # type: ignore[arg-type]


def test_auto_matches_lax_on_the_benchmark_shapes_scaled_down() -> None:
    """Whatever the planner picks, results equal lax's (small versions of the cases)."""
    rng = np.random.default_rng(0)
    for x_shape, k, f, kw in [
        ((2, 14, 14, 16), (3, 3), 16, {}),
        ((2, 14, 14, 32), (3, 3), 32, dict(feature_group_count=32)),
        ((2, 256, 8), (31,), 8, {}),
        ((2, 15, 15, 3), (7, 7), 8, dict(window_strides=(2, 2))),
    ]:
        spec = _spec(x_shape, k, f, **dict(kw))
        x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
        w = jnp.asarray(rng.standard_normal(spec.rhs_shape), jnp.float32)
        ns = len(k)
        s = "DHW"[-ns:] if ns > 1 else "W"
        args = dict(window_strides=kw.get("window_strides", (1,) * ns), padding="SAME",
                    dimension_numbers=(f"N{s}C", f"{s}IO", f"N{s}C"),
                    feature_group_count=kw.get("feature_group_count", 1),
                    precision=lax.Precision.HIGHEST)
        want = lax.conv_general_dilated(x, w, **args)
        got = jconv.conv_general_dilated(x, w, **args)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-3)


def test_depthwise_means_one_input_channel_per_feature_group() -> None:
    """The rule the planner and shift's fused path share."""
    assert _spec((2, 8, 8, 6), (3, 3), 6, feature_group_count=6).depthwise
    assert _spec((2, 8, 8, 6), (3, 3), 12, feature_group_count=6).depthwise  # multiplier 2
    assert not _spec((2, 8, 8, 6), (3, 3), 6, feature_group_count=3).depthwise
    assert not _spec((2, 8, 8, 1), (3, 3), 4).depthwise  # one channel, one group
    batch_grouped = ConvSpec.from_lax((4, 8, 8, 1), (3, 3, 1, 4), (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      batch_group_count=2)
    assert batch_grouped.groups == 2 and not batch_grouped.depthwise


def test_dense_gradients_do_not_move_the_pick() -> None:
    """A dense convolution's gradients are the engine's own, whatever computes the values:
    on these layers its differentiated pick is the forward one. Scatter's own transpose
    (single-channel inputs) is never planned."""
    for dense in (_spec((8, 56, 56, 16), (3, 3), 16), _spec((8, 28, 28, 64), (3, 3), 64),
                  _spec((8, 28, 28, 64), (1, 1), 128, window_strides=(2, 2))):
        assert _gradients.applies(dense)
        assert planner.plan(dense, F32, differentiated=True) == planner.plan(dense, F32)
    single = _spec((8, 56, 56, 1), (3, 3), 64)
    assert not _gradients.applies(single)
    assert math.isinf(STRATEGIES["scatter"].predict(single).backward)
    assert planner.plan(single, F32, differentiated=True) != "scatter"


DENSE_CASES = [((2, 12, 12, 16), (3, 3), 16, 1), ((2, 9, 9, 3), (5, 5), 4, 2)]


def _dense_case(i: int = 1) -> tuple[tuple[int, ...], ConvSpec, dict]:
    """A small dense convolution (`DENSE_CASES[i]`), its gradients the engine's own."""
    xs, k, f, stride = DENSE_CASES[i]
    kw = dict(window_strides=(stride, stride), padding="SAME",
              dimension_numbers=("NHWC", "HWIO", "NHWC"))
    spec = ConvSpec.from_lax(xs, (*k, xs[-1], f), **kw)
    assert _gradients.applies(spec)
    return xs, spec, kw


@pytest.mark.parametrize("i", range(len(DENSE_CASES)))
def test_resolve_gives_values_and_gradients_lowerings(i: int) -> None:
    """A forced strategy runs everything it can (the input gradient by the planner's pick
    where it cannot); "auto" plans the values, the differentiated values and the input
    gradient's convolution each."""
    _, spec, _ = _dense_case(i)
    grad = spec.input_gradient()
    for name, mod in STRATEGIES.items():
        if mod.applicable(spec, F32) is None and name != "pallas":
            want = name if mod.applicable(grad, F32) is None else planner.plan(grad, F32)
            assert planner.resolve(name, spec, F32) == (name, name, want)
    assert planner.resolve("auto", spec, F32) == (
        planner.plan(spec, F32), planner.plan(spec, F32, differentiated=True),
        planner.plan(grad, F32))
    depthwise = _spec((2, 8, 8, 4), (3, 3), 4, feature_group_count=4)
    assert planner.resolve("auto", depthwise, F32).input_gradient is None


@pytest.mark.parametrize("i", range(len(DENSE_CASES)))
def test_dense_gradients_differentiate_like_lax(i: int) -> None:
    """The engine's gradients of a dense convolution: orders 1 and 2, forward and reverse
    mode, and values and VJP equal to lax's (float64)."""
    from jax.test_util import check_grads

    xs, spec, kw = _dense_case(i)
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal(xs))
        w = jnp.asarray(rng.standard_normal(spec.rhs_shape))
        ct = jnp.asarray(rng.standard_normal(spec.out_shape))
        def ours(a, b):
            return jconv.conv_general_dilated(a, b, **kw)

        check_grads(ours, (x, w), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)
        y, pullback = jax.vjp(ours, x, w)  # values by the differentiated pick here
        y_lax, pullback_lax = jax.vjp(lambda a, b: lax.conv_general_dilated(a, b, **kw), x, w)
        got, want = (y, *pullback(ct)), (y_lax, *pullback_lax(ct))
        for g, r in zip(got, want, strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-12, atol=1e-12)


@pytest.mark.single_device
def test_derivatives_run_the_backward_lowering(monkeypatch: pytest.MonkeyPatch) -> None:
    """Differentiated, a dense convolution's values run by the differentiated pick and its two
    tangents by `_gradients` (the input's by the pick for `ConvSpec.input_gradient`, scatter's
    by `scatter.lower_flipped`);
    otherwise the values' pick runs alone: a record of which lowering traced what."""
    jax.clear_caches()  # trace afresh, with the recording lowerings
    xs, spec, kw = _dense_case()
    picks = planner.resolve("auto", spec, F32)
    assert picks.input_gradient == planner.plan(spec.input_gradient(), F32)
    calls: list[str] = []

    def recording(name: str, orig: Any) -> Any:
        def record(*a: Any, **k: Any) -> Any:
            calls.append(name)
            return orig(*a, **k)
        return record

    for name in {picks.values, picks.differentiated, picks.input_gradient}:
        monkeypatch.setattr(STRATEGIES[name], "lower", recording(name, STRATEGIES[name].lower))
    # scatter's input gradient reads the forward kernel unflipped (`_gradients.input_tangent`)
    flipped = STRATEGIES["scatter"].lower_flipped
    monkeypatch.setattr(STRATEGIES["scatter"], "lower_flipped", recording("scatter", flipped))
    for term in ("input_tangent", "kernel_tangent"):
        monkeypatch.setattr(_engine, term, recording(term, getattr(_engine, term)))
    x, w = jnp.ones(xs), jnp.ones(spec.rhs_shape)

    def loss(a, b):
        return jnp.sum(jconv.conv_general_dilated(a, b, **kw) ** 2)

    jax.grad(loss, (0, 1))(x, w)
    # the primal is traced (once, then cached) but only the JVP rule is evaluated
    tangents = [picks.differentiated, "input_tangent", picks.input_gradient, "kernel_tangent"]
    assert set(calls[:-4]) <= {picks.values} and calls[-4:] == tangents, calls
    calls.clear()
    jax.grad(loss, 0)(x, w)  # w is not differentiated: its tangent is a symbolic zero
    assert set(calls[:-3]) <= {picks.values} and calls[-3:] == tangents[:3], calls
    jax.clear_caches()
    calls.clear()
    loss(x, w)
    assert calls == [picks.values], calls


def test_dense_gradients_under_vmap_checkpoint_and_bfloat16() -> None:
    """The engine's gradients of a dense convolution compose with vmap, checkpoint and a
    bfloat16 input (gradients in bfloat16, like lax's)."""
    xs, spec, kw = _dense_case()
    kw = dict(kw, precision=lax.Precision.HIGHEST)
    rng = np.random.default_rng(6)
    xb = jnp.asarray(rng.standard_normal((3, *xs)), jnp.float32)  # a vmapped axis
    w = jnp.asarray(rng.standard_normal(spec.rhs_shape), jnp.float32)

    def loss(conv, x, w):
        return jnp.sum(jnp.tanh(jax.checkpoint(lambda a, b: conv(a, b, **kw))(x, w)))

    for dtype, tol in ((jnp.float32, 1e-4), (jnp.bfloat16, 5e-2)):
        a, b = xb.astype(dtype), w.astype(dtype)
        got = jax.vmap(jax.grad(lambda x, w: loss(jconv.conv_general_dilated, x, w), (0, 1)),
                       (0, None))(a, b)
        want = jax.vmap(jax.grad(lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1)),
                        (0, None))(a, b)
        for g, r in zip(got, want, strict=True):
            assert g.dtype == r.dtype == dtype
            scale = float(jnp.max(jnp.abs(r.astype(jnp.float32))))
            err = float(jnp.max(jnp.abs(g.astype(jnp.float32) - r.astype(jnp.float32))))
            assert err <= tol * scale, (dtype, err, scale)


def test_temporaries_past_the_mmap_threshold_are_priced_as_faulted_in() -> None:
    """A 3x3 layer over one 330 x 330 x 8 image to 16 channels: scatter's 64 MiB of products
    and the hybrid's 40 MiB of row patches pass glibc's mmap threshold and fault in on
    every call (forward measured 20.8 and 15.2 ms against Winograd's 4.2); Winograd's 30 MiB
    stay below it. `planner.predict` adds the first touch to the copies past the threshold
    only, and it turns the pick from the hybrid to Winograd. Accelerators (rates not fitted
    there) have no first touch."""
    import dataclasses

    from jconv.strategies import _model

    spec = _spec((1, 330, 330, 8), (3, 3), 16)
    assert planner.plan(spec, F32) == planner.plan(spec, F32, differentiated=True) == "winograd"
    temp = {n: float(STRATEGIES[n].cost(spec).temp_bytes)
            for n in ("scatter", "hybrid", "winograd")}
    assert temp["winograd"] < _model.MMAP_THRESHOLD_BYTES < min(temp["scatter"], temp["hybrid"])
    own = STRATEGIES["scatter"].predict(spec)
    touched = planner.predict("scatter", spec)
    assert touched.copies == own.copies + temp["scatter"] / _model.rates().first_touch_bytes_per_s
    assert (touched.arithmetic, touched.backward) == (own.arithmetic, own.backward)
    assert planner.predict("winograd", spec) == STRATEGIES["winograd"].predict(spec)
    try:
        _model.set_rates(dataclasses.replace(_model.RATES["cpu"],
                                             first_touch_bytes_per_s=math.inf))
        assert planner.plan(spec, F32) == "hybrid"  # what the first touch overturns
    finally:
        _model.set_rates(None)
    assert math.isinf(_model._from_env(None, "gpu").first_touch_bytes_per_s)


def test_rates_come_from_a_table_a_file_or_the_caller(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared rates are data: `RATES` per platform, ``$JCONV_RATES`` (what
    ``benchmarks/fit_rates.py --out`` writes) or `set_rates`; plans follow them."""
    from jconv.strategies import _model

    assert _model.rates() == _model.RATES["cpu"]
    spec = _spec((8, 28, 28, 64), (3, 3), 64, feature_group_count=16)  # 4 channels a group
    slow_direct = _model.Rates(**{**vars(_model.RATES["cpu"]), "elementwise_flops": 1.0})
    fast_direct = _model.Rates(**{**vars(_model.RATES["cpu"]), "elementwise_flops": 1e18})
    try:
        _model.set_rates(slow_direct)
        assert planner.plan(spec, F32) != "direct"
        _model.set_rates(fast_direct)
        assert planner.plan(spec, F32) == "direct"  # the plan's cache knows the rates
        path = tmp_path / "rates.json"
        path.write_text(json.dumps(vars(slow_direct)))
        monkeypatch.setenv("JCONV_RATES", str(path))
        _model.set_rates(None)
        assert _model.rates() == slow_direct
        (tmp_path / "bad.json").write_text("{not json")
        monkeypatch.setenv("JCONV_RATES", str(tmp_path / "bad.json"))
        with pytest.raises(ValueError, match="JCONV_RATES"):
            _model.rates()
    finally:
        monkeypatch.delenv("JCONV_RATES", raising=False)
        _model.set_rates(None)
    with pytest.raises(TypeError, match="`rates`"):
        _model.set_rates({"peak_flops": 1})  # type: ignore[arg-type]


def test_atrous_loses_exact_ties() -> None:
    """A 2-tap window dilated 16 over 32 channels: atrous runs scatter on the phase images,
    its phase split standing in for the pad scatter makes itself, so the two predict the
    same time; the planner takes scatter (measured 0.77-0.87x atrous's forward), as
    `STRATEGIES` lists atrous last."""
    spec = _spec((4, 16000, 32), (2,), 32, rhs_dilation=(16,))
    atrous, scatter = (planner.predict(n, spec) for n in ("atrous", "scatter"))
    assert atrous.forward == pytest.approx(scatter.forward, rel=1e-12)
    assert list(STRATEGIES)[-1] == "atrous"
    assert planner.plan(spec, F32) == planner.plan(spec, F32, differentiated=True) == "scatter"
