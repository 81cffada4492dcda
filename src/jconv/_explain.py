"""`jconv explain`: per-layer numbers beside their formulas, verified by running the engine.

`build_report` walks each network (`jconv.models`), takes every number from the symbolic
model (`jconv.symbolic`) and, unless told not to, checks each walked layer on random data
with `jconv._verify` (measured shapes and bytes; each conv output map the **sum** of its
per-channel correlations). The result is a `jconv._report.Report`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import sympy

from . import models, symbolic
from ._explain_report import ExplainReport
from ._report import DTYPES, MAX_DEPTH, Check, Hypotheses, LayerRow, NetworkReport, Quantity
from ._spec import ConvSpec, canonical_layouts
from ._verify import Measured, SkippedCheck, Verifier

__all__ = [
    "DEFAULT_NETWORKS", "DTYPES", "MAX_DEPTH", "build_report", "check_options", "conv_quantities",
    "hypotheses_table", "network_hypotheses",
]



def _default_networks() -> list[tuple[models.Network, str]]:
    gray = models.Network("grayscale", (28, 28, 1), (
        models.Conv(10, 3, padding="SAME", name="conv1"),
        models.Conv(10, 3, padding="SAME", name="conv2"),
    ))
    rgb = models.Network("rgb", (28, 28, 3), (models.Conv(10, 3, padding="SAME", name="conv1"),))
    return [
        (gray, "28x28x1 grayscale input, two conv layers of 10 filters, 3x3, SAME"),
        (rgb, "28x28x3 RGB input, one conv layer of 10 filters, 3x3, SAME"),
    ]


DEFAULT_NETWORKS: Callable[[], list[tuple[models.Network, str]]] = _default_networks


# ----------------------------------------------------------------------------- formulas
def _q(expr: sympy.Expr, subs: dict[sympy.Symbol, int]) -> Quantity:
    value = expr.subs(subs)
    return Quantity(int(value), str(expr), sympy.latex(expr))


def _formula_quantity(f: symbolic.Formula, short: dict[Any, sympy.Symbol]) -> Quantity:
    """A `jconv.symbolic` Formula, its output-size subexpressions replaced by `short` names."""
    expr = f.expr.xreplace(short) if short else f.expr
    return Quantity(int(f.value), str(expr), sympy.latex(expr))


def _out_names(num_spatial: int) -> list[str]:
    """``H_out``, ``W_out``...: the symbolic model's input size names with ``_out``."""
    return [f"{name}_out" for name in symbolic.dimension_names(num_spatial)[0]]


def conv_quantities(spec: ConvSpec, bias: bool, itemsize: int) -> dict[str, Quantity]:
    """The symbolic model's formulas; output sizes shown as ``H_out``... inside the others."""
    model = _layer_model(spec, bias)
    n = spec.num_spatial
    names = _out_names(n)
    short = {model[f"out_{j}"].expr: sympy.Symbol(names[j], integer=True, positive=True)
             for j in range(n)}
    out = {f"out_{j}": _formula_quantity(model[f"out_{j}"], {}) for j in range(n)}
    for key in ("weights", "biases", "params", "macs", "out_elements"):
        out[key] = _formula_quantity(model[key], short)
    elements = out["out_elements"]
    expr = model["out_elements"].expr.xreplace(short) * itemsize
    out["out_bytes"] = Quantity(elements.value * itemsize, str(expr), sympy.latex(expr))
    return out


@functools.cache
def _layer_model(spec: ConvSpec, bias: bool) -> dict[str, symbolic.Formula]:
    """`jconv.symbolic.layer_model`, once per distinct layer (networks repeat blocks).

    Always at ``itemsize=4``: bytes are elements times the item size (`conv_quantities`),
    so one cached model serves every dtype.
    """
    return symbolic.layer_model(spec, bias=bias, dtype="float32")


_N, _D, _U, _C = sympy.symbols("N D_in D_out C", integer=True, positive=True)


def _activation_quantities(info: models.LayerInfo, itemsize: int) -> dict[str, Quantity]:
    """Bytes and element counts of a parameter-free (or batch-norm) layer's output."""
    shape = info.out_shape
    spatial = [sympy.Symbol(s, integer=True, positive=True) for s in _out_names(len(shape) - 2)]
    dims = [_N, *spatial, _C] if len(shape) > 2 else [_N, _C]
    subs = dict(zip(dims, shape, strict=True))
    elems = sympy.Mul(*dims)
    zero = Quantity(0, "0", "0")
    out = {
        "weights": zero, "biases": zero, "params": zero, "macs": Quantity(info.macs, "0", "0"),
        "out_elements": _q(elems, subs), "out_bytes": _q(elems * itemsize, subs),
    }
    if info.bn_params:
        out["params"] = _q(2 * _C, subs)
    return out


