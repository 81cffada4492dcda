"""`jconv explain`: per-layer numbers beside their formulas, verified by running the engine.

`build_report` walks each network (`jconv.models`), takes every number from the symbolic
model (`jconv.symbolic`), then, unless told not to, runs every conv layer through the einsum
engine on random data and checks:

- the measured output shape, element count and bytes against the formulas;
- that each output map equals the **sum** of its per-input-channel correlations, each computed
  separately by the engine on one channel (vmapped over channels), and differs from their
  average. For a large layer the sum check runs on ``check_maps`` evenly spaced output maps
  (the first and the last included); the full layer always runs, so every shape is measured.

Non-conv layers (pool, dense, batch norm, ...) run as plain `jax.numpy` / `lax.reduce_window`
for their measured shapes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import sympy

from . import models
from ._spec import ConvSpec

__all__ = [
    "DEFAULT_NETWORKS",
    "DTYPES",
    "Check",
    "Hypotheses",
    "LayerRow",
    "NetworkReport",
    "Quantity",
    "Report",
    "build_report",
    "hypotheses_table",
]

DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}

# relative tolerance of the sum-over-channels check: |y - sum| <= tol * max|sum|
_TOL = {"float64": 1e-10, "float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


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


@dataclass(frozen=True)
class Quantity:
    """One number with the formula that gives it (plain text and LaTeX)."""

    value: int
    formula: str
    latex: str


@dataclass(frozen=True)
class Check:
    """One verification: `passed` is None when the check does not apply (see `note`)."""

    name: str
    expected: Any
    measured: Any
    passed: bool | None
    note: str = ""


@dataclass
class LayerRow:
    """Everything `explain` says about one walked layer."""

    index: int
    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...] | None
    groups: int
    quantities: dict[str, Quantity]
    rule: str
    einsum: str | None
    checks: list[Check] = field(default_factory=list)


@dataclass
class NetworkReport:
    """One network: its layers, totals and the checks of the totals."""

    name: str
    title: str
    input_shape: tuple[int, ...]
    layers: list[LayerRow]
    totals: dict[str, int]
    checks: list[Check] = field(default_factory=list)
    published: dict[str, Any] | None = None


@dataclass
class Hypotheses:
    """The three readings of "what happens to C maps" over depth ``L = 1..depth``."""

    parameters: dict[str, int]
    formulas: dict[str, dict[str, str]]
    rows: list[dict[str, Any]]


@dataclass
class Report:
    """A whole `jconv explain` run."""

    dtype: str
    itemsize: int
    batch: int
    verify: bool
    check_maps: int
    networks: list[NetworkReport]
    hypotheses: Hypotheses | None

    def all_checks(self) -> list[Check]:
        out = [c for n in self.networks for c in n.checks]
        return out + [c for n in self.networks for r in n.layers for c in r.checks]

    @property
    def ok(self) -> bool:
        return all(c.passed is not False for c in self.all_checks())


# ----------------------------------------------------------------------------- formulas
def _q(expr: sympy.Expr, subs: dict[sympy.Symbol, int]) -> Quantity:
    value = expr.subs(subs)
    return Quantity(int(value), str(expr), sympy.latex(expr))


def _formula_quantity(f: Any, short: dict[Any, sympy.Symbol]) -> Quantity:
    """A `jconv.symbolic` Formula, its output-size subexpressions replaced by `short` names."""
    expr = f.expr.xreplace(short) if short else f.expr
    return Quantity(int(f.value), str(expr), sympy.latex(expr))


def _conv_quantities(info: models.LayerInfo, itemsize: int) -> dict[str, Quantity]:
    """The symbolic model's formulas; output sizes shown as ``H_out``... inside the others."""
    assert info.spec is not None
    model = _layer_model(info.spec, info.biases > 0)
    n = info.spec.num_spatial
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
def _layer_model(spec: ConvSpec, bias: bool) -> dict[str, Any]:
    """`jconv.symbolic.layer_model`, once per distinct layer (networks repeat blocks).

    Always at ``itemsize=4``: bytes are elements times the item size (`_conv_quantities`),
    so one cached model serves every dtype.
    """
    from . import symbolic

    return symbolic.layer_model(spec, bias=bias, itemsize=4)


def _out_names(n: int) -> list[str]:
    base = {1: ["W"], 2: ["H", "W"], 3: ["D", "H", "W"]}.get(n, [f"i_{j}" for j in range(n)])
    return [f"{b}_out" for b in base]


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


