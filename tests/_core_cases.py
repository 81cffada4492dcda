"""Convolution configurations shared by the core tests, and how to run each side on them.

A `Case` holds lax-style hyper-parameters and its three layout strings; ``dn_kind`` says how
the layouts reach the call: as strings, as a `lax.ConvDimensionNumbers`, or as None (then the
strings must be lax's default ``NC...``/``OI...``). Spatial order follows the kernel layout,
as in lax. `reference_out` evaluates `conv_reference` (float64 NumPy loops) in the user's
output layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.extend
import numpy as np
from jax import lax
from reference import conv_reference

import jconv

LETTERS = {1: "W", 2: "HW", 3: "DHW"}


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration: layouts, operand shapes (user layout) and hyper-parameters."""

    name: str
    dn: tuple[str, str, str]
    lhs_shape: tuple[int, ...]
    rhs_shape: tuple[int, ...]
    strides: tuple[int, ...]
    padding: Any
    lhs_dil: tuple[int, ...]
    rhs_dil: tuple[int, ...]
    fgc: int = 1
    bgc: int = 1
    dn_kind: str = "str"  # "str" | "cdn" | "none"

    def __str__(self) -> str:
        return self.name

    @property
    def num_spatial(self) -> int:
        return len(self.strides)

    def dimension_numbers(self) -> Any:
        if self.dn_kind == "none":
            return None
        if self.dn_kind == "cdn":
            return lax.conv_dimension_numbers(self.lhs_shape, self.rhs_shape, self.dn)
        return self.dn

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments after ``(lhs, rhs)`` for lax or jconv."""
        return dict(
            window_strides=self.strides, padding=self.padding, lhs_dilation=self.lhs_dil,
            rhs_dilation=self.rhs_dil, dimension_numbers=self.dimension_numbers(),
            feature_group_count=self.fgc, batch_group_count=self.bgc,
        )

    def spec(self) -> jconv.ConvSpec:
        """The normalised `jconv.ConvSpec` of this configuration."""
        return jconv.ConvSpec.from_lax(self.lhs_shape, self.rhs_shape, **self.kwargs())

    def operands(self, dtype: Any = np.float32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Random normal ``(lhs, rhs)`` (complex when `dtype` is complex)."""
        rng = np.random.default_rng(seed)

        def draw(shape: tuple[int, ...]) -> np.ndarray:
            a = rng.standard_normal(shape)
            if np.issubdtype(np.dtype(dtype), np.complexfloating):
                a = a + 1j * rng.standard_normal(shape)
            if np.issubdtype(np.dtype(dtype), np.integer):
                a = rng.integers(-8, 8, shape)
            return np.asarray(a).astype(dtype)

        return draw(self.lhs_shape), draw(self.rhs_shape)

    def explicit_pads(self) -> tuple[tuple[int, int], ...]:
        """The (low, high) pads per spatial dim (kernel order), 'SAME' rules written out."""
        if not isinstance(self.padding, str):
            return tuple((int(lo), int(hi)) for lo, hi in self.padding)
        kind = self.padding.upper()
        lhs_s, rhs_s, _ = self.dn
        pads = []
        for i, letter in enumerate(self._spatial_order()):
            size = self.lhs_shape[lhs_s.index(letter)]
            k = self.rhs_shape[rhs_s.index(letter)]
            eff = 0 if k == 0 else (k - 1) * self.rhs_dil[i] + 1
            if kind == "VALID":
                pads.append((0, 0))
                continue
            out = -(-size // self.strides[i])
            total = max((out - 1) * self.strides[i] + eff - size, 0)
            lo = total // 2 if kind == "SAME" else total - total // 2
            pads.append((lo, total - lo))
        return tuple(pads)

    def _spatial_order(self) -> list[str]:
        return [c for c in self.dn[1] if c not in "OI"]

    def reference_out(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """float64 NumPy-loop result in the user's output layout."""
        lhs_s, rhs_s, out_s = self.dn
        sp = self._spatial_order()
        xc = np.transpose(x, [lhs_s.index(c) for c in ["N", *sp, "C"]])
        wc = np.transpose(w, [rhs_s.index(c) for c in [*sp, "I", "O"]])
        yc = conv_reference(
            xc, wc, self.strides, self.explicit_pads(), self.lhs_dil, self.rhs_dil,
            self.fgc, self.bgc,
        )
        canon = ["N", *sp, "C"]
        return np.transpose(yc, [canon.index(c) for c in out_s])


def make_case(
    name: str,
    *,
    spatial: tuple[int, ...] = (6, 6),
    window: tuple[int, ...] = (3, 3),
    batch: int = 2,
    channels: int = 2,
    filters: int = 3,
    strides: tuple[int, ...] | None = None,
    padding: Any = "SAME",
    lhs_dil: tuple[int, ...] | None = None,
    rhs_dil: tuple[int, ...] | None = None,
    dn: tuple[str, str, str] | None = None,
    dn_kind: str = "str",
    fgc: int = 1,
    bgc: int = 1,
) -> Case:
    """Build a `Case` from sizes; operand shapes follow the layout strings ``dn``."""
    n = len(spatial)
    sp = LETTERS[n]
    if dn is None:
        dn = (f"N{sp}C", f"{sp}IO", f"N{sp}C") if dn_kind != "none" else (
            f"NC{sp}", f"OI{sp}", f"NC{sp}")
    lhs_sizes = dict(zip(sp, spatial, strict=True), N=batch, C=channels)
    rhs_sizes = dict(zip(sp, window, strict=True), I=channels // fgc, O=filters)
    # hyper-parameters are given in `sp` order; lax reads them in kernel-layout order
    order = [sp.index(c) for c in dn[1] if c not in "OI"]

    def reorder(t: tuple[int, ...] | None) -> tuple[int, ...]:
        return (1,) * n if t is None else tuple(t[i] for i in order)

    pads = padding if isinstance(padding, str) else tuple(tuple(padding[i]) for i in order)
    return Case(
        name=name, dn=dn,
        lhs_shape=tuple(lhs_sizes[c] for c in dn[0]),
        rhs_shape=tuple(rhs_sizes[c] for c in dn[1]),
        strides=reorder(strides), padding=pads, lhs_dil=reorder(lhs_dil),
        rhs_dil=reorder(rhs_dil), fgc=fgc, bgc=bgc, dn_kind=dn_kind,
    )


def on_device(*arrays: Any) -> list[Any]:
    """NumPy arrays moved to the device as they are (`jax.device_put`, inside any
    ``jax.enable_x64`` block, keeps float64): `jnp.asarray` of a NumPy array compiles a
    program per shape, which hundreds of small eager calls would pay for. The NumPy path
    of the engine is exercised by the tests that call jconv directly."""
    return [jax.device_put(a) if isinstance(a, np.ndarray) else a for a in arrays]


def run_lax(case: Case, x: Any, w: Any, **kw: Any) -> jax.Array:
    x, w = on_device(x, w)
    return lax.conv_general_dilated(x, w, **case.kwargs(), **kw)


def run_jconv(case: Case, x: Any, w: Any, strategy: str = "auto", **kw: Any) -> jax.Array:
    x, w = on_device(x, w)
    return jconv.conv_general_dilated(x, w, **case.kwargs(), **kw, strategy=strategy)


def strategy_reason(case: Case, strategy: str, dtype: Any) -> str | None:
    """Why `strategy` declines `case` (its own ``applicable``), or None."""
    from jconv.strategies import STRATEGIES

    check = getattr(STRATEGIES[strategy], "applicable", None)
    if check is None:
        return None
    return check(case.spec(), np.dtype(dtype))


TABLE: list[Case] = [
    # 1-D
    make_case("1d_valid", spatial=(7,), window=(3,), padding="VALID"),
    make_case("1d_same_s2", spatial=(8,), window=(3,), strides=(2,)),
    make_case("1d_same_lower_s2_k4", spatial=(7,), window=(4,), strides=(2,), padding="SAME_LOWER"),
    make_case("1d_neg_pads", spatial=(9,), window=(3,), padding=((-2, 1),)),
    make_case("1d_lhs_dil", spatial=(5,), window=(3,), padding=((2, 2),), lhs_dil=(2,)),
    make_case("1d_rhs_dil", spatial=(9,), window=(3,), rhs_dil=(3,)),
    make_case("1d_depthwise", spatial=(6,), window=(3,), channels=4, filters=8, fgc=4),
    make_case("1d_batch_groups", spatial=(6,), window=(2,), batch=4, filters=4, bgc=2),
    make_case("1d_ncw_none", spatial=(6,), window=(3,), dn_kind="none"),
    make_case("1d_wcn", spatial=(6,), window=(3,), dn=("WCN", "IWO", "CNW")),
    # 2-D
    make_case("2d_same", spatial=(6, 5)),
    make_case("2d_valid", spatial=(6, 5), padding="VALID"),
    make_case("2d_same_lower_s23", spatial=(7, 8), window=(2, 3), strides=(2, 3),
              padding="SAME_LOWER"),
    make_case("2d_explicit", spatial=(5, 6), padding=((1, 2), (0, 3))),
    make_case("2d_negative", spatial=(7, 6), padding=((-1, -2), (2, -1))),
    make_case("2d_lhs_rhs_dil", spatial=(4, 5), padding=((1, 1), (2, 0)), lhs_dil=(2, 3),
              rhs_dil=(2, 1)),
    make_case("2d_all", spatial=(8, 7), window=(3, 2), strides=(2, 3), padding=((2, -1), (1, 2)),
              lhs_dil=(1, 2), rhs_dil=(2, 2), channels=4, filters=4, fgc=2),
    make_case("2d_groups", spatial=(5, 5), channels=6, filters=9, fgc=3),
    make_case("2d_depthwise", spatial=(5, 5), channels=3, filters=6, fgc=3),
    make_case("2d_batch_groups", spatial=(5, 4), batch=6, filters=6, bgc=3),
    make_case("2d_bgc_dilated", spatial=(6, 5), batch=4, filters=2, bgc=2, strides=(2, 1),
              rhs_dil=(1, 2), padding=((1, 0), (0, 2))),
    make_case("2d_odd_dn", spatial=(5, 6), window=(3, 2), strides=(1, 2),
              dn=("HNCW", "WOHI", "CWNH")),
    make_case("2d_odd_dn_cdn", spatial=(5, 6), window=(3, 2), strides=(2, 1), padding="VALID",
              dn=("WCHN", "IHOW", "NWHC"), dn_kind="cdn"),
    make_case("2d_nchw_none", spatial=(6, 5), strides=(2, 1), dn_kind="none"),
    make_case("2d_nhwc_cdn", spatial=(5, 5), dn_kind="cdn"),
    make_case("2d_1x1", spatial=(4, 3), window=(1, 1), channels=5, filters=2),
    make_case("2d_stride_gt_input", spatial=(3, 4), window=(2, 2), strides=(5, 5)),
    # 3-D
    make_case("3d_same", spatial=(4, 5, 3), window=(3, 2, 2)),
    make_case("3d_mixed", spatial=(5, 4, 6), window=(2, 3, 2), strides=(2, 1, 3),
              padding=((1, 0), (-1, 2), (2, 2)), lhs_dil=(1, 2, 1), rhs_dil=(2, 1, 2)),
    make_case("3d_groups", spatial=(3, 4, 4), window=(2, 2, 2), channels=4, filters=2, fgc=2),
    make_case("3d_batch_groups", spatial=(3, 3, 4), window=(2, 2, 2), batch=4, filters=2, bgc=2,
              padding="VALID"),
    make_case("3d_ncdhw_none", spatial=(3, 4, 3), window=(2, 2, 2), padding="SAME_LOWER",
              dn_kind="none"),
    make_case("3d_odd_dn", spatial=(3, 4, 5), window=(2, 3, 2), dn=("DNHCW", "HIWDO", "WCDNH")),
]

# Shapes lax accepts whose result (or an operand) is empty.
EDGE: list[Case] = [
    make_case("window_gt_input", spatial=(2, 5), window=(4, 3), padding="VALID"),
    make_case("window_gt_padded", spatial=(3, 3), window=(3, 3), padding=((-1, 0), (0, 0))),
    make_case("neg_pad_to_zero", spatial=(3, 4), window=(1, 1), padding=((-2, -1), (0, 0))),
    make_case("zero_batch", spatial=(4, 4), batch=0),
    make_case("zero_batch_bgc", spatial=(4, 4), batch=0, filters=2, bgc=2),
    make_case("zero_channels", spatial=(4, 4), channels=0),
    make_case("zero_filters", spatial=(4, 4), filters=0),
    make_case("zero_spatial_padded", spatial=(0, 4), padding=((1, 2), (1, 1))),
    make_case("zero_spatial_same", spatial=(0, 3), window=(2, 2)),
    make_case("zero_spatial_dilated", spatial=(0, 4), window=(1, 2), strides=(2, 1),
              padding=((1, 0), (0, 1)), lhs_dil=(2, 1), rhs_dil=(2, 2)),
    make_case("zero_spatial_lhs_dilated", spatial=(9, 0), window=(4, 5),
              padding=((10, 8), (7, 13)), lhs_dil=(1, 4), rhs_dil=(1, 2)),
    make_case("1d_window_gt_input_s2", spatial=(3,), window=(5,), strides=(2,), padding="VALID"),
]


def lowering_row(
    xs: tuple[int, ...], win: tuple[int, ...], f: int, strides: tuple[int, ...], padding: Any,
    rhs_dil: tuple[int, ...], lhs_dil: tuple[int, ...], fgc: int = 1, bgc: int = 1,
) -> Case:
    """A channels-last `Case` from ``(N, *spatial, C)``, window, F and hyper-parameters."""
    def cat(t: tuple[int, ...], sep: str = "") -> str:
        return sep.join(map(str, t))

    name = (f"{cat(xs, 'x')}-k{cat(win, 'x')}-f{f}-s{cat(strides)}-l{cat(lhs_dil)}"
            f"-r{cat(rhs_dil)}-g{fgc}b{bgc}")
    return make_case(name, spatial=xs[1:-1], window=win, batch=xs[0], channels=xs[-1],
                     filters=f, strides=strides, padding=padding, lhs_dil=lhs_dil,
                     rhs_dil=rhs_dil, fgc=fgc, bgc=bgc)


# Larger configurations aimed at the lowerings' own code paths: long 1-D windows (DFT tiles,
# 15 taps), depthwise channel multipliers, lhs dilation with groups and negative pads
# (polyphase), strided grouped 1x1 windows. test_strategies.py differentiates them.
LOWERING_ROWS: list[Case] = [
    lowering_row((2, 9, 8, 6), (3, 3), 6, (1, 1), "SAME", (1, 1), (1, 1)),
    lowering_row((2, 9, 8, 6), (3, 3), 4, (1, 1), "SAME", (1, 1), (1, 1), 2),
    lowering_row((2, 9, 8, 6), (3, 2), 6, (2, 1), "VALID", (2, 1), (1, 1), 3),
    lowering_row((2, 9, 8, 6), (3, 3), 12, (1, 1), "SAME", (1, 1), (1, 1), 6),
    lowering_row((2, 10, 8, 4), (3, 3), 5, (2, 2), ((1, 2), (0, 1)), (1, 2), (1, 1)),
    lowering_row((2, 10, 9, 4), (3, 3), 4, (1, 1), "SAME_LOWER", (2, 1), (1, 1)),
    lowering_row((2, 7, 8, 4), (3, 3), 4, (1, 1), ((2, 2), (1, 1)), (1, 1), (2, 1), 4),
    lowering_row((2, 6, 5, 4), (3, 3), 3, (1, 1), ((1, 1), (-1, 2)), (1, 1), (1, 1)),
    lowering_row((4, 6, 7, 3), (2, 3), 4, (1, 2), "SAME", (1, 1), (1, 1), 1, 2),
    lowering_row((2, 9, 8, 6), (1, 1), 7, (1, 1), "VALID", (1, 1), (1, 1)),
    lowering_row((2, 9, 8, 6), (1, 1), 4, (2, 3), "SAME", (1, 1), (1, 1), 2),
    lowering_row((2, 17, 3), (5,), 4, (2,), "SAME", (3,), (1,)),
    lowering_row((2, 17, 4), (4,), 6, (1,), "SAME", (1,), (1,), 2),
    lowering_row((2, 33, 2), (15,), 3, (1,), "SAME", (1,), (1,)),
    lowering_row((2, 11, 3), (3,), 2, (1,), ((2, 1),), (1,), (3,)),
    lowering_row((2, 40, 4), (5,), 3, (1,), ((3, 1),), (2,), (1,)),
    lowering_row((2, 30, 4), (7,), 8, (1,), "SAME", (1,), (1,), 4),
    lowering_row((2, 5, 6, 6), (3, 3), 4, (1, 1), ((2, 1), (1, 2)), (1, 1), (2, 2)),
    lowering_row((2, 5, 4, 6), (4, 3), 6, (1, 1), ((0, 3), (-1, 1)), (1, 1), (3, 2), 2),
    lowering_row((2, 4, 3, 3, 2), (3, 2, 3), 2, (1, 1, 1), ((1, 1), (1, 0), (2, 2)), (1, 1, 1),
                 (2, 2, 3)),
    lowering_row((2, 5, 6, 4, 4), (3, 2, 3), 4, (1, 2, 1), "SAME", (1, 1, 2), (1, 1, 1), 2),
    lowering_row((1, 6, 5, 4, 3), (3, 3, 3), 2, (1, 1, 1), "VALID", (1, 1, 1), (1, 1, 1)),
]

LOWERING_ROWS_IN_TABLE = (0, 1, 3, 7, 9)
"""LOWERING_ROWS whose kind of configuration `TABLE` already has (plain SAME, groups,
depthwise, negative pads, 1x1): the value tables leave them out, the gradient tables keep them."""


def loop_operands_with_a_unit_axis(fn: Any, *args: Any) -> list[tuple[int, ...]]:
    """Shapes ``(steps, 1, ...)`` among the operands of the loops (`lax.scan`) in ``fn``'s
    jaxpr: XLA's CPU backend copies such an operand whole to relayout it (a batch read one
    image a step should be scanned as it is)."""
    def walk(jaxpr: Any) -> list[tuple[int, ...]]:
        found = []
        for e in jaxpr.eqns:
            if e.primitive.name == "scan":
                found += [tuple(v.aval.shape) for v in e.invars
                          if v.aval.ndim > 2 and v.aval.shape[1] == 1]
            for j in jax.extend.core.jaxprs_in_params(e.params):
                found += walk(j)
        return found
    return walk(jax.make_jaxpr(fn)(*args).jaxpr)
