"""The Pallas lowering, run in Pallas' interpret mode on the CPU, against `jax.lax`.

Values on 2-D configurations (3x3 SAME, strided, dilated, 1x1, NCHW and NHWC, channels and
filters that are not multiples of a tile or span several), 1-D, 3-D and lhs-dilated ones,
integers; gradients and tangents (computed by `shift` through the lowering's custom JVP);
its refusals and their reasons; that ``strategy="auto"`` never runs it on the CPU; its
temp bytes against the buffers it builds.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jconv
from jconv import ConvSpec, planner
from jconv.strategies import STRATEGIES, pallas

HI = lax.Precision.HIGHEST
F32 = jnp.dtype(jnp.float32)

# (name, input, kernel, strides, padding, lhs dilation, rhs dilation, dimension numbers)
CASES: list[tuple[Any, ...]] = [
    ("3x3_same_nhwc", (2, 7, 6, 3), (3, 3, 3, 5), (1, 1), "SAME", None, None,
     ("NHWC", "HWIO", "NHWC")),
    ("3x3_s2_nchw", (2, 3, 9, 8), (4, 3, 3, 3), (2, 2), "SAME", None, None,
     ("NCHW", "OIHW", "NCHW")),
    ("s2x3_dilated_valid", (1, 11, 10, 4), (3, 2, 4, 6), (2, 3), "VALID", None, (2, 3),
     ("NHWC", "HWIO", "NHWC")),
    ("1x1_c20_f130", (1, 5, 4, 20), (1, 1, 20, 130), (1, 1), "VALID", None, None,
     ("NHWC", "HWIO", "NHWC")),
    ("3x3_c130_pads", (1, 6, 5, 130), (3, 3, 130, 4), (1, 1), ((2, 0), (1, -1)), None, None,
     ("NHWC", "HWIO", "NHWC")),
    ("1d_lhs_dilated", (2, 3, 9), (4, 3, 3), (2,), ((2, 1),), (2,), (2,),
     ("NCW", "OIW", "NCW")),
    ("3d_mixed", (1, 5, 4, 6, 2), (3, 2, 2, 2, 3), (1, 2, 1), "SAME", None, (1, 1, 2),
     ("NDHWC", "DHWIO", "NDHWC")),
]
"""Channels 3, 20, 130 and filters 5, 130: below one tile, padded to one, over one (the
channel loop inside the kernel, two filter tiles); strides of 2 and 3 make 4 and 6 phases."""


def _operands(case: tuple[Any, ...], seed: int) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x, w = (rng.standard_normal(s).astype(np.float32) for s in case[1:3])
    return jax.device_put(x), jax.device_put(w)


def _kwargs(case: tuple[Any, ...]) -> dict[str, Any]:
    _, _, _, strides, padding, lhs, rhs, dn = case
    return dict(window_strides=strides, padding=padding, lhs_dilation=lhs, rhs_dilation=rhs,
                dimension_numbers=dn, precision=HI)


def _spec(case: tuple[Any, ...]) -> ConvSpec:
    kw = _kwargs(case)
    del kw["precision"]
    return ConvSpec.from_lax(case[1], case[2], **kw)


def _pallas(case: tuple[Any, ...]) -> Any:
    return lambda a, b: jconv.conv_general_dilated(a, b, **_kwargs(case), strategy="pallas")


def _lax(case: tuple[Any, ...]) -> Any:
    return lambda a, b: lax.conv_general_dilated(a, b, **_kwargs(case))


def _close(got: Any, want: Any, depth: int) -> None:
    """Within float32 summation error over `depth` terms of the scale of ``max |want|``."""
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        r = np.asarray(r)
        tol = 1e-6 * depth * float(np.max(np.abs(r)))
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-5, atol=tol)


@pytest.mark.parametrize("i", range(len(CASES)), ids=lambda i: CASES[i][0])
def test_values_match_lax(i: int) -> None:
    case = CASES[i]
    x, w = _operands(case, i)
    spec = _spec(case)
    assert pallas.applicable(spec, F32) is None
    got = _pallas(case)(x, w)
    assert got.shape == spec.out_shape and got.dtype == jnp.float32
    _close(got, _lax(case)(x, w), spec.taps * spec.in_features)


def test_the_kernel_computes_the_values() -> None:
    """One `pallas_call` (interpreted on the CPU) and no dot outside it: the products are
    all the kernel's."""
    case = CASES[0]
    x, w = _operands(case, 0)
    eqns = list(_eqns(jax.make_jaxpr(_pallas(case))(x, w).jaxpr))
    calls = [e for e in eqns if e.primitive.name == "pallas_call"]
    assert len(calls) == 1
    assert calls[0].params["interpret"] == (jax.default_backend() == "cpu")
    assert not any(e.primitive.name == "dot_general" for e in eqns)


