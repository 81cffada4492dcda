"""The compact grammar of `jconv explain --input/--layer`, parsed into `jconv.models` layers.

Grammar (one ``--layer`` per layer, in order; sizes are ``3`` or ``3x5``, one per spatial dim)::

    conv:F[,k=3][,s=1][,p=same][,d=1][,g=1][,bias=1]   standard conv with F filters
    dw[:k=3][,s=1][,m=1][,p=same][,d=1][,bias=1]        depthwise, channel multiplier m
    sep:F[,k=3][,s=1][,m=1][,p=same][,bias=1]           depthwise then 1x1 pointwise to F
    pool:max|avg[,k=2][,s=k][,p=valid]                  max or average pooling
    gap[:avg|max]                                       global pooling, one value per channel
    dense:U[,bias=1]                                    fully connected, U units
    bn | relu | flatten                                 batch norm, ReLU, flatten

Padding ``p`` is ``same``, ``same_lower``, ``valid``, an int (both sides) or one int per dim
(``1x2``). Long key names (kernel, stride, padding, dilation, groups, multiplier) are
accepted too. An input is ``HxWxC`` (any number of spatial sizes, channels last).
Every malformed token raises `GrammarError`, which names the token and shows a correct
example.

>>> parse_layer("conv:64,k=3,s=2")
Conv(filters=64, kernel=3, stride=2, padding='SAME', dilation=1, groups=1, bias=True, name='')
>>> parse_input("224x224x3")
(224, 224, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from . import models

__all__ = ["GRAMMAR_HELP", "KINDS", "GrammarError", "Kind", "parse_input", "parse_layer"]


class GrammarError(ValueError):
    """A malformed ``--layer``/``--input`` text: `token` is the offending part of `text`,
    `rule` what it breaks, `example` a correct one."""

    def __init__(self, text: str, token: str, rule: str, example: str) -> None:
        self.text, self.token, self.rule, self.example = text, token, rule, example
        super().__init__(f"{text!r}: {token!r} {rule} (example: {example})")


@dataclass(frozen=True)
class Kind:
    """One layer kind: its positional argument, allowed keys and a correct example."""

    positional: str | None  # what a first item without "=" names: "filters", "pool", ...
    required: bool
    keys: frozenset[str]
    example: str


KINDS: dict[str, Kind] = {
    "conv": Kind("filters", True, frozenset("kspdg") | {"bias"}, "conv:64,k=3,s=1,p=same,d=1,g=1"),
    "dw": Kind(None, False, frozenset("kspdm") | {"bias"}, "dw:k=3,s=1,m=1"),
    "sep": Kind("filters", True, frozenset("kspm") | {"bias"}, "sep:128,k=3,s=1"),
    "pool": Kind("pool", True, frozenset("ksp"), "pool:max,k=2,s=2"),
    "gap": Kind("gap", False, frozenset(), "gap  or  gap:max"),
    "dense": Kind("units", True, frozenset({"bias"}), "dense:10"),
    "convt": Kind("filters", True, frozenset("kspd") | {"a", "bias"},
                  "convT:64,k=2,s=2"),
    "up": Kind("factor", False, frozenset(), "up:2"),
    "mark": Kind("name", True, frozenset(), "mark:a"),
    "add": Kind("name", True, frozenset(), "add:a"),
    "concat": Kind("name", True, frozenset(), "concat:a"),
    "bn": Kind(None, False, frozenset(), "bn"),
    "relu": Kind(None, False, frozenset(), "relu"),
    "flatten": Kind(None, False, frozenset(), "flatten"),
}

_LONG_KEYS = {
    "kernel": "k", "stride": "s", "padding": "p", "dilation": "d", "groups": "g",
    "multiplier": "m",
}
_KEY_RULES = {
    "a": "output padding",
    "k": "kernel size", "s": "stride", "d": "dilation", "g": "groups", "m": "channel multiplier",
}
_PAD_WORDS = {"same": "SAME", "same_lower": "SAME_LOWER", "valid": "VALID"}
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}

GRAMMAR_HELP = """layer grammar (repeat --layer, in order; sizes are 3 or 3x5, one per spatial dim):
  conv:F[,k=3][,s=1][,p=same][,d=1][,g=1][,bias=1]  conv with F filters (g: feature groups)
  dw[:k=3][,s=1][,m=1][,p=same][,d=1][,bias=1]       depthwise (groups = C_in), multiplier m
  sep:F[,k=3][,s=1][,m=1][,p=same][,bias=1]          depthwise, then 1x1 pointwise to F maps
  pool:max|avg[,k=2][,s=k][,p=valid]                 pooling window k, stride s
  gap[:avg|max]                                      global pooling: one value per channel
  dense:U[,bias=1]                                   fully connected with U units
  convT:F[,k=2][,s=2][,p=0][,a=0][,d=1][,bias=1]    transposed conv (PyTorch sizes:
                                                     (i-1)*s - 2p + d*(k-1) + a + 1)
  up[:2]                                             nearest upsampling by a factor
  mark:NAME                                          remember the current tensor as NAME
  add:NAME | concat:NAME                             add NAME (residual) or append its maps
  bn | relu | flatten                                batch norm, ReLU, flatten
  p is same | same_lower | valid | INT | INTxINT (symmetric pads per dim; convT: INT)
