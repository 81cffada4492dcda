"""`jconv.explain(f, *args, **kwargs)`: the `jconv explain` report for the user's own model.

`jconv._trace.trace` finds the layers in the program's jaxpr (no computation); every
number then comes from the symbolic model, as for the layer grammar. Verification
(``verify=True``):

- parameters: the layers' formulas against the model's own parameter pytree (exact), and
  each weight formula against its leaf's size;
- FLOPs: the convs' ``flops_xla`` formulas against XLA's ``cost_analysis()`` of a program
  holding just those convolutions (exact), and the whole program's count, the remainder
  shown as "other ops";
- memory: XLA's ``memory_analysis()`` of the forward pass and of a training step (gradient
  of the sum of the outputs with respect to the parameters), and the residuals saved for
  the backward pass against the formula (every layer output), shown, not checked;
- the sum over channels: each top-level conv's output maps against the sum of their per-
  channel correlations, on the user's real layer inputs and weights when the arguments are
  concrete arrays (random data of the same shapes otherwise or inside loops), within the
  memory budget (`jconv._verify.Verifier.plan`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import numpy as np
import sympy

from . import symbolic
from ._explain import (
    DTYPES,
    check_options,
    conv_quantities,
    network_hypotheses,
)
from ._explain_report import ExplainReport
from ._report import Check, LayerRow, NetworkReport, Quantity
from ._spec import ConvSpec, canonical_layouts
from ._trace import TracedLayer, TracedProgram, capture_convs, conv_operand_shapes, lax_conv, trace
from ._verify import SkippedCheck, Verifier

__all__ = ["explain", "program_report"]

_N, _D, _U, _C = sympy.symbols("N D_in D_out C", integer=True, positive=True)


def _q(expr: sympy.Expr, subs: dict[sympy.Symbol, int]) -> Quantity:
    return Quantity(int(expr.subs(subs)), str(expr), sympy.latex(expr))


def _itemsize(dtype: str) -> int:
    return DTYPES.get(dtype, int(np.dtype(dtype).itemsize) if dtype != "bfloat16" else 2)


def _rule(layer: TracedLayer) -> tuple[str, str | None]:
    spec = layer.spec
    if layer.kind == "dense" and layer.dense is not None:
        return f"sum over D_in = {layer.dense[1]} inputs", "nd,de->ne"
    if spec is None:
        if layer.unknown_spec:
            return "a jconv convolution (its spec was not recorded: traced before)", None
        return {"norm": "per channel: scale and shift (normalisation)",
                "embedding": "one row looked up per token",
                }.get(layer.kind, "parameters read elementwise"), None
    n = spec.num_spatial
    sp, ks = "zyx"[3 - n:] if n <= 3 else "o" * n, "ijk"[:n] if n <= 3 else "k" * n
    c, g, cg = spec.in_features, spec.feature_group_count, spec.group_in_features
    if g == 1:
        return f"sum over C_in = {c} per-channel correlations", f"n{sp}{ks}c,{ks}cf->n{sp}f"
    if cg == 1:
        return (f"1 per-channel correlation (depthwise, C_in = {c}, m = "
                f"{spec.group_out_features}), no sum", f"n{sp}{ks}c,{ks}cm->n{sp}cm")
    return (f"sum over C_in/g = {cg} per-channel correlations (g = {g} groups)",
            f"n{sp}{ks}gc,{ks}gcf->n{sp}gf")


def _row(i: int, layer: TracedLayer, program: TracedProgram, itemsize: int) -> LayerRow:
    leaves = program.leaves
    bias_size = sum(leaves[b].size for b in layer.biases)
    zero = Quantity(0, "0", "0")
    if layer.spec is not None:
        q = conv_quantities(layer.spec, bias_size > 0, itemsize)
        in_shape, out_shape = layer.spec.lhs_shape, layer.spec.canonical_out_shape
        kernel = layer.spec.rhs_shape
        groups = layer.spec.feature_group_count
    elif layer.kind == "dense" and layer.dense is not None:
        rows, d_in, d_out = layer.dense
        subs = {_N: rows, _D: d_in, _U: d_out}
        biases = _U if bias_size else sympy.Integer(0)
        q = {"weights": _q(_D * _U, subs), "biases": _q(biases, subs),
             "params": _q(_D * _U + biases, subs), "macs": _q(_N * _D * _U, subs),
             "out_elements": _q(_N * _U, subs), "out_bytes": _q(_N * _U * itemsize, subs)}
        in_shape, out_shape, kernel, groups = (rows, d_in), (rows, d_out), (d_in, d_out), 1
    else:
        size = sum(leaves[j].size for j in layer.others if leaves[j].collection == "params")
        ch = leaves[layer.others[0]].shape[-1] if layer.others and leaves[
            layer.others[0]].shape else 1
        n_param = sum(1 for j in layer.others if leaves[j].collection == "params")
        expr = (n_param * _C) if size == n_param * ch else sympy.Integer(size)
        q = {"weights": zero, "biases": zero, "params": _q(expr, {_C: ch}),
             "macs": zero, "out_elements": zero, "out_bytes": zero}
        in_shape = out_shape = ()
        kernel, groups = None, 1
    rule, eq = _rule(layer)
    rf, rf_formula = layer.receptive_field, ""
    if rf is not None and layer.spec is not None:
        r_in = tuple(r - (e - 1) for r, e in zip(rf, layer.spec.effective_window, strict=True))
        rf_formula = "r_in + d*(k - 1)*j_in = " + ", ".join(
            f"{a} + {e - 1}*{(r - a) // (e - 1) if e > 1 else 1}"
            for a, e, r in zip(r_in, layer.spec.effective_window, rf, strict=True))
    return LayerRow(
        index=i, name=layer.name, kind=layer.kind, in_shape=tuple(in_shape),
        out_shape=tuple(out_shape), kernel_shape=kernel, groups=groups, quantities=q,
        rule=rule, einsum=eq, receptive_field=rf, rf_formula=rf_formula, count=layer.count,
        where=layer.where,
    )


def _param_multiplier(layer: TracedLayer, row: LayerRow, program: TracedProgram) -> int:
    """How many copies of the layer's weights its leaf holds (a scan's stacked weights)."""
    if layer.weight is None:
        return 0
    size = program.leaves[layer.weight].size
    per = row.quantities["weights"].value
    return layer.count if per and size == per * layer.count and layer.count > 1 else 1


def program_report(program: TracedProgram, *, verify: bool = True, check_maps: int = 16,
                   seed: int = 0, depth: int = 8, hypotheses: bool = True,
                   xla: bool = True, name: str | None = None) -> ExplainReport:
    """The `Report` of a traced program (see the module docstring for the checks)."""
    check_options(seed=seed, depth=depth, check_maps=check_maps)
    dtypes = [layer.dtype for layer in program.layers if layer.spec is not None]
    dtype = dtypes[0] if dtypes else "float32"
    if dtype not in DTYPES:
        dtype = "float32"
    itemsize = _itemsize(dtype)
    rows = [_row(i, layer, program, itemsize) for i, layer in enumerate(program.layers)]
    totals: dict[str, int] = {"weights": 0, "biases": 0, "bn_params": 0, "params": 0,
                              "bn_stats": 0, "macs": 0}
    checks: list[Check] = []
    for layer, row in zip(program.layers, rows, strict=True):
        q = row.quantities
        mult = _param_multiplier(layer, row, program)
        if layer.weight is not None:
            leaf = program.leaves[layer.weight]
            per = q["weights"].value
            if verify:
                row.checks.append(Check(
                    "weights_vs_leaf", per * max(mult, 1), leaf.size,
                    per * max(mult, 1) == leaf.size,
                    f"formula x {max(mult, 1)} vs the size of {leaf.name or 'its leaf'} "
                    f"{tuple(leaf.shape)}"))
        totals["weights"] += q["weights"].value * mult
        bias_mult = mult if mult else 1
        totals["biases"] += q["biases"].value * bias_mult if layer.biases else 0
        if layer.spec is None and layer.dense is None:
            stats = sum(program.leaves[j].size for j in layer.others
                        if program.leaves[j].collection == "stats")
            totals["bn_stats"] += stats
            if layer.kind == "norm":
                totals["bn_params"] += q["params"].value
            totals["params"] += q["params"].value
        else:
            totals["params"] += q["weights"].value * mult + (
                q["biases"].value * bias_mult if layer.biases else 0)
        totals["macs"] += q["macs"].value * layer.count
    in_elems = sum(math.prod(s) for s in program.input_shapes)
    acts = [r.quantities["out_bytes"].value * r.count for r in rows]
    totals["input_bytes"] = in_elems * itemsize
    totals["activation_bytes"] = sum(acts)
    totals["largest_activation_bytes"] = max([in_elems * itemsize, *(
        r.quantities["out_bytes"].value for r in rows)])
    pytree = program.leaf_total("params")
    checks.append(Check("params_vs_pytree", pytree, totals["params"],
                        pytree == totals["params"],
                        "layer formulas vs the model's parameter pytree"))
    stats = program.leaf_total("stats")
    if stats:
        checks.append(Check("stats_vs_pytree", stats, totals["bn_stats"],
                            stats == totals["bn_stats"], "norm running statistics"))
    conv_rows = [(layer, row) for layer, row in zip(program.layers, rows, strict=True)
                 if layer.spec is not None]
    conv_flops = 0
    for layer, _ in conv_rows:
        assert layer.spec is not None  # conv rows only
        model = symbolic.layer_model(layer.spec, bias=False, dtype="float32")
        if "flops_xla" in model:
            conv_flops += int(model["flops_xla"].value) * layer.count
    totals["conv_flops_xla_formula"] = conv_flops
    if verify:
        _verify_layers(program, conv_rows, check_maps, seed, dtype)
        if xla and program.pure is not None:
            checks += _xla_checks(program, conv_rows, conv_flops, totals)
    hyp = None
    if hypotheses:
        convs = [(layer.spec, bool(layer.biases)) for layer, _ in conv_rows
                 if layer.spec is not None and layer.kind in ("conv", "depthwise")
                 and layer.count == 1]
        if convs:
            batch1 = [(_batch1(spec), b) for spec, b in convs]
            hyp = network_hypotheses(batch1, depth, itemsize)
    title = (f"{program.kind} {program.title}: {len(program.layers)} layers "
             f"({len(conv_rows)} convolutions), inputs "
             + ", ".join("x".join(map(str, s)) for s in program.input_shapes))
    input_shape = program.input_shapes[0][1:] if program.input_shapes else ()
    net = NetworkReport(name or program.title, title, tuple(input_shape), rows, totals, checks)
    batch = program.input_shapes[0][0] if program.input_shapes and program.input_shapes[0] \
        else 1
    return ExplainReport(dtype, itemsize, batch, verify, check_maps, [net], hyp)


def _batch1(spec: ConvSpec) -> ConvSpec:
    bg = spec.batch_group_count
    return ConvSpec.from_lax((bg, *spec.lhs_shape[1:]), spec.rhs_shape, spec.window_strides,
                             spec.padding, spec.lhs_dilation, spec.rhs_dilation,
                             canonical_layouts(spec.num_spatial), spec.feature_group_count, bg)


def _concrete(program: TracedProgram) -> bool:
    return all(isinstance(x, jax.Array | np.ndarray) and not isinstance(x, jax.core.Tracer)
               for x in program.flat_args)


def _verify_layers(program: TracedProgram, conv_rows: list[tuple[TracedLayer, LayerRow]],
                   check_maps: int, seed: int, dtype: str) -> None:
    verifier = Verifier(dtype if dtype in ("float32", "float64") else "float32", check_maps,
                        seed)
    captured: dict[int, tuple[Any, Any]] = {}
    real = program.pure is not None and _concrete(program)
    if real:
        try:
            captured = capture_convs(program)
        except Exception:  # the sum check then runs on random data
            captured = {}
    rng = np.random.default_rng([seed])
    for layer, row in conv_rows:
        spec = layer.spec
        assert spec is not None
        cspec = spec if layer.lax_params is None else ConvSpec.from_lax(
            spec.lhs_shape, spec.rhs_shape, spec.window_strides, spec.padding,
            spec.lhs_dilation, spec.rhs_dilation, canonical_layouts(spec.num_spatial),
            spec.feature_group_count, spec.batch_group_count)
        try:
            batch, maps, note = verifier.plan(cspec)
        except SkippedCheck as e:
            row.checks.append(Check("sum_over_channels", None, None, None, str(e)))
            continue
        ops = captured.get(layer.eqn_id)
        if ops is not None:
            x = jax.numpy.transpose(ops[0], spec.lhs_to_canonical)[:batch]
            w = jax.numpy.transpose(ops[1], spec.rhs_to_canonical)
            data = "the model's own input and weights"
        else:
            x = jax.numpy.asarray(rng.standard_normal((batch, *cspec.lhs_shape[1:]),
                                                      dtype="float32"))
            w = jax.numpy.asarray(rng.standard_normal(cspec.rhs_shape, dtype="float32"))
            data = "random data" + (f" ({layer.where})" if layer.where else "")
        try:
            m = verifier.run(cspec, x.astype("float32"), w.astype("float32"), maps, note)
        except Exception as e:
            row.checks.append(Check("engine_run", "runs", f"{type(e).__name__}: {e}", False))
            continue
        row.checks += [dataclasses.replace(c, note=f"{c.note} (on {data})")
                       if c.name == "sum_over_channels" else c
                       for c in verifier.checks(m, row, cspec)]


def _xla_checks(program: TracedProgram, conv_rows: list[tuple[TracedLayer, LayerRow]],
                conv_flops: int, totals: dict[str, int]) -> list[Check]:
    """XLA's counts: the convs alone (exact), the whole program, its memory."""
    out: list[Check] = []
    distinct: dict[Any, tuple[TracedLayer, int]] = {}
    for layer, _ in conv_rows:
        key = (layer.spec, None if layer.lax_params is None else
               tuple(sorted((k, str(v)) for k, v in layer.lax_params.items())))
        prev = distinct.get(key)
        distinct[key] = (layer, (prev[1] if prev else 0) + layer.count)
    measured = 0.0
    try:
        for layer, count in distinct.values():
            lhs, rhs = conv_operand_shapes(layer)
            lowered = jax.jit(lax_conv(layer)).lower(
                jax.ShapeDtypeStruct(lhs, "float32"), jax.ShapeDtypeStruct(rhs, "float32"))
            flops = symbolic.cost_analysis_flops(lowered.compile().cost_analysis())
            measured += (flops or 0.0) * count
        out.append(Check("conv_flops_vs_xla", conv_flops, int(measured),
                         int(measured) == conv_flops,
                         "sum of flops_xla formulas vs XLA cost_analysis of the convolutions"))
    except Exception as e:  # pragma: no cover - a backend without cost analysis
        out.append(Check("conv_flops_vs_xla", conv_flops, None, None,
                         f"skipped: XLA gave no cost analysis ({type(e).__name__})"))
    avals = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in program.flat_args]
    try:
        compiled = jax.jit(program.pure).lower(*avals).compile()
        total = symbolic.cost_analysis_flops(compiled.cost_analysis()) or 0.0
        totals["xla_flops_program"] = int(total)
        totals["xla_flops_other_ops"] = int(total) - int(measured)
        mem = compiled.memory_analysis()
        if mem is not None:
            totals["xla_forward_temp_bytes"] = int(mem.temp_size_in_bytes)
    except Exception as e:
        out.append(Check("xla_program", "compiles", f"{type(e).__name__}: {e}", None,
                         "skipped: the whole program did not compile"))
        return out
    params = [i for i, lf in enumerate(program.leaves) if lf.collection == "params"
              and np.issubdtype(np.dtype(lf.dtype), np.floating)]
    if params:
        try:
            def loss(ps: list[Any], rest: list[Any]) -> Any:
                full = list(rest)
                for i, p in zip(params, ps, strict=True):
                    full[i] = p
                outs = jax.tree_util.tree_leaves(program.pure(*full))
                return sum(jax.numpy.sum(o.astype("float32")) for o in outs
                           if jax.numpy.issubdtype(o.dtype, jax.numpy.floating))

            rest = list(avals)
            ps = [avals[i] for i in params]
            step = jax.jit(jax.grad(loss)).lower(ps, rest).compile().memory_analysis()
            if step is not None:
                totals["xla_training_temp_bytes"] = int(step.temp_size_in_bytes)
            from jax._src.ad_checkpoint import saved_residuals

            res = saved_residuals(loss, ps, rest)
            saved = sum(math.prod(a.shape) * a.dtype.itemsize  # type: ignore[attr-defined]
                        for a, why in res
                        if hasattr(a, "shape") and "argument" not in str(why))
            totals["residual_bytes_saved"] = int(saved)
            formula = totals["activation_bytes"] + totals["input_bytes"]
            out.append(Check(
                "residuals_vs_activations", formula, int(saved), None,
                "bytes saved for the backward pass vs the formula (every layer output and "
                f"the input): ratio {saved / max(formula, 1):.2f}; shown, not checked"))
        except Exception as e:
            out.append(Check("training_step", "compiles", f"{type(e).__name__}: {e}", None,
                             "skipped: no training step could be built"))
    return out


