"""benchmarks/run.py's lowerings timed beside auto (``--also``): each one's times and error
against lax where it applies, "-" in the table where it does not, and names checked."""

from __future__ import annotations

import math
import pathlib
import sys
from typing import Any

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import run

import jconv


def test_also_times_a_lowering_where_it_applies() -> None:
    """A dense case gets pallas' (interpreted here) forward and forward+backward, at lax's
    values; a grouped one, which pallas refuses, gets none, and its table cells read "-"."""
    dense = run.Case("dense", (1, 6, 6, 4), (3, 3), 5)
    grouped = run.Case("grouped", (1, 6, 6, 4), (3, 3), 4, groups=2)
    recs = [run.bench_case(c, 3, False, 1e9, 1, torch_col=False, also=("pallas",))
            for c in (dense, grouped)]
    for mode in ("fwd", "fwd+bwd"):
        got = recs[0][mode]["also"]["pallas"]
        assert got["ms"] > 0 and got["native_ms"] > 0
        assert got["ratio"] == pytest.approx(got["ms"] / got["native_ms"])
        assert got["rel_err"] < 1e-5
        assert "also" not in recs[1][mode]
    meta = {"machine": "m", "jax": "j", "matmul_gflops": 1.0, "matmul_n": 8, "reps": 3,
            "inner": 1, "batch_scale": 1,
            "summary": {"fwd_geomean": 1.0, "fwd_bwd_geomean": 1.0, "fwd_geomean_min": 1.0,
                        "fwd_bwd_geomean_min": 1.0, "fwd_le_1": 0, "fwd_bwd_le_1_2": 0}}
    rows = run.markdown(meta, recs).splitlines()
    head = next(r for r in rows if r.startswith("| case"))
    assert head.endswith("| pallas fwd ratio | pallas f+b ratio |")
    dense_row = next(r for r in rows if r.startswith("| dense"))
    fwd_ratio = recs[0]["fwd"]["also"]["pallas"]["ratio"]
    assert dense_row.split(" | ")[-2] == f"{fwd_ratio:.2f}"
    assert next(r for r in rows if r.startswith("| grouped")).endswith("| - | - |")
    f = recs[0]["fwd"]
    assert dense_row.split(" | ")[4] == f"{f['ratio']:.2f} ({f['ratio_min']:.2f})"


def test_the_sweep_keeps_each_lowerings_median_and_fastest_sample() -> None:
    """Every lowering swept has its median and its fastest sample (never above the median);
    pick/best compares the fastest samples among the lowerings the call's class allows."""
    case = run.Case("dense", (1, 6, 6, 4), (3, 3), 5)
    rec = run.bench_case(case, 3, True, 1e9, 1, torch_col=False)
    for mode in ("fwd", "fwd+bwd"):
        r = rec[mode]
        median, fastest = r["per_strategy_ms"], r["per_strategy_min_ms"]
        assert set(median) == set(fastest) and len(fastest) > 2
        assert all(0 < fastest[n] <= median[n] for n in median)
        assert 0 < r["ratio_min"] and r["best_strategy"] in fastest
        assert fastest[r["best_strategy"]] == min(
            fastest[n] for n in fastest if n in jconv.planner.candidates(case.spec(), "float32",
                                                                          opt_in=True))
    assert rec["fwd"]["chosen_over_best"] == pytest.approx(
        rec["fwd"]["per_strategy_min_ms"][rec["strategy"]]
        / rec["fwd"]["per_strategy_min_ms"][rec["fwd"]["best_strategy"]])


def test_also_names_must_be_lowerings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.main(["--also", "pallas,nope", "--out", "/nonexistent/never"])
    assert "--also=pallas,nope: 'nope' is not a lowering" in capsys.readouterr().err


def _recording(ran: list[str]) -> Any:
    """A stand-in for `run.bench_case` that records the case's name and times nothing."""
    def bench_case(case: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        ran.append(case.name)
        return {"case": case.name, "strategy": "s", "backward": "s", "gflop": 1.0,
                **{m: {"ratio": 1.0, "ratio_min": 1.0, "rel_err": 0.0, "jconv_ms": 1.0,
                       "native_ms": 1.0, "gflops": 1.0, "pct_matmul": 1.0, "native_gflops": 1.0}
                   for m in ("fwd", "fwd+bwd")}}
    return bench_case


def test_only_takes_several_names_and_refuses_none_matching(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--only a,b`` runs the cases whose names contain either; a list matching no case is
    refused before anything is timed."""
    ran: list[str] = []
    monkeypatch.setattr(run, "matmul_flops", lambda *a: 1e9)
    monkeypatch.setattr(run, "bench_case", _recording(ran))
    run.main(["--only", "1-D k=3 ,3-D", "--no-sweep", "--out", str(tmp_path / "r")])
    assert ran == ["1-D k=3 C=64 L=4096", "3-D 3x3x3 C=32 16^3"]
    assert (tmp_path / "r.json").exists()
    ran.clear()
    with pytest.raises(SystemExit):
        run.main(["--only", "nope,nada", "--out", str(tmp_path / "never")])
    assert "--only=nope,nada: no case's name contains any of them" in capsys.readouterr().err
    assert ran == [] and not (tmp_path / "never.json").exists()


def test_cases_users_runs_the_layers_users_size(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--cases users`` times the users' layers (with ``--only`` among them, not the
    suite's), and `fit_rates` reads a sweep of them at their shapes."""
    import fit_rates

    ran: list[str] = []
    monkeypatch.setattr(run, "matmul_flops", lambda *a: 1e9)
    monkeypatch.setattr(run, "bench_case", _recording(ran))
    run.main(["--cases", "users", "--only", "narrow,3-D", "--no-sweep",
              "--out", str(tmp_path / "u")])
    assert ran == ["narrow 3x3 8 330^2 b1", "narrow 3x3 16 128^2 b2"]
    spec = fit_rates.case_specs({"batch_scale": 1})["CIFAR 3x3/2 32->64 b128"]
    assert spec.lhs_shape == (128, 32, 32, 32) and spec.window_strides == (2, 2)
    names = [c.name for cases in run.CASE_SETS.values() for c in cases]
    assert len(names) == len(set(names))


def test_fit_rates_reads_a_suite_swept_in_parts(tmp_path: pathlib.Path) -> None:
    """Sweeps of one platform and batch scale are fitted as one (their cases joined); sweeps
    of different batch scales, or an unreadable file, are refused naming the files."""
    import json

    import fit_rates

    meta = {"machine": "x86, jax device cpu: cpu", "batch_scale": 1}
    for name, case in (("a", "dense 3x3 C=16"), ("b", "3-D 3x3x3 C=32 16^3")):
        (tmp_path / f"{name}.json").write_text(json.dumps({"meta": meta, "cases": [
            {"case": case, "fwd": {}, "fwd+bwd": {}}]}))
    (tmp_path / "c.json").write_text(json.dumps({"meta": {**meta, "batch_scale": 16},
                                                 "cases": []}))
    cases, got = fit_rates.read_sweeps([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert [c["case"] for c in cases] == ["dense 3x3 C=16", "3-D 3x3x3 C=32 16^3"]
    assert got == meta
    with pytest.raises(ValueError, match="different platforms or batch scales"):
        fit_rates.read_sweeps([str(tmp_path / "a.json"), str(tmp_path / "c.json")])
    with pytest.raises(ValueError, match="cannot read a sweep from"):
        fit_rates.read_sweeps([str(tmp_path / "missing.json")])


def test_fit_rates_recovers_the_rates_that_rank_a_sweep(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """A sweep timed as rates ``truth`` predict (GEMMs reaching their peak at 8x the CPU
    table's depth and width, beyond one grid's reach) ranks six cases' lowerings otherwise
    than the table: three rounds of the fit rank every case as the sweep does, one does
    not, and a sweep the table already ranks leaves the table as it is. Cases are read at
    the sweep's batch scale, the platform off its machine line."""
    import functools

    import fit_rates

    from jconv import planner
    from jconv.strategies import STRATEGIES, _model

    for mod in STRATEGIES.values():
        monkeypatch.setattr(mod, "cost", functools.lru_cache(maxsize=None)(mod.cost))
    meta = {"machine": "x86, jax device gpu: H", "batch_scale": 2}
    assert fit_rates.platform(meta) == "gpu"
    assert fit_rates.platform({"machine": "old"}) == "cpu"
    specs = fit_rates.case_specs(meta)
    assert specs["dense 3x3 C=64"].batch == 16
    # an accelerator's table (no first touch, which the fit keeps): five rates to search
    base = _model.Rates(**{**vars(_model.RATES["cpu"]), "first_touch_bytes_per_s": math.inf})
    truth = _model.Rates(**{**vars(base), "gemm_knee": 8 * base.gemm_knee})
    names = ("CIFAR 3x3/2 16->32 b128", "3-D 3x3x3 C=32 16^3", "dense 3x3 C=16",
             "grouped g=4 C=128", "1-D k=3 C=64 L=4096", "dense 3x3 C=64")

    def timed_as(rates: _model.Rates) -> list[dict[str, Any]]:
        """The sweep of `names` whose forward times are those `rates` predict."""
        _model.set_rates(rates)
        try:
            return [{"case": c, "fwd+bwd": {}, "fwd": {"per_strategy_ms": {
                n: 1e3 * planner.predict(n, specs[c]).forward for n, m in STRATEGIES.items()
                if m.AUTO and m.applicable(specs[c], "float32") is None}}} for c in names]
        finally:
            _model.set_rates(None)

    sweep = timed_as(truth)
    assert fit_rates.score(sweep, specs, base, 0.0) == 0
    one = fit_rates.fit(sweep, specs, base, 0.0, rounds=1)
    assert fit_rates.score(sweep, specs, one, 0.0) < len(names)
    fitted = fit_rates.fit(sweep, specs, base, 0.0, rounds=3)
    assert fit_rates.score(sweep, specs, fitted, 0.0) == len(names)
    assert math.isinf(fitted.first_touch_bytes_per_s)
    assert fit_rates.fit(timed_as(base), specs, base, 0.0, rounds=1) == base
    _model.set_rates(None)


def test_fit_rates_starts_an_accelerator_from_the_rates_it_plans_with(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep from a platform without a table (a TPU's) is fitted from what it plans with:
    the CPU's rates without their first touch (its runtime allocates from a pool), which the
    fit and the written rates keep infinite; the GPU's table has none either."""
    import json

    import fit_rates

    from jconv.strategies import STRATEGIES, _model

    for mod in STRATEGIES.values():  # main caches each lowering's cost: restored after
        monkeypatch.setattr(mod, "cost", mod.cost)

    assert _model.platform_rates("cpu") == _model.RATES["cpu"]
    assert "tpu" not in _model.RATES and math.isinf(_model.RATES["gpu"].first_touch_bytes_per_s)
    assert math.isinf(_model.platform_rates("tpu").first_touch_bytes_per_s)
    meta = {"machine": "x86, jax device tpu: T", "batch_scale": 1}
    sweep = {"meta": meta, "cases": [{"case": "dense 3x3 C=16", "fwd+bwd": {}, "fwd": {
        "per_strategy_ms": {"scatter": 1.0, "winograd": 2.0, "shift": 3.0}}}]}
    (tmp_path / "tpu.json").write_text(json.dumps(sweep))
    fit_rates.main([str(tmp_path / "tpu.json"), "--rounds", "1",
                    "--out", str(tmp_path / "rates.json")])
    assert "without first touch" in capsys.readouterr().out
    fitted = _model.Rates(**json.loads((tmp_path / "rates.json").read_text()))
    assert math.isinf(fitted.first_touch_bytes_per_s)
