"""benchmarks/limits.py: the GEMMs it times are the layer's contraction, and its table reads
its measurements."""

from __future__ import annotations

import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import limits
import run

from jconv.strategies import STRATEGIES

CASES = [
    run.Case("strided dilated", (2, 11, 9, 3), (3, 2), 5, stride=2, dilation=2),
    run.Case("asymmetric padding", (1, 7, 8, 2), (2, 3), 4, padding=((0, 1), (2, 1))),
    run.Case("1-D stem", (2, 40, 1), (8,), 3, stride=4, padding="VALID"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_patches_gemm_is_the_convolution(case: run.Case) -> None:
    """Each output's window, tap-major, times the kernel's rows gives lax's output."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(case.x).astype(np.float32)
    w = rng.standard_normal(case.w_shape()).astype(np.float32)
    want = lax.conv_general_dilated(x, w, **case.lax_args())
    p = limits.patches(case.spec(), jnp.asarray(x))
    assert p.shape == (int(np.prod(want.shape[:-1])), int(np.prod(w.shape[:-1])))
    np.testing.assert_allclose(np.asarray(p @ w.reshape(-1, case.f)).reshape(want.shape),
                               np.asarray(want), rtol=1e-5, atol=1e-5)


def test_a_measurement_and_its_row() -> None:
    """A small layer: every time positive, the GEMMs at lax's values and kernel gradient, and
    the table's cells its times and their ratios to lax's."""
    rec = limits.measure(run.Case("small", (2, 8, 8, 4), (3, 3), 5), reps=3, budget_s=1.0)
    assert rec["gemm_shape"] == [2 * 8 * 8, 9 * 4, 5] and rec["pick"] in STRATEGIES
    assert all(v > 0 for v in [*rec["fwd_ms"].values(), *rec["step_ms"].values()])
    assert rec["gemm_rel_err"] < 1e-5 and rec["kernel_gemm_rel_err"] < 1e-5
    assert rec["temp_bytes"]["lax"] >= 0 and rec["temp_bytes"]["auto"] >= 0
    meta = {"machine": "m", "jax": "j", "matmul_gflops": 1.0, "reps": 3}
    row = next(r for r in limits.markdown(meta, [rec]).splitlines() if r.startswith("| small"))
    cells = row.strip("| ").split(" | ")
    f = rec["fwd_ms"]
    assert cells[1] == "128x36x5" and cells[2] == f"{f['lax']:.2f}"
    assert cells[3] == f"{f['gemm']:.2f} ({f['gemm'] / f['lax']:.2f})"
    assert cells[5] == f"{f['auto']:.2f} ({f['auto'] / f['lax']:.2f}) {rec['pick']}"


def test_grouped_or_transposed_layers_are_refused() -> None:
    for case in (run.Case("grouped", (1, 6, 6, 4), (3, 3), 4, groups=2),
                 run.Case("transposed", (1, 6, 6, 4), (3, 3), 4, lhs_dilation=2)):
        with pytest.raises(ValueError, match=case.name):
            limits.measure(case, reps=3)


def test_every_default_case_exists_and_is_dense() -> None:
    """Each name in the default list matches a case limits.py can time."""
    cases = limits.all_cases()
    for name in limits.DEFAULT_CASES:
        matched = [c for c in cases if name in c.name]
        assert matched, name
        assert all(c.groups == 1 and c.lhs_dilation == 1 for c in matched), name


def test_a_single_channel_layer_times_no_step() -> None:
    """Over one input channel (a first layer, whose input gradient no step takes) the step's
    cells read "-", and the forward is still timed and checked."""
    rec = limits.measure(CASES[2], reps=3, budget_s=1.0)
    assert rec["step_ms"] is None and rec["fwd_ms"]["gemm"] > 0
    assert rec["gemm_rel_err"] < 1e-5 and rec["kernel_gemm_rel_err"] < 1e-5
    meta = {"machine": "m", "jax": "j", "matmul_gflops": 1.0, "reps": 3}
    row = next(r for r in limits.markdown(meta, [rec]).splitlines()
               if r.startswith("| 1-D stem"))
    assert row.strip("| ").split(" | ")[6:9] == ["-", "-", "-"]
