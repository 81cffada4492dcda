"""`jconv.tune`: measure the lowerings on this machine and keep the fastest for `auto`.

The planner's cost model was fitted on one CPU; its picks move with the machine. `tune`
times every lowering `auto` may run or that is opted in on this platform
(`planner.candidates` with ``opt_in``) for each convolution of a program,
forward and forward plus both gradients, alternating the candidates rep by rep, and stores
the fastest (the cost model's pick where it is within `MARGIN`) in the persistent cache
(`_tune_cache`) that `strategy="auto"` reads first.
Each time is the fastest of the reps: on a shared CPU, slow streaks of seconds move medians
(four runs of one comparison, ResNet-20's training step with two sets of picks: the ratio of
medians 0.91-1.09, of the fastest samples 0.88-0.93).
A dense convolution's gradients are the engine's own whatever the lowering
(`jconv._gradients`): it is timed forward only, and its input gradient's convolution
(`ConvSpec.input_gradient`) is tuned beside it. On the CPU each time includes the first
touch of the program's temporaries (`FIRST_TOUCH_SECONDS_PER_BYTE`), which a network's step
pays on every call and a convolution timed alone does not.

Each spec gets one pick per role (`_tune_cache.COLUMNS`): undifferentiated, a
differentiated call's values, and another convolution's input gradient (the forward's
fastest). For a function, the whole program is then compiled with the tuned picks and with
the cost model's, and the tuned picks of the roles the program runs are kept only where that
program is no slower and keeps at most ``max_temps`` times the cost model's temporaries
(1% more by default); the cache records those roles as judged. A role runs in the program where its
tuned picks alone change the program's lowered text: a training step runs no
undifferentiated convolution, so its forward picks are stored as timed, unjudged, and tuning
a forward pass later judges them without timing the convolutions again.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _tune_cache, planner
from ._spec import ConvSpec
from .strategies import STRATEGIES

__all__ = ["TuneReport", "TunedConv", "tune"]

_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@dataclasses.dataclass(frozen=True)
class TunedConv:
    """One convolution's tuning: the picks per role (undifferentiated, a differentiated
    call's values, another convolution's input gradient: the forward's fastest unless the
    cache holds another), the cost model's picks and the fastest times measured
    (``seconds[name] = (forward, forward and both gradients)``); ``cached`` if the picks
    came from the cache without timing."""

    spec: ConvSpec
    dtype: str
    forward: str
    differentiated: str
    input_gradient: str
    model_forward: str
    model_differentiated: str
    seconds: dict[str, tuple[float, float]]
    cached: bool

    @property
    def picks(self) -> dict[str, str]:
        """The tuned pick per role (`_tune_cache.COLUMNS`)."""
        return {"forward": self.forward, "differentiated": self.differentiated,
                "input_gradient": self.input_gradient}

    @property
    def model_picks(self) -> dict[str, str]:
        """The cost model's pick per role (an input gradient is ranked as a forward)."""
        return {"forward": self.model_forward, "differentiated": self.model_differentiated,
                "input_gradient": self.model_forward}

    @property
    def label(self) -> str:
        """``(N, *in, C) * (*window, C_g, F)`` with strides and groups where they are not 1."""
        text = f"{self.spec.lhs_shape} * {self.spec.rhs_shape}"
        if self.spec.strided:
            text += f" s={self.spec.window_strides}"
        if self.spec.groups > 1:
            text += f" g={self.spec.groups}"
        return text


