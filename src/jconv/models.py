"""Layer lists of well-known networks, walked layer by layer into shapes, parameters and MACs.

`jconv.models` is a public module: its names are those in ``__all__``. Plain Python, no
arrays: every convolution is turned into the exact `ConvSpec` the engine would run (channels-
last input, ``(*window, C_in / groups, C_out)`` kernel), so shapes come from the same geometry
as the numeric engine. Each layer kind walks itself (``infos``) and says how one of its
output values is formed (``rule``).

Counting conventions (used by `Network.walk`, `Network.params`, `Network.macs`):

- parameters: conv and dense weights, their biases when ``bias=True``, batch-norm ``gamma``
  and ``beta`` (2 per channel, trainable); batch-norm running mean and variance (2 per
  channel) only with ``params(trainable_only=False)``;
- MACs: multiply-accumulates of conv and dense layers in the dense convention (every kernel
  tap, padding included, ``prod(out) * prod(window) * C_in / groups`` per output feature);
  bias adds, batch norm, activations, pooling and residual adds are not counted.

>>> net = MODELS["lenet5"]()
>>> net.params(), net.macs()
(61706, 416520)
>>> [info.out_shape for info in net.walk(batch=8)][:3]
[(8, 28, 28, 6), (8, 28, 28, 6), (8, 14, 14, 6)]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._args import int_tuple
from ._spec import ConvSpec, canonical_layouts

__all__ = [
    "MODELS",
    "PUBLISHED",
    "Add",
    "BatchNorm",
    "Concat",
    "Conv",
    "ConvTranspose",
    "Dense",
    "Depthwise",
    "Flatten",
    "GlobalPool",
    "Layer",
    "LayerInfo",
    "Mark",
    "Network",
    "Pool",
    "ReLU",
    "Residual",
    "Separable",
    "Upsample",
    "lenet5",
    "mobilenet_v1",
    "resnet20",
    "resnet50",
    "vgg16",
]

IntOrTuple = int | tuple[int, ...]
PaddingArg = str | int | tuple[Any, ...]
Shape = tuple[int, ...]
Rule = tuple[str, str | None]


# ----------------------------------------------------------------------------- validators
def _check_int(layer: str, field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{layer}.{field}` (={value!r}) must be an integer >= {minimum}.")


def _check_ints(layer: str, field: str, value: Any, minimum: int) -> None:
    items = value if isinstance(value, tuple) else (value,)
    if not items:
        raise ValueError(f"`{layer}.{field}` (={value!r}) must not be empty.")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(
                f"`{layer}.{field}` (={value!r}) must be an integer >= {minimum} or a tuple "
                "of them."
            )


def _check_padding(layer: str, value: Any) -> None:
    if isinstance(value, str):
        if value.upper() not in ("SAME", "SAME_LOWER", "VALID"):
            raise ValueError(
                f"`{layer}.padding` (={value!r}) must be 'SAME', 'SAME_LOWER', 'VALID', an int, "
                "a tuple of ints or a tuple of (low, high) pairs."
            )
        return
    flat = value if isinstance(value, tuple) else (value,)
    ok = all(
        (isinstance(p, int) and not isinstance(p, bool) and p >= 0)
        or (
            isinstance(p, tuple)
            and len(p) == 2
            and all(isinstance(q, int) and not isinstance(q, bool) and q >= 0 for q in p)
        )
        for p in flat
    )
    if not ok or not flat:
        raise ValueError(
            f"`{layer}.padding` (={value!r}) must be 'SAME', 'SAME_LOWER', 'VALID', an int >= 0, "
            "a tuple of them or a tuple of (low, high) pairs."
        )


def _check_name(layer: str, name: Any) -> None:
    if not isinstance(name, str):
        raise ValueError(f"`{layer}.name` (={name!r}) must be a string.")


# ----------------------------------------------------------------------------- geometry
def _lax_padding(padding: PaddingArg, n: int, what: str) -> Any:
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding),) * n
    if len(padding) != n:
        raise ValueError(
            f"`{what}` (={padding!r}) must have one entry per spatial dimension (={n})."
        )
    return tuple((p, p) if isinstance(p, int) else p for p in padding)


def _conv_spec(
    shape: Shape, kernel: IntOrTuple, filters: int, stride: IntOrTuple, padding: PaddingArg,
    dilation: IntOrTuple, groups: int, what: str,
) -> ConvSpec:
    """The ConvSpec of a conv on input ``(N, *spatial, C)``; errors name the layer `what`."""
    n = len(shape) - 2
    if not 1 <= n <= 3:
        raise ValueError(f"`{what}`: input shape {shape} must have 1 to 3 spatial dimensions.")
    c = shape[-1]
    if c % groups:
        raise ValueError(
            f"`{what}.groups` (={groups}) must divide the input channels (={c})."
        )

    def per_dim(value: IntOrTuple, arg: str) -> tuple[int, ...]:
        return int_tuple(f"{what}.{arg}", value, n, minimum=1, broadcast=True)

    window = per_dim(kernel, "kernel")
    try:
        return ConvSpec.from_lax(
            shape, (*window, c // groups, filters), per_dim(stride, "stride"),
            _lax_padding(padding, n, f"{what}.padding"),
            rhs_dilation=per_dim(dilation, "dilation"),
            dimension_numbers=canonical_layouts(n), feature_group_count=groups,
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{what}` on input {shape}: {e}") from e


def _depthwise_spec(
    shape: Shape, kernel: IntOrTuple, multiplier: int, stride: IntOrTuple, padding: PaddingArg,
    dilation: IntOrTuple, what: str,
) -> ConvSpec:
    """One group per input channel, `multiplier` filters each."""
    c = shape[-1]
    return _conv_spec(shape, kernel, c * multiplier, stride, padding, dilation, c, what)


def _conv_info(name: str, kind: str, spec: ConvSpec, bias: bool, layer: Layer) -> LayerInfo:
    return LayerInfo(
        name=name, kind=kind, in_shape=spec.lhs_shape, out_shape=spec.out_shape,
        kernel_shape=spec.rhs_shape, weights=math.prod(spec.rhs_shape),
        biases=spec.out_features if bias else 0, bn_params=0, bn_stats=0, macs=spec.macs,
        spec=spec, groups=spec.feature_group_count, layer=layer,
    )


def _plain(name: str, kind: str, in_shape: Shape, out_shape: Shape, layer: Layer,
           bn: int = 0) -> tuple[list[LayerInfo], Shape]:
    """A layer without weights (batch norm: `bn` parameters and as many statistics)."""
    info = LayerInfo(
        name=name, kind=kind, in_shape=in_shape, out_shape=out_shape, kernel_shape=None,
        weights=0, biases=0, bn_params=bn, bn_stats=bn, macs=0, spec=None, groups=1,
        layer=layer,
    )
    return [info], out_shape


def _flat(shape: Shape) -> Shape:
    """``(N, *S, C) -> (N, prod(S) * C)``."""
    return (shape[0], math.prod(shape[1:]))


# ----------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class Conv:
    """Convolution with `filters` output maps; each **sums** its ``C_in / groups`` channels."""

    filters: int
    kernel: IntOrTuple
    stride: IntOrTuple = 1
    padding: PaddingArg = "SAME"
    dilation: IntOrTuple = 1
    groups: int = 1
    bias: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        _check_int("Conv", "filters", self.filters, 1)
        _check_ints("Conv", "kernel", self.kernel, 1)
        _check_ints("Conv", "stride", self.stride, 1)
        _check_padding("Conv", self.padding)
        _check_ints("Conv", "dilation", self.dilation, 1)
        _check_int("Conv", "groups", self.groups, 1)
        _check_name("Conv", self.name)
        if self.filters % self.groups:
            raise ValueError(
                f"`Conv.filters` (={self.filters}) must be divisible by `Conv.groups` "
                f"(={self.groups})."
            )

    def spec(self, shape: Shape) -> ConvSpec:
        """The conv on an input of shape ``(N, *spatial, C)``."""
        return _conv_spec(shape, self.kernel, self.filters, self.stride, self.padding,
                          self.dilation, self.groups, "Conv")

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """One "conv" entry on input `shape`, and the output shape."""
        info = _conv_info(name, "conv", self.spec(shape), self.bias, self)
        return [info], info.out_shape

    def rule(self, info: LayerInfo) -> Rule:
        """How one output map is formed, in words, and its einsum."""
        return _conv_rule(info)


@dataclass(frozen=True)
class Depthwise:
    """Depthwise convolution: ``groups = C_in``, ``filters = C_in * multiplier``."""

    kernel: IntOrTuple
    multiplier: int = 1
    stride: IntOrTuple = 1
    padding: PaddingArg = "SAME"
    dilation: IntOrTuple = 1
    bias: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        _check_ints("Depthwise", "kernel", self.kernel, 1)
        _check_int("Depthwise", "multiplier", self.multiplier, 1)
        _check_ints("Depthwise", "stride", self.stride, 1)
        _check_padding("Depthwise", self.padding)
        _check_ints("Depthwise", "dilation", self.dilation, 1)
        _check_name("Depthwise", self.name)

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """One "depthwise" entry on input `shape`, and the output shape."""
        spec = _depthwise_spec(shape, self.kernel, self.multiplier, self.stride, self.padding,
                               self.dilation, "Depthwise")
        info = _conv_info(name, "depthwise", spec, self.bias, self)
        return [info], info.out_shape

    def rule(self, info: LayerInfo) -> Rule:
        """How one output map is formed, in words, and its einsum."""
        return _conv_rule(info)


@dataclass(frozen=True)
class Separable:
    """Depthwise then 1x1 pointwise conv; the bias sits on the pointwise conv only (Keras)."""

    filters: int
    kernel: IntOrTuple
    multiplier: int = 1
    stride: IntOrTuple = 1
    padding: PaddingArg = "SAME"
    bias: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        _check_int("Separable", "filters", self.filters, 1)
        _check_ints("Separable", "kernel", self.kernel, 1)
        _check_int("Separable", "multiplier", self.multiplier, 1)
        _check_ints("Separable", "stride", self.stride, 1)
        _check_padding("Separable", self.padding)
        _check_name("Separable", self.name)

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """Entries ``name/dw`` ("depthwise", no bias) and ``name/pw`` ("conv"), output shape."""
        dw = _depthwise_spec(shape, self.kernel, self.multiplier, self.stride, self.padding, 1,
                             "Separable")
        pw = _conv_spec(dw.out_shape, 1, self.filters, 1, "VALID", 1, 1, "Separable")
        return [_conv_info(name + "/dw", "depthwise", dw, False, self),
                _conv_info(name + "/pw", "conv", pw, self.bias, self)], pw.out_shape

    def rule(self, info: LayerInfo) -> Rule:
        """How one output map of either half is formed, in words, and its einsum."""
        return _conv_rule(info)


@dataclass(frozen=True)
class Pool:
    """Max or average pooling over `window` (stride defaults to the window); no parameters."""

    kind: Literal["max", "avg"]
    window: IntOrTuple
    stride: IntOrTuple | None = None
    padding: PaddingArg = "VALID"
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("max", "avg"):
            raise ValueError(f"`Pool.kind` (={self.kind!r}) must be 'max' or 'avg'.")
        _check_ints("Pool", "window", self.window, 1)
        if self.stride is not None:
            _check_ints("Pool", "stride", self.stride, 1)
        _check_padding("Pool", self.padding)
        _check_name("Pool", self.name)

    def spec(self, shape: Shape) -> ConvSpec:
        """The depthwise conv (one filter per channel) whose window, strides and padding the
        pool slides over an input of shape ``(N, *spatial, C)``."""
        stride = self.window if self.stride is None else self.stride
        return _depthwise_spec(shape, self.window, 1, stride, self.padding, 1, "Pool")

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """One "pool" entry on input `shape`, and the output shape."""
        return _plain(name, "pool", shape, self.spec(shape).out_shape, self)

    def rule(self, info: LayerInfo) -> Rule:
        """How one output value is formed, in words (no einsum)."""
        return "pooled per channel over its window, no mixing of channels", None


@dataclass(frozen=True)
class GlobalPool:
    """Pool every spatial position of each channel to one value: ``(N, *S, C) -> (N, C)``."""

    kind: Literal["avg", "max"] = "avg"
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("max", "avg"):
            raise ValueError(f"`GlobalPool.kind` (={self.kind!r}) must be 'avg' or 'max'.")
        _check_name("GlobalPool", self.name)

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """One "globalpool" entry on input `shape`, and the output shape ``(N, C)``."""
        if len(shape) < 3:
            raise ValueError(f"`GlobalPool` needs a spatial input, got shape {shape}.")
        return _plain(name, "globalpool", shape, (shape[0], shape[-1]), self)

    def rule(self, info: LayerInfo) -> Rule:
        """How one output value is formed, in words (no einsum)."""
        return "each channel pooled to one value", None


@dataclass(frozen=True)
class Dense:
    """Fully connected layer ``(N, D) -> (N, units)``; a spatial input is flattened first."""

    units: int
    bias: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        _check_int("Dense", "units", self.units, 1)
        _check_name("Dense", self.name)

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """One "dense" entry on the flattened input ``(N, D)``, and the output shape."""
        (n, d), u = _flat(shape), self.units
        info = LayerInfo(
            name=name, kind="dense", in_shape=(n, d), out_shape=(n, u), kernel_shape=(d, u),
            weights=d * u, biases=u if self.bias else 0, bn_params=0, bn_stats=0,
            macs=n * d * u, spec=None, groups=1, layer=self,
        )
        return [info], info.out_shape

    def rule(self, info: LayerInfo) -> Rule:
        """How one output value is formed, in words, and its einsum."""
        return f"sum over D_in = {info.in_shape[-1]} inputs", "nd,de->ne"


@dataclass(frozen=True)
class BatchNorm:
    """Batch norm over channels: 2*C trainable (gamma, beta), 2*C running statistics."""

    name: str = ""

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """One "bn" entry on input `shape` (which it keeps)."""
        return _plain(name, "bn", shape, shape, self, bn=2 * shape[-1])

    def rule(self, info: LayerInfo) -> Rule:
        """How one output value is formed, in words (no einsum)."""
        return "per channel: (x - mean) / std * gamma + beta", None


@dataclass(frozen=True)
class ReLU:
    """Parameter-free activation."""

    name: str = ""

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """One "relu" entry on input `shape` (which it keeps)."""
        return _plain(name, "relu", shape, shape, self)

    def rule(self, info: LayerInfo) -> Rule:
        """How one output value is formed, in words (no einsum)."""
        return "elementwise max(x, 0)", None


@dataclass(frozen=True)
class Flatten:
    """``(N, *S, C) -> (N, prod(S) * C)``; also implied before the first Dense."""

    name: str = ""

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """One "flatten" entry on input `shape`, and the output shape ``(N, D)``."""
        return _plain(name, "flatten", shape, _flat(shape), self)

    def rule(self, info: LayerInfo) -> Rule:
        """How the output is formed, in words (no einsum)."""
        return "maps laid end to end", None


@dataclass(frozen=True)
class Residual:
    """``out = main(x) + shortcut(x)``; an empty shortcut is the identity."""

    main: tuple[Layer, ...]
    shortcut: tuple[Layer, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        for field_name in ("main", "shortcut"):
            value = getattr(self, field_name)
            if not isinstance(value, tuple) or not all(isinstance(v, Layer) for v in value):
                raise ValueError(
                    f"`Residual.{field_name}` (={value!r}) must be a tuple of layers."
                )
        if not self.main:
            raise ValueError("`Residual.main` (=()) must hold at least one layer.")
        _check_name("Residual", self.name)

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """The main branch's entries (prefix ``name/main/``), the shortcut's
        (``name/shortcut/``), then one "add" entry ``name/add``; and the output shape."""
        main, out = _walk(self.main, shape, name + "/main/")
        short, short_out = _walk(self.shortcut, shape, name + "/shortcut/")
        if out != short_out:
            raise ValueError(
                f"`Residual` {name!r}: main branch output {out} and shortcut output "
                f"{short_out} must have the same shape."
            )
        add, _ = _plain(name + "/add", "add", out, out, self)
        return [*main, *short, *add], out

    def rule(self, info: LayerInfo) -> Rule:
        """How one output value of the add is formed, in words (no einsum)."""
        return "main branch + shortcut, map by map", None


@dataclass(frozen=True)
class ConvTranspose:
    """Transposed conv (PyTorch's convention): ``out = (i - 1)*s - 2p + d*(k - 1) + a + 1``.

    Walked as the convolution it is: the input lhs-dilated by the stride, padded by
    ``d*(k - 1) - p`` (plus ``a`` on the high side), stride 1; each output map the **sum**
    over the C_in channels, as for any conv."""

    filters: int
    kernel: IntOrTuple
    stride: IntOrTuple = 1
    padding: IntOrTuple = 0
    output_padding: IntOrTuple = 0
    dilation: IntOrTuple = 1
    bias: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        _check_int("ConvTranspose", "filters", self.filters, 1)
        _check_ints("ConvTranspose", "kernel", self.kernel, 1)
        _check_ints("ConvTranspose", "stride", self.stride, 1)
        _check_ints("ConvTranspose", "padding", self.padding, 0)
        _check_ints("ConvTranspose", "output_padding", self.output_padding, 0)
        _check_ints("ConvTranspose", "dilation", self.dilation, 1)
        _check_name("ConvTranspose", self.name)

    def spec(self, shape: Shape) -> ConvSpec:
        """The lhs-dilated conv on an input ``(N, *spatial, C)``."""
        n = len(shape) - 2
        if not 1 <= n <= 3:
            raise ValueError(f"`ConvTranspose`: input shape {shape} must have 1 to 3 spatial "
                             "dimensions.")

        def per_dim(value: IntOrTuple, arg: str, low: int) -> tuple[int, ...]:
            return int_tuple(f"ConvTranspose.{arg}", value, n, minimum=low, broadcast=True)

        k, s = per_dim(self.kernel, "kernel", 1), per_dim(self.stride, "stride", 1)
        p, a = per_dim(self.padding, "padding", 0), per_dim(self.output_padding,
                                                            "output_padding", 0)
        d = per_dim(self.dilation, "dilation", 1)
        pads = tuple((di * (ki - 1) - pi, di * (ki - 1) - pi + ai)
                     for ki, pi, ai, di in zip(k, p, a, d, strict=True))
        if any(lo < 0 for lo, _ in pads):
            raise ValueError(f"`ConvTranspose.padding` (={self.padding!r}) must be at most "
                             "d*(k - 1) per dimension.")
        try:
            return ConvSpec.from_lax(shape, (*k, shape[-1], self.filters), (1,) * n, pads, s, d,
                                     canonical_layouts(n))
        except (TypeError, ValueError) as e:
            raise ValueError(f"`ConvTranspose` on input {shape}: {e}") from e

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """One "conv_transpose" entry on input `shape`, and the output shape."""
        info = _conv_info(name, "conv_transpose", self.spec(shape), self.bias, self)
        return [info], info.out_shape

    def rule(self, info: LayerInfo) -> Rule:
        """How one output map is formed, in words, and its einsum."""
        return _conv_rule(info)


@dataclass(frozen=True)
class Upsample:
    """Nearest-neighbour upsampling by `factor` per spatial dimension; no parameters."""

    factor: IntOrTuple = 2
    name: str = ""

    def __post_init__(self) -> None:
        _check_ints("Upsample", "factor", self.factor, 1)
        _check_name("Upsample", self.name)

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """One "upsample" entry, and the output shape (spatial sizes times the factor)."""
        n = len(shape) - 2
        f = int_tuple("Upsample.factor", self.factor, n, minimum=1, broadcast=True)
        out = (shape[0], *(i * fi for i, fi in zip(shape[1:-1], f, strict=True)), shape[-1])
        return _plain(name, "upsample", shape, out, self)

    def rule(self, info: LayerInfo) -> Rule:
        """How one output value is formed, in words (no einsum)."""
        return "copy of the nearest input value, per channel", None


@dataclass(frozen=True)
class Mark:
    """Remember the current tensor as `name` for a later `Add` or `Concat` (no entry)."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"`Mark.name` (={self.name!r}) must be a non-empty string.")

    def infos(self, shape: Shape, name: str) -> tuple[list[LayerInfo], Shape]:
        """No entry; the shape is unchanged (`_walk` remembers it)."""
        return [], shape

    def rule(self, info: LayerInfo) -> Rule:
        return "remembered for a later add or concat", None


@dataclass(frozen=True)
class Add:
    """``out = x + marked`` (a residual connection to the tensor marked `source`)."""

    source: str
    name: str = ""

    def infos(self, shape: Shape, name: str, marked: Shape | None = None
              ) -> tuple[list[LayerInfo], Shape]:
        """One "add" entry; `marked` (the source's shape) must equal `shape`."""
        if marked is not None and marked != shape:
            raise ValueError(f"`Add` {self.source!r}: the marked tensor {marked} and the "
                             f"current one {shape} must have the same shape.")
        return _plain(name, "add", shape, shape, self)

    def rule(self, info: LayerInfo) -> Rule:
        return "current map + the marked map, map by map", None


@dataclass(frozen=True)
class Concat:
    """Concatenate the tensor marked `source` to the current one along the channels."""

    source: str
    name: str = ""

    def infos(self, shape: Shape, name: str, marked: Shape | None = None
              ) -> tuple[list[LayerInfo], Shape]:
        """One "concat" entry; the spatial sizes must match; channels add up."""
        marked = shape if marked is None else marked
        if marked[:-1] != shape[:-1]:
            raise ValueError(f"`Concat` {self.source!r}: the marked tensor {marked} and the "
                             f"current one {shape} must have the same spatial sizes.")
        return _plain(name, "concat", shape, (*shape[:-1], shape[-1] + marked[-1]), self)

    def rule(self, info: LayerInfo) -> Rule:
        return "the marked maps appended to the current ones (no mixing)", None


Layer = (
    Conv | Depthwise | Separable | Pool | GlobalPool | Dense | BatchNorm | ReLU | Flatten | Residual
    | ConvTranspose | Upsample | Mark | Add | Concat
)


@dataclass(frozen=True)
class LayerInfo:
    """One walked layer: shapes ``(N, *spatial, C)`` (or ``(N, D)``), counts, its ConvSpec
    (conv and depthwise entries only) and the `layer` that produced it (a Separable for both
    its halves, the Residual for its add)."""

    name: str
    kind: str
    in_shape: Shape
    out_shape: Shape
    kernel_shape: Shape | None
    weights: int
    biases: int
    bn_params: int
    bn_stats: int
    macs: int
    spec: ConvSpec | None
    groups: int
    layer: Layer = field(repr=False)

    @property
    def params(self) -> int:
        """Trainable parameters: weights + biases + batch-norm gamma and beta."""
        return self.weights + self.biases + self.bn_params

    def rule(self) -> Rule:
        """How one output value is formed, in words, and the einsum that forms it (or None).

        >>> Network("n", (28, 28, 1), (Conv(10, 3),)).walk()[0].rule()
        ('sum over C_in = 1 per-channel correlations', 'nyxijc,ijcf->nyxf')
        """
        return self.layer.rule(self)


def _conv_rule(info: LayerInfo) -> Rule:
    """How a conv entry forms one output map, in words, and its einsum (output positions
    ``zyx``, kernel offsets ``ijk``)."""
    spec = info.spec
    if spec is None:
        raise ValueError(f"`info` (={info.name!r}, kind {info.kind!r}) is not a conv entry.")
    n = spec.num_spatial  # 1 to 3 (`_conv_spec`)
    sp, ks = "zyx"[3 - n:], "ijk"[:n]
    c, g, cg = spec.in_features, spec.feature_group_count, spec.group_in_features
    if g == 1:
        return f"sum over C_in = {c} per-channel correlations", f"n{sp}{ks}c,{ks}cf->n{sp}f"
    if cg == 1:
        m = spec.group_out_features
        return (f"1 per-channel correlation (depthwise, C_in = {c}, m = {m}), no sum",
                f"n{sp}{ks}c,{ks}cm->n{sp}cm")
    return (f"sum over C_in/g = {cg} per-channel correlations (g = {g} groups)",
            f"n{sp}{ks}gc,{ks}gcf->n{sp}gf")


# ----------------------------------------------------------------------------- walking
def _walk(layers: Sequence[Layer], shape: Shape, prefix: str) -> tuple[list[LayerInfo], Shape]:
    """Every layer's entries in order, named `prefix` + the layer's name (or its kind and
    index), and the output shape."""
    out: list[LayerInfo] = []
    marks: dict[str, Shape] = {}
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise ValueError(f"`layers[{i}]` (={layer!r}) is not a jconv.models layer.")
        if isinstance(layer, Mark):
            marks[layer.name] = shape
            continue
        name = layer.name or f"{type(layer).__name__.lower()}{i}"
        if isinstance(layer, Add | Concat):
            if layer.source not in marks:
                raise ValueError(f"`{type(layer).__name__}` {layer.source!r}: no tensor was "
                                 f"marked {layer.source!r} before it (known: "
                                 f"{', '.join(marks) or 'none'}).")
            infos, shape = layer.infos(shape, prefix + name, marks[layer.source])
        else:
            infos, shape = layer.infos(shape, prefix + name)
        out += infos
    return out, shape


@dataclass(frozen=True)
class Network:
    """A named layer list on an input of shape ``(*spatial, C)`` (no batch)."""

    name: str
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.input_shape, tuple) or len(self.input_shape) < 2 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.input_shape
        ):
            raise ValueError(
                f"`Network.input_shape` (={self.input_shape!r}) must be a tuple "
                "(*spatial, C) of positive integers."
            )

    def walk(self, batch: int = 1) -> list[LayerInfo]:
        """Flattened per-layer info, residual branches included, one "add" per Residual."""
        _check_int("Network.walk", "batch", batch, 1)
        return _walk(self.layers, (batch, *self.input_shape), "")[0]

    def params(self, *, trainable_only: bool = True) -> int:
        """Weights + biases + BN gamma/beta; BN running statistics too if not trainable_only."""
        infos = self.walk()
        stats = 0 if trainable_only else sum(i.bn_stats for i in infos)
        return sum(i.params for i in infos) + stats

    def macs(self, batch: int = 1) -> int:
        """Dense-convention multiply-accumulates of all conv and dense layers."""
        return sum(i.macs for i in self.walk(batch))


