"""Sharded jconv calls against `jax.lax` on 8 simulated CPU devices; prints one JSON object.

Run as a script (``python tests/_sharding_cases.py [case ...]``): the device count must be
set before JAX is imported, so `tests/test_sharding.py` runs this in a subprocess and reads
its output. For each case (mode, mesh, operand shardings, ``out_sharding``) and for the
forward and the gradient of a fixed linear loss, it records jconv's and lax's collectives
in the compiled HLO (count and bytes per kind), output shardings, per-device temp bytes
(`memory_analysis`) and jconv's largest error against single-device lax, relative to the
largest reference value.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()

import dataclasses
import json
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jconv

KINDS = ("all-gather", "all-reduce", "collective-permute", "reduce-scatter", "all-to-all")
_OP = re.compile(r"=\s*(\([^)]*\)|\S+)\s+(" + "|".join(KINDS) + r")(?:-start)?\(")
_ARRAY = re.compile(r"(pred|[a-z]+\d+)\[([\d,]*)\]")


def collectives(hlo: str) -> dict[str, list[int]]:
    """``{kind: [count, bytes]}`` of the collectives in compiled HLO text (each op once,
    bytes of its result)."""
    out: dict[str, list[int]] = {}
    for m in _OP.finditer(hlo):
        nbytes = 0
        for dtype, dims in _ARRAY.findall(m.group(1)):
            bits = 8 if dtype == "pred" else int(re.sub(r"\D", "", dtype))
            nbytes += int(np.prod([int(d) for d in dims.split(",") if d])) * bits // 8
        entry = out.setdefault(m.group(2), [0, 0])
        entry[0] += 1
        entry[1] += nbytes
    return out


def _axes(sharding: Any, ndim: int) -> list[Any]:
    """A sharding's spec as a list of ``ndim`` entries (None, or a list of axis names)."""
    spec = tuple(getattr(sharding, "spec", ())) + (None,) * ndim
    return [None if e is None else [e] if isinstance(e, str) else list(e) for e in spec[:ndim]]


