"""jconv: convolution as an einsum over channels and kernel offsets.

Each of a layer's F filters holds one kernel per input channel and **sums** the C
per-channel correlations, so a layer always outputs F maps.

The names below are imported on first use (PEP 562), so that ``jconv --version`` and the
command line's usage errors answer without importing JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import convert as convert
    from . import lax as lax
    from . import planner as planner
    from . import strategies as strategies
    from ._args import ConvArgumentError as ConvArgumentError
    from ._autopart import plain_partitioning as plain_partitioning
    from ._engine import conv as conv
    from ._engine import conv_general_dilated as conv_general_dilated
    from ._explain_model import explain as explain
    from ._explain_report import ExplainReport as ExplainReport
    from ._layers import conv_general_dilated_patches as conv_general_dilated_patches
    from ._layers import depthwise_conv as depthwise_conv
    from ._layers import local_conv as local_conv
    from ._layers import masked_conv as masked_conv
    from ._layers import separable_conv as separable_conv
    from ._spec import ConvSpec as ConvSpec
    from ._transpose import conv_transpose as conv_transpose
    from ._transpose import conv_transpose_torch as conv_transpose_torch
    from ._tune import TuneReport as TuneReport
    from ._tune import tune as tune
    from .planner import get_memory_budget as get_memory_budget
    from .planner import set_memory_budget as set_memory_budget

_WHERE = {
    "ConvArgumentError": "._args",
    "ConvSpec": "._spec",
    "ExplainReport": "._explain_report",
    "TuneReport": "._tune",
    "conv": "._engine",
    "conv_general_dilated": "._engine",
    "conv_general_dilated_patches": "._layers",
    "conv_transpose": "._transpose",
    "conv_transpose_torch": "._transpose",
    "convert": None,
    "depthwise_conv": "._layers",
    "explain": "._explain_model",
    "get_memory_budget": ".planner",
    "lax": None,
    "local_conv": "._layers",
    "masked_conv": "._layers",
    "plain_partitioning": "._autopart",
    "planner": None,
    "separable_conv": "._layers",
    "set_memory_budget": ".planner",
    "strategies": None,
    "tune": "._tune",
}
"""Public name -> the module that defines it (None: the name is a submodule)."""

__all__ = sorted(_WHERE)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name, "")
    if where == "":
        raise AttributeError(f"module 'jconv' has no attribute {name!r}")
    module = importlib.import_module(f".{name}" if where is None else where, __name__)
    value = module if where is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
