"""Auto partitioning: the convolution as ops whose shardings XLA's partitioner hands jconv.

Under jit over arrays placed with a `NamedSharding` on ``Auto`` mesh axes the shardings are
unknown while tracing. `partitioned` computes the canonical convolution with three bilinear
ops, each a `jax.experimental.custom_partitioning` op:

- ``y(x, w)``: the convolution, ``(N, *in, C), (*window, Cg, F) -> (N_out, *out, F)``;
- ``dx(ct, w)``: its transpose in ``x`` (the input gradient), ``y``-shaped -> ``x``-shaped;
- ``dw(x, ct)``: its transpose in ``w`` (the kernel gradient) -> ``w``-shaped.

Once the partitioner has propagated shardings, each op's rule sees its operands' and plans
the per-device convolution as explicit sharding does (`jconv._sharding.plan_split`: batch,
spatial with halo exchanges, output features, groups, input channels with a sum); each
device runs the lowering planned on its shard's shape, and the only communication is the
halos, the partial sums and the gradients' sums over the devices that shared an operand.
Where XLA does not partition an op (the program on one device), it runs the program a
single-device host would: traced as per-device code, so its batch chunks take any size.
``dx`` and ``dw`` are pullbacks of the lowering (its `jax.vjp` at zero), so they run the
engine's planned gradients (`jconv._gradients`) and a lowering with its own derivative rule
(the Pallas kernel, which has no transpose) differentiates as on one device.

Differentiation: each op is `jax.custom_jvp` with tangents through `linear_call`, whose
transposes are the other two ops (``y``'s in ``x`` is ``dx``, in ``w`` is ``dw``; ``dx``'s
in ``ct`` is ``y``, ...), so forward and reverse mode compose to any order. Its primal is a
primitive (`_op_p`) that transposes to the same ops, in whichever operand is linear: that is
what `jax.linear_transpose` runs. Batching: each op's `custom_vmap` rule runs its
single-device program vmapped (XLA partitions that).
`jax.vmap` of a gradient (per-example gradients), `jax.jacfwd` and `jax.hessian` batch the
tangents' `linear_call`, for which JAX has no batching rule: this module registers one
(`_batch_linear_call`, only where JAX has none), which calls `linear_call` on the callee
and its transpose vmapped. Mixed second derivatives (the kernel gradient differentiated in
the input, `jax.hessian`) differentiate a `linear_call` in the operand it holds, where
JAX's JVP rule asserts a zero tangent: this module extends that rule (`_jvp_linear_call`,
JAX's own where the held tangents are zero). Without these, such programs failed on every
host with more than one device, sharded or not.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap
from jax.custom_derivatives import SymbolicZero, linear_call
from jax.experimental.custom_partitioning import custom_partitioning
from jax.extend.core import Primitive, jaxpr_as_fun
from jax.interpreters import ad, batching, mlir
from jax.sharding import Mesh, NamedSharding

from ._sharding import Axes, Split, named_axes, partition_spec, per_device, plan_split
from ._spec import ConvSpec

__all__ = ["Local", "Plan", "partitioned", "plain_partitioning", "uses_rules"]

Local = Callable[[ConvSpec, jax.Array, jax.Array], jax.Array]
Plan = Callable[[ConvSpec, bool], Local]
"""``plan(spec, tied)`` -> the function computing that spec, ``fn(spec, x, w)`` (its output
in the accumulation dtype); ``tied``: the lowering's copies of the kernel wait for the
input (`jconv._engine._after`). The forward op's are tied; a transpose's are not, where the
tie would keep alive the primal it reads (a halo exchange of the zeros a pullback starts
from)."""

Op = Callable[[jax.Array, jax.Array], jax.Array]

_RULES: contextvars.ContextVar[bool] = contextvars.ContextVar("partition_rules", default=True)


@contextlib.contextmanager
def plain_partitioning() -> Iterator[None]:
    """Trace convolutions without jconv's partitioning rules: XLA partitions the lowerings'
    own ops (it may gather operands), as it would any JAX code; on one device, the program
    traced is the one a single-device host runs.

    >>> import jconv
    >>> with jconv.plain_partitioning():
    ...     y = jconv.conv(jnp.ones((1, 8, 8, 1)), jnp.ones((3, 3, 1, 2)))
    >>> y.shape
    (1, 8, 8, 2)
    """
    token = _RULES.set(False)
    try:
        yield
    finally:
        _RULES.reset(token)


def uses_rules() -> bool:
    """False inside `plain_partitioning`."""
    return _RULES.get()


def partitioned(spec: ConvSpec, plan: Plan, whole: Callable[[bool], Local], x: jax.Array,
                w: jax.Array, acc_dtype: jnp.dtype) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N_out, *out, F)`` in ``acc_dtype``, partitioned by
    the operands' shardings (see the module docstring): each device runs ``plan(local,
    tied)`` on its shard; ``whole(tied)`` computes `spec` where the op is not partitioned
    or where XLA partitions it itself (batched)."""
    return _Bilinear(spec, plan, whole, x, w, acc_dtype).ops["y"](x, w)


