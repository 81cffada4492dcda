"""jconv under JAX transformations and dtypes, determinism, and the friendly `jconv.conv`."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _core_cases import TABLE, Case, make_case, run_jconv, run_lax
from jax import lax
from reference import rel_err

import jconv

BY_NAME = {c.name: c for c in TABLE}
CASE = BY_NAME["2d_all"]  # strides, explicit and negative pads, both dilations, groups
STRATEGIES = ("shift", "patches")


# ------------------------------------------------------------------------- jit
def test_jit_with_closed_over_and_static_hyperparameters() -> None:
    """Hyper-parameters closed over or static under `jax.jit` (validated and planned at
    trace time, whatever the lowering: the default strategy stands for all)."""
    strategy = "auto"
    x, w = CASE.operands()
    want = run_lax(CASE, x, w)
    closed = jax.jit(lambda a, b: run_jconv(CASE, a, b, strategy))
    assert rel_err(closed(x, w), want) <= 1e-5
    kw = CASE.kwargs()
    static = jax.jit(
        jconv.conv_general_dilated,
        static_argnames=(*kw, "strategy"),
    )
    assert rel_err(static(x, w, **kw, strategy=strategy), want) <= 1e-5


# ------------------------------------------------------------------------- vmap
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("axes", [(0, None), (None, 0), (0, 0)], ids=["x", "w", "xw"])
def test_vmap_over_a_leading_axis(axes: tuple[int | None, int | None], strategy: str) -> None:
    case = BY_NAME["2d_batch_groups"] if strategy == "patches" else CASE
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((3, *case.lhs_shape)).astype(np.float32)
    ws = rng.standard_normal((3, *case.rhs_shape)).astype(np.float32)
    args = (xs if axes[0] == 0 else xs[0], ws if axes[1] == 0 else ws[0])
    got = jax.vmap(lambda a, b: run_jconv(case, a, b, strategy), in_axes=axes)(*args)
    want = np.stack([
        run_lax(case, xs[i] if axes[0] == 0 else xs[0], ws[i] if axes[1] == 0 else ws[0])
        for i in range(3)
    ])
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("strategy", ["auto", "winograd"])
@pytest.mark.parametrize("axes", [(0, None), (None, 0), (0, 0)], ids=["x", "w", "xw"])
def test_vmap_over_an_empty_axis(axes: tuple[int | None, int | None], strategy: str) -> None:
    """A vmapped axis of size 0 (as jax's own batching tests draw): lax's empty result, values
    and gradients, where the kernel's tie to the input has no member to read."""
    x = jnp.ones((0, 2, 6, 7, 3)) if axes[0] == 0 else jnp.ones((2, 6, 7, 3))
    w = jnp.ones((0, 3, 3, 3, 4)) if axes[1] == 0 else jnp.ones((3, 3, 3, 4))
    kw: dict[str, Any] = {"window_strides": (1, 1), "padding": "SAME",
                          "dimension_numbers": ("NHWC", "HWIO", "NHWC")}

    def ours(a: jax.Array, b: jax.Array) -> jax.Array:
        return jconv.conv_general_dilated(a, b, **kw, strategy=strategy)

    def theirs(a: jax.Array, b: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(a, b, **kw)

    got = jax.jit(jax.vmap(ours, in_axes=axes))(x, w)
    want = jax.vmap(theirs, in_axes=axes)(x, w)
    assert got.shape == want.shape == (0, 2, 6, 7, 4)
    grads = [jax.grad(lambda a, b, f=f: jax.vmap(f, in_axes=axes)(a, b).sum(), (0, 1))(x, w)
             for f in (ours, theirs)]
    for g, ref in zip(*grads, strict=True):
        assert g.shape == ref.shape
        np.testing.assert_array_equal(g, ref)


# ------------------------------------------------------------------------- checkpoint, grad
@pytest.mark.parametrize("strategy", [*STRATEGIES, "auto"])
def test_checkpoint_and_grad_of_grad(strategy: str) -> None:
    """Gradients through `jax.checkpoint` and a second derivative under `jax.jit`; with
    ``"auto"`` the engine's own derivative rule (values by one lowering, derivatives by the
    one planned for differentiation) is differentiated twice."""
    x, w = CASE.operands(seed=4)

    def loss(run: Any, a: jax.Array, b: jax.Array) -> jax.Array:
        return (jnp.tanh(run(CASE, a, b)) ** 2).sum()

    def ours(a: jax.Array, b: jax.Array) -> jax.Array:
        return loss(lambda c, p, q: run_jconv(c, p, q, strategy), a, b)

    def theirs(a: jax.Array, b: jax.Array) -> jax.Array:
        return loss(run_lax, a, b)

    for g, ref in zip(jax.grad(jax.checkpoint(ours), argnums=(0, 1))(x, w),
                    jax.grad(theirs, argnums=(0, 1))(x, w), strict=True):
        assert rel_err(g, ref) <= 1e-4
    # grad of grad: d/dw of <grad_x loss, v>, under jit
    v = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)

    def second(f: Any) -> jax.Array:
        return jax.jit(jax.grad(lambda b: (jax.grad(f)(x, b) * v).sum()))(w)

    assert rel_err(second(ours), second(theirs)) <= 1e-4


# ------------------------------------------------------------------------- linear_transpose
@pytest.mark.parametrize("strategy", ["auto", "shift", "scatter", "winograd", "patches"])
def test_linear_transpose_in_either_operand(strategy: str) -> None:
    """`jax.linear_transpose` of a convolution in its input (kernel fixed) and in its kernel
    (input fixed), eagerly, under `jax.jit` and `jax.vmap`, equals lax's. Lowerings that
    copy the kernel order the copy after the input (`jconv._engine._after`); that tie must
    leave the convolution linear in the input alone."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((2, 9, 8, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((3, 2, 9, 8, 5)), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")

    def ours(a: jax.Array, b: jax.Array) -> jax.Array:
        return jconv.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=dn,
                                          strategy=strategy)

    def theirs(a: jax.Array, b: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=dn)

    for conv in (ours, theirs):
        assert jax.eval_shape(conv, x, w).shape == ct.shape[1:]
    for transposes in (
        lambda conv: jax.linear_transpose(lambda a: conv(a, w), x)(ct[0])[0],
        lambda conv: jax.linear_transpose(lambda b: conv(x, b), w)(ct[0])[0],
        lambda conv: jax.jit(jax.linear_transpose(lambda a: conv(a, w), x))(ct[0])[0],
        lambda conv: jax.vmap(lambda c: jax.linear_transpose(lambda a: conv(a, w), x)(c)[0])(ct),
    ):
        got, want = transposes(ours), transposes(theirs)
        assert got.shape == want.shape
        assert rel_err(got, want) <= 1e-5


# ------------------------------------------------------------------------- dtypes
FLOAT_TOL = {"bfloat16": 2e-2, "float16": 2e-3}
"""Half-precision inputs; float32, float64 and complex64 of every lowering are held to the
float64 reference in test_core_reference.py."""


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype", list(FLOAT_TOL))
def test_floating_dtypes_match_lax(dtype: str, strategy: str) -> None:
    dt = jnp.dtype(dtype)
    x, w = CASE.operands(np.float32, seed=6)
    xa, wa = jnp.asarray(x, dt), jnp.asarray(w, dt)
    want = run_lax(CASE, xa, wa, precision=lax.Precision.HIGHEST)
    got = run_jconv(CASE, xa, wa, strategy, precision=lax.Precision.HIGHEST)
    assert got.dtype == want.dtype == dt
    assert rel_err(got, want) <= FLOAT_TOL[dtype]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    ("dtype", "preferred"),
    [("int8", "int32"), ("int32", "int32"), ("int32", None), ("int8", "float32"),
     ("uint8", "int32"), ("bool", None)],
)
def test_integer_dtypes_exact(dtype: str, preferred: str | None, strategy: str) -> None:
    x, w = CASE.operands(np.int32, seed=7)
    xa, wa = jnp.asarray(x).astype(dtype), jnp.asarray(w).astype(dtype)
    want = run_lax(CASE, xa, wa, preferred_element_type=preferred)
    got = run_jconv(CASE, xa, wa, strategy, preferred_element_type=preferred)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_bfloat16_with_float32_accumulation() -> None:
    x, w = CASE.operands(seed=8)
    xa, wa = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    want = run_lax(CASE, xa, wa, preferred_element_type=jnp.float32)
    got = run_jconv(CASE, xa, wa, preferred_element_type=jnp.float32)
    assert got.dtype == jnp.float32
    assert rel_err(got, want) <= 1e-5


# ------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_call_twice_is_bit_identical(strategy: str) -> None:
    case = make_case("det", spatial=(16, 16), channels=8, filters=8, strides=(1, 2))
    x, w = case.operands(seed=9)
    first = np.asarray(run_jconv(case, x, w, strategy))
    second = np.asarray(run_jconv(case, x, w, strategy))
    assert first.tobytes() == second.tobytes()
    jitted = jax.jit(lambda p, q: run_jconv(case, p, q, strategy))
    assert np.asarray(jitted(x, w)).tobytes() == np.asarray(jitted(x, w)).tobytes()


# ------------------------------------------------------------------------- friendly conv
def _lax_friendly(x: np.ndarray, w: np.ndarray, strides: tuple[int, ...], pads: Any,
                  dil: tuple[int, ...], groups: int, dn: tuple[str, str, str]) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dil,
                                    dimension_numbers=dn, feature_group_count=groups)


FRIENDLY = [
    # layout, spatial, kw for jconv.conv, (strides, pads, dilation) for lax
    ("NHWC", (7, 6), dict(), ((1, 1), "SAME", (1, 1))),
    ("NHWC", (7, 6), dict(stride=2, dilation=2, padding=1), ((2, 2), ((1, 1), (1, 1)), (2, 2))),
    ("NHWC", (7, 6), dict(stride=(1, 2), padding=(2, 0)), ((1, 2), ((2, 2), (0, 0)), (1, 1))),
    ("NHWC", (7, 6), dict(padding=((1, 0), (-1, 2)), groups=2),
     ((1, 1), ((1, 0), (-1, 2)), (1, 1))),
    ("NCHW", (6, 5), dict(stride=2, padding="SAME_LOWER"), ((2, 2), "SAME_LOWER", (1, 1))),
    ("NCHW", (6, 5), dict(padding="VALID", dilation=(2, 1), groups=2),
     ((1, 1), "VALID", (2, 1))),
    ("NWC", (9,), dict(stride=3, padding="SAME"), ((3,), "SAME", (1,))),
    ("NCW", (9,), dict(dilation=2, padding=2), ((1,), ((2, 2),), (2,))),
    ("NHWC", (9,), dict(padding="VALID"), ((1,), "VALID", (1,))),
    ("NDHWC", (4, 5, 3), dict(stride=(1, 2, 1), padding=1), ((1, 2, 1), ((1, 1),) * 3,
                                                             (1, 1, 1))),
    ("NCDHW", (4, 5, 3), dict(dilation=(1, 1, 2), groups=2), ((1, 1, 1), "SAME", (1, 1, 2))),
    ("NCHW", (4, 5, 3), dict(), ((1, 1, 1), "SAME", (1, 1, 1))),
]


@pytest.mark.parametrize(("layout", "spatial", "kw", "lax_args", "with_bias"),
                         [(*f, i % 2 == 1) for i, f in enumerate(FRIENDLY)],
                         ids=[f"{f[0]}-{i}" for i, f in enumerate(FRIENDLY)])
def test_friendly_conv_matches_lax(layout: str, spatial: tuple[int, ...], kw: dict[str, Any],
                                   lax_args: tuple[Any, Any, Any], with_bias: bool) -> None:
    """Every other row adds a bias: channels last and first, 1-D, 2-D and 3-D, both ways."""
    n = len(spatial)
    sp = "".join(str(i) for i in range(n))
    channels_last = layout.endswith("C") and not layout.startswith("NC")
    dn = (f"N{sp}C", f"{sp}IO", f"N{sp}C") if channels_last else (
        f"NC{sp}", f"OI{sp}", f"NC{sp}")
    groups = kw.get("groups", 1)
    c, f, k = 4, 6, (3, 2, 2)[:n]
    rng = np.random.default_rng(10)
    x_shape = (2, *spatial, c) if channels_last else (2, c, *spatial)
    w_shape = (*k, c // groups, f) if channels_last else (f, c // groups, *k)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    bias = rng.standard_normal(f).astype(np.float32) if with_bias else None
    got = jconv.conv(x, w, layout=layout, bias=bias, **kw)
    want = _lax_friendly(x, w, lax_args[0], lax_args[1], lax_args[2], groups, dn)
    if bias is not None:
        shape = [1] * (n + 2)
        shape[-1 if channels_last else 1] = f
        want = want + bias.reshape(shape)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-5


def test_friendly_conv_under_jit_vmap_and_grad() -> None:
    x = np.random.default_rng(11).standard_normal((3, 2, 6, 6, 4)).astype(np.float32)
    w = np.random.default_rng(12).standard_normal((3, 3, 2, 4)).astype(np.float32)
    f = jax.jit(jax.vmap(lambda a: jconv.conv(a, w, stride=2, groups=2)))
    g = jax.vmap(lambda a: lax.conv_general_dilated(
        a, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=2))
    assert rel_err(f(x), g(x)) <= 1e-5
    dx = jax.grad(lambda a: jconv.conv(a, w, groups=2).sum())(x[0])
    dl = jax.grad(lambda a: lax.conv_general_dilated(
        a, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=2).sum())(x[0])
    assert rel_err(dx, dl) <= 1e-5


def test_case_table_round_trips_through_friendly_layouts() -> None:
    """A channels-last table case and its NCHW transpose give transposed results."""
    case: Case = BY_NAME["2d_same"]
    x, w = case.operands(seed=13)
    y = jconv.conv(x, w, layout="NHWC")
    y_t = jconv.conv(np.transpose(x, (0, 3, 1, 2)), np.transpose(w, (3, 2, 0, 1)),
                     layout="NCHW")
    np.testing.assert_allclose(np.transpose(np.asarray(y_t), (0, 2, 3, 1)), np.asarray(y),
                               rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------- ConvSpec
def test_spec_is_hashable_and_layout_forms_normalise_alike() -> None:
    """Strings, a ConvDimensionNumbers and NumPy hyper-parameters give one and the same spec."""
    case = BY_NAME["2d_odd_dn"]
    kw = case.kwargs()
    from_strings = jconv.ConvSpec.from_lax(case.lhs_shape, case.rhs_shape, **kw)
    kw["dimension_numbers"] = lax.conv_dimension_numbers(case.lhs_shape, case.rhs_shape, case.dn)
    kw["window_strides"] = np.array(case.strides)
    from_cdn = jconv.ConvSpec.from_lax(case.lhs_shape, case.rhs_shape, **kw)
    assert from_strings == from_cdn and hash(from_strings) == hash(from_cdn)
    assert from_strings.out_shape == run_lax(case, *case.operands()).shape
    with pytest.raises(dataclasses.FrozenInstanceError):
        from_strings.feature_group_count = 2  # type: ignore[misc]
