"""What bounds the layers where jconv is slower than lax: the GEMM of each, on ready operands.

    python benchmarks/limits.py                # the default cases, ~2 minutes on 2 cores
    python benchmarks/limits.py --only "C=16"  # cases whose name contains one of these

Every jconv lowering hands XLA's dot an operand it has written to memory first (patches,
shifted slices, per-tap products, Winograd points), and its gradients do the same. For each
case this times, alternately in one process (fastest samples): lax's convolution; the same
contraction as one GEMM on patches built beforehand, ``(N * out, taps * C) @ (taps * C,
F)``; building those patches alone; and jconv (``auto``). For forward+backward: lax's layer
step (`run.fwd_bwd`) against jconv's, and against the step's three GEMMs on operands built
beforehand: values; input gradient ``(N * in, R * F) @ (R * F, C)``, ``R =
prod(ceil(window / stride))`` the taps that reach an input position; kernel gradient
``(taps * C, N * out) @ (N * out, F)``. Over one input channel (a network's first layer,
whose input gradient no training step takes) the step is not timed.

Where the GEMM alone takes about lax's time, lax packs its windows in cache inside its GEMM,
and a lowering that writes its operand first cannot match it: the gap is the copy, which no
cost model or tuning closes. Winograd does fewer multiplies and can pass that bound where its
GEMMs are deep; at 16 channels they are 16 deep. The values GEMM and the kernel-gradient GEMM
are checked against lax's output and kernel gradient, so what is timed is the layer's
contraction. Writes ``benchmarks/results/limits.{json,md}`` (``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import CASE_SETS, RESULTS, Case, cpu_name, fwd_bwd, matmul_flops, rel_err, samples

import jconv
from jconv import ConvSpec
from jconv.planner import plan

M5_STEM = Case("M5 stem 80/4 1->128 L=16000", (8, 16000, 1), (80,), 128, stride=4,
               padding="VALID")
"""The 1-D audio network's first layer (`networks.py`): 80 taps at stride 4 over one channel."""
DEFAULT_CASES = ("dense 3x3 C=16", "dense 3x3 C=64", "1-D k=3 C=64", "1-D k=15", "1-D k=31",
                 "CIFAR 3x3 16 32^2", "U-Net 3x3 16", "narrow 3x3 16", M5_STEM.name)
"""The suite's and the users' layers where jconv's forward or step was slower than lax's in
a committed run, dense C = 64 (where it is faster) for contrast, and M5's stem."""


def all_cases() -> list[Case]:
    """The suite's and the users' cases (`run.CASE_SETS`) and `M5_STEM`."""
    return [*CASE_SETS["suite"], *CASE_SETS["users"], M5_STEM]


def patches(spec: ConvSpec, x: jax.Array) -> jax.Array:
    """``(N, *in, C) -> (N * prod(out), taps * C)``: each output's window, tap-major (the
    rows of ``w.reshape(taps * C, F)``), for channels-last input, no lhs dilation."""
    xp = jnp.pad(x, ((0, 0), *spec.padding, (0, 0)))
    cols = []
    for k in itertools.product(*(range(n) for n in spec.window)):
        idx = tuple(slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in zip(
            k, spec.rhs_dilation, spec.out_spatial, spec.window_strides, strict=True))
        cols.append(xp[(slice(None), *idx, slice(None))])
    return jnp.concatenate(cols, axis=-1).reshape(-1, spec.taps * spec.in_features)


def kernel_gemm(p: jax.Array, dy: jax.Array) -> jax.Array:
    """The kernel gradient's GEMM ``p^T @ dy``: ``(M, K), (M, F) -> (K, F)``."""
    return jnp.einsum("mk,mf->kf", p, dy)


