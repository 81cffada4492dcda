"""Refit the planner's shared rates (`jconv.strategies._model.Rates`) from a benchmark sweep.

`benchmarks/run.py` times every lowering on every case (the per-lowering sweep) and writes
them to ``benchmarks/results/<name>.json``. This script searches multiplicative grids
(``--rounds`` of them, each around the last one's best) from the rates of the platform the
sweep ran on (its machine line; `_model.platform_rates`) for the `Rates` under
which the planner's pick is within ``--tolerance`` of the fastest measured lowering in the
most cases, and prints the count before and after. The pick is the planner's untuned one
(`jconv.planner.plan`), compared with the lowerings it could have picked (their fastest
samples, or medians in sweeps that lack them); cases are read at
the sweep's ``--batch-scale``. ``--out FILE`` writes the best rates as JSON: point
``JCONV_RATES=FILE`` at it (or paste them into `RATES`) to use them.

    python benchmarks/run.py --out mymachine      # the sweep, ~4 min on 2 cores
    python benchmarks/fit_rates.py benchmarks/results/mymachine.json --out rates.json

A suite swept in parts (``run.py --only dense --out a``, ``--only 1-D,3-D --out b``) is fitted
as one: ``fit_rates.py a.json b.json``; so are the suite and the users' layers
(``run.py --cases users``): ``fit_rates.py latest.json users.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import pathlib
import re
import sys
from typing import Any

import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from run import CASE_SETS

from jconv import ConvSpec, planner
from jconv.strategies import STRATEGIES, _model

STEPS = (0.5, 0.71, 1.0, 1.41, 2.0)
"""Factors tried on each rate around the rates in force."""
MODES = (("fwd", False), ("fwd+bwd", True))


def platform(meta: dict[str, Any]) -> str:
    """The jax platform a sweep ran on, read off its machine line ("jax device gpu: ...")."""
    found = re.search(r"jax device (\w+):", meta.get("machine", ""))
    return found.group(1) if found else "cpu"


def case_specs(meta: dict[str, Any]) -> dict[str, ConvSpec]:
    """The sweep's convolutions by case name (the suite's and the users' cases, `CASE_SETS`),
    with the batch scaled as it ran."""
    scale = meta.get("batch_scale", 1)
    return {c.name: dataclasses.replace(c, x=(c.x[0] * scale, *c.x[1:])).spec()
            for cases in CASE_SETS.values() for c in cases}


def read_sweeps(paths: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The cases of every sweep in `paths` and the first one's meta: sweeps of one
    platform at one batch scale (a suite run in parts, ``--only``), else ValueError."""
    cases: list[dict[str, Any]] = []
    metas: list[dict[str, Any]] = []
    for path in paths:
        try:
            result = json.loads(pathlib.Path(path).read_text())
            cases += result["cases"]
            metas.append(result["meta"])
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot read a sweep from {path!r}: {e}") from e
    kinds = {(platform(m), m.get("batch_scale", 1)) for m in metas}
    if len(kinds) > 1:
        raise ValueError(f"sweeps {paths} ran on different platforms or batch scales "
                         f"({sorted(kinds)}): fit each platform and scale on its own")
    return cases, metas[0]


def score(sweep: list[dict[str, Any]], specs: dict[str, ConvSpec], rates: _model.Rates,
          tolerance: float) -> int:
    """Cases x modes where the planner's untuned pick under `rates` (`jconv.planner.plan`)
    measured within `tolerance` of the fastest lowering it could have picked."""
    _model.set_rates(rates)
    good = 0
    for rec in sweep:
        spec = specs.get(rec["case"])
        if spec is None:
            continue
        for mode, differentiated in MODES:
            options = planner.candidates(spec, jnp.float32, differentiated=differentiated)
            timed = rec[mode].get("per_strategy_min_ms") or rec[mode].get("per_strategy_ms")
            measured = {n: ms for n, ms in (timed or {}).items() if n in options}
            if not measured:
                continue
            pick = planner.plan(spec, jnp.float32, differentiated=differentiated, tuned=False)
            good += pick in measured and measured[pick] <= (1 + tolerance) * min(
                measured.values())
    return good


def fit(sweep: list[dict[str, Any]], specs: dict[str, ConvSpec], base: _model.Rates,
        tolerance: float, rounds: int) -> _model.Rates:
    """The rates with the best `score`: `rounds` multiplicative grid searches (`STEPS` on
    every field), each centred on the last one's best; among equal scores the rates
    nearest `base` (least summed ``|log|`` of the ratios), so that a fit moves only the
    rates the sweep tells apart. An infinite rate (no first touch on the platform) stays."""
    fields = [f.name for f in dataclasses.fields(base) if math.isfinite(getattr(base, f.name))]

    def distance(r: _model.Rates) -> float:
        return sum(abs(math.log(getattr(r, f) / getattr(base, f))) for f in fields)

    best, key = base, (score(sweep, specs, base, tolerance), 0.0)
    for _ in range(rounds):
        centre = best
        for factors in itertools.product(STEPS, repeat=len(fields)):
            values = {**vars(centre),
                      **{f: getattr(centre, f) * k for f, k in zip(fields, factors, strict=True)}}
            values["gemm_knee"] = max(1, round(values["gemm_knee"]))
            candidate = _model.Rates(**values)
            k = (score(sweep, specs, candidate, tolerance), -distance(candidate))
            if k > key:
                best, key = candidate, k
        if best == centre:
            break
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", nargs="*", default=["benchmarks/results/latest.json"],
                    help="benchmarks/run.py results with the per-lowering sweep (several: "
                         "one suite run in parts, on one platform at one batch scale)")
    ap.add_argument("--tolerance", type=float, default=0.10,
                    help="a pick within this fraction of the fastest counts as good")
    ap.add_argument("--out", default=None, help="write the best rates to this JSON file")
    ap.add_argument("--rounds", type=int, default=3,
                    help="grid searches, each around the best rates of the one before")
    args = ap.parse_args(argv)
    try:
        sweep, meta = read_sweeps(args.sweep)
    except ValueError as e:
        ap.error(str(e))
    for mod in STRATEGIES.values():  # the costs do not depend on the rates: compute each once
        mod.cost = functools.lru_cache(maxsize=None)(mod.cost)  # type: ignore[misc]
    plat = platform(meta)
    base = _model.platform_rates(plat)  # a platform not fitted yet: the CPU's, no first touch
    table = f"RATES[{plat!r}]" if plat in _model.RATES else "the CPU's rates without first touch"
    specs = case_specs(meta)
    total = sum(bool(rec[m].get("per_strategy_ms")) for rec in sweep for m, _ in MODES)
    if not total:
        ap.error(f"{args.sweep} has no per-lowering sweep (run benchmarks/run.py without "
                 "--no-sweep or --quick)")
    start = score(sweep, specs, base, args.tolerance)
    best = fit(sweep, specs, base, args.tolerance, args.rounds)
    best_score = score(sweep, specs, best, args.tolerance)
    _model.set_rates(None)
    print(f"{plat} sweep: picks within {args.tolerance:.0%} of the fastest: {start}/{total} "
          f"with {table}, {best_score}/{total} with")
    print(json.dumps(dataclasses.asdict(best), indent=1))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(dataclasses.asdict(best), indent=1) + "\n")
        print(f"wrote {args.out}; use it with JCONV_RATES={args.out}")


if __name__ == "__main__":
    main()
