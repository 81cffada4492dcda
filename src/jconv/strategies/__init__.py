"""Lowerings of a VALID, strided, rhs-dilated, grouped convolution to einsums.

Each strategy module exposes ``lower(spec, xp, w, *, precision, acc_dtype)``: ``xp`` is the
input already padded and lhs-dilated, in canonical order ``(N, *padded, C)``; ``w`` is the
kernel ``(*window, C // feature_group_count, F)``; the result is ``(N_out, *out, F)`` in
``acc_dtype``.
"""

from . import patches, shift

STRATEGIES = {"shift": shift, "patches": patches}

__all__ = ["STRATEGIES"]
