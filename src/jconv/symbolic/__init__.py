"""jconv.symbolic: the second interpreter of a `ConvSpec`, in SymPy.

Numbers in, numbers out; symbols in, formulas out. Every formula here is tested against a
measurement: array shapes and bytes from the engine, weight array sizes, XLA's cost
analysis, observed float32 rounding error, published network counts.
"""

from .bounds import ErrorBound as ErrorBound
from .bounds import error_bound as error_bound
from .error import UNIT_ROUNDOFF as UNIT_ROUNDOFF
from .error import gamma as gamma
from .error import unit_roundoff as unit_roundoff
from .geometry import effective_window as effective_window
from .geometry import output_padding as output_padding
from .geometry import output_size as output_size
from .geometry import same_padding as same_padding
from .geometry import size_symbols as size_symbols
from .geometry import transposed_output_size as transposed_output_size
from .hypotheses import hypotheses as hypotheses
from .layer import Formula as Formula
from .layer import cost_analysis_flops as cost_analysis_flops
from .layer import dimension_names as dimension_names
from .layer import layer_model as layer_model
from .layer import symbols as symbols
from .layer import xla_taps as xla_taps
from .lowering import lowering_cost_formula as lowering_cost_formula
from .lowering import lowering_costs as lowering_costs
from .lowering import lowering_names as lowering_names
from .memory import tensor_bytes as tensor_bytes
from .memory import tensor_elements as tensor_elements
from .stacks import asymptotic_order as asymptotic_order
from .stacks import effective_padding as effective_padding
from .stacks import effective_stride as effective_stride
from .stacks import receptive_field as receptive_field
from .stacks import stack_totals as stack_totals
from .stacks import uniform_stack as uniform_stack

__all__ = [
    "UNIT_ROUNDOFF",
    "ErrorBound",
    "Formula",
    "asymptotic_order",
    "cost_analysis_flops",
    "dimension_names",
    "effective_padding",
    "effective_stride",
    "effective_window",
    "error_bound",
    "gamma",
    "hypotheses",
    "layer_model",
    "lowering_cost_formula",
    "lowering_costs",
    "lowering_names",
    "output_padding",
    "output_size",
    "receptive_field",
    "same_padding",
    "size_symbols",
    "stack_totals",
    "symbols",
    "tensor_bytes",
    "tensor_elements",
    "transposed_output_size",
    "uniform_stack",
    "unit_roundoff",
    "xla_taps",
]
from .communication import communication_bytes as communication_bytes
from .communication import halo_widths as halo_widths
from .communication import per_device_bytes as per_device_bytes
from .communication import spatial_split_kept as spatial_split_kept

__all__ += ["communication_bytes", "halo_widths", "per_device_bytes", "spatial_split_kept"]
