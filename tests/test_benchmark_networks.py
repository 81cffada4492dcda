"""benchmarks/networks.py at its smoke sizes: every network runs the same with jconv as with
lax (and PyTorch, same weights), the tuned variant reads its cache, and the writers give
the table's columns."""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jconv import _tune_cache, planner

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import networks
from run import rel_err

SMOKE = {n.name: n for n in networks.SMOKE}


@pytest.fixture
def tune_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    """A folder for the benchmark's tuning caches; the suite's own cache is restored after."""
    monkeypatch.setenv("JCONV_TUNE_CACHE", str(tmp_path / "suite.json"))
    yield tmp_path
    monkeypatch.undo()
    _tune_cache.reload()


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "mobilenet_v1"])
def test_jconv_matches_lax(name: str, tune_dir: pathlib.Path) -> None:
    """Logits, loss and gradient (read from the step's momentum) of jconv's auto and lax."""
    net = SMOKE[name]
    params, (x, y) = networks.init(net), networks.inputs(net)
    state = networks.OPTIMIZER.init(params)
    networks.fresh_tune_cache(tune_dir / "empty.json")
    ref, ours = (networks.compile_variant(net, networks.HOOKS[v], params, state, x, y)
                 for v in ("lax", "auto"))
    assert ref.logits.shape == (net.x[0], net.classes)
    assert abs(ours.loss - ref.loss) <= 1e-5 * abs(ref.loss)
    assert rel_err(ours.logits, ref.logits) < 1e-5
    assert rel_err(ours.grad, ref.grad) < 1e-5