# name: (mode, mesh shape, axis names, x shape, layout, x spec, w shape (HWIO), w spec,
#        out_sharding, strides, padding, expected output spec when lax refuses the call)
CASES: dict[str, tuple] = {
    # the calls that failed: explicit sharding, batch and height
    "explicit_batch_small": ("explicit", (8,), ("d",), (16, 16, 16, 8), "NHWC", P("d"),
                             (3, 3, 8, 8), P(), None, (1, 1), "SAME", None),
    "explicit_batch": ("explicit", (8,), ("d",), (16, 56, 56, 64), "NHWC", P("d"),
                       (3, 3, 64, 64), P(), None, (1, 1), "SAME", None),
    "explicit_height": ("explicit", (8,), ("d",), (16, 56, 56, 64), "NHWC", P(None, "d"),
                        (3, 3, 64, 64), P(), None, (1, 1), "SAME", None),
    "explicit_height_strided": ("explicit", (8,), ("d",), (4, 64, 64, 8), "NHWC", P(None, "d"),
                                (3, 3, 8, 8), P(), None, (2, 2), "SAME", None),
    "explicit_batch_dilated": ("explicit", (8,), ("d",), (16, 16, 16, 64), "NHWC", P("d"),
                               (3, 3, 64, 64), P(), None, (1, 1), "SAME", None),
    "explicit_height_dilated": ("explicit", (8,), ("d",), (4, 64, 32, 32), "NHWC",
                                P(None, "d"), (3, 3, 32, 32), P(), None, (1, 1), "SAME", None),
    "explicit_height_uneven": ("explicit", (8,), ("d",), (4, 16, 16, 8), "NHWC", P(None, "d"),
                               (3, 3, 8, 8), P(), None, (1, 1), "VALID",
                               [None, None, None, None]),
    "explicit_features": ("explicit", (8,), ("d",), (8, 16, 16, 16), "NHWC", P(),
                          (3, 3, 16, 32), P(None, None, None, "d"), None, (1, 1), "SAME",
                          [None, None, None, ["d"]]),
    "explicit_mesh2d": ("explicit", (2, 4), ("b", "f"), (8, 16, 16, 16), "NHWC", P("b"),
                        (3, 3, 16, 32), P(None, None, None, "f"), None, (1, 1), "SAME",
                        [["b"], None, None, ["f"]]),
    "explicit_depthwise": ("explicit", (8,), ("d",), (4, 16, 16, 32), "NHWC",
                           P(None, None, None, "d"), (3, 3, 1, 32), P(None, None, None, "d"),
                           None, (1, 1), "SAME", [None, None, None, ["d"]]),
    "explicit_out_batch": ("explicit", (8,), ("d",), (8, 16, 16, 16), "NHWC", P(),
                           (3, 3, 16, 16), P(), P("d"), (1, 1), "SAME", None),
    "explicit_out_features": ("explicit", (8,), ("d",), (8, 16, 16, 16), "NHWC", P(),
                              (3, 3, 16, 32), P(), P(None, None, None, "d"), (1, 1), "SAME",
                              None),
    # auto partitioning
    "auto_batch_small": ("auto", (8,), ("d",), (16, 16, 16, 8), "NHWC", P("d"),
                         (3, 3, 8, 8), P(), None, (1, 1), "SAME", None),
    "auto_batch_nchw": ("auto", (8,), ("d",), (16, 64, 56, 56), "NCHW", P("d"),
                        (3, 3, 64, 64), P(), None, (1, 1), "SAME", None),
    "auto_height": ("auto", (8,), ("d",), (8, 32, 32, 16), "NHWC", P(None, "d"),
                    (3, 3, 16, 16), P(), None, (1, 1), "SAME", None),
    "auto_features": ("auto", (8,), ("d",), (8, 16, 16, 16), "NHWC", P(),
                      (3, 3, 16, 32), P(None, None, None, "d"), None, (1, 1), "SAME", None),
    "auto_mesh2d": ("auto", (2, 4), ("b", "f"), (8, 16, 16, 16), "NHWC", P("b"),
                    (3, 3, 16, 32), P(None, None, None, "f"), None, (1, 1), "SAME", None),
    "auto_height_strided": ("auto", (8,), ("d",), (4, 64, 64, 8), "NHWC", P(None, "d"),
                            (3, 3, 8, 16), P(), None, (2, 2), "SAME", None),
    "auto_channels": ("auto", (8,), ("d",), (4, 16, 16, 32), "NHWC", P(None, None, None, "d"),
                      (3, 3, 32, 16), P(None, None, "d", None), None, (1, 1), "SAME", None),
    "auto_height_width": ("auto", (2, 4), ("a", "b"), (4, 32, 32, 8), "NHWC",
                          P(None, "a", "b"), (3, 3, 8, 8), P(), None, (1, 1), "SAME", None),
    "auto_batch_height": ("auto", (2, 4), ("a", "b"), (4, 32, 32, 8), "NHWC", P("a", "b"),
                          (3, 3, 8, 8), P(), None, (1, 1), "SAME", None),
    "auto_depthwise": ("auto", (8,), ("d",), (4, 16, 16, 32), "NHWC", P(None, None, None, "d"),
                       (3, 3, 1, 32), P(None, None, None, "d"), None, (1, 1), "SAME", None),
    # shard_map: jconv on per-device shapes
    "shard_map_batch": ("shard_map", (8,), ("d",), (16, 32, 32, 16), "NHWC", P("d"),
                        (3, 3, 16, 16), P(), None, (1, 1), "SAME", None),
}


DILATED = ("explicit_batch_dilated", "explicit_height_dilated")
"""Cases with rhs dilation 2 (`atrous`: the phase images stacked into each device's batch)."""
TRANSFORMS = ("auto_height", "auto_mesh2d", "auto_channels", "auto_depthwise")
"""Cases whose `jax.jvp` and `jax.vmap` are checked too."""
PER_EXAMPLE = ("auto_height", "auto_channels")
"""Cases whose per-example kernel gradients (`jax.vmap` of `jax.grad`) and `jax.jacfwd` are
checked against lax's (they batch the tangents' `linear_call`, `jconv._autopart`), and their
mixed second derivatives (`jax.grad` of one operand's gradient in the other: tangents of the
operand a `linear_call` holds)."""
TEMPS = ("auto_batch_small", "auto_batch_nchw", "auto_features", "auto_mesh2d",
         "auto_height_strided")
