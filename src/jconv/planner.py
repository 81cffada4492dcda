"""`strategy="auto"`: a plain choice over what the lowerings state, under a memory budget.

Every lowering module (`jconv.strategies`) states whether it can run a spec
(``applicable``), its temp bytes (``cost``) and its predicted time (``predict``). The
planner drops lowerings that cannot run the spec, that ``auto`` may not pick (``AUTO``),
whose temp bytes exceed the budget, or whose accuracy class (``ACCURACY``) the call does not
allow, and takes the least predicted time (`predict`: the lowering's own, plus the first
touch of its temporaries): of the forward alone (`plan`), or of the forward plus both
gradients (``plan(..., differentiated=True)``), leaving out there the lowerings that may not
compute a differentiated call's values (``DIFFERENTIATED``: `direct`, whose elementwise loop
XLA computes again in each consumer of its output, and a training step's cotangent reads
it). A dense convolution's input gradient, itself a convolution (`ConvSpec.input_gradient`),
is ranked as a forward (``plan(..., input_gradient=True)``). Where `jconv.tune` measured the
spec on this machine, its pick for that role (if it can run the spec within the budget)
replaces the prediction.

Accuracy policy: by default the planner keeps to lax's accuracy class on the backend,
``"summation"`` lowerings whose error is that of summing the taps in the accumulation
dtype (on the CPU exact on small-integer data). Lowerings whose error is bounded normwise
only (``"normwise"``: `fft`, `dft`, `winograd4`) are planned only when the caller asks for
speed through JAX's own knob (`allows_normwise`), or forced with ``strategy=``. The engine
computes values with the first; when differentiated, values and derivatives with the
second. Choices are cached per (spec, dtype, budget, tuning cache, batch split over
devices); the default budget is read once per process, so identical calls always get the
same plan. A forced strategy whose temp bytes exceed the budget raises `ValueError` before
anything is allocated.

>>> from jconv import ConvSpec
>>> spec = ConvSpec.from_lax((8, 28, 28, 64), (3, 3, 64, 64), (1, 1), "SAME",
...                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
>>> plan(spec, jnp.float32) in STRATEGIES
True
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import _gradients, _tune_cache
from ._sharding import partition_factor
from ._spec import ConvSpec
from .strategies import STRATEGIES, _model
from .strategies._model import Rates

__all__ = [
    "BUDGET_FRACTION",
    "FAST_PRECISIONS",
    "Lowerings",
    "allows_normwise",
    "available_memory",
    "candidates",
    "check_budget",
    "engine_gradients",
    "get_memory_budget",
    "plan",
    "predict",
    "recording",
    "resolve",
    "set_memory_budget",
]

FAST_PRECISIONS = frozenset({"fastest", "bfloat16", "high", "bfloat16_3x", "tensorfloat32"})
"""Precision names (`precision=` or `jax.default_matmul_precision`) that ask for speed over
float32 products; `lax.DotAlgorithmPreset` names with bfloat16, tensorfloat32, float16 or
float8 operands ask the same."""
_FAST_PRESETS = ("BF16_", "TF32_", "F16_", "ANY_F8_")

BUDGET_FRACTION = 0.5
"""Default budget: this fraction of the memory available on the default device."""

_budget: int | None = None
_default_budget: int | None = None
_recorders: list[list[tuple[ConvSpec, jnp.dtype, Any]]] = []


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
    (`BUDGET_FRACTION` of `available_memory()`, measured again now)."""
    global _budget, _default_budget
    if nbytes is not None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise ValueError(f"`nbytes` (={nbytes!r}) must be a positive int or None.")
    _budget = nbytes
    _default_budget = None


def get_memory_budget() -> int:
    """The current budget in bytes: the one set, or `BUDGET_FRACTION` of the memory available
    when it was first asked for in this process (not re-read per call, so that plans do not
    change with the free memory of the moment)."""
    global _default_budget
    if _budget is not None:
        return _budget
    if _default_budget is None:
        _default_budget = int(BUDGET_FRACTION * available_memory())
    return _default_budget


def allows_normwise(precision: Any) -> bool:
    """True if the call asks for speed over lax's accuracy class: every operand's
    `precision` (a name in `FAST_PRECISIONS` or a reduced-precision `DotAlgorithmPreset`),
    or, with ``precision=None``, `jax.default_matmul_precision`. `lax.Precision` members
    are not requests (``Precision.DEFAULT`` is what lax runs anyway).

    >>> allows_normwise(None), allows_normwise("tensorfloat32")
    (False, True)
    >>> with jax.default_matmul_precision("bfloat16"):
    ...     allows_normwise(None)
    True
    """
    if precision is None:
        precision = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]
    items = precision if isinstance(precision, tuple) else (precision,)

    def fast(p: Any) -> bool:
        name = p.name if isinstance(p, lax.DotAlgorithmPreset) else p
        return isinstance(name, str) and (
            name.lower() in FAST_PRECISIONS or name.upper().startswith(_FAST_PRESETS))

    return all(fast(p) for p in items)


