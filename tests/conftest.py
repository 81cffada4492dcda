"""Test configuration shared by the whole suite.

NumPy-style implicit promotion is switched off so that a silent upcast in jconv (or in a
test) fails loudly: dtype promotion is "strict" and rank promotion raises. 64-bit types
stay off by default; a test that needs float64 uses ``with jax.enable_x64(True):`` or NumPy.

Hypothesis runs the reproducible ``ci`` profile unless ``--full`` (or the environment
variable ``HYPOTHESIS_PROFILE=full``) asks for many more random examples (`_profiles`).

Most of the suite's time is XLA compiling small programs, one per configuration. Unless
the profile is ``full``, XLA's CPU backend is asked to compile quickly (`FAST_COMPILE`:
the classic fusion emitters and no LLVM optimisation): about 3x faster to compile, the same
HLO and the same results (memory analyses agree to within a fraction of a percent). The
``full`` profile keeps XLA's defaults. The flags are appended to ``XLA_FLAGS`` (which
subprocesses inherit) before JAX creates its CPU backend; a flag already there wins.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import _profiles
import jax
import pytest

# With --doctest-modules every Python file under a test path is imported for examples; the
# helper modules here are imported by the tests that use them, and one of them
# (_sharding_cases.py, a script run in a subprocess) sets XLA_FLAGS when imported.
collect_ignore_glob = ["_*.py", "reference.py"]

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", False)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full", action="store_true", default=False,
        help="hypothesis profile 'full': fresh random examples, many more of them",
    )


FAST_COMPILE = ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "single_device: a test of the single-device planner's structure or of "
        "budgets checked while tracing; on a host with several devices it runs as per-device "
        "code (`jconv._sharding.per_device`), JAX's caches cleared around it")
    # plans come from the cost model, never from a tuning cache this machine happens to hold
    os.environ["JCONV_TUNE_CACHE"] = os.path.join(tempfile.mkdtemp(), "tune.json")
    if config.getoption("--full"):
        _profiles.use("full")
    if _profiles.active != "full":
        flags = os.environ.get("XLA_FLAGS", "")
        extra = [f for f in FAST_COMPILE if f.split("=")[0] not in flags]
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


def pytest_report_header(config: pytest.Config) -> str:
    return (f"hypothesis profile: {_profiles.active} "
            f"({_profiles.engine_vs_lax_configs()} engine-vs-lax configurations); "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


@pytest.fixture(autouse=True)
def _as_on_one_device(request: pytest.FixtureRequest) -> Iterator[None]:
    """Where the host has several devices (``--xla_force_host_platform_device_count``),
    `single_device` tests trace as a one-device host does: as per-device code, which the
    auto-partitioning ops and batch chunks of multiples of the device count leave out
    (their own checks: `tests/test_sharding.py`). The caches are cleared so that no
    program traced one way is reused the other."""
    if request.node.get_closest_marker("single_device") is None or jax.device_count() == 1:
        yield
        return
    from jconv._sharding import per_device

    jax.clear_caches()
    with per_device():
        yield
    jax.clear_caches()