class _Bilinear:
    """The three ops of one convolution (`partitioned`), differentiable and batchable."""

    def __init__(self, spec: ConvSpec, plan: Plan, whole: Callable[[bool], Local],
                 x: jax.Array, w: jax.Array, acc_dtype: jnp.dtype) -> None:
        self.spec, self.plan, self.whole = spec, plan, whole
        self.avals = {"x": jax.ShapeDtypeStruct(x.shape, x.dtype),
                      "w": jax.ShapeDtypeStruct(w.shape, w.dtype),
                      "y": jax.ShapeDtypeStruct(spec.canonical_out_shape, acc_dtype)}
        self.rule, self.factor_sizes = _sharding_rule(spec)
        raw = {k: self._batchable(k) for k in ("y", "dx", "dw")}
        self.ops: dict[str, Op] = {k: self._differentiable(k, raw[k]) for k in raw}

    # single-device programs ------------------------------------------------------------
    def plain(self, kind: str, tied: bool) -> Op:
        """The op's single-device program: the lowering (its kernel copies after the input
        if ``tied``), or its transposes."""
        fn, spec = self.whole(tied), self.spec
        if kind == "y":
            return lambda x, w: fn(spec, x, w).astype(self.avals["y"].dtype)
        if kind == "dx":
            return lambda ct, w: _transpose(lambda x: fn(spec, x, w), self.avals["x"], ct)
        return lambda x, ct: _transpose(lambda w: fn(spec, x, w), self.avals["w"], ct)

    # partitioning -----------------------------------------------------------------------
    def _split(self, kind: str, mesh: Mesh, arg_shapes: Any) -> Split:
        """The split of the convolution for the op's operands' shardings (the operand not
        given, ``x`` for ``dx`` or ``w`` for ``dw``, split as the given ones imply)."""
        a, b = (named_axes(s.sharding, s.ndim) for s in arg_shapes)
        spec, ns = self.spec, self.spec.num_spatial
        one_group = spec.feature_group_count == 1
        if kind == "y":
            return plan_split(spec, mesh, a, b, (None,) * (ns + 2))
        if kind == "dx":  # (ct, w): x as the output's batch and spatial blocks
            channels = b[-2] if one_group else a[-1]
            return plan_split(spec, mesh, (a[0], *a[1:-1], channels), b, a)
        # dw (x, ct): w as the input's channels and the output's features
        w_axes = (*(None,) * ns, a[-1] if one_group else None, b[-1])
        return plan_split(spec, mesh, a, w_axes, b)

    def _partitionable(self, kind: str) -> Op:
        plain = self.plain(kind, tied=kind == "y")

        def unpartitioned(a: jax.Array, b: jax.Array) -> jax.Array:
            # what runs where XLA does not partition the op (one device holds the
            # program): planned as on a single-device host (batch chunks of any size)
            with per_device():
                return plain(a, b)

        op = custom_partitioning(jax.jit(unpartitioned))
        x, w, y = self.rule
        ins, out = {"y": ((x, w), y), "dx": ((y, w), x), "dw": ((x, y), w)}[kind]
        roles = {"y": ("x", "w", "y"), "dx": ("y", "w", "x"), "dw": ("x", "y", "w")}[kind]

        def shardings(mesh: Mesh, split: Split) -> tuple[NamedSharding, ...]:
            return tuple(_named(mesh, getattr(split, r)) for r in roles)

        def rule(mesh: Mesh, arg_shapes: Any, result_shape: Any) -> Any:
            split = self._split(kind, mesh, arg_shapes)
            lower = self._per_device(kind, split)
            *args, result = shardings(mesh, split)
            return mesh, lower, result, tuple(args)

        op.def_partition(
            rule,
            infer_sharding_from_operands=lambda mesh, args, _: shardings(
                mesh, self._split(kind, mesh, args))[-1],
            sharding_rule=f"{ins[0]}, {ins[1]} -> {out}", **self.factor_sizes)
        return op

    def _per_device(self, kind: str, split: Split) -> Op:
        """One device's program of the op, on its blocks, for `split`."""
        fn = self.plan(split.local, kind == "y")
        dtype = self.avals["y"].dtype

        def partial(xb: jax.Array, wb: jax.Array) -> jax.Array:
            return split.partial(fn, xb, wb).astype(dtype)

        def block(role: str) -> jax.ShapeDtypeStruct:
            aval, axes = self.avals[role], getattr(split, role)
            shape = tuple(n // math.prod(split.mesh.shape[a] for a in ax or ())
                          for n, ax in zip(aval.shape, axes, strict=True))
            return jax.ShapeDtypeStruct(shape, aval.dtype)

        def lower(a: jax.Array, b: jax.Array) -> jax.Array:
            # each device's output block sums its partial (the sum's cotangent is the
            # block's), and each operand's cotangent sums over the devices that shared it:
            # the axes the split uses and the operand is not split over
            with per_device():
                if kind == "y":
                    yb = partial(a, b)
                    return lax.psum(yb, split.reduce) if split.reduce else yb
                if kind == "dx":
                    dx = _transpose(lambda xb: partial(xb, b), block("x"), a)
                    return _sum_over(dx, split, split.x)
                dw = _transpose(lambda wb: partial(a, wb), block("w"), b)
                return _sum_over(dw, split, split.w)

        return lower

    # transformations --------------------------------------------------------------------
    def _batchable(self, kind: str) -> Op:
        op = self._partitionable(kind)
        batchable = custom_vmap(lambda a, b: op(a, b))

        def batched(axis_size: int, in_batched: list[bool], a: jax.Array,
                    b: jax.Array) -> tuple[jax.Array, bool]:
            axes = tuple(0 if t else None for t in in_batched)
            return jax.vmap(self.plain(kind, tied=kind == "y"), in_axes=axes)(a, b), True

        batchable.def_vmap(batched)
        return batchable

    def _differentiable(self, kind: str, raw: Op) -> Op:
        def ops(k: str) -> Op:  # the three ops, once built
            return self.ops[k]

        # transposes, in the first and the second operand, as ops (so they differentiate)
        def transpose_first(b: jax.Array, ct: jax.Array) -> jax.Array:
            return {"y": lambda: ops("dx")(ct, b), "dx": lambda: ops("y")(ct, b),
                    "dw": lambda: ops("dx")(b, ct)}[kind]()

        def transpose_second(a: jax.Array, ct: jax.Array) -> jax.Array:
            return {"y": lambda: ops("dw")(a, ct), "dx": lambda: ops("dw")(ct, a),
                    "dw": lambda: ops("y")(a, ct)}[kind]()

        ins = {"y": ("x", "w"), "dx": ("y", "w"), "dw": ("x", "y")}[kind]
        call = _OpCall(raw, transpose_first, transpose_second,
                       (self.avals[ins[0]], self.avals[ins[1]]))
        op = jax.custom_jvp(lambda a, b: _op_p.bind(a, b, jaxpr=call.jaxpr, call=call))

        def jvp(primals: tuple[jax.Array, jax.Array],
                tangents: tuple[Any, Any]) -> tuple[jax.Array, jax.Array]:
            a, b = primals
            ta, tb = tangents
            out = op(a, b)
            terms = []
            if not isinstance(ta, SymbolicZero):
                terms.append(linear_call(lambda b_, t: ops(kind)(t, b_), transpose_first,
                                         b, ta))
            if not isinstance(tb, SymbolicZero):
                terms.append(linear_call(lambda a_, t: ops(kind)(a_, t), transpose_second,
                                         a, tb))
            tangent = terms[0] if len(terms) == 1 else terms[0] + terms[1] if terms else (
                jnp.zeros_like(out))
            return out, tangent

        op.defjvp(jvp, symbolic_zeros=True)
        return op