def _rule(info: models.LayerInfo) -> tuple[str, str | None]:
    """How one output map is formed, in words, and the einsum that does it."""
    if info.spec is not None:
        spec = info.spec
        c, g = spec.in_features, spec.feature_group_count
        cg = c // g
        n = spec.num_spatial  # 1 to 3 (jconv.models): output letters zyx, offsets ijk
        sp, ks = "zyx"[3 - n:] if n <= 3 else "", "ijk"[:n] if n <= 3 else ""
        if g == 1:
            eq = f"n{sp}{ks}c,{ks}cf->n{sp}f"
            return f"sum over C_in = {c} per-channel correlations", eq
        if cg == 1:
            m = spec.out_features // c
            eq = f"n{sp}{ks}c,{ks}cm->n{sp}cm"
            return f"1 per-channel correlation (depthwise, C_in = {c}, m = {m}), no sum", eq
        eq = f"n{sp}{ks}gc,{ks}gcf->n{sp}gf"
        return f"sum over C_in/g = {cg} per-channel correlations (g = {g} groups)", eq
    kind = info.kind
    if kind == "dense":
        return f"sum over D_in = {info.in_shape[-1]} inputs", "nd,de->ne"
    if kind == "pool":
        return "pooled per channel over its window, no mixing of channels", None
    if kind == "globalpool":
        return "each channel pooled to one value", None
    if kind == "bn":
        return "per channel: (x - mean) / std * gamma + beta", None
    if kind == "relu":
        return "elementwise max(x, 0)", None
    if kind == "add":
        return "main branch + shortcut, map by map", None
    if kind == "flatten":
        return "maps laid end to end", None
    return kind, None


def _quantities(info: models.LayerInfo, itemsize: int) -> dict[str, Quantity]:
    if info.spec is not None:
        return _conv_quantities(info, itemsize)
    if info.kind == "dense":
        return _dense_quantities(info, itemsize)
    return _activation_quantities(info, itemsize)


def _flat_layers(layers: Sequence[Any]) -> list[Any]:
    """The layer object behind each `Network.walk` entry, in walk order (None for "add")."""
    out: list[Any] = []
    for layer in layers:
        if isinstance(layer, models.Residual):
            out += _flat_layers(layer.main) + _flat_layers(layer.shortcut) + [None]
        elif isinstance(layer, models.Separable):
            out += [layer, layer]
        else:
            out.append(layer)
    return out


# ----------------------------------------------------------------------------- verification
@dataclass(frozen=True)
class _Measured:
    """What one engine run produced: the output's shape, size and bytes; for a conv, the
    checked maps ``ys`` and the sums of their per-channel correlations ``total``."""

    shape: tuple[int, ...]
    size: int
    nbytes: int
    ys: Any = None
    total: Any = None
    maps: int = 0


class _Verifier:
    """Runs layers on random data with the engine and compares with the formulas.

    `measure` (thread-safe, one NumPy generator per layer) runs the arrays; `checks` compares
    the measurements with a layer's formulas.
    """

    def __init__(self, dtype: str, check_maps: int, seed: int = 0) -> None:
        import jax

        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        self.dtype = dtype
        self.check_maps = check_maps
        self.seed = seed

    def measure(self, key: tuple[int, int], info: models.LayerInfo, layer: Any) -> _Measured:
        import numpy as np

        rng = np.random.default_rng([self.seed, *key])

        def rand(shape: tuple[int, ...]) -> Any:
            return jnp.asarray(rng.standard_normal(shape, dtype="float32").astype(self.dtype))

        x = rand(info.in_shape)
        if info.spec is None:
            y = _reference_layer(info, layer, x, rand)
            return _Measured(tuple(y.shape), int(y.size), int(y.nbytes))
        spec = info.spec
        maps = self._maps(spec)
        acc = "float64" if self.dtype == "float64" else "float32"
        y, ys, total = _conv_and_channel_sums(x, rand(spec.rhs_shape), spec=spec, maps=maps,
                                              acc=acc)
        return _Measured(tuple(y.shape), int(y.size), int(y.nbytes), np.asarray(ys),
                         np.asarray(total), len(maps))

    def checks(self, m: _Measured, row: LayerRow, spec: ConvSpec | None) -> list[Check]:
        elems, nbytes = row.quantities["out_elements"].value, row.quantities["out_bytes"].value
        out = [
            Check("shape", list(row.out_shape), list(m.shape), m.shape == row.out_shape),
            Check("elements", elems, m.size, m.size == elems),
            Check("bytes", nbytes, m.nbytes, m.nbytes == nbytes),
        ]
        if spec is not None:
            out += self._sum_checks(m.ys, m.total, spec, m.maps)
        return out

    def _maps(self, spec: ConvSpec) -> tuple[int, ...]:
        """All output maps, or `check_maps` evenly spaced ones (first and last included)."""
        f, k = spec.out_features, self.check_maps
        if f <= k:
            return tuple(range(f))
        return tuple(sorted({round(i * (f - 1) / (k - 1)) for i in range(k)})) if k > 1 else (0,)

    def _sum_checks(self, ys: Any, total: Any, spec: ConvSpec, n_maps: int) -> list[Check]:
        import numpy as np

        cg = spec.in_features // spec.feature_group_count
        scale = max(float(np.abs(total).max()), float(np.finfo(np.float32).tiny))
        err = float(np.abs(ys - total).max()) / scale
        tol = _TOL[self.dtype]
        f = spec.out_features
        which = f"{n_maps} of {f} maps" if n_maps < f else f"all {f} maps"
        checks = [Check(
            "sum_over_channels", tol, float(f"{err:.3g}"), err <= tol,
            f"{which}: max |map - sum of its {cg} per-channel correlations| / max |sum|",
        )]
        if cg == 1:
            checks.append(Check("differs_from_average", None, None, None,
                                "one channel per map: its sum and its average coincide"))
            return checks
        diff = float(np.abs(ys - total / cg).max()) / scale
        expected = 1 - 1 / cg
        checks.append(Check(
            "differs_from_average", float(f"{expected:.3g}"), float(f"{diff:.3g}"),
            diff > max(2 * tol, 0.5 * expected),
            f"{which}: max |map - average of its {cg} correlations| / max |sum|, "
            f"expected 1 - 1/{cg}",
        ))
        return checks


