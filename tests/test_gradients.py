"""`jconv._gradients`: a dense convolution's gradients as two convolutions.

Values of the gradients against lax are tested with every other gradient (test_core_grads,
test_planner, test_strategies); here: which convolutions take this path, the kernel
gradient's chunks, and that the chunk rule keeps late layers' temporaries at lax's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from _core_cases import loop_operands_with_a_unit_axis
from jax import lax

import jconv
from jconv import ConvSpec, _gradients, planner
from jconv.strategies import scatter, winograd

DN = ("NHWC", "HWIO", "NHWC")


def _spec(x: tuple[int, ...], k: tuple[int, ...], f: int, stride: int = 1,
          **kw: int) -> ConvSpec:
    g = kw.get("feature_group_count", 1)
    return ConvSpec.from_lax(x, (*k, x[-1] // g, f), (stride,) * len(k), "SAME",
                             dimension_numbers=DN, **kw)


def test_which_convolutions_take_the_two_convolutions() -> None:
    assert _gradients.applies(_spec((2, 8, 8, 4), (3, 3), 8))
    assert _gradients.applies(_spec((2, 8, 8, 4), (3, 3), 8, feature_group_count=2))
    assert not _gradients.applies(_spec((2, 8, 8, 4), (3, 3), 8, feature_group_count=4))
    assert not _gradients.applies(_spec((2, 8, 8, 1), (3, 3), 8))  # one input channel
    assert not _gradients.applies(_spec((4, 8, 8, 2), (3, 3), 4, batch_group_count=2))


def test_kernel_gradient_chunks() -> None:
    """Two images per chunk where the activations outweigh the kernel; the whole batch
    where the kernel does (late layers), or where the batch is no larger."""
    assert _gradients.chunk(_spec((8, 56, 56, 64), (3, 3), 64)) == 2
    assert _gradients.chunk(_spec((4, 4, 4, 1024), (1, 1), 2048, 2)) == 4
    assert _gradients.chunk(_spec((2, 56, 56, 64), (3, 3), 64)) == 2
    assert _gradients.chunk(_spec((3, 56, 56, 64), (3, 3), 64)) == 1


@pytest.mark.parametrize(("x", "k", "f", "stride"), [((4, 4, 4, 1024), (1, 1), 2048, 2),
                                                     ((4, 16, 16, 256), (1, 1), 512, 2)])
def test_late_layer_gradient_temporaries_within_lax(x: tuple[int, ...], k: tuple[int, ...],
                                                    f: int, stride: int) -> None:
    """The compiled gradient of a late ResNet-50 layer (big kernel, small activations) keeps
    no more temporary bytes than lax's (measured 0.75x and 0.6x)."""
    xs, ws = jnp.ones(x), jnp.ones((*k, x[-1], f))

    def temps(conv) -> int:
        def loss(a: jax.Array, b: jax.Array) -> jax.Array:
            return jnp.sum(conv(a, b, (stride, stride), "SAME", dimension_numbers=DN) ** 2)
        compiled = jax.jit(jax.grad(loss, (0, 1))).lower(xs, ws).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temps(jconv.conv_general_dilated) <= temps(lax.conv_general_dilated)


def test_a_pointwise_input_gradient_reads_the_kernel_in_place() -> None:
    """The input gradient of a 1x1 convolution contracts the kernel as it is: its flipped,
    swapped kernel (`ConvSpec.flip_kernel`) is a transpose XLA folds into the GEMM, not a
    copy (one 2 MB copy per layer before, held from the program's start to the backward),
    and the gradient equals lax's."""
    x = jax.random.normal(jax.random.key(0), (2, 2, 2, 512))
    w = jax.random.normal(jax.random.key(1), (1, 1, 512, 1024))
    ct = jax.random.normal(jax.random.key(2), (2, 2, 2, 1024))

    def input_gradient(conv):
        def f(a: jax.Array, b: jax.Array) -> jax.Array:
            y = conv(a, b, (1, 1), "VALID", dimension_numbers=DN)
            return jnp.vdot(y, ct)
        return jax.jit(jax.grad(f))

    ours = input_gradient(jconv.conv_general_dilated)
    temps = ours.lower(x, w).compile().memory_analysis().temp_size_in_bytes
    assert temps < w.nbytes // 4, temps
    want = input_gradient(lax.conv_general_dilated)(x, w)
    np.testing.assert_allclose(ours(x, w), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("x", "window"), [((2, 9, 9, 16), (3, 3)), ((2, 33, 16), (3,))])
