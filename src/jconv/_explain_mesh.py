"""`jconv explain --mesh`: each convolution of a network split over a device mesh, per device.

A layout names one split per mesh axis (``--mesh 2x4 --shard batch,h``): the batch, a
spatial dimension (``d``, ``h``, ``w`` as `jconv.symbolic.dimension_names` spells them),
the output ``features`` or the input ``channels``. For every convolution of the network
(conv and depthwise entries; each compiled on its own, its input and kernel placed in the
layout under explicit sharding, as jconv runs them) the report gives, per device:

- the output block's bytes (`jconv.symbolic.per_device_bytes`), checked against the
  compiled program's output shard;
- the bytes sent per step forward and backward by collective kind
  (`jconv.symbolic.communication_bytes`), checked exactly against the operands of the
  collectives in the optimized HLO (`jconv._hlo.collectives`) of the forward program and
  of the backward program alone (the VJP of the forward, its residuals as inputs);
- the temporary bytes of both programs (`memory_analysis()`), beside those of the same
  convolution compiled alone on one device on the shard's shape (halo rows included).

Parsing and the rules a layer must meet (`parse_mesh`, `parse_shard`, `layer_refusal`) are
plain Python; the formulas need SymPy and the measurements JAX, imported on first use so
that the command line can ask for simulated devices before JAX starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import models
from ._report import DTYPES, Check, Quantity
from ._spec import ConvSpec

__all__ = [
    "ACCOUNTED_KINDS", "MAX_SIMULATED_DEVICES", "SPLITS", "Layout", "MeshError", "MeshLayer",
    "MeshNetwork", "MeshReport", "build_mesh_report", "check_networks", "layer_formulas",
    "layer_refusal", "measure_layer", "mesh_dict", "parse_mesh", "parse_shard",
    "render_mesh_json", "render_mesh_markdown", "render_mesh_rich",
]

MAX_SIMULATED_DEVICES = 1024
"""The largest mesh simulated with CPU devices (each is a thread and its own buffers)."""
SPLITS = ("batch", "d", "h", "w", "features", "channels")
"""What a mesh axis can split: the batch, a spatial dimension, output features, input
channels."""
ACCOUNTED_KINDS = ("conv", "depthwise")
"""Walked entries that jconv runs split per device (`jconv._sharding`); the others (pooling,
dense, batch norm, transposed convolutions, ...) are listed as not accounted."""
SCHEMA = "jconv.explain.mesh/1"
_COLLECTIVE_TYPE = re.compile(r"^\s*(?:ROOT\s+)?%\S+\s*=\s*\(?(pred|[a-z]+\d+)\[[^=\n]*?\b(?:"
                              r"all-gather|all-reduce|collective-permute|reduce-scatter|"
                              r"all-to-all)(?:-start)?\(", re.MULTILINE)
_SHORT = {"collective-permute": "cp", "all-reduce": "ar", "all-gather": "ag",
          "reduce-scatter": "rs", "all-to-all": "a2a"}


class MeshError(ValueError):
    """A malformed or impossible ``--mesh``/``--shard``: `option`, its `value`, the `rule`
    it breaks and a correct `example`."""

    def __init__(self, option: str, value: str, rule: str, example: str) -> None:
        self.option, self.value, self.rule, self.example = option, value, rule, example
        super().__init__(f"{option} {value!r}: {rule}; example: {example}")


def parse_mesh(text: str) -> tuple[int, ...]:
    """``"8"`` -> ``(8,)``, ``"2x4"`` -> ``(2, 4)``: device counts per mesh axis, each >= 2.

    >>> parse_mesh("2x4")
    (2, 4)
    """
    parts = text.strip().lower().split("x")
    if not text.strip() or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise MeshError("--mesh", text, "must be device counts per mesh axis joined by 'x', "
                        "each a positive integer", "--mesh 8 or --mesh 2x4")
    shape = tuple(int(p) for p in parts)
    if min(shape) < 2:
        raise MeshError("--mesh", text, "every mesh axis needs at least 2 devices (one "
                        "device: jconv explain without --mesh)", "--mesh 8 or --mesh 2x4")
    return shape


def parse_shard(text: str, mesh: tuple[int, ...], mesh_text: str) -> tuple[str, ...]:
    """``"batch,h"`` -> ``("batch", "h")``: what each mesh axis splits, one name per axis.

    >>> parse_shard("batch,h", (2, 4), "2x4")
    ('batch', 'h')
    """
    names = tuple(n.strip().lower() for n in text.split(","))
    example = "--mesh 2x4 --shard batch,h" if len(mesh) == 2 else "--mesh 8 --shard batch"
    for n in names:
        if n not in SPLITS:
            raise MeshError("--shard", text, f"{n!r} is not a split jconv knows (one of "
                            f"{', '.join(SPLITS)}, comma-separated, one per mesh axis)", example)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MeshError("--shard", text, f"{repeated[0]!r} is named twice (each mesh axis "
                        "splits a different dimension)", example)
    if len(names) != len(mesh):
        more = "more" if len(names) > len(mesh) else "fewer"
        axes = "axis" if len(mesh) == 1 else "axes"
        splits = {1: "batch", 2: "batch,h", 3: "batch,h,w"}.get(len(mesh),
                                                                ",".join(SPLITS[:len(mesh)]))
        raise MeshError("--shard", text, f"names {len(names)} splits, {more} than the "
                        f"{len(mesh)} {axes} of --mesh {mesh_text} (one split per mesh axis)",
                        "--mesh 2x4 --shard batch,h" if len(names) > len(mesh)
                        else f"--mesh {mesh_text} --shard {splits}")
    return names


@dataclass(frozen=True)
class Layout:
    """A mesh (`shape`) and what each of its axes splits (`names`, one per axis)."""

    shape: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def size(self) -> int:
        """Devices of the mesh."""
        return math.prod(self.shape)

    def devices(self, split: str) -> int:
        """Devices along `split` (1 where no axis splits it)."""
        return math.prod(p for p, n in zip(self.shape, self.names, strict=True) if n == split)

    @property
    def text(self) -> str:
        """``batch=2 x h=4``."""
        return " x ".join(f"{n}={p}" for n, p in zip(self.names, self.shape, strict=True))


def _spatial_names(spec: ConvSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(``("H", "W")``, ``("h", "w")``) for a 2-D convolution (`dimension_names`'s)."""
    n = spec.num_spatial
    table = {1: (("W",), ("w",)), 2: (("H", "W"), ("h", "w")),
             3: (("D", "H", "W"), ("d", "h", "w"))}
    return table[n]