@dataclasses.dataclass(frozen=True)
class TuneReport:
    """What `tune` chose for each distinct convolution, in the order the program runs them;
    for a function, ``program_seconds`` and ``program_temp_bytes``: the whole program's
    fastest seconds and compiled temporaries with the cost model's picks and with the tuned
    ones (None if it was not timed), ``runs``: the roles (`_tune_cache.COLUMNS`) whose tuned
    picks change the program, and ``kept``: the roles whose tuned picks were stored (the
    cost model's were stored for the others)."""

    convs: tuple[TunedConv, ...]
    program_seconds: tuple[float, float] | None = None
    program_temp_bytes: tuple[int, int] | None = None
    runs: tuple[str, ...] = ()
    kept: tuple[str, ...] = _tune_cache.COLUMNS

    def __str__(self) -> str:
        lines = [f"{'convolution':<48} {'forward':>10} {'(model)':>10} "
                 f"{'trained':>10} {'(model)':>10}"]
        for c in self.convs:
            lines.append(f"{c.label:<48} {c.forward:>10} {c.model_forward:>10} "
                         f"{c.differentiated:>10} {c.model_differentiated:>10}"
                         + ("  (cached)" if c.cached else ""))
        if self.program_seconds is not None and self.program_temp_bytes is not None:
            (model, tuned), (model_mb, tuned_mb) = (
                self.program_seconds, (b / 2**20 for b in self.program_temp_bytes))
            lines.append(f"whole program: {1e3 * model:.1f} ms and {model_mb:.1f} MiB of "
                         f"temporaries with the cost model's picks, {1e3 * tuned:.1f} ms and "
                         f"{tuned_mb:.1f} MiB tuned: {self.verdict}")
        return "\n".join(lines)

    @property
    def verdict(self) -> str:
        """Which picks were stored, in words."""
        if set(self.kept) == set(_tune_cache.COLUMNS):
            return "kept the tuned picks"
        if not self.kept:
            return "kept the cost model's picks"

        def roles(columns: Sequence[str]) -> str:
            return ", ".join(c.replace("_", " ") for c in columns)

        return (f"kept the cost model's picks where the program runs them ({roles(self.runs)}) "
                f"and the tuned ones elsewhere ({roles(self.kept)})")


def tune(
    target: ConvSpec | Callable[..., Any],
    *args: Any,
    dtype: jax.typing.DTypeLike = jnp.float32,
    precision: lax.PrecisionLike = None,
    reps: int = 5,
    retune: bool = False,
    progress: bool = True,
    whole: bool = True,
    max_temps: float = 1.01,
    **kwargs: Any,
) -> TuneReport:
    """Time the lowerings for `target`'s convolutions here and store the fastest for `auto`.

    Args:
      target: a `ConvSpec` (then `dtype` and `precision` describe the call), or a function
        traced on ``*args, **kwargs`` with `jax.make_jaxpr` (nothing is computed): every
        ``strategy="auto"`` convolution it makes is tuned, values and gradients alike.
      reps: timed runs per lowering and mode (after one warm-up), alternating lowerings.
      retune: time specs already in the cache again (else they are reported as cached).
      progress: show a progress bar (rich) while timing.
      whole: for a function, also time the whole program (compiled, on ``*args``) with the
        cost model's picks and with the tuned ones, alternating `reps` times, and store
        the cost model's picks instead, for the roles the program runs, where the tuned
        program is slower or keeps more temporaries (`memory_analysis`): each convolution
        is timed alone, and a program's schedule and temporaries are not their sum; the
        temporaries cap the batch a program can run. Picks the program does not run are
        stored as timed and judged by the next program tuned that runs them (a training
        step runs no undifferentiated convolution; a forward pass does), cached or not.
      max_temps: the temporaries the tuned program may keep, as a multiple of the cost
        model's program's: 1% more by default, since picks that move buffers move a
        program's temporaries by a few bytes (M5's training step: 64 bytes more of 162 MiB
        had rejected a step 6% faster); 1.1 trades up to 10% more memory for speed.

    Returns a `TuneReport`; ``str()`` of it is a summary table.

    >>> spec = ConvSpec.from_lax((1, 8, 8, 2), (3, 3, 2, 2), (1, 1), "SAME",
    ...                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    >>> report = tune(spec, reps=1, progress=False)      # doctest: +SKIP
    """
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"`reps` (={reps!r}) must be a positive int.")
    if isinstance(max_temps, bool) or not isinstance(max_temps, (int, float)) or not (
            max_temps > 0 and math.isfinite(max_temps)):
        raise ValueError(f"`max_temps` (={max_temps!r}) must be a positive finite number.")
    if isinstance(target, ConvSpec):
        if args or kwargs:
            raise TypeError("`tune(spec, ...)` takes no example arguments; give a function "
                            "to trace instead.")
        calls = [(target, jnp.dtype(dtype), precision)]
    elif callable(target):
        with planner.recording() as calls:
            jax.make_jaxpr(lambda *a: target(*a, **kwargs))(*args)
    else:
        raise TypeError(f"`target` (={target!r}) must be a jconv.ConvSpec or a function.")
    # a dense convolution's input gradient is a convolution of its own, planned as one
    # (`jconv._gradients`): tuned beside it
    unique = list(dict.fromkeys(
        (t, d, _hashable(p)) for s, d, p in calls
        for t in ((s, s.input_gradient()) if planner.engine_gradients(s, d, p) else (s,))))
    with _progress(progress, len(unique)) as advance:
        rows = [_tune_one(spec, dt, prec, reps, retune, advance) for spec, dt, prec in unique]
    convs = tuple(r.conv for r in rows)
    picks = {r.key: r.conv.picks for r in rows}
    model = {r.key: r.conv.model_picks for r in rows}
    judged = {r.key: list(r.judged) for r in rows}
    # the roles of each convolution whose tuned pick moved and no whole program has judged
    pending = {k: [c for c in _tune_cache.COLUMNS if c not in judged[k] and p[c] != model[k][c]]
               for k, p in picks.items()}
    fresh = {r.key for r in rows if not r.conv.cached}

    def store(keys: set[str]) -> None:
        if keys:
            _tune_cache.store({k: {**picks[k], "judged": judged[k]} for k in keys})

    if isinstance(target, ConvSpec) or not whole or not any(pending.values()):
        store(fresh)
        return TuneReport(convs)
    base = {k: {c: model[k][c] if c in pending[k] else p[c] for c in _tune_cache.COLUMNS}
            for k, p in picks.items()}
    program = functools.partial(_lowered, target, args, kwargs)
    with _tune_cache.overlay(base):
        baseline = program()
    text = baseline.as_text()
    runs = []
    for column in _tune_cache.COLUMNS:
        moved = {k: {**base[k], column: picks[k][column]} for k in picks if column in pending[k]}
        if moved:
            with _tune_cache.overlay(moved):
                if program().as_text() != text:
                    runs.append(column)
    if not runs:  # the program runs none of the pending picks: nothing to time
        store(fresh)
        return TuneReport(convs)
    with _tune_cache.overlay(picks):
        compiled = (baseline.compile(), program().compile())
    seconds = _alternating(compiled, args, reps)
    temps = (_temp_bytes(compiled[0]), _temp_bytes(compiled[1]))
    faster = seconds[1] <= seconds[0] and temps[1] <= max_temps * temps[0]
    for k, columns in pending.items():
        for column in (c for c in runs if c in columns):
            judged[k].append(column)
            if not faster:
                picks[k][column] = model[k][column]
    store(fresh | {k for k, columns in pending.items() if set(columns) & set(runs)})
    kept = _tune_cache.COLUMNS if faster else tuple(
        c for c in _tune_cache.COLUMNS if c not in runs)
    return TuneReport(convs, seconds, temps, tuple(runs), kept)


