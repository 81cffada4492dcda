"""`jconv.explain` on models written by a user (nnx, linen, plain functions, jit, scan,
jconv's own calls, PyTorch), and the CLI's --fn/--torch, errors, narrow output."""

from __future__ import annotations

import json
import math
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import jconv
from jconv import symbolic
from jconv._explain import build_report
from jconv._explain_render import render_latex, render_markdown
from jconv._report import Check
from jconv.cli import main

sys.path.insert(0, str(Path(__file__).parent))
import _user_models as um

X32 = jnp.ones((1, 32, 32, 3))


def conv_shapes(report: jconv.ExplainReport) -> list[tuple]:
    return [(r.in_shape, r.kernel_shape, r.out_shape) for r in report.networks[0].layers
            if r.kind in ("conv", "depthwise")]


@pytest.fixture(scope="module")
def nnx_model() -> um.ResNet18:
    return um.resnet18_nnx()


@pytest.fixture(scope="module")
def nnx_report(nnx_model: um.ResNet18) -> jconv.ExplainReport:
    return jconv.explain(nnx_model, X32, verify=False)


def test_nnx_resnet18_params_equal_pytree_and_names(
        nnx_model: um.ResNet18, nnx_report: jconv.ExplainReport) -> None:
    net = nnx_report.networks[0]
    pytree = sum(v.size for v in jax.tree.leaves(nnx.state(nnx_model, nnx.Param)))
    assert net.totals["params"] == pytree == 11_173_962
    stats = sum(v.size for v in jax.tree.leaves(nnx.state(nnx_model, nnx.BatchStat)))
    assert net.totals["bn_stats"] == stats
    names = [r.name for r in net.layers]
    assert names[0] == "stem" and "blocks.2.down" in names and names[-1] == "fc"
    kinds = [r.kind for r in net.layers]
    assert kinds.count("conv") == 20 and kinds.count("dense") == 1 and kinds.count("norm") == 20
    first = net.layers[0]
    assert first.rule == "sum over C_in = 3 per-channel correlations"
    assert first.receptive_field == (3, 3)
    # a deep conv sees much more than its own 3x3 window
    assert max(r.receptive_field or (0,) for r in net.layers)[0] > 40
    assert net.checks[0].name == "params_vs_pytree" and net.checks[0].passed


def test_trace_is_fast(nnx_model: um.ResNet18) -> None:
    start = time.perf_counter()
    jconv.explain(nnx_model, X32, verify=False, hypotheses=False)
    assert time.perf_counter() - start < 5.0


def test_linen_twin_and_jit_give_the_same_report(nnx_report: jconv.ExplainReport) -> None:
    model, variables = um.resnet18_linen(X32)
    plain = jconv.explain(model.apply, variables, X32, verify=False)
    jitted = jconv.explain(jax.jit(model.apply), variables, X32, verify=False)
    module = jconv.explain(model, variables, X32, verify=False)
    pytree = sum(v.size for v in jax.tree.leaves(variables["params"]))
    for r in (plain, jitted, module):
        assert r.networks[0].totals["params"] == pytree == nnx_report.networks[0].totals["params"]
        assert r.networks[0].totals["macs"] == nnx_report.networks[0].totals["macs"]
        assert conv_shapes(r) == conv_shapes(nnx_report)
    assert plain.networks[0].layers[0].name == "Conv_0"


def test_plain_function_verified_against_xla_and_real_weights() -> None:
    params = um.small_params()
    x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    report = jconv.explain(um.small_cnn, params, x, check_maps=4)
    net = report.networks[0]
    checks = {c.name: c for c in net.checks}
    assert checks["params_vs_pytree"].passed
    assert checks["params_vs_pytree"].expected == sum(v.size for v in jax.tree.leaves(params))
    assert checks["conv_flops_vs_xla"].passed
    assert net.totals["xla_flops_program"] >= net.totals["conv_flops_xla_formula"]
    assert "residual_bytes_saved" in net.totals
    conv = net.layers[0]
    assert [r.kind for r in net.layers] == ["conv", "conv", "dense"]
    assert conv.quantities["biases"].value == 8
    sums = [c for c in conv.checks if c.name == "sum_over_channels"]
    assert sums and sums[0].passed and "own input" in sums[0].note
    assert report.ok


def test_scan_over_layers_counts_each_layer() -> None:
    params = um.scan_params(depth=4)
    report = jconv.explain(um.scan_stack, params, jnp.ones((1, 8, 8, 8)), check_maps=2)
    net = report.networks[0]
    (conv,) = [r for r in net.layers if r.kind == "conv"]
    assert conv.count == 4 and "scan x4" in conv.where
    assert net.totals["params"] == 4 * (9 * 8 * 8 + 8) == sum(
        v.size for v in jax.tree.leaves(params))
    assert net.totals["macs"] == 4 * conv.quantities["macs"].value
    assert {c.name: c for c in net.checks}["conv_flops_vs_xla"].passed