@dataclasses.dataclass(frozen=True, eq=False)
class _OpCall:
    """One op as `_op_p` runs it: the op (``raw``, custom-vmapped and custom-partitioned) on
    operands of ``in_avals``, its transposes in the first and the second operand, and
    (`jaxpr`) the op traced once."""

    raw: Op
    transpose_first: Callable[[jax.Array, jax.Array], jax.Array]
    transpose_second: Callable[[jax.Array, jax.Array], jax.Array]
    in_avals: tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]

    @functools.cached_property
    def jaxpr(self) -> Any:
        """``raw`` as a closed jaxpr (`_op_p`'s parameter, so that JAX sees the calls inside:
        the `custom_partitioning` call that needs the program's devices, the lowering's
        loops)."""
        return jax.make_jaxpr(self.raw)(*self.in_avals)


_op_p = Primitive("jconv_partitioned_op")
"""An op's primal (`_Bilinear._differentiable`): ``jaxpr`` (the op's `custom_vmap` of its
`custom_partitioning` call), bilinear. Its transpose rule transposes in whichever operand
is linear, so that `jax.linear_transpose` of a convolution (which partial-evaluates a
`custom_jvp` into its primal) runs on multi-device hosts: JAX has no transpose for the calls
inside; its batching rule is the op's `custom_vmap` rule."""
_op_p.def_impl(lambda a, b, *, jaxpr, call: jaxpr_as_fun(jaxpr)(a, b)[0])
_op_p.def_abstract_eval(lambda a, b, *, jaxpr, call: jaxpr.out_avals[0])
mlir.register_lowering(_op_p, mlir.lower_fun(
    lambda a, b, *, jaxpr, call: jaxpr_as_fun(jaxpr)(a, b)[0], multiple_results=False))