"""Cases whose forward is compiled on one device's shard alone too (its temp bytes)."""


def _layouts(layout: str) -> tuple[str, str, str]:
    return layout, "HWIO", layout


def run_case(name: str) -> dict[str, Any]:
    (mode, mesh_shape, names, xs, layout, x_spec, ws, w_spec, out_sharding, strides, padding,
     expected) = CASES[name]
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, xs, jnp.float32)
    w = jax.random.normal(kw, ws, jnp.float32) / np.sqrt(np.prod(ws[:-1]))
    dn = _layouts(layout)

    dilation = (2, 2) if name in DILATED else None

    def conv(fn: Any, a: jax.Array, b: jax.Array, **kw: Any) -> jax.Array:
        return fn(a, b, strides, padding, rhs_dilation=dilation, dimension_numbers=dn, **kw)

    groups = xs[layout.index("C")] // ws[-2]
    if groups > 1:  # feature groups (depthwise): one input channel per group of the kernel
        base = conv

        def conv(fn: Any, a: jax.Array, b: jax.Array, **kw: Any) -> jax.Array:
            return base(fn, a, b, feature_group_count=groups, **kw)

    ref = conv(lax.conv_general_dilated, x, w, precision=lax.Precision.HIGHEST)
    ct = jax.random.normal(kc, ref.shape, jnp.float32)
    ref_grad = jax.grad(lambda a, b: jnp.sum(conv(lax.conv_general_dilated, a, b,
                                                  precision=lax.Precision.HIGHEST) * ct),
                        argnums=(0, 1))(x, w)
    types = (AxisType.Auto if mode in ("auto", "shard_map") else AxisType.Explicit,)
    mesh = jax.make_mesh(mesh_shape, names, axis_types=types * len(names))
    result: dict[str, Any] = {"mode": mode, "w_bytes": int(np.prod(ws)) * 4}
    with jax.set_mesh(mesh):
        xd = jax.device_put(x, NamedSharding(mesh, x_spec))
        wd = jax.device_put(w, NamedSharding(mesh, w_spec))
        ctd = None  # the cotangent, sharded as lax's output (jconv's where lax refuses)
        for which, fn in (("lax", lax.conv_general_dilated), ("jconv", jconv.conv_general_dilated)):
            kwargs = {} if out_sharding is None else {"out_sharding": out_sharding}
            if mode == "shard_map":
                local = jax.shard_map(lambda a, b, fn=fn: conv(fn, a, b), mesh=mesh,
                                      in_specs=(x_spec, w_spec), out_specs=x_spec)
                fwd = local
            else:
                def fwd(a: jax.Array, b: jax.Array, fn: Any = fn,
                        kwargs: dict[str, Any] = kwargs) -> jax.Array:
                    return conv(fn, a, b, **kwargs)

            def loss(a: jax.Array, b: jax.Array, c: jax.Array, fwd: Any = fwd) -> jax.Array:
                return jnp.sum(fwd(a, b) * c)  # no flattening reshape of a sharded array

            grad = jax.grad(loss, argnums=(0, 1))
            for part, f, want in (("fwd", fwd, (ref,)), ("grad", grad, ref_grad)):
                key = f"{which}_{part}"
                if part == "grad" and which == "lax" and xs[0] * xs[1] * xs[2] > 20000:
                    continue  # big: lax's gradient costs the suite's time, jconv's is checked
                args = (xd, wd) if part == "fwd" else (xd, wd, ctd)
                try:
                    compiled = jax.jit(f).lower(*args).compile()
                    out = compiled(*args)
                except Exception as e:  # lax refuses some layouts jconv runs
                    result[key] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                    continue
                if part == "fwd" and ctd is None:
                    ctd = jax.device_put(ct, out.sharding)
                outs = out if isinstance(out, tuple) else (out,)
                if which == "jconv" and part == "fwd" and name in TEMPS:
                    result[f"shard_{part}_temp_bytes"] = _shard_temp(f, args)
                result[key] = {
                    "collectives": collectives(compiled.as_text()),
                    "shardings": [_axes(o.sharding, o.ndim) for o in outs],
                    "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
                    "error": None,
                    "rel_err": max(float(jnp.max(jnp.abs(o - r)) / jnp.max(jnp.abs(r)))
                                   for o, r in zip(outs, want, strict=True)),
                }
        if name in TRANSFORMS:  # forward mode and batching (jconv's ops' rules)
            def lin(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
                return jax.jvp(lambda a, b: conv(jconv.conv_general_dilated, a, b), (a, b),
                               (a, b))
            _, tangent = jax.jit(lin)(xd, wd)
            ref_tangent = 2 * ref  # bilinear: d/dt conv((1+t) x, (1+t) w) at t = 0
            batched = jax.jit(jax.vmap(lambda a: conv(jconv.conv_general_dilated, a, wd)))(
                xd[:, None])
            result["jvp_rel_err"] = float(jnp.max(jnp.abs(tangent - ref_tangent))
                                          / jnp.max(jnp.abs(ref_tangent)))
            result["vmap_rel_err"] = float(jnp.max(jnp.abs(batched[:, 0] - ref))
                                           / jnp.max(jnp.abs(ref)))
        if name in PER_EXAMPLE:
            def per_example(fn: Any) -> tuple[jax.Array, jax.Array]:
                def loss(b: jax.Array, a: jax.Array) -> jax.Array:
                    return jnp.sum(conv(fn, a[None], b) ** 2)
                grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(wd, xd)
                jac = jax.jit(jax.jacfwd(lambda t: jnp.sum(conv(fn, xd, t * wd) ** 2)))(1.0)
                return grads, jac
            g_ref, j_ref = per_example(lax.conv_general_dilated)
            try:
                g, j = per_example(jconv.conv_general_dilated)
            except NotImplementedError as e:  # a transformation without a rule
                result["per_example_error"] = f"{type(e).__name__}: {e}"
            else:
                result["per_example_rel_err"] = float(jnp.max(jnp.abs(g - g_ref))
                                                      / jnp.max(jnp.abs(g_ref)))
                result["jacfwd_rel_err"] = float(jnp.abs(j - j_ref) / jnp.abs(j_ref))

            def mixed(fn: Any) -> tuple[jax.Array, jax.Array]:
                def loss(a: jax.Array, b: jax.Array) -> jax.Array:
                    return jnp.sum(jnp.tanh(conv(fn, a, b)) ** 2)
                in_w = jax.grad(lambda b: jnp.sum(jax.grad(loss, 0)(xd, b) * xd))
                in_x = jax.grad(lambda a: jnp.sum(jax.grad(loss, 1)(a, wd) * wd))
                return jax.jit(in_w)(wd), jax.jit(in_x)(xd)
            refs = mixed(lax.conv_general_dilated)
            try:
                got = mixed(jconv.conv_general_dilated)
            except AssertionError as e:  # a held operand's tangent in `linear_call`
                result["mixed_error"] = f"{type(e).__name__}: {e}"
            else:
                result["mixed_rel_err"] = max(float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r)))
                                              for g, r in zip(got, refs, strict=True))
    result["expected_fwd_sharding"] = expected
    return result