def layer_refusal(spec: ConvSpec, layout: Layout) -> str | None:
    """Why `spec` cannot run split as `layout` asks (each split kept per device, the rules
    of `jconv._sharding.explicit_split`), or None."""
    upper, lower = _spatial_names(spec)
    g = spec.feature_group_count
    for name in layout.names:
        p = layout.devices(name)
        if name == "batch":
            if spec.batch % p:
                return f"its batch of {spec.batch} does not divide over {p} devices"
        elif name in ("features", "channels"):
            if g > 1:
                return (f"it has {g} feature groups: its {name} split with its groups is a "
                        "layout the communication formulas do not cover")
            total = spec.out_features if name == "features" else spec.in_features
            what = "output features" if name == "features" else "input channels"
            if total % p:
                return f"its {total} {what} do not divide over {p} devices"
        elif name not in lower:
            return (f"it has the spatial dimension(s) {', '.join(lower)} only "
                    f"(input {'x'.join(map(str, spec.lhs_shape))})")
        else:
            j = lower.index(name)
            why = _spatial_refusal(spec, j, p)
            if why is not None:
                return f"its {upper[j]} = {spec.in_spatial[j]} {why}"
    return None


def _spatial_refusal(spec: ConvSpec, j: int, p: int) -> str | None:
    """The rule of a kept spatial split (`jconv.symbolic.spatial_split_kept`) that dimension
    `j` over `p` devices breaks, or None."""
    size, out, s = spec.in_spatial[j], spec.out_spatial[j], spec.window_strides[j]
    if spec.lhs_dilation[j] != 1:
        return "is dilated (lhs dilation): its blocks do not line up with the output's"
    if size % p or out % p:
        return (f"(output {out}) does not divide into {p} equal blocks, input and output "
                "both")
    if (out // p) * s != size // p:
        return (f"(output {out}, stride {s}): a device's output block of {out // p} rows "
                f"does not start where its input block of {size // p} does "
                f"({out // p}*{s} != {size // p})")
    lo = spec.padding[j][0]
    hi = spec.effective_window[j] - s - lo
    if max(abs(lo), abs(hi)) > size // p:
        return (f"over {p} devices gives blocks of {size // p} rows, narrower than the halo "
                f"rows a device needs from its neighbours ({max(lo, 0)}, {max(hi, 0)})")
    return None


# ----------------------------------------------------------------------------- formulas
def layer_formulas(spec: ConvSpec, layout: Layout, itemsize: int) -> dict[str, Any]:
    """Per-device bytes of `spec` split as `layout`, from `jconv.symbolic`: ``activation``
    (the output block), ``forward`` and ``backward`` (``{kind: Quantity}`` of the bytes each
    device sends per step, nonzero kinds only) and their totals ``forward_total``,
    ``backward_total``; formulas in ``N``, the input sizes, ``C_in``, ``C_out``, the output
    sizes ``H_out``... and the device counts ``P_batch``, ``P_h``... (the kernel, strides,
    dilations and paddings as numbers)."""
    import sympy as sp

    from .symbolic import communication_bytes, output_size, per_device_bytes

    upper, lower = _spatial_names(spec)
    pos = {"integer": True, "positive": True}
    n, c, f = sp.Symbol("N", **pos), sp.Symbol("C_in", **pos), sp.Symbol("C_out", **pos)
    sizes = [sp.Symbol(u, **pos) for u in upper]
    subs: dict[Any, int] = {n: spec.batch, c: spec.in_features, f: spec.out_features}
    subs.update(zip(sizes, spec.in_spatial, strict=True))
    devices: dict[str, Any] = {}
    for name in layout.names:
        if layout.devices(name) > 1:
            devices[name] = sp.Symbol(f"P_{name}", **pos)
            subs[devices[name]] = layout.devices(name)
    pads = [(lo, hi) for lo, hi in spec.padding]
    args = (n, sizes, c, f, spec.window, spec.window_strides, spec.rhs_dilation, pads)
    kw: dict[str, Any] = {
        "batch": devices.get("batch", 1), "features": devices.get("features", 1),
        "channels": devices.get("channels", 1),
        "spatial_split": tuple(devices.get(s, 1) for s in lower), "itemsize": itemsize,
    }
    comm = communication_bytes(*args, **kw)
    blocks = per_device_bytes(*args, **kw)
    backward = dict(comm["backward"])
    g = spec.feature_group_count
    if g > 1:  # the kernel holds C_in/G channels: its gradient's all-reduce is that block
        groups = sp.Symbol("G", **pos)
        subs[groups] = g
        kernel = per_device_bytes(n, sizes, c / groups, f, *args[4:], **kw)["kernel"]
        replicated = any(devices.get(s) is not None for s in ("batch", *lower))
        backward["all-reduce"] = kernel if replicated else sp.Integer(0)
    short: dict[Any, Any] = {}
    for j, size in enumerate(sizes):
        out = output_size(size, spec.window[j], spec.window_strides[j], pads[j],
                          spec.rhs_dilation[j])
        if out != size:
            short[out] = sp.Symbol(f"{upper[j]}_out", **pos)
            subs[short[out]] = spec.out_spatial[j]

    def q(expr: Any) -> Quantity:
        expr = sp.expand(sp.sympify(expr).xreplace(short))  # one term per halo or block
        value = expr.subs(subs)
        if not value.is_integer:
            raise ValueError(f"`layout` (={layout.text}) splits {spec} into fractional "
                             f"blocks ({expr} = {value}).")
        return Quantity(int(value), str(expr), sp.latex(expr))

    forward = {k: q(v) for k, v in comm["forward"].items() if v != 0}
    back = {k: q(v) for k, v in backward.items() if v != 0}
    return {
        "activation": q(blocks["output"]),
        "forward": forward, "backward": back,
        "forward_total": q(sum(comm["forward"].values(), sp.Integer(0))),
        "backward_total": q(sum(backward.values(), sp.Integer(0))),
    }


# ----------------------------------------------------------------------------- measuring
def _axes(spec: ConvSpec, layout: Layout) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Mesh axes (or None) of each dimension of the canonical input ``(N, *S, C)`` and
    kernel ``(*K, C/g, F)``, one-name tuples as `jconv._sharding.Split` holds them."""
    _, lower = _spatial_names(spec)

    def ax(split: str) -> tuple[str, ...] | None:
        return (split,) if split in layout.names else None

    x = (ax("batch"), *(ax(s) for s in lower), ax("channels"))
    w = (*(None,) * spec.num_spatial, ax("channels"), ax("features"))
    return x, w


def measure_layer(spec: ConvSpec, layout: Layout, dtype: str, devices: Sequence[Any]
                  ) -> dict[str, Any]:
    """Compile `spec` split as `layout` over `devices` (explicit sharding) and alone on one
    device on its shard: the collectives (``{kind: bytes}``) of the forward and of the
    backward alone, both programs' temp bytes, the output block's bytes and the layout the
    engine kept (``x``, ``w``: mesh axes per canonical dimension)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    from ._hlo import collectives
    from ._sharding import explicit_split
    from ._verify import engine_conv

    def forward(local: ConvSpec) -> Callable[[jax.Array, jax.Array], jax.Array]:
        return lambda x, w: engine_conv(x, w, local)

    def programs(fwd: Callable[..., Any], x: Any, w: Any) -> tuple[Any, Any]:
        compiled = jax.jit(fwd).lower(x, w).compile()
        out = jax.eval_shape(fwd, x, w)
        vjp = jax.eval_shape(lambda a, b: jax.vjp(fwd, a, b)[1], x, w)
        back = jax.jit(lambda v, ct: v(ct)).lower(vjp, out).compile()
        return compiled, back

    def temp(compiled: Any) -> int:
        return int(compiled.memory_analysis().temp_size_in_bytes)

    def kinds(compiled: Any) -> dict[str, int]:
        return {k: b for k, (_, b) in sorted(collectives(compiled.as_text()).items())}

    def wire(*compiled: Any) -> int | None:
        """Bytes per element of the collectives' results (None: no collective, or mixed)."""
        found = {tok for c in compiled for tok in _COLLECTIVE_TYPE.findall(c.as_text())}
        sizes = {8 if t == "pred" else int(re.sub(r"\D", "", t)) // 8 for t in found}
        return sizes.pop() if len(sizes) == 1 else None

    x_axes, w_axes = _axes(spec, layout)
    mesh = jax.make_mesh(layout.shape, layout.names,
                         axis_types=(AxisType.Explicit,) * len(layout.shape),
                         devices=list(devices)[:layout.size])

    def pspec(axes: tuple[Any, ...]) -> Any:
        return P(*(None if a is None else a[0] for a in axes))

    kind = jnp.dtype(dtype)
    with jax.enable_x64(dtype == "float64"):
        with jax.set_mesh(mesh):
            x = jax.ShapeDtypeStruct(spec.lhs_shape, kind,
                                     sharding=NamedSharding(mesh, pspec(x_axes)))
            w = jax.ShapeDtypeStruct(spec.rhs_shape, kind,
                                     sharding=NamedSharding(mesh, pspec(w_axes)))
            split = explicit_split(x, w, spec)
            fwd, back = programs(forward(spec), x, w)
            sharding = fwd.output_shardings
            block = sharding.shard_shape(spec.out_shape)
        local = split.local if split is not None else spec
        one = next(iter(devices))
        xl = jax.ShapeDtypeStruct(local.lhs_shape, kind,
                                  sharding=jax.sharding.SingleDeviceSharding(one))
        wl = jax.ShapeDtypeStruct(local.rhs_shape, kind,
                                  sharding=jax.sharding.SingleDeviceSharding(one))
        fwd_alone, back_alone = programs(forward(local), xl, wl)
        itemsize = kind.itemsize
    return {
        "x": None if split is None else [None if a is None else list(a) for a in split.x],
        "w": None if split is None else [None if a is None else list(a) for a in split.w],
        "expected_x": [None if a is None else list(a) for a in x_axes],
        "expected_w": [None if a is None else list(a) for a in w_axes],
        "forward": kinds(fwd), "backward": kinds(back),
        "temp": {"forward": temp(fwd), "backward": temp(back)},
        "alone": {"forward": temp(fwd_alone), "backward": temp(back_alone),
                  "shape": list(local.lhs_shape), "kernel": list(local.rhs_shape)},
        "activation": math.prod(block) * itemsize, "block": list(block),
        "wire_itemsize": wire(fwd, back) or itemsize,
    }


# ----------------------------------------------------------------------------- report
@dataclass
class MeshLayer:
    """One convolution of the network split as the layout asks, per device."""

    index: int
    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    split: str  # "N/2 H/4": what each device holds of the input and output
    activation: Quantity
    forward: dict[str, Quantity]
    backward: dict[str, Quantity]
    forward_total: Quantity
    backward_total: Quantity
    measured: dict[str, Any] | None = None
    checks: list[Check] = field(default_factory=list)


@dataclass
class MeshNetwork:
    """A network's convolutions, totals, and the walked entries not accounted."""

    name: str
    title: str
    layers: list[MeshLayer]
    totals: dict[str, Any]
    not_accounted: list[str]


@dataclass
class MeshReport:
    """A whole `jconv explain --mesh` run."""

    layout: Layout
    devices: str  # "8 cpu devices (simulated)"
    dtype: str
    itemsize: int
    batch: int
    verify: bool
    networks: list[MeshNetwork]

    def all_checks(self) -> list[Check]:
        """Every layer's checks."""
        return [c for n in self.networks for r in n.layers for c in r.checks]

    @property
    def ok(self) -> bool:
        """No check failed."""
        return all(c.passed is not False for c in self.all_checks())


def _split_text(spec: ConvSpec, layout: Layout) -> str:
    upper, lower = _spatial_names(spec)
    label = {"batch": "N", "features": "C_out", "channels": "C_in", **dict(zip(lower, upper,
                                                                             strict=True))}
    return " ".join(f"{label[n]}/{layout.devices(n)}" for n in layout.names)


def _checks(row: MeshLayer, m: dict[str, Any], itemsize: int) -> list[Check]:
    """The layout, the output block and the collectives' bytes against the formulas; where
    the backend sends the collectives in a wider type than the program asks (XLA's CPU
    backend widens 16-bit ones to float32), the formulas at that element size."""
    scale = m["wire_itemsize"] / itemsize
    widened = (f"; the backend sends them as {8 * m['wire_itemsize']}-bit values: the "
               f"formula x {scale:g}" if scale != 1 else "")

    def want(part: dict[str, Quantity]) -> dict[str, int]:
        return {k: round(v.value * scale) for k, v in sorted(part.items())}

    kept = m["x"] == m["expected_x"] and m["w"] == m["expected_w"]
    return [
        Check("layout_kept", {"x": m["expected_x"], "w": m["expected_w"]},
              {"x": m["x"], "w": m["w"]}, kept,
              "the engine runs each split per device (jconv._sharding.explicit_split)"),
        Check("activation_bytes", row.activation.value, m["activation"],
              row.activation.value == m["activation"],
              f"output block {'x'.join(map(str, m['block']))} of the compiled program"),
        Check("forward_collectives", want(row.forward), m["forward"],
              want(row.forward) == m["forward"],
              "bytes of each collective's operands in the forward's optimized HLO" + widened),
        Check("backward_collectives", want(row.backward), m["backward"],
              want(row.backward) == m["backward"],
              "the same in the backward program alone (the forward's residuals as inputs)"
              + widened),
    ]


def build_mesh_report(
    networks: Sequence[tuple[models.Network, str]], layout: Layout, *, batch: int = 1,
    dtype: str = "float32", devices: Sequence[Any] | None = None,
    device_text: str = "", progress: Callable[[str], None] | None = None,
) -> MeshReport:
    """Formulas for every convolution of each ``(network, title)`` split as `layout`, and,
    when `devices` are given, their measurement on those devices (each distinct layer
    compiled once). Raises `MeshError` for a layer that cannot take the split."""
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` (={dtype!r}) must be one of {', '.join(DTYPES)}.")
    itemsize = DTYPES[dtype]
    check_networks(networks, layout, batch)
    tick = progress or (lambda _msg: None)
    seen: dict[ConvSpec, dict[str, Any]] = {}
    out = []
    for net, title in networks:
        rows, others = [], []
        for i, info in enumerate(net.walk(batch)):
            if info.spec is None or info.kind not in ACCOUNTED_KINDS:
                others.append(info.name)
                continue
            formulas = layer_formulas(info.spec, layout, itemsize)
            row = MeshLayer(i, info.name, info.kind, info.in_shape, info.out_shape,
                            _split_text(info.spec, layout), **formulas)
            if devices is not None:
                if info.spec not in seen:
                    seen[info.spec] = measure_layer(info.spec, layout, dtype, devices)
                row.measured = seen[info.spec]
                row.checks = _checks(row, row.measured, itemsize)
                tick(f"{net.name}: {info.name}")
            rows.append(row)
        out.append(MeshNetwork(net.name, title, rows, _totals(rows), others))
    return MeshReport(layout, device_text, dtype, itemsize, batch, devices is not None, out)


def check_networks(networks: Sequence[tuple[models.Network, str]], layout: Layout,
                   batch: int) -> int:
    """The number of convolutions the networks split as `layout`; `MeshError` naming the
    first one that cannot take it (plain Python: answers before any compilation)."""
    count = 0
    for net, _ in networks:
        for info in net.walk(batch):
            if info.spec is None or info.kind not in ACCOUNTED_KINDS:
                continue
            why = layer_refusal(info.spec, layout)
            if why is not None:
                raise MeshError("--shard", ",".join(layout.names),
                                f"layer {info.name!r} cannot take it: {why}",
                                _example(info.spec, layout))
            count += 1
    if not count:
        raise MeshError("--mesh", "x".join(map(str, layout.shape)), "the network has no "
                        "convolution to split (conv, dw and sep layers are accounted)",
                        "--layer conv:16,k=3 --mesh 8 --shard features")
    return count


def _example(spec: ConvSpec, layout: Layout) -> str:
    """A command-line change under which `spec` takes the split (a best guess)."""
    if "batch" in layout.names and spec.batch % layout.devices("batch"):
        return f"--batch {layout.devices('batch')}"
    if spec.feature_group_count > 1 and {"features", "channels"} & set(layout.names):
        return "--shard batch (or a spatial split) for grouped and depthwise layers"
    if len(layout.shape) == 1:  # fewer devices along the same split, if some would do
        for p in range(layout.size - 1, 1, -1):
            if layer_refusal(spec, Layout((p,), layout.names)) is None:
                return f"--mesh {p} --shard {layout.names[0]}"
    return f"--mesh {layout.size} --shard batch --batch {layout.size}"


def _totals(rows: list[MeshLayer]) -> dict[str, Any]:
    """Sums over the layers; temporaries: the largest layer's (one layer runs at a time)."""
    out: dict[str, Any] = {
        "activation": sum(r.activation.value for r in rows),
        "forward": sum(r.forward_total.value for r in rows),
        "backward": sum(r.backward_total.value for r in rows),
    }
    measured = [r.measured for r in rows if r.measured is not None]
    if measured and len(measured) == len(rows):
        out["measured"] = {
            "activation": sum(m["activation"] for m in measured),
            "forward": sum(sum(m["forward"].values()) for m in measured),
            "backward": sum(sum(m["backward"].values()) for m in measured),
            "temp": {k: max(m["temp"][k] for m in measured) for k in ("forward", "backward")},
            "alone": {k: max(m["alone"][k] for m in measured) for k in ("forward", "backward")},
        }
    return out


# ----------------------------------------------------------------------------- rendering
def _mark(c: Check | None) -> str:
    if c is None:
        return ""
    return {True: "✓", False: "✗ FAIL", None: "n/a"}[c.passed]


def _kinds_text(kinds: dict[str, int]) -> str:
    return " + ".join(f"{_SHORT.get(k, k)} {v:,}" for k, v in kinds.items()) or "0"


def _cells(r: MeshLayer) -> list[str]:
    ck = {c.name: c for c in r.checks}
    m = r.measured

    def comm(total: Quantity, part: dict[str, Quantity], name: str, key: str) -> list[str]:
        kinds = " + ".join(f"{_SHORT.get(k, k)}" for k in part)
        formula = f"{total.formula} = {total.value:,}" + (f" ({kinds})" if kinds else "")
        got = "" if m is None else f"{_kinds_text(m[key])} {_mark(ck.get(name))}"
        return [formula, got]

    act = f"{r.activation.formula} = {r.activation.value:,}"
    if m is not None:
        act += f" {_mark(ck.get('activation_bytes'))}"
    temp = "" if m is None else (f"{m['temp']['forward']:,} / {m['temp']['backward']:,} "
                                 f"(alone {m['alone']['forward']:,} / "
                                 f"{m['alone']['backward']:,})")
    layout = r.split if m is None or ck["layout_kept"].passed else f"{r.split} ✗ FAIL"
    return [str(r.index), r.name, layout, act, temp,
            *comm(r.forward_total, r.forward, "forward_collectives", "forward"),
            *comm(r.backward_total, r.backward, "backward_collectives", "backward")]


def _total_cells(net: MeshNetwork) -> list[str]:
    t = net.totals
    m = t.get("measured")
    ok = all(c.passed is not False for r in net.layers for c in r.checks)
    mark = "✓" if ok else "✗ FAIL"
    return [
        "", "total", f"{len(net.layers)} convolution{'s' if len(net.layers) > 1 else ''}",
        f"{t['activation']:,}",
        "" if m is None else (f"peak {m['temp']['forward']:,} / {m['temp']['backward']:,} "
                              f"(alone {m['alone']['forward']:,} / {m['alone']['backward']:,})"),
        f"{t['forward']:,}", "" if m is None else f"{m['forward']:,} {mark}",
        f"{t['backward']:,}", "" if m is None else f"{m['backward']:,} {mark}",
    ]


_HEADER = ["#", "layer", "split", "activation bytes / device (formula = value)",
           "temp bytes / device fwd / bwd", "forward bytes sent (formula = value)", "measured",
           "backward bytes sent (formula = value)", "measured"]


def _failures(report: MeshReport) -> list[tuple[str, str, str]]:
    return [(f"{n.name}: layer {r.index} {r.name}", c.name,
             f"expected {c.expected}, measured {c.measured}")
            for n in report.networks for r in n.layers for c in r.checks if c.passed is False]


def _summary(report: MeshReport) -> str:
    checks = report.all_checks()
    if not report.verify:
        return "verification skipped (--no-verify): formulas only"
    failed = sum(c.passed is False for c in checks)
    verdict = "ALL CHECKS PASS" if report.ok else "SOME CHECKS FAIL"
    return (f"verification ({report.dtype}, batch {report.batch}, {report.devices}): "
            f"{len(checks) - failed} checks passed, {failed} failed: {verdict}")


def _notes(report: MeshReport) -> list[str]:
    lay = report.layout
    return [
        f"mesh {'x'.join(map(str, lay.shape))} ({lay.text}), {report.dtype} "
        f"({report.itemsize} bytes per element), batch {report.batch}; bytes per device per "
        "step. Each convolution is compiled on its own, its input and kernel placed in the "
        "layout (explicit sharding).",
        "sent: operands of the collectives each device runs (cp collective-permute: halo "
        "rows; ar all-reduce: kernel gradient over batch/spatial devices, input gradient over "
        "feature devices, partial outputs over channel devices), from "
        "jconv.symbolic.communication_bytes; measured in the optimized HLO of the forward and "
        "of the backward alone.",
        "temp: memory_analysis() of the sharded forward / backward, beside the same layer "
        "compiled alone on one device on its shard (halo rows included).",
        *(f"measured: the backend sends these {8 * report.itemsize}-bit collectives as "
          f"{8 * w}-bit values (XLA's CPU backend widens 16-bit ones); the checks compare them "
          f"with the formulas x {w / report.itemsize:g}"
          for w in sorted({r.measured["wire_itemsize"] for n in report.networks
                           for r in n.layers if r.measured is not None} - {report.itemsize})),
    ]


def render_mesh_rich(report: MeshReport, console: Any) -> None:
    """The report as rich tables, one per network."""
    from rich.table import Table
    from rich.text import Text

    console.print("[bold]jconv explain --mesh[/bold]: " + _notes(report)[0])
    for net in report.networks:
        console.print()
        title = f"{net.name}: {net.title}"
        if net.not_accounted:
            title += (f" ({len(net.not_accounted)} entries not accounted, not convolutions: "
                      f"{', '.join(net.not_accounted)})")
        t = Table(title=title, title_justify="left")
        for col in _HEADER:
            t.add_column(col, overflow="fold")
        for r in net.layers:
            t.add_row(*_cells(r))
        t.add_section()
        t.add_row(*_total_cells(net))
        console.print(t)
    for line in _notes(report)[1:]:
        console.print(line)
    issues = _failures(report)
    if issues:
        t = Table(title="checks that failed", title_justify="left")
        for col in ("where", "check", "reason"):
            t.add_column(col, overflow="fold")
        for row in issues:
            t.add_row(*row)
        console.print(t)
    console.print()
    console.print(Text(_summary(report), style="bold green" if report.ok else "bold red"))


def render_mesh_markdown(report: MeshReport) -> str:
    """GitHub Markdown: one table per network."""
    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                *("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)]

    out = ["# jconv explain --mesh", "", _notes(report)[0], ""]
    for net in report.networks:
        out += [f"## {net.name}: {net.title}", ""]
        out += table(_HEADER, [*(_cells(r) for r in net.layers), _total_cells(net)])
        out.append("")
        if net.not_accounted:
            out += [f"Not accounted (not convolutions): {', '.join(net.not_accounted)}.", ""]
    out += [*_notes(report)[1:], ""]
    issues = _failures(report)
    if issues:
        out += [*table(["where", "check", "reason"], [list(i) for i in issues]), ""]
    out += [f"**{_summary(report)}**", ""]
    return "\n".join(out)


def _jq(q: Quantity) -> dict[str, Any]:
    return {"value": q.value, "formula": q.formula, "latex": q.latex}


def mesh_dict(report: MeshReport) -> dict[str, Any]:
    """The report as plain JSON-able data with stable keys."""
    from importlib import metadata

    try:
        version = metadata.version("jconv")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree
        version = "unknown"
    checks = report.all_checks()
    return {
        "schema": SCHEMA, "version": version,
        "mesh": list(report.layout.shape), "shard": list(report.layout.names),
        "devices": report.devices, "dtype": report.dtype, "itemsize": report.itemsize,
        "batch": report.batch, "verified": report.verify,
        "networks": [{
            "name": n.name, "title": n.title, "not_accounted": n.not_accounted,
            "totals": n.totals,
            "layers": [{
                "index": r.index, "name": r.name, "kind": r.kind, "in_shape": list(r.in_shape),
                "out_shape": list(r.out_shape), "split": r.split,
                "activation": _jq(r.activation),
                "forward": {"total": _jq(r.forward_total),
                            "collectives": {k: _jq(v) for k, v in r.forward.items()}},
                "backward": {"total": _jq(r.backward_total),
                             "collectives": {k: _jq(v) for k, v in r.backward.items()}},
                "measured": r.measured,
                "checks": [dataclasses.asdict(c) for c in r.checks],
            } for r in n.layers],
        } for n in report.networks],
        "notes": _notes(report),
        "summary": {"passed": sum(c.passed is True for c in checks),
                    "failed": sum(c.passed is False for c in checks), "ok": report.ok},
    }


def render_mesh_json(report: MeshReport) -> str:
    """`mesh_dict` as indented JSON."""
    import json

    return json.dumps(mesh_dict(report), indent=2)
