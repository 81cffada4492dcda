"""jconv: convolution as an einsum over channels and kernel offsets.

Each of a layer's F filters holds one kernel per input channel and **sums** the C
per-channel correlations, so a layer always outputs F maps.
"""

from . import convert as convert
from . import lax as lax
from . import planner as planner
from . import strategies as strategies
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
from ._validate import ConvArgumentError as ConvArgumentError
from .planner import get_memory_budget as get_memory_budget
from .planner import set_memory_budget as set_memory_budget

__all__ = [
    "ConvArgumentError",
    "ConvSpec",
    "ExplainReport",
    "TuneReport",
    "conv",
    "conv_general_dilated",
    "conv_general_dilated_patches",
    "conv_transpose",
    "conv_transpose_torch",
    "convert",
    "depthwise_conv",
    "explain",
    "get_memory_budget",
    "lax",
    "local_conv",
    "masked_conv",
    "planner",
    "separable_conv",
    "set_memory_budget",
    "strategies",
    "tune",
]
__version__ = "0.1.0"
