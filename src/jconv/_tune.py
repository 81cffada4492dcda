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
(`ConvSpec.input_gradient`) is tuned beside it, timed from the layer's kernel as a training
step runs it (`jconv._gradients.input_gradient`). On the CPU each time includes the first
touch of the program's temporaries (`FIRST_TOUCH_SECONDS_PER_BYTE`), which a network's step
pays on every call and a convolution timed alone does not.

Each spec gets one pick per role (`_tune_cache.COLUMNS`): undifferentiated, a
differentiated call's values, and another convolution's input gradient (the forward's
fastest). For a function, the whole program is then compiled with the cost model's picks and
with the tuned ones the program runs. A role runs in the program where its tuned picks alone
change the program's lowered text: a training step runs no undifferentiated convolution, so
its forward picks are stored as timed, unjudged, and tuning a forward pass later judges them
without timing the convolutions again. Where the tuned picks together keep more than
``max_temps`` times the model's temporaries (5% more by default), the picks are searched,
largest measured saving first, for those that fit together (`_largest_fitting`: one pick
that moves a buffer, such as a 9-fold patch copy, is left out without losing the others).
The program with those is timed against the model's, and they are kept where it is no
slower; the cache records the roles judged.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _gradients, _tune_cache, planner
from ._spec import ConvSpec
from .strategies import STRATEGIES

__all__ = ["TuneReport", "TunedConv", "tune"]

_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_Picks = tuple[tuple[str, str], ...]  # (cache key, role) of tuned picks, as a program runs them


@dataclasses.dataclass(frozen=True)
class TunedConv:
    """One convolution's tuning: the picks per role (undifferentiated, a differentiated
    call's values, another convolution's input gradient), the cost model's picks and the
    fastest times measured (``seconds[name] = (forward, forward and both gradients)``, for
    a spec the program calls; ``as_input_gradient[name]``, for the input gradient of a
    convolution it calls, run from that convolution's kernel as a training step runs it,
    `jconv._gradients.input_gradient`); ``cached`` if the picks came from the cache without
    timing."""

    spec: ConvSpec
    dtype: str
    forward: str
    differentiated: str
    input_gradient: str
    model_forward: str
    model_differentiated: str
    seconds: dict[str, tuple[float, float]]
    cached: bool
    as_input_gradient: dict[str, float] = dataclasses.field(default_factory=dict)

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
    """What `tune` chose for each distinct convolution, in the order the program runs them:
    ``convs``, each as measured, and ``stored``, the picks per role (`_tune_cache.COLUMNS`)
    now in the cache for each, which `auto` runs. For a function: ``runs``, the roles whose
    tuned picks change the program; ``program_temp_bytes``, the whole program's compiled
    temporaries with the cost model's picks and with the tuned ones it runs (all of them, or
    those that fit `max_temps` together); ``program_seconds``, both programs' fastest seconds
    (None where nothing was timed)."""

    convs: tuple[TunedConv, ...]
    stored: tuple[dict[str, str], ...]
    program_seconds: tuple[float, float] | None = None
    program_temp_bytes: tuple[int, int] | None = None
    runs: tuple[str, ...] = ()

    @property
    def dropped(self) -> tuple[tuple[int, str], ...]:
        """``(index in convs, role)`` of each tuned pick replaced by the cost model's."""
        return tuple((i, c) for i, (conv, kept) in enumerate(zip(self.convs, self.stored,
                                                                   strict=True))
                     for c in _tune_cache.COLUMNS if kept[c] != conv.picks[c])

    @property
    def moved(self) -> tuple[tuple[int, str], ...]:
        """``(index in convs, role)`` of each tuned pick in a role the program runs that is
        not the cost model's: those the whole-program check judged (or an earlier one)."""
        return tuple((i, r) for i, c in enumerate(self.convs) for r in self.runs
                     if c.picks[r] != c.model_picks[r])

    @property
    def kept(self) -> tuple[str, ...]:
        """The roles all of whose tuned picks were stored."""
        dropped = {c for _, c in self.dropped}
        return tuple(c for c in _tune_cache.COLUMNS if c not in dropped)

    def __str__(self) -> str:
        dropped = set(self.dropped)
        lines = [f"{'convolution':<48} {'forward':>11} {'(model)':>10} "
                 f"{'trained':>11} {'(model)':>10}"]
        for i, c in enumerate(self.convs):
            fwd, trained = (getattr(c, r) + "*" * ((i, r) in dropped)
                            for r in ("forward", "differentiated"))
            lines.append(f"{c.label:<48} {fwd:>11} {c.model_forward:>10} "
                         f"{trained:>11} {c.model_differentiated:>10}"
                         + ("  (cached)" if c.cached else ""))
        if self.program_temp_bytes is not None:
            model_mb, tuned_mb = (b / 2**20 for b in self.program_temp_bytes)
            model, tuned = (("", "") if self.program_seconds is None else
                            (f"{1e3 * t:.1f} ms and " for t in self.program_seconds))
            lines.append(f"whole program: {model}{model_mb:.1f} MiB of temporaries with the "
                         f"cost model's picks, {tuned}{tuned_mb:.1f} MiB tuned: {self.verdict}")
        if dropped:
            lines.append("* measured fastest, not stored: the whole program kept the cost "
                         "model's pick")
        return "\n".join(lines)

    @property
    def verdict(self) -> str:
        """Which picks were stored, in words."""
        dropped = self.dropped
        if not dropped:
            return "kept the tuned picks"
        moved = len(self.moved)
        if self.program_seconds is not None and self.program_seconds[1] > self.program_seconds[0]:
            reason = "the tuned program was slower"
        else:
            reason = ("the others left out: over max_temps with the picks before them, or "
                      "past the search's compiles")
        return (f"kept {moved - len(dropped)} of the {moved} tuned picks the program runs "
                f"({reason})")