def _shard_temp(f: Any, args: tuple[jax.Array, ...]) -> int:
    """Per-device temp bytes of ``f`` compiled on one device's shard shapes, without
    jconv's partitioning rules (the same lowering on the shard alone)."""
    shards = [jax.ShapeDtypeStruct(a.sharding.shard_shape(a.shape), a.dtype) for a in args]
    with jconv.plain_partitioning():
        compiled = jax.jit(f).lower(*shards).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def run_volume() -> dict[str, Any]:
    """A 3-D volume (1 x 32^3 x 8, 3x3x3 SAME) under a memory budget no lowering fits on
    one device, split over a 2x2x2 mesh of its depth, height and width (explicit and auto
    partitioning): the planner's error for one device, each mode's error against lax and
    the temp bytes of the lowering each device runs (planned on its block)."""
    from jconv import ConvSpec, planner
    from jconv.strategies import STRATEGIES

    dn = ("NDHWC", "DHWIO", "NDHWC")
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (1, 32, 32, 32, 8), jnp.float32)
    w = jax.random.normal(kw, (3, 3, 3, 8, 8), jnp.float32) / np.sqrt(216)
    spec = ConvSpec.from_lax(x.shape, w.shape, (1, 1, 1), "SAME", None, None, dn)
    least = min(float(m.cost(spec).temp_bytes) for m in STRATEGIES.values()
                if m.applicable(spec, jnp.float32) is None)
    budget = int(least * 0.5)
    ref = lax.conv_general_dilated(x, w, (1, 1, 1), "SAME", dimension_numbers=dn,
                                   precision=lax.Precision.HIGHEST)
    result: dict[str, Any] = {"budget": budget, "least_one_device": least}
    jconv.set_memory_budget(budget)
    try:
        try:
            planner.plan(spec, jnp.float32)
            result["one_device_error"] = None
        except ValueError as e:
            result["one_device_error"] = str(e)
        for mode in (AxisType.Explicit, AxisType.Auto):
            mesh = jax.make_mesh((2, 2, 2), ("a", "b", "c"), axis_types=(mode,) * 3)
            with jax.set_mesh(mesh):
                xd = jax.device_put(x, NamedSharding(mesh, P(None, "a", "b", "c")))
                wd = jax.device_put(w, NamedSharding(mesh, P()))
                y = jax.jit(lambda a, b: jconv.conv_general_dilated(
                    a, b, (1, 1, 1), "SAME", dimension_numbers=dn))(xd, wd)
            result[str(mode)] = float(jnp.max(jnp.abs(y - ref)) / jnp.max(jnp.abs(ref)))
        local = dataclasses.replace(spec, lhs_shape=(1, 18, 18, 18, 8),
                                    padding=((0, 0),) * 3)
        pick = planner.plan(local, jnp.float32)
        result["local_pick"] = pick
        result["local_temp"] = float(STRATEGIES[pick].cost(local).temp_bytes)
    finally:
        jconv.set_memory_budget(None)
    return result