def step_gemms(p: jax.Array, w2: jax.Array, q: jax.Array, v: jax.Array, dy: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A layer step's three GEMMs: values ``p @ w2``, input gradient ``q @ v``, kernel
    gradient (`kernel_gemm`)."""
    return p @ w2, q @ v, kernel_gemm(p, dy)


def _check(case: Case) -> None:
    if case.groups != 1 or case.lhs_dilation != 1:
        raise ValueError(f"case {case.name!r}: limits.py times dense convolutions without lhs "
                         f"dilation (groups={case.groups}, lhs_dilation={case.lhs_dilation})")


def measure(case: Case, reps: int, budget_s: float = 6.0) -> dict[str, Any]:
    """`case`'s times (fastest samples, ms; ``step_ms`` None over one input channel), the
    GEMMs' errors against lax, and the forward programs' compiled temporaries (bytes)."""
    _check(case)
    spec = case.spec()
    rng = np.random.default_rng(0)

    def normal(*shape: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))

    x, w = normal(*case.x), normal(*case.w_shape())
    kw = case.lax_args()

    def lax_fn(a: jax.Array, b: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(a, b, **kw)

    def jconv_fn(a: jax.Array, b: jax.Array) -> jax.Array:
        return jconv.conv_general_dilated(a, b, **kw)

    lax_conv, auto_conv, lax_step, auto_step = (
        jax.jit(lax_fn), jax.jit(jconv_fn), fwd_bwd(lax_fn), fwd_bwd(jconv_fn))
    build = jax.jit(lambda a: patches(spec, a))
    gemm, gemms = jax.jit(jnp.matmul), jax.jit(step_gemms)
    y = lax_conv(x, w)
    t = normal(*y.shape)
    p, w2, dy = build(x), w.reshape(-1, case.f), (y - t).reshape(-1, case.f)
    fwd = samples([lambda: lax_conv(x, w), lambda: gemm(p, w2), lambda: build(x),
                   lambda: auto_conv(x, w)], reps, budget_s)
    step_ms = None
    if spec.in_features > 1:
        reach = math.prod(-(-k // s) for k, s in zip(spec.window, spec.window_strides,
                                                     strict=True))
        q = normal(spec.batch * math.prod(spec.in_spatial), reach * case.f)
        v = normal(reach * case.f, spec.in_features)
        step = samples([lambda: lax_step(x, w, t), lambda: gemms(p, w2, q, v, dy),
                        lambda: auto_step(x, w, t)], reps, budget_s)
        step_ms = {k: 1e3 * min(s) for k, s in zip(("lax", "gemms", "auto"), step,
                                                  strict=True)}

    def temps(fn: Any) -> int:
        return int(fn.lower(x, w).compile().memory_analysis().temp_size_in_bytes)

    return {
        "case": case.name,
        "pick": plan(spec, jnp.float32),
        "gemm_shape": [*p.shape, case.f],
        "gflop": 2 * spec.macs / 1e9,
        "fwd_ms": {k: 1e3 * min(s) for k, s in zip(("lax", "gemm", "patches", "auto"), fwd,
                                                   strict=True)},
        "step_ms": step_ms,
        "gemm_rel_err": rel_err(gemm(p, w2).reshape(y.shape), y),
        "kernel_gemm_rel_err": rel_err(kernel_gemm(p, dy).reshape(w.shape),
                                       lax_step(x, w, t)[2]),
        "temp_bytes": {"lax": temps(lax_conv), "auto": temps(auto_conv)},
    }


def markdown(meta: dict[str, Any], recs: list[dict[str, Any]]) -> str:
    """The results as a Markdown table: milliseconds, and in brackets over lax's."""
    lines = [
        f"Machine: {meta['machine']}; jax {meta['jax']}; float32; matmul "
        f"{meta['matmul_gflops']:.0f} GFLOP/s; fastest of up to {meta['reps']} alternating "
        "samples, ms (in brackets: over lax's). GEMM: the forward's contraction on patches "
        "built beforehand; step GEMMs: values, input and kernel gradient on operands built "
        "beforehand (\"-\": one input channel, whose input gradient no training step takes); "
        "temps: the forward's compiled temporaries, MB.",
        "",
        "| case | GEMM (M, K, F) | lax fwd | GEMM alone | patches alone | jconv fwd (pick) "
        "| lax step | step GEMMs alone | jconv step | temps lax / jconv |",
        "|" + "---|" * 10,
    ]
    for r in recs:
        f, s, tb = r["fwd_ms"], r["step_ms"], r["temp_bytes"]

        def cell(ms: float, base: float) -> str:
            return f"{ms:.2f} ({ms / base:.2f})"

        steps = ([f"{s['lax']:.2f}", cell(s["gemms"], s["lax"]), cell(s["auto"], s["lax"])]
                 if s else ["-"] * 3)  # one input channel: no step timed

        lines.append("| " + " | ".join([
            r["case"], "x".join(str(n) for n in r["gemm_shape"]), f"{f['lax']:.2f}",
            cell(f["gemm"], f["lax"]), cell(f["patches"], f["lax"]),
            f"{cell(f['auto'], f['lax'])} {r['pick']}", *steps,
            f"{tb['lax'] / 1e6:.1f} / {tb['auto'] / 1e6:.1f}"]) + " |")
    worst = max(max(r["gemm_rel_err"], r["kernel_gemm_rel_err"]) for r in recs)
    lines += ["", f"The GEMMs' values and kernel gradients agree with lax's to {worst:.1e}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(DEFAULT_CASES),
                    help="cases whose name contains one of these (comma-separated; default: "
                         "the slower rows, dense C = 64 and M5's stem)")
    ap.add_argument("--reps", type=int, default=11, help="alternating samples per timing")
    ap.add_argument("--out", default="limits",
                    help="basename in benchmarks/results/ (an absolute path: written there)")
    a = ap.parse_args(argv)
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    cases = [c for c in all_cases() if any(s in c.name for s in only)]
    if not cases:
        raise SystemExit(f"--only {a.only!r} matches no case")
    meta = {"machine": f"{cpu_name()} ({platform.machine()}), jax device "
                       f"{jax.devices()[0].platform}",
            "jax": jax.__version__, "reps": a.reps,
            "matmul_gflops": matmul_flops(5, 2048, 1) / 1e9}
    recs = []
    for case in cases:
        recs.append(measure(case, a.reps))
        f = recs[-1]["fwd_ms"]
        print(f"{case.name}: lax {f['lax']:.2f} ms, GEMM alone {f['gemm']:.2f}, "
              f"jconv {f['auto']:.2f}", flush=True)
    out = Path(a.out) if Path(a.out).is_absolute() else RESULTS / a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "cases": recs}, indent=1))
    md = markdown(meta, recs)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
