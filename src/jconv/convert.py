"""Weight and activation layout converters between PyTorch, Flax/Keras and any dimension_numbers.

A layout is a string naming each axis (``"OIHW"``, ``"HWIO"``, ``"WHIO"``, ``"OIDHW"``, ...),
or the ``dimension_numbers`` of a conv (a 3-tuple of strings or a `lax.ConvDimensionNumbers`,
whose kernel spec is used for kernels and lhs spec for inputs). ``"OIHW"``/``"HWIO"``
(``"NCHW"``/``"NHWC"``) also name their family for any spatial rank when the array's rank
is not 4. Spatial axes are matched by letter when both layouts name the same letters, and by
order otherwise. Every conversion is a transpose (plus a flip or reshape where said), so
``convert_kernel(convert_kernel(w, a, b), b, a) == w``.

>>> convert_kernel(jnp.zeros((16, 3, 5, 7)), "OIHW", "HWIO").shape
(5, 7, 3, 16)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "convert_input",
    "convert_kernel",
    "flax_to_torch",
    "keras_depthwise_to_torch",
    "torch_depthwise_to_keras",
    "torch_to_flax",
    "torch_transpose_to_flax",
]

_FAMILIES = {  # name -> (first letter, second letter, both lead the spatial axes)
    "OIHW": ("O", "I", True), "HWIO": ("O", "I", False),
    "NCHW": ("N", "C", True), "NHWC": ("N", "C", False),
}


def _parse(
    layout: Any, ndim: int, pair: tuple[str, str], which: int, arg: str
) -> tuple[int, int, list[int], list[str] | None]:
    """-> (axis of pair[0], axis of pair[1], spatial axes in order, their letters or None)."""
    if isinstance(layout, (tuple, list)) or hasattr(layout, "rhs_spec"):
        spec = layout if not hasattr(layout, "rhs_spec") else (
            layout.lhs_spec, layout.rhs_spec, layout.out_spec)
        if len(spec) != 3:
            raise ValueError(f"`{arg}` (={layout!r}) as dimension_numbers must have 3 entries.")
        entry = spec[which]
        if not isinstance(entry, str):
            perm = tuple(int(a) for a in entry)
            if sorted(perm) != list(range(ndim)):
                raise ValueError(
                    f"`{arg}` (={layout!r}) entry {perm} must be a permutation of range({ndim})."
                )
            return perm[0], perm[1], list(perm[2:]), None
        layout = entry
    if not isinstance(layout, str):
        raise TypeError(
            f"`{arg}` (={layout!r}) must be a layout string such as 'OIHW' or 'HWIO', or "
            "dimension_numbers."
        )
    name = layout.upper()
    if name in _FAMILIES and len(name) != ndim and ndim >= 3:
        first, second, leading = _FAMILIES[name]
        letters = [f"s{i}" for i in range(ndim - 2)]
        if leading:
            axes = [first, second, *letters]
        else:
            axes = [first, *letters, second] if first == "N" else [*letters, second, first]
    else:
        axes = list(name)
    a, b = pair
    if len(axes) != ndim or axes.count(a) != 1 or axes.count(b) != 1 or len(set(axes)) != ndim:
        raise ValueError(
            f"`{arg}` (={layout!r}) must name {ndim} distinct axes including {a!r} and {b!r} "
            f"once each, for an array of rank {ndim}."
        )
    spatial = [i for i, c in enumerate(axes) if c not in pair]
    return axes.index(a), axes.index(b), spatial, [axes[i] for i in spatial]


def _convert(
    x: jax.typing.ArrayLike, src: Any, dst: Any, pair: tuple[str, str], which: int
) -> jax.Array:
    arr = jnp.asarray(x)
    s0, s1, s_sp, s_let = _parse(src, arr.ndim, pair, which, "src")
    d0, d1, d_sp, d_let = _parse(dst, arr.ndim, pair, which, "dst")
    if s_let is not None and d_let is not None and sorted(s_let) == sorted(d_let):
        spatial_src = [s_sp[s_let.index(c)] for c in d_let]
    else:
        spatial_src = s_sp
    perm = [0] * arr.ndim
    perm[d0], perm[d1] = s0, s1
    for d_axis, s_axis in zip(d_sp, spatial_src, strict=True):
        perm[d_axis] = s_axis
    return jnp.transpose(arr, perm)


def convert_kernel(w: jax.typing.ArrayLike, src: Any, dst: Any) -> jax.Array:
    """Transpose a conv kernel from layout `src` to layout `dst` (``O``/``I`` + spatial).

    >>> convert_kernel(jnp.zeros((3, 3, 4, 8)), "HWIO", ("NCHW", "OIHW", "NCHW")).shape
    (8, 4, 3, 3)
    """
    return _convert(w, src, dst, ("O", "I"), 1)


def convert_input(x: jax.typing.ArrayLike, src: Any, dst: Any) -> jax.Array:
    """Transpose an activation from layout `src` to `dst` (``N``/``C`` + spatial).

    >>> convert_input(jnp.zeros((2, 3, 8, 9)), "NCHW", "NHWC").shape
    (2, 8, 9, 3)
    """
    return _convert(x, src, dst, ("N", "C"), 0)


def torch_to_flax(w: jax.typing.ArrayLike) -> jax.Array:
    """PyTorch ``Conv*d`` weight ``(O, I, *window)`` -> Flax/Keras ``(*window, I, O)``."""
    return convert_kernel(w, "OIHW", "HWIO")


def flax_to_torch(w: jax.typing.ArrayLike) -> jax.Array:
    """Flax/Keras kernel ``(*window, I, O)`` -> PyTorch ``Conv*d`` weight ``(O, I, *window)``."""
    return convert_kernel(w, "HWIO", "OIHW")


def torch_transpose_to_flax(w: jax.typing.ArrayLike, *, transpose_kernel: bool) -> jax.Array:
    """PyTorch ``ConvTranspose*d`` weight ``(C_in, C_out, *window)`` (groups=1) -> a kernel
    for `jax.lax.conv_transpose` / Flax ``ConvTranspose`` in ``HWIO``.

    With ``transpose_kernel=True`` the result is ``(*window, C_out, C_in)`` (the forward
    conv's kernel, which lax flips and swaps); with ``False`` it is the spatially flipped
    ``(*window, C_in, C_out)``. Use it with ``use_consistent_padding=True`` and the same
    padding to reproduce PyTorch (``output_padding`` goes on the high side).
    """
    arr = jnp.asarray(w)
    if transpose_kernel:
        return convert_kernel(arr, "OIHW", "HWIO")
    flipped = jnp.flip(arr, tuple(range(2, arr.ndim)))
    return jnp.moveaxis(flipped, (0, 1), (-2, -1))


def keras_depthwise_to_torch(w: jax.typing.ArrayLike) -> jax.Array:
    """Keras ``DepthwiseConv*D`` kernel ``(*window, C, M)`` -> PyTorch ``(C*M, 1, *window)``."""
    arr = jnp.asarray(w)
    if arr.ndim < 3:
        raise ValueError(f"`w` (shape {tuple(arr.shape)}) must be (*window, C, M), rank >= 3.")
    c, m = arr.shape[-2:]
    return convert_kernel(arr.reshape(*arr.shape[:-2], 1, c * m), "HWIO", "OIHW")


def torch_depthwise_to_keras(w: jax.typing.ArrayLike, channels: int) -> jax.Array:
    """PyTorch depthwise weight ``(C*M, 1, *window)`` -> Keras ``(*window, C, M)``."""
    arr = jnp.asarray(w)
    if arr.ndim < 3 or arr.shape[1] != 1 or channels < 1 or arr.shape[0] % channels:
        raise ValueError(
            f"`w` (shape {tuple(arr.shape)}) must be (C*M, 1, *window) with C = `channels` "
            f"(={channels}) dividing shape[0]."
        )
    hwio = convert_kernel(arr, "OIHW", "HWIO")  # (*window, 1, C*M)
    return hwio.reshape(*hwio.shape[:-2], channels, arr.shape[0] // channels)
