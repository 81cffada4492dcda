"""Lowerings of a VALID, strided, rhs-dilated, grouped convolution to einsums.

Each strategy module exposes ``lower(spec, xp, w, *, precision, acc_dtype)``: ``xp`` is the
input already padded and lhs-dilated, in canonical order ``(N, *padded, C)``; ``w`` is the
kernel ``(*window, C // feature_group_count, F)``; the result is ``(N_out, *out, F)`` in
``acc_dtype``. Beside it, ``applicable(spec, dtype)`` (None, or why it cannot run) and
``cost(spec, itemsize)`` (SymPy FLOPs, temp bytes and bytes moved).
"""

from types import ModuleType

from . import direct, fft, hybrid, patches, polyphase, shift, winograd
from ._common import Cost, Geometry

STRATEGIES: dict[str, ModuleType] = {
    "shift": shift,
    "patches": patches,
    "hybrid": hybrid,
    "direct": direct,
    "winograd": winograd,
    "fft": fft,
    "polyphase": polyphase,
}

__all__ = ["STRATEGIES", "Cost", "Geometry"]