def test_jconv_calls_are_recognised_without_running_them() -> None:
    w = jnp.ones((3, 3, 3, 4))

    def f(w: jax.Array, x: jax.Array) -> jax.Array:
        return jconv.conv(x, w, stride=2)

    jitted = jax.jit(f)
    jitted(w, X32)  # its jaxpr is now cached
    for fn in (f, jitted):
        report = jconv.explain(fn, w, X32, verify=False)
        (row,) = report.networks[0].layers
        assert row.kind == "conv" and "jconv engine" in row.where
        assert row.out_shape == (1, 16, 16, 4)
        assert report.networks[0].totals["params"] == w.size  # a bare weight is a parameter


class Tiny:
    """An Equinox-style module: a pytree holding its weight, called on the input."""

    def __init__(self, w: jax.Array) -> None:
        self.w = w

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(x, self.w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))


jax.tree_util.register_pytree_with_keys(
    Tiny, lambda t: (((jax.tree_util.GetAttrKey("w"), t.w),), None), lambda _, c: Tiny(c[0]))


def test_callable_pytree_module() -> None:
    report = jconv.explain(Tiny(jnp.ones((3, 3, 3, 5))), X32, verify=False)
    net = report.networks[0]
    assert net.totals["params"] == 135 and net.layers[0].name == "w"


def test_equinox_module() -> None:
    """A real Equinox model (unbatched, channels first): its convolutions found and named by
    their place in the module tree, parameters equal to its array leaves."""
    eqx = pytest.importorskip("equinox")
    k1, k2 = jax.random.split(jax.random.key(0))
    model = eqx.nn.Sequential([eqx.nn.Conv2d(3, 8, 3, padding=1, key=k1),
                               eqx.nn.Lambda(jax.nn.relu), eqx.nn.Conv2d(8, 4, 3, key=k2)])
    net = jconv.explain(model, jnp.ones((3, 16, 16)), verify=False).networks[0]
    arrays = sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
    assert net.totals["params"] == arrays == 3 * 9 * 8 + 8 + 8 * 9 * 4 + 4
    assert [(r.kind, r.name) for r in net.layers] == [("conv", "layers.0"), ("conv", "layers.2")]
    assert net.checks[0].name == "params_vs_pytree" and net.checks[0].passed