def test_winograds_input_gradient_transforms_the_kernel_as_it_is(
        x: tuple[int, ...], window: tuple[int, ...]) -> None:
    """A Winograd layer's input gradient transforms the forward kernel as it is and reads
    its points permuted and transposed (`winograd.lower_flipped`): the program reverses no
    kernel (the flip's transposed reads, fused into the transform's adds, made a 512-channel
    layer's input gradient 47 ms against its forward's 8), and the gradient equals lax's and
    the flipped kernel's Winograd exactly on integers, in 2-D and 1-D."""
    rng = np.random.default_rng(0)
    dn = DN if len(window) == 2 else ("NWC", "WIO", "NWC")
    ones = (1,) * len(window)
    xs = jnp.asarray(rng.integers(-3, 4, x), jnp.float32)
    ws = jnp.asarray(rng.integers(-3, 4, (*window, x[-1], 24)), jnp.float32)
    spec = ConvSpec.from_lax(xs.shape, ws.shape, ones, "SAME", dimension_numbers=dn)
    assert planner.resolve("winograd", spec, jnp.float32).input_gradient == "winograd"
    ct = jnp.asarray(rng.integers(-3, 4, spec.out_shape), jnp.float32)

    def input_gradient(conv, **kw):
        def f(a: jax.Array, b: jax.Array) -> jax.Array:
            return jnp.vdot(conv(a, b, ones, "SAME", dimension_numbers=dn, **kw), ct)
        return jax.grad(f)

    ours = input_gradient(jconv.conv_general_dilated, strategy="winograd")
    assert "rev[" not in str(jax.make_jaxpr(ours)(xs, ws))
    want = input_gradient(lax.conv_general_dilated)(xs, ws)
    np.testing.assert_array_equal(jax.jit(ours)(xs, ws), want)
    grad_spec = spec.input_gradient()
    cct = jnp.asarray(ct).reshape(spec.canonical_out_shape)
    flipped = winograd.lower_flipped(grad_spec, cct, ws, precision=None, acc_dtype=jnp.float32)
    copied = winograd.lower(grad_spec, cct, spec.flip_kernel(ws), precision=None,
                            acc_dtype=jnp.float32)
    np.testing.assert_array_equal(flipped, copied)
    with pytest.raises(ValueError, match="feature_group_count"):
        grouped = ConvSpec.from_lax((2, 9, 9, 16), (3, 3, 8, 24), (1, 1), "SAME",
                                    dimension_numbers=DN, feature_group_count=2)
        winograd.lower_flipped(grouped, jnp.zeros((2, 9, 9, 16)), jnp.zeros((3, 3, 8, 24)),
                               precision=None, acc_dtype=jnp.float32)


@pytest.mark.parametrize(("x", "stride", "strategy"),
                         [((8, 7, 7, 256), 1, "scatter"), ((8, 14, 14, 128), 2, "auto")])
