"""`ConvSpec`: the one place where convolution hyper-parameters are parsed and checked.

Every public entry point builds a `ConvSpec` from the user's arguments and the static
shapes of its operands, in plain Python before any tracing, so an invalid call raises the
same `ValueError`/`TypeError` eagerly and under `jax.jit`. The spec holds every
hyper-parameter in normal form and derives the geometry (padded sizes, output shape); the
numeric engine and `jconv.symbolic` both read it and never re-parse user input.

Canonical order used inside jconv: input ``(N, *spatial, C)``, kernel ``(*window, I, O)``,
output ``(N_out, *out_spatial, F)``, spatial axes ordered as in the kernel's layout.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from ._args import ConvArgumentError, as_int, int_tuple, listify

__all__ = [
    "ConvSpec",
    "Padding",
    "canonical_layouts",
    "dilated_size",
    "normalize_layout",
    "parse_dimension_numbers",
]

Padding = str | Sequence[tuple[int, int]] | Sequence[int] | int

_PAD_STRINGS = ("SAME", "SAME_LOWER", "VALID")


class _Perms(NamedTuple):
    """Axis permutations from the user's layout to lax's (batch, feature, *spatial) order."""

    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    out: tuple[int, ...]










def parse_dimension_numbers(
    dimension_numbers: Any, ndim: int
) -> tuple[_Perms, tuple[str, str, str] | None]:
    """Parse lax-style dimension numbers into permutations (batch/out, feature/in, spatial...).

    Accepts None (lax's default ``NC...``, ``OI...``, ``NC...``), a 3-tuple of layout strings,
    or a `jax.lax.ConvDimensionNumbers` (or any 3-tuple of int permutations).
    """
    if dimension_numbers is None:
        iota = tuple(range(ndim))
        return _Perms(iota, iota, iota), None
    if isinstance(dimension_numbers, str) or not isinstance(dimension_numbers, Sequence):
        raise TypeError(
            f"`dimension_numbers` (={dimension_numbers!r}) must be None, a tuple of three "
            "layout strings such as ('NHWC', 'HWIO', 'NHWC'), or a lax.ConvDimensionNumbers."
        )
    if len(dimension_numbers) != 3:
        raise ConvArgumentError(
            f"`dimension_numbers` (={dimension_numbers!r}) must have 3 entries "
            f"(lhs, rhs, out), got {len(dimension_numbers)}."
        )
    if all(isinstance(s, str) for s in dimension_numbers):
        return _perms_from_strings(tuple(dimension_numbers), ndim), tuple(dimension_numbers)
    if all(isinstance(s, Sequence) and not isinstance(s, str) for s in dimension_numbers):
        perms = []
        for name, spec in zip(("lhs_spec", "rhs_spec", "out_spec"), dimension_numbers, strict=True):
            p = tuple(as_int(f"dimension_numbers.{name}", v, minimum=0) for v in spec)
            if sorted(p) != list(range(ndim)):
                raise ValueError(
                    f"`dimension_numbers.{name}` (={p}) must be a permutation of "
                    f"range({ndim}) for operands of rank {ndim}."
                )
            perms.append(p)
        return _Perms(*perms), None
    raise TypeError(
        f"`dimension_numbers` (={dimension_numbers!r}) must hold three strings or three "
        "integer permutations, not a mix."
    )


def _perms_from_strings(specs: tuple[str, str, str], ndim: int) -> _Perms:
    pairs = (("N", "C"), ("O", "I"), ("N", "C"))
    names = ("lhs", "rhs", "out")
    for spec, (a, b), name in zip(specs, pairs, names, strict=True):
        if len(spec) != ndim:
            raise ConvArgumentError(
                f"`dimension_numbers` {name} layout {spec!r} has {len(spec)} letters but the "
                f"operands have rank {ndim}."
            )
        if spec.count(a) != 1 or spec.count(b) != 1:
            raise ConvArgumentError(
                f"`dimension_numbers` {name} layout {spec!r} must contain {a!r} and {b!r} "
                "exactly once."
            )
        if len(set(spec)) != len(spec):
            raise ConvArgumentError(
                f"`dimension_numbers` {name} layout {spec!r} must not repeat a letter."
            )
    lhs, rhs, out = specs
    spatial = [set(s) - set(p) for s, p in zip(specs, pairs, strict=True)]
    if not spatial[0] == spatial[1] == spatial[2]:
        raise ConvArgumentError(
            f"`dimension_numbers` (={specs!r}) must name the same spatial letters in all "
            "three layouts."
        )

    def perm(spec: str, pair: tuple[str, str]) -> tuple[int, ...]:
        sp = sorted(
            (i for i, c in enumerate(spec) if c not in pair), key=lambda i: rhs.index(spec[i])
        )
        return (spec.index(pair[0]), spec.index(pair[1]), *sp)

    return _Perms(perm(lhs, pairs[0]), perm(rhs, pairs[1]), perm(out, pairs[2]))


def normalize_layout(layout: str, num_spatial: int) -> tuple[str, str, str]:
    """Friendly layout name -> lax dimension-number strings for `num_spatial` spatial dims.

    ``"NHWC"`` (channels last, kernel ``HWIO``) and ``"NCHW"`` (channels first, kernel
    ``OIHW``) name a family and work for any spatial rank; a rank-specific name such as
    ``"NWC"`` or ``"NCDHW"`` must match the input's rank.

    >>> normalize_layout("NHWC", 1)
    ('N0C', '0IO', 'N0C')
    """
    if not isinstance(layout, str):
        raise TypeError(f"`layout` (={layout!r}) must be a string such as 'NHWC' or 'NCHW'.")
    if num_spatial > 10:
        raise ValueError(
            f"`layout`: at most 10 spatial dimensions are supported, got {num_spatial}."
        )
    generic = layout.upper()
    if generic not in ("NHWC", "NCHW"):
        body = generic[1:-1] if generic[:1] == "N" and generic[-1:] == "C" else generic[2:]
        ok = (
            generic.startswith("N")
            and (generic.endswith("C") or generic.startswith("NC"))
            and len(set(body)) == len(body)
            and "C" not in body
            and "N" not in body
        )
        if not ok:
            raise ValueError(
                f"`layout` (={layout!r}) must be 'NHWC' (channels last) or 'NCHW' "
                "(channels first), or a rank-specific form such as 'NWC' or 'NCDHW'."
            )
        if len(body) != num_spatial:
            raise ValueError(
                f"`layout` (={layout!r}) names {len(body)} spatial dimensions but the input "
                f"has {num_spatial}."
            )
        generic = "NHWC" if generic.endswith("C") and not generic.startswith("NC") else "NCHW"
    return canonical_layouts(num_spatial, channels_last=generic == "NHWC")


def canonical_layouts(num_spatial: int, *, channels_last: bool = True) -> tuple[str, str, str]:
    """Dimension-number strings with spatial letters ``0, 1, ...``: ``("N0C", "0IO", "N0C")``
    (channels last, jconv's canonical order) or ``("NC0", "OI0", "NC0")``.

    >>> canonical_layouts(2)
    ('N01C', '01IO', 'N01C')
    """
    if not 0 <= num_spatial <= 10:
        raise ValueError(f"`num_spatial` (={num_spatial}) must be between 0 and 10.")
    s = "".join(str(i) for i in range(num_spatial))
    if channels_last:
        return (f"N{s}C", f"{s}IO", f"N{s}C")
    return (f"NC{s}", f"OI{s}", f"NC{s}")


def _same_pads(size: int, window: int, stride: int, lower: bool) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def dilated_size(size: int, dilation: int) -> int:
    """Length of ``size`` samples with ``dilation - 1`` zeros between neighbours."""
    return 0 if size == 0 else 1 + dilation * (size - 1)


def adjoint_padding(window: int, padding: tuple[int, int], extra: int = 0) -> tuple[int, int]:
    """(low, high) padding, along one dimension, of the stride-dilated input of the
    convolution adjoint to one padded by `padding` with a dilated `window`:
    ``(window-1-p_lo, window-1-p_hi+extra)``; `extra` rows on the high side (those the
    forward's stride left unread, or a transposed convolution's output padding)."""
    return window - 1 - padding[0], window - 1 - padding[1] + extra


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """Every hyper-parameter of one convolution, validated and in normal form.

    Shapes are stored in canonical order: ``lhs_shape = (N, *spatial, C)``,
    ``rhs_shape = (*window, I, O)``. ``perms`` map the user's layouts to lax's
    (batch, feature, *spatial) order and back.

    >>> spec = ConvSpec.from_lax((8, 28, 28, 1), (3, 3, 1, 10), (1, 1), "SAME",
    ...                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    >>> spec.out_shape, spec.padding
    ((8, 28, 28, 10), ((1, 1), (1, 1)))
    """

    lhs_shape: tuple[int, ...]
    rhs_shape: tuple[int, ...]
    window_strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]
    feature_group_count: int
    batch_group_count: int
    perms: _Perms

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_lax(
        cls,
        lhs_shape: Sequence[int],
        rhs_shape: Sequence[int],
        window_strides: Sequence[int],
        padding: Padding,
        lhs_dilation: Sequence[int] | None = None,
        rhs_dilation: Sequence[int] | None = None,
        dimension_numbers: Any = None,
        feature_group_count: int = 1,
        batch_group_count: int = 1,
    ) -> ConvSpec:
        """Parse the arguments of `jax.lax.conv_general_dilated` (with operand shapes)."""
        lhs_shape = tuple(int(d) for d in lhs_shape)
        rhs_shape = tuple(int(d) for d in rhs_shape)
        if len(lhs_shape) != len(rhs_shape):
            raise ConvArgumentError(  # lax's wording first, then the numbers
                "conv_general_dilated lhs and rhs must have the same number of dimensions: "
                f"`lhs` has rank {len(lhs_shape)} (shape {lhs_shape}), `rhs` rank "
                f"{len(rhs_shape)} (shape {rhs_shape})."
            )
        ndim = len(lhs_shape)
        if ndim < 2:
            raise ValueError(
                f"`lhs` (shape {lhs_shape}) must have rank >= 2 (batch, feature and any number "
                f"of spatial dimensions), got rank {ndim}."
            )
        n = ndim - 2
        perms, _ = parse_dimension_numbers(dimension_numbers, ndim)
        strides = int_tuple("window_strides", window_strides, n, minimum=1, broadcast=False)
        lhs_dil = int_tuple("lhs_dilation", lhs_dilation, n, minimum=1, broadcast=False)
        rhs_dil = int_tuple("rhs_dilation", rhs_dilation, n, minimum=1, broadcast=False)
        fgc = as_int("feature_group_count", feature_group_count, minimum=1)
        bgc = as_int("batch_group_count", batch_group_count, minimum=1)

        lhs_c = tuple(lhs_shape[i] for i in perms.lhs)  # (N, C, *S)
        rhs_c = tuple(rhs_shape[i] for i in perms.rhs)  # (O, I, *K)
        batch, feat, in_sp = lhs_c[0], lhs_c[1], lhs_c[2:]
        out_f, in_f, window = rhs_c[0], rhs_c[1], rhs_c[2:]

        if fgc > 1 and bgc > 1:
            raise ValueError(
                f"At most one of `feature_group_count` (={fgc}) and `batch_group_count` "
                f"(={bgc}) may be > 1."
            )
        if feat % fgc:
            raise ValueError(
                f"`feature_group_count` (={fgc}) must divide the input feature dimension "
                f"(={feat})."
            )
        if feat // fgc != in_f:
            raise ValueError(
                f"`rhs` input feature dimension (={in_f}) must equal the `lhs` feature "
                f"dimension (={feat}) divided by `feature_group_count` (={fgc})."
            )
        if out_f % fgc:
            raise ValueError(
                f"`feature_group_count` (={fgc}) must divide the kernel's output feature "
                f"dimension (={out_f})."
            )
        if batch % bgc:
            raise ValueError(
                f"`batch_group_count` (={bgc}) must divide the input batch dimension (={batch})."
            )
        if out_f % bgc:
            raise ValueError(
                f"`batch_group_count` (={bgc}) must divide the kernel's output feature "
                f"dimension (={out_f})."
            )

        eff_window = tuple(dilated_size(k, d) for k, d in zip(window, rhs_dil, strict=True))
        if isinstance(padding, str):
            kind = padding.upper()
            if kind not in _PAD_STRINGS:
                raise ValueError(
                    f"`padding` (={padding!r}) must be 'SAME', 'SAME_LOWER', 'VALID' or a "
                    "sequence of (low, high) integer pairs."
                )
            if any(d != 1 for d in lhs_dil):
                raise ValueError(
                    f"String `padding` (={padding!r}) is not defined with `lhs_dilation` "
                    f"(={lhs_dil}); give explicit (low, high) pairs."
                )
            if kind == "VALID":
                pads = ((0, 0),) * n
            else:
                pads = tuple(
                    _same_pads(i, k, s, kind == "SAME_LOWER")
                    for i, k, s in zip(in_sp, eff_window, strides, strict=True)
                )
        else:
            pads = _parse_pairs(padding, n)

        spec = cls(
            lhs_shape=tuple(lhs_c[i] for i in (0, *range(2, ndim), 1)),
            rhs_shape=tuple(rhs_c[i] for i in (*range(2, ndim), 1, 0)),
            window_strides=strides,
            padding=pads,
            lhs_dilation=lhs_dil,
            rhs_dilation=rhs_dil,
            feature_group_count=fgc,
            batch_group_count=bgc,
            perms=perms,
        )
        for i, (size, (lo, hi)) in enumerate(zip(spec.dilated_in, pads, strict=True)):
            if size + lo + hi < 0:
                raise ValueError(
                    f"`padding[{i}]` (=({lo}, {hi})) removes more than the input's spatial "
                    f"dimension {i} holds (={size} after lhs dilation)."
                )
        return spec

    # ----------------------------------------------------------------- geometry
    @property
    def num_spatial(self) -> int:
        return len(self.window_strides)

    @property
    def batch(self) -> int:
        return self.lhs_shape[0]

    @property
    def in_features(self) -> int:
        return self.lhs_shape[-1]

    @property
    def out_features(self) -> int:
        return self.rhs_shape[-1]

    @property
    def in_spatial(self) -> tuple[int, ...]:
        return self.lhs_shape[1:-1]

    @property
    def window(self) -> tuple[int, ...]:
        return self.rhs_shape[:-2]

    @property
    def groups(self) -> int:
        """Feature or batch group count (at most one of them exceeds 1)."""
        return self.feature_group_count * self.batch_group_count

    @property
    def group_in_features(self) -> int:
        """Input channels each filter sees: ``C // feature_group_count`` (``C_g``)."""
        return self.in_features // self.feature_group_count

    @property
    def group_out_features(self) -> int:
        """Filters per (feature or batch) group: ``F // groups`` (``F_g``)."""
        return self.out_features // self.groups

    @property
    def taps(self) -> int:
        """Kernel offsets ``prod(window)``."""
        return math.prod(self.window)

    @property
    def pads_input(self) -> bool:
        """True if the input is padded, cropped or lhs-dilated before the window slides."""
        return any(lo or hi for lo, hi in self.padding) or any(d > 1 for d in self.lhs_dilation)

    @property
    def strided(self) -> bool:
        """True if any window stride exceeds 1."""
        return any(s > 1 for s in self.window_strides)

    @property
    def empty(self) -> bool:
        """True if the output is empty or every output is an empty sum (no taps or no input
        channels): the engine returns zeros without lowering."""
        return 0 in self.canonical_out_shape or 0 in self.window or self.in_features == 0

    @property
    def depthwise(self) -> bool:
        """One input channel per feature group, more than one group."""
        return self.feature_group_count == self.in_features > 1

    @property
    def dilated_in(self) -> tuple[int, ...]:
        return tuple(map(dilated_size, self.in_spatial, self.lhs_dilation))

    @property
    def effective_window(self) -> tuple[int, ...]:
        return tuple(map(dilated_size, self.window, self.rhs_dilation))

    @property
    def padded_in(self) -> tuple[int, ...]:
        return tuple(i + lo + hi for i, (lo, hi) in zip(self.dilated_in, self.padding, strict=True))

    @property
    def out_spatial(self) -> tuple[int, ...]:
        return tuple(
            max((p - k) // s + 1, 0)
            for p, k, s in zip(
                self.padded_in, self.effective_window, self.window_strides, strict=True
            )
        )

    @property
    def out_batch(self) -> int:
        return self.batch // self.batch_group_count

    @property
    def canonical_out_shape(self) -> tuple[int, ...]:
        """Output shape in canonical order ``(N_out, *out_spatial, F)``."""
        return (self.out_batch, *self.out_spatial, self.out_features)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Output shape in the user's output layout."""
        lax_order = (self.out_batch, self.out_features, *self.out_spatial)
        shape = [0] * len(lax_order)
        for size, axis in zip(lax_order, self.perms.out, strict=True):
            shape[axis] = size
        return tuple(shape)

    # ----------------------------------------------------------------- layouts
    @property
    def lhs_to_canonical(self) -> tuple[int, ...]:
        """`jnp.transpose` axes taking the user's lhs to ``(N, *spatial, C)``."""
        p = self.perms.lhs
        return (p[0], *p[2:], p[1])

    @property
    def rhs_to_canonical(self) -> tuple[int, ...]:
        """`jnp.transpose` axes taking the user's rhs to ``(*window, I, O)``."""
        p = self.perms.rhs
        return (*p[2:], p[1], p[0])

    @property
    def canonical_to_out(self) -> tuple[int, ...]:
        """`jnp.transpose` axes taking ``(N_out, *out_spatial, F)`` to the user's out layout."""
        ndim = len(self.perms.out)
        canon_of_lax = (0, ndim - 1, *range(1, ndim - 1))
        lax_of_user = {axis: k for k, axis in enumerate(self.perms.out)}
        return tuple(canon_of_lax[lax_of_user[a]] for a in range(ndim))

    def input_gradient(self) -> ConvSpec:
        """The convolution of this one's output cotangent ``(N, *out, F)`` with the kernel
        flipped, its I and O swapped per group (`flip_kernel`), that gives the input
        gradient ``(N, *in, C)``: the cotangent dilated by the stride and padded by the
        dilated window less the forward padding (plus the rows the stride left unread),
        strided by the lhs dilation. For specs without batch groups.

        >>> spec = ConvSpec.from_lax((8, 28, 28, 16), (3, 3, 16, 32), (2, 2), "SAME",
        ...                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
        >>> g = spec.input_gradient()
        >>> g.lhs_shape, g.rhs_shape, g.lhs_dilation, g.padding, g.canonical_out_shape
        ((8, 14, 14, 32), (3, 3, 32, 16), (2, 2), ((2, 1), (2, 1)), (8, 28, 28, 16))
        """
        return _input_gradient(self)

    def flip_kernel(self, w: Any) -> Any:
        """``(*window, Cg, G*Fq) -> (*window, Fq, G*Cg)``: the kernel of `input_gradient`,
        flipped in space, its input and output channels swapped within each group."""
        ns, g = self.num_spatial, self.feature_group_count
        if self.taps == 1 and g == 1:
            # as a matrix, so that XLA folds the swap into the GEMM that reads it: with unit
            # axes it copied the kernel (ResNet-50's training step held 47 MB of temporaries
            # against 41 without)
            swapped = w.reshape(self.group_in_features, self.group_out_features).T
            return swapped.reshape(*self.window, self.group_out_features, self.group_in_features)
        wg = w.reshape(*self.window, self.group_in_features, g, self.group_out_features)
        wg = wg[(slice(None, None, -1),) * ns]
        wg = wg.transpose(*range(ns), ns + 2, ns + 1, ns)
        return wg.reshape(*self.window, self.group_out_features, g * self.group_in_features)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the dense definition (every tap, padding included)."""
        return math.prod(self.canonical_out_shape) * self.taps * self.group_in_features


@functools.lru_cache(maxsize=4096)
def _input_gradient(spec: ConvSpec) -> ConvSpec:
    """`ConvSpec.input_gradient`, parsed once per spec (the planner, the tuner and the
    engine all ask for it)."""
    pads = [adjoint_padding(k, pad, p - ((o - 1) * s + k))  # extra: rows past the last window
            for k, p, o, s, pad in zip(spec.effective_window, spec.padded_in, spec.out_spatial,
                                       spec.window_strides, spec.padding, strict=True)]
    g = spec.feature_group_count
    return ConvSpec.from_lax(
        spec.canonical_out_shape,
        (*spec.window, spec.group_out_features, g * spec.group_in_features),
        spec.lhs_dilation, pads, spec.window_strides, spec.rhs_dilation,
        canonical_layouts(spec.num_spatial), g,
    )


def _parse_pairs(padding: Any, n: int) -> tuple[tuple[int, int], ...]:
    msg = (  # ending in lax's wording ("padding argument ..., got ..."), so its patterns match
        f"`padding` (={padding!r}) must be 'SAME', 'SAME_LOWER', 'VALID' or a sequence of "
        f"{n} (low, high) integer pairs, one per spatial dimension (the padding argument, got "
        f"{padding!r})."
    )
    padding = listify(padding)
    if not isinstance(padding, Sequence):
        raise ConvArgumentError(msg)
    if len(padding) != n:
        raise ConvArgumentError(msg + f" Got {len(padding)} entries.")
    pairs = []
    for i, pair in enumerate(padding):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ConvArgumentError(msg + f" Entry {i} is {pair!r}.")
        try:
            pairs.append((as_int(f"padding[{i}][0]", pair[0]),
                          as_int(f"padding[{i}][1]", pair[1])))
        except TypeError as e:
            raise ConvArgumentError(str(e)) from e
    return tuple(pairs)
