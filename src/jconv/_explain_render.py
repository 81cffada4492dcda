"""Renderers of an explain `Report`: rich terminal tables, JSON, Markdown, LaTeX, a PNG plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._report import Check, Hypotheses, LayerRow, NetworkReport, Quantity, Report
from .symbolic import dimension_names

__all__ = ["render_json", "render_latex", "render_markdown", "render_rich", "write_plot"]

SCHEMA = "jconv.explain/1"
HYPOTHESES = {
    "sum": "H1 sum over channels (what a conv layer does)",
    "average": "H2 average the maps first (tied kernels w/C)",
    "keep": "H3 keep every per-channel map (depthwise, x F)",
}
_Q_LABELS = {
    "weights": "weights", "biases": "biases", "params": "parameters", "macs": "multiply-adds",
    "out_elements": "output elements", "out_bytes": "activation bytes",
}


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else " x ".join(str(d) for d in shape)


def _mark(passed: bool | None) -> str:
    return {True: "✓ pass", False: "✗ FAIL", None: "n/a"}[passed]


def _checks_by_name(row: LayerRow) -> dict[str, Check]:
    return {c.name: c for c in row.checks}


def _summary(report: Report) -> dict[str, Any]:
    checks = report.all_checks()
    return {
        "passed": sum(c.passed is True for c in checks),
        "failed": sum(c.passed is False for c in checks),
        "not_applicable": sum(c.passed is None for c in checks),
        "ok": report.ok,
    }


_SHOWN = {"shape", "elements", "bytes", "sum_over_channels", "differs_from_average"}


def _status(c: Check) -> str:
    if c.passed is None:
        return "skipped" if c.note.startswith(("skipped", "verified on")) else "n/a"
    return "pass" if c.passed else "FAIL"


def problems(report: Report) -> list[tuple[str, str, str, str]]:
    """Every failed or skipped check as (where, check, status, reason), network checks first.
    A check that does not apply by its nature ("one channel per map") is not listed."""
    out = []
    for net in report.networks:
        for c in net.checks:
            if _status(c) in ("FAIL", "skipped"):
                out.append((net.name, c.name, _status(c), _reason(c)))
        for r in net.layers:
            for c in r.checks:
                if _status(c) in ("FAIL", "skipped"):
                    out.append((f"{net.name}: layer {r.index} {r.name}", c.name, _status(c),
                                _reason(c)))
    return out


def _reason(c: Check) -> str:
    if c.passed is False and c.note and c.measured is not None:
        return f"{c.note}; expected {c.expected}, measured {c.measured}"
    if c.passed is False:
        return f"expected {c.expected}, measured {c.measured}"
    return c.note


def answer_sentence(report: Report) -> str:
    """The answer in one sentence (with the hypotheses' F when there is a table)."""
    if report.hypotheses is None:
        return ("answer: each conv layer's F filters each SUM their C_in per-channel "
                "correlations, so every layer outputs F maps whatever C_in was; maps do not "
                "multiply with depth.")
    return "answer: " + _summed(report.hypotheses)


def _summed(hyp: Hypotheses) -> str:
    """The hypotheses' answer: the channels H1 gives (one F for a uniform stack, else each
    layer's own)."""
    channels = [row["sum"]["channels"] for row in hyp.rows][:hyp.parameters.get("layers", 1)]
    if len(set(channels)) == 1:
        f = channels[0]
        maps = f"its F = {f} maps whatever C_in is, so channels stay at {f} with depth"
    else:
        maps = (f"its own F maps whatever C_in is ({', '.join(map(str, channels))} here), so "
                "channels follow the filter counts, not the depth")
    return (f"the maps are summed (H1): every layer outputs {maps}, parameters and memory "
            "grow linearly; keeping every per-channel map (H3) would grow as C0*F^L.")


def _summary_line(report: Report) -> str:
    s = _summary(report)
    if not report.verify:
        return (f"verification skipped (--no-verify); totals checks: {s['passed']} passed, "
                f"{s['failed']} failed")
    verdict = "ALL CHECKS PASS" if s["ok"] else "SOME CHECKS FAIL"
    return (f"verification ({report.dtype}, batch {report.batch}): {s['passed']} checks passed, "
            f"{s['failed']} failed, {s['not_applicable']} not applicable: {verdict}")


def _shape_formula(shape: tuple[int, ...], suffix: str, channels: str) -> str:
    """``N x H x W x C_in`` for a rank-4 shape; ``N x D`` for a flat one."""
    if len(shape) < 2:
        return "-"
    if len(shape) == 2:
        return f"N x D{suffix or '_in'}"
    names = dimension_names(len(shape) - 2)[0]
    return " x ".join(["N", *(f"{b}{suffix}" for b in names), channels])


def _out_size_names(row: LayerRow) -> list[str]:
    n = len(row.in_shape) - 2
    if f"out_{n - 1}" not in row.quantities:
        return []
    return [f"{b}_out" for b in dimension_names(n)[0]]


def _kernel_formula(row: LayerRow) -> str:
    if row.kind == "dense":
        return "D_in x D_out"
    if len(row.in_shape) < 3:
        return "-"
    ks = " x ".join(f"k_{d}" for d in dimension_names(len(row.in_shape) - 2)[1])
    return f"{ks} x C_in/g x C_out" if row.groups > 1 else f"{ks} x C_in x C_out"


# ----------------------------------------------------------------------------- JSON
def _jq(q: Quantity) -> dict[str, Any]:
    return {"value": q.value, "formula": q.formula, "latex": q.latex}


def _jcheck(c: Check) -> dict[str, Any]:
    return {"name": c.name, "expected": c.expected, "measured": c.measured, "passed": c.passed,
            "note": c.note}


def _jlayer(r: LayerRow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": r.index, "name": r.name, "kind": r.kind, "in_shape": list(r.in_shape),
        "out_shape": list(r.out_shape),
        "kernel_shape": None if r.kernel_shape is None else list(r.kernel_shape),
        "groups": r.groups, "rule": r.rule, "einsum": r.einsum,
    }
    out.update({k: _jq(r.quantities[k]) for k in _Q_LABELS})
    sizes = [r.quantities[f"out_{j}"] for j in range(len(r.in_shape) - 2)
             if f"out_{j}" in r.quantities]
    out["out_sizes"] = [_jq(q) for q in sizes] if sizes else None
    out["checks"] = [_jcheck(c) for c in r.checks]
    out["receptive_field"] = (None if r.receptive_field is None
                              else {"value": list(r.receptive_field), "formula": r.rf_formula})
    out["count"], out["where"] = r.count, r.where
    return out


def report_dict(report: Report) -> dict[str, Any]:
    """The whole report as plain JSON-able data with stable keys."""
    hyp = report.hypotheses
    issues = problems(report)
    return {
        "schema": SCHEMA,
        "version": _version(),
        "dtype": report.dtype,
        "itemsize": report.itemsize,
        "batch": report.batch,
        "verified": report.verify,
        "check_maps": report.check_maps,
        "networks": [
            {
                "name": n.name, "title": n.title, "input_shape": list(n.input_shape),
                "layers": [_jlayer(r) for r in n.layers], "totals": n.totals,
                "checks": [_jcheck(c) for c in n.checks], "published": n.published,
            }
            for n in report.networks
        ],
        "hypotheses": None if hyp is None else {
            "parameters": hyp.parameters, "formulas": hyp.formulas, "rows": hyp.rows,
            "title": _hyp_title(hyp),
        },
        "answer": answer_sentence(report),
        "problems": [{"where": w, "check": c, "status": st, "reason": r}
                     for w, c, st, r in issues],
        "summary": _summary(report),
    }


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jconv")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree
        return "unknown"


def render_json(report: Report) -> str:
    """`report_dict` as indented JSON."""
    return json.dumps(report_dict(report), indent=2)


# ----------------------------------------------------------------------------- rich
NARROW = 120  # below this console width the tables drop their widest columns


class _NarrowTable(Table):
    """A detail table without the "measured" column (the check column says pass/FAIL)."""

    def add_row(self, *cells: Any, **kw: Any) -> None:  # type: ignore[override]
        if len(cells) == 5:
            cells = (cells[0], cells[1], cells[2], cells[4])
        super().add_row(*cells, **kw)


def _detail_table(row: LayerRow, narrow: bool = False) -> Table:
    q, ck = row.quantities, _checks_by_name(row)
    title = f"layer {row.index}: {row.name} ({row.kind}): one output map = {row.rule}"
    if narrow:
        t: Table = _NarrowTable(title=title, title_justify="left", box=None, pad_edge=False)
        t.add_column("quantity", ratio=2, overflow="fold")
        t.add_column("value", ratio=2, overflow="fold")
        t.add_column("formula", ratio=3, overflow="fold")
        t.add_column("check", no_wrap=True, min_width=9)
    else:
        t = Table(title=title, title_justify="left")
        t.add_column("quantity", no_wrap=True)
        t.add_column("value", max_width=30, overflow="fold")
        t.add_column("formula", min_width=36, overflow="fold")
        t.add_column("measured", no_wrap=True)
        t.add_column("check", no_wrap=True)

    def meas(name: str) -> tuple[str, str]:
        c = ck.get(name)
        if c is None:
            return ("", "")
        text = f"{c.measured:,}" if isinstance(c.measured, int) else str(c.measured)
        return (text, _mark2(c))

    t.add_row("input shape", _shape(row.in_shape), _shape_formula(row.in_shape, "", "C_in"), "", "")
    if row.kernel_shape is not None:
        t.add_row("kernel shape", _shape(row.kernel_shape), _kernel_formula(row), "", "")
    for key in ("weights", "biases", "params"):
        t.add_row(_Q_LABELS[key], f"{q[key].value:,}", q[key].formula, "", "")
    eq = f"einsum('{row.einsum}', patches, w)" if row.einsum and row.kernel_shape else ""
    t.add_row("one output map", _short_rule(row), eq, "", "")
    m = meas("shape")
    t.add_row("output shape", _shape(row.out_shape), _shape_formula(row.out_shape, "_out", "C_out"),
              _shape(tuple(ck["shape"].measured)) if "shape" in ck else "", m[1])
    if row.receptive_field is not None:
        t.add_row("receptive field", _shape(row.receptive_field), row.rf_formula, "", "")
    for j, name in enumerate(_out_size_names(row)):
        t.add_row(f"  {name}", str(q[f"out_{j}"].value), q[f"out_{j}"].formula, "", "")
    for key, check in (("out_elements", "elements"), ("out_bytes", "bytes")):
        t.add_row(_Q_LABELS[key], f"{q[key].value:,}", q[key].formula, *meas(check))
    t.add_row(_Q_LABELS["macs"], f"{q['macs'].value:,}", q["macs"].formula, "", "")
    if "sum_over_channels" in ck:
        c = ck["sum_over_channels"]
        t.add_row("map = SUM of channels", f"rel. error <= {c.expected:g}", c.note,
                  f"rel. error {c.measured:.3g}", _mark(c.passed))
    if "differs_from_average" in ck:
        a = ck["differs_from_average"]
        if a.passed is None:
            t.add_row("map != AVERAGE", "n/a", a.note, "", _mark(None))
        else:
            t.add_row("map != AVERAGE", f"rel. difference ~ {a.expected:.3g}", a.note,
                      f"rel. difference {a.measured:.3g}", _mark(a.passed))
    for c in row.checks:
        if c.name not in _SHOWN:
            t.add_row(c.name.replace("_", " "), _cell(c.expected), c.note, _cell(c.measured),
                      _mark2(c))
    return t


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def _mark2(c: Check) -> str:
    st = _status(c)
    return {"pass": "✓ pass", "FAIL": "✗ FAIL", "skipped": "- skipped", "n/a": "n/a"}[st]


def _compact_table(net: NetworkReport, narrow: bool = False) -> Table:
    title = f"{net.name}: per layer (params = weights + biases [+ 2C for bn])"
    if narrow:
        t = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for col in ("#", "layer", "kind", "output", "params", "MACs", "one output value"):
            t.add_column(col, overflow="fold")
        t.add_column("check", no_wrap=True, min_width=9)
        for r in net.layers:
            q = r.quantities
            t.add_row(str(r.index), r.name, r.kind, _shape(r.out_shape[1:]),
                      f"{q['params'].value:,}", f"{q['macs'].value:,}", _short_rule(r),
                      _row_mark(r))
        return t
    t = Table(title=title, title_justify="left")
    for col in ("#", "layer", "kind", "input", "kernel", "output", "params", "MACs",
                "act. bytes", "one output value"):
        t.add_column(col, overflow="fold")
    t.add_column("check", no_wrap=True)
    for r in net.layers:
        q = r.quantities
        t.add_row(
            str(r.index), r.name, r.kind, _shape(r.in_shape[1:]), _shape(r.kernel_shape),
            _shape(r.out_shape[1:]), f"{q['params'].value:,}", f"{q['macs'].value:,}",
            f"{q['out_bytes'].value:,}", _short_rule(r), _row_mark(r),
        )
    return t


def _short_rule(r: LayerRow) -> str:
    """The rule in a few words: what one output value sums over."""
    if r.kind == "dense":
        return f"sum of {r.in_shape[-1]:,} inputs"
    if r.kernel_shape is None:
        return "per channel" if r.kind in ("pool", "globalpool", "bn", "relu", "norm",
                                           "upsample") else "-"
    if len(r.kernel_shape) < 2:
        return "-"
    cg = r.kernel_shape[-2]
    if cg == 1 and r.groups > 1:
        return "1 channel (depthwise)"
    plural = "s" if cg > 1 else ""
    return f"sum of {cg:,} channel{plural}" + (f" x {r.groups} groups" if r.groups > 1 else "")


def _row_mark(r: LayerRow) -> str:
    if not r.checks:
        return "-"
    if any(c.passed is False for c in r.checks):
        return "✗ FAIL"
    if any(_status(c) == "skipped" for c in r.checks):
        return "- skipped"
    if all(c.passed is None for c in r.checks):
        return "n/a"
    return "✓ pass"


def _formula_legend(net: NetworkReport, itemsize: int) -> Table | None:
    seen: dict[tuple[str, str], str] = {}
    for r in net.layers:
        for key in ("weights", "biases", "macs", "out_bytes"):
            seen.setdefault((r.kind, key), r.quantities[key].formula)
    if not seen:
        return None
    t = Table(title=f"formulas by layer kind ({itemsize} bytes per element)",
              title_justify="left")
    for col in ("kind", "quantity", "formula"):
        t.add_column(col)
    for (kind, key), formula in seen.items():
        if formula != "0":
            t.add_row(kind, _Q_LABELS[key], formula)
    return t


def _totals_table(net: NetworkReport, batch: int) -> Table:
    t = Table(title=f"{net.name}: totals (batch {batch})", title_justify="left")
    for col in ("quantity", "value", "reference", "check"):
        t.add_column(col, overflow="fold")
    labels = {
        "weights": "weights", "biases": "biases", "bn_params": "batch-norm gamma, beta",
        "params": "trainable parameters", "bn_stats": "batch-norm running stats",
        "macs": "multiply-adds", "input_bytes": "input bytes",
        "activation_bytes": "activation bytes (all layer outputs)",
        "largest_activation_bytes": "largest single activation",
    }
    refs = {"params": [c for c in net.checks if c.name.startswith("params")],
            "macs": [c for c in net.checks if c.name.startswith("macs")]}
    labels.update({k: k.replace("_", " ") for k in net.totals if k not in labels})
    for key, label in labels.items():
        if key not in net.totals:
            continue
        checks = refs.get(key, [])
        ref = "; ".join(f"{c.name.replace('_', ' ')}: {_cell(c.expected)}" for c in checks)
        mark = "" if not checks else _mark(all(c.passed for c in checks))
        t.add_row(label, _cell(net.totals[key]), ref, mark)
    others = [c for c in net.checks
              if not c.name.startswith(("params_vs", "macs_vs"))]
    for c in others:
        t.add_row(c.name.replace("_", " "), _cell(c.measured),
                  f"{_cell(c.expected)}" + (f" ({c.note})" if c.note else ""), _mark2(c))
    return t


def _human(n: int) -> str:
    """Bytes in binary units (exact numbers are in --json); beyond 1024 TiB, a power of 2."""
    if n >= 1 << 50:
        return f"~2^{n.bit_length() - 1} B"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def _hyp_title(h: Hypotheses) -> str:
    p = h.parameters
    return h.title or (f"three hypotheses over depth L (F = {p['F']} filters of {p['k']}x"
                       f"{p['k']}, input {p['H']}x{p['W']}x{p['C0']}, {p['itemsize']} "
                       "bytes/element, batch 1)")


def _hypotheses_table(h: Hypotheses) -> Table:
    t = Table(title=_hyp_title(h), title_justify="left")
    t.add_column("L", justify="right", no_wrap=True, min_width=len(str(len(h.rows))))
    for key in HYPOTHESES:
        for metric in ("C_L", "params", "memory"):
            t.add_column(f"{key}\n{metric}", justify="right", no_wrap=True)
    for row in h.rows:
        cells = [str(row["L"])]
        for key in HYPOTHESES:
            v = row[key]
            cells += [f"{v['channels']:,}", f"{v['params']:,}", _human(v["activation_bytes"])]
        t.add_row(*cells)
    return t


def _hypotheses_formulas(h: Hypotheses) -> Table:
    t = Table(title="the same, as formulas in the depth L (jconv.symbolic.hypotheses)",
              title_justify="left")
    for col in ("hypothesis", "channels C_L", "parameters", "activation bytes"):
        t.add_column(col)
    for key, name in HYPOTHESES.items():
        f = h.formulas[key]
        t.add_row(name, f["channels"], f["params"], f["activation_bytes"])
    return t


def render_rich(report: Report, console: Console, *, view: str = "auto") -> None:
    """Print the report as rich tables (`view`: "auto", "full" or "compact")."""
    console.print(
        "[bold]jconv explain[/bold]: each of a conv layer's F filters holds one kernel per input "
        "channel and outputs the [bold]SUM[/bold] of the C_in per-channel correlations, so a "
        "layer outputs F maps whatever C_in was."
    )
    for net in report.networks:
        console.print()
        console.print(f"[bold underline]{net.name}[/bold underline]: {net.title}")
        full = view == "full" or (view == "auto" and len(net.layers) <= 8)
        narrow = console.width < NARROW
        if full:
            for row in net.layers:
                console.print(_detail_table(row, narrow))
        else:
            console.print(_compact_table(net, narrow))
            legend = _formula_legend(net, report.itemsize)
            if legend is not None:
                console.print(legend)
        console.print(_totals_table(net, report.batch))
    if report.hypotheses is not None:
        console.print()
        console.print(_hypotheses_table(report.hypotheses))
        if report.hypotheses.formulas:
            console.print(_hypotheses_formulas(report.hypotheses))
        console.print("[bold]answer[/bold]: " + _summed(report.hypotheses).replace(
            "summed", "[bold]summed[/bold]", 1))
    else:
        console.print()
        console.print(answer_sentence(report))
    issues = problems(report)
    if issues:
        console.print()
        t = Table(title="checks that failed or were skipped", title_justify="left")
        for col in ("where", "check", "status", "reason"):
            t.add_column(col, overflow="fold", no_wrap=col == "status")
        for where, name, status, reason in issues:
            t.add_row(where, name, status, reason)
        console.print(t)
    console.print()
    style = "bold green" if report.ok else "bold red"
    console.print(Text(_summary_line(report), style=style))
    if report.verify and any(r.checks for n in report.networks for r in n.layers):
        console.print(f"(sum checks use up to {report.check_maps} output maps per layer; every "
                      "layer runs in full through the engine for its measured shape and bytes)")


# ----------------------------------------------------------------------------- Markdown
def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _layer_cells(r: LayerRow, fmt: Callable[[str], str]) -> list[list[str]]:
    q, ck = r.quantities, _checks_by_name(r)
    rows = [["input shape", _shape(r.in_shape), fmt(_shape_formula(r.in_shape, "", "C_in")), ""]]
    if r.kernel_shape is not None:
        rows.append(["kernel shape", _shape(r.kernel_shape), fmt(_kernel_formula(r)), ""])
    rows += [[_Q_LABELS[k], f"{q[k].value:,}", fmt(q[k].formula), ""]
             for k in ("weights", "biases", "params")]
    rows.append(["one output map", f"{_short_rule(r)}: {r.rule}",
                 fmt(r.einsum) if r.einsum else "", ""])
    shape_check = ck.get("shape")
    out_formula = fmt(_shape_formula(r.out_shape, "_out", "C_out"))
    rows.append(["output shape", _shape(r.out_shape), out_formula,
                 _mark(shape_check.passed) if shape_check else ""])
    rows += [[name, str(q[f"out_{j}"].value), fmt(q[f"out_{j}"].formula), ""]
             for j, name in enumerate(_out_size_names(r))]
    for key, name in (("out_elements", "elements"), ("out_bytes", "bytes"), ("macs", "")):
        c = ck.get(name)
        rows.append([_Q_LABELS[key], f"{q[key].value:,}", fmt(q[key].formula),
                     _mark(c.passed) if c else ""])
    for name, label in (("sum_over_channels", "map = SUM of channels"),
                        ("differs_from_average", "map != AVERAGE")):
        c = ck.get(name)
        if c is not None:
            rows.append([label, "n/a" if c.measured is None else f"{c.measured:.3g}", c.note,
                         _mark(c.passed)])
    rows += [[c.name.replace("_", " "), _cell(c.measured), c.note, _mark2(c)]
             for c in r.checks if c.name not in _SHOWN]
    return rows


def render_markdown(report: Report) -> str:
    """GitHub-flavoured Markdown: one table per layer (or per network), totals, hypotheses."""
    out = ["# jconv explain", ""]
    for net in report.networks:
        out += [f"## {net.name}: {net.title}", ""]
        if len(net.layers) <= 8:
            for r in net.layers:
                out += [f"### layer {r.index}: {r.name} ({r.kind})", ""]
                out += [_md_table(["quantity", "value", "formula", "check"],
                                  _layer_cells(r, lambda s: f"`{s}`")), ""]
        else:
            rows = [[str(r.index), r.name, r.kind, _shape(r.in_shape[1:]),
                     _shape(r.kernel_shape), _shape(r.out_shape[1:]),
                     f"{r.quantities['params'].value:,}", f"{r.quantities['macs'].value:,}",
                     f"{r.quantities['out_bytes'].value:,}", _short_rule(r), _row_mark(r)]
                    for r in net.layers]
            out += [_md_table(["#", "layer", "kind", "input", "kernel", "output", "params",
                               "MACs", "act. bytes", "one output value", "check"], rows), ""]
        out += [f"### totals (batch {report.batch})", ""]
        out += [_md_table(["quantity", "value"],
                          [[k, f"{v:,}"] for k, v in net.totals.items()]), ""]
        if net.checks:
            out += [_md_table(["check", "expected", "measured", "result"],
                              [[c.name, _cell(c.expected), _cell(c.measured), _mark2(c)]
                               for c in net.checks]), ""]
    if report.hypotheses is not None:
        h = report.hypotheses
        out += ["## three hypotheses over depth", ""]
        header = ["L"] + [f"{k}: {m}" for k in HYPOTHESES
                          for m in ("channels", "params", "activation bytes")]
        rows = [[str(r["L"])] + [f"{r[k][m]:,}" for k in HYPOTHESES
                                 for m in ("channels", "params", "activation_bytes")]
                for r in h.rows]
        out += [_md_table(header, rows), ""]
        if h.formulas:
            out += [f"- {name}: channels `{h.formulas[k]['channels']}`, params "
                    f"`{h.formulas[k]['params']}`" for k, name in HYPOTHESES.items()]
        out.append("")
    out += [answer_sentence(report), ""]
    issues = problems(report)
    if issues:
        out += ["## checks that failed or were skipped", ""]
        out += [_md_table(["where", "check", "status", "reason"],
                          [list(i) for i in issues]), ""]
    out += [f"**{_summary_line(report)}**", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- LaTeX
def _tex(s: str) -> str:
    for ch in "&%#$_":
        s = s.replace(ch, "\\" + ch)
    return s.replace("✓", r"$\checkmark$").replace("✗", r"$\times$")


def _tex_shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "$" + r" \times ".join(str(d) for d in shape) + "$"


def _tex_table(header: list[str], rows: list[list[str]], caption: str) -> str:
    cols = "l" * len(header)
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{_tex(caption)}}}",
             rf"\begin{{tabular}}{{{cols}}}", r"\hline", " & ".join(header) + r" \\", r"\hline"]
    lines += [" & ".join(r) + r" \\" for r in rows]
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def render_latex(report: Report) -> str:
    """A LaTeX fragment (booktabs-free `tabular`s); formulas in math mode."""
    out = ["% generated by jconv explain"]
    for net in report.networks:
        rows = []
        for r in net.layers:
            q = r.quantities
            rows.append([
                _tex(r.name), _tex(r.kind), _tex_shape(r.in_shape),
                _tex_shape(r.kernel_shape), _tex_shape(r.out_shape),
                f"{q['params'].value:,}".replace(",", "{,}") + f" (${q['params'].latex}$)",
                f"{q['macs'].value:,}".replace(",", "{,}") + f" (${q['macs'].latex}$)",
                f"{q['out_bytes'].value:,}".replace(",", "{,}") + f" (${q['out_bytes'].latex}$)",
                _tex(_short_rule(r)).replace(",", "{,}"),
                _tex(_row_mark(r)),
            ])
        out.append(_tex_table(
            ["layer", "kind", "input", "kernel", "output", "params", "MACs", "bytes",
             "one output value", "check"],
            rows, f"{net.name}: {net.title}"))
        out.append(_tex_table(
            ["quantity", "value"],
            [[_tex(k), f"{v:,}".replace(",", "{,}")] for k, v in net.totals.items()],
            f"{net.name}: totals (batch {report.batch})"))
    if report.hypotheses is not None:
        h = report.hypotheses
        rows = [[str(r["L"])] + [f"{r[k][m]:,}".replace(",", "{,}") for k in HYPOTHESES
                                 for m in ("channels", "params", "activation_bytes")]
                for r in h.rows]
        header = ["$L$"] + [f"{k}: {m}" for k in HYPOTHESES for m in ("C", "params", "bytes")]
        out.append(_tex_table(header, rows, "three hypotheses over depth"))
    out.append(_tex(answer_sentence(report)) + "\n")
    issues = problems(report)
    if issues:
        out.append(_tex_table(["where", "check", "status", "reason"],
                              [[_tex(c) for c in i] for i in issues],
                              "checks that failed or were skipped"))
    out.append(f"% {_summary_line(report)}")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- plot