# ----------------------------------------------------------------------------- networks
def lenet5() -> Network:
    """LeNet-5 on 32x32x1 with dense C3, parameter-free average pooling and a Dense(10) output.

    Differs from LeCun et al. (1998) in C3 (all 6 input maps, not the connection table),
    S2/S4 (no trainable coefficient and bias) and the output (Dense, not RBF units).
    """
    return Network("lenet5", (32, 32, 1), (
        Conv(6, 5, padding="VALID", name="c1"), ReLU(), Pool("avg", 2, name="s2"),
        Conv(16, 5, padding="VALID", name="c3"), ReLU(), Pool("avg", 2, name="s4"),
        Flatten(), Dense(120, name="c5"), ReLU(), Dense(84, name="f6"), ReLU(),
        Dense(10, name="output"),
    ))


def vgg16() -> Network:
    """VGG-16 (configuration D) on 224x224x3 as in torchvision: conv biases, no batch norm."""
    layers: list[Layer] = []
    for stage, (width, depth) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        for j in range(depth):
            layers += [Conv(width, 3, padding=1, name=f"conv{stage + 1}_{j + 1}"), ReLU()]
        layers.append(Pool("max", 2, name=f"pool{stage + 1}"))
    layers += [Flatten(), Dense(4096, name="fc6"), ReLU(), Dense(4096, name="fc7"), ReLU(),
               Dense(1000, name="fc8")]
    return Network("vgg16", (224, 224, 3), tuple(layers))