SAME_LOWERING = {
    "batch": ((16, 16, 16, 8), P("d"), (1, 1), (2, 16, 16, 8)),
    "height": ((8, 32, 32, 16), P(None, "d"), (1, 1), (8, 4, 32, 16)),
    "height_strided": ((4, 64, 64, 8), P(None, "d"), (2, 2), (4, 8, 64, 8)),
}
"""Layouts (input, its split over 8 devices, strides, one device's shard) whose per-device
temporaries are compared with the same lowering's on the shard alone."""


def run_same_lowering() -> dict[str, Any]:
    """Per-device temp bytes of the sharded forward (auto partitioning) and of the same
    lowering compiled on one device's shard alone, for each of `SAME_LOWERING`'s layouts and
    the lowerings `shift`, `accumulate`, `patches`, `hybrid` (3x3 SAME, 8 features)."""
    mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
    out: dict[str, Any] = {}
    for layout, (xs, spec, strides, shard) in SAME_LOWERING.items():
        ws = (3, 3, xs[-1], 8)
        x = jax.ShapeDtypeStruct(xs, jnp.float32, sharding=NamedSharding(mesh, spec))
        w = jax.ShapeDtypeStruct(ws, jnp.float32, sharding=NamedSharding(mesh, P()))
        for name in ("shift", "accumulate", "patches", "hybrid"):
            def f(a: jax.Array, b: jax.Array, name: str = name,
                  strides: tuple[int, int] = strides) -> jax.Array:
                return jconv.conv_general_dilated(a, b, strides, "SAME",
                                                  dimension_numbers=_layouts("NHWC"),
                                                  strategy=name)
            sharded = jax.jit(f).lower(x, w).compile().memory_analysis().temp_size_in_bytes
            with jconv.plain_partitioning():
                alone = jax.jit(f).lower(jax.ShapeDtypeStruct(shard, jnp.float32),
                                         jax.ShapeDtypeStruct(ws, jnp.float32)).compile()
            out[f"{layout}/{name}"] = [int(sharded),
                                       int(alone.memory_analysis().temp_size_in_bytes)]
    return out


