"""`jconv.tune`: measured picks stored per machine and spec, read first by `auto`; a cache
safe under concurrent processes; plans deterministic for a given cache and budget."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv
from jconv import ConvSpec, _gradients, _tune, _tune_cache, planner
from jconv.strategies import STRATEGIES

F32 = jnp.dtype(jnp.float32)
SPEC = ConvSpec.from_lax((2, 10, 10, 4), (3, 3, 4, 4), (1, 1), "SAME",
                         dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.fixture(autouse=True)
def _cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    path = tmp_path / "tune.json"
    monkeypatch.setenv("JCONV_TUNE_CACHE", str(path))
    _tune_cache.reload()
    yield path
    monkeypatch.delenv("JCONV_TUNE_CACHE")
    _tune_cache.reload()


def test_tune_stores_the_fastest_measured_and_auto_runs_it(_cache: pathlib.Path) -> None:
    report = jconv.tune(SPEC, reps=1, progress=False)
    (conv,) = report.convs
    assert not conv.cached and set(conv.seconds) == set(planner.candidates(SPEC, F32))
    differentiable = [n for n in conv.seconds if STRATEGIES[n].DIFFERENTIATED]
    for mode, pick, model, names in ((0, conv.forward, conv.model_forward, conv.seconds),
                                     (1, conv.differentiated, conv.model_differentiated,
                                      differentiable)):
        best = min(names, key=lambda n: conv.seconds[n][mode])  # or the model's, that close
        assert pick in (best, model) and pick in names
        assert conv.seconds[pick][mode] < _tune.MARGIN * conv.seconds[best][mode]
    # SPEC is its own input gradient's shape: that role is timed from its kernel, flipped
    # as a training step flips it
    times = conv.as_input_gradient
    assert set(times) == set(conv.seconds)
    assert times[conv.input_gradient] < _tune.MARGIN * min(times.values())
    stored = json.loads(_cache.read_text())
    assert stored == {_tune_cache.key(SPEC, F32, False): {
        "forward": conv.forward, "differentiated": conv.differentiated,
        "input_gradient": conv.input_gradient, "judged": []}}
    assert planner.resolve("auto", SPEC, F32) == (conv.forward, conv.differentiated,
                                                  conv.input_gradient)
    assert conv.model_forward == planner.plan(SPEC, F32, tuned=False)
    assert "(cached)" not in str(report) and conv.forward in str(report)


def test_a_second_run_times_nothing(_cache: pathlib.Path) -> None:
    first = jconv.tune(SPEC, reps=1, progress=False).convs[0]
    again = jconv.tune(SPEC, reps=1, progress=False).convs[0]
    assert again.cached and again.seconds == {}
    assert (again.forward, again.differentiated) == (first.forward, first.differentiated)
    assert "(cached)" in str(jconv.tune(SPEC, reps=1, progress=False))
    assert not jconv.tune(SPEC, reps=1, retune=True, progress=False).convs[0].cached


def test_auto_follows_the_cache_and_ignores_picks_it_may_not_run(
        _cache: pathlib.Path) -> None:
    """A stored pick wins over the cost model while it is a candidate; one that exceeds the
    budget or is not allowed by the accuracy class is ignored."""
    model = planner.plan(SPEC, F32, tuned=False)
    other = next(n for n in planner.candidates(SPEC, F32) if n != model)
    _tune_cache.store({_tune_cache.key(SPEC, F32, False):
                       {"forward": other, "differentiated": other}})
    assert planner.plan(SPEC, F32) == other
    assert planner.plan(SPEC, F32, differentiated=True) == other
    _tune_cache.store({_tune_cache.key(SPEC, F32, False):
                       {"forward": "fft", "differentiated": "fft"}})  # normwise: not allowed
    assert planner.plan(SPEC, F32) == model
    temps = {n: float(STRATEGIES[n].cost(SPEC).temp_bytes) for n in planner.candidates(SPEC, F32)}
    big = max(temps, key=temps.__getitem__)
    _tune_cache.store({_tune_cache.key(SPEC, F32, False):
                       {"forward": big, "differentiated": big}})
    assert planner.plan(SPEC, F32) == big
    planner.set_memory_budget(int(temps[big]) - 1)  # now over the budget
    try:
        assert big not in planner.candidates(SPEC, F32)
        assert planner.plan(SPEC, F32) != big
    finally:
        planner.set_memory_budget(None)


def test_an_input_gradient_has_a_pick_of_its_own(_cache: pathlib.Path) -> None:
    """A spec planned as another convolution's input gradient reads its own column of the
    cache (here `SPEC` is its own input gradient), and a forward pick where an entry has
    none; the two roles cannot be asked for at once."""
    assert SPEC.input_gradient() == SPEC
    model = planner.plan(SPEC, F32, tuned=False)
    trained = planner.plan(SPEC, F32, differentiated=True, tuned=False)
    assert planner.plan(SPEC, F32, input_gradient=True, tuned=False) == model
    first, second = [n for n in planner.candidates(SPEC, F32) if n != model][:2]
    key = _tune_cache.key(SPEC, F32, False)
    _tune_cache.store({key: {"forward": first, "differentiated": trained}})
    assert planner.resolve("auto", SPEC, F32) == (first, trained, first)
    _tune_cache.store({key: {"forward": first, "differentiated": trained,
                             "input_gradient": second}})
    assert planner.resolve("auto", SPEC, F32) == (first, trained, second)
    assert planner.plan(SPEC, F32, input_gradient=True) == second
    with _tune_cache.overlay({key: {"forward": model, "differentiated": trained,
                                    "input_gradient": model}}):
        assert planner.resolve("auto", SPEC, F32) == (model, trained, model)
    assert planner.resolve("auto", SPEC, F32) == (first, trained, second)  # nothing written
    assert json.loads(_cache.read_text())[key]["input_gradient"] == second
    with pytest.raises(ValueError, match="two roles"):
        planner.plan(SPEC, F32, differentiated=True, input_gradient=True)


def test_opted_in_lowerings_are_tuned_where_their_platform_runs_them(
        _cache: pathlib.Path) -> None:
    """`tune` also times the lowerings auto never predicts (``AUTO = False``) whose
    prediction here is finite, and auto runs a stored pick among them: F(4x4, 3x3)
    Winograd where the precision asks for speed; never the Pallas kernel on the CPU
    (interpreted there)."""
    fast = planner.candidates(SPEC, F32, "fastest", opt_in=True)
    assert "winograd4" in fast and "winograd4" not in planner.candidates(SPEC, F32, "fastest")
    assert "winograd4" not in planner.candidates(SPEC, F32, opt_in=True)  # summation class
    assert "pallas" not in fast and "pallas" not in planner.candidates(SPEC, F32, opt_in=True)
    assert STRATEGIES["pallas"].applicable(SPEC, F32) is None  # refused for its platform
    _tune_cache.store({_tune_cache.key(SPEC, F32, True):
                       {"forward": "winograd4", "differentiated": "winograd4"}})
    assert planner.plan(SPEC, F32, precision="fastest") == "winograd4"
    _tune_cache.store({_tune_cache.key(SPEC, F32, False):
                       {"forward": "pallas", "differentiated": "pallas"}})
    assert planner.plan(SPEC, F32) != "pallas"


def test_tuning_a_function_tunes_every_convolution_it_traces() -> None:
    """Tracing finds the convolutions of values and gradients alike, and each dense
    convolution's input gradient (a convolution of its own; a stride-1 SAME one with as
    many filters as channels is its own); layouts do not matter (the lowerings run in
    canonical order), so the same problem in NCHW shares the entry (``whole=False``: the
    whole-program check may keep the cost model's picks instead, by timing)."""
    x, w = jnp.ones((2, 10, 10, 4)), jnp.ones((3, 3, 4, 4))

    def loss(x: jax.Array, w: jax.Array) -> jax.Array:
        y = jconv.conv(x, w)
        return jnp.sum(jconv.conv(y, w, stride=2) ** 2)

    report = jconv.tune(jax.grad(loss, 1), x, w, reps=1, progress=False, whole=False)
    assert len(report.convs) == 3
    assert [c.spec.window_strides for c in report.convs] == [(1, 1), (2, 2), (1, 1)]
    assert report.convs[0].spec.input_gradient() == report.convs[0].spec
    assert report.convs[2].spec == report.convs[1].spec.input_gradient()
    assert report.convs[2].spec.lhs_dilation == (2, 2)
    nchw = ConvSpec.from_lax((2, 4, 10, 10), (4, 4, 3, 3), (1, 1), "SAME")
    assert _tune_cache.key(nchw, F32, False) == _tune_cache.key(SPEC, F32, False)
    assert planner.plan(nchw, F32) == report.convs[0].forward


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`reps`"):
        jconv.tune(SPEC, reps=0)
    for bad in (0, -1.0, math.inf, True, "1"):
        with pytest.raises(ValueError, match="`max_temps`"):
            jconv.tune(SPEC, max_temps=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`target`"):
        jconv.tune(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="example arguments"):
        jconv.tune(SPEC, jnp.ones(3))


def test_the_cache_is_safe_under_concurrent_processes(_cache: pathlib.Path) -> None:
    """Two processes storing 40 picks each at once: every pick survives, the file stays
    valid JSON."""
    code = ("import sys; from jconv import _tune_cache as c\n"
            "for i in range(40): c.store({f'{sys.argv[1]}-{i}': {'forward': 'shift', "
            "'differentiated': 'shift'}})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    stored = json.loads(_cache.read_text())
    assert len(stored) == 80


def test_the_default_budget_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans do not move with the free memory of the moment: the default budget is measured
    once per process (and again only when reset)."""
    planner.set_memory_budget(None)
    monkeypatch.setattr(planner, "available_memory", lambda: 10_000_000)
    first = planner.get_memory_budget()
    monkeypatch.setattr(planner, "available_memory", lambda: 20_000_000)
    assert planner.get_memory_budget() == first == 5_000_000
    planner.set_memory_budget(None)
    assert planner.get_memory_budget() == 10_000_000
    planner.set_memory_budget(None)


def test_temporaries_are_priced(_cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU each lowering's time includes the first touch of its temporaries: priced
    high enough, the pick is the candidate whose compiled program has the fewest."""
    monkeypatch.setattr(_tune, "FIRST_TOUCH_SECONDS_PER_BYTE", 1.0)
    (conv,) = jconv.tune(SPEC, reps=1, progress=False).convs
    x, w = jnp.ones(SPEC.lhs_shape), jnp.ones(SPEC.rhs_shape)

    def temps(name: str) -> int:
        def fwd(a: jax.Array, b: jax.Array) -> jax.Array:
            return STRATEGIES[name].lower(SPEC, a, b, precision=None, acc_dtype=F32)
        return jax.jit(fwd).lower(x, w).compile().memory_analysis().temp_size_in_bytes

    fewest = min(temps(n) for n in conv.seconds)
    assert temps(conv.forward) == fewest
    assert conv.seconds[conv.forward][0] >= fewest


@pytest.mark.parametrize(("tuned_faster", "tuned_larger", "max_temps"),
                         [(True, False, 1.0), (False, False, 1.0), (True, True, 1.0),
                          (True, True, 1.5), (True, True, 1.4)])
def test_a_program_slower_or_larger_with_the_tuned_picks_keeps_the_models(
        _cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch, tuned_faster: bool,
        tuned_larger: bool, max_temps: float) -> None:
    """Tuning a function compiles the whole program with the cost model's picks and with the
    tuned ones; where the tuned program keeps more temporaries than `max_temps` times the
    model's, the cost model's picks are stored without timing anything, and where it fits
    but runs slower, too."""
    model = planner.plan(SPEC, F32, tuned=False)
    other = next(n for n in planner.candidates(SPEC, F32, differentiated=True) if n != model)

    def measure(spec, dtype, precision, names, reps, parent=None):  # `other` measured fastest
        return {n: (1.0, 1.0) if n == other else (2.0, 2.0) for n in names}

    timed: list[int] = []

    def alternating(programs, args, reps):
        timed.append(len(programs))
        return (2.0, 1.0) if tuned_faster else (1.0, 2.0)

    read: list[int] = []
    real = _tune._temp_bytes

    def temp_bytes(compiled):  # the cost model's program, then the tuned one
        read.append(real(compiled))
        return 100 + 50 * (tuned_larger and len(read) == 2)

    monkeypatch.setattr(_tune, "_measure", measure)
    monkeypatch.setattr(_tune, "_alternating", alternating)
    monkeypatch.setattr(_tune, "_temp_bytes", temp_bytes)
    x, w = jnp.ones(SPEC.lhs_shape), jnp.ones(SPEC.rhs_shape)
    report = jconv.tune(lambda a, b: jconv.conv(a, b), x, w, reps=1, progress=False,
                        max_temps=max_temps)
    fits = not tuned_larger or max_temps >= 1.5
    kept = tuned_faster and fits
    assert timed == [2] * fits and (report.program_seconds is not None) == fits
    assert len(read) == 2
    assert report.program_temp_bytes == (100, 100 + 50 * tuned_larger)
    assert report.runs == ("forward",) and report.convs[0].forward == other
    # the forward program runs no differentiated call and no input gradient: their tuned
    # picks are stored as timed
    assert report.kept == (_tune_cache.COLUMNS if kept
                           else ("differentiated", "input_gradient"))
    assert planner.resolve("auto", SPEC, F32) == (other if kept else model, other, other)
    assert ("kept the tuned picks" in str(report)) == kept


@pytest.mark.single_device  # several devices: the ops' values read the forward pick too
def test_a_training_step_judges_the_roles_it_runs(
        _cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step runs its convolutions' differentiated picks and their input
    gradients', not their undifferentiated ones: rejected, the step's roles go back to the
    cost model's and the forward pick stays, unjudged, until a forward pass tuned later
    judges it from the cache (no convolution timed again); a program that runs no pending
    pick times nothing."""
    model = planner.plan(SPEC, F32, tuned=False)
    trained = planner.plan(SPEC, F32, differentiated=True, tuned=False)
    other = next(n for n in planner.candidates(SPEC, F32, differentiated=True)
                 if n not in (model, trained))
    fastest = {"forward": other, "differentiated": other}
    measured: list[int] = []

    def measure(spec, dtype, precision, names, reps, parent=None):
        measured.append(len(names))
        return {n: (1.0 + (n != fastest["forward"]), 1.0 + (n != fastest["differentiated"]))
                for n in names}

    timed: list[int] = []

    def slower(programs, args, reps):
        timed.append(len(programs))
        return (1.0, 2.0)

    monkeypatch.setattr(_tune, "_measure", measure)
    monkeypatch.setattr(_tune, "_alternating", slower)
    monkeypatch.setattr(_tune, "_temp_bytes", lambda compiled: 100)  # every program fits
    x, w = jnp.ones(SPEC.lhs_shape), jnp.ones(SPEC.rhs_shape)
    key = _tune_cache.key(SPEC, F32, False)
    step = jax.grad(lambda a, b: jnp.sum(jconv.conv(a, b) ** 2), (0, 1))
    report = jconv.tune(step, x, w, reps=1, progress=False)
    assert timed == [2] and report.runs == ("differentiated", "input_gradient")
    assert report.kept == ("forward",)
    assert planner.resolve("auto", SPEC, F32) == (other, trained, model)
    assert _tune_cache.entries()[key]["judged"] == ["differentiated", "input_gradient"]
    assert "kept 0 of the 2 tuned picks the program runs (the tuned program was slower)" \
        in str(report)

    def forward(a: jax.Array, b: jax.Array) -> jax.Array:
        return jconv.conv(a, b)

    report = jconv.tune(forward, x, w, reps=1, progress=False)
    # measured once as called and once as its own input gradient's shape, by the step only
    assert len(measured) == 2 and timed == [2, 2] and report.runs == ("forward",)
    assert report.convs[0].cached and report.kept == ("differentiated", "input_gradient")
    assert planner.resolve("auto", SPEC, F32) == (model, trained, model)
    assert sorted(_tune_cache.entries()[key]["judged"]) == sorted(_tune_cache.COLUMNS)
    assert jconv.tune(forward, x, w, reps=1, progress=False).program_seconds is None
    fastest["forward"] = model  # only the differentiated pick moves: a forward pass is the
    report = jconv.tune(forward, x, w, reps=1, progress=False, retune=True)  # same program
    assert timed == [2, 2] and report.program_seconds is None
    assert report.kept == _tune_cache.COLUMNS
    assert planner.resolve("auto", SPEC, F32) == (model, other, model)
    assert _tune_cache.entries()[key]["judged"] == []


@pytest.mark.parametrize("search_compiles", [_tune.SEARCH_COMPILES, 1])
def test_picks_that_keep_more_temporaries_alone_are_left_out_and_the_rest_kept(
        _cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch, search_compiles: int) -> None:
    """Where the tuned picks together keep more temporaries than `max_temps` allows, the
    check searches the picks, largest measured saving first, for those that fit: here the
    3x3 layer's `patches` (a 9-fold copy of its input) is left out and the 1x1 layer's
    pick, which moves no buffer, is timed and kept. With one compile allowed, the search
    stops after the program with every pick and keeps none."""
    dn = ("NHWC", "HWIO", "NHWC")
    three = ConvSpec.from_lax((8, 32, 32, 16), (3, 3, 16, 16), (1, 1), "SAME",
                              dimension_numbers=dn)
    one = ConvSpec.from_lax((8, 32, 32, 16), (1, 1, 16, 16), (1, 1), "SAME",
                            dimension_numbers=dn)
    fastest = {three: "patches", one: next(
        n for n in planner.candidates(one, F32) if n != planner.plan(one, F32, tuned=False))}
    assert planner.plan(three, F32, tuned=False) != "patches"

    def measure(spec, dtype, precision, names, reps, parent=None):  # the 3x3 layer saves the most
        slow = 4.0 if spec == three else 2.0
        return {n: (1.0, 1.0) if n == fastest[spec] else (slow, slow) for n in names}

    timed: list[int] = []

    def alternating(programs, args, reps):
        timed.append(len(programs))
        return (2.0, 1.0)

    compiled: list[int] = []
    real = _tune._temp_bytes

    def temp_bytes(program):
        compiled.append(real(program))
        return compiled[-1]

    monkeypatch.setattr(_tune, "_measure", measure)
    monkeypatch.setattr(_tune, "_alternating", alternating)
    monkeypatch.setattr(_tune, "_temp_bytes", temp_bytes)

    def net(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
        h = jnp.tanh(jconv.conv_general_dilated(x, a, (1, 1), "SAME", dimension_numbers=dn))
        return jconv.conv_general_dilated(h, b, (1, 1), "SAME", dimension_numbers=dn)

    x, a, b = (jnp.ones(s) for s in (three.lhs_shape, three.rhs_shape, one.rhs_shape))
    monkeypatch.setattr(_tune, "SEARCH_COMPILES", search_compiles)
    report = jconv.tune(net, x, a, b, reps=1, progress=False)
    if search_compiles == 1:
        assert len(compiled) == 2 and timed == [] and report.program_seconds is None
        assert planner.resolve("auto", one, F32).values == planner.plan(one, F32, tuned=False)
        assert len(report.dropped) == 2 and "kept 0 of the 2" in str(report)
        return
    # the model's program, all the picks, the 3x3 layer's alone, the 1x1 layer's alone (both
    # compiled for their temporaries only), the 1x1 layer's again to run
    assert len(compiled) == 5 and compiled[1] > 1.05 * compiled[0] and compiled[2] > compiled[3]
    assert compiled[0] == compiled[3] == compiled[4]
    assert timed == [2] and report.runs == ("forward",)
    assert report.program_temp_bytes == (compiled[0], compiled[4])
    assert planner.resolve("auto", three, F32).values == planner.plan(three, F32, tuned=False)
    assert planner.resolve("auto", one, F32).values == fastest[one]
    assert [(report.convs[i].spec, role) for i, role in report.dropped] == [(three, "forward")]
    assert "kept 1 of the 2 tuned picks the program runs (the others left out: over max_temps" \
        in str(report)
    assert "patches*" in str(report)


def test_an_input_gradient_is_timed_as_a_training_step_runs_it(
        _cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dense layer's input gradient is its own convolution, tuned from the layer's kernel
    as the step flips it (`_gradients.input_gradient`): its ``input_gradient`` pick follows
    those timings, and a spec the program never calls is timed that way only."""
    strided = ConvSpec.from_lax((2, 10, 10, 4), (3, 3, 4, 8), (2, 2), "SAME",
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    grad = strided.input_gradient()
    names = planner.candidates(grad, F32)
    plain, flipped = names[0], names[-1]
    seen: list[tuple[ConvSpec, ConvSpec | None]] = []

    def measure(spec, dtype, precision, names, reps, parent=None):
        seen.append((spec, parent))
        fastest = plain if parent is None else flipped
        return {n: (1.0, 1.0) if n == fastest else (3.0, 3.0) for n in names}

    monkeypatch.setattr(_tune, "_measure", measure)
    monkeypatch.setattr(_tune, "_alternating", lambda programs, args, reps: (2.0, 1.0))
    x, w = jnp.ones(strided.lhs_shape), jnp.ones(strided.rhs_shape)
    step = jax.grad(lambda a, b: jnp.sum(jconv.conv_general_dilated(
        a, b, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2), (0, 1))
    report = jconv.tune(step, x, w, reps=1, progress=False)
    assert seen == [(strided, None), (grad, strided)]
    conv = next(c for c in report.convs if c.spec == grad)
    assert conv.input_gradient == flipped and set(conv.as_input_gradient) == set(names)
    assert planner.resolve("auto", strided, F32).input_gradient == flipped


def test_the_input_gradient_helper_is_the_engines(_cache: pathlib.Path) -> None:
    """`_gradients.input_gradient`, which `tune` times, is the input gradient a training
    step computes: lax's, for a lowering that flips a copy and for scatter's and Winograd's
    unflipped reads."""
    spec = ConvSpec.from_lax((2, 9, 9, 3), (3, 3, 3, 5), (1, 1), "SAME",
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    rng = np.random.default_rng(0)
    x, w, ct = (jnp.asarray(rng.standard_normal(s), F32)
                for s in (spec.lhs_shape, spec.rhs_shape, spec.canonical_out_shape))
    _, pullback = jax.vjp(lambda a: jax.lax.conv_general_dilated(
        a, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), x)
    (want,) = pullback(ct)
    for name in ("patches", "scatter", "winograd"):
        got = _gradients.input_gradient(spec, name, w, w, ct, precision=None, acc_dtype=F32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("misfits", [(), (7,), (0, 47), (3, 4, 5), tuple(range(48))])
def test_the_search_leaves_out_only_the_picks_that_do_not_fit(misfits: tuple[int, ...]) -> None:
    """`_largest_fitting` over 48 picks of which `misfits` do not fit with any others: it
    returns every other pick, in order, a set it tested, after about ``k (log2(48) + 1) + 1``
    tests for ``k`` misfits."""
    tested: list[tuple[int, ...]] = []

    def fits(chosen: tuple[int, ...]) -> bool:
        tested.append(chosen)
        return not set(chosen) & set(misfits)

    kept = _tune._largest_fitting(range(48), fits)
    assert kept == tuple(i for i in range(48) if i not in misfits)
    assert kept in tested or not kept
    assert len(tested) <= len(misfits) * (math.ceil(math.log2(48)) + 1) + 1


@pytest.mark.parametrize("slower", [1.04, 1.06])
def test_the_models_pick_stays_unless_another_is_clearly_faster(
        _cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch, slower: float) -> None:
    """A measured pick replaces the cost model's only where the model's took `MARGIN` (5%)
    more time or longer: closer calls are noise."""
    model = planner.plan(SPEC, F32, tuned=False)
    other = next(n for n in planner.candidates(SPEC, F32) if n != model)
    monkeypatch.setattr(_tune, "_measure", lambda spec, dtype, precision, names, reps,
                        parent=None: {n: (1.0, 1.0) if n == other else (slower, slower)
                                      if n == model else (3.0, 3.0) for n in names})
    (conv,) = jconv.tune(SPEC, reps=1, progress=False).convs
    assert conv.forward == (other if slower >= _tune.MARGIN else model)


def test_a_differentiated_pick_is_a_lowering_that_may_compute_its_values(
        _cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where `direct` is measured fastest forward and forward with gradients (thin groups),
    the forward pick is `direct` and the differentiated one the fastest of the others
    (``direct.DIFFERENTIATED`` is False)."""
    spec = ConvSpec.from_lax((2, 8, 8, 16), (3, 3, 2, 16), (1, 1), "SAME",
                             dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=8)
    names = planner.candidates(spec, F32, opt_in=True)
    runner_up = next(n for n in names if n != "direct")

    def measure(spec, dtype, precision, names, reps, parent=None):
        rank = {"direct": 1.0, runner_up: 2.0}
        return {n: (rank.get(n, 3.0), rank.get(n, 3.0)) for n in names}

    monkeypatch.setattr(_tune, "_measure", measure)
    row = _tune._tune_one(spec, F32, None, 1, True, lambda _: None)
    assert "direct" in names
    assert (row.conv.forward, row.conv.differentiated) == ("direct", runner_up)