def tune(
    target: ConvSpec | Callable[..., Any],
    *args: Any,
    dtype: jax.typing.DTypeLike = jnp.float32,
    precision: lax.PrecisionLike = None,
    reps: int = 5,
    retune: bool = False,
    progress: bool = True,
    whole: bool = True,
    max_temps: float = 1.05,
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
      whole: for a function, also compile the whole program on ``*args`` with the cost
        model's picks and with the tuned ones, and store the cost model's picks instead, for
        the roles the program runs, where the tuned program keeps more temporaries
        (`memory_analysis`) than `max_temps` allows (each pick that does not fit with the
        others, searched largest saving first) or is slower (alternating `reps` times): each
        convolution is timed alone, and a program's schedule and temporaries are not their
        sum; the temporaries cap the batch a program can run. Picks the program does not
        run are stored as timed and judged by the next program tuned that runs them (a
        training step runs no undifferentiated convolution; a forward pass does).
      max_temps: the temporaries the tuned program may keep, as a multiple of the cost
        model's program's: 5% more by default, the noise margin `MARGIN` applied to memory
        (the networks' training steps keep 1.0-1.2x lax's temporaries, so tuned ones stay
        under 1.25x); 1.0 keeps none more, 1.1 trades up to 10% more for speed.

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
    counts: collections.Counter[tuple[ConvSpec, Any, Any]] = collections.Counter()
    parents: dict[tuple[ConvSpec, Any, Any], ConvSpec] = {}  # an input gradient -> whose
    for s, d, p in calls:
        counts[s, d, _hashable(p)] += 1
        if planner.engine_gradients(s, d, p):
            grad = (s.input_gradient(), d, _hashable(p))
            counts[grad] += 1
            parents.setdefault(grad, s)
    called = {(s, d, _hashable(p)) for s, d, p in calls}
    with _progress(progress, len(counts)) as advance:
        rows = [_tune_one(*row, reps, retune, advance, parents.get(row), row in called)
                for row in counts]
    convs = tuple(r.conv for r in rows)
    picks = {r.key: r.conv.picks for r in rows}
    model = {r.key: r.conv.model_picks for r in rows}
    judged = {r.key: list(r.judged) for r in rows}
    # the roles of each convolution whose tuned pick moved and no whole program has judged
    pending = {k: [c for c in _tune_cache.COLUMNS if c not in judged[k] and p[c] != model[k][c]]
               for k, p in picks.items()}
    fresh = {r.key for r in rows if not r.conv.cached}

    def report(**program: Any) -> TuneReport:
        return TuneReport(convs, tuple(dict(picks[r.key]) for r in rows), **program)

    def store(keys: set[str]) -> None:
        if keys:
            _tune_cache.store({k: {**picks[k], "judged": judged[k]} for k in keys})

    if isinstance(target, ConvSpec) or not whole or not any(pending.values()):
        store(fresh)
        return report()
    base = {k: {c: model[k][c] if c in pending[k] else p[c] for c in _tune_cache.COLUMNS}
            for k, p in picks.items()}

    def program(chosen: Sequence[tuple[str, str]] = ()) -> Any:
        moved = {k: dict(v) for k, v in base.items()}
        for k, column in chosen:
            moved[k][column] = picks[k][column]
        with _tune_cache.overlay(moved):
            return _lowered(target, args, kwargs)

    baseline = program()
    text = baseline.as_text()
    runs = tuple(c for c in _tune_cache.COLUMNS
                 if any(c in v for v in pending.values())
                 and program([(k, c) for k in pending if c in pending[k]]).as_text() != text)
    if not runs:  # the program runs none of the pending picks: nothing to time
        store(fresh)
        return report()
    # the picks the program runs, the largest measured saving first
    calls_of: collections.Counter[str] = collections.Counter()
    for r, n in zip(rows, counts.values(), strict=True):
        calls_of[r.key] += n
    gain = {(r.key, c): calls_of[r.key] * _saving(r.conv, c) for r in rows for c in runs
            if c in pending[r.key]}
    items = sorted(gain, key=lambda i: -gain[i])
    compiled: dict[_Picks, Any] = {(): baseline.compile()}  # compiled to run
    temps: dict[_Picks, int] = {(): _temp_bytes(compiled[()])}
    limit = max_temps * temps[()]

    def fits(chosen: _Picks) -> bool:
        if len(temps) > SEARCH_COMPILES:  # the search's compiles are spent
            return False
        lowered = program(chosen)
        if len(temps) == 1:  # every pick: the program kept most often, compiled to run
            compiled[chosen] = lowered.compile()
            temps[chosen] = _temp_bytes(compiled[chosen])
        else:
            temps[chosen] = _temp_bytes(lowered.compile(_MEMORY_ONLY))
        return temps[chosen] <= limit

    chosen = _largest_fitting(items, fits)
    if chosen and chosen not in compiled:
        compiled[chosen] = program(chosen).compile()
        temps[chosen] = _temp_bytes(compiled[chosen])
    seconds = (_alternating((compiled[()], compiled[chosen]), args, reps)
               if chosen and temps[chosen] <= limit else None)
    faster = seconds is not None and seconds[1] <= seconds[0]
    for k, column in items:
        judged[k].append(column)
        if not faster or (k, column) not in chosen:
            picks[k][column] = model[k][column]
    store(fresh | {k for k, _ in items})
    return report(program_seconds=seconds, runs=runs,
                  program_temp_bytes=(temps[()], temps[chosen or tuple(items)]))


SEARCH_COMPILES = 12
"""The most programs the whole-program check compiles to search the picks that fit
`max_temps` together (the first, with every pick, included): 81 s for ResNet-50's
training step on 2 cores, where 16 of its 44 picks were kept. Picks the search does not
reach keep the cost model's."""

_MEMORY_ONLY = {"xla_backend_optimization_level": 0}
"""Compiler options for a program compiled only for its temporaries: XLA assigns buffers
before the backend optimizes its code, and skipping that optimization halves a network's
compile time on the CPU (the same temporaries on every network of the benchmark)."""


def _saving(conv: TunedConv, column: str) -> float:
    """Seconds one call saves with `conv`'s tuned pick in role `column` over the cost
    model's, as measured (0 where it came from the cache)."""
    tuned, model = conv.picks[column], conv.model_picks[column]
    times = {n: t[int(column == "differentiated")] for n, t in conv.seconds.items()}
    if column == "input_gradient" and conv.as_input_gradient:
        times = conv.as_input_gradient
    return times[model] - times[tuned] if tuned in times and model in times else 0.0


def _largest_fitting(items: Sequence[Any], fits: Callable[[tuple[Any, ...]], bool]
                     ) -> tuple[Any, ...]:
    """A subset of `items` that `fits` (a test of the subset, as a tuple in `items`' order),
    the first items first: all of them if they fit; else the longest leading run that fits
    (bisected), then the item after it is left out and the rest tried after that run, the
    same way. What it returns was tested (or is empty); ``k`` misfits among ``n`` items cost
    about ``k (log2(n) + 1) + 1`` tests."""
    kept: tuple[Any, ...] = ()
    rest = tuple(items)
    while rest and not fits(kept + rest):
        fit, fail = 0, len(rest)  # rest[:fit] fits after kept, rest[:fail] does not
        while fail - fit > 1:
            mid = (fit + fail) // 2
            fit, fail = (mid, fail) if fits(kept + rest[:mid]) else (fit, mid)
        kept, rest = kept + rest[:fit], rest[fail:]
    return kept + rest


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
              advance: Callable[[str], None], parent: ConvSpec | None = None,
              called: bool = True) -> _Row:
    """`spec`'s picks per role: from the cache, or timed: as the program calls it where
    `called`, and where it is `parent`'s input gradient, as a training step runs that (its
    ``input_gradient`` pick; the only timing where not `called`)."""
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
    flipped = None if parent is None else _measure(spec, dtype, precision, names, reps, parent)
    seconds = (_measure(spec, dtype, precision, names, reps) if called or flipped is None
               else flipped)
    advance(str(spec.lhs_shape))
    # a differentiated call's values by a lowering that may compute them (``DIFFERENTIATED``)
    differentiable = [n for n in names if STRATEGIES[n].DIFFERENTIATED] or names
    forward = _fastest(names, model[0], seconds, 0)
    conv = TunedConv(spec, str(dtype), forward, _fastest(differentiable, model[1], seconds, 1),
                     forward if flipped is None else _fastest(names, model[0], flipped, 0),
                     *model, seconds, False, {n: t for n, (t, _) in (flipped or {}).items()})
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
             reps: int, parent: ConvSpec | None = None) -> dict[str, tuple[float, float]]:
    """The fastest seconds of each lowering's forward and forward plus gradients (the forward
    again for a dense convolution, whose gradients are the engine's own whatever the
    lowering, `jconv._gradients`), on random operands in canonical layout, the lowerings
    alternating within every rep; on the CPU plus the first touch of each program's
    temporaries (`FIRST_TOUCH_SECONDS_PER_BYTE`). With `parent` (`spec` is its
    `ConvSpec.input_gradient`), each lowering runs from `parent`'s kernel as a training step
    runs it (`jconv._gradients.input_gradient`: the flipped kernel is a copy but for scatter
    and Winograd), forward only: ResNet-50's step ran 1.2x slower for one input gradient
    tuned as a plain convolution (3x3 over 2 x 2 x 512, `patches` instead of `scatter`,
    whose flipped copy of the 9.4 MB kernel the plain timing did not make)."""
    acc = jnp.dtype(jnp.float32) if dtype in _LOW_PRECISION else dtype
    rng = np.random.default_rng(0)

    def operand(shape: tuple[int, ...]) -> jax.Array:
        if jnp.issubdtype(dtype, jnp.integer):
            return jnp.asarray(rng.integers(-3, 4, shape), dtype)
        return jnp.asarray(rng.standard_normal(shape), dtype)

    x, w = operand(spec.lhs_shape), operand((parent or spec).rhs_shape)
    ct = operand(spec.canonical_out_shape).astype(acc)
    touch = FIRST_TOUCH_SECONDS_PER_BYTE if jax.default_backend() == "cpu" else 0.0
    fns, extra = [], []
    for name in names:
        def fwd(a: jax.Array, b: jax.Array, name: str = name) -> jax.Array:
            if parent is not None:
                return _gradients.input_gradient(parent, name, b, b, a, precision=precision,
                                                 acc_dtype=acc)
            return STRATEGIES[name].lower(spec, a, b, precision=precision, acc_dtype=acc)

        def loss(a: jax.Array, b: jax.Array, fwd: Callable[..., jax.Array] = fwd) -> jax.Array:
            return jnp.sum(fwd(a, b) * ct)

        differentiable = (parent is None and jnp.issubdtype(dtype, jnp.inexact)
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
