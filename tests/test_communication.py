"""`jconv.symbolic` communication formulas against the compiled program, exactly.

The layouts run on 8 simulated CPU devices in one subprocess (`_communication_cases.py`,
which prints JSON): for each, the bytes of the operands of every collective
(collective-permute, all-gather, all-reduce, reduce-scatter, all-to-all) in the optimized
HLO of the forward and of the gradient of a linear loss, and each device's blocks. Every
figure is compared with equality: the halo exchanges (`collective-permute`, forward and
backward), the kernel gradient's all-reduce (batch and spatial splits), the input
gradient's all-reduce (feature splits) and the channel split's psum. No layout here makes
XLA send more than the formulas, and none uses another kind of collective.

The layouts: batch (stride 1 and 2), height (3x3 SAME stride 1 and 2; 5x5 dilated 2),
height x width on a 2-D mesh, batch x height on a 2-D mesh, output features, batch x
features on a 2-D mesh, input channels.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import sympy as sp

from jconv._sharding import _halos
from jconv._spec import ConvSpec
from jconv.symbolic import communication_bytes, halo_widths, per_device_bytes, spatial_split_kept

HERE = pathlib.Path(__file__).resolve().parent
LAYOUTS = ("batch", "batch_strided", "height", "height_strided", "height_5x5_dilated",
           "height_width_2d", "batch_height_2d", "features", "batch_features_2d", "channels")


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    env = dict(os.environ)
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, str(HERE / "_communication_cases.py")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _formulas(case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    n, h, w, c = case["x"]
    kh, kw, _, f = case["w"]
    args = (n, (h, w), c, f, (kh, kw), case["strides"], case["dilation"], case["padding"])
    return (communication_bytes(*args, **case["layout"]),
            per_device_bytes(*args, **case["layout"]))


def _measured(colls: dict[str, list[int]]) -> dict[str, int]:
    return {kind: nbytes for kind, (_, nbytes) in colls.items()}


def _expected(formula: dict[str, sp.Expr]) -> dict[str, int]:
    return {kind: int(v) for kind, v in formula.items() if v != 0}


@pytest.mark.parametrize("name", LAYOUTS)
def test_forward_collective_bytes(measured: dict[str, Any], name: str) -> None:
    """Forward: the halo exchanges' bytes and the channel split's psum, exactly; nothing
    else (batch and feature splits send nothing)."""
    comm, _ = _formulas(measured[name])
    assert _measured(measured[name]["fwd"]) == _expected(comm["forward"])


@pytest.mark.parametrize("name", LAYOUTS)
def test_gradient_collective_bytes(measured: dict[str, Any], name: str) -> None:
    """Gradient of input and kernel: the forward's halos (the kernel gradient reads them),
    their transposed exchanges, the kernel gradient's all-reduce over the batch's and the
    spatial split's devices and the input gradient's over the features' devices, exactly."""
    comm, _ = _formulas(measured[name])
    assert _measured(measured[name]["grad"]) == _expected(comm["gradient"])
    assert comm["step_total"] == comm["forward_total"] + comm["backward_total"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_per_device_bytes(measured: dict[str, Any], name: str) -> None:
    """Each device's blocks of input, kernel and output (and the gradients', as their
    operands') against the arrays' addressable shards."""
    case = measured[name]
    _, blocks = _formulas(case)
    assert {k: int(blocks[k]) for k in ("input", "kernel", "output")} == case["blocks"]
    assert case["grad_blocks"] == [int(blocks["input"]), int(blocks["kernel"])]
    lo_hi = sum(sum(int(v) for v in pair) for pair in _formulas(case)[0]["halos"])
    assert (blocks["halo_input"] > blocks["input"]) == (lo_hi > 0)


def test_halos_and_kept_splits_as_the_engine() -> None:
    """`halo_widths` and `spatial_split_kept` against the engine's own rule
    (`jconv._sharding._halos`) over kernels, strides, dilations, paddings and device
    counts."""
    checked = 0
    for i in (16, 24, 64):
        for k in (1, 2, 3, 5):
            for s in (1, 2, 3):
                for d in (1, 2):
                    for pad in ("SAME", "VALID", (1, 1), (2, 0), (0, 3), (-1, 1)):
                        for dev in (2, 4, 8):
                            spec = ConvSpec.from_lax((1, i, 1), (k, 1, 1), (s,),
                                                     pad if isinstance(pad, str) else [pad],
                                                     rhs_dilation=(d,),
                                                     dimension_numbers=("NWC", "WIO", "NWC"))
                            if spec.out_spatial[0] <= 0:
                                continue
                            engine = _halos(spec, 0, dev)
                            kept = spatial_split_kept(i, k, s, d, spec.padding[0], dev)
                            assert bool(kept) == (engine is not None), (i, k, s, d, pad, dev)
                            if engine is not None:
                                got = halo_widths(k, s, d, pad, i=i)
                                assert tuple(int(v) for v in got) == engine[0]
                                checked += 1
    assert checked > 100


def test_symbolic_forms() -> None:
    """With symbols: a height split of a 3x3 SAME convolution sends two rows of the block
    each way per step (``2 * N * W * C * 4`` bytes forward, the same backward) and the
    kernel gradient; the halo of any device, whatever its offset, is the padding before and
    ``d*(k-1)+1 - s - p_lo`` after."""
    n, h, w, c, f, p = sp.symbols("N H W C F P", integer=True, positive=True)
    comm = communication_bytes(n, (h, w), c, f, (3, 3), padding=[(1, 1), (1, 1)],
                               spatial_split=(p, 1))
    assert comm["halos"] == ((1, 1), (0, 0))
    assert sp.simplify(comm["forward_total"] - 8 * n * w * c) == 0
    assert sp.simplify(comm["backward_total"] - 8 * n * w * c - 36 * c * f) == 0
    k, s, d, lo = sp.symbols("k s d p_lo", integer=True, positive=True)
    assert halo_widths(k, s, d, (lo, 0)) == (lo, sp.Max(0, d * (k - 1) + 1 - s - lo))
    blocks = per_device_bytes(n, (h, w), c, f, (3, 3), padding=[(1, 1), (1, 1)], batch=p)
    assert sp.simplify(blocks["input"] - n * h * w * c * 4 / p) == 0
