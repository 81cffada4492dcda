"""Hypothesis profiles of the suite and the example counts that depend on them.

``ci`` (the default) is reproducible: examples are derandomized (a fixed seed per test),
no example database is read or written, and no deadline applies (the first call of a
shape compiles, which makes deadlines flaky). Most property tests run `settings.default`'s
20 examples; the engine-against-lax test runs `ENGINE_VS_LAX_CONFIGS` distinct
configurations. ``full`` (``pytest --full`` or ``HYPOTHESIS_PROFILE=full``) draws fresh
random examples, 10x as many, and many more engine configurations.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILES = ("ci", "full")

settings.register_profile(
    "ci", max_examples=20, derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "full", max_examples=200, derandomize=False, database=None, deadline=None,
    print_blob=True, suppress_health_check=[HealthCheck.too_slow],
)

active = os.environ.get("HYPOTHESIS_PROFILE", "ci")
"""The profile in force; `use` changes it (conftest calls it for ``--full``)."""


def use(name: str) -> None:
    """Load profile ``name`` for every test collected after this call."""
    global active
    if name not in PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE (={name!r}) must be one of {PROFILES}")
    settings.load_profile(name)
    active = name


def engine_vs_lax_configs() -> int:
    """Distinct random configurations the engine-against-lax test must check."""
    return {"ci": 500, "full": 5000}[active]


use(active)
