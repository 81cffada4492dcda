"""The lowerings: one module each, every one a complete model of itself.

A lowering computes a padded, lhs-dilated, strided, rhs-dilated, grouped convolution with
pad, slice, reshape and einsum/`dot_general` (FFTs for `fft`). Each module states:

- ``lower(spec, x, w, *, precision, acc_dtype)``: ``x`` is the input in canonical order
  ``(N, *in, C)``, which the lowering pads and lhs-dilates as the spec says; ``w`` is the
  kernel ``(*window, C // feature_group_count, F)``; the result is ``(N_out, *out, F)`` in
  ``acc_dtype``.
- ``applicable(spec, dtype)``: None, or why it cannot run ``spec``.
- ``cost(spec, dtype)``: its `Cost` (SymPy FLOPs, temp bytes and bytes moved), and
  ``formula(num_spatial)``: the same over the symbols of `Geometry.symbols`.
- ``predict(spec, dtype)``: its predicted time (`Prediction`, from the rates of `_model`
  and its own factors), ``BACKWARD``/``BACKWARD_COPY``: how its own gradients (its
  transposes, which run where the engine does not compute the gradients itself:
  depthwise, single-channel and batch-grouped convolutions, `jconv._gradients`) scale with
  the forward's arithmetic and copies, ``AUTO``: whether ``strategy="auto"`` may pick it, and
  ``ACCURACY``: ``"summation"`` (the error of summing the taps, lax's class) or
  ``"normwise"`` (planned only when the caller asks for speed, `jconv.planner`), and
  ``TRANSFORMS_KERNEL``: whether it copies the kernel into a new form (transposed,
  transformed), which the engine then computes after the input, and ``DIFFERENTIATED``:
  whether ``auto`` may run it for the values of a differentiated call.

`STRATEGIES` is the registry; ``strategy=`` takes its keys. This namespace is public: the
modules' interface above is stable for those who study or extend the lowerings.

>>> sorted(STRATEGIES)[:3]
['accumulate', 'atrous', 'dft']
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
from jax import lax

from .._spec import ConvSpec
from . import (
    accumulate,
    atrous,
    dft,
    direct,
    fft,
    hybrid,
    pallas,
    patches,
    polyphase,
    scatter,
    shift,
    toeplitz,
    winograd,
    winograd4,
)
from ._common import Cost, Geometry
from ._model import Prediction


class Lowering(Protocol):
    """What a lowering module provides (see the module docstring)."""

    AUTO: bool
    ACCURACY: str
    TRANSFORMS_KERNEL: bool
    DIFFERENTIATED: bool
    BACKWARD: float
    BACKWARD_COPY: float

    def applicable(self, spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None: ...

    def lower(self, spec: ConvSpec, x: jax.Array, w: jax.Array, *,
              precision: lax.PrecisionLike, acc_dtype: jnp.dtype) -> jax.Array: ...

    def cost(self, spec: ConvSpec, dtype: jax.typing.DTypeLike = ...) -> Cost: ...

    def formula(self, num_spatial: int) -> Cost: ...

    def predict(self, spec: ConvSpec, dtype: jax.typing.DTypeLike = ...) -> Prediction: ...


STRATEGIES: dict[str, Lowering] = {
    "shift": shift,
    "accumulate": accumulate,
    "patches": patches,
    "hybrid": hybrid,
    "direct": direct,
    "winograd": winograd,
    "winograd4": winograd4,
    "fft": fft,
    "dft": dft,
    "polyphase": polyphase,
    "scatter": scatter,
    "pallas": pallas,
    "toeplitz": toeplitz,
    "atrous": atrous,
}
"""The registry, in the order the planner breaks exact ties in (the first wins): `atrous`,
the others' work rearranged around one of them, comes last (a 2-tap window dilated 16 over
4 x 16000 x 32 ties scatter exactly, whose forward measured 0.77-0.87x atrous's)."""

__all__ = ["STRATEGIES", "Cost", "Geometry", "Lowering", "Prediction"]
