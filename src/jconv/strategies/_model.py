"""The machine model the lowerings predict their time with: rates and `Prediction`.

Each lowering turns its `Cost` into seconds in its own ``predict(spec, dtype)``, with the
machine's `Rates` (`rates`): a GEMM reaches ``peak_flops`` once its contraction depth and
its output width reach ``gemm_knee`` (linearly less below, `gemm_rate`); the copies a
lowering makes (strided slices, concatenations, products summed at the end) move at
``copy_bytes_per_s``; fused elementwise multiply-adds run at ``elementwise_flops``; FFTs and
their complex channel mixing at ``fft_flops``; and on the CPU, temporaries past glibc's mmap
threshold are faulted in afresh on every call, at ``first_touch_bytes_per_s``
(`first_touch_seconds`, which `jconv.planner.predict` adds to each lowering's copies). The
CPU's rates were fitted on a 2-core x86 CPU (jax 0.10.2, float32) to maximise the benchmark
cases (``benchmarks/run.py`` sweeps every lowering) whose pick is within 10% of the fastest
lowering; ``benchmarks/fit_rates.py`` refits them from a sweep. Each lowering's own factors
(overheads, backward factors) sit in its module beside the cost they scale.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib

import jax

__all__ = [
    "MMAP_THRESHOLD_BYTES",
    "NEVER",
    "RATES",
    "Prediction",
    "Rates",
    "copy_seconds",
    "elementwise_seconds",
    "fft_seconds",
    "first_touch_seconds",
    "gemm_rate",
    "platform_rates",
    "rates",
    "set_rates",
]


@dataclasses.dataclass(frozen=True)
class Rates:
    """The machine's rates: ``peak_flops`` (a GEMM deep and wide enough), ``gemm_knee``
    (depth and width from which a GEMM reaches it), ``copy_bytes_per_s``,
    ``elementwise_flops``, ``fft_flops``, ``first_touch_bytes_per_s`` (temporaries faulted
    in on every call, `first_touch_seconds`; infinite where the runtime keeps a pool)."""

    peak_flops: float
    gemm_knee: int
    copy_bytes_per_s: float
    elementwise_flops: float
    fft_flops: float
    first_touch_bytes_per_s: float = math.inf


RATES: dict[str, Rates] = {
    "cpu": Rates(peak_flops=5.0e10, gemm_knee=32, copy_bytes_per_s=2.0e9,
                 elementwise_flops=6.0e9, fft_flops=1.0e9, first_touch_bytes_per_s=2.0e9),
    "gpu": Rates(peak_flops=2.82e11, gemm_knee=128, copy_bytes_per_s=7.1e8,
                 elementwise_flops=3.0e9, fft_flops=1.0e9),
}
"""Rates per platform, fitted by ``benchmarks/fit_rates.py``: the CPU's on a 2-core x86; the
GPU's on an NVIDIA H100 sweep at batch x16 (``benchmarks/results/h100_b128_sweep.json``:
picks within 10% of the fastest lowering in 23 of 28 case-modes against 16 with the CPU's
rates; on the batch-8 sweep it was not fitted on, ``h100_b8.json``, 24 of 36 against 20;
both sweeps predate `atrous`, `toeplitz` and Winograd's transforms as adds). Other platforms
use the CPU's without its first touch (`platform_rates`: accelerators' runtimes allocate
from a pool). ``$JCONV_RATES`` names a JSON file of `Rates` fields that replaces them (what
``fit_rates.py --out`` writes)."""

_override: Rates | None = None


def set_rates(rates: Rates | None) -> None:
    """Use `rates` for every prediction from now on; None returns to `RATES` (or
    ``$JCONV_RATES``)."""
    global _override
    if rates is not None and not isinstance(rates, Rates):
        raise TypeError(f"`rates` (={rates!r}) must be a Rates or None.")
    _override = rates
    _from_env.cache_clear()


def platform_rates(platform: str) -> Rates:
    """`RATES`' entry for `platform` (a `jax.default_backend()` name), else the CPU's without
    its first touch (an accelerator's runtime allocates from a pool)."""
    return RATES.get(platform) or dataclasses.replace(RATES["cpu"],
                                                      first_touch_bytes_per_s=math.inf)


@functools.lru_cache(maxsize=1)
def _from_env(path: str | None, platform: str) -> Rates:
    if not path:
        return platform_rates(platform)
    try:
        fields = json.loads(pathlib.Path(path).read_text())
        return Rates(**fields)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"JCONV_RATES (={path!r}) must name a JSON file of Rates fields: {e}"
                         ) from e


