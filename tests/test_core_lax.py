"""`jconv.conv_general_dilated` equals `jax.lax.conv_general_dilated`.

float32, max abs error <= 1e-5 * max |lax output|, on a table (1-3 spatial dims, every
padding kind, dilations, strides, groups, odd dimension numbers), on empty shapes lax
accepts, and on random configurations drawn by hypothesis, each run with a random lowering
(or ``"auto"`` where that lowering declines the configuration). Every lowering's values on
the table are checked against the float64 loop reference in test_core_reference.py; the
reference itself is checked against lax here.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from _core_cases import (
    EDGE,
    LETTERS,
    TABLE,
    Case,
    make_case,
    run_jconv,
    run_lax,
    strategy_reason,
)
from _profiles import engine_vs_lax_configs
from hypothesis import given, settings
from reference import rel_err

import jconv
from jconv.strategies import STRATEGIES

TOL = 1e-5


@pytest.mark.parametrize("case", TABLE + EDGE, ids=str)
def test_table_matches_lax_and_the_reference(case: Case) -> None:
    """The default strategy against lax (float32), and lax against the float64 reference the
    lowerings are held to, so that the reference follows lax's conventions (SAME splits,
    dimension numbers, group order)."""
    x, w = case.operands()
    want = run_lax(case, x, w)
    got = run_jconv(case, x, w)
    assert got.shape == want.shape and got.dtype == want.dtype
    if 0 in (*x.shape, *w.shape, *want.shape):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert rel_err(got, want) <= TOL
    assert rel_err(want, case.reference_out(x, w)) <= TOL


def test_numpy_array_hyperparameters_accepted() -> None:
    """lax takes NumPy arrays for strides, dilations and pads; so does jconv."""
    case = make_case("np", spatial=(6, 5), padding=((1, 0), (2, 1)), strides=(2, 1))
    x, w = case.operands()
    kw: dict[str, Any] = dict(
        window_strides=np.array(case.strides), padding=np.array(case.padding),
        rhs_dilation=np.array([1, 2]), dimension_numbers=case.dn,
    )
    want = jax.lax.conv_general_dilated(x, w, **kw)
    assert rel_err(jconv.conv_general_dilated(x, w, **kw), want) <= TOL


@st.composite
def configs(draw: st.DrawFn, n: int) -> tuple[Case, str]:
    """A random configuration with ``n`` spatial dims (valid for lax or not) and a lowering
    to force.

    Cheap shapes: at most 5 positions and 3 taps per spatial dim (2 taps in 3-D), 1-2
    channels per group, so that each example costs one small compilation.
    """
    groups = draw(st.sampled_from(["none", "feature", "batch"]))
    g = draw(st.integers(1, 3)) if groups != "none" else 1
    fgc, bgc = (g, 1) if groups == "feature" else (1, g)
    batch = bgc * draw(st.integers(0, 2) if draw(st.booleans()) else st.just(1))
    channels = fgc * draw(st.integers(1, 2))
    filters = fgc * bgc * draw(st.integers(1, 2))
    spatial = tuple(draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)))
    window = tuple(draw(st.lists(st.integers(1, 3 if n < 3 else 2), min_size=n, max_size=n)))
    ints = st.lists(st.integers(1, 3), min_size=n, max_size=n)
    dils = st.lists(st.integers(1, 2), min_size=n, max_size=n)
    strides, rhs_dil = tuple(draw(ints)), tuple(draw(dils))
    kind = draw(st.sampled_from(["SAME", "SAME_LOWER", "VALID", "pairs"]))
    lhs_dil = tuple(draw(dils)) if kind == "pairs" else (1,) * n
    pair = st.tuples(st.integers(-2, 3), st.integers(-2, 3))
    padding: Any = kind if kind != "pairs" else tuple(
        draw(st.lists(pair, min_size=n, max_size=n)))
    dn_kind = draw(st.sampled_from(["str", "cdn", "none"]))
    sp = LETTERS[n]
    dn = None
    if dn_kind != "none":
        dn = tuple(
            "".join(draw(st.permutations(list(letters))))
            for letters in (f"N{sp}C", f"{sp}IO", f"N{sp}C")
        )
    case = make_case(
        "drawn", spatial=spatial, window=window, batch=batch, channels=channels,
        filters=filters, strides=strides, padding=padding, lhs_dil=lhs_dil, rhs_dil=rhs_dil,
        dn=dn, dn_kind=dn_kind, fgc=fgc, bgc=bgc,  # type: ignore[arg-type]
    )
    return case, draw(st.sampled_from(sorted(STRATEGIES)))


PER_PROGRAM = 8
"""Configurations compiled together, lax's and jconv's convolutions side by side in one
program: each compilation has a fixed cost that small convolutions do not amortise."""


@pytest.mark.parametrize("n", [1, 2, 3])
def test_random_configurations_match_lax(n: int) -> None:
    """A third of `engine_vs_lax_configs()` distinct random configurations (500 in the ci
    profile, over the three ranks) with ``n`` spatial dims, each with its own operands, equal
    lax; where lax rejects one, jconv rejects it too, and where the drawn lowering declines
    one, forcing it raises and ``"auto"`` runs it instead. They are compiled `PER_PROGRAM` at a
    time, lax and jconv in one program (the table above runs them eagerly, one by one)."""
    wanted = -(-engine_vs_lax_configs() // 3)
    checked: set[tuple[Case, str]] = set()

    # duplicates do not count: draw a margin more than needed
    @settings(max_examples=-(-wanted * 5 // 4 // PER_PROGRAM))
    @given(st.lists(st.tuples(configs(n), st.integers(0, 2**16)), min_size=PER_PROGRAM,
                    max_size=PER_PROGRAM, unique_by=lambda d: d[0]))
    def check(drawn: list[tuple[tuple[Case, str], int]]) -> None:
        runs = []
        for config, seed in drawn:
            case, strategy = config
            x, w = case.operands(seed=seed)
            # rejections are raised while tracing: checked without compiling anything
            try:
                jax.eval_shape(lambda a, b, case=case: run_lax(case, a, b), x, w)
            except ValueError:  # e.g. negative padding larger than the input
                with pytest.raises(ValueError, match="padding"):
                    jax.eval_shape(lambda a, b, c=config: run_jconv(c[0], a, b, c[1]), x, w)
                checked.add(config)
                continue
            if not case.spec().empty and strategy_reason(case, strategy, x.dtype) is not None:
                with pytest.raises(ValueError, match="cannot run this convolution"):
                    jax.eval_shape(lambda a, b, c=config: run_jconv(c[0], a, b, c[1]), x, w)
                strategy = "auto"
            runs.append((case, strategy, x, w))

        def both(*ops: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
            return [(run_lax(case, ops[2 * i], ops[2 * i + 1]),
                     run_jconv(case, ops[2 * i], ops[2 * i + 1], strategy))
                    for i, (case, strategy, _, _) in enumerate(runs)]

        results = jax.jit(both)(*(a for run in runs for a in run[2:]))
        for (case, strategy, _, _), (want, got) in zip(runs, results, strict=True):
            assert got.shape == want.shape and got.dtype == want.dtype, (case, strategy)
            assert rel_err(got, want) <= TOL, (case, strategy)
        checked.update((case, s) for (case, s), _ in drawn)

    check()
    assert len(checked) >= wanted, f"only {len(checked)} distinct configurations checked"
