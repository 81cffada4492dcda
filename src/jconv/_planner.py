"""`strategy="auto"`: choose a lowering from the cost model under a memory budget.

Every lowering module states its cost (`cost(spec)`: FLOPs, temp bytes, bytes moved). The
planner turns it into a predicted time with per-lowering rates measured on a 2-core x86 CPU
(the constants below), drops lowerings that cannot run the spec or whose temp bytes exceed
the budget, and takes the fastest. It picks twice: the fastest forward (`plan`), and the
fastest forward plus backward (`plan_backward`; the backward is the forward's predicted
arithmetic and copies scaled by how the lowering's transpose fares, `BACKWARD` and
`BACKWARD_COPY`). The engine computes values with the first; when differentiated, it
computes values and derivatives with the second. Choices are cached per (spec, dtype,
budget). A forced strategy whose temp bytes exceed the budget raises `ValueError` before
anything is allocated.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp

from ._spec import ConvSpec
from .strategies import STRATEGIES

__all__ = [
    "BUDGET_FRACTION",
    "available_memory",
    "check_budget",
    "get_memory_budget",
    "plan",
    "plan_backward",
    "predicted_backward_seconds",
    "predicted_seconds",
    "resolve",
    "set_memory_budget",
]

BUDGET_FRACTION = 0.5
"""Default budget: this fraction of the memory available on the default device."""

_budget: int | None = None


def available_memory() -> int:
    """Bytes available on the default device: the accelerator's free memory, or the host's
    ``MemAvailable`` (falling back to total physical memory)."""
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def set_memory_budget(nbytes: int | None) -> None:
    """Cap the temp bytes of any lowering at `nbytes`; None restores the default
    (`BUDGET_FRACTION` of `available_memory()`)."""
    global _budget
    if nbytes is not None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise ValueError(f"`nbytes` (={nbytes!r}) must be a positive int or None.")
    _budget = nbytes


def get_memory_budget() -> int:
    """The current budget in bytes."""
    if _budget is not None:
        return _budget
    return int(BUDGET_FRACTION * available_memory())


# Rates fitted to per-lowering timings of the benchmark cases (2-core x86, jax 0.10.2,
# float32; benchmarks/run.py sweeps every lowering): a GEMM reaches PEAK_FLOPS once its
# contraction depth and its output width reach GEMM_KNEE (linearly less below); the copies
# a lowering makes (strided slices, concatenations, products summed at the end) move at
# COPY_BYTES_PER_S; fused elementwise multiply-adds run at ELEMENTWISE_FLOPS (2.5x that when
# XLA fuses a depthwise einsum into one loop); the FFT's transforms and complex channel
# mixing at FFT_FLOPS. OVERHEAD scales what the model misses: the DFT tiles' three GEMMs
# (x2.2: transform GEMMs shallower than the mixing, and a transposed copy of the output),
# Winograd's (x1.5), the row patches of 3-D inputs (x2.5: nine copies of rows three times
# wider than the input), the concatenation of the patches (x1.5), which XLA's CPU backend
# writes at a fraction of memory bandwidth. The constants were fitted by a grid search
# maximising the benchmark cases whose pick is within 10% of the fastest lowering in a full
# sweep (16 of 18 cases), after shift, hybrid and patches learned to run over batch chunks
# (`strategies._common.batch_chunk`); benchmarks/results/latest.md reports pick/best per
# case.
PEAK_FLOPS = 5.0e10
GEMM_KNEE = 32
COPY_BYTES_PER_S = 2.0e9
ELEMENTWISE_FLOPS = 6.0e9
FUSED_DEPTHWISE_SPEEDUP = 2.5
FFT_FLOPS = 1.0e9
DIRECT_MAX_CG = 8
"""`direct` is planned only for thin groups: its autodiff stores a product per term."""
FFT_MIN_TAPS = 49
"""`fft` is planned only for windows of at least this many taps (7x7, or k >= 49 in 1-D):
its round-off is spread over every output, so small convolutions of exact values (integers,
ones) would no longer come out exact; it pays off only for large windows anyway."""
DFT_MIN_TAPS = 7
"""`dft` is planned only for windows of at least this many taps, for the same reason; at
64 channels its tiles measured 1.7x (forward) and 1.05x (forward+backward) the native
convolution at k = 7, 0.6-1.0x from k = 15."""
SCATTER_TAPS = 9
"""`scatter` slows with the square root of its taps past this many: its fused sum reads one
strided row of the products per tap for every output (fitted on 1-D k = 15, 31 and 3-D
3x3x3)."""
OVERHEAD = {"dft": 2.2, "patches": 1.5, "hybrid": 1.0, "hybrid_3d": 2.5, "winograd": 1.5}
OPT_IN = ("winograd4",)
"""Lowerings `strategy="auto"` never picks: F(4x4, 3x3)'s rounding error measured 20-40x
that of summing the taps or of F(2x2, 3x3) (a few 1e-6 of ``sum |x| |w|`` in float32), a
trade to ask for with ``strategy="winograd4"``."""


def _gemm_rate(depth: int, width: int) -> float:
    """GEMM FLOP/s for a contraction depth and output width (small sizes waste the units)."""
    return PEAK_FLOPS * min(1.0, depth / GEMM_KNEE) * min(1.0, width / GEMM_KNEE)


def _predicted_parts(name: str, spec: ConvSpec, itemsize: int) -> tuple[float, float]:
    """Predicted (arithmetic, copy) seconds of lowering `name` on `spec`: the FLOPs at the
    rate they run at, and the bytes moved at `COPY_BYTES_PER_S`, both scaled by `OVERHEAD`."""
    if name in OPT_IN:
        return math.inf, 0.0
    flops, _, moved = STRATEGIES[name].cost(spec, itemsize).evaluate()
    cg = spec.in_features // spec.feature_group_count
    fq = spec.out_features // spec.groups
    if name == "direct":
        thin_groups = spec.groups > 1 and 1 < cg <= DIRECT_MAX_CG
        return (flops / ELEMENTWISE_FLOPS if thin_groups else math.inf), 0.0
    if name == "shift" and spec.depthwise:
        return flops / (ELEMENTWISE_FLOPS * FUSED_DEPTHWISE_SPEEDUP), 0.0
    if name == "fft":
        if math.prod(spec.window) < FFT_MIN_TAPS:
            return math.inf, 0.0
        return flops / FFT_FLOPS, moved / COPY_BYTES_PER_S
    if name == "scatter" and spec.groups > 1:
        return math.inf, 0.0
    if name == "dft":
        if math.prod(spec.window) < DFT_MIN_TAPS:
            return math.inf, 0.0
        rate = _gemm_rate(2 * cg, 2 * fq)
        return OVERHEAD["dft"] * flops / rate, moved / COPY_BYTES_PER_S
    depth = {"patches": math.prod(spec.window) * cg, "hybrid": spec.window[-1] * cg}.get(name, cg)
    width = math.prod(spec.window) * fq if name == "scatter" else fq
    scale = 1.0
    if name == "scatter":
        scale = math.sqrt(max(1.0, math.prod(spec.window) / SCATTER_TAPS))
    if name in ("patches", "hybrid"):
        scale = OVERHEAD[name]
    if name == "hybrid" and spec.num_spatial >= 3:
        scale *= OVERHEAD["hybrid_3d"]
    if name == "winograd":
        scale = OVERHEAD[name]
    return scale * flops / _gemm_rate(depth, width), scale * moved / COPY_BYTES_PER_S


def predicted_seconds(name: str, spec: ConvSpec, itemsize: int = 4) -> float:
    """Predicted run time of lowering `name` on `spec` from its cost and the rates above."""
    return sum(_predicted_parts(name, spec, itemsize))


BACKWARD = {"shift": 0.5, "patches": 0.1, "hybrid": 2.0, "scatter": 0.8, "winograd": 0.6,
            "direct": 17.0, "polyphase": 2.0, "fft": 1.0, "dft": 1.0}
"""Backward (input and kernel gradients) over the forward's predicted arithmetic time, per
lowering: patches differentiates into two large GEMMs on the patches it already built,
shift and hybrid into two GEMMs per tap or row, winograd and dft into the transposes of
their three GEMMs. With `BACKWARD_COPY`, fitted by a coordinate search maximising the
benchmark cases whose pick (least predicted forward plus backward) is within 10% of the
fastest lowering's measured forward+backward: 56 of 72 over four sweeps, then winograd
(rewritten as GEMMs) and dft refitted on two more with the rest fixed: 31 of 36 (the
misses: dilated, where patches is fastest, 1.1-1.3x, and dense 3x3 C=16, 1.1x)."""
BACKWARD_COPY = {"shift": 0.5, "patches": 0.1, "hybrid": 0.6, "scatter": 0.6, "winograd": 0.3,
                 "direct": 17.0, "polyphase": 0.2, "fft": 1.0, "dft": 1.0}
"""The same for the forward's predicted copy time: the gradients turn every copy into its
transpose (a slice into a pad, a concatenation into slices) on the cotangent's side."""
BACKWARD_SCATTER_SPREAD = 2.0
"""Extra factor for `scatter` where it spreads products (`strategies.scatter.spreads`): its
gradient turns every tap's spread back into a strided slice of the cotangent."""
BACKWARD_DEPTHWISE = 12.0
"""The same for `shift` with one input channel per group: its kernel gradient copies and
reduces one window slice per tap, in a loop, where the forward fused everything into one
loop (measured 10-13x the forward on the benchmark's depthwise 3x3 and 5x5)."""
SCATTER_BACKWARD_MIN_CG = 64
"""`scatter` is not differentiated below this many input channels per group: its gradients
measured 1.3-3.2x the best lowering's at C = 8-48 (3x3, 28x28 and 56x56, batch 8), while
it is the fastest at C = 64."""