@functools.partial(jax.jit, static_argnames=("spec", "maps", "acc"))
def _conv_and_channel_sums(
    x: jax.Array, w: jax.Array, *, spec: ConvSpec, maps: tuple[int, ...], acc: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The full layer ``y`` through the engine; for the output maps `maps`, ``y[..., maps]``
    and the sum of their per-input-channel correlations, each correlation a separate
    one-channel, one-filter engine call (vmapped): shapes ``(M, N, *out)``."""
    import numpy as np

    y = _engine(x, w, spec)
    g = spec.feature_group_count
    cg, fq = spec.in_features // g, spec.out_features // g
    map_idx = np.repeat(np.asarray(maps), cg)
    local = np.tile(np.arange(cg), len(maps))
    chan = (map_idx // fq) * cg + local
    xs = jnp.moveaxis(x[..., chan], -1, 0)  # (P, N, *S): one input channel each
    ws = jnp.moveaxis(w[..., local, map_idx], -1, 0)  # (P, *K): its kernel for that map

    def one(xc: jax.Array, wc: jax.Array) -> jax.Array:
        return _engine(xc[..., None], wc[..., None, None], spec, groups=1)[..., 0]

    corr = jax.vmap(one)(xs, ws).astype(acc)  # (P, N, *out)
    total = corr.reshape(len(maps), cg, *corr.shape[1:]).sum(axis=1)
    ys = jnp.moveaxis(y[..., np.asarray(maps)], -1, 0).astype(acc)
    return y, ys, total


def _lax_dnums(n: int) -> tuple[str, str, str]:
    from ._spec import normalize_layout

    return normalize_layout("NHWC", n)


def _engine(x: Any, w: Any, spec: ConvSpec, groups: int | None = None) -> Any:
    """`jconv.conv_general_dilated` with the spec's geometry (NHWC/HWIO) and `groups`."""
    from ._engine import conv_general_dilated

    return conv_general_dilated(
        x, w, window_strides=spec.window_strides, padding=spec.padding,
        lhs_dilation=spec.lhs_dilation, rhs_dilation=spec.rhs_dilation,
        dimension_numbers=_lax_dnums(spec.num_spatial),
        feature_group_count=spec.feature_group_count if groups is None else groups,
    )


def _reference_layer(info: models.LayerInfo, layer: Any, x: Any, rand: Callable[..., Any]) -> Any:
    """A non-conv layer in plain jax.numpy / lax.reduce_window (for its measured shape)."""
    import jax.numpy as jnp
    from jax import lax

    n = x.shape[0]
    if info.kind == "dense":
        return x.reshape(n, -1) @ rand(info.kernel_shape)
    if info.kind == "flatten":
        return x.reshape(n, -1)
    if info.kind == "relu":
        return jnp.maximum(x, jnp.zeros((), x.dtype))
    if info.kind == "bn":
        axes = tuple(range(x.ndim - 1))
        return (x - x.mean(axes, keepdims=True)) / jnp.sqrt(x.var(axes, keepdims=True) + 1e-5)
    if info.kind == "add":
        return x + rand(x.shape)
    if info.kind == "globalpool":
        axes = tuple(range(1, x.ndim - 1))
        return x.max(axes) if layer.kind == "max" else x.mean(axes)
    if info.kind == "pool":
        nsp = x.ndim - 2
        window = _sizes(layer.window, nsp)
        stride = window if layer.stride is None else _sizes(layer.stride, nsp)
        pspec = ConvSpec.from_lax(
            x.shape, (*window, 1, x.shape[-1]), stride, _pool_padding(layer.padding, nsp),
            dimension_numbers=_lax_dnums(nsp), feature_group_count=x.shape[-1],
        )
        pads = ((0, 0), *pspec.padding, (0, 0))
        dims, strides = (1, *window, 1), (1, *stride, 1)
        if layer.kind == "max":
            init = jnp.array(-jnp.inf, x.dtype)
            return lax.reduce_window(x, init, lax.max, dims, strides, pads)
        total = lax.reduce_window(x, jnp.zeros((), x.dtype), lax.add, dims, strides, pads)
        return total / math.prod(window)
    raise ValueError(f"`kind` (={info.kind!r}) is not a layer kind explain can run.")


def _sizes(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,) * n


def _pool_padding(padding: Any, n: int) -> Any:
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding),) * n
    return tuple((p, p) if isinstance(p, int) else p for p in padding)


