"""The shape of the code: every lowering states its whole model, no import cycle, no private
name crosses a module boundary."""

from __future__ import annotations

import ast
import math
import pathlib

import jax.numpy as jnp
import pytest
import sympy as sp

from jconv import ConvSpec
from jconv.strategies import STRATEGIES, Cost, Prediction

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "jconv"
F32 = jnp.dtype(jnp.float32)

# One spec each lowering can run: 1-D for dft and toeplitz, lhs-dilated for polyphase,
# rhs-dilated for atrous, 2-D 3x3 otherwise.
SPECS = {
    "dft": ConvSpec.from_lax((2, 64, 8), (9, 8, 8), (1,), "SAME",
                             dimension_numbers=("NWC", "WIO", "NWC")),
    "toeplitz": ConvSpec.from_lax((2, 64, 1), (16, 1, 8), (4,), "SAME",
                                  dimension_numbers=("NWC", "WIO", "NWC")),
    "polyphase": ConvSpec.from_lax((2, 8, 8, 4), (3, 3, 4, 4), (1, 1), ((2, 1), (2, 1)), (2, 2),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")),
    "atrous": ConvSpec.from_lax((2, 12, 12, 16), (3, 3, 16, 16), (1, 1), "SAME", None, (2, 2),
                                dimension_numbers=("NHWC", "HWIO", "NHWC")),
}
DEFAULT = ConvSpec.from_lax((2, 12, 12, 8), (3, 3, 8, 8), (1, 1), "SAME",
                            dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_lowering_states_cost_prediction_and_backward_factors(name: str) -> None:
    """The planner reads nothing but these: each registered module states them."""
    mod = STRATEGIES[name]
    assert isinstance(mod.AUTO, bool)
    for factor in (mod.BACKWARD, mod.BACKWARD_COPY):
        assert isinstance(factor, float) and factor > 0
    spec = SPECS.get(name, DEFAULT)
    assert mod.applicable(spec, F32) is None
    cost = mod.cost(spec, F32)
    assert isinstance(cost, Cost)
    flops, temp, moved = cost.evaluate()
    assert flops > 0 and temp >= 0 and moved >= 0
    # item size follows the dtype: half the bytes in float16, the same FLOPs
    half = mod.cost(spec, jnp.float16)
    assert float(half.flops) == flops and float(half.temp_bytes) == temp / 2
    formula = mod.formula(spec.num_spatial)
    assert isinstance(formula, Cost) and isinstance(formula.flops, sp.Expr)
    assert formula.flops.free_symbols  # a formula, not a number
    pred = mod.predict(spec, F32)
    assert isinstance(pred, Prediction)
    assert pred.arithmetic >= 0 and pred.copies >= 0 and pred.backward >= 0
    assert pred.total == pred.forward + pred.backward
    if math.isfinite(pred.forward) and name != "scatter":  # scatter may refuse a backward
        expected = mod.BACKWARD * pred.arithmetic + mod.BACKWARD_COPY * pred.copies
        assert pred.backward == pytest.approx(expected)


def _imports(path: pathlib.Path) -> set[str]:
    """Modules of jconv that the file imports anywhere (top level or inside functions)."""
    module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    module = module.removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("jconv")}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (
                node.module or "")
            if not target.startswith("jconv"):
                continue
            for alias in node.names:  # `from . import mod` imports the submodule itself
                sub = f"{target}.{alias.name}"
                if (SRC.parent / sub.replace(".", "/")).with_suffix(".py").exists() or (
                        SRC.parent / sub.replace(".", "/") / "__init__.py").exists():
                    out.add(sub)
                else:
                    out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in SRC.rglob("*.py"):
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        graph[module.removesuffix(".__init__")] = _imports(path)
    return graph


def test_no_import_cycle() -> None:
    """No module imports (even inside a function) a module that imports it back, directly or
    through others (a submodule importing a name from its own package's ``__init__`` counts:
    the package imports the submodule)."""
    graph = _graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(m for m in graph if m in reach(m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_cycle_check_resolves_relative_imports() -> None:
    """`_imports` resolves relative imports, of modules and of names, packages included."""
    found = _imports(SRC / "strategies" / "polyphase.py")
    assert "jconv._spec" in found and "jconv.strategies.shift" in found
    assert "jconv.planner" not in found
    assert "jconv.strategies.polyphase" in _imports(SRC / "strategies" / "__init__.py")


def test_no_private_name_is_imported_from_another_module() -> None:
    """Shared helpers have plain names in the module that holds them."""
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                offenders += [f"{path.relative_to(SRC)}: {a.name}" for a in node.names
                              if a.name.startswith("_") and a.name != "__version__"
                              and not (SRC / f"{a.name}.py").exists()
                              and not (SRC / (node.module or "").replace(".", "/") /
                                       f"{a.name}.py").exists()
                              and not (path.parent / f"{a.name}.py").exists()]
    assert not offenders, offenders
