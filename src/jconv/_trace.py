"""Find the layers of any JAX program in its jaxpr: `trace(f, *args, **kwargs)`.

`jax.make_jaxpr` traces the program (no computation); `trace` walks the jaxpr and the
jaxprs nested in it (``jit``, ``scan``, ``cond``, ``while``, ``custom_jvp``/``custom_vjp``,
``remat``, ``shard_map``) and returns every convolution, every dense layer and every other
parameter-holding layer, each with the argument leaves it reads its weights from.

How a parameter is told from data: the arguments are flattened with their pytree paths;
a leaf inside a container (a Flax nnx state, a linen variables dict, an Equinox module, a
params dict) is a *variable*, and so is a bare array that some conv or dense layer reads as
its weight. A variable's collection: nnx ``Param`` -> "params", ``BatchStat`` -> "stats"; a
linen dict's first key (``params``, ``batch_stats``); anything else "params".

What the walk follows: a value's *source* leaf through operations that only move or retype
it (convert, reshape, broadcast, transpose, squeeze, reverse, copy), and a layer's *output*
through the same, so ``conv(x, w) + b`` (``b`` a variable) makes ``b`` the conv's bias. A
variable read by no recognised layer is grouped with its siblings (the same parent path)
into a layer of its own: "norm" (read by a multiply or an add), "embedding" (gather) or
"param".

jconv's own calls: the engine runs one jitted function ``_run`` per `ConvSpec`, the spec a
static argument that the jaxpr does not keep. While `trace` runs, `recording_specs` wraps
that function so that each call sits in a `jax.named_scope` naming a registry entry of its
spec (``jconv_conv_<n>``); a ``_run`` equation is read back from that scope, without
running it. A function traced earlier (its jaxpr cached by ``jax.jit``) carries no scope:
`trace` then traces the function under `jax.jit`'s Python body (``__wrapped__``) where it
can, and otherwise reports the call as a jconv convolution whose spec is unknown.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.extend.core import Literal as _Literal

from ._spec import ConvSpec, canonical_layouts

__all__ = ["Leaf", "TraceError", "TracedLayer", "TracedProgram", "recording_specs", "trace"]

# primitives that only move, retype or broadcast a value (its source stays the same leaf)
_VIEW = frozenset({
    "convert_element_type", "reshape", "broadcast_in_dim", "transpose", "squeeze",
    "expand_dims", "copy", "copy_p", "rev", "reduce_precision", "optimization_barrier",
    "sharding_constraint", "mesh_cast", "reshard",
})
_ADD = frozenset({"add", "add_any", "sub"})
# call-like primitives whose single nested jaxpr takes exactly the equation's operands
_CALLS = {
    "pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
    "remat": "jaxpr", "checkpoint": "jaxpr", "remat2": "jaxpr",
    "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr", "shard_map": "jaxpr", "custom_lin": None,
}
_SCOPE = "jconv_conv_"


class TraceError(ValueError):
    """The program could not be traced (the error names the user's code)."""


# ----------------------------------------------------------------------------- spec registry
_SPECS: dict[int, ConvSpec] = {}
_SPEC_IDS: dict[ConvSpec, int] = {}
_LOCK = threading.Lock()


def _spec_id(spec: ConvSpec) -> int:
    with _LOCK:
        if spec not in _SPEC_IDS:
            _SPEC_IDS[spec] = len(_SPECS)
            _SPECS[len(_SPECS)] = spec
        return _SPEC_IDS[spec]


@contextlib.contextmanager
def recording_specs() -> Iterator[None]:
    """While active, every call of the engine's jitted ``_run`` sits in a named scope that
    names its `ConvSpec` (see the module docstring)."""
    from . import _engine

    original = _engine._run

    def run(lhs: Any, rhs: Any, *, spec: ConvSpec, **kw: Any) -> Any:
        with jax.named_scope(f"{_SCOPE}{_spec_id(spec)}"):
            return original(lhs, rhs, spec=spec, **kw)

    with _LOCK:
        _engine._run = run  # type: ignore[assignment]
    try:
        yield
    finally:
        with _LOCK:
            _engine._run = original


def _scope_spec(eqn: Any) -> ConvSpec | None:
    for part in reversed(str(eqn.source_info.name_stack).split("/")):
        if part.startswith(_SCOPE) and part[len(_SCOPE):].isdigit():
            return _SPECS.get(int(part[len(_SCOPE):]))
    return None


# ----------------------------------------------------------------------------- results
@dataclass
class Leaf:
    """One flattened argument leaf."""

    index: int
    path: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    collection: str  # "params", "stats", "input", "other"
    in_container: bool
    used_as: str = ""  # "weight", "bias", "norm", "embedding", "param" once attributed

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass
class TracedLayer:
    """One layer found in the jaxpr: a conv (with its `ConvSpec`), a dense `dot_general`
    with a weight, or a group of other variables (norm, embedding, param)."""

    kind: str
    name: str
    count: int  # times it runs per call (scan length; 1 otherwise)
    spec: ConvSpec | None = None
    lax_params: dict[str, Any] | None = None
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    kernel_shape: tuple[int, ...] | None = None
    weight: int | None = None  # leaf index
    biases: list[int] = field(default_factory=list)
    others: list[int] = field(default_factory=list)  # leaves of a norm/embedding/param group
    dense: tuple[int, int, int] | None = None  # (rows M, D_in, D_out)
    dtype: str = "float32"
    where: str = ""  # "scan x12", "cond branch 1", "while", "jconv engine" ...
    eqn_id: int = -1  # id() of the top-level equation (for capture), -1 if nested
    unknown_spec: bool = False
    order: int = 0  # position of its first equation in the walk
    receptive_field: tuple[int, ...] | None = None  # of one output value, in input pixels


@dataclass
class TracedProgram:
    """What `trace` returns: the layers, the flattened leaves, and what it takes to rerun."""

    layers: list[TracedLayer]
    leaves: list[Leaf]
    closed_jaxpr: Any
    flat_args: list[Any]
    pure: Callable[..., Any]  # pure(*flat_args) -> outputs, the traced function
    kind: str  # "nnx", "linen", "pytree module", "function"
    title: str
    input_shapes: list[tuple[int, ...]]
    inner_ops: dict[str, int] = field(default_factory=dict)  # other primitives, counted

    def leaf_total(self, collection: str) -> int:
        return sum(lf.size for lf in self.leaves if lf.collection == collection)


# ----------------------------------------------------------------------------- flattening
def _key_str(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | jax.ShapeDtypeStruct) or (
        hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, type))