def write_plot(h: Hypotheses, path: str) -> str:
    """Activation memory and parameters against depth for the three hypotheses (log scale);
    returns the file written (Matplotlib adds ``.png`` to a name without a suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = [r["L"] for r in h.rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, metric, label in ((axes[0], "activation_bytes", "activation memory (bytes)"),
                              (axes[1], "params", "parameters")):
        for (key, name), style in zip(HYPOTHESES.items(), ("o-", "s--", "^-"), strict=True):
            ax.plot(depth, [r[key][metric] for r in h.rows], style, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("depth L (conv layers)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    p = h.parameters
    axes[0].legend(fontsize=8)
    axes[0].annotate("H1 and H2 coincide: F maps per layer", xy=(0.35, 0.12),
                     xycoords="axes fraction", fontsize=8)
    layers = (f"{p['F']} filters of {p.get('window', p['k'])} per layer"
              if not h.title or "filters of" in h.title
              else f"the network's {p.get('layers', '?')} conv layers")
    size = p.get("input") or f"{p['H']}x{p['W']}x{p['C0']}"
    fig.suptitle(f"{layers} on {size}: summing keeps F maps (linear), keeping every map "
                 "grows as C0*F^L")
    import os

    written = path if os.path.splitext(path)[1] else path + ".png"
    fig.savefig(written, dpi=110, format=None if os.path.splitext(path)[1] else "png")
    plt.close(fig)
    return written