graphs: a ResNet basic block
  --layer mark:in --layer conv:64 --layer bn --layer relu --layer conv:64 --layer bn
  --layer add:in --layer relu
a U-Net level: --layer conv:32 --layer mark:skip --layer pool:max,k=2 --layer conv:64
  --layer convT:32,k=2,s=2 --layer concat:skip --layer conv:32   (or up:2 for convT)"""


def parse_input(text: str) -> tuple[int, ...]:
    """``"224x224x3"`` -> ``(224, 224, 3)``: spatial sizes then channels, all >= 1."""
    example = "--input 224x224x3"
    parts = text.strip().lower().split("x")
    if len(parts) < 2:
        raise GrammarError(text, text, "needs spatial sizes and channels, HxWxC", example)
    return tuple(_positive(text, p, "input size", example) for p in parts)


def parse_layer(text: str) -> models.Layer:
    """One ``--layer`` text -> the matching `jconv.models` layer (Conv, Depthwise, ...)."""
    head, _, rest = text.strip().partition(":")
    name = head.strip().lower()
    name = {"conv_t": "convt", "convtranspose": "convt"}.get(name, name)
    if name not in KINDS:
        raise GrammarError(
            text, head, f"is not a layer kind; use one of {', '.join(KINDS)}",
            KINDS["conv"].example,
        )
    kind = KINDS[name]
    items = [t.strip() for t in rest.split(",")] if rest.strip() else []
    if rest and not rest.strip():
        raise GrammarError(text, text, "has nothing after ':'", kind.example)
    positional: str | None = None
    opts: dict[str, str] = {}
    for i, item in enumerate(items):
        if not item:
            raise GrammarError(text, text, "has an empty item (two commas or a trailing comma)",
                               kind.example)
        if "=" not in item:
            if i == 0 and kind.positional is not None:
                positional = item
                continue
            what = "a key=value option" if kind.positional is None or i else "an argument"
            raise GrammarError(text, item, f"is not {what} of '{name}'", kind.example)
        key, _, value = (s.strip() for s in item.partition("="))
        key = _LONG_KEYS.get(key.lower(), key.lower())
        if key not in kind.keys:
            allowed = ", ".join(sorted(kind.keys)) or "none"
            raise GrammarError(text, item, f"is not an option of '{name}' (allowed: {allowed})",
                               kind.example)
        if key in opts:
            raise GrammarError(text, item, f"repeats option '{key}'", kind.example)
        if not value:
            raise GrammarError(text, item, "has no value", kind.example)
        opts[key] = value
    if kind.required and positional is None:
        raise GrammarError(text, text, f"needs its {kind.positional} first", kind.example)

    ex = kind.example
    kw: dict[str, Any] = {}
    for key, value in opts.items():
        if key == "p":
            kw["padding"] = _padding(text, f"p={value}", value, ex)
        elif key == "bias":
            if value.lower() not in _BOOL_WORDS:
                raise GrammarError(text, f"bias={value}", "must be 1/0 (true/false)", ex)
            kw["bias"] = _BOOL_WORDS[value.lower()]
        else:
            kw[key] = _sizes(text, f"{key}={value}", value, _KEY_RULES[key], ex)

    if name == "conv":
        f = _positive(text, positional or "", "number of filters", ex)
        g = kw.pop("g", 1)
        if isinstance(g, tuple):
            raise GrammarError(text, f"g={opts['g']}", "groups must be one integer", ex)
        return models.Conv(
            filters=f, kernel=kw.pop("k", 3), stride=kw.pop("s", 1),
            padding=kw.pop("padding", "SAME"), dilation=kw.pop("d", 1), groups=g, **kw,
        )
    if name in ("dw", "sep"):
        m = kw.pop("m", 1)
        if isinstance(m, tuple):
            raise GrammarError(text, f"m={opts['m']}", "multiplier must be one integer", ex)
        common = dict(kernel=kw.pop("k", 3), multiplier=m, stride=kw.pop("s", 1),
                      padding=kw.pop("padding", "SAME"))
        if name == "dw":
            return models.Depthwise(dilation=kw.pop("d", 1), **common, **kw)
        f = _positive(text, positional or "", "number of filters", ex)
        return models.Separable(filters=f, **common, **kw)
    if name == "pool":
        op = _pool_kind(text, positional or "", ex)
        k = kw.pop("k", 2)
        return models.Pool(kind=op, window=k, stride=kw.pop("s", k),
                           padding=kw.pop("padding", "VALID"))
    if name == "gap":
        return models.GlobalPool(kind=_pool_kind(text, positional or "avg", ex))
    if name == "dense":
        units = _positive(text, positional or "", "number of units", ex)
        return models.Dense(units=units, **kw)
    if name == "convt":
        f = _positive(text, positional or "", "number of filters", ex)
        pad = kw.pop("padding", 0)
        if isinstance(pad, str):
            raise GrammarError(text, f"p={opts['p']}", "must be an integer (or NxM) for convT",
                               ex)
        return models.ConvTranspose(
            filters=f, kernel=kw.pop("k", 2), stride=kw.pop("s", 2), padding=pad,
            output_padding=kw.pop("a", 0), dilation=kw.pop("d", 1), **kw)
    if name == "up":
        return models.Upsample(_positive(text, positional or "2", "upsampling factor", ex))
    if name in ("mark", "add", "concat"):
        label = (positional or "").strip()
        if not label.isidentifier():
            raise GrammarError(text, label, "must be a name (letters, digits, _)", ex)
        if name == "mark":
            return models.Mark(label)
        return models.Add(label) if name == "add" else models.Concat(label)
    plain: dict[str, Callable[[], models.Layer]] = {
        "bn": models.BatchNorm, "relu": models.ReLU, "flatten": models.Flatten,
    }
    return plain[name]()


def _pool_kind(text: str, token: str, example: str) -> Literal["max", "avg"]:
    word = token.strip().lower()
    if word == "max":
        return "max"
    if word == "avg":
        return "avg"
    raise GrammarError(text, token, "must be 'max' or 'avg'", example)


def _positive(text: str, token: str, what: str, example: str) -> int:
    if not token.strip().isdigit():
        raise GrammarError(text, token, f"must be a positive integer ({what})", example)
    value = int(token)
    if value < 1:
        raise GrammarError(text, token, f"must be >= 1 ({what})", example)
    return value


def _sizes(text: str, token: str, value: str, what: str, example: str) -> int | tuple[int, ...]:
    """``3`` -> 3, ``3x5`` -> (3, 5); each a positive integer."""
    parts = value.lower().split("x")
    for p in parts:
        if not p.isdigit() or int(p) < 1:
            raise GrammarError(text, token, f"must be a positive integer or NxM ({what})", example)
    sizes = tuple(int(p) for p in parts)
    return sizes[0] if len(sizes) == 1 else sizes


def _padding(text: str, token: str, value: str, example: str) -> str | int | tuple[int, ...]:
    word = value.lower()
    if word in _PAD_WORDS:
        return _PAD_WORDS[word]
    parts = word.split("x")
    if not all(p.isdigit() for p in parts):
        raise GrammarError(text, token, "must be same, same_lower, valid, an integer or NxM",
                           example)
    sizes = tuple(int(p) for p in parts)
    return sizes[0] if len(sizes) == 1 else sizes