def _basic(width: int, stride: int, project: bool, name: str) -> Residual:
    main: tuple[Layer, ...] = (
        Conv(width, 3, stride=stride, padding=1, bias=False, name="conv1"), BatchNorm("bn1"),
        ReLU(),
        Conv(width, 3, padding=1, bias=False, name="conv2"), BatchNorm("bn2"),
    )
    shortcut: tuple[Layer, ...] = (
        (Conv(width, 1, stride=stride, padding=0, bias=False, name="downsample"),
         BatchNorm("downsample_bn")) if project else ()
    )
    return Residual(main, shortcut, name=name)


def resnet20() -> Network:
    """ResNet-20 for CIFAR-10 on 32x32x3 (He et al. 2016, Sec. 4.2, n = 3): a 3x3 stem of 16
    filters, three stages of three basic blocks at 16, 32 and 64 filters (stride 2 on the
    first conv of stages 2 and 3), global average pooling, Dense(10); BN after every conv,
    1x1 projection shortcuts where the shape changes (the paper's option B)."""
    layers: list[Layer] = [
        Conv(16, 3, padding=1, bias=False, name="conv1"), BatchNorm("bn1"), ReLU(),
    ]
    for stage, (width, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
        for b in range(3):
            layers += [_basic(width, stride if b == 0 else 1, b == 0 and stride != 1,
                              f"layer{stage + 1}.{b}"), ReLU()]
    layers += [GlobalPool("avg", name="avgpool"), Dense(10, name="fc")]
    return Network("resnet20", (32, 32, 3), tuple(layers))


def _bottleneck(width: int, stride: int, project: bool, name: str) -> Residual:
    main: tuple[Layer, ...] = (
        Conv(width, 1, padding=0, bias=False, name="conv1"), BatchNorm("bn1"), ReLU(),
        Conv(width, 3, stride=stride, padding=1, bias=False, name="conv2"), BatchNorm("bn2"),
        ReLU(),
        Conv(4 * width, 1, padding=0, bias=False, name="conv3"), BatchNorm("bn3"),
    )
    shortcut: tuple[Layer, ...] = (
        (Conv(4 * width, 1, stride=stride, padding=0, bias=False, name="downsample"),
         BatchNorm("downsample_bn")) if project else ()
    )
    return Residual(main, shortcut, name=name)


def resnet50() -> Network:
    """ResNet-50 v1.5 as torchvision builds it: stride 2 on the 3x3 conv of each bottleneck."""
    layers: list[Layer] = [
        Conv(64, 7, stride=2, padding=3, bias=False, name="conv1"), BatchNorm("bn1"), ReLU(),
        Pool("max", 3, stride=2, padding=1, name="maxpool"),
    ]
    for stage, (width, blocks, stride) in enumerate(
        ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
    ):
        for b in range(blocks):
            layers += [_bottleneck(width, stride if b == 0 else 1, b == 0,
                                   f"layer{stage + 1}.{b}"), ReLU()]
    layers += [GlobalPool("avg", name="avgpool"), Dense(1000, name="fc")]
    return Network("resnet50", (224, 224, 3), tuple(layers))


def mobilenet_v1() -> Network:
    """MobileNetV1, width 1.0, 224x224x3 (Howard et al. 2017, Table 1); BN after every conv."""
    layers: list[Layer] = [Conv(32, 3, stride=2, bias=False, name="conv0"), BatchNorm(), ReLU()]
    plan = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5,
            (1024, 2), (1024, 1))
    for i, (filters, stride) in enumerate(plan):
        layers += [
            Depthwise(3, stride=stride, bias=False, name=f"dw{i + 1}"), BatchNorm(), ReLU(),
            Conv(filters, 1, bias=False, name=f"pw{i + 1}"), BatchNorm(), ReLU(),
        ]
    layers += [GlobalPool("avg", name="avgpool"), Dense(1000, name="fc")]
    return Network("mobilenet_v1", (224, 224, 3), tuple(layers))