def test_off_the_cpu_the_outputs_checked_run_at_highest_precision(
        tune_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the default matmul precision is below float32's (GPU, TPU), the logits, loss
    and gradient checked come from programs traced at ``"highest"``; the timed programs,
    and on the CPU everything, at the default. The hook records the precision each
    convolution was traced at."""
    net = SMOKE["audio_m5"]
    params, (x, y) = networks.init(net), networks.inputs(net)
    state = networks.OPTIMIZER.init(params)
    seen: list[str | None] = []

    def conv(*args: object, **kwargs: object) -> jax.Array:
        seen.append(jax.config.jax_default_matmul_precision)
        return networks.lax_conv(*args, **kwargs)

    ref = networks.compile_variant(net, networks.lax_conv, params, state, x, y)
    assert not networks.checks_apart()  # the suite runs on the CPU
    networks.compile_variant(net, conv, params, state, x, y)
    assert set(seen) == {None}
    seen.clear()
    monkeypatch.setattr(networks, "checks_apart", lambda: True)
    got = networks.compile_variant(net, conv, params, state, x, y)
    n = len(networks.layers(net))
    assert seen.count(None) == seen.count("highest") == 2 * n  # traced by forward and step
    assert rel_err(got.logits, ref.logits) < 1e-6 and rel_err(got.grad, ref.grad) < 1e-6


def test_momentum_is_the_gradient(tune_dir: pathlib.Path) -> None:
    net = SMOKE["audio_m5"]
    params, (x, y) = networks.init(net), networks.inputs(net)
    got = networks.compile_variant(net, networks.lax_conv, params,
                                   networks.OPTIMIZER.init(params), x, y).grad
    want = jax.jit(jax.grad(lambda p: networks.loss_fn(net, networks.lax_conv, p, x, y)))(
        params)
    assert networks.leaf_names(got).keys() == networks.leaf_names(want).keys()
    assert rel_err(got, want) < 1e-6


def test_bench_and_writers(tune_dir: pathlib.Path) -> None:
    """One network through `bench_net` (tuned from picks stored beforehand, so nothing is
    timed while tuning; PyTorch if installed), then the JSON and Markdown writers."""
    net = SMOKE["audio_m5"]
    params, (x, y) = networks.init(net), networks.inputs(net)
    state = networks.OPTIMIZER.init(params)
    networks.fresh_tune_cache(tune_dir / f"{net.name}.json")
    with planner.recording() as calls:
        jax.make_jaxpr(networks.train_step(net, networks.jconv_conv))(params, state, x, y)
    picks = {}
    for spec, dtype, precision in dict.fromkeys(calls):  # another lowering than the model's
        names = planner.candidates(spec, dtype, precision)
        other = [n for n in names if n != planner.plan(spec, dtype, tuned=False)]
        pick = (other or names)[0]
        picks[_tune_cache.key(spec, dtype, False)] = {"forward": pick, "differentiated": pick}
    _tune_cache.store(picks)
    torch_col = networks.torch_version() is not None
    rec = networks.bench_net(net, reps=1, budget_s=0.1, tune=True, torch_col=torch_col,
                             cache_dir=tune_dir)
    assert not networks.mismatches(rec)
    assert set(rec["rel_err"]) == {"auto", "tuned"} | ({"torch"} if torch_col else set())
    assert {c["tuned_differentiated"] for c in rec["convs"]} == {
        p["differentiated"] for p in picks.values()}
    assert set(rec["tune_kept"]) == set(rec["tune_check"]) == {"train", "forward"}
    assert all(0 <= kept <= moved for kept, moved in rec["tune_kept"].values())
    assert sum(c["count"] for c in rec["convs"]) == len(networks.layers(net))
    for phase in ("forward", "train"):
        assert set(rec[phase]["ms"]) == {"lax", "auto", "tuned"} | (
            {"torch"} if torch_col else set())
        assert all(t > 0 for t in rec[phase]["ms"].values())
        assert set(rec[phase]["temp_mb"]) == {"lax", "auto", "tuned"}

    meta = {"machine": "test CPU", "jax": jax.__version__, "torch": None, "reps": 1,
            "budget_s": 0.1, "matmul_gflops": 1.0}
    networks.write_results(meta, [rec], tune_dir / "out")
    data = json.loads((tune_dir / "out.json").read_text())
    assert data["meta"] == meta and data["networks"][0]["network"] == net.name
    md = (tune_dir / "out.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("| network | phase"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(networks.COLUMNS)
    rows = [line.split(" | ") for line in md if line.startswith(f"| {net.name} | ")]
    assert [r[1] for r in rows[:2]] == ["forward", "train step"]
    lax_ms = rec["train"]["ms"]["lax"]
    ratio = rec["train"]["ms"]["auto"] / lax_ms
    assert rows[1][2] == f"{lax_ms:.1f}" and rows[1][3].endswith(f"({ratio:.2f})")
    assert len(rows) == 3 and len(rows[0]) == len(networks.COLUMNS)


def test_torch_copy_has_the_jax_parameters() -> None:
    """The PyTorch network holds the JAX parameters under the same names and gives the same
    loss (1-D: the audio network)."""
    pytest.importorskip("torch")
    net = SMOKE["audio_m5"]
    params, (x, y) = networks.init(net), networks.inputs(net)
    model = networks.torch_net(net, params)
    theirs = {n: p.detach().numpy() for n, p in model.named_parameters()}
    ours = networks.leaf_names(params)
    assert set(theirs) == set(ours)
    for n, a in ours.items():
        np.testing.assert_array_equal(networks.from_torch_layout(theirs[n]), a)
    _, _, loss, _ = networks.torch_thunks(net, params, x, y)
    want = jax.jit(lambda p: networks.loss_fn(net, networks.lax_conv, p, x, y))(params)
    assert abs(loss - float(want)) <= 1e-5 * abs(float(want))


def test_a_float64_replay_runs_the_float32_steps_lowerings(tune_dir: pathlib.Path) -> None:
    """`replay_picks` holds, under the float64 keys, the lowerings the float32 step runs
    (here stored picks other than the cost model's), a float64 step plans them, and with
    them the gradient is lax's float64 gradient to float64 rounding."""
    net = SMOKE["resnet18"]
    params, (x, y) = networks.init(net), networks.inputs(net)
    networks.fresh_tune_cache(tune_dir / "replay.json")
    with planner.recording() as calls:
        jax.make_jaxpr(jax.grad(lambda p: networks.loss_fn(net, networks.jconv_conv, p, x, y)))(
            params)
    picks = {}
    for spec, dtype, precision in dict.fromkeys(calls):
        names = planner.candidates(spec, dtype, precision, differentiated=True)
        model = planner.plan(spec, dtype, differentiated=True, tuned=False)
        pick = ([n for n in names if n != model] or names)[0]
        picks[_tune_cache.key(spec, dtype, False)] = {"forward": pick, "differentiated": pick}
    _tune_cache.store(picks)
    replay = networks.replay_picks(net, params, x, y, tuned=True)
    assert replay != networks.replay_picks(net, params, x, y, tuned=False)
    with jax.enable_x64(True), _tune_cache.overlay(replay):
        for spec, dtype, _ in calls:
            want = picks[_tune_cache.key(spec, dtype, False)]["differentiated"]
            assert replay[_tune_cache.key(spec, jnp.float64, False)]["differentiated"] == want
            assert planner.plan(spec, jnp.float64, differentiated=True) == want
    exact = networks.reference_grad(net, params, x, y)
    assert rel_err(networks.replayed_grad(net, params, x, y, tuned=True), exact) < 1e-12


def test_a_gradient_exact_in_float64_is_rounding_not_a_mismatch() -> None:
    """A float32 gradient far from float64 passes only where the same lowerings run in
    float64 give lax's float64 gradient, and the Markdown says which it was."""
    rec = {"network": "n", "rel_err": {"auto": {"logits": 0.0, "loss": 0.0, "grad": 1e-3}},
           "grad_err_f64": {"lax": 1e-6, "auto": 1e-3}}
    assert networks.mismatches(rec) == ["n auto"]
    rec["grad_err_f64_replay"] = {"auto": 1e-14}
    assert networks.mismatches(rec) == []
    rec["grad_err_f64_replay"] = {"auto": 1e-6}
    assert networks.mismatches(rec) == ["n auto"]
    rec.update({"input": "i", "params_m": 1.0, "convs": [], "compile_s": {"lax": 1.0},
                **{p: {"ms": {"lax": 1.0, "auto": 1.0}, "temp_mb": {"lax": 1.0, "auto": 1.0}}
                   for p in ("forward", "train")}})
    meta = {"machine": "m", "jax": "j", "reps": 1, "budget_s": 1.0, "matmul_gflops": 1.0}
    for replay, verdict in ((1e-14, "float32 rounding"), (1e-6, "a mismatch")):
        rec["grad_err_f64_replay"] = {"auto": replay}
        line = networks.markdown(meta, [rec]).splitlines()[-1]
        assert line.startswith("n auto: its float32 gradient is 1.0e-03") and verdict in line