def test_scatters_input_gradient_reads_the_kernel_in_place(x: tuple[int, ...], stride: int,
                                                          strategy: str) -> None:
    """Scatter's input gradient of a 3x3 layer contracts the forward kernel as it is
    (`jconv.strategies.scatter.lower_flipped`): its compiled program holds the products
    its cost model states and no flipped copy of the kernel (a 2.25 MB copy per late
    ResNet-18 layer before, held from the forward pass to the backward), and the gradient
    equals lax's exactly on integers (strided: the products spread, `scatter.spreads`;
    there the planner picks scatter for the input gradient, which scatter cannot be forced
    for: it runs no strided forward)."""
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.integers(-3, 4, x), jnp.float32)
    ws = jnp.asarray(rng.integers(-3, 4, (3, 3, x[-1], 256)), jnp.float32)
    spec = ConvSpec.from_lax(xs.shape, ws.shape, (stride, stride), "SAME",
                             dimension_numbers=DN)
    assert planner.resolve(strategy, spec, jnp.float32).input_gradient == "scatter"
    ct = jnp.asarray(rng.integers(-3, 4, spec.out_shape), jnp.float32)

    def input_gradient(conv, **kw):
        def f(a: jax.Array, b: jax.Array) -> jax.Array:
            return jnp.vdot(conv(a, b, (stride, stride), "SAME", dimension_numbers=DN, **kw),
                            ct)
        return jax.jit(jax.grad(f))

    ours = input_gradient(jconv.conv_general_dilated, strategy=strategy)
    temps = ours.lower(xs, ws).compile().memory_analysis().temp_size_in_bytes
    assert temps <= float(scatter.cost(spec.input_gradient()).temp_bytes), temps
    np.testing.assert_array_equal(ours(xs, ws), input_gradient(lax.conv_general_dilated)(xs, ws))


def test_a_kernel_gradient_over_the_budget_keeps_the_lowerings_own() -> None:
    """Under a budget the kernel gradient's chunk would exceed (a 3-D volume, where only
    the loop over offsets fits), the planner leaves the gradients to the lowering, whose
    own transposes it budgeted, and they still match lax's."""
    spec = ConvSpec.from_lax((2, 12, 12, 12, 8), (3, 3, 3, 8, 8), (1, 1, 1), "SAME",
                             dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    need = _gradients.temp_bytes(spec, jnp.float32)
    assert planner.engine_gradients(spec, jnp.float32, budget=int(need))
    jconv.set_memory_budget(int(need) - 1)
    try:
        assert not planner.engine_gradients(spec, jnp.float32)
        picks = planner.resolve("auto", spec, jnp.float32)
        assert picks.input_gradient is None
        x = jax.random.normal(jax.random.key(0), spec.lhs_shape)
        w = jax.random.normal(jax.random.key(1), spec.rhs_shape)
        kw = dict(window_strides=(1, 1, 1), padding="SAME",
                  dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))

        def grads(conv):
            return jax.grad(lambda a, b: jnp.sum(conv(a, b, **kw) ** 2), (0, 1))(x, w)

        for got, want in zip(grads(jconv.conv_general_dilated),
                             grads(lax.conv_general_dilated), strict=True):
            assert float(jnp.max(jnp.abs(got - want))) <= 1e-4 * float(jnp.max(jnp.abs(want)))
    finally:
        jconv.set_memory_budget(None)


def test_a_one_dimensional_winograd_layer_takes_winograds_kernel_gradient() -> None:
    """A 1-D 3-tap layer planned on F(2, 3) gets its kernel gradient by Winograd's own
    transpose over chunks of images: reverse and forward mode match lax, also under
    `vmap`, and the program holds a chunk's tiles, not the batch's (8 images of 512 x 64:
    2.4 MB of temporaries, 5.2 MB unchunked)."""
    dn = ("NWC", "WIO", "NWC")
    spec = ConvSpec.from_lax((8, 512, 64), (3, 64, 64), (1,), "SAME", dimension_numbers=dn)
    assert planner.plan(spec, jnp.float32, differentiated=True) == "winograd"
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 512, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 64, 64)), jnp.float32) / 8
    ct = jnp.asarray(rng.standard_normal((8, 512, 64)), jnp.float32)

    def kernel_grad(conv: Any, a: jax.Array, b: jax.Array) -> jax.Array:
        return jax.vjp(lambda v: conv(a, v, (1,), "SAME", dimension_numbers=dn), b)[1](ct)[0]

    ref = jax.jit(lambda a, b: kernel_grad(lax.conv_general_dilated, a, b))
    got = jax.jit(lambda a, b: kernel_grad(jconv.conv_general_dilated, a, b))
    scale = float(jnp.abs(ref(x, w)).max())
    np.testing.assert_allclose(got(x, w), ref(x, w), atol=2e-6 * scale)
    batched = jax.vmap(got, in_axes=(None, 0))(x, jnp.stack([w, -w]))
    np.testing.assert_allclose(batched[1], ref(x, -w), atol=2e-6 * scale)
    tangent = jax.jvp(lambda v: jconv.conv_general_dilated(x, v, (1,), "SAME",
                                                           dimension_numbers=dn), (w,), (w,))[1]
    np.testing.assert_allclose(tangent, lax.conv_general_dilated(
        x, w, (1,), "SAME", dimension_numbers=dn), atol=2e-6 * float(jnp.abs(tangent).max()))
    temp = got.lower(x, w).compile().memory_analysis().temp_size_in_bytes
    whole = jax.jit(lambda a, b: kernel_grad(lambda *args, **kw: winograd.lower(
        spec, a, args[1], precision=None, acc_dtype=jnp.float32), a, b))
    assert _gradients.chunk(spec) < 8
    assert temp < 0.6 * whole.lower(x, w).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.single_device