def run_transpose() -> dict[str, Any]:
    """`jconv.conv_transpose` (stride 2, SAME: an lhs-dilated convolution) of an input split
    over its height, in both sharding modes, against lax's: collectives of the forward
    and the gradient, output sharding, largest errors."""
    dn = _layouts("NHWC")
    kx, kw = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (8, 16, 16, 8), jnp.float32)
    w = jax.random.normal(kw, (3, 3, 8, 4), jnp.float32) / np.sqrt(72)
    out: dict[str, Any] = {}
    for mode in (AxisType.Explicit, AxisType.Auto):
        mesh = jax.make_mesh((8,), ("d",), axis_types=(mode,))
        with jax.set_mesh(mesh):
            xd = jax.device_put(x, NamedSharding(mesh, P(None, "d")))
            wd = jax.device_put(w, NamedSharding(mesh, P()))
            for which, fn in (("lax", lax.conv_transpose), ("jconv", jconv.conv_transpose)):
                def fwd(a: jax.Array, b: jax.Array, fn: Any = fn) -> jax.Array:
                    return fn(a, b, (2, 2), "SAME", dimension_numbers=dn)

                def loss(a: jax.Array, b: jax.Array, fwd: Any = fwd) -> jax.Array:
                    return jnp.sum(fwd(a, b) ** 2)

                grad = jax.grad(loss, argnums=(0, 1))
                key = f"{mode}/{which}"
                try:
                    f, g = jax.jit(fwd).lower(xd, wd).compile(), jax.jit(grad).lower(
                        xd, wd).compile()
                except Exception as e:  # lax refuses explicit sharding here
                    out[key] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                    continue
                y, gs = f(xd, wd), g(xd, wd)
                out[key] = {"error": None, "fwd": collectives(f.as_text()),
                            "grad": collectives(g.as_text()),
                            "sharding": _axes(y.sharding, y.ndim), "y": np.asarray(y),
                            "gx": np.asarray(gs[0]), "gw": np.asarray(gs[1])}
    ref = {k: out[f"{AxisType.Auto}/lax"][k] for k in ("y", "gx", "gw")}
    for entry in out.values():
        if entry["error"] is None:
            entry["rel_err"] = max(float(np.max(np.abs(entry.pop(k) - r)) / np.max(np.abs(r)))
                                   for k, r in ref.items())
    return {str(k): v for k, v in out.items()}


def run_unsharded() -> dict[str, Any]:
    """Calls on a host with several devices and operands on one (every call takes the
    auto-partitioning ops, `jconv._autopart`): the messages of a forced lowering that cannot
    run the convolution, eagerly and under jit; the Pallas lowering's gradients against
    lax's; the temp bytes of a 3x3 layer's gradients (8 x 56 x 56 x 64, `auto`), which
    the test compares with a single-device host's, and of a chain of six 3x3 256 -> 256
    layers at 4x4 on `scatter` (its kernel copies)."""
    dn = _layouts("NHWC")
    kx, kw = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (2, 9, 8, 6), jnp.float32)
    w = jax.random.normal(kw, (3, 3, 6, 4), jnp.float32) / np.sqrt(54)

    def forced(name: str) -> Any:
        return lambda a, b: jconv.conv_general_dilated(a, b, (1, 1), "SAME",
                                                       dimension_numbers=dn, strategy=name)
    result: dict[str, Any] = {}
    for mode, call in (("eager", forced("polyphase")), ("jit", jax.jit(forced("polyphase")))):
        try:
            call(x, w)
            result[f"refusal_{mode}"] = None
        except ValueError as e:
            result[f"refusal_{mode}"] = str(e)

    def grads(conv: Any) -> tuple[jax.Array, jax.Array]:
        return jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.tanh(conv(a, b)) ** 2), (0, 1)))(x, w)
    want = grads(lambda a, b: lax.conv_general_dilated(a, b, (1, 1), "SAME",
                                                       dimension_numbers=dn,
                                                       precision=lax.Precision.HIGHEST))
    try:
        got = grads(forced("pallas"))
    except AssertionError as e:  # JAX's transpose of a `pallas_call`, which has none
        result["pallas_grad_error"] = f"{type(e).__name__}: {e}"
    else:
        result["pallas_grad_rel_err"] = max(float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r)))
                                            for g, r in zip(got, want, strict=True))
    xs = jax.ShapeDtypeStruct((8, 56, 56, 64), jnp.float32)
    ws = jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)
    step = jax.grad(lambda a, b: jnp.sum(forced("auto")(a, b) ** 2), (0, 1))
    result["grad_temp_bytes"] = jax.jit(step).lower(xs, ws).compile().memory_analysis(
        ).temp_size_in_bytes

    def chain(a: jax.Array, kernels: jax.Array) -> jax.Array:  # kernel copies 2.4 MB each
        for k in kernels:
            a = forced("scatter")(a, k)
        return a
    result["chain_temp_bytes"] = jax.jit(chain).lower(
        jax.ShapeDtypeStruct((4, 4, 4, 256), jnp.float32),
        jax.ShapeDtypeStruct((6, 3, 3, 256, 256), jnp.float32)).compile().memory_analysis(
        ).temp_size_in_bytes
    return result