def _op_transpose(ct: Any, a: Any, b: Any, *, jaxpr: Any, call: _OpCall) -> tuple[Any, Any]:
    """The op's transpose in the operand that is linear (the other two ops)."""
    if type(ct) is ad.Zero:
        return (ad.Zero(a.aval) if ad.is_undefined_primal(a) else None,
                ad.Zero(b.aval) if ad.is_undefined_primal(b) else None)
    if ad.is_undefined_primal(a):
        assert not ad.is_undefined_primal(b), "the op is bilinear, not linear in both"
        return call.transpose_first(b, ct), None
    return None, call.transpose_second(a, ct)


def _op_batched(args: tuple[jax.Array, jax.Array], dims: tuple[int | None, int | None], *,
                jaxpr: Any, call: _OpCall) -> tuple[jax.Array, int]:
    """The op vmapped: its `custom_vmap` rule (the single-device program, vmapped)."""
    return jax.vmap(call.raw, in_axes=dims)(*args), 0


ad.primitive_transposes[_op_p] = _op_transpose
batching.primitive_batchers[_op_p] = _op_batched


def _linear_call_primitive() -> Primitive:
    """JAX's `linear_call` primitive, read off a traced call (it is not exported)."""
    jaxpr = jax.make_jaxpr(lambda t: linear_call(lambda r, u: u, lambda r, u: u, (), t))(0.0)
    return jaxpr.jaxpr.eqns[0].primitive


def _batch_linear_call(args: list[Any], dims: list[int | None], *, callee: Any,
                       transpose_thunk: Any, num_callee_consts: int, num_res: int
                       ) -> tuple[list[jax.Array], list[int]]:
    """`linear_call` over a batch: the callee and its transpose vmapped (the batch leading),
    the linear operands broadcast to the batch where they had none (their cotangents are then
    summed over it by the broadcast's transpose)."""
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    args = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims, strict=True)]
    held = num_callee_consts + num_res
    held_axes = [None if d is None else 0 for d in dims[:held]]
    lin = [a if d is not None else jnp.broadcast_to(a, (size, *jnp.shape(a)))
           for a, d in zip(args[held:], dims[held:], strict=True)]
    fun = jaxpr_as_fun(callee)
    transpose, transpose_consts = transpose_thunk()
    fun_t = jaxpr_as_fun(transpose)

    def one(h: list[jax.Array], t: list[jax.Array]) -> Any:
        return fun(*h, *t)

    def one_t(h: list[jax.Array], ct: list[jax.Array]) -> Any:
        return fun_t(*transpose_consts, *h[num_callee_consts:], *ct)

    out = linear_call(jax.vmap(one, in_axes=(held_axes, 0)),
                      jax.vmap(one_t, in_axes=(held_axes, 0)), args[:held], lin)
    return list(out), [0] * len(out)


