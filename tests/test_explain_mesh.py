"""`jconv explain --mesh`: per-device bytes and communication of each convolution, verified.

Two small networks run as `python -m jconv` subprocesses (the command line itself asks XLA
for the mesh's simulated CPU devices before JAX starts): a 2x2x2 mesh splitting the batch,
the height and the width (a conv, a depthwise conv, a strided conv), and a 2x4 mesh
splitting the output features and the input channels. Their bytes are compared with closed
forms written here from the layouts' definitions (each device's block; the halo rows a
spatial split exchanges, each split dimension on the block already extended along the
earlier ones; the kernel gradient summed over the batch's and the spatial devices; the input
gradient over the features' devices; the partial outputs over the channels' devices), and
the command's own checks against the compiled programs must all pass. Malformed and
impossible meshes are checked in-process (exit 2, one line naming the option).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import pytest

from jconv import models
from jconv._explain_mesh import (
    Layout,
    _checks,
    build_mesh_report,
    parse_mesh,
    render_mesh_markdown,
)
from jconv.cli import main

ROOT = Path(__file__).resolve().parents[1]
FLAGS = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
               os.environ.get("XLA_FLAGS", "")).strip()
ENV = {**{k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "XLA_FLAGS")},
       "JAX_PLATFORMS": "cpu", "XLA_FLAGS": FLAGS}
"""No device count in XLA_FLAGS: the command must ask for the mesh's devices itself."""

SPATIAL = ["--input", "16x16x8", "--layer", "conv:16,k=3", "--layer", "dw:k=3",
           "--layer", "conv:8,k=3,s=2", "--layer", "gap", "--layer", "dense:10",
           "--batch", "4", "--mesh", "2x2x2", "--shard", "batch,h,w"]
FEATURES = ["--input", "8x8x8", "--layer", "conv:16,k=3", "--layer", "conv:8,k=1",
            "--batch", "2", "--mesh", "2x4", "--shard", "features,channels"]


@pytest.fixture(scope="module")
def runs() -> dict[str, Any]:
    def one(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "jconv", "explain", *args, "--json"],
                              capture_output=True, text=True, encoding="utf-8", env=ENV,
                              cwd=ROOT, timeout=240, check=False)

    with ThreadPoolExecutor(max_workers=2) as pool:
        spatial, features = pool.map(one, [SPATIAL, FEATURES])
    out = {}
    for name, proc in (("spatial", spatial), ("features", features)):
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = json.loads(proc.stdout)
    return out


def halo_bytes(n: int, blocks: list[int], c: int, halos: list[tuple[int, int]],
               itemsize: int = 4) -> int:
    """Bytes a device receives exchanging halos: dimension by dimension in order, ``lo + hi``
    rows of its block, the earlier dimensions already extended by their halos."""
    extents, total = list(blocks), 0
    for dim, (lo, hi) in enumerate(halos):
        others = math.prod(e for j, e in enumerate(extents) if j != dim)
        total += n * (lo + hi) * others * c * itemsize
        extents[dim] += lo + hi
    return total