def explain(f: Any, *args: Any, verify: bool = True, check_maps: int = 16, seed: int = 0,
            depth: int = 8, hypotheses: bool = True, xla: bool = True,
            name: str | None = None, **kwargs: Any) -> ExplainReport:
    """The `jconv explain` report for any JAX program: ``f(*args, **kwargs)``.

    `f` is a function of arrays (a `jax.jit`-ed one too), a Flax nnx module (called on
    `args`), a linen module (``args = (variables, *inputs)``) or its ``apply``, or a callable
    pytree such as an Equinox module. The program is traced, not run; every convolution
    (``lax.conv_general_dilated`` and jconv's own), dense layer and other parameter-holding
    layer becomes a row with its formulas. With ``verify=True`` the totals are checked
    against the parameter pytree and XLA, and each conv's maps against the sum of their
    per-channel correlations (see the module docstring). Other keyword arguments go to `f`.

    >>> import jax.numpy as jnp, jconv
    >>> w = jnp.ones((3, 3, 3, 8))
    >>> r = jconv.explain(lambda x, w: jconv.conv(x, w), jnp.ones((1, 8, 8, 3)), w,
    ...                   verify=False)
    >>> r.networks[0].layers[0].rule
    'sum over C_in = 3 per-channel correlations'
    """
    check_options(seed=seed, depth=depth, check_maps=check_maps)
    start = time.perf_counter()
    program = trace(f, *args, **kwargs)
    report = program_report(program, verify=verify, check_maps=check_maps, seed=seed,
                            depth=depth, hypotheses=hypotheses, xla=xla, name=name)
    report.seconds = time.perf_counter() - start
    return report
