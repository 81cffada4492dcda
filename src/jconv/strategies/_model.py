"""The machine model the lowerings predict their time with: rates and `Prediction`.

Each lowering turns its `Cost` into seconds in its own ``predict(spec, dtype)``, with the
rates below: a GEMM reaches `PEAK_FLOPS` once its contraction depth and its output width
reach `GEMM_KNEE` (linearly less below, `gemm_rate`); the copies a lowering makes (strided
slices, concatenations, products summed at the end) move at `COPY_BYTES_PER_S`; fused
elementwise multiply-adds run at `ELEMENTWISE_FLOPS`; FFTs and their complex channel
mixing at `FFT_FLOPS`. The rates were fitted on a 2-core x86 CPU (jax 0.10.2, float32) by
a grid search maximising the benchmark cases (``benchmarks/run.py`` sweeps every lowering)
whose pick is within 10% of the fastest lowering; each lowering's own factors (overheads,
backward factors) sit in its module beside the cost they scale.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = [
    "COPY_BYTES_PER_S",
    "ELEMENTWISE_FLOPS",
    "FFT_FLOPS",
    "GEMM_KNEE",
    "NEVER",
    "PEAK_FLOPS",
    "Prediction",
    "gemm_rate",
]

PEAK_FLOPS = 5.0e10
GEMM_KNEE = 32
COPY_BYTES_PER_S = 2.0e9
ELEMENTWISE_FLOPS = 6.0e9
FFT_FLOPS = 1.0e9


def gemm_rate(depth: int, width: int) -> float:
    """GEMM FLOP/s for a contraction depth and output width (small sizes waste the units)."""
    return PEAK_FLOPS * min(1.0, depth / GEMM_KNEE) * min(1.0, width / GEMM_KNEE)


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


NEVER = Prediction(math.inf, 0.0, math.inf)
"""The prediction of a lowering that should not be planned for a spec."""