@pytest.mark.parametrize(("x", "bound", "winograds"), [
    ((2, 24, 24, 64), None, True), ((4, 6, 6, 64), None, False), ((2, 24, 24, 16), None, True),
    ((2, 24, 24, 16), 2**18, False)])
def test_a_2d_winograd_layers_kernel_gradient_is_winograds_where_its_tiles_are_deep(
        x: tuple[int, ...], bound: int | None, winograds: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3x3 layer planned on Winograd takes its kernel gradient by Winograd's own transpose
    (16 GEMMs a chunk, one per transform point, contracting the chunk's tiles) on the CPU
    where a chunk's tiles are at least `WINOGRAD_KERNEL_GRADIENT_DEPTH` times ``C_g`` and
    their transform fits `WINOGRAD_KERNEL_GRADIENT_BYTES` (2 x 12 x 12 tiles, 64 or 16
    channels), else the blocks' (one GEMM a block; 2 x 3 x 3 tiles against 64 channels, or
    a bound below the 16-channel chunk's 288 KiB; or another platform's default backend);
    both equal lax's exactly on integers, also under `vmap`."""
    if bound is not None:
        monkeypatch.setattr(_gradients, "WINOGRAD_KERNEL_GRADIENT_BYTES", bound)
        jax.clear_caches()
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.integers(-3, 4, x), jnp.float32)
    ws = jnp.asarray(rng.integers(-3, 4, (3, 3, x[-1], 8)), jnp.float32)
    spec = ConvSpec.from_lax(xs.shape, ws.shape, (1, 1), "SAME", dimension_numbers=DN)
    assert _gradients.winograd_kernel_gradient(spec, "cpu") is winograds
    assert not any(_gradients.winograd_kernel_gradient(spec, p) for p in ("gpu", "tpu"))
    ct = jnp.asarray(rng.integers(-3, 4, spec.out_shape), jnp.float32)

    def kernel_grad(conv: Any, **kw: Any) -> Any:
        return lambda a, b: jax.vjp(
            lambda v: conv(a, v, (1, 1), "SAME", dimension_numbers=DN, **kw), b)[1](ct)[0]

    ours = kernel_grad(jconv.conv_general_dilated, strategy="winograd")
    count = _count_dots(jax.make_jaxpr(ours)(xs, ws).jaxpr)
    assert count == 16 + (16 if winograds else 1), count  # the forward's 16, then the loop's
    if winograds:  # traced as on a GPU (not compiled), it is the blocks'
        jax.clear_caches()
        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
        assert _count_dots(jax.make_jaxpr(ours)(xs, ws).jaxpr) == 16 + 1
        monkeypatch.undo()
        jax.clear_caches()
    want = kernel_grad(lax.conv_general_dilated)(xs, ws)
    np.testing.assert_array_equal(jax.jit(ours)(xs, ws), want)
    batched = jax.vmap(jax.jit(ours), in_axes=(None, 0))(xs, jnp.stack([ws, -ws]))
    np.testing.assert_array_equal(batched[0], want)
    if bound is not None:  # no later test traces under the lowered bound
        monkeypatch.undo()
        jax.clear_caches()


def _count_dots(jaxpr: Any) -> int:
    """dot_general equations in `jaxpr` and the jaxprs nested in it (a loop's body once)."""
    return sum((e.primitive.name == "dot_general")
               + sum(_count_dots(j) for j in jax.extend.core.jaxprs_in_params(e.params))
               for e in jaxpr.eqns)


