"""jconv benchmark suite: jconv (planner's choice) against `jax.lax.conv_general_dilated`.

    python benchmarks/run.py            # full suite, writes benchmarks/results/latest.{json,md}
    python benchmarks/run.py --quick    # fewer repetitions, no per-lowering sweep
    python benchmarks/run.py --cases users   # layers as users size them, results/users.*

For every case, forward and forward+backward (``y = conv(x, w)`` and the pullback of the
squared error's cotangent ``y - t`` to input and kernel, as a layer does in training) are
jitted, warmed up, then timed alternately with the native convolution in one process; the
reported ratio is median(jconv) / median(native), and in brackets fastest(jconv) /
fastest(native), which moves far less between runs on a busy machine. GFLOP/s use the dense
count ``2 * MACs`` (divided by the lhs dilation's phases for transposed convolutions; x3 for
forward+backward); "% mm" is that rate over the machine's measured float32 matmul rate.
Unless --quick or --no-sweep, every lowering the planner considers is timed as well
(alternately among themselves), forward and, for those within 3x of the best forward,
forward+backward: "pick/best" is the planner's forward choice over the fastest lowering
measured that the call's accuracy class allows, each by its fastest sample (what
`jconv.tune` times and may store), and for forward+backward jconv's "auto" (which,
differentiated, runs the backward pick: "fwd/grad" in the "lowering" column) timed in the
same group over the fastest such lowering. Normwise-class lowerings (`dft`), which the
default policy runs only when speed is asked for, are timed beside them and listed under the
table where faster. Long timings use fewer repetitions (at least 3). Every output timed is
compared with lax's (``rel_err``).

On an accelerator each timing sample dispatches ``--inner`` calls and waits for the last,
and ``--batch-scale`` enlarges the batches so that the device, not the dispatch, is timed.
On the CPU backend a PyTorch CPU column is added when torch is importable; torch is timed
apart from jconv and lax, with OpenMP threads that sleep when idle
(``OMP_WAIT_POLICY=PASSIVE``), so that its spinning workers do not steal the cores from the
timings that follow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jconv
from jconv import ConvSpec
from jconv.planner import plan
from jconv.strategies import STRATEGIES

RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class Case:
    """One convolution: NHWC-family input shape, kernel (*window, Cin/groups, F), options."""

    name: str
    x: tuple[int, ...]
    k: tuple[int, ...]
    f: int
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    lhs_dilation: int = 1
    padding: Any = "SAME"

    @property
    def ns(self) -> int:
        return len(self.k)

    def lax_args(self) -> dict[str, Any]:
        sp = "DHW"[-self.ns:] if self.ns > 1 else "W"
        pad = self.padding
        if self.lhs_dilation > 1:  # transposed conv, stride 2: output = 2 * input
            pad = tuple(((k - 1) // 2 + 1, (k - 1) // 2) for k in self.k)
        return dict(
            window_strides=(self.stride,) * self.ns, padding=pad,
            lhs_dilation=(self.lhs_dilation,) * self.ns, rhs_dilation=(self.dilation,) * self.ns,
            dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
            feature_group_count=self.groups,
        )

    def w_shape(self) -> tuple[int, ...]:
        return (*self.k, self.x[-1] // self.groups, self.f)

    def spec(self) -> ConvSpec:
        return ConvSpec.from_lax(self.x, self.w_shape(), **self.lax_args())


CASES = [
    Case("dense 3x3 C=16", (8, 56, 56, 16), (3, 3), 16),
    Case("dense 3x3 C=64", (8, 56, 56, 64), (3, 3), 64),
    Case("dense 3x3 C=128", (8, 28, 28, 128), (3, 3), 128),
    Case("dense 3x3 C=256", (8, 14, 14, 256), (3, 3), 256),
    Case("1x1 128->256", (8, 28, 28, 128), (1, 1), 256),
    Case("stem 7x7/2 C_in=3", (8, 112, 112, 3), (7, 7), 32, stride=2),
    Case("depthwise 3x3 C=128", (8, 56, 56, 128), (3, 3), 128, groups=128),
    Case("depthwise 5x5 C=256", (8, 28, 28, 256), (5, 5), 256, groups=256),
    Case("grouped g=4 C=128", (8, 28, 28, 128), (3, 3), 128, groups=4),
    Case("grouped g=32 C=256", (8, 28, 28, 256), (3, 3), 256, groups=32),
    Case("dilated d=2 C=64", (8, 28, 28, 64), (3, 3), 64, dilation=2),
    Case("dilated d=4 C=64", (8, 28, 28, 64), (3, 3), 64, dilation=4),
    Case("strided 3x3/2 64->128", (8, 56, 56, 64), (3, 3), 128, stride=2),
    Case("1-D k=3 C=64 L=4096", (8, 4096, 64), (3,), 64),
    Case("1-D k=15 C=64 L=4096", (8, 4096, 64), (15,), 64),
    Case("1-D k=31 C=64 L=4096", (8, 4096, 64), (31,), 64),
    Case("3-D 3x3x3 C=32 16^3", (4, 16, 16, 16, 32), (3, 3, 3), 32),
    Case("transposed 3x3 s=2 64->32", (8, 28, 28, 64), (3, 3), 32, lhs_dilation=2),
]

USER_CASES = [
    Case("MNIST 3x3 32->64 14^2 b64", (64, 14, 14, 32), (3, 3), 64),
    Case("MNIST 3x3 32 28^2 b64", (64, 28, 28, 32), (3, 3), 32),
    Case("CIFAR 3x3 3->16 b128", (128, 32, 32, 3), (3, 3), 16),
    Case("CIFAR 3x3 16 32^2 b128", (128, 32, 32, 16), (3, 3), 16),
    Case("CIFAR 3x3 32 32^2 b128", (128, 32, 32, 32), (3, 3), 32),
    Case("CIFAR 3x3 64 32^2 b128", (128, 32, 32, 64), (3, 3), 64),
    Case("CIFAR 3x3 64 16^2 b128", (128, 16, 16, 64), (3, 3), 64),
    Case("CIFAR 3x3 128 8^2 b128", (128, 8, 8, 128), (3, 3), 128),
    Case("CIFAR 3x3/2 16->32 b128", (128, 32, 32, 16), (3, 3), 32, stride=2),
    Case("CIFAR 3x3/2 32->64 b128", (128, 32, 32, 32), (3, 3), 64, stride=2),
    Case("CIFAR 3x3/2 64->128 16^2 b128", (128, 16, 16, 64), (3, 3), 128, stride=2),
    Case("RGB 3x3/2 3->32 224^2 b8", (8, 224, 224, 3), (3, 3), 32, stride=2),
    Case("U-Net 3x3 16 256^2 b1", (1, 256, 256, 16), (3, 3), 16),
    Case("U-Net 3x3 32 128^2 b4", (4, 128, 128, 32), (3, 3), 32),
    Case("narrow 3x3 8 330^2 b1", (1, 330, 330, 8), (3, 3), 8),
    Case("narrow 3x3 16 128^2 b2", (2, 128, 128, 16), (3, 3), 16),
    Case("5x5 32->64 28^2 b32", (32, 28, 28, 32), (5, 5), 64),
    Case("DeepLab 3x3 d=6 256 33^2 b4", (4, 33, 33, 256), (3, 3), 256, dilation=6),
    Case("TCN 1-D k=3 d=4 64 L=8000 b2", (2, 8000, 64), (3,), 64, dilation=4),
]
"""``--cases users``: layers at the sizes users train them (MNIST and CIFAR classifiers at
their usual batches, an RGB stem, U-Net levels, narrow layers over large images, a
DeepLab-style dilated layer and a temporal convolution's dilated one), to check the
planner beyond the suite's shapes."""
CASE_SETS = {"suite": CASES, "users": USER_CASES}


def samples(fns: Sequence[Callable[[], Any]], reps: int, budget_s: float = 4.0,
            inner: int = 1) -> list[list[float]]:
    """Seconds per call of each thunk in every round, run alternately after two warm-ups;
    `reps` rounds, or fewer (at least 3) when one round would take more than
    `budget_s / reps`. Each sample dispatches `inner` calls back to back and waits for the
    last (on an accelerator this measures the device, not the host's dispatch)."""
    def sample(f: Callable[[], Any]) -> Any:
        for _ in range(inner - 1):
            f()
        return jax.block_until_ready(f())

    t0 = time.perf_counter()
    for f in fns:
        sample(f)
    for f in fns:
        sample(f)
    round_s = (time.perf_counter() - t0) / 2
    reps = max(3, min(reps, int(budget_s / max(round_s, 1e-9))))
    ts: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            sample(f)
            ts[i].append((time.perf_counter() - t) / inner)
    return ts


def timed(fns: Sequence[Callable[[], Any]], reps: int, budget_s: float = 4.0,
          inner: int = 1) -> list[float]:
    """Median seconds per call of each thunk (`samples`)."""
    return [statistics.median(t) for t in samples(fns, reps, budget_s, inner)]


def rel_err(a: Any, b: Any) -> float:
    """``||a - b|| / ||b||`` over all leaves (float64)."""
    la = [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(a)]
    lb = [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(b)]
    num = sum(float(np.sum((u - v) ** 2)) for u, v in zip(la, lb, strict=True))
    return math.sqrt(num / sum(float(np.sum(v**2)) for v in lb))


def matmul_flops(reps: int, n: int, inner: int) -> float:
    """Measured float32 matmul FLOP/s (n^3, default precision)."""
    a = jnp.asarray(np.random.default_rng(1).standard_normal((n, n), dtype=np.float32))
    f = jax.jit(lambda a: a @ a)
    (t,) = timed([lambda: f(a)], reps, inner=inner)
    return 2 * n**3 / t


def fwd_bwd(conv: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable[..., Any]:
    """Jitted training step of one layer: ``y = conv(x, w)`` and the pullback to x and w of
    the cotangent ``y - t``, the squared error's against a target `t`, returning all three
    (so XLA can neither drop the forward nor fuse it into a loss reduction). The cotangent
    depends on the output, as every layer's does in training: with one that did not, XLA
    was free to run the forward beside the gradients and held both's temporaries at once
    (jconv's went past glibc's 32 MiB mmap threshold there, and every call faulted its
    pages in again)."""
    def step(x: jax.Array, w: jax.Array, t: jax.Array) -> tuple[jax.Array, ...]:
        y, pullback = jax.vjp(conv, x, w)
        return (y, *pullback(y - t))
    return jax.jit(step)


def torch_thunks(case: Case, x: np.ndarray, w: np.ndarray) -> tuple[Callable, Callable] | None:
    """PyTorch CPU forward and forward+backward thunks for `case`, or None."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP
    try:
        import torch
        import torch.nn.functional as tf
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    ns = case.ns
    spec = case.spec()
    perm_x = (0, ns + 1, *range(1, ns + 1))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(perm_x)))
    if case.lhs_dilation > 1:
        wt = torch.from_numpy(np.ascontiguousarray(
            np.flip(w, tuple(range(ns))).transpose(ns, ns + 1, *range(ns))))
        pads = [lo for lo, _ in spec.padding]
        tpad = [k - 1 - p for k, p in zip(case.k, pads, strict=True)]
        ops: dict[int, Callable[..., Any]] = {
            1: tf.conv_transpose1d, 2: tf.conv_transpose2d, 3: tf.conv_transpose3d}
        extra = [o - ((i - 1) * 2 - 2 * tp + k) for o, i, tp, k in
                 zip(spec.out_spatial, case.x[1:-1], tpad, case.k, strict=True)]

        def run(a: Any, b: Any) -> Any:  # torch has no negative output_padding: crop
            y = ops[ns](a, b, stride=2, padding=tpad, output_padding=[max(e, 0) for e in extra],
                   groups=case.groups)
            return y[(slice(None), slice(None), *(slice(0, o) for o in spec.out_spatial))]
    else:
        wt = torch.from_numpy(np.ascontiguousarray(w.transpose(ns + 1, ns, *range(ns))))
        pads = [lo for lo, _ in spec.padding]
        if any(lo != hi for lo, hi in spec.padding):
            return None
        ops = {1: tf.conv1d, 2: tf.conv2d, 3: tf.conv3d}

        def run(a: Any, b: Any) -> Any:
            return ops[ns](a, b, stride=case.stride, padding=pads, dilation=case.dilation,
                      groups=case.groups)
    if ns == 2:
        xt = xt.contiguous(memory_format=torch.channels_last)
    xg, wg = xt.clone().requires_grad_(True), wt.clone().requires_grad_(True)

    def fwd() -> Any:
        with torch.no_grad():
            return run(xt, wt)

    def bwd() -> Any:
        xg.grad = wg.grad = None
        run(xg, wg).sum().backward()
        return xg.grad

    return fwd, bwd


def bench_case(case: Case, reps: int, sweep: bool, peak: float, inner: int,
               torch_col: bool, also: Sequence[str] = ()) -> dict[str, Any]:
    """Time one case; returns a JSON-able record. Every jconv output timed (values, and
    gradients for forward+backward) is also compared with lax's: ``rel_err``. `also`:
    lowerings (opt-in ones too) each timed alternately with lax where they apply
    (``rec[mode]["also"][name]``)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(case.x, dtype=np.float32)
    w = rng.standard_normal(case.w_shape(), dtype=np.float32)
    spec = case.spec()
    ct = rng.standard_normal(spec.out_shape, dtype=np.float32)
    xj, wj, cj = jnp.asarray(x), jnp.asarray(w), jnp.asarray(ct)
    args = case.lax_args()

    def native(a: jax.Array, b: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(a, b, **args)

    def ours(strategy: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
        return lambda a, b: jconv.conv_general_dilated(a, b, **args, strategy=strategy)

    def call(conv: Callable[[jax.Array, jax.Array], jax.Array], mode: str
             ) -> Callable[[], Any]:
        """A thunk: `conv` jitted on the case's operands ("fwd"), or its `fwd_bwd` step."""
        if mode == "fwd":
            f = jax.jit(conv)
            return lambda: f(xj, wj)
        g = fwd_bwd(conv)
        return lambda: g(xj, wj, cj)

    chosen = plan(spec, jnp.dtype(jnp.float32))
    backward = plan(spec, jnp.dtype(jnp.float32), differentiated=True)
    flops = 2 * spec.macs / math.prod(spec.lhs_dilation)  # transposed: taps on real input
    rec: dict[str, Any] = {"case": case.name, "strategy": chosen, "backward": backward,
                           "gflop": flops / 1e9}
    th = torch_thunks(case, x, w) if torch_col else None
    candidates = [n for n, m in STRATEGIES.items()
                  if m.AUTO and m.applicable(spec, jnp.dtype(jnp.float32)) is None
                  and math.isfinite(m.predict(spec).forward)]
    allowed = set(jconv.planner.candidates(spec, jnp.float32, opt_in=True))
    for mode, mult in (("fwd", 1), ("fwd+bwd", 3)):
        thunks = [call(ours("auto"), mode), call(native, mode)]
        s_ours, s_nat = samples(thunks, reps, inner=inner)
        t_ours, t_nat = statistics.median(s_ours), statistics.median(s_nat)
        ref = thunks[1]()
        r: dict[str, Any] = {
            "jconv_ms": t_ours * 1e3, "native_ms": t_nat * 1e3, "ratio": t_ours / t_nat,
            "ratio_min": min(s_ours) / min(s_nat),
            "rel_err": rel_err(thunks[0](), ref),
            "gflops": mult * flops / t_ours / 1e9,
            "pct_matmul": 100 * mult * flops / t_ours / peak,
            "native_gflops": mult * flops / t_nat / 1e9}
        for name in also:
            if STRATEGIES[name].applicable(spec, jnp.dtype(jnp.float32)) is None:
                thunk = call(ours(name), mode)
                t_name, t_ref = timed([thunk, thunks[1]], reps, inner=inner)
                r.setdefault("also", {})[name] = {
                    "ms": t_name * 1e3, "native_ms": t_ref * 1e3, "ratio": t_name / t_ref,
                    "rel_err": rel_err(thunk(), ref)}
        if th is not None:  # timed on its own: its idle OpenMP threads would slow the next thunk
            r["torch_ms"] = timed([th[0] if mode == "fwd" else th[1]], reps)[0] * 1e3
        if sweep:
            names = candidates
            if mode == "fwd+bwd":  # lowerings more than 3x slower forward are not retried
                fwd_per = rec["fwd"]["per_strategy_ms"]
                names = [n for n in candidates if fwd_per[n] <= 3 * min(fwd_per.values())]
                names = sorted(set(names) | {chosen, backward})
            sweep_thunks = [call(ours(name), mode) for name in names]
            if mode == "fwd+bwd":  # auto, differentiated, runs the backward pick
                sweep_thunks.append(call(ours("auto"), mode))
            runs = [[1e3 * t for t in ts] for ts in samples(sweep_thunks, reps, inner=inner)]
            r["per_strategy_rel_err"] = {
                n: rel_err(t(), ref) for n, t in zip(names, sweep_thunks[:len(names)], strict=True)}
            lowerings = runs[:len(names)]  # fwd+bwd: auto's samples follow
            r["per_strategy_ms"] = dict(zip(names, map(statistics.median, lowerings), strict=True))
            fastest = dict(zip(names, map(min, lowerings), strict=True))
            r["per_strategy_min_ms"] = fastest
            # the fastest samples: stable within 5% from run to run, where medians swing 2x
            r.update(over_best(fastest, min(runs[-1]) if mode == "fwd+bwd" else fastest[chosen],
                               allowed))
        rec[mode] = r
    return rec


def over_best(per: dict[str, float], auto: float, allowed: set[str]) -> dict[str, Any]:
    """The fastest of `per` (ms per lowering, each its fastest sample) among the `allowed`
    lowerings (the accuracy class of the call), `auto`'s time over it, and the fastest of
    any class."""
    best = min((n for n in per if n in allowed), key=per.__getitem__)
    fastest = min(per, key=per.__getitem__)
    return {"best_strategy": best, "chosen_over_best": auto / per[best],
            "fastest_any_class": fastest, "fastest_any_class_over_best": per[fastest] / per[best]}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def errors(r: dict[str, Any]) -> list[float]:
    """Relative errors against lax of every other lowering timed in one mode's record."""
    return [*r.get("per_strategy_rel_err", {}).values(),
            *(v["rel_err"] for v in r.get("also", {}).values())]


def ratio(r: dict[str, Any]) -> str:
    """One mode's ratio cell: the medians' ratio and, in brackets, the fastest samples'."""
    return f"{r['ratio']:.2f} ({r['ratio_min']:.2f})"


def markdown(meta: dict[str, Any], recs: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    torch_col = any("torch_ms" in r["fwd"] for r in recs)
    also = sorted({n for r in recs for m in ("fwd", "fwd+bwd") for n in r[m].get("also", {})})
    sweep = any("per_strategy_ms" in r["fwd"] for r in recs)
    head = ["case", "lowering (fwd/grad)", "GFLOP", "fwd native ms", "fwd ratio", "fwd GFLOP/s",
            "fwd % mm", "f+b native ms", "f+b ratio", "f+b GFLOP/s"]
    if torch_col:
        head += ["torch fwd ms", "torch f+b ms"]
    if sweep:
        head += ["pick/best fwd", "pick/best f+b"]
    for name in also:
        head += [f"{name} fwd ratio", f"{name} f+b ratio"]
    lines = [
        f"Machine: {meta['machine']}; jax {meta['jax']}; float32; matmul "
        f"{meta['matmul_gflops']:.0f} GFLOP/s ({meta['matmul_n']}^3); {meta['reps']} "
        f"alternating reps per timing after 2 warm-ups"
        + (f", {meta['inner']} calls per sample" if meta["inner"] > 1 else "")
        + (f"; every batch x{meta['batch_scale']}" if meta["batch_scale"] > 1 else "")
        + "; ratio = median jconv / median lax.conv_general_dilated (in brackets: fastest"
        " sample over fastest sample); pick/best compares the lowerings' fastest samples.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in recs:
        f, b = r["fwd"], r["fwd+bwd"]
        low = r["strategy"] if r["backward"] == r["strategy"] else (
            f"{r['strategy']}/{r['backward']}")
        row = [r["case"], low, f"{r['gflop']:.3f}", f"{f['native_ms']:.2f}", ratio(f),
               f"{f['gflops']:.1f}", f"{f['pct_matmul']:.0f}%", f"{b['native_ms']:.2f}",
               ratio(b), f"{b['gflops']:.1f}"]
        if torch_col:
            # "-": no PyTorch equivalent (asymmetric SAME padding)
            row += [f"{f['torch_ms']:.2f}" if "torch_ms" in f else "-",
                    f"{b['torch_ms']:.2f}" if "torch_ms" in b else "-"]
        if sweep:
            row += [f"{f['chosen_over_best']:.2f} ({f['best_strategy']})",
                    f"{b['chosen_over_best']:.2f} ({b['best_strategy']})"]
        for name in also:  # "-": the lowering does not apply
            row += [f"{m['also'][name]['ratio']:.2f}" if name in m.get("also", {}) else "-"
                    for m in (f, b)]
        lines.append("| " + " | ".join(row) + " |")
    s = meta["summary"]
    max_err = max(e for r in recs for m in ("fwd", "fwd+bwd")
                  for e in [r[m]["rel_err"], *errors(r[m])])
    faster = [f"{r['case']} {m} ({r[m]['fastest_any_class']} "
              f"{r[m]['fastest_any_class_over_best']:.2f}x the best)"
              for r in recs for m in ("fwd", "fwd+bwd")
              if r[m].get("fastest_any_class", r[m].get("best_strategy"))
              != r[m].get("best_strategy")]
    if faster:
        lines += ["", "Faster in the normwise accuracy class (run when speed is asked for): "
                  + "; ".join(faster) + "."]
    lines += [
        "",
        f"Geometric mean ratio: forward {s['fwd_geomean']:.2f}, forward+backward "
        f"{s['fwd_bwd_geomean']:.2f} (fastest samples: {s['fwd_geomean_min']:.2f}, "
        f"{s['fwd_bwd_geomean_min']:.2f}). Cases with forward ratio <= 1.0: {s['fwd_le_1']}/"
        f"{len(recs)}; forward+backward <= 1.2: {s['fwd_bwd_le_1_2']}/{len(recs)}. "
        f"Largest relative error against lax (values and gradients, every lowering timed): "
        f"{max_err:.1e}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 reps, no per-lowering sweep")
    ap.add_argument("--reps", type=int, default=None, help="alternating repetitions")
    ap.add_argument("--cases", choices=sorted(CASE_SETS), default="suite",
                    help="which cases: the suite's, or layers as users size them "
                         "(default name of the results: users)")
    ap.add_argument("--only", default="",
                    help="run only cases whose name contains one of these (comma-separated)")
    ap.add_argument("--no-sweep", action="store_true", help="skip timing every lowering")
    ap.add_argument("--out", default=None,
                    help="basename in benchmarks/results/ (an absolute path: written there)")
    ap.add_argument("--inner", type=int, default=None,
                    help="calls per timing sample (default 1 on CPU, 20 on an accelerator)")
    ap.add_argument("--also", default="",
                    help="lowerings to time beside auto where they apply, comma-separated "
                         "(opt-in ones too: --also pallas on a GPU; on the CPU it is "
                         "interpreted, far slower)")
    ap.add_argument("--batch-scale", type=int, default=1,
                    help="multiply every case's batch (accelerators: fill the device)")
    a = ap.parse_args(argv)
    on_cpu = jax.default_backend() == "cpu"
    reps = a.reps if a.reps is not None else (3 if a.quick else 7)
    inner = a.inner if a.inner is not None else (1 if on_cpu else 20)
    for flag, v in (("--reps", reps), ("--inner", inner), ("--batch-scale", a.batch_scale)):
        if v < 1:
            ap.error(f"{flag}={v}: must be at least 1")
    sweep = not (a.quick or a.no_sweep)
    only = [p for p in a.only.split(",") if p]
    cases = [c for c in CASE_SETS[a.cases] if not only or any(p in c.name for p in only)]
    if not cases:
        ap.error(f"--only={a.only}: no case's name contains any of them")
    also = [n for n in a.also.split(",") if n]
    for name in also:
        if name not in STRATEGIES:
            ap.error(f"--also={a.also}: {name!r} is not a lowering ({', '.join(STRATEGIES)})")
    # default precision: on GPUs with tensor cores, float32 products may run as TF32 (lax too)
    tol = 1e-4 if on_cpu else 1e-2
    n_mm = 2048 if on_cpu else 8192
    peak = matmul_flops(reps, n_mm, inner)
    dev = jax.devices()[0]
    meta: dict[str, Any] = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores ({platform.machine()}, "
                   f"{platform.system()}), jax device {dev.platform}: {dev.device_kind}",
        "jax": jax.__version__, "reps": reps, "inner": inner, "quick": a.quick,
        "batch_scale": a.batch_scale,
        "matmul_n": n_mm, "matmul_gflops": peak / 1e9, "rel_err_tol": tol,
        "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    base = a.out or ("quick" if a.quick else "latest" if a.cases == "suite" else a.cases)
    RESULTS.mkdir(parents=True, exist_ok=True)
    recs: list[dict[str, Any]] = []
    mismatched: list[str] = []
    for case in cases:
        t0 = time.perf_counter()
        case = dataclasses.replace(case, x=(case.x[0] * a.batch_scale, *case.x[1:]))
        rec = bench_case(case, reps, sweep, peak, inner, torch_col=on_cpu, also=also)
        recs.append(rec)
        errs = [rec[m]["rel_err"] for m in ("fwd", "fwd+bwd")]
        errs += [e for m in ("fwd", "fwd+bwd") for e in errors(rec[m])]
        if max(errs) > tol:
            mismatched.append(case.name)
        print(f"{case.name:28s} {rec['strategy']:8s} {rec['backward']:8s} "
              f"fwd {rec['fwd']['ratio']:.2f} "
              f"f+b {rec['fwd+bwd']['ratio']:.2f}"
              + (f" pick/best {rec['fwd']['chosen_over_best']:.2f}"
                 f"/{rec['fwd+bwd']['chosen_over_best']:.2f}" if sweep else "")
              + f" err {max(errs):.1e}" + (" MISMATCH" if max(errs) > tol else "")
              + f" ({time.perf_counter() - t0:.0f}s)", flush=True)
        fr = [r["fwd"]["ratio"] for r in recs]
        br = [r["fwd+bwd"]["ratio"] for r in recs]
        meta["summary"] = {"fwd_geomean": geomean(fr), "fwd_bwd_geomean": geomean(br),
                           "fwd_geomean_min": geomean([r["fwd"]["ratio_min"] for r in recs]),
                           "fwd_bwd_geomean_min": geomean(
                               [r["fwd+bwd"]["ratio_min"] for r in recs]),
                           "fwd_le_1": sum(x <= 1.0 for x in fr),
                           "fwd_bwd_le_1_2": sum(x <= 1.2 for x in br)}
        # written after every case, so an interrupted run keeps what it measured
        (RESULTS / f"{base}.json").write_text(
            json.dumps({"meta": meta, "cases": recs}, indent=1))
        (RESULTS / f"{base}.md").write_text(markdown(meta, recs))
    print(markdown(meta, recs))
    if mismatched:
        raise SystemExit(f"jconv differs from lax by more than {tol:g} (relative) on: "
                         + ", ".join(mismatched))


if __name__ == "__main__":
    main()