def _jvp_linear_call(primals: list[Any], tangents: list[Any], **params: Any
                     ) -> tuple[list[jax.Array], list[Any]]:
    """JAX's `linear_call` JVP rule, extended to tangents of the operands it holds: the
    call is linear in its linear operands only, so a held operand's tangent adds the
    callee's own derivative in it (JAX's rule asserts those tangents are zero)."""
    held = params["num_callee_consts"] + params["num_res"]
    moving = [i for i in range(held) if type(tangents[i]) is not ad.Zero]
    if not moving:
        return _JAX_LINEAR_CALL_JVP(primals, tangents, **params)
    lin = tangents[held:]
    if all(type(t) is ad.Zero for t in lin):
        out, terms = _LINEAR_CALL.bind(*primals, **params), []
    else:
        fixed = [ad.Zero(t.aval) if i in moving else t for i, t in enumerate(tangents[:held])]
        out, t_lin = _JAX_LINEAR_CALL_JVP(
            primals, [*fixed, *(ad.instantiate_zeros(t) for t in lin)], **params)
        terms = [t_lin]
    callee = jaxpr_as_fun(params["callee"])

    def through_held(*values: jax.Array) -> Any:
        args = list(primals)
        for i, v in zip(moving, values, strict=True):
            args[i] = v
        return callee(*args)

    _, t_held = jax.jvp(through_held, [primals[i] for i in moving],
                        [tangents[i] for i in moving])
    terms.append(list(t_held))
    return list(out), [sum(ts) for ts in zip(*terms, strict=True)]


_LINEAR_CALL = _linear_call_primitive()
if _LINEAR_CALL not in batching.fancy_primitive_batchers:
    batching.primitive_batchers[_LINEAR_CALL] = _batch_linear_call
_JAX_LINEAR_CALL_JVP = ad.primitive_jvps[_LINEAR_CALL]
ad.primitive_jvps[_LINEAR_CALL] = _jvp_linear_call


def _transpose(f: Callable[[jax.Array], jax.Array], aval: jax.ShapeDtypeStruct,
               ct: jax.Array) -> jax.Array:
    """The transpose of the linear ``f`` (on ``aval``) applied to ``ct``: its pullback at
    zero, so that a lowering with its own derivative rule is transposed through it (a Pallas
    kernel has no transpose; its tangent is `shift`'s)."""
    y, pullback = jax.vjp(f, jnp.zeros(aval.shape, aval.dtype))
    (out,) = pullback(ct.astype(y.dtype))
    return out


def _named(mesh: Mesh, axes: tuple[Axes | None, ...]) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(axes))


def _sum_over(g: jax.Array, split: Split, own: tuple[Axes | None, ...]) -> jax.Array:
    """``g`` summed over the split's mesh axes that ``own`` (the operand's) does not use."""
    mine = {a for axes in own if axes for a in axes}
    axes = tuple(a for a in split.axes if a not in mine)
    return lax.psum(g, axes) if axes else g


def _sharding_rule(spec: ConvSpec) -> tuple[tuple[str, str, str], dict[str, int]]:
    """Shardy factors of the canonical input, kernel and output, and the sizes of those
    only a compound names: the batch, the channels and the features are shared (with
    groups, the group is the major factor of the channels and the features); a spatial
    dimension the output keeps the size of is one factor, one it divides
    by the stride (``in = out * stride``) is ``(o t)`` in the input, the output's ``o``
    major (a split of the input's rows splits the output's); every other dimension is its
    own factor."""
    ns = spec.num_spatial
    xs, ys, sizes = [], [], {}
    for i in range(ns):
        n_in, n_out, s = spec.in_spatial[i], spec.out_spatial[i], spec.window_strides[i]
        if n_in == n_out:
            xs.append(f"s{i}")
            ys.append(f"s{i}")
        elif s > 1 and n_in == n_out * s:
            xs.append(f"(o{i} t{i})")
            ys.append(f"o{i}")
            sizes[f"t{i}"] = s
        elif (up := spec.lhs_dilation[i]) > 1 and n_out == n_in * up:
            xs.append(f"s{i}")
            ys.append(f"(s{i} t{i})")
            sizes[f"t{i}"] = up
        else:
            xs.append(f"i{i}")
            ys.append(f"o{i}")
    ks = [f"k{i}" for i in range(ns)]
    g = spec.feature_group_count
    if g == 1:
        c, cg, f = "c", "c", "f"
    else:  # the groups, major in the channels and the features (a compound names no
        # factor of size one: depthwise channels are the groups)
        per_c, per_f = spec.in_features // g, spec.out_features // g
        c, cg, f = "(g c)" if per_c > 1 else "g", "c", "(g f)" if per_f > 1 else "g"
        if per_f > 1:  # sizes of the factors named in compounds only
            sizes.update(f=per_f, **({"g": g} if per_c > 1 else {}))
    one = spec.batch_group_count == 1
    return ((" ".join(["n" if one else "m", *xs, c]), " ".join([*ks, cg, f]),
             " ".join(["n", *ys, f])), sizes)