_NWC = ("NWC", "WIO", "NWC")
_NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.single_device
@pytest.mark.parametrize(("x", "k", "f", "kw", "rows"), [
    ((3, 2500, 4), (15,), 3, dict(padding="SAME"), None),  # three blocks
    ((2, 2500, 3), (7,), 2, dict(padding="VALID", window_strides=(2,)), None),
    ((2, 3000, 3), (5,), 4, dict(padding=((4, 1),), rhs_dilation=(3,)), None),
    ((6, 100, 5), (31,), 6, dict(padding="SAME"), None),  # two images a step
    ((1, 5000, 2), (2,), 3, dict(padding="SAME", window_strides=(4,)), None),  # skips samples
    ((2, 700, 3), (4,), 2, dict(padding=((1, 2),), lhs_dilation=(2,)), None),
    ((6, 9, 3), (9,), 3, dict(padding=((-2, 3),)), None),
    # 2-D and 3-D, blocks of `rows` output rows
    ((2, 23, 17, 3), (3, 3), 4, dict(padding="SAME"), 5),
    ((2, 30, 19, 2), (3, 2), 3, dict(padding="VALID", window_strides=(2, 3)), 4),
    ((1, 25, 14, 3), (2, 3), 2, dict(padding=((4, 1), (0, 2)), rhs_dilation=(3, 2)), 6),
    ((3, 12, 10, 2), (3, 3), 2, dict(padding=((1, 2), (1, 1)), lhs_dilation=(2, 1)), 3),
    ((2, 14, 9, 3), (3, 3), 3, dict(padding=((-1, 2), (1, -1))), 4),
    ((4, 6, 5, 3), (3, 3), 2, dict(padding="SAME"), 12),  # two images a step
    ((2, 7, 6, 5, 2), (3, 3, 3), 3, dict(padding="SAME", window_strides=(1, 2, 1)), 3),
])
def test_a_layers_kernel_gradient_loops_over_blocks_of_outputs(
        monkeypatch: pytest.MonkeyPatch, x: tuple[int, ...], k: tuple[int, ...], f: int,
        kw: dict[str, Any], rows: int | None) -> None:
    """A dense layer not on Winograd's own transpose takes its kernel gradient over blocks of
    outputs (in 2-D and 3-D here `rows` rows a block): a loop whose GEMM contracts a block's
    channel-major patches ``(taps * C, outputs)`` along their rows. Gradients equal lax's
    exactly on integers, also jitted and under `vmap`, and forward mode through the blocks
    gives lax's tangent."""
    layouts = {1: _NWC, 2: _NHWC, 3: ("NDHWC", "DHWIO", "NDHWC")}
    kw = {"window_strides": (1,) * len(k), **kw, "dimension_numbers": layouts[len(k)]}
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.integers(-3, 4, x), jnp.float32)
    ws = jnp.asarray(rng.integers(-3, 4, (*k, x[-1], f)), jnp.float32)
    spec = ConvSpec.from_lax(xs.shape, ws.shape, **kw)
    if rows is not None:
        row_bytes = 4 * spec.taps * x[-1] * int(np.prod(spec.out_spatial[1:]))
        monkeypatch.setattr(_gradients, "BLOCK_BYTES", rows * row_bytes)
    assert _gradients.blocked(spec)
    images, rows_a_block, _ = _gradients._blocks(spec)
    outputs = images * rows_a_block * int(np.prod(spec.out_spatial[1:]))
    assert 4 * spec.taps * x[-1] * outputs <= _gradients.BLOCK_BYTES
    ct = jnp.asarray(rng.integers(-3, 4, spec.out_shape), jnp.float32)

    def grads(conv: Any, **extra: Any) -> Any:
        return lambda a, b: jax.vjp(lambda u, v: conv(u, v, **kw, **extra), a, b)[1](ct)

    ours = grads(jconv.conv_general_dilated, strategy="shift")
    loop_dots = [shape for shape, dims in _loop_dots(jax.make_jaxpr(ours)(xs, ws).jaxpr)
                 if shape == (spec.taps * x[-1], outputs) and dims == (1,)]
    assert loop_dots, "no GEMM over a block's channel-major patches"
    want = grads(lax.conv_general_dilated)(xs, ws)
    for got in (ours(xs, ws), jax.jit(ours)(xs, ws)):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    kernel = jax.jit(lambda a, b: ours(a, b)[1])
    np.testing.assert_array_equal(jax.vmap(kernel, in_axes=(0, None))(jnp.stack([xs, -xs]), ws)[1],
                                  -want[1])
    tangent = jax.jvp(lambda v: jconv.conv_general_dilated(xs, v, **kw, strategy="shift"),
                      (ws,), (ws - 1,))[1]
    np.testing.assert_array_equal(tangent, lax.conv_general_dilated(xs, ws - 1, **kw))