def layers(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (net,) = report["networks"]
    return {layer["name"]: layer for layer in net["layers"]}


def totals(layer: dict[str, Any]) -> tuple[int, int, int]:
    return (layer["activation"]["value"], layer["forward"]["total"]["value"],
            layer["backward"]["total"]["value"])


def test_batch_height_width_split_on_a_2x2x2_mesh(runs: dict[str, Any]) -> None:
    """Batch 4 over 2, 16x16 over 2x2: each device holds 2 images of 8x8. 3x3 SAME stride 1
    needs one row each side per split dimension; 3x3 SAME stride 2 on 16 rows pads (0, 1),
    so one row after only. Backward adds the kernel gradient's all-reduce (9*C/g*F)."""
    report = runs["spatial"]
    assert report["mesh"] == [2, 2, 2] and report["shard"] == ["batch", "h", "w"]
    assert report["devices"] == "8 cpu devices (simulated)"
    got = layers(report)
    one = halo_bytes(2, [8, 8], 8, [(1, 1), (1, 1)])
    dw = halo_bytes(2, [8, 8], 16, [(1, 1), (1, 1)])
    strided = halo_bytes(2, [8, 8], 16, [(0, 1), (0, 1)])
    assert (one, dw, strided) == (2304, 4608, 2176)
    expected = {
        "conv0": (2 * 8 * 8 * 16 * 4, one, one + 9 * 8 * 16 * 4),
        "depthwise1": (2 * 8 * 8 * 16 * 4, dw, dw + 9 * 1 * 16 * 4),
        "conv2": (2 * 4 * 4 * 8 * 4, strided, strided + 9 * 16 * 8 * 4),
    }
    assert {name: totals(layer) for name, layer in got.items()} == expected
    for name, (act, fwd, bwd) in expected.items():
        m = got[name]["measured"]
        assert m["activation"] == act
        assert m["forward"] == {"collective-permute": fwd}
        assert m["backward"] == {"collective-permute": fwd, "all-reduce": bwd - fwd}
        assert m["x"] == [["batch"], ["h"], ["w"], None] and m["w"] == [None] * 4
    # alone: one device's block with its halo rows (the shard each device convolves)
    assert {name: got[name]["measured"]["alone"]["shape"] for name in expected} == {
        "conv0": [2, 10, 10, 8], "depthwise1": [2, 10, 10, 16], "conv2": [2, 9, 9, 16]}
    assert "P_batch" in got["conv0"]["activation"]["formula"]
    assert "G" in got["depthwise1"]["backward"]["collectives"]["all-reduce"]["formula"]
    (net,) = report["networks"]
    assert net["not_accounted"] == ["globalpool3", "dense4"]
    assert net["totals"]["forward"] == one + dw + strided
    assert net["totals"]["measured"]["backward"] == sum(e[2] for e in expected.values())
    assert report["summary"] == {"passed": 12, "failed": 0, "ok": True}


def test_feature_and_channel_split_on_a_2x4_mesh(runs: dict[str, Any]) -> None:
    """Output features over 2 devices, input channels over 4: forward, the partial outputs
    (each device's F/2 maps) are summed over the channels' devices; backward, the input
    gradient (each device's C/4 channels) over the features' devices."""
    got = layers(runs["features"])
    expected = {
        "conv0": (2 * 8 * 8 * 8 * 4, 2 * 8 * 8 * 8 * 4, 2 * 8 * 8 * 2 * 4),
        "conv1": (2 * 8 * 8 * 4 * 4, 2 * 8 * 8 * 4 * 4, 2 * 8 * 8 * 4 * 4),
    }
    assert {name: totals(layer) for name, layer in got.items()} == expected
    for name, (_, fwd, bwd) in expected.items():
        m = got[name]["measured"]
        assert m["forward"] == {"all-reduce": fwd} and m["backward"] == {"all-reduce": bwd}
        assert m["w"] == [None, None, ["channels"], ["features"]]
        assert m["temp"]["forward"] >= 0 and m["alone"]["kernel"][-2:] == [
            got[name]["in_shape"][-1] // 4, got[name]["out_shape"][-1] // 2]
    assert runs["features"]["summary"]["ok"] is True


# ----------------------------------------------------------------------------- in-process
def test_formulas_without_devices(capsys: pytest.CaptureFixture[str]) -> None:
    """--no-verify needs no devices: the formulas alone, for a batch split over 8."""
    assert main(["explain", "--input", "32x32x3", "--layer", "conv:8,k=3", "--batch", "16",
                 "--mesh", "8", "--shard", "batch", "--no-verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (layer,) = report["networks"][0]["layers"]
    assert totals(layer) == (2 * 32 * 32 * 8 * 4, 0, 9 * 3 * 8 * 4)
    assert layer["activation"]["formula"] == "4*C_out*H*N*W/P_batch"
    assert layer["measured"] is None and report["verified"] is False


def test_a_failed_check_is_shown_and_fails() -> None:
    """A measurement that differs from a formula is a FAIL in the report and its exit code."""
    net = models.Network("n", (16, 16, 4), (models.Conv(8, 3),))
    report = build_mesh_report([(net, "n")], Layout((4,), ("h",)), batch=1)
    (row,) = report.networks[0].layers
    fwd = row.forward_total.value
    assert fwd == halo_bytes(1, [4, 16], 4, [(1, 1), (0, 0)])
    row.measured = {"x": [None, ["h"], None, None], "w": [None] * 4,
                    "expected_x": [None, ["h"], None, None], "expected_w": [None] * 4,
                    "forward": {"collective-permute": fwd + 4}, "backward": {},
                    "temp": {"forward": 0, "backward": 0},
                    "alone": {"forward": 0, "backward": 0}, "activation": 1024,
                    "block": [1, 4, 16, 8], "wire_itemsize": 4}
    row.checks = _checks(row, row.measured, 4)
    report.verify = True
    assert not report.ok
    assert [c.name for c in row.checks if c.passed is False] == [
        "activation_bytes", "forward_collectives", "backward_collectives"]
    text = render_mesh_markdown(report)
    assert "✗ FAIL" in text and "SOME CHECKS FAIL" in text


MALFORMED = [
    (["--mesh", "3x", "--shard", "batch"], "--mesh '3x'"),
    (["--mesh", "0", "--shard", "batch"], "--mesh '0'"),
    (["--mesh", "2x1", "--shard", "batch,h"], "--mesh '2x1'"),
    (["--mesh", "8", "--shard", "height"], "'height'"),
    (["--mesh", "8", "--shard", "h,w"], "--shard 'h,w'"),
    (["--mesh", "2x4", "--shard", "batch"], "--shard 'batch'"),
    (["--mesh", "2x4", "--shard", "h,h"], "'h' is named twice"),
    (["--mesh", "8"], "--mesh '8'"),
    (["--shard", "batch"], "--shard 'batch'"),
    (["--mesh", "8", "--shard", "batch"], "batch of 1"),
    (["--mesh", "8", "--shard", "h"], "H = 28"),
    (["--input", "32x32x3", "--layer", "conv:8", "--mesh", "8", "--shard", "channels"],
     "3 input channels"),
    (["--input", "32x32x8", "--layer", "dw:k=3", "--mesh", "8", "--shard", "features"],
     "8 feature groups"),
    (["--input", "16x16x8", "--layer", "conv:8,k=9", "--mesh", "8", "--shard", "h"],
     "halo rows"),
    (["--input", "18x18x8", "--layer", "conv:8,k=4,s=2,p=valid", "--mesh", "2",
      "--shard", "h"], "does not start where"),
    (["--input", "64x3", "--layer", "conv:8", "--mesh", "8", "--shard", "h"],
     "spatial dimension(s) w only"),
    (["--input", "8x8x8", "--layer", "dense:10", "--mesh", "8", "--shard", "batch"],
     "no convolution"),
    (["--mesh", "8", "--shard", "batch", "--batch", "8", "--latex"], "not with --latex"),
    (["--mesh", "4096", "--shard", "batch", "--batch", "4096"], "at most 1024"),
    (["--mesh", str(jax.device_count() + 1), "--shard", "batch", "--batch",
      str(jax.device_count() + 1)], "JAX started before"),
]


@pytest.mark.parametrize(("args", "token"), MALFORMED, ids=[t for _, t in MALFORMED])
def test_malformed_or_impossible_mesh_exits_2(capsys: pytest.CaptureFixture[str],
                                              args: list[str], token: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explain", *args])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "note:" not in line]
    assert out == "" and len(lines) == 1, err
    assert token in lines[0] and "example: " in lines[0], lines[0]
    assert re.search(r"--(mesh|shard) '", lines[0]), lines[0]


def test_parse_mesh() -> None:
    assert parse_mesh("8") == (8,) and parse_mesh("2X4") == (2, 4)
    assert parse_mesh("2x2x2") == (2, 2, 2)


def test_mesh_errors_answer_before_jax_starts_and_ask_for_devices_first() -> None:
    """A malformed mesh, and a layer that cannot take the split, answer without importing
    JAX; by then the command has appended the mesh's device count to ``XLA_FLAGS`` (JAX
    reads it when it starts)."""
    code = (
        "import sys, os, contextlib, io\n"
        "from jconv.cli import main\n"
        "quiet = io.StringIO()\n"
        "codes = []\n"
        "for argv in (['--mesh', '3x', '--shard', 'batch'],\n"
        "             ['--mesh', '8', '--shard', 'batch', '--input', '32x32x3',\n"
        "              '--layer', 'conv:8']):\n"
        "    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):\n"
        "        try:\n"
        "            main(['explain', *argv])\n"
        "        except SystemExit as e:\n"
        "            codes.append(e.code)\n"
        "print(codes, sorted(m for m in ('jax', 'jaxlib') if m in sys.modules),\n"
        "      os.environ['XLA_FLAGS'])\n"
    )
    env = {**ENV, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    assert out.stdout.split("\n")[0] == (
        "[2, 2] [] --xla_backend_optimization_level=0 --xla_force_host_platform_device_count=8")