def _dense_quantities(info: models.LayerInfo, itemsize: int) -> dict[str, Quantity]:
    n, d = info.in_shape
    u = info.out_shape[-1]
    subs = {_N: n, _D: d, _U: u}
    biases = _U if info.biases else sympy.Integer(0)
    return {
        "weights": _q(_D * _U, subs), "biases": _q(biases, subs),
        "params": _q(_D * _U + biases, subs), "macs": _q(_N * _D * _U, subs),
        "out_elements": _q(_N * _U, subs), "out_bytes": _q(_N * _U * itemsize, subs),
    }


def _quantities(info: models.LayerInfo, itemsize: int) -> dict[str, Quantity]:
    if info.spec is not None:
        return conv_quantities(info.spec, info.biases > 0, itemsize)
    if info.kind == "dense":
        return _dense_quantities(info, itemsize)
    return _activation_quantities(info, itemsize)


def _rows(infos: list[models.LayerInfo], itemsize: int) -> list[LayerRow]:
    """Numbers and formulas of every walked layer (SymPy)."""
    rows = []
    for i, info in enumerate(infos):
        rule, eq = info.rule()
        rows.append(LayerRow(
            index=i, name=info.name, kind=info.kind, in_shape=info.in_shape,
            out_shape=info.out_shape, kernel_shape=info.kernel_shape, groups=info.groups,
            quantities=_quantities(info, itemsize), rule=rule, einsum=eq,
        ))
    return rows


# ----------------------------------------------------------------------------- report
def _submit(
    key: int, net: models.Network, infos: list[models.LayerInfo], verifier: Verifier,
    pool: Executor, progress: Callable[[str], None],
) -> list[Future[Measured]]:
    """Queue one run per walked layer of `net`; `progress` is told as each ends."""
    futures = []
    for i, info in enumerate(infos):
        fut = pool.submit(verifier.measure, (key, i), info)
        fut.add_done_callback(functools.partial(_done, progress, f"{net.name}: {info.name}"))
        futures.append(fut)
    return futures


def _done(progress: Callable[[str], None], label: str, _future: Future[Measured]) -> None:
    progress(label)