def test_on_a_gpu_it_lowers_to_one_triton_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lowered for CUDA here (nothing compiled): one Triton kernel, with the module's warps and
    pipeline stages. Pallas' default on GPUs, Mosaic GPU, refuses it: it would stage the
    image's rows in shared memory. (Traces are cached per backend-free key: the caches are
    cleared around the GPU's traces.)"""
    jax.clear_caches()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    try:
        for case in (CASES[1], CASES[4]):
            x, w = (jax.ShapeDtypeStruct(s, F32) for s in case[1:3])
            lowered = jax.jit(_pallas(case)).trace(x, w).lower(lowering_platforms=("cuda",))
            calls = [line for line in lowered.as_text().splitlines() if "custom_call" in line]
            assert len(calls) == 1 and "xla.gpu.triton" in calls[0]
            assert f"num_warps = {pallas.TRITON_WARPS} " in calls[0]
            assert f"num_stages = {pallas.TRITON_STAGES} " in calls[0]
    finally:
        monkeypatch.undo()
        jax.clear_caches()


def test_integers_are_exact_and_bfloat16_accumulates_in_float32() -> None:
    case = CASES[1]
    rng = np.random.default_rng(7)
    xi = jnp.asarray(rng.integers(-5, 5, case[1]), jnp.int32)
    wi = jnp.asarray(rng.integers(-3, 3, case[2]), jnp.int32)
    got = _pallas(case)(xi, wi)
    assert got.dtype == jnp.int32
    want = _lax(case)(xi.astype(jnp.float32), wi.astype(jnp.float32))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want).round().astype(np.int32))
    xb, wb = xi.astype(jnp.bfloat16), wi.astype(jnp.bfloat16)
    got = _pallas(case)(xb, wb)
    assert got.dtype == jnp.bfloat16  # exact sums of small integers, rounded once
    np.testing.assert_array_equal(np.asarray(got, np.float32),
                                  np.asarray(want.astype(jnp.bfloat16), np.float32))


@pytest.mark.parametrize("i", [1, 2], ids=lambda i: CASES[i][0])
def test_gradients_and_tangents_match_lax(i: int) -> None:
    """Reverse mode in both arguments and forward mode, through the kernel's custom JVP
    (tangents by shift-and-sum), against lax's."""
    case = CASES[i]
    x, w = _operands(case, 10 + i)
    spec = _spec(case)
    rng = np.random.default_rng(20 + i)
    ct = jax.device_put(rng.standard_normal(spec.out_shape).astype(np.float32))
    dx, dw = (jax.device_put(rng.standard_normal(a.shape).astype(np.float32)) for a in (x, w))

    def derivatives(conv: Any) -> Any:
        grads = jax.grad(lambda a, b: jnp.sum(conv(a, b) * ct), (0, 1))(x, w)
        return grads, jax.jvp(conv, (x, w), (dx, dw))

    got = jax.jit(lambda: derivatives(_pallas(case)))()
    _close(got, derivatives(_lax(case)), spec.taps * spec.in_features * 4)
    text = str(jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(_pallas(case)(a, b)), (0, 1)))(x, w))
    assert "pallas_call" in text  # the values still come from the kernel


