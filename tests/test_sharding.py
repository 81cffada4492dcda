"""jconv on sharded arrays, against `jax.lax`, on 8 simulated CPU devices.

The device count must be set before JAX is imported, so every case runs in one subprocess
(`_sharding_cases.py`, which prints its measurements as JSON) and the tests below read
them: values against single-device lax, output shardings against lax's, and the
collectives in the compiled HLO (count and bytes), in the three modes (explicit sharding,
auto partitioning, `shard_map`).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import pytest

import jconv

HERE = pathlib.Path(__file__).resolve().parent
TOL = 1e-4
"""Largest error against single-device lax, relative to the largest reference value."""


@pytest.fixture(scope="module")
def cases() -> dict[str, Any]:
    env = dict(os.environ)
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, str(HERE / "_sharding_cases.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ok(result: dict[str, Any]) -> dict[str, Any]:
    assert result["error"] is None, result["error"]
    assert result["rel_err"] <= TOL, result["rel_err"]
    return result


def _only_weight_allreduce(case: dict[str, Any]) -> None:
    """The gradient's only collective: one all-reduce, of the kernel gradient's bytes."""
    colls = _ok(case["jconv_grad"])["collectives"]
    assert colls == {"all-reduce": [1, case["w_bytes"]]}, colls


@pytest.mark.parametrize("name", ["explicit_batch_small", "explicit_batch", "auto_batch_small",
                                  "auto_batch_nchw", "explicit_batch_dilated"])
def test_batch_sharding_needs_no_collective_forward(cases: dict[str, Any], name: str) -> None:
    """A batch-sharded input (the calls that raised under explicit sharding, and gathered
    the whole padded input under auto partitioning; a dilated layer, whose phase images
    `atrous` stacks into each device's own batch): no collective forward, the output
    sharded as lax's, and only the kernel gradient's all-reduce backward."""
    case = cases[name]
    fwd = _ok(case["jconv_fwd"])
    assert fwd["collectives"] == {}
    assert fwd["shardings"] == case["lax_fwd"]["shardings"]
    _only_weight_allreduce(case)
    assert case["jconv_grad"]["shardings"][0] == fwd["shardings"][0]  # dx as x
    if "lax_grad" in case:
        assert case["jconv_grad"]["shardings"] == case["lax_grad"]["shardings"]


@pytest.mark.parametrize("name", ["explicit_height", "explicit_height_strided",
                                  "explicit_height_dilated"])
def test_explicit_spatial_sharding_exchanges_halos_like_lax(cases: dict[str, Any],
                                                            name: str) -> None:
    """A height-sharded input under explicit sharding (it raised): one halo exchange per
    neighbour, as lax's (no gather), the output sharded as lax's; the gradient exchanges
    halos back and all-reduces the kernel gradient only."""
    case = cases[name]
    fwd = _ok(case["jconv_fwd"])
    assert fwd["shardings"] == case["lax_fwd"]["shardings"]
    assert fwd["collectives"] == case["lax_fwd"]["collectives"]
    grad = _ok(case["jconv_grad"])
    assert set(grad["collectives"]) == {"collective-permute", "all-reduce"}
    assert grad["collectives"]["all-reduce"] == [1, case["w_bytes"]]
    assert grad["collectives"]["collective-permute"][0] == 2 * fwd["collectives"][
        "collective-permute"][0]
    assert grad["shardings"][0] == fwd["shardings"][0]


def test_explicit_spatial_split_that_cannot_keep_its_blocks_is_gathered(
        cases: dict[str, Any]) -> None:
    """VALID 3x3 on 16 rows over 8 devices (14 output rows): lax refuses; jconv gathers
    the rows once and computes."""
    case = cases["explicit_height_uneven"]
    assert "ShardingTypeError" in case["lax_fwd"]["error"]
    assert _ok(case["jconv_fwd"])["collectives"] == {"all-gather": [1, 4 * 16 * 16 * 8 * 4]}
    _ok(case["jconv_grad"])


@pytest.mark.parametrize("name", ["explicit_features", "explicit_mesh2d", "explicit_depthwise",
                                  "explicit_out_batch", "explicit_out_features"])
def test_explicit_feature_split_and_out_sharding(cases: dict[str, Any], name: str) -> None:
    """Output features split with the kernel (lax asks for `out_sharding` there; jconv
    gives the natural sharding), on a 1-D and a 2-D (batch x features) mesh, a depthwise
    convolution's groups split (input channels with output features), and
    `out_sharding` on replicated operands: each device computes its own block, no
    collective forward, the output sharded as lax's (with `out_sharding`)."""
    case = cases[name]
    fwd = _ok(case["jconv_fwd"])
    assert fwd["collectives"] == {}
    expected = case["expected_fwd_sharding"] or case["lax_fwd"]["shardings"][0]
    assert fwd["shardings"][0] == expected
    _ok(case["jconv_grad"])


AUTO = ("auto_batch_small", "auto_batch_nchw", "auto_height", "auto_height_strided",
        "auto_features", "auto_mesh2d", "auto_channels", "auto_height_width",
        "auto_batch_height", "auto_depthwise")


@pytest.mark.parametrize("name", AUTO)
def test_auto_partitioning_communicates_as_lax(cases: dict[str, Any], name: str) -> None:
    """Auto partitioning (the operands' shardings reach jconv's partitioning rules): the
    forward sends exactly lax's collectives (none for batch, features and groups; one halo
    exchange per neighbour and split axis; the partial sums of split channels), the output
    and the gradients are sharded as lax's, and the gradient sends no more collectives
    than lax's, of no more bytes (the strided split's halos excepted: it sends the rows
    of the stride's window, 16,384 B against lax's 12,288 B)."""
    case = cases[name]
    fwd, grad = _ok(case["jconv_fwd"]), _ok(case["jconv_grad"])
    assert fwd["collectives"] == case["lax_fwd"]["collectives"]
    assert fwd["shardings"] == case["lax_fwd"]["shardings"]
    if "lax_grad" not in case:  # big: lax's gradient not compiled
        assert grad["collectives"] == {"all-reduce": [1, case["w_bytes"]]}
        return
    assert grad["shardings"] == case["lax_grad"]["shardings"]
    lax_colls = case["lax_grad"]["collectives"]
    assert set(grad["collectives"]) <= set(lax_colls), grad["collectives"]
    for kind, (count, nbytes) in grad["collectives"].items():
        assert count <= lax_colls[kind][0]
        slack = 4 / 3 if name == "auto_height_strided" else 1
        assert nbytes <= lax_colls[kind][1] * slack, (kind, nbytes, lax_colls[kind])


@pytest.mark.parametrize("name", ["auto_height", "auto_mesh2d", "auto_channels",
                                  "auto_depthwise"])
def test_auto_partitioning_forward_mode_and_batching(cases: dict[str, Any], name: str) -> None:
    """Under auto partitioning, `jax.jvp` and `jax.vmap` of the sharded call (the ops'
    forward-mode and batching rules) equal single-device lax."""
    case = cases[name]
    assert case["jvp_rel_err"] <= TOL
    assert case["vmap_rel_err"] <= TOL


@pytest.mark.parametrize("name", ["auto_height", "auto_channels"])
def test_auto_partitioning_per_example_gradients_and_jacfwd(cases: dict[str, Any],
                                                            name: str) -> None:
    """Under auto partitioning, `jax.vmap` of `jax.grad` (per-example kernel gradients) and
    `jax.jacfwd` of the sharded call equal lax's: both batch the tangents' `linear_call`,
    for which jconv registers a batching rule (they raised `NotImplementedError` before)."""
    case = cases[name]
    assert "per_example_error" not in case, case["per_example_error"]
    assert case["per_example_rel_err"] <= TOL
    assert case["jacfwd_rel_err"] <= TOL


@pytest.mark.parametrize("name", ["auto_height", "auto_channels"])
def test_auto_partitioning_mixed_second_derivatives(cases: dict[str, Any], name: str) -> None:
    """Under auto partitioning, `jax.grad` of the input gradient in the kernel and of the
    kernel gradient in the input equal lax's: the tangents' `linear_call` is differentiated
    in the operand it holds (JAX's own rule raised `AssertionError` there)."""
    case = cases[name]
    assert "mixed_error" not in case, case["mixed_error"]
    assert case["mixed_rel_err"] <= TOL


@pytest.mark.parametrize("name", ["auto_batch_small", "auto_batch_nchw", "auto_features",
                                  "auto_mesh2d", "auto_height_strided"])
def test_auto_partitioning_temporaries_as_on_the_shard(cases: dict[str, Any],
                                                       name: str) -> None:
    """Per-device temporaries of the sharded forward (auto) within 10% of jconv's on one
    device's shard alone, where both plans agree."""
    case = cases[name]
    assert case["jconv_fwd"]["temp_bytes"] <= 1.1 * case["shard_fwd_temp_bytes"]


def test_temporaries_of_each_lowering_as_on_the_shard(cases: dict[str, Any]) -> None:
    """The same lowering (shift, accumulate, patches, hybrid) sharded over the batch, the
    height and the height with stride 2: per-device temporaries within 10% of that
    lowering's on one device's shard alone (halo rows included)."""
    rows = cases["same_lowering"]
    assert len([k for k in rows if "/" in k]) == 12
    for key, value in rows.items():
        if "/" in key:
            sharded, alone = value
            assert sharded <= 1.1 * alone, (key, sharded, alone)


def test_a_volume_no_lowering_fits_on_one_device_runs_split_over_eight(
        cases: dict[str, Any]) -> None:
    """1 x 32^3 x 8, 3x3x3, under a budget half the least any lowering needs on one device:
    the planner refuses it on one device; split over a 2x2x2 mesh (explicit sharding and
    auto partitioning) each device plans its 18^3 block (with halos) within the budget
    and the values equal lax's."""
    case = cases["volume"]
    assert "No lowering fits the memory budget" in case["one_device_error"]
    assert case["local_temp"] <= case["budget"] < case["least_one_device"]
    assert case["AxisType.Explicit"] <= TOL
    assert case["AxisType.Auto"] <= TOL


def test_transposed_convolution_split_over_its_height(cases: dict[str, Any]) -> None:
    """`conv_transpose` (stride 2: an lhs-dilated convolution) of a height-split input, in
    both modes: the output stays split as lax's, the forward sends lax's one halo
    exchange, the gradient no all-gather (lax gathers 196,608 B) and at most one more
    halo exchange than lax's, and the kernel gradient's all-reduce."""
    for mode in ("AxisType.Explicit", "AxisType.Auto"):
        ours, theirs = cases["transpose"][f"{mode}/jconv"], cases["transpose"][f"{mode}/lax"]
        assert ours["error"] is None and ours["rel_err"] <= TOL
        assert ours["sharding"] == theirs["sharding"] == [None, ["d"], None, None]
        assert ours["fwd"] == theirs["fwd"] == {"collective-permute": [1, 4096]}
        assert "all-gather" not in ours["grad"]
        assert ours["grad"]["collective-permute"][0] <= theirs["grad"]["collective-permute"][0] + 1
        assert ours["grad"]["all-reduce"] == [1, 3 * 3 * 8 * 4 * 4]


def test_shard_map(cases: dict[str, Any]) -> None:
    """Inside `shard_map` jconv sees per-device shapes: no collective, and the kernel
    gradient's all-reduce (from `shard_map`'s transpose) only."""
    case = cases["shard_map_batch"]
    assert _ok(case["jconv_fwd"])["collectives"] == {}
    _only_weight_allreduce(case)


def test_a_forced_lowering_refuses_what_it_cannot_run_on_a_multi_device_host(
        cases: dict[str, Any]) -> None:
    """With several devices (every call through the auto-partitioning ops, whose budget is
    per device) a forced lowering that cannot run the convolution still raises before any
    computation, eagerly and under jit (it ran before)."""
    case = cases["unsharded"]
    for mode in ("eager", "jit"):
        assert "`strategy` (='polyphase') cannot run this convolution: it needs lhs dilation" in (
            case[f"refusal_{mode}"] or ""), case[f"refusal_{mode}"]


def test_pallas_gradients_on_a_multi_device_host(cases: dict[str, Any]) -> None:
    """The ops transpose a lowering through its derivative rule: the Pallas kernel (a
    `pallas_call` has no transpose; its tangents are `shift`'s) differentiates there too."""
    case = cases["unsharded"]
    assert "pallas_grad_error" not in case, case["pallas_grad_error"]
    assert case["pallas_grad_rel_err"] <= TOL


@pytest.mark.parametrize("split", ["batch", "height"])
def test_linear_transpose_under_auto_partitioning(cases: dict[str, Any], split: str) -> None:
    """`jax.linear_transpose` of a convolution whose input is split over the batch or the
    height, in the input and in the kernel, equals lax's: the ops' primal is a primitive
    that transposes in whichever operand is linear (JAX has no transpose for the
    `custom_vmap` and `custom_partitioning` calls it holds)."""
    err = cases["linear_transpose"][split]
    assert not isinstance(err, str), err
    assert err <= TOL


@pytest.mark.single_device
def test_unsharded_gradients_on_a_multi_device_host_are_the_single_device_program(
        cases: dict[str, Any]) -> None:
    """Where XLA does not partition the ops, their gradients are the engine's planned ones,
    as on a host with one device (this process, or its per-device code where it has several:
    `single_device`): the same temporaries (they were the value lowering's raw transposes,
    1.75x these bytes on 8 x 56 x 56 x 64)."""
    xs = jax.ShapeDtypeStruct((8, 56, 56, 64), jnp.float32)
    ws = jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)
    step = jax.grad(lambda a, b: jnp.sum(jconv.conv_general_dilated(
        a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2), (0, 1))
    one = jax.jit(step).lower(xs, ws).compile().memory_analysis().temp_size_in_bytes
    assert abs(cases["unsharded"]["grad_temp_bytes"] - one) <= 0.01 * one, (
        cases["unsharded"]["grad_temp_bytes"], one)


def test_kernel_copies_wait_for_their_layer_on_a_multi_device_host(
        cases: dict[str, Any]) -> None:
    """The forward op's kernel copies are tied to its input, as on one device
    (`jconv._engine._after`; `tests/test_memory.py` checks one device): six 3x3 256 -> 256
    layers at 4x4 hold one 2.4 MB copy at a time, where they held all six (14 MB, and
    ResNet-50's forward 50.8 MB of temporaries against 10.3 on one device)."""
    kernel = 9 * 256 * 256 * 4
    assert cases["unsharded"]["chain_temp_bytes"] < 2 * kernel
