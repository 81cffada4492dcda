"""`jax.lax`'s convolution entry points, computed by jconv: same signatures, same semantics.

``from jconv import lax as jlax`` replaces the convolution part of `jax.lax` in user code:
`conv`, `conv_with_general_padding`, `conv_general_dilated`, `conv_transpose`,
`conv_general_dilated_patches` and `conv_general_dilated_local`. Each accepts what lax's
accepts (any spatial rank, none included) and raises the class of exception lax raises on bad
input, with a message naming the argument, its value and the rule. `conv_general_dilated`
and `conv_transpose` also take jconv's keyword ``strategy``. Code that calls `jax.lax`
itself (Flax's linen ``ConvTranspose`` and ``ConvLocal``) runs on jconv within `routed`.

>>> import jax.numpy as jnp
>>> from jconv import lax as jlax
>>> jlax.conv(jnp.ones((2, 3, 8, 8)), jnp.ones((4, 3, 3, 3)), (1, 1), "SAME").shape
(2, 4, 8, 8)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import jax

from ._engine import conv_general_dilated
from ._layers import conv_general_dilated_patches
from ._layers import local_conv as conv_general_dilated_local
from ._spec import Padding
from ._transpose import conv_transpose

__all__ = [
    "conv",
    "conv_general_dilated",
    "conv_general_dilated_local",
    "conv_general_dilated_patches",
    "conv_transpose",
    "conv_with_general_padding",
    "routed",
]


def conv(
    lhs: jax.typing.ArrayLike,
    rhs: jax.typing.ArrayLike,
    window_strides: Sequence[int],
    padding: str,
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`jax.lax.conv`: `conv_general_dilated` in lax's default layouts (``NC...``,
    ``OI...``), no dilation, no groups."""
    return conv_general_dilated(lhs, rhs, window_strides, padding, precision=precision,
                                preferred_element_type=preferred_element_type)


def conv_with_general_padding(
    lhs: jax.typing.ArrayLike,
    rhs: jax.typing.ArrayLike,
    window_strides: Sequence[int],
    padding: Padding,
    lhs_dilation: Sequence[int] | None,
    rhs_dilation: Sequence[int] | None,
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`jax.lax.conv_with_general_padding`: `conv_general_dilated` in lax's default layouts
    with dilations, no groups."""
    return conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                precision=precision,
                                preferred_element_type=preferred_element_type)


@contextlib.contextmanager
def routed() -> Iterator[None]:
    """Within the block, `jax.lax`'s six convolution entry points are jconv's, for code that
    calls them through `jax.lax` at trace time (Flax's linen ``ConvTranspose`` and
    ``ConvLocal``, which take no convolution argument); restored on exit. It swaps module
    attributes: use it around tracing, not from several threads at once.

    >>> import jax
    >>> with routed():
    ...     jax.lax.conv_transpose is conv_transpose
    True
    >>> jax.lax.conv_transpose is conv_transpose
    False
    """
    names = [n for n in __all__ if n != "routed"]
    saved = {n: getattr(jax.lax, n) for n in names}
    try:
        for n in names:
            setattr(jax.lax, n, globals()[n])
        yield
    finally:
        for n, f in saved.items():
            setattr(jax.lax, n, f)