def _why_not(name: str, spec: ConvSpec, dtype: jnp.dtype, budget: int) -> str | None:
    """Why `name` cannot run `spec` (inapplicable, or over the budget), or None."""
    reason = STRATEGIES[name].applicable(spec, dtype)
    if reason is not None:
        return reason
    temp = float(STRATEGIES[name].cost(spec, dtype).temp_bytes)
    if temp > budget:
        return f"its temp bytes (={temp:.4g}) exceed the memory budget (={budget})"
    return None


def candidates(spec: ConvSpec, dtype: jax.typing.DTypeLike, precision: Any = None, *,
               opt_in: bool = False, differentiated: bool = False) -> list[str]:
    """The lowerings `strategy="auto"` may run for `spec` accumulating in `dtype`: those that
    can run it, that auto may pick, whose accuracy class `precision` allows and whose temp
    bytes fit the budget; with `differentiated`, those that may compute a differentiated
    call's values (``DIFFERENTIATED``). With `opt_in`, also the lowerings auto does not
    predict its way to (``AUTO = False``) whose prediction on this platform is finite:
    `jconv.tune` times them, and a tuned pick among them is used (the Pallas kernel on GPU
    and TPU, not on the CPU where it is interpreted; F(4x4, 3x3) Winograd where speed is
    asked for)."""
    return _candidates(spec, jnp.dtype(dtype), get_memory_budget(), allows_normwise(precision),
                       opt_in, differentiated)


def _candidates(spec: ConvSpec, dtype: jnp.dtype, budget: int, normwise: bool,
                opt_in: bool = False, differentiated: bool = False) -> list[str]:
    return [n for n, m in STRATEGIES.items()
            if (normwise or m.ACCURACY == "summation")
            and (m.DIFFERENTIATED or not differentiated)
            and _why_not(n, spec, dtype, budget) is None
            and (m.AUTO or (opt_in and math.isfinite(m.predict(spec, dtype).forward)))]


def predict(name: str, spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32
            ) -> _model.Prediction:
    """The time `auto` ranks lowering `name` by on `spec`: its own ``predict``, with the
    first touch of its temp bytes (`_model.first_touch_seconds`: on the CPU, past glibc's
    mmap threshold) in its copies."""
    module = STRATEGIES[name]
    return module.predict(spec, dtype).touching(float(module.cost(spec, dtype).temp_bytes))


@functools.lru_cache(maxsize=4096)
def _plan(spec: ConvSpec, dtype: jnp.dtype, budget: int, column: str,
          normwise: bool, tuned_generation: int, rates: Rates, devices: int) -> str:
    """`plan` in role `column` (`_tune_cache.COLUMNS`), cached on everything it depends on
    (`rates`: the predictions' machine; `devices`: the batch's split over devices,
    `partition_factor`, which sets the batch chunks and the kernel gradient's loop)."""
    differentiated = column == "differentiated"
    options = (_candidates(spec, dtype, budget, normwise, differentiated=differentiated)
               or _candidates(spec, dtype, budget, normwise))
    tuned = None if tuned_generation < 0 else _tune_cache.lookup(spec, dtype, normwise, column)
    if tuned is not None and tuned in _candidates(spec, dtype, budget, normwise, opt_in=True,
                                                  differentiated=differentiated):
        return tuned
    if not options:
        shift = float(STRATEGIES["shift"].cost(spec, dtype).temp_bytes)
        raise ValueError(
            f"No lowering fits the memory budget (={budget} bytes) for this convolution "
            f"(shift needs {shift:.4g}); raise it with jconv.set_memory_budget."
        )
    predictions = {n: predict(n, spec, dtype) for n in options}
    if not differentiated:
        return min(options, key=lambda n: predictions[n].forward)
    if not _engine_gradients(spec, dtype, budget, normwise):
        return min(options, key=lambda n: predictions[n].total)
    # a dense convolution's gradients are the engine's own two convolutions (`_gradients`):
    # the input gradient's is the same whatever computes the values, the kernel gradient's
    # runs like one lowering's forward, Winograd's own after Winograd's values where it pays
    platform = jax.default_backend()

    def kernel_gradient(values: str) -> float:
        like = _gradients.kernel_gradient_like(spec, values, platform)
        return STRATEGIES[like].predict(spec, dtype).forward

    return min(options, key=lambda n: predictions[n].forward + kernel_gradient(n))


def _engine_gradients(spec: ConvSpec, dtype: jnp.dtype, budget: int, normwise: bool) -> bool:
    """Whether the engine computes `spec`'s gradients itself (`jconv._gradients`): a dense
    convolution whose kernel gradient and input gradient's convolution fit the budget
    (else its lowering's own transposes run, planned with it)."""
    return _gradients.applies(spec) and _fits(spec, dtype, budget, normwise,
                                              partition_factor(spec.batch))


@functools.lru_cache(maxsize=4096)
def _fits(spec: ConvSpec, dtype: jnp.dtype, budget: int, normwise: bool, devices: int) -> bool:
    """`_engine_gradients`' budget test, cached (`devices`: the batch's split, which sets the
    kernel gradient's chunks)."""
    return (_gradients.temp_bytes(spec, dtype) <= budget
            and bool(_candidates(spec.input_gradient(), dtype, budget, normwise)))