@pytest.mark.single_device
@pytest.mark.parametrize("n", [8, 64])
def test_a_large_batch_of_small_images_takes_its_kernel_gradient_in_block_steps(n: int) -> None:
    """Whole images a step: at most `CHUNK` in a small batch, the batch over `BLOCK_STEPS`
    in a large one (64 images of 4 x 4: 4 a step, one GEMM of ``(27, 64)`` patches a step
    over 16 steps), within `BLOCK_BYTES`; gradients equal lax's exactly on integers."""
    images = max(_gradients.CHUNK, n // _gradients.BLOCK_STEPS)
    rng = np.random.default_rng(1)
    kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=_NHWC)
    xs = jnp.asarray(rng.integers(-3, 4, (n, 4, 4, 3)), jnp.float32)
    ws = jnp.asarray(rng.integers(-3, 4, (3, 3, 3, 2)), jnp.float32)
    spec = ConvSpec.from_lax(xs.shape, ws.shape, **kw)
    assert _gradients.blocked(spec) and _gradients._blocks(spec) == (images, 4, 1)
    ct = jnp.asarray(rng.integers(-3, 4, spec.out_shape), jnp.float32)

    def grads(conv: Any, **extra: Any) -> Any:
        return lambda a, b: jax.vjp(lambda u, v: conv(u, v, **kw, **extra), a, b)[1](ct)

    ours = grads(jconv.conv_general_dilated, strategy="shift")
    jaxpr = jax.make_jaxpr(ours)(xs, ws).jaxpr
    assert (27, images * 16) in [shape for shape, _ in _loop_dots(jaxpr)]
    assert n // images in _scan_lengths(jaxpr)
    for a, b in zip(jax.jit(ours)(xs, ws), grads(lax.conv_general_dilated)(xs, ws),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def _scan_lengths(jaxpr: Any) -> list[int]:
    """The lengths of the loops (`scan`) in `jaxpr` and the jaxprs nested in it."""
    return [n for e in jaxpr.eqns
            for n in ([e.params["length"]] if e.primitive.name == "scan" else [])
            + [m for j in jax.extend.core.jaxprs_in_params(e.params) for m in _scan_lengths(j)]]


def _loop_dots(jaxpr: Any, in_loop: bool = False) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``(operand shape, contracted dimensions)`` of each operand of each dot_general inside
    a loop (`scan`) in `jaxpr` or the jaxprs nested in it."""
    found = []
    for e in jaxpr.eqns:
        if in_loop and e.primitive.name == "dot_general":
            (lhs, rhs), _ = e.params["dimension_numbers"]
            found += [(tuple(v.aval.shape), tuple(d))
                      for v, d in zip(e.invars, (lhs, rhs), strict=True)]
        for j in jax.extend.core.jaxprs_in_params(e.params):
            found += _loop_dots(j, in_loop or e.primitive.name == "scan")
    return found


@pytest.mark.single_device
@pytest.mark.parametrize(("x", "k", "f", "stride", "dilation"), [
    ((8, 4096, 64), (3,), 64, 1, 1),
    ((8, 4096, 64), (15,), 64, 1, 1), ((8, 4096, 64), (31,), 64, 1, 1),
    ((4, 3000, 16), (9,), 32, 2, 1), ((16, 200, 32), (5,), 32, 1, 2),
    ((1, 256, 256, 16), (3, 3), 16, 1, 1), ((4, 128, 128, 32), (3, 3), 32, 1, 1),
    ((2, 192, 192, 16), (5, 5), 24, 2, 1)])
def test_a_blocked_kernel_gradients_temporaries_are_its_blocks(
        x: tuple[int, ...], k: tuple[int, ...], f: int, stride: int, dilation: int) -> None:
    """`_gradients.temp_bytes` of a blocked kernel gradient (the input's blocks, a step's
    patches, the padded cotangent) is within 1.5x of the compiled program's temporaries,
    and where the layer is large, under the hybrid's chunk's that it replaces (1-D k = 15
    and 31 over 8 x 4096 x 64: 17 and 18 MB against 65 and 132 measured; 3x3 over
    1 x 256 x 256 x 16: 17 against 55). With one whole image a step (1-D k = 3) the loop
    reads the input in place, with no unit axis (5.2 MB with XLA's default flags, where a
    copy of it relaid out made 13.6)."""
    n = len(k)
    kw = dict(window_strides=(stride,) * n, padding="SAME", rhs_dilation=(dilation,) * n,
              dimension_numbers=_NHWC if n == 2 else _NWC)
    spec = ConvSpec.from_lax(x, (*k, x[-1], f), **kw)
    assert _gradients.blocked(spec)
    xs, ws = jnp.zeros(x), jnp.zeros((*k, x[-1], f))
    ct = jnp.zeros(spec.out_shape)
    kernel = jax.jit(lambda a, b, g: jax.vjp(lambda v: jconv.conv_general_dilated(
        a, v, **kw, strategy="shift"), b)[1](g)[0])
    measured = kernel.lower(xs, ws, ct).compile().memory_analysis().temp_size_in_bytes
    predicted = _gradients.temp_bytes(spec, jnp.float32)
    assert predicted / 1.5 <= measured <= 1.5 * predicted, (measured, predicted)
    assert not loop_operands_with_a_unit_axis(kernel, xs, ws, ct)
    hybrid = _gradients._hybrid_temp(_gradients._chunk_of(spec, _gradients.chunk(spec)),
                                     jnp.float32)
    assert measured < hybrid or np.prod(x[1:-1]) < 4096


@pytest.mark.single_device
@pytest.mark.parametrize(("x", "f", "groups", "blocks"), [
    ((2, 5, 5, 48), 12, 1, False), ((2, 5, 5, 12), 48, 1, True), ((2, 5, 5, 12), 12, 1, True),
    ((2, 5, 5, 12), 12, 3, False)])
def test_one_tap_layers_reading_more_channels_and_grouped_layers_keep_the_hybrid(
        x: tuple[int, ...], f: int, groups: int, blocks: bool) -> None:
    """A 1x1 layer with more input channels than output features, and a grouped layer, take
    the kernel gradient by the hybrid's chunks (its GEMM reads the input in place); a 1x1
    layer with no more input channels than features takes the blocks. Both equal lax's
    exactly on integers."""
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.integers(-3, 4, x), jnp.float32)
    ws = jnp.asarray(rng.integers(-3, 4, (1, 1, x[-1] // groups, f)), jnp.float32)
    kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=DN,
              feature_group_count=groups)
    spec = ConvSpec.from_lax(xs.shape, ws.shape, **kw)
    assert _gradients.blocked(spec) is blocks
    ct = jnp.asarray(rng.integers(-3, 4, spec.out_shape), jnp.float32)

    def kernel_grad(conv: Any, **extra: Any) -> Any:
        return lambda a, b: jax.vjp(lambda v: conv(a, v, **kw, **extra), b)[1](ct)[0]

    ours = kernel_grad(jconv.conv_general_dilated, strategy="shift")
    channel_major = [shape for shape, dims in _loop_dots(jax.make_jaxpr(ours)(xs, ws).jaxpr)
                     if shape == (x[-1], 50) and dims == (1,)]
    assert bool(channel_major) is blocks
    np.testing.assert_array_equal(jax.jit(ours)(xs, ws),
                                  kernel_grad(lax.conv_general_dilated)(xs, ws))