# ----------------------------------------------------------------------------- report
def _submit(
    key: int, net: models.Network, batch: int, verifier: _Verifier, pool: Executor,
    progress: Callable[[str], None],
) -> list[Future[_Measured]]:
    """Queue one engine run per walked layer of `net`; `progress` is told as each ends."""
    futures = []
    pairs = zip(net.walk(batch), _flat_layers(net.layers), strict=True)
    for i, (info, layer) in enumerate(pairs):
        fut = pool.submit(verifier.measure, (key, i), info, layer)
        fut.add_done_callback(functools.partial(_done, progress, f"{net.name}: {info.name}"))
        futures.append(fut)
    return futures


def _done(progress: Callable[[str], None], label: str, _future: Future[_Measured]) -> None:
    progress(label)


def _rows(net: models.Network, batch: int, itemsize: int) -> list[LayerRow]:
    """Numbers and formulas of every walked layer (SymPy)."""
    rows = []
    for i, info in enumerate(net.walk(batch)):
        rule, eq = _rule(info)
        rows.append(LayerRow(
            index=i, name=info.name, kind=info.kind, in_shape=info.in_shape,
            out_shape=info.out_shape, kernel_shape=info.kernel_shape, groups=info.groups,
            quantities=_quantities(info, itemsize), rule=rule, einsum=eq,
        ))
    return rows


def _network_report(
    net: models.Network, title: str, rows: list[LayerRow], batch: int, itemsize: int
) -> NetworkReport:
    """Totals of `rows`, checked against the network's own counts and published figures."""
    infos = net.walk(batch)
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
    """Channels, parameters and activation bytes after L = 1..depth layers, per hypothesis."""
    from . import symbolic

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
) -> Report:
    """Numbers, formulas and (optionally) verification for each ``(network, title)``."""
    itemsize = DTYPES[dtype]
    verifier = _Verifier(dtype, check_maps, seed) if verify else None
    tick = progress or (lambda _msg: None)
    with ThreadPoolExecutor(max_workers=2) as pool:
        # engine runs first, in worker threads (XLA compiles without the GIL) ...
        futures = [_submit(k, net, batch, verifier, pool, tick) if verifier else []
                   for k, (net, _) in enumerate(networks)]
        # ... while the symbolic model works in this thread
        all_rows = [_rows(net, batch, itemsize) for net, _ in networks]
        hyp = None
        if hypotheses:
            net, _ = networks[0]
            first = next((r for r in all_rows[0] if r.kind == "conv"), None)
            if first is not None and first.kernel_shape is not None and len(net.input_shape) == 3:
                h, w, c0 = net.input_shape
                hyp = hypotheses_table(depth, first.kernel_shape[-1], c0, h, w,
                                       first.kernel_shape[0], itemsize)
        if verifier is not None:
            for (net, _), rows, futs in zip(networks, all_rows, futures, strict=True):
                for row, info, fut in zip(rows, net.walk(batch), futs, strict=True):
                    try:
                        measured = fut.result()
                    except Exception as e:  # a layer the engine cannot run is a failed check
                        row.checks = [Check("engine_run", "runs", f"{type(e).__name__}: {e}",
                                            False)]
                        continue
                    row.checks = verifier.checks(measured, row, info.spec)
    reports = [_network_report(net, title, rows, batch, itemsize)
               for (net, title), rows in zip(networks, all_rows, strict=True)]
    return Report(dtype, itemsize, batch, verify, check_maps, reports, hyp)