def engine_gradients(spec: ConvSpec, dtype: jax.typing.DTypeLike, precision: Any = None, *,
                     budget: int | None = None) -> bool:
    """Whether the engine computes `spec`'s gradients itself (`jconv._gradients`) for a call
    accumulating in `dtype` with `precision`, within `budget` (default: the memory
    budget)."""
    return _engine_gradients(spec, jnp.dtype(dtype),
                             get_memory_budget() if budget is None else budget,
                             allows_normwise(precision))


def plan(spec: ConvSpec, dtype: jax.typing.DTypeLike, *, differentiated: bool = False,
         input_gradient: bool = False, precision: Any = None, tuned: bool = True,
         budget: int | None = None) -> str:
    """The lowering `strategy="auto"` runs for `spec`, accumulating in `dtype`: the pick
    `jconv.tune` measured here for the role if any (and ``tuned``), else the least predicted
    forward time, or with ``differentiated`` the least forward plus backward, among the
    candidates (`candidates`: the accuracy classes `precision` allows, within `budget`
    (default: the memory budget); cached). With ``input_gradient``, `spec` is another
    convolution's input gradient (`ConvSpec.input_gradient`): ranked as a forward, with a
    tuned pick of its own (a training step's, `jconv.tune`)."""
    if differentiated and input_gradient:
        raise ValueError("`differentiated` and `input_gradient` (both True) are two roles; "
                         "an input gradient's convolution is planned undifferentiated.")
    column = ("differentiated" if differentiated else
              "input_gradient" if input_gradient else "forward")
    generation = _tune_cache.generation() if tuned else -1
    return _plan(spec, jnp.dtype(dtype), get_memory_budget() if budget is None else budget,
                 column, allows_normwise(precision), generation, _model.rates(),
                 partition_factor(spec.batch))


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[ConvSpec, jnp.dtype, Any]]]:
    """Collect ``(spec, dtype, precision)`` of every ``strategy="auto"`` call planned within
    the block (tracing a function is enough: plans are made before any computation)."""
    calls: list[tuple[ConvSpec, jnp.dtype, Any]] = []
    _recorders.append(calls)
    try:
        yield calls
    finally:
        _recorders.remove(calls)


def check_budget(name: str, spec: ConvSpec, dtype: jax.typing.DTypeLike,
                 budget: int | None = None) -> None:
    """Raise ValueError if forced lowering `name` cannot run `spec` or exceeds `budget`
    (default: the memory budget)."""
    reason = _why_not(name, spec, jnp.dtype(dtype),
                      get_memory_budget() if budget is None else budget)
    if reason is not None:
        raise ValueError(f"`strategy` (={name!r}) cannot run this convolution: {reason}.")


class Lowerings(NamedTuple):
    """What the engine runs for one call: ``values`` undifferentiated; differentiated, the
    values and tangents by ``differentiated``, except where the engine computes the
    gradients itself (`jconv._gradients`: a dense convolution within the budget), whose
    input gradient (the convolution `ConvSpec.input_gradient`) runs by ``input_gradient``
    (None where the lowering's own transposes run)."""

    values: str
    differentiated: str
    input_gradient: str | None


def resolve(strategy: str, spec: ConvSpec, dtype: jax.typing.DTypeLike,
            precision: Any = None, *, budgeted: bool = True) -> Lowerings:
    """Validate `strategy` ("auto" or a lowering name) and return the `Lowerings` to run
    for a call accumulating in `dtype` with `precision`: a forced strategy runs everything
    it can run (a dense convolution's input gradient by the planner's pick where it
    cannot). Without `budgeted`, the memory budget does not bound the choice (a call XLA
    may partition is budgeted per device, once its shardings are known)."""
    if not isinstance(strategy, str) or (strategy != "auto" and strategy not in STRATEGIES):
        raise ValueError(
            f"`strategy` (={strategy!r}) must be 'auto' or one of {sorted(STRATEGIES)}."
        )
    if spec.empty:
        name = "shift" if strategy == "auto" else strategy  # the engine returns zeros
        return Lowerings(name, name, None)
    budget = None if budgeted else sys.maxsize

    def planned(s: ConvSpec, differentiated: bool = False, input_gradient: bool = False
                ) -> str:
        return plan(s, dtype, differentiated=differentiated, input_gradient=input_gradient,
                    precision=precision, budget=budget)

    own = engine_gradients(spec, dtype, precision, budget=budget)
    grad_spec = spec.input_gradient() if own else None
    if strategy == "auto":
        for calls in _recorders:
            calls.append((spec, jnp.dtype(dtype), precision))
        return Lowerings(planned(spec), planned(spec, True),
                         planned(grad_spec, input_gradient=True) if grad_spec else None)
    check_budget(strategy, spec, dtype, budget)  # unbudgeted, what it cannot run still raises
    if grad_spec is None:
        return Lowerings(strategy, strategy, None)
    runs = _why_not(strategy, grad_spec, jnp.dtype(dtype),
                    get_memory_budget() if budget is None else budget)
    return Lowerings(strategy, strategy,
                     strategy if runs is None else planned(grad_spec, input_gradient=True))