"""benchmarks/run.py's lowerings timed beside auto (``--also``): each one's times and error
against lax where it applies, "-" in the table where it does not, and names checked."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import run


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
            "summary": {"fwd_geomean": 1.0, "fwd_bwd_geomean": 1.0, "fwd_le_1": 0,
                        "fwd_bwd_le_1_2": 0}}
    rows = run.markdown(meta, recs).splitlines()
    head = next(r for r in rows if r.startswith("| case"))
    assert head.endswith("| pallas fwd ratio | pallas f+b ratio |")
    dense_row = next(r for r in rows if r.startswith("| dense"))
    fwd_ratio = recs[0]["fwd"]["also"]["pallas"]["ratio"]
    assert dense_row.split(" | ")[-2] == f"{fwd_ratio:.2f}"
    assert next(r for r in rows if r.startswith("| grouped")).endswith("| - | - |")


def test_also_names_must_be_lowerings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.main(["--also", "pallas,nope", "--out", "/nonexistent/never"])
    assert "--also=pallas,nope: 'nope' is not a lowering" in capsys.readouterr().err