def rates() -> Rates:
    """The rates in force: `set_rates`'s, else ``$JCONV_RATES``'s, else the default device's
    platform's (`platform_rates`)."""
    if _override is not None:
        return _override
    return _from_env(os.environ.get("JCONV_RATES"), jax.default_backend())


def gemm_rate(depth: int, width: int) -> float:
    """GEMM FLOP/s for a contraction depth and output width (small sizes waste the units)."""
    r = rates()
    return r.peak_flops * min(1.0, depth / r.gemm_knee) * min(1.0, width / r.gemm_knee)


def copy_seconds(nbytes: float) -> float:
    """Seconds to write `nbytes` by copies."""
    return nbytes / rates().copy_bytes_per_s


def elementwise_seconds(flops: float) -> float:
    """Seconds of `flops` fused elementwise multiply-adds."""
    return flops / rates().elementwise_flops


def fft_seconds(flops: float) -> float:
    """Seconds of `flops` of FFTs and their complex channel mixing."""
    return flops / rates().fft_flops


MMAP_THRESHOLD_BYTES = 32 * 2**20
"""glibc's largest dynamic mmap threshold (64-bit). XLA's CPU runtime allocates a program's
temporaries on every call, and malloc maps anything larger than this afresh each time, so
every page faults in again (3x3 over one 330 x 330 x 8 image: 53 MiB on `patches`, all
13,612 pages a call). Below it malloc may serve them from its heap, reused from call to
call, once its threshold has risen; whether it does depends on the process's past
allocations (`winograd`'s 16 MiB there: no faults after other programs had run, every page
on most calls in a fresh process), so the model counts the certain faults only."""


def first_touch_seconds(temp_bytes: float) -> float:
    """Seconds to fault in `temp_bytes` of a call's temporaries: none up to
    `MMAP_THRESHOLD_BYTES`, every byte at ``first_touch_bytes_per_s`` past it."""
    if temp_bytes <= MMAP_THRESHOLD_BYTES:
        return 0.0
    return temp_bytes / rates().first_touch_bytes_per_s


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predicted seconds of one lowering on one spec.

    ``arithmetic`` and ``copies``: the forward's FLOPs at the rate they run at and its bytes
    moved at `COPY_BYTES_PER_S`; ``backward``: both gradients (input and kernel) together.
    ``math.inf`` marks a time the planner must never choose.
    """

    arithmetic: float
    copies: float
    backward: float

    @property
    def forward(self) -> float:
        """Seconds of the values alone."""
        return self.arithmetic + self.copies

    @property
    def total(self) -> float:
        """Seconds of values and both gradients."""
        return self.forward + self.backward

    @classmethod
    def scaled(cls, arithmetic: float, copies: float, backward: float,
               backward_copy: float) -> Prediction:
        """The forward's parts, and a backward of ``backward * arithmetic +
        backward_copy * copies`` (a lowering's transpose turns each copy into its adjoint)."""
        return cls(arithmetic, copies, backward * arithmetic + backward_copy * copies)

    def touching(self, temp_bytes: float) -> Prediction:
        """This prediction with the first touch of `temp_bytes` of temporaries
        (`first_touch_seconds`) added to the forward's copies."""
        return dataclasses.replace(self, copies=self.copies + first_touch_seconds(temp_bytes))


NEVER = Prediction(math.inf, 0.0, math.inf)
"""The prediction of a lowering that should not be planned for a spec."""
