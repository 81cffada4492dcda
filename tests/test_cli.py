"""`jconv explain` run as a subprocess: the question's example, formats, plot, networks.

Numbers are checked against closed forms written here from the definition of a conv layer
(``k*k*C_in*F`` weights, ``H*W*k*k*C_in*F`` multiply-adds, ...), not read back from jconv.
The CLI runs with JAX's strict dtype promotion and rank promotion errors switched on.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import pytest

from jconv import models

ROOT = Path(__file__).resolve().parents[1]
ENV = {**{k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},
       "JAX_NUMPY_DTYPE_PROMOTION": "strict", "JAX_NUMPY_RANK_PROMOTION": "raise",
       "JAX_PLATFORMS": "cpu"}
"""The subprocesses' environment: no terminal size (pytest-xdist's workers set 80x24), so
the output is the default plain-text layout unless a test asks for a width."""


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m jconv ARGS``; output decoded as UTF-8."""
    return subprocess.run(
        [sys.executable, "-m", "jconv", *args], capture_output=True, text=True,
        encoding="utf-8", env=ENV, cwd=ROOT, timeout=timeout, check=False,
    )


def run_json(*args: str) -> dict[str, Any]:
    proc = run(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def checks(layer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in layer["checks"]}


# ----------------------------------------------------------------------------- the example
@pytest.fixture(scope="module")
def default() -> dict[str, Any]:
    return run_json("explain")


def conv_numbers(h: int, w: int, c_in: int, f: int, k: int, itemsize: int = 4,
                 n: int = 1) -> dict[str, int]:
    """A stride-1 'SAME' conv from its definition: one k x k kernel per (input, filter) pair."""
    return {
        "weights": k * k * c_in * f, "biases": f, "params": k * k * c_in * f + f,
        "macs": n * h * w * f * k * k * c_in, "out_elements": n * h * w * f,
        "out_bytes": n * h * w * f * itemsize,
    }


@pytest.mark.parametrize(("net", "index", "c_in", "params"), [
    ("grayscale", 0, 1, 100), ("grayscale", 1, 10, 910), ("rgb", 0, 3, 280),
])
def test_default_example_numbers(default: dict[str, Any], net: str, index: int, c_in: int,
                                 params: int) -> None:
    nets = {n["name"]: n for n in default["networks"]}
    layer = nets[net]["layers"][index]
    assert layer["in_shape"] == [1, 28, 28, c_in]
    assert layer["out_shape"] == [1, 28, 28, 10]
    assert layer["kernel_shape"] == [3, 3, c_in, 10]
    expected = conv_numbers(28, 28, c_in, 10, 3)
    assert expected["params"] == params
    for key, value in expected.items():
        assert layer[key]["value"] == value, key
        assert layer[key]["formula"], key
    assert [q["value"] for q in layer["out_sizes"]] == [28, 28]
    assert layer["rule"] == f"sum over C_in = {c_in} per-channel correlations"
    assert layer["einsum"] == "nyxijc,ijcf->nyxf"
    # the formulas are symbolic: weights in k, C_in, C_out; bytes scale with 4 bytes/element
    assert {"k_h", "k_w", "C_in", "C_out"} <= set(
        layer["weights"]["formula"].replace("*", " ").replace("/", " ").split())
    assert layer["out_bytes"]["formula"].startswith("4*")


def test_default_example_verified(default: dict[str, Any]) -> None:
    assert default["verified"] is True
    assert default["summary"]["ok"] is True and default["summary"]["failed"] == 0
    for net in default["networks"]:
        for layer in net["layers"]:
            c = checks(layer)
            for name in ("shape", "elements", "bytes", "sum_over_channels"):
                assert c[name]["passed"] is True, (net["name"], layer["name"], name)
            assert c["shape"]["measured"] == layer["out_shape"]
            assert c["bytes"]["measured"] == layer["out_bytes"]["value"]
            assert c["sum_over_channels"]["measured"] <= c["sum_over_channels"]["expected"]
            avg = c["differs_from_average"]
            c_in = layer["in_shape"][-1]
            if c_in == 1:
                assert avg["passed"] is None  # one channel: sum and average coincide
            else:
                assert avg["passed"] is True
                assert avg["measured"] == pytest.approx(1 - 1 / c_in, rel=1e-3)


def test_default_example_totals_and_hypotheses(default: dict[str, Any]) -> None:
    nets = {n["name"]: n for n in default["networks"]}
    assert nets["grayscale"]["totals"]["params"] == 100 + 910
    assert nets["grayscale"]["totals"]["macs"] == 28 * 28 * 10 * 9 * (1 + 10)
    assert nets["grayscale"]["totals"]["activation_bytes"] == 2 * 28 * 28 * 10 * 4
    assert nets["rgb"]["totals"]["params"] == 280
    assert nets["rgb"]["totals"]["input_bytes"] == 28 * 28 * 3 * 4
    hyp = default["hypotheses"]
    # the table follows the network's own conv layers: their count, window and input shown
    assert hyp["parameters"] == {"F": 10, "C0": 1, "H": 28, "W": 28, "k": 3, "itemsize": 4,
                                 "window": "3x3", "input": "28x28x1", "layers": 2}
    assert [r["L"] for r in hyp["rows"]] == list(range(1, 9))
    for r in hyp["rows"]:
        L = r["L"]
        assert r["sum"]["channels"] == 10 and r["average"]["channels"] == 10
        assert r["keep"]["channels"] == 10**L
        assert r["sum"]["params"] == 100 + 910 * (L - 1)
        assert r["sum"]["activation_bytes"] == L * 28 * 28 * 10 * 4
        assert r["keep"]["activation_bytes"] == sum(28 * 28 * 10**j * 4 for j in range(1, L + 1))


def test_default_terminal_output() -> None:
    proc = run("explain")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    assert out.count("✓ pass") >= 15 and "✗ FAIL" not in out
    assert "ALL CHECKS PASS" in out
    for text in ("sum over C_in = 10 per-channel correlations", "nyxijc,ijcf->nyxf",
                 "C_in*C_out*k_h*k_w/g + C_out", "3 x 3 x 10 x 10", "910", "280",
                 "map = SUM of channels", "map != AVERAGE", "10,000,000"):
        assert text in out, text


def test_answer_names_each_layers_maps_when_the_filters_change() -> None:
    """The answer states H1's channels as the hypotheses table has them: one F for a stack
    of equal layers, each layer's own F where the filter counts change (not the first
    layer's F as if it held for every depth)."""
    proc = run("explain", "--no-verify", "--input", "16x16x3", "--layer", "conv:16,k=3",
               "--layer", "conv:8,k=3", "--layer", "conv:8,k=3")
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "outputs its own F maps whatever C_in is (16, 8, 8 here)" in out
    assert "channels stay at 16" not in out
    same = run("explain", "--no-verify", "--input", "16x16x3", "--layer", "conv:8,k=3",
               "--layer", "conv:8,k=3")
    assert "its F = 8 maps whatever C_in is, so channels stay at 8" in " ".join(
        same.stdout.split())


# ----------------------------------------------------------------------------- formats, plot
def test_markdown_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "explain.png"
    proc = run("explain", "--markdown", "--no-verify", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    md = proc.stdout
    assert md.startswith("# jconv explain\n")
    assert "| quantity | value | formula | check |" in md
    assert "|---|---|---|---|" in md
    assert "| parameters | 910 | `C_in*C_out*k_h*k_w/g + C_out` |" in md
    assert "## three hypotheses over depth" in md
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[0] > 300 and img.shape[1] > 600
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_latex() -> None:
    proc = run("explain", "--latex", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    tex = proc.stdout
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") >= 5
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}")
    assert r"\frac{C_{in} C_{out} k_{h} k_{w}}{g} + C_{out}" in tex
    assert "910" in tex and r"\_" in tex


# ----------------------------------------------------------------------------- networks
@pytest.mark.parametrize("name", ["lenet5", "resnet20", "vgg16", "resnet50", "mobilenet_v1"])
def test_model_totals_match_published(name: str) -> None:
    published = models.PUBLISHED[name]
    report = run_json("explain", "--model", name, "--no-verify", "--no-hypotheses")
    (net,) = report["networks"]
    totals = net["totals"]
    rounding = published.get("rounding", {})
    keys = [k for k in ("params", "macs") if k in published]  # ResNet-20: params only
    names = {c["name"] for c in net["checks"]}
    assert "params" in keys and ("macs_vs_published" in names) == ("macs" in keys)
    for key in keys:
        step = rounding.get(key, 1)
        assert abs(totals[key] - published[key]) * 2 <= step, (key, totals[key], published[key])
        (check,) = [c for c in net["checks"] if c["name"] == f"{key}_vs_published"]
        assert check["passed"] is True
    assert totals["params"] == sum(layer["params"]["value"] for layer in net["layers"])
    assert report["summary"]["ok"] is True


def test_custom_network_verified() -> None:
    """Every layer kind of the grammar, run through the engine, numbers from the definition."""
    report = run_json(
        "explain", "--input", "12x12x4", "--batch", "2",
        "--layer", "conv:8,k=3,s=2,p=same,g=2", "--layer", "bn", "--layer", "relu",
        "--layer", "dw:k=3,m=2,d=2", "--layer", "sep:6,k=3", "--layer", "pool:max,k=2,s=2",
        "--layer", "conv:5,k=1x3,p=valid,bias=0", "--layer", "gap", "--layer", "dense:3",
        "--check-maps", "3",
    )
    assert report["summary"] == {"passed": report["summary"]["passed"], "failed": 0,
                                 "not_applicable": 2, "ok": True}
    layers = report["networks"][0]["layers"]
    by = {layer["name"]: layer for layer in layers}
    g = by["conv0"]
    assert g["out_shape"] == [2, 6, 6, 8] and g["kernel_shape"] == [3, 3, 2, 8]
    assert g["weights"]["value"] == 3 * 3 * (4 // 2) * 8
    assert g["macs"]["value"] == 2 * 6 * 6 * 8 * 3 * 3 * 2
    assert checks(g)["differs_from_average"]["measured"] == pytest.approx(0.5, rel=1e-3)
    dw = by["depthwise3"]
    assert dw["out_shape"] == [2, 6, 6, 16] and dw["weights"]["value"] == 3 * 3 * 16
    assert checks(dw)["differs_from_average"]["passed"] is None
    assert "3 of 16 maps" in checks(dw)["sum_over_channels"]["note"]
    assert by["separable4/pw"]["weights"]["value"] == 16 * 6
    assert by["pool5"]["out_shape"] == [2, 3, 3, 6]
    assert by["conv6"]["out_shape"] == [2, 3, 1, 5] and by["conv6"]["biases"]["value"] == 0
    assert by["globalpool7"]["out_shape"] == [2, 5]
    assert by["dense8"]["params"]["value"] == 5 * 3 + 3
    assert by["batchnorm1"]["params"]["value"] == 2 * 8
    for layer in layers:
        assert checks(layer)["shape"]["measured"] == layer["out_shape"], layer["name"]


def test_dtype_and_batch() -> None:
    report = run_json("explain", "--dtype", "bfloat16", "--batch", "2", "--no-hypotheses")
    assert report["itemsize"] == 2 and report["summary"]["ok"] is True
    layer = report["networks"][0]["layers"][1]
    expected = conv_numbers(28, 28, 10, 10, 3, itemsize=2, n=2)
    for key, value in expected.items():
        assert layer[key]["value"] == value, key
    assert checks(layer)["bytes"]["measured"] == 2 * 28 * 28 * 10 * 2


def test_float64_run() -> None:
    report = run_json("explain", "--dtype", "float64", "--input", "9x9x3",
                      "--layer", "conv:4,k=3,s=2,p=1")
    (layer,) = report["networks"][0]["layers"]
    assert layer["out_shape"] == [1, 5, 5, 4] and layer["out_bytes"]["value"] == 5 * 5 * 4 * 8
    c = checks(layer)
    assert c["sum_over_channels"]["passed"] is True and c["sum_over_channels"]["measured"] < 1e-12


# ----------------------------------------------------------------------------- help, entry point
def test_help_documents_every_option() -> None:
    top = run("--help")
    assert top.returncode == 0 and "explain" in top.stdout and "examples:" in top.stdout
    proc = run("explain", "--help")
    assert proc.returncode == 0
    for option in ("--input", "--layer", "--model", "--batch", "--dtype", "--json",
                   "--markdown", "--latex", "--plot", "--no-verify", "--check-maps", "--depth",
                   "--no-hypotheses", "--view", "--seed"):
        assert option in proc.stdout, option
    for text in ("conv:F", "dw[:k=3]", "sep:F", "pool:max|avg", "gap", "dense:U", "bn | relu",
                 "examples:", "lenet5", "mobilenet_v1", "exit status"):
        assert text in proc.stdout, text


def test_console_script_entry_point() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["jconv"].partition(":")
    assert getattr(importlib.import_module(module), attr).__name__ == "main"
    proc = subprocess.run([sys.executable, "-c", f"import {module}; raise SystemExit("
                           f"{module}.{attr}(['explain', '--help']))"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, check=False)
    assert proc.returncode == 0 and "--layer" in proc.stdout


def test_wrong_engine_fails(monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """An engine that averaged the channels instead of summing them fails, exit status 1."""
    from jconv import _verify
    from jconv.cli import main

    real = _verify.engine_conv

    def averaging(x: Any, w: Any, spec: Any, groups: int | None = None) -> Any:
        return real(x, w, spec, groups) / x.shape[-1]

    monkeypatch.setattr(_verify, "engine_conv", averaging)
    code = main(["explain", "--input", "5x5x2", "--layer", "conv:3,k=3", "--json",
                 "--no-hypotheses"])
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["ok"] is False
    (layer,) = report["networks"][0]["layers"]
    c = checks(layer)
    assert c["shape"]["passed"] is True
    assert c["sum_over_channels"]["passed"] is False
    assert c["sum_over_channels"]["measured"] == pytest.approx(0.5, rel=1e-3)
    assert c["differs_from_average"]["passed"] is False


def test_half_precision_long_dot_products() -> None:
    """K = 3*3*256 = 2304 terms per output: more than 1 / u of float16 (2048)."""
    report = run_json("explain", "--dtype", "float16", "--input", "6x6x256",
                      "--layer", "conv:4,k=3", "--check-maps", "2")
    (layer,) = report["networks"][0]["layers"]
    assert layer["out_bytes"]["value"] == 6 * 6 * 4 * 2
    assert layer["params"]["value"] == 3 * 3 * 256 * 4 + 4
    c = checks(layer)
    assert c["sum_over_channels"]["passed"] is True
    assert c["differs_from_average"]["measured"] == pytest.approx(1 - 1 / 256, abs=2e-2)


def test_float64_run_leaves_64_bit_mode_as_it_was() -> None:
    """A float64 verification turns 64-bit types on for its own engine runs only."""
    from jconv._explain import build_report

    net = models.Network("f64", (5, 5, 2), (models.Conv(3, 3),))
    before = jax.config.jax_enable_x64
    try:
        report = build_report([(net, "float64")], dtype="float64", check_maps=3,
                              hypotheses=False)
        after = jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", before)
    assert before is False and after is before
    assert jnp.zeros(1).dtype == jnp.float32
    (layer,) = report.networks[0].layers
    c = {check.name: check for check in layer.checks}
    assert c["bytes"].passed is True and c["bytes"].measured == 5 * 5 * 3 * 8  # really float64
    assert c["sum_over_channels"].passed is True and c["sum_over_channels"].measured < 1e-12