def predicted_backward_seconds(name: str, spec: ConvSpec, itemsize: int = 4) -> float:
    """Predicted time of the gradients of lowering `name` on `spec` (`BACKWARD`,
    `BACKWARD_COPY`)."""
    thin_scatter = name == "scatter" and (
        spec.in_features // spec.feature_group_count < SCATTER_BACKWARD_MIN_CG)
    if name in OPT_IN or thin_scatter:
        return math.inf
    arith, copies = _predicted_parts(name, spec, itemsize)
    t = BACKWARD[name] * arith + BACKWARD_COPY[name] * copies
    if name == "shift" and spec.depthwise:
        t *= BACKWARD_DEPTHWISE / BACKWARD[name]
    if name == "scatter" and STRATEGIES["scatter"].spreads(spec):
        t *= BACKWARD_SCATTER_SPREAD
    return t


def _why_not(name: str, spec: ConvSpec, dtype: jnp.dtype, budget: int) -> str | None:
    """Why `name` cannot run `spec` (inapplicable, or over the budget), or None."""
    reason = STRATEGIES[name].applicable(spec, dtype)
    if reason is not None:
        return reason
    temp = float(STRATEGIES[name].cost(spec, jnp.dtype(dtype).itemsize).temp_bytes)
    if temp > budget:
        return f"its temp bytes (={temp:.4g}) exceed the memory budget (={budget})"
    return None


def _options(spec: ConvSpec, dtype: jnp.dtype, budget: int) -> list[str]:
    """The lowerings that can run `spec` within `budget`; ValueError if there are none."""
    options = [n for n in STRATEGIES if _why_not(n, spec, dtype, budget) is None]
    if not options:
        shift = float(STRATEGIES["shift"].cost(spec, jnp.dtype(dtype).itemsize).temp_bytes)
        raise ValueError(
            f"No lowering fits the memory budget (={budget} bytes) for this convolution "
            f"(shift needs {shift:.4g}); raise it with jconv.set_memory_budget."
        )
    return options


@functools.lru_cache(maxsize=4096)
def _plan(spec: ConvSpec, dtype: jnp.dtype, budget: int) -> str:
    itemsize = jnp.dtype(dtype).itemsize
    return min(_options(spec, dtype, budget), key=lambda n: predicted_seconds(n, spec, itemsize))


@functools.lru_cache(maxsize=4096)
def _plan_backward(spec: ConvSpec, dtype: jnp.dtype, budget: int) -> str:
    itemsize = jnp.dtype(dtype).itemsize
    return min(_options(spec, dtype, budget),
               key=lambda n: predicted_seconds(n, spec, itemsize)
               + predicted_backward_seconds(n, spec, itemsize))


def plan(spec: ConvSpec, dtype: jnp.dtype) -> str:
    """The lowering `strategy="auto"` runs for `spec` at `dtype` (cached)."""
    return _plan(spec, jnp.dtype(dtype), get_memory_budget())


def plan_backward(spec: ConvSpec, dtype: jnp.dtype) -> str:
    """The lowering `strategy="auto"` runs for `spec` at `dtype` when differentiated, values
    and derivatives: the least predicted forward plus backward time (cached)."""
    return _plan_backward(spec, jnp.dtype(dtype), get_memory_budget())


def check_budget(name: str, spec: ConvSpec, dtype: jnp.dtype) -> None:
    """Raise ValueError if forced lowering `name` cannot run `spec` or exceeds the budget."""
    reason = _why_not(name, spec, jnp.dtype(dtype), get_memory_budget())
    if reason is not None:
        raise ValueError(f"`strategy` (={name!r}) cannot run this convolution: {reason}.")


def resolve(strategy: str, spec: ConvSpec, dtype: jnp.dtype) -> tuple[str, str]:
    """Validate `strategy` ("auto" or a lowering name) and return the lowerings to run: one
    when not differentiated, one when differentiated (the same one unless "auto")."""
    if not isinstance(strategy, str) or (strategy != "auto" and strategy not in STRATEGIES):
        raise ValueError(
            f"`strategy` (={strategy!r}) must be 'auto' or one of {sorted(STRATEGIES)}."
        )
    if 0 in spec.canonical_out_shape or 0 in spec.window or spec.in_features == 0:
        name = "shift" if strategy == "auto" else strategy  # the engine returns zeros
        return name, name
    if strategy == "auto":
        return plan(spec, dtype), plan_backward(spec, dtype)
    check_budget(strategy, spec, dtype)
    return strategy, strategy
