"""Refit the planner's shared rates (`jconv.strategies._model.Rates`) from a benchmark sweep.

`benchmarks/run.py` times every lowering on every case (the per-lowering sweep) and writes
them to ``benchmarks/results/<name>.json``. This script searches a multiplicative grid
around the rates in force for the `Rates` under which the planner's pick (least predicted
forward, and least predicted forward plus backward, among the lowerings the sweep timed) is
within ``--tolerance`` of the fastest measured lowering in the most cases, and prints the
count before and after. ``--out FILE`` writes the best rates as JSON: point
``JCONV_RATES=FILE`` at it (or paste them into `RATES`) to use them.

    python benchmarks/run.py --out mymachine      # the sweep, ~4 min on 2 cores
    python benchmarks/fit_rates.py benchmarks/results/mymachine.json --out rates.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import pathlib
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from run import CASES

from jconv.strategies import STRATEGIES, _model

STEPS = (0.5, 0.71, 1.0, 1.41, 2.0)
"""Factors tried on each rate around the rates in force."""
MODES = (("fwd", "forward"), ("fwd+bwd", "total"))


def score(sweep: list[dict[str, Any]], rates: _model.Rates, tolerance: float) -> int:
    """Cases x modes whose predicted pick measured within `tolerance` of the best."""
    _model.set_rates(rates)
    specs = {c.name: c.spec() for c in CASES}
    good = 0
    for rec in sweep:
        spec = specs.get(rec["case"])
        if spec is None:
            continue
        for mode, attr in MODES:
            measured = rec[mode].get("per_strategy_ms") or {}
            if not measured:
                continue
            pick = min(measured, key=lambda n: getattr(STRATEGIES[n].predict(spec), attr))
            good += measured[pick] <= (1 + tolerance) * min(measured.values())
    return good


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", nargs="?", default="benchmarks/results/latest.json",
                    help="a benchmarks/run.py result with the per-lowering sweep")
    ap.add_argument("--tolerance", type=float, default=0.10,
                    help="a pick within this fraction of the fastest counts as good")
    ap.add_argument("--out", default=None, help="write the best rates to this JSON file")
    args = ap.parse_args(argv)
    try:
        sweep = json.loads(pathlib.Path(args.sweep).read_text())["cases"]
    except (OSError, ValueError, KeyError) as e:
        ap.error(f"cannot read a sweep from {args.sweep!r}: {e}")
    for mod in STRATEGIES.values():  # the costs do not depend on the rates: compute each once
        mod.cost = functools.lru_cache(maxsize=None)(mod.cost)  # type: ignore[misc]
    base = _model.rates()
    total = sum(bool(rec[m].get("per_strategy_ms")) for rec in sweep for m, _ in MODES)
    if not total:
        ap.error(f"{args.sweep!r} has no per-lowering sweep (run benchmarks/run.py without "
                 "--no-sweep or --quick)")
    start = score(sweep, base, args.tolerance)
    best, best_score = base, start
    fields = [f.name for f in dataclasses.fields(base)]
    for factors in itertools.product(STEPS, repeat=len(fields)):
        values = {f: getattr(base, f) * k for f, k in zip(fields, factors, strict=True)}
        values["gemm_knee"] = max(1, round(values["gemm_knee"]))
        candidate = _model.Rates(**values)
        s = score(sweep, candidate, args.tolerance)
        if s > best_score:
            best, best_score = candidate, s
    _model.set_rates(None)
    print(f"picks within {args.tolerance:.0%} of the fastest: {start}/{total} with the rates "
          f"in force, {best_score}/{total} with")
    print(json.dumps(dataclasses.asdict(best), indent=1))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(dataclasses.asdict(best), indent=1) + "\n")
        print(f"wrote {args.out}; use it with JCONV_RATES={args.out}")


if __name__ == "__main__":
    main()