def _network_report(
    net: models.Network, title: str, infos: list[models.LayerInfo], rows: list[LayerRow],
    batch: int, itemsize: int,
) -> NetworkReport:
    """Totals of `rows`, checked against the network's own counts and published figures."""
    in_elems = batch * math.prod(net.input_shape)
    totals = {
        "weights": sum(r.quantities["weights"].value for r in rows),
        "biases": sum(r.quantities["biases"].value for r in rows),
        "bn_params": sum(i.bn_params for i in infos),
        "params": sum(r.quantities["params"].value for r in rows),
        "bn_stats": sum(i.bn_stats for i in infos),
        "macs": sum(r.quantities["macs"].value for r in rows),
        "input_bytes": in_elems * itemsize,
        "activation_bytes": sum(r.quantities["out_bytes"].value for r in rows),
        "largest_activation_bytes": max(
            [in_elems * itemsize, *(r.quantities["out_bytes"].value for r in rows)]
        ),
    }
    checks = [
        Check("params_vs_network", net.params(), totals["params"],
              net.params() == totals["params"], "formulas vs jconv.models walk"),
        Check("macs_vs_network", net.macs(batch), totals["macs"],
              net.macs(batch) == totals["macs"], "formulas vs jconv.models walk"),
    ]
    published = models.PUBLISHED.get(net.name)
    if published is not None:
        rounding = published.get("rounding", {})
        for key, measured in (("params", totals["params"]), ("macs", totals["macs"] // batch)):
            if key not in published:
                continue
            step = int(rounding.get(key, 1))
            note = str(published["source"]) if key == "params" else "per image"
            if step > 1:
                note = f"published to the nearest {step:,}; " + note
            checks.append(Check(f"{key}_vs_published", published[key], measured,
                                2 * abs(measured - published[key]) <= step, note))
    return NetworkReport(net.name, title, net.input_shape, rows, totals, checks, published)


def hypotheses_table(
    depth: int, filters: int, c0: int, height: int, width: int, kernel: int, itemsize: int,
) -> Hypotheses:
    """Channels, parameters and activation bytes after L = 1..depth layers, per hypothesis,
    for a uniform stack of `filters` kernel x kernel filters on a height x width x c0 input."""
    L = sympy.Symbol("L", integer=True, positive=True)
    exprs = symbolic.hypotheses(L, filters, c0, height, width, kernel, itemsize=itemsize)
    metrics = ("channels", "params", "activations", "activation_bytes")
    formulas = {h: {m: str(e[m]) for m in metrics} for h, e in exprs.items()}
    rows = []
    for depth_l in range(1, depth + 1):
        row: dict[str, Any] = {"L": depth_l}
        for h, e in exprs.items():
            row[h] = {m: int(e[m].subs(L, depth_l)) for m in metrics}
        rows.append(row)
    params = {"F": filters, "C0": c0, "H": height, "W": width, "k": kernel, "itemsize": itemsize}
    return Hypotheses(params, formulas, rows)


def network_hypotheses(
    convs: Sequence[tuple[ConvSpec, bool]], depth: int, itemsize: int,
) -> Hypotheses | None:
    """The three readings over depth following the network's own conv layers (`convs`:
    spec and bias, in order, batch 1), then its last conv repeated (stride 1, same size)
    up to `depth`. Per layer l with window K_l, F_l filters and P_l output positions:

    - sum (what a conv does): C_l = F_l, K_l*C_{l-1}*F_l/g + F_l parameters;
    - average the maps first (tied kernels): C_l = F_l, K_l*F_l + F_l;
    - keep every per-channel map (depthwise, multiplier F_l): C_l = C_{l-1}*F_l,
      K_l*C_{l-1}*F_l + C_l.

    Activation bytes add P_l*C_l*itemsize per layer. Formulas in L are given when the
    layers form a uniform stack (every conv the same window, filters and output size)."""
    if not convs:
        return None
    first = convs[0][0]
    c0 = first.in_features
    state = {h: {"channels": c0, "params": 0, "activations": 0} for h in ("sum", "average",
                                                                          "keep")}
    rows = []
    for depth_l in range(1, depth + 1):
        spec, bias = convs[min(depth_l, len(convs)) - 1]
        k_taps, f, g = spec.taps, spec.out_features, spec.feature_group_count
        positions = math.prod(spec.out_spatial)
        b = 1 if bias else 0
        c_prev = {h: state[h]["channels"] for h in state}
        if depth_l > len(convs):  # the last conv repeated on its own output
            c_prev["sum"] = c_prev["average"] = f
            g = 1
        new = {
            "sum": (f, k_taps * (c_prev["sum"] // g) * f + b * f),
            "average": (f, k_taps * f + b * f),
            "keep": (c_prev["keep"] * f, k_taps * c_prev["keep"] * f + b * c_prev["keep"] * f),
        }
        row: dict[str, Any] = {"L": depth_l}
        for h, (channels, added) in new.items():
            st = state[h]
            st["channels"] = channels
            st["params"] += added
            st["activations"] += positions * channels
            row[h] = {"channels": channels, "params": st["params"],
                      "activations": st["activations"],
                      "activation_bytes": st["activations"] * itemsize}
        rows.append(row)
    uniform = all(sp.window == first.window and sp.out_features == first.out_features
                  and sp.out_spatial == first.out_spatial and sp.feature_group_count == 1
                  and bias == convs[0][1] for sp, bias in convs[1:]) \
        and first.feature_group_count == 1 and convs[0][1]
    formulas: dict[str, dict[str, str]] = {}
    if uniform:
        L = sympy.Symbol("L", integer=True, positive=True)
        positions = math.prod(first.out_spatial)
        exprs = symbolic.hypotheses(L, first.out_features, c0, positions, 1,
                                    sympy.sqrt(first.taps), itemsize=itemsize)
        formulas = {h: {m: str(e[m]) for m in ("channels", "params", "activations",
                                                 "activation_bytes")}
                    for h, e in exprs.items()}
    window = "x".join(str(k) for k in first.window)
    sizes = "x".join(str(d) for d in (*first.in_spatial, c0))
    params: dict[str, Any] = {"F": first.out_features, "C0": c0, "k": first.window[0],
                              "window": window, "input": sizes, "itemsize": itemsize,
                              "layers": len(convs)}
    if first.num_spatial == 2:
        params.update(H=first.in_spatial[0], W=first.in_spatial[1])
    if uniform:
        title = (f"three hypotheses over depth L (F = {first.out_features} filters of {window}, "
                 f"input {sizes}, {itemsize} bytes/element, batch 1)")
    else:
        title = (f"three hypotheses over depth L (the network's {len(convs)} conv layers in "
                 f"order, then its last repeated; input {sizes}, {itemsize} bytes/element, "
                 "batch 1)")
    return Hypotheses(params, formulas, rows, title)


def _network_hypotheses(rows: list[LayerRow], infos: list[models.LayerInfo], depth: int,
                        itemsize: int) -> Hypotheses | None:
    convs = [(info.spec, row.quantities["biases"].value > 0)
             for row, info in zip(rows, infos, strict=True)
             if info.spec is not None and info.kind in ("conv", "depthwise")]
    unbatched = [(_batch1(spec), bias) for spec, bias in convs]
    return network_hypotheses(unbatched, depth, itemsize)


def _batch1(spec: ConvSpec) -> ConvSpec:
    if spec.batch == spec.batch_group_count:
        return spec
    return ConvSpec.from_lax(
        (spec.batch_group_count, *spec.lhs_shape[1:]), spec.rhs_shape, spec.window_strides,
        spec.padding, spec.lhs_dilation, spec.rhs_dilation, canonical_layouts(spec.num_spatial),
        spec.feature_group_count, spec.batch_group_count)


def check_options(*, seed: int, depth: int, check_maps: int, batch: int = 1) -> None:
    """The shared option rules of `build_report` and `jconv.explain` (ValueError naming the
    option and its value)."""
    for name, value, low in (("seed", seed, 0), ("depth", depth, 1),
                             ("check_maps", check_maps, 1), ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` (={value!r}) must be an integer >= {low}.")
    if depth > MAX_DEPTH:
        raise ValueError(f"`depth` (={depth}) must be <= {MAX_DEPTH}: keeping every map needs "
                         "C0*F^L channels, already beyond any memory at that depth.")


def build_report(
    networks: Sequence[tuple[models.Network, str]],
    *,
    batch: int = 1,
    dtype: str = "float32",
    verify: bool = True,
    check_maps: int = 16,
    depth: int = 8,
    hypotheses: bool = True,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
) -> ExplainReport:
    """Numbers, formulas and (optionally) verification for each ``(network, title)``.

    The hypotheses table (three readings of "what happens to C maps" over depth) follows
    the first network's conv layers (`network_hypotheses`); `progress` is told the name of
    each verified layer.
    """
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` (={dtype!r}) must be one of {', '.join(DTYPES)}.")
    check_options(seed=seed, depth=depth, check_maps=check_maps, batch=batch)
    itemsize = DTYPES[dtype]
    walks = [net.walk(batch) for net, _ in networks]
    verifier = Verifier(dtype, check_maps, seed) if verify else None
    tick = progress or (lambda _msg: None)
    with ThreadPoolExecutor(max_workers=2) as pool:
        # engine runs first, in worker threads (XLA compiles without the GIL) ...
        futures = [_submit(k, net, infos, verifier, pool, tick) if verifier else []
                   for k, ((net, _), infos) in enumerate(zip(networks, walks, strict=True))]
        # ... while the symbolic model works in this thread
        all_rows = [_rows(infos, itemsize) for infos in walks]
        hyp = (_network_hypotheses(all_rows[0], walks[0], depth, itemsize)
               if hypotheses else None)
        if verifier is not None:
            for rows, infos, futs in zip(all_rows, walks, futures, strict=True):
                for row, info, fut in zip(rows, infos, futs, strict=True):
                    try:
                        measured = fut.result()
                    except SkippedCheck as e:  # over the memory budget: not a failure
                        row.checks = [Check("engine_run", "runs", None, None, str(e))]
                        continue
                    except Exception as e:  # a layer the engine cannot run is a failed check
                        row.checks = [Check("engine_run", "runs", f"{type(e).__name__}: {e}",
                                            False)]
                        continue
                    row.checks = verifier.checks(measured, row, info.spec)
    reports = [_network_report(net, title, infos, rows, batch, itemsize)
               for (net, title), infos, rows in zip(networks, walks, all_rows, strict=True)]
    return ExplainReport(dtype, itemsize, batch, verify, check_maps, reports, hyp)