MODELS: dict[str, Callable[[], Network]] = {
    "lenet5": lenet5,
    "resnet20": resnet20,
    "vgg16": vgg16,
    "resnet50": resnet50,
    "mobilenet_v1": mobilenet_v1,
}

PUBLISHED: dict[str, dict[str, Any]] = {
    "lenet5": {
        "params": 61_706,
        "macs": 416_520,
        "rounding": {"params": 1, "macs": 1},
        "layers": {"c1": {"params": 156, "connections": 122_304},
                   "c5": {"params": 48_120, "connections": 48_120},
                   "f6": {"params": 10_164, "connections": 10_164}},
        "paper": {"params": 60_000, "connections": 340_908,
                  "c3": {"params": 1_516, "connections": 151_600},
                  "s2": {"params": 12, "connections": 5_880},
                  "s4": {"params": 32, "connections": 2_000},
                  "output_rbf": {"params": 0, "connections": 840}},
        "source": "LeCun, Bottou, Bengio, Haffner, 'Gradient-based learning applied to document "
                  "recognition', Proc. IEEE 86(11), 1998, Sec. II-B: C1 156 trainable parameters "
                  "and 122,304 connections, S2 12 / 5,880, C3 1,516 / 151,600, S4 32 / 2,000, "
                  "C5 48,120 connections, F6 10,164 parameters; the whole network 340,908 "
                  "connections and 60,000 trainable parameters (the RBF output is fixed).",
        "convention": "Dense variant: C3 connected to all 6 S2 maps (5*5*6*16 + 16 = 2,416 "
                      "parameters instead of the paper's 1,516 from its connection table), S2/S4 "
                      "parameter-free average pooling (the paper's 12 + 32 coefficients dropped), "
                      "Dense(10) output with bias (850) instead of fixed RBF units. Totals "
                      "156 + 2,416 + 48,120 + 10,164 + 850; MACs of conv and dense layers. A "
                      "paper 'connection' is a MAC or a bias add, so connections = MACs + biases "
                      "* output positions.",
    },
    "resnet20": {
        "params": 270_000,
        "rounding": {"params": 10_000},
        "source": "He, Zhang, Ren, Sun, 'Deep Residual Learning for Image Recognition', CVPR "
                  "2016, Sec. 4.2 and Table 6 (CIFAR-10, n = 3: 20 layers, 0.27M parameters; "
                  "the paper gives no operation count for its CIFAR networks).",
        "convention": "Option B shortcuts (two 1x1 projections and their BN, 2,752 parameters "
                      "that the paper's parameter-free option A lacks: 272,474 here, 269,722 "
                      "with option A, both 0.27M); convs without bias, BN gamma and beta "
                      "counted, Dense(10) with bias. MACs of conv and dense layers at 32x32, "
                      "batch 1: 40,813,184 (not published; checked against PyTorch's counter "
                      "in the tests).",
    },
    "vgg16": {
        "params": 138_357_544,
        "macs": 15_470_000_000,
        "rounding": {"params": 1, "macs": 10_000_000},
        "source": "torchvision.models.vgg16, IMAGENET1K_V1 weights: num_params 138,357,544, "
                  "GFLOPS 15.47 (torchvision model documentation; torchvision counts MACs and "
                  "calls them FLOPs).",
        "convention": "Conv and FC weights and biases, no batch norm; MACs of conv and FC layers "
                      "at 224x224, batch 1; exact count 15,470,264,320.",
    },
    "resnet50": {
        "params": 25_557_032,
        "macs": 4_090_000_000,
        "rounding": {"params": 1, "macs": 10_000_000},
        "source": "torchvision.models.resnet50, IMAGENET1K_V1/V2 weights: num_params "
                  "25,557,032, GFLOPS 4.09 (torchvision model documentation; MACs).",
        "convention": "v1.5 (stride on the 3x3 conv), convs without bias, BN gamma and beta "
                      "counted (running statistics not: 53,120 more), FC with bias; MACs of conv "
                      "and FC layers at 224x224, batch 1; exact count 4,089,184,256.",
    },
    "mobilenet_v1": {
        "params": 4_200_000,
        "macs": 569_000_000,
        "rounding": {"params": 100_000, "macs": 1_000_000},
        "source": "Howard et al., 'MobileNets: Efficient Convolutional Neural Networks for "
                  "Mobile Vision Applications', arXiv:1704.04861, 2017, Table 8 (1.0 "
                  "MobileNet-224: 569 million mult-adds, 4.2 million parameters).",
        "convention": "Width 1.0, resolution 224, 1000 classes; convs without bias, BN gamma and "
                      "beta counted (4,231,976; without them 4,210,088, both 4.2M), FC with "
                      "bias; mult-adds of conv and FC layers (exact 568,740,352, of which FC "
                      "1,024,000).",
    },
}
