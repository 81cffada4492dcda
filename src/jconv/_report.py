"""What `jconv explain` reports: numbers with their formulas, checks, per-layer rows, totals.

Built by `jconv._explain.build_report`, printed by `jconv._explain_render`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DTYPES",
    "MAX_DEPTH",
    "Check",
    "Hypotheses",
    "LayerRow",
    "NetworkReport",
    "Quantity",
    "Report",
]

DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
"""The dtypes a report can be made for, with their item sizes."""
MAX_DEPTH = 64
"""Deepest hypotheses table: keeping every map needs C0*F^L channels, a number of hundreds
of digits well before L = 64 for real widths; the table is exact up to here."""


@dataclass(frozen=True)
class Quantity:
    """One number with the formula that gives it (plain text and LaTeX)."""

    value: int
    formula: str
    latex: str


@dataclass(frozen=True)
class Check:
    """One verification: `passed` is None when the check does not apply (see `note`)."""

    name: str
    expected: Any
    measured: Any
    passed: bool | None
    note: str = ""


@dataclass
class LayerRow:
    """Everything `explain` says about one walked layer; `quantities` keyed ``weights``,
    ``biases``, ``params``, ``macs``, ``out_elements``, ``out_bytes`` (and ``out_0``... for
    a conv)."""

    index: int
    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...] | None
    groups: int
    quantities: dict[str, Quantity]
    rule: str
    einsum: str | None
    checks: list[Check] = field(default_factory=list)
    receptive_field: tuple[int, ...] | None = None  # of one output value, input pixels
    rf_formula: str = ""
    count: int = 1  # times the layer runs per call (a scan over layers: its length)
    where: str = ""  # "scan x4", "jconv engine", ... for a traced layer


@dataclass
class NetworkReport:
    """One network: its layers, totals and the checks of the totals."""

    name: str
    title: str
    input_shape: tuple[int, ...]
    layers: list[LayerRow]
    totals: dict[str, int]
    checks: list[Check] = field(default_factory=list)
    published: dict[str, Any] | None = None


@dataclass
class Hypotheses:
    """The three readings of "what happens to C maps" over depth ``L = 1..depth``."""

    parameters: dict[str, Any]
    formulas: dict[str, dict[str, str]]
    rows: list[dict[str, Any]]
    title: str = ""


@dataclass
class Report:
    """A whole `jconv explain` run."""

    dtype: str
    itemsize: int
    batch: int
    verify: bool
    check_maps: int
    networks: list[NetworkReport]
    hypotheses: Hypotheses | None
    seconds: float = 0.0  # time to build the report (tracing plus verification)

    def all_checks(self) -> list[Check]:
        """Every network's checks, then every layer's."""
        out = [c for n in self.networks for c in n.checks]
        return out + [c for n in self.networks for r in n.layers for c in r.checks]

    @property
    def ok(self) -> bool:
        """No check failed (checks that do not apply count as passed)."""
        return all(c.passed is not False for c in self.all_checks())
