"""`jconv.conv_general_dilated` equals `jax.lax.conv_general_dilated`.

float32, max abs error <= 1e-5 * max |lax output|, on a table (1-3 spatial dims, every
padding kind, dilations, strides, groups, odd dimension numbers, both strategies), on empty
shapes lax accepts, and on random configurations drawn by hypothesis.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from _core_cases import EDGE, LETTERS, TABLE, Case, make_case, run_jconv, run_lax
from hypothesis import given, settings
from reference import rel_err

TOL = 1e-5
STRATEGIES = ("shift", "patches")


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", TABLE, ids=str)
def test_table_matches_lax(case: Case, strategy: str) -> None:
    x, w = case.operands()
    want = run_lax(case, x, w)
    got = run_jconv(case, x, w, strategy)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert rel_err(got, want) <= TOL


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", EDGE, ids=str)
def test_empty_shapes_match_lax(case: Case, strategy: str) -> None:
    x, w = case.operands()
    want = run_lax(case, x, w)
    got = run_jconv(case, x, w, strategy)
    assert 0 in (*x.shape, *w.shape, *want.shape)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_auto_strategy_matches_lax() -> None:
    case = TABLE[[c.name for c in TABLE].index("2d_all")]
    x, w = case.operands()
    assert rel_err(run_jconv(case, x, w, "auto"), run_lax(case, x, w)) <= TOL


def test_numpy_array_hyperparameters_accepted() -> None:
    """lax takes NumPy arrays for strides, dilations and pads; so does jconv."""
    case = make_case("np", spatial=(6, 5), padding=((1, 0), (2, 1)), strides=(2, 1))
    x, w = case.operands()
    kw: dict[str, Any] = dict(
        window_strides=np.array(case.strides), padding=np.array(case.padding),
        rhs_dilation=np.array([1, 2]), dimension_numbers=case.dn,
    )
    import jax

    import jconv

    want = jax.lax.conv_general_dilated(x, w, **kw)
    assert rel_err(jconv.conv_general_dilated(x, w, **kw), want) <= TOL


@st.composite
def configs(draw: st.DrawFn) -> tuple[Case, str]:
    """A random valid-or-invalid-for-lax configuration and a strategy."""
    n = draw(st.integers(1, 3))
    groups = draw(st.sampled_from(["none", "feature", "batch"]))
    g = draw(st.integers(1, 3)) if groups != "none" else 1
    fgc, bgc = (g, 1) if groups == "feature" else (1, g)
    batch = bgc * draw(st.integers(0, 2) if draw(st.booleans()) else st.just(1))
    channels = fgc * draw(st.integers(1, 2))
    filters = fgc * bgc * draw(st.integers(1, 2))
    spatial = tuple(draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)))
    window = tuple(draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)))
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
    return case, draw(st.sampled_from(STRATEGIES))


@settings(max_examples=500, deadline=None)
@given(configs(), st.integers(0, 2**16))
def test_random_configurations_match_lax(config: tuple[Case, str], seed: int) -> None:
    case, strategy = config
    x, w = case.operands(seed=seed)
    try:
        want = run_lax(case, x, w)
    except ValueError:  # e.g. negative padding larger than the input: jconv rejects it too
        with pytest.raises(ValueError, match="padding"):
            run_jconv(case, x, w, strategy)
        return
    got = run_jconv(case, x, w, strategy)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert rel_err(got, want) <= TOL
