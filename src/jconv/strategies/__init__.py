"""Lowerings of a padded, lhs-dilated, strided, rhs-dilated, grouped convolution to einsums.

Each strategy module exposes ``lower(spec, x, w, *, precision, acc_dtype)``: ``x`` is the
input in canonical order ``(N, *in, C)``, which the lowering pads and lhs-dilates as the spec
says (most with `_common.pad_input`; polyphase never builds the dilated input); ``w`` is the
kernel ``(*window, C // feature_group_count, F)``; the result is ``(N_out, *out, F)`` in
``acc_dtype``. Beside it, ``applicable(spec, dtype)`` (None, or why it cannot run) and
``cost(spec, itemsize)`` (SymPy FLOPs, temp bytes and bytes moved).
"""

from types import ModuleType

from . import dft, direct, fft, hybrid, patches, polyphase, scatter, shift, winograd, winograd4
from ._common import Cost, Geometry

STRATEGIES: dict[str, ModuleType] = {
    "shift": shift,
    "patches": patches,
    "hybrid": hybrid,
    "direct": direct,
    "winograd": winograd,
    "winograd4": winograd4,
    "fft": fft,
    "dft": dft,
    "polyphase": polyphase,
    "scatter": scatter,
}

__all__ = ["STRATEGIES", "Cost", "Geometry"]