def run_linear_transpose() -> dict[str, Any]:
    """`jax.linear_transpose` of a 3x3 convolution under auto partitioning, its input split
    over the batch (8 devices) and over the height (4): in the input (kernel fixed) and in the
    kernel (input fixed), jitted, against lax's (relative errors, or the exception)."""
    dn = _layouts("NHWC")
    kx, kw, kc = jax.random.split(jax.random.key(5), 3)
    x = jax.random.normal(kx, (8, 16, 8, 4), jnp.float32)
    w = jax.random.normal(kw, (3, 3, 4, 6), jnp.float32) / 6
    ct = jax.random.normal(kc, (8, 16, 8, 6), jnp.float32)
    out: dict[str, Any] = {}
    for split, mesh_shape, spec in (("batch", (8,), P("d")), ("height", (4,), P(None, "d"))):
        mesh = jax.make_mesh(mesh_shape, ("d",), axis_types=(AxisType.Auto,),
                             devices=jax.devices()[:mesh_shape[0]])
        xd = jax.device_put(x, NamedSharding(mesh, spec))
        ctd = jax.device_put(ct, NamedSharding(mesh, spec))
        for name, conv in (("jconv", jconv.conv_general_dilated),
                           ("lax", lax.conv_general_dilated)):
            def f(a: jax.Array, b: jax.Array, conv: Any = conv) -> jax.Array:
                return conv(a, b, (1, 1), "SAME", dimension_numbers=dn,
                            precision=lax.Precision.HIGHEST)
            try:
                gx = jax.jit(jax.linear_transpose(lambda a: f(a, w), xd))(ctd)[0]
                gw = jax.jit(jax.linear_transpose(lambda b, a=xd: f(a, b), w))(ctd)[0]
                out[f"{split}/{name}"] = (np.asarray(gx), np.asarray(gw))
            except Exception as e:  # jconv's failure is the result; lax's would raise
                if name == "lax":
                    raise
                out[f"{split}/{name}"] = f"{type(e).__name__}: {str(e)[:300]}"
    result: dict[str, Any] = {}
    for split in ("batch", "height"):
        got, want = out[f"{split}/jconv"], out[f"{split}/lax"]
        result[split] = got if isinstance(got, str) else max(
            float(np.max(np.abs(g - r)) / np.max(np.abs(r)))
            for g, r in zip(got, want, strict=True))
    return result


EXTRA = {"volume": run_volume, "same_lowering": run_same_lowering, "transpose": run_transpose,
         "unsharded": run_unsharded, "linear_transpose": run_linear_transpose}
"""Named measurements other than `CASES`."""


def main(names: list[str]) -> None:
    start = time.perf_counter()
    out = {}
    for name in names or [*CASES, *EXTRA]:
        t = time.perf_counter()
        out[name] = EXTRA[name]() if name in EXTRA else run_case(name)
        out[name]["seconds"] = time.perf_counter() - t
    out["_seconds"] = time.perf_counter() - start
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
