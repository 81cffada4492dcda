"""Per-lowering costs for `jconv.symbolic`: FLOPs, temp bytes and bytes moved.

Each lowering module in `jconv.strategies` states its own cost; this module gathers them.
Give a `ConvSpec` for numbers, or a spatial rank for formulas in the symbols of
`Geometry.symbols` (``N``, ``o_i``, ``k_i``, ``p_i``, ``i_i``, ``C_g``, ``F_g``, ``G``,
``pad``, ``strided``, ``b``):

>>> from jconv import ConvSpec
>>> spec = ConvSpec.from_lax((8, 28, 28, 1), (3, 3, 1, 10), (1, 1), "SAME",
...                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
>>> lowering_costs(spec)["patches"].temp_bytes
426496
>>> lowering_cost_formula("patches", 1).temp_bytes
b*(C_g*G*N*k_0*o_0 + C_g*G*N*p_0*pad)

The temp-byte models are checked against XLA's buffer assignment in tests/test_memory.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._spec import ConvSpec
from ..strategies import STRATEGIES, Cost, Geometry

__all__ = ["Cost", "Geometry", "lowering_cost_formula", "lowering_costs", "lowering_names"]


def lowering_names() -> tuple[str, ...]:
    """Names of every lowering, as `strategy=` accepts them."""
    return tuple(STRATEGIES)


def lowering_costs(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> dict[str, Cost]:
    """``{name: Cost}`` for every lowering that can run ``spec`` with operands of ``dtype``
    (SymPy numbers)."""
    return {
        name: mod.cost(spec, dtype)
        for name, mod in STRATEGIES.items()
        if mod.applicable(spec, jnp.dtype(dtype)) is None
    }


def lowering_cost_formula(name: str, num_spatial: int) -> Cost:
    """The cost of lowering ``name`` as SymPy formulas over ``num_spatial`` spatial dims
    (the lowering's ``formula``).

    The symbolic window is general (a numeric 1x1 kernel without padding or strides makes
    no slice copies); for the FFT the transform lengths are the padded sizes ``p_i``, for
    dft (1-D only) the tile length is the symbol ``T``, for polyphase the phase count is
    ``S`` (polyphase and atrous: their own copies, not their inner lowerings'); for
    scatter ``spread`` is 1 where it multiplies only the real input samples and spreads
    the products, 0 where it multiplies every padded position and slices them;
    for toeplitz (1-D only) the outputs per row are ``R``, the stride ``s`` and the rhs
    dilation ``d``. winograd is 1-D (F(2, 3)) and 2-D, winograd4 2-D only. ValueError for
    an unknown name or a rank the lowering lacks.
    """
    if name not in STRATEGIES:
        raise ValueError(f"`name` (={name!r}) must be one of {sorted(STRATEGIES)}.")
    return STRATEGIES[name].formula(num_spatial)