def _lowered(target: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
    """`target` on ``*args, **kwargs``, traced afresh (the tuning cache as the planner reads
    it now) and lowered."""
    return jax.jit(lambda *a: target(*a, **kwargs)).lower(*args)


def _alternating(programs: Sequence[Any], args: tuple[Any, ...],
                 reps: int) -> tuple[float, float]:
    """The fastest seconds of each compiled program on ``*args``, alternating, after a
    warm-up."""
    times: list[list[float]] = [[] for _ in programs]
    for rep in range(reps + 1):
        for fn, ts in zip(programs, times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            if rep:
                ts.append(time.perf_counter() - start)
    first, second = (min(ts) for ts in times)
    return first, second


@dataclasses.dataclass(frozen=True)
class _Row:
    key: str
    conv: TunedConv
    judged: tuple[str, ...] = ()  # the roles a whole program has judged (`tune`)


def _hashable(precision: Any) -> Any:
    return tuple(precision) if isinstance(precision, list) else precision


def _tune_one(spec: ConvSpec, dtype: jnp.dtype, precision: Any, reps: int, retune: bool,
              advance: Callable[[str], None]) -> _Row:
    normwise = planner.allows_normwise(precision)
    key = _tune_cache.key(spec, dtype, normwise)
    model = (planner.plan(spec, dtype, precision=precision, tuned=False),
             planner.plan(spec, dtype, differentiated=True, precision=precision, tuned=False))
    cached = _tune_cache.entries().get(key)
    if cached is not None and not retune:
        advance(f"{spec.lhs_shape} (cached)")
        conv = TunedConv(spec, str(dtype), cached["forward"], cached["differentiated"],
                         cached.get("input_gradient", cached["forward"]), *model, {}, True)
        return _Row(key, conv, tuple(cached.get("judged", ())))
    names = planner.candidates(spec, dtype, precision, opt_in=True)
    seconds = _measure(spec, dtype, precision, names, reps)
    advance(str(spec.lhs_shape))
    # a differentiated call's values by a lowering that may compute them (``DIFFERENTIATED``)
    differentiable = [n for n in names if STRATEGIES[n].DIFFERENTIATED] or names
    forward = _fastest(names, model[0], seconds, 0)
    conv = TunedConv(spec, str(dtype), forward, _fastest(differentiable, model[1], seconds, 1),
                     forward, *model, seconds, False)
    return _Row(key, conv)


MARGIN = 1.05
"""A measured pick replaces the cost model's only where the model's took this many times its
time or more: closer calls are noise, and each pick that moves must then pass the whole
program's check together with the others."""


def _fastest(names: Sequence[str], model: str, seconds: dict[str, tuple[float, float]],
             mode: int) -> str:
    """The fastest of `names` in `mode` (0 forward, 1 with gradients), or `model` where it
    is within `MARGIN` of it."""
    best = min(names, key=lambda n: seconds[n][mode])
    if model in names and seconds[model][mode] < MARGIN * seconds[best][mode]:
        return model
    return best


FIRST_TOUCH_SECONDS_PER_BYTE = 0.5e-6 / 4096
"""What each byte of a program's temporaries costs on the CPU, on top of its measured time:
XLA's CPU runtime allocates a program's temporaries afresh on every call, and in a
network's step (far above glibc's 32 MB mmap threshold) each 4 KiB page is a minor fault
of about 0.5 us (measured with getrusage). Timed alone, a convolution's temporaries stay
below the threshold and are reused, so the timing misses this cost; `tune` adds it."""


def _measure(spec: ConvSpec, dtype: jnp.dtype, precision: Any, names: Sequence[str],
             reps: int) -> dict[str, tuple[float, float]]:
    """The fastest seconds of each lowering's forward and forward plus gradients (the forward
    again for a dense convolution, whose gradients are the engine's own whatever the
    lowering, `jconv._gradients`), on random operands in canonical layout, the lowerings
    alternating within every rep; on the CPU plus the first touch of each program's
    temporaries (`FIRST_TOUCH_SECONDS_PER_BYTE`)."""
    acc = jnp.dtype(jnp.float32) if dtype in _LOW_PRECISION else dtype
    rng = np.random.default_rng(0)

    def operand(shape: tuple[int, ...]) -> jax.Array:
        if jnp.issubdtype(dtype, jnp.integer):
            return jnp.asarray(rng.integers(-3, 4, shape), dtype)
        return jnp.asarray(rng.standard_normal(shape), dtype)

    x, w = operand(spec.lhs_shape), operand(spec.rhs_shape)
    ct = operand(spec.canonical_out_shape).astype(acc)
    touch = FIRST_TOUCH_SECONDS_PER_BYTE if jax.default_backend() == "cpu" else 0.0
    fns, extra = [], []
    for name in names:
        def fwd(a: jax.Array, b: jax.Array, name: str = name) -> jax.Array:
            return STRATEGIES[name].lower(spec, a, b, precision=precision, acc_dtype=acc)

        def loss(a: jax.Array, b: jax.Array, fwd: Callable[..., jax.Array] = fwd) -> jax.Array:
            return jnp.sum(fwd(a, b) * ct)

        differentiable = (jnp.issubdtype(dtype, jnp.inexact)
                          and not planner.engine_gradients(spec, dtype, precision))
        compiled = [jax.jit(f).lower(x, w).compile()
                    for f in ((fwd, jax.grad(loss, (0, 1))) if differentiable else (fwd,))]
        fns.append(compiled)
        extra.append([touch * _temp_bytes(c) for c in compiled])
    times: dict[str, list[list[float]]] = {n: [[], []] for n in names}
    for rep in range(reps + 1):  # rep 0 warms up
        for name, compiled in zip(names, fns, strict=True):
            for mode, fn in enumerate(compiled):
                start = time.perf_counter()
                jax.block_until_ready(fn(x, w))
                if rep:
                    times[name][mode].append(time.perf_counter() - start)
    seconds = {}
    for (name, (f, g)), e in zip(times.items(), extra, strict=True):
        forward = min(f) + e[0]
        seconds[name] = (forward, min(g) + e[1] if g else forward)
    return seconds


def _temp_bytes(compiled: Any) -> int:
    """A compiled program's temporary bytes (0 where the backend does not say)."""
    analysis = compiled.memory_analysis()
    return 0 if analysis is None else analysis.temp_size_in_bytes


class _progress:
    """A rich progress bar over the convolutions to tune (nothing shown if disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self) -> Callable[[str], None]:
        if not self.enabled:
            return lambda label: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task("tuning convolutions", total=self.total)

        def advance(label: str) -> None:
            self.bar.update(task, advance=1, description=f"tuned {label}")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()