def test_torch_resnet18_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = um.torch_resnet18()
    (tmp_path / "user_torch.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import _user_models
        def make():
            return _user_models.torch_resnet18()
        def boom():
            raise RuntimeError("bad config")
    """))
    code = main(["explain", "--torch", f"{tmp_path / 'user_torch.py'}:make", "--input",
                 "1x3x32x32", "--no-verify", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    totals = data["networks"][0]["totals"]
    assert totals["params"] == sum(p.numel() for p in net.parameters()) == 11_173_962
    assert data["networks"][0]["checks"][0]["passed"]
    with pytest.raises(SystemExit) as info:
        main(["explain", "--fn", f"{tmp_path / 'user_torch.py'}:boom", "--input", "1x8x8x3"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "RuntimeError: bad config" in err and "\n" not in err and "Traceback" not in err


def test_fn_factory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "user_fn.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import _user_models
        def make():
            return _user_models.small_cnn, _user_models.small_params()
    """))
    code = main(["explain", "--fn", f"{tmp_path / 'user_fn.py'}:make", "--input", "1x8x8x3",
                 "--check-maps", "2", "--markdown"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "params_vs_pytree" in out and "sum of 3 channels" in out and "answer:" in out


@pytest.mark.parametrize(("args", "token"), [
    (["--seed", "-1"], "--seed -1"),
    (["--depth", "1000"], "--depth 1000"),
    (["--depth", "100000"], "--depth 100000"),
    (["--fn", "no_such_module_xyz:make", "--input", "1x8x8x3"], "cannot import"),
    (["--fn", "/no/such/file.py:make", "--input", "1x8x8x3"], "does not exist"),
    (["--fn", "json:nothing_here", "--input", "1x8x8x3"], "has no 'nothing_here'"),
    (["--fn", "json:dumps"], "needs --input"),
])
def test_bad_options_are_one_line(capsys: pytest.CaptureFixture[str], args: list[str],
                                  token: str) -> None:
    start = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        main(["explain", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert token in err and "\n" not in err and "Traceback" not in err
    assert time.perf_counter() - start < 5


def test_input_needing_100_gib_is_skipped_not_failed(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explain", "--input", "100000x100000x3", "--layer", "conv:8", "--no-hypotheses"])
    out = capsys.readouterr().out
    assert code == 0
    assert "skipped" in out and "verification budget" in out and "FAIL" not in out


def test_two_part_input_says_what_was_assumed(capsys: pytest.CaptureFixture[str]) -> None:
    main(["explain", "--input", "28x28", "--layer", "conv:4", "--no-verify", "--json"])
    err = capsys.readouterr().err
    assert "1-D signal of length 28 with 28 channels" in err and "28x28x1" in err


def test_failed_and_skipped_checks_are_visible_everywhere() -> None:
    report = build_report([(jconv.models.lenet5(), "lenet")], verify=False, hypotheses=False)
    row = report.networks[0].layers[0]
    row.checks = [Check("engine_run", "runs", "RuntimeError: boom", False),
                  Check("sum_over_channels", None, None, None, "skipped: needs ~100.0 GiB")]
    text = report.to_text(width=80)
    assert "checks that failed or were skipped" in text and "boom" in text
    assert "FAIL" in text and "skipped: needs" in text
    for rendered in (render_markdown(report), render_latex(report)):
        assert "FAIL" in rendered and "skipped" in rendered and "boom" in rendered
    assert not report.ok


def test_narrow_terminal_keeps_the_check_column() -> None:
    report = build_report([(jconv.models.Network("n", (28, 28, 1), (
        jconv.models.Conv(10, 3), jconv.models.Conv(10, 3))), "t")], check_maps=2,
        hypotheses=False)
    text = report.to_text(width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "check" in text and "✓ pass" in text and "┃ me" not in text
    compact = report.to_text(width=80, view="compact")
    assert "✓ pass" in compact and max(len(line) for line in compact.splitlines()) <= 80


def test_hypotheses_follow_the_users_layers_1d(capsys: pytest.CaptureFixture[str]) -> None:
    main(["explain", "--input", "100x3", "--layer", "conv:8,k=5", "--layer", "conv:16,k=3",
          "--no-verify", "--json", "--depth", "3"])
    hyp = json.loads(capsys.readouterr().out)["hypotheses"]
    assert [r["sum"]["channels"] for r in hyp["rows"]] == [8, 16, 16]
    assert [r["keep"]["channels"] for r in hyp["rows"]] == [24, 384, 6144]
    assert hyp["rows"][0]["sum"]["params"] == 5 * 3 * 8 + 8


def test_plot_reports_the_file_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    main(["explain", "--no-verify", "--plot", str(tmp_path / "out")])
    err = "".join(capsys.readouterr().err.split())  # the console may wrap a long path
    assert f"wrote{tmp_path / 'out.png'}" in err and (tmp_path / "out.png").exists()


def test_symbolic_in_a_notebook() -> None:
    spec = jconv.ConvSpec.from_lax((1, 28, 28, 3), (3, 3, 3, 10), (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    model = symbolic.layer_model(spec)
    assert repr(model["params"]) == "Formula(params: C_in*C_out*k_h*k_w/g + C_out = 280)"
    assert model["params"]._repr_latex_().startswith("$") and "280" in model[
        "params"]._repr_latex_()
    s = symbolic.symbols
    assert model["params"].expr.subs({s.C_in: 3, s.C_out: 10, s.k_h: 3, s.k_w: 3, s.g: 1}) == 280
    free = symbolic.layer_model(spec, free=("N", "H", "W"))
    assert free["macs"].value == 270 * s.N * s.H * s.W
    assert free["params"].value == 280
    with pytest.raises(ValueError, match="`free`"):
        symbolic.layer_model(spec, free=("Q",))
    assert math.isclose(float(free["macs"].value.subs({s.N: 1, s.H: 28, s.W: 28})),
                        model["macs"].value)


def test_grammar_resnet_block_and_unet(capsys: pytest.CaptureFixture[str]) -> None:
    block = ["--layer", "mark:in", "--layer", "conv:8", "--layer", "bn", "--layer", "relu",
             "--layer", "conv:8", "--layer", "bn", "--layer", "add:in", "--layer", "relu"]
    assert main(["explain", "--input", "8x8x8", *block, "--check-maps", "2", "--json"]) == 0
    net = json.loads(capsys.readouterr().out)["networks"][0]
    assert [r["kind"] for r in net["layers"]].count("add") == 1
    assert net["totals"]["params"] == 2 * (9 * 8 * 8 + 8) + 2 * 16
    unet = ["--layer", "conv:4", "--layer", "mark:skip", "--layer", "pool:max,k=2",
            "--layer", "conv:8", "--layer", "convT:4,k=2,s=2", "--layer", "concat:skip",
            "--layer", "up:2", "--layer", "conv:1"]
    assert main(["explain", "--input", "8x8x1", *unet, "--check-maps", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    shapes = {r["kind"]: r["out_shape"] for r in data["networks"][0]["layers"]}
    assert shapes["conv_transpose"] == [1, 8, 8, 4] and shapes["concat"] == [1, 8, 8, 8]
    assert shapes["upsample"] == [1, 16, 16, 8] and data["summary"]["ok"]
    with pytest.raises(SystemExit):
        main(["explain", "--layer", "add:nowhere"])
    assert "no tensor was marked 'nowhere'" in capsys.readouterr().err
