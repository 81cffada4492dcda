"""jconv: convolution as an einsum over channels and kernel offsets.

Each of a layer's F filters holds one kernel per input channel and **sums** the C
per-channel correlations, so a layer always outputs F maps.
"""

from ._engine import conv as conv
from ._engine import conv_general_dilated as conv_general_dilated
from ._spec import ConvSpec as ConvSpec

__all__ = ["ConvSpec", "conv", "conv_general_dilated"]
__version__ = "0.1.0"