def _prepare(f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[
        Callable[..., Any], list[Any], list[Leaf], str, str]:
    """(pure function of flat leaves, flat leaves, Leaf records, kind, title)."""
    kind, title = "function", getattr(f, "__name__", type(f).__name__)
    collections: dict[tuple[str, ...], str] = {}
    nnx = _maybe_nnx()
    linen = _maybe_linen()
    if nnx is not None and isinstance(f, nnx.Module):
        graphdef, state = nnx.split(f)
        for path, var in jax.tree_util.tree_flatten_with_path(
                state, is_leaf=lambda v: isinstance(v, nnx.Variable))[0]:
            name = type(var).__name__
            coll = "params" if isinstance(var, nnx.Param) else (
                "stats" if isinstance(var, nnx.BatchStat) else "other")
            collections[tuple(_key_str(k) for k in path)] = coll if name else "params"
        kind, title = "nnx", type(f).__name__

        def call(variables: Any, a: tuple[Any, ...], kw: dict[str, Any]) -> Any:
            return nnx.merge(graphdef, variables)(*a, **kw)

        tree = (state, args, kwargs)
    elif linen is not None and isinstance(f, linen.Module):
        kind, title = "linen", type(f).__name__
        module = f

        def call(variables: Any, a: tuple[Any, ...], kw: dict[str, Any]) -> Any:
            return module.apply(variables, *a, **kw)

        if not args:
            raise TraceError("a linen module needs its variables first: "
                             "jconv.explain(model, variables, x)")
        tree = (args[0], args[1:], kwargs)
    elif not callable(f):
        raise TraceError(f"`f` (={f!r}) must be a callable, a Flax module or an Equinox module")
    else:
        fun = getattr(f, "__wrapped__", None)
        if fun is not None and hasattr(f, "lower") and callable(fun):
            f = fun  # a jax.jit-ed function: trace its Python body (its jaxpr may be cached)
        own = [x for x in jax.tree_util.tree_leaves(f) if _is_array(x)] \
            if not _is_plain_function(f) else []
        if own:  # a callable pytree (an Equinox module, say): its arrays are variables
            kind, title = "pytree module", type(f).__name__
            paths_f, tdef_f = jax.tree_util.tree_flatten_with_path(f)
            leaves_f = [x for _, x in paths_f]
            arrays = [i for i, x in enumerate(leaves_f) if _is_array(x)]
            names = [".".join(_key_str(k) for k in paths_f[i][0]) or str(i) for i in arrays]

            def call(variables: Any, a: tuple[Any, ...], kw: dict[str, Any]) -> Any:
                full = list(leaves_f)
                for i, name in zip(arrays, names, strict=True):
                    full[i] = variables[name]
                return jax.tree_util.tree_unflatten(tdef_f, full)(*a, **kw)

            tree = ({name: leaves_f[i] for i, name in zip(arrays, names, strict=True)},
                    args, kwargs)
        else:
            fn = f

            def call(variables: Any, a: tuple[Any, ...], kw: dict[str, Any]) -> Any:
                del variables  # a plain function holds none
                return fn(*a, **kw)

            tree = ((), args, kwargs)
    flat_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves: list[Leaf] = []
    flat: list[Any] = []
    for i, (path, x) in enumerate(flat_paths):
        keys = tuple(_key_str(k) for k in path)
        group, rest = keys[0], keys[1:]
        if group == "0":  # the module's own variables
            if rest and rest[-1] == "value":
                rest = rest[:-1]
            if kind == "pytree module":
                coll = "params"
                rest = tuple(rest[0].split("."))
            elif kind == "linen":
                coll = {"params": "params", "batch_stats": "stats"}.get(rest[0], "other")
                rest = rest[1:] if rest[0] in ("params", "batch_stats") else rest
            else:
                coll = collections.get(rest, "params")
            in_container = True
        else:  # positional args "1", keyword args "2"
            in_container = len(rest) > 1
            coll = "params" if in_container else "input"
            if in_container and rest and rest[0].isdigit():
                top = rest[1:] if len(rest) > 1 else rest
                if top and top[0] in ("params", "batch_stats"):  # linen variables dict
                    coll = "params" if top[0] == "params" else "stats"
                    top = top[1:]
                rest = top
        if not _is_array(x):
            raise TraceError(f"argument leaf {'.'.join(keys[1:]) or i} (={x!r}) is not an "
                             "array; pass static values with functools.partial")
        leaves.append(Leaf(i, rest, tuple(int(d) for d in np.shape(x)), str(np.dtype(x.dtype)),
                           coll, in_container))
        flat.append(x)

    def pure(*xs: Any) -> Any:
        st, a, kw = jax.tree_util.tree_unflatten(treedef, list(xs))
        return call(st, a, kw)

    return pure, flat, leaves, kind, title


def _is_plain_function(f: Any) -> bool:
    import types

    return isinstance(f, types.FunctionType | types.BuiltinFunctionType | types.MethodType)


def _maybe_nnx() -> Any:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is optional
        return None
    return nnx


def _maybe_linen() -> Any:
    try:
        import flax.linen as linen
    except ImportError:  # pragma: no cover
        return None
    return linen


# ----------------------------------------------------------------------------- walking
class _Walker:
    def __init__(self, leaves: list[Leaf]) -> None:
        self.leaves = leaves
        self.layers: list[TracedLayer] = []
        self.consumed: dict[int, str] = {}  # leaf -> how it is used
        self.first_use: dict[int, str] = {}  # leaf -> first consuming primitive
        self.ops: dict[str, int] = {}
        self.position = itertools.count()
        self.use_pos: dict[int, int] = {}
        # receptive field (size, jump) per spatial dim of channels-last values
        self.rf: dict[Any, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._axes: dict[Any, tuple[int, ...]] = {}

    def walk(self, jaxpr: Any, src: dict[Any, int], origin: dict[Any, TracedLayer],
             count: int, where: str, top: bool) -> None:
        def s(v: Any) -> int | None:
            return src.get(v) if not isinstance(v, _Literal) else None

        def o(v: Any) -> TracedLayer | None:
            return origin.get(v) if not isinstance(v, _Literal) else None

        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            ins = eqn.invars
            pos = next(self.position)
            for x in ins:
                leaf = s(x)
                if leaf is not None:
                    self.use_pos.setdefault(leaf, pos)
            self._receptive(eqn)
            if name in _VIEW and ins:
                if s(ins[0]) is not None:
                    for ov in eqn.outvars:
                        src[ov] = src[ins[0]]
                if o(ins[0]) is not None:
                    for ov in eqn.outvars:
                        origin[ov] = origin[ins[0]]
                continue
            if name == "conv_general_dilated":
                self._conv(eqn, s(ins[1]), count, where, top, origin)
                continue
            if name in ("pjit", "jit") and eqn.params.get("name") == "_run":
                spec = _scope_spec(eqn)
                self._jconv(eqn, spec, s(ins[1]), count, where, top, origin)
                continue
            if name == "dot_general":
                self._dot(eqn, s(ins[0]), s(ins[1]), count, where, origin)
                continue
            if name in _ADD and len(ins) == 2:
                self._maybe_bias(eqn, s, o, origin)
            if name == "scan":
                self._scan(eqn, s, count, where)
                continue
            if name == "cond":
                for b, br in enumerate(eqn.params["branches"]):
                    inner = {v: i for v, x in zip(br.jaxpr.invars, ins[1:], strict=True)
                             if (i := s(x)) is not None}
                    self.walk(br.jaxpr, inner, {}, count, _join(where, f"cond branch {b}"),
                              False)
                continue
            if name == "while":
                body = eqn.params["body_jaxpr"]
                nb = eqn.params["body_nconsts"]
                nc = eqn.params["cond_nconsts"]
                operands = list(ins[:nc + nb])[nc:] + list(ins[nc + nb:])
                inner = {v: i for v, x in zip(body.jaxpr.invars, operands, strict=True)
                         if (i := s(x)) is not None}
                self.walk(body.jaxpr, inner, {}, count, _join(where, "while loop"), False)
                continue
            sub = _sub_jaxpr(eqn)
            if sub is not None:
                inner_j = sub.jaxpr if hasattr(sub, "jaxpr") else sub
                inner_src = {v: i for v, x in zip(inner_j.invars, ins, strict=False)
                             if (i := s(x)) is not None}
                inner_origin = {v: t for v, x in zip(inner_j.invars, ins, strict=False)
                                if (t := o(x)) is not None}
                mult = count
                label = where
                if name == "shard_map":
                    mesh = eqn.params.get("mesh")
                    size = int(np.prod(list(mesh.shape.values()))) if mesh is not None else 1
                    mult, label = count * size, _join(where, f"shard_map x{size}")
                self._link_rf(ins, inner_j.invars)
                self.walk(inner_j, inner_src, inner_origin, mult, label, False)
                self._link_rf(inner_j.outvars, eqn.outvars)
                # a call's outputs keep the origin of its inner outputs (a bias add inside)
                for ov, iv in zip(eqn.outvars, inner_j.outvars, strict=False):
                    if not isinstance(iv, _Literal) and iv in inner_origin:
                        origin[ov] = inner_origin[iv]
                continue
            self.ops[name] = self.ops.get(name, 0) + count
            for x in ins:
                leaf = s(x)
                if leaf is not None and leaf not in self.first_use:
                    self.first_use[leaf] = name

    # ------------------------------------------------------------------ layers
    def _conv(self, eqn: Any, w_leaf: int | None, count: int, where: str, top: bool,
              origin: dict[Any, TracedLayer]) -> None:
        p = eqn.params
        lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
        dn = p["dimension_numbers"]
        spec = ConvSpec.from_lax(
            lhs.shape, rhs.shape, p["window_strides"], p["padding"], p["lhs_dilation"],
            p["rhs_dilation"], (dn.lhs_spec, dn.rhs_spec, dn.out_spec),
            p["feature_group_count"], p["batch_group_count"])
        layer = self._spec_layer(spec, w_leaf, count, where, str(lhs.dtype))
        layer.lax_params = dict(p)
        layer.eqn_id = id(eqn) if top else -1
        origin[eqn.outvars[0]] = layer
        self._conv_rf(eqn.invars[0], eqn.outvars[0], spec, layer,
                      (dn.lhs_spec, dn.out_spec))

    def _jconv(self, eqn: Any, spec: ConvSpec | None, w_leaf: int | None, count: int,
               where: str, top: bool, origin: dict[Any, TracedLayer]) -> None:
        lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
        label = _join(where, "jconv engine")
        if spec is None:
            layer = TracedLayer("conv", "", count, in_shape=tuple(lhs.shape),
                                out_shape=tuple(eqn.outvars[0].aval.shape),
                                kernel_shape=tuple(rhs.shape), weight=w_leaf,
                                dtype=str(lhs.dtype), where=label, unknown_spec=True)
            self.layers.append(layer)
            if w_leaf is not None:
                self.consumed.setdefault(w_leaf, "weight")
        else:
            layer = self._spec_layer(spec, w_leaf, count, label, str(lhs.dtype))
            layer.eqn_id = id(eqn) if top else -1
            perms = (spec.perms.lhs, spec.perms.out)
            self._conv_rf(eqn.invars[0], eqn.outvars[0], spec, layer, perms)
        origin[eqn.outvars[0]] = layer

    def _spec_layer(self, spec: ConvSpec, w_leaf: int | None, count: int, where: str,
                    dtype: str) -> TracedLayer:
        if any(d > 1 for d in spec.lhs_dilation):
            kind = "conv_transpose"
        elif spec.feature_group_count > 1 and spec.group_in_features == 1:
            kind = "depthwise"
        else:
            kind = "conv"
        if w_leaf is not None and w_leaf in self.consumed:
            w_leaf_used: int | None = None  # a shared weight is counted once
        else:
            w_leaf_used = w_leaf
        layer = TracedLayer(kind, "", count, spec=spec, in_shape=spec.lhs_shape,
                            out_shape=spec.canonical_out_shape, kernel_shape=spec.rhs_shape,
                            weight=w_leaf_used, dtype=dtype, where=where,
                            order=next(self.position))
        if w_leaf_used is not None:
            self.consumed[w_leaf_used] = "weight"
        self.layers.append(layer)
        return layer

    def _dot(self, eqn: Any, a_leaf: int | None, b_leaf: int | None, count: int, where: str,
             origin: dict[Any, TracedLayer]) -> None:
        (ca, cb), (ba, bb) = eqn.params["dimension_numbers"]
        a, b = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
        w_leaf, w_side = (b_leaf, 1) if b_leaf is not None else (a_leaf, 0)
        if w_leaf is None or (a_leaf is not None and b_leaf is not None):
            self.ops["dot_general"] = self.ops.get("dot_general", 0) + count
            return
        w_shape, x_shape = (b, a) if w_side == 1 else (a, b)
        wc, xc = (cb, ca) if w_side == 1 else (ca, cb)
        wb, xb = (bb, ba) if w_side == 1 else (ba, bb)
        d_in = math.prod(w_shape[i] for i in wc)
        batch = math.prod(w_shape[i] for i in wb)
        d_out = math.prod(w_shape[i] for i in range(len(w_shape)) if i not in wc and i not in wb)
        rows = math.prod(x_shape[i] for i in range(len(x_shape)) if i not in xc and i not in xb)
        shared = w_leaf in self.consumed
        layer = TracedLayer("dense", "", count, in_shape=tuple(x_shape),
                            out_shape=tuple(eqn.outvars[0].aval.shape),
                            kernel_shape=tuple(w_shape), weight=None if shared else w_leaf,
                            dense=(rows * batch, d_in, d_out),
                            dtype=str(eqn.invars[0].aval.dtype), where=where,
                            order=next(self.position))
        if not shared:
            self.consumed[w_leaf] = "weight"
        self.layers.append(layer)
        origin[eqn.outvars[0]] = layer

    # ------------------------------------------------------------------ receptive field
    def _conv_rf(self, x: Any, y: Any, spec: ConvSpec, layer: TracedLayer,
                 perms: tuple[Sequence[int], Sequence[int]]) -> None:
        """Receptive field of the conv's output: ``r + (d*(k-1)) * j`` per dim, jump ``j*s``
        (a transposed conv's lhs dilation divides the jump; sizes rounded up)."""
        lhs_axes = tuple(perms[0][2:])
        out_axes = tuple(perms[1][2:])
        r, j = self._get_rf(x, lhs_axes)
        rf = tuple(ri + (e - 1) * ji for ri, e, ji in zip(r, spec.effective_window, j, strict=True))
        jump = tuple(max(1, ji * s // ld) for ji, s, ld in
                     zip(j, spec.window_strides, spec.lhs_dilation, strict=True))
        layer.receptive_field = rf
        self.rf[y] = (rf, jump)
        self._axes[y] = out_axes

    def _link_rf(self, src: Sequence[Any], dst: Sequence[Any]) -> None:
        for a, b in zip(src, dst, strict=False):
            if not isinstance(a, _Literal) and a in self.rf:
                self.rf[b] = self.rf[a]
                if a in self._axes:
                    self._axes[b] = self._axes[a]

    def _get_rf(self, x: Any, axes: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        n = len(axes)
        if isinstance(x, _Literal) or x not in self.rf or self._axes.get(x) != axes:
            return (1,) * n, (1,) * n
        return self.rf[x]

    def _receptive(self, eqn: Any) -> None:
        """Carry receptive fields through shape-keeping ops (the widest operand wins) and
        through pooling windows (`reduce_window`: window and strides on the same axes)."""
        outs = eqn.outvars
        if len(outs) != 1 or not hasattr(outs[0], "aval"):
            return
        shape = getattr(outs[0].aval, "shape", None)
        if shape is None:
            return
        best = None
        for x in eqn.invars:
            if isinstance(x, _Literal) or x not in self.rf:
                continue
            if tuple(getattr(x.aval, "shape", ())) != tuple(shape) and \
                    not eqn.primitive.name.startswith("reduce_window"):
                continue
            cand = self.rf[x]
            if best is None or sum(cand[0]) > sum(best[0][0]):
                best = (cand, self._axes.get(x))
        if best is None:
            return
        (r, j), axes = best
        if eqn.primitive.name.startswith("reduce_window") and axes is not None:
            win = eqn.params.get("window_dimensions")
            strides = eqn.params.get("window_strides")
            if win is not None and strides is not None:
                r = tuple(ri + (win[a] - 1) * ji for ri, a, ji in zip(r, axes, j, strict=True))
                j = tuple(ji * strides[a] for a, ji in zip(axes, j, strict=True))
        self.rf[outs[0]] = (r, j)
        if axes is not None:
            self._axes[outs[0]] = axes

    def _maybe_bias(self, eqn: Any, s: Callable[[Any], int | None],
                    o: Callable[[Any], TracedLayer | None],
                    origin: dict[Any, TracedLayer]) -> None:
        x, y = eqn.invars
        for out_side, leaf_side in ((x, y), (y, x)):
            layer, leaf = o(out_side), s(leaf_side)
            if layer is None or leaf is None or leaf in self.consumed or \
                    self.leaves[leaf].collection not in ("params", "input"):
                continue
            channels = layer.out_shape[-1] if layer.out_shape else 0
            if layer.kind != "dense" and layer.spec is not None:
                channels = layer.spec.out_features
            if self.leaves[leaf].size in (channels, channels * layer.count):
                layer.biases.append(leaf)
                self.consumed[leaf] = "bias"
                origin[eqn.outvars[0]] = layer
                return

    def _scan(self, eqn: Any, s: Callable[[Any], int | None], count: int, where: str) -> None:
        p = eqn.params
        body = p["jaxpr"].jaxpr
        n_c, n_carry = p["num_consts"], p["num_carry"]
        length = int(p["length"])
        inner: dict[Any, int] = {}
        for k, (v, x) in enumerate(zip(body.invars, eqn.invars, strict=True)):
            if n_c <= k < n_c + n_carry:
                continue
            leaf = s(x)
            if leaf is not None:
                inner[v] = leaf
        self.walk(body, inner, {}, count * length, _join(where, f"scan x{length}"), False)


def _join(where: str, more: str) -> str:
    return f"{where}, {more}" if where else more


def _sub_jaxpr(eqn: Any) -> Any:
    key = _CALLS.get(eqn.primitive.name, "")
    if key:
        sub = eqn.params.get(key)
        if sub is not None:
            return sub
    for k in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(k)
        if (sub is not None and hasattr(sub, "eqns")) or hasattr(sub, "jaxpr"):
            return sub
    return None


# ----------------------------------------------------------------------------- naming
def _parent(leaf: Leaf) -> str:
    return ".".join(leaf.path[:-1]) if len(leaf.path) > 1 else ".".join(leaf.path)


def _name_layers(layers: list[TracedLayer], leaves: list[Leaf]) -> None:
    used: dict[str, int] = {}
    kinds = itertools.count()
    for layer in layers:
        if not layer.name:
            if layer.weight is not None and leaves[layer.weight].in_container:
                layer.name = _parent(leaves[layer.weight])
            elif layer.weight is not None:
                layer.name = f"{layer.kind}(arg {leaves[layer.weight].path[0]})"
            else:
                layer.name = f"{layer.kind}{next(kinds)}"
        n = used.get(layer.name, 0)
        used[layer.name] = n + 1
        if n:
            layer.name = f"{layer.name}#{n}"


def _group_rest(w: _Walker, leaves: list[Leaf]) -> None:
    """Variables read by no conv or dense layer: a sibling of a layer's weight is its bias;
    the rest grouped by parent path into norm / embedding / param layers."""
    by_parent: dict[str, TracedLayer] = {}
    for layer in w.layers:
        if layer.weight is not None:
            by_parent.setdefault(_parent(leaves[layer.weight]), layer)
    groups: dict[str, TracedLayer] = {}
    for leaf in leaves:
        if leaf.collection not in ("params", "stats") or leaf.index in w.consumed:
            continue
        if not leaf.in_container:
            continue
        parent = _parent(leaf)
        owner = by_parent.get(parent)
        if owner is not None and leaf.collection == "params":
            owner.biases.append(leaf.index)
            w.consumed[leaf.index] = "bias"
            continue
        use = w.first_use.get(leaf.index, "")
        kind = "embedding" if use in ("gather", "dynamic_slice", "take") else (
            "norm" if use in ("mul", "add", "sub", "div", "rsqrt") or leaf.collection == "stats"
            else "param")
        g = groups.get(parent)
        if g is None:
            g = TracedLayer(kind, parent or leaf.name, 1, dtype=leaf.dtype,
                            order=w.use_pos.get(leaf.index, 1 << 30))
            groups[parent] = g
            w.layers.append(g)
        elif g.kind == "param" and kind != "param":
            g.kind = kind
        g.others.append(leaf.index)
        w.consumed[leaf.index] = kind


# ----------------------------------------------------------------------------- entry point
def trace(f: Any, *args: Any, **kwargs: Any) -> TracedProgram:
    """Trace ``f(*args, **kwargs)`` (no computation) and find its layers.

    `f` is a function of arrays, a `jax.jit`-ed function, a Flax nnx module (called on
    `args`), a linen module (``args = (variables, *inputs)``) or its ``apply``, or a callable
    pytree such as an Equinox module. Raises `TraceError` when tracing fails.
    """
    pure, flat, leaves, kind, title = _prepare(f, args, kwargs)
    avals = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in flat]
    try:
        with recording_specs():
            closed = jax.make_jaxpr(pure)(*avals)
    except TraceError:
        raise
    except Exception as e:
        raise TraceError(f"tracing {title} failed: {type(e).__name__}: {e}") from e
    w = _Walker(leaves)
    src = {v: i for i, v in enumerate(closed.jaxpr.invars)}
    w.walk(closed.jaxpr, src, {}, 1, "", True)
    for lf in leaves:  # a bare array read as a weight is a parameter
        if lf.collection == "input" and w.consumed.get(lf.index) in ("weight", "bias"):
            lf.collection = "params"
    _group_rest(w, leaves)
    w.layers.sort(key=lambda layer: layer.order)
    for idx, how in w.consumed.items():
        leaves[idx].used_as = how
    _name_layers(w.layers, leaves)
    inputs = [lf.shape for lf in leaves if lf.collection == "input"]
    return TracedProgram(w.layers, leaves, closed, flat, pure, kind, title, inputs, w.ops)


# ----------------------------------------------------------------------------- running
def lax_conv(layer: TracedLayer) -> Callable[[Any, Any], Any]:
    """The layer's convolution as a `lax.conv_general_dilated` call (for XLA's counts)."""
    spec = layer.spec
    if spec is None:
        raise ValueError(f"`layer` (={layer.name!r}) has no ConvSpec.")
    if layer.lax_params is not None:
        p = layer.lax_params

        def conv(x: Any, w: Any) -> Any:
            return lax.conv_general_dilated(
                x, w, p["window_strides"], p["padding"], p["lhs_dilation"], p["rhs_dilation"],
                p["dimension_numbers"], p["feature_group_count"], p["batch_group_count"])

        return conv

    def canonical(x: Any, w: Any) -> Any:
        return lax.conv_general_dilated(
            x, w, spec.window_strides, spec.padding, spec.lhs_dilation, spec.rhs_dilation,
            canonical_layouts(spec.num_spatial), spec.feature_group_count,
            spec.batch_group_count)

    return canonical


def conv_operand_shapes(layer: TracedLayer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(lhs, rhs) shapes in the layout `lax_conv(layer)` takes."""
    spec = layer.spec
    assert spec is not None
    if layer.lax_params is None:
        return spec.lhs_shape, spec.rhs_shape
    inv_l = np.argsort(spec.lhs_to_canonical)
    inv_r = np.argsort(spec.rhs_to_canonical)
    return (tuple(spec.lhs_shape[i] for i in inv_l), tuple(spec.rhs_shape[i] for i in inv_r))


def capture_convs(program: TracedProgram) -> dict[int, tuple[Any, Any]]:
    """Run the traced program on its concrete arguments and keep each top-level conv's
    operands (lhs, rhs) in its own layout, keyed by the equation's id."""
    wanted = {layer.eqn_id for layer in program.layers if layer.eqn_id != -1}
    out: dict[int, tuple[Any, Any]] = {}
    closed = program.closed_jaxpr
    _eval(closed.jaxpr, closed.consts, program.flat_args, wanted, out)
    return out


def _eval(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], wanted: set[int],
          out: dict[int, tuple[Any, Any]]) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, _Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts, strict=True):
        env[v] = x
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        if id(eqn) in wanted:
            out[id(eqn)] = (ins[0], ins[1])
        name = eqn.primitive.name
        if name in ("pjit", "jit") and eqn.params.get("name") != "_run":
            sub = eqn.params["jaxpr"]
            res = _eval(sub.jaxpr, sub.consts, ins, wanted, out)
        else:
            params = eqn.primitive.get_bind_params(eqn.params)
            res = eqn.primitive.bind(*ins, **params)
            if not eqn.primitive.multiple_results:
                res = [res]
        for v, x in zip(eqn.outvars, res, strict=True):
            env[v] = x
    return [read(v) for v in jaxpr.outvars]