def _dense(**kw: Any) -> ConvSpec:
    return ConvSpec.from_lax((2, 8, 8, 4), (3, 3, 4 // kw.get("feature_group_count", 1), 4),
                             (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)


def _reason(why: str | None) -> str:
    assert why is not None
    return why


def test_refusals_name_the_rule() -> None:
    assert pallas.applicable(_dense(), F32) is None
    assert "feature_group_count=2" in _reason(pallas.applicable(_dense(feature_group_count=2),
                                                                F32))
    assert "batch_group_count=2" in _reason(pallas.applicable(_dense(batch_group_count=2), F32))
    assert "real operands, not complex64" in _reason(pallas.applicable(_dense(), jnp.complex64))
    # compiled: floating operands of at most 32 bits; on a TPU, one image on chip
    assert pallas.refusal(_dense(), jnp.float32, "gpu") is None
    assert "float32 operands, not int32" in _reason(pallas.refusal(_dense(), jnp.int32, "gpu"))
    assert "not float64" in _reason(pallas.refusal(_dense(), jnp.float64, "tpu"))
    assert pallas.refusal(_dense(), jnp.float32, "cpu") is None
    big = ConvSpec.from_lax((1, 256, 256, 64), (3, 3, 64, 64), (1, 1), "SAME",
                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert pallas.refusal(big, jnp.float32, "gpu") is None
    assert "one image on chip" in _reason(pallas.refusal(big, jnp.float32, "tpu"))
    # forced, the reason reaches the user before anything runs
    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 2, 4))
    with pytest.raises(ValueError, match=r"'pallas'.*feature_group_count=2"):
        jconv.conv(x, w, groups=2, strategy="pallas")
    with pytest.raises(ValueError, match=r"'pallas'.*real operands"):
        jconv.conv(x.astype(jnp.complex64), jnp.ones((3, 3, 4, 4), jnp.complex64),
                   strategy="pallas")


def test_auto_never_picks_it_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opt-in, and on the CPU (interpreted) predicted `NEVER`: neither `auto` nor the
    tuner's candidates include it, even were it marked for `auto`."""
    assert jax.default_backend() == "cpu"
    assert not pallas.AUTO and pallas.ACCURACY == "summation"
    specs = [_dense(), _spec(CASES[1]), _spec(CASES[3]),
             ConvSpec.from_lax((8, 56, 56, 64), (3, 3, 64, 64), (1, 1), "SAME",
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))]
    for spec in specs:
        assert pallas.applicable(spec, F32) is None
        assert pallas.predict(spec, F32) == pallas.NEVER
        assert "pallas" not in planner.candidates(spec, F32)
        assert "pallas" not in planner.resolve("auto", spec, F32)
    monkeypatch.setattr(pallas, "AUTO", True)
    spec = specs[0]
    assert "pallas" in planner.candidates(spec, F32)
    for differentiated in (False, True):
        assert planner.plan(spec, F32, differentiated=differentiated, tuned=False) != "pallas"


@pytest.mark.parametrize("shapes", [
    ((2, 30, 30, 16), (3, 3, 16, 32), (1, 1)),
    ((2, 33, 31, 16), (3, 3, 16, 32), (2, 2)),
    ((2, 28, 28, 20), (1, 1, 20, 130), (1, 1)),
    ((2, 40, 24), (5, 24, 8), (1,)),
    ((1, 12, 12, 12, 8), (3, 3, 3, 8, 16), (1, 1, 1)),
], ids=lambda s: f"{s[0]}x{s[1][:-2]}-s{s[2]}")
def test_temp_bytes_are_the_buffers_it_builds(shapes: tuple[Any, ...]) -> None:
    """`cost`'s temp bytes against the padded input plus the arrays the lowering hands the
    kernel and gets back (from its jaxpr, nothing compiled): within 25% (the model leaves
    out the rows' rounding to tiles, the halo and, strided, the phases' wide columns).
    FLOPs are the dense ``2*MACs``."""
    xs, ws, strides = shapes
    ns = len(strides)
    s = "DHW"[-ns:] if ns > 1 else "W"
    kw = dict(window_strides=strides, padding="SAME",
              dimension_numbers=(f"N{s}C", f"{s}IO", f"N{s}C"))
    spec = ConvSpec.from_lax(xs, ws, **kw)
    c = pallas.cost(spec, F32)
    assert c.flops == 2 * spec.macs
    x, w = jax.ShapeDtypeStruct(xs, F32), jax.ShapeDtypeStruct(ws, F32)
    jaxpr = jax.make_jaxpr(
        lambda a, b: jconv.conv_general_dilated(a, b, **kw, strategy="pallas"))(x, w)
    call = next(e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "pallas_call")
    rows, out = call.invars[0].aval, call.outvars[0].aval
    padded = 4 * math.prod(spec.padded_in) * spec.batch * spec.in_features
    built = padded + 4 * (math.prod(rows.shape) + math.prod(out.shape))
    assert abs(float(c.temp_bytes) - built) <= 0.25 * built, (float(c.temp_bytes), built)


def _eqns(jaxpr: Any) -> Any:
    """Every equation of `jaxpr` and of the jaxprs nested in it, but a `pallas_call`'s
    kernel."""
    for eqn in jaxpr.eqns:
        yield eqn
        if eqn.primitive.name != "pallas_call":
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from _eqns(sub)


def test_registered_with_the_other_lowerings() -> None:
    assert STRATEGIES["pallas"] is pallas
