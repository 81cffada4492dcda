"""Shared main() of the proof scripts: render a Markdown report, compare or refresh it.

``python proofs/NAME.py`` renders the report and exits 1 (printing a unified diff) when it
differs from the checked-in ``proofs/out/NAME.md``; ``--update`` rewrites that file.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import sympy as sp

OUT = Path(__file__).resolve().parent / "out"


def math_block(*lines: str) -> str:
    """A display-math block, one equation per line."""
    return "\n".join(f"$$\n{line}\n$$" for line in lines)


def eq(lhs: object, rhs: object) -> str:
    """``lhs = rhs`` in LaTeX (strings pass through unchanged)."""
    def tex(v: object) -> str:
        return v if isinstance(v, str) else sp.latex(v)
    return f"{tex(lhs)} = {tex(rhs)}"


def run(name: str, render: Callable[[], str], argv: Sequence[str] | None = None) -> int:
    """Compare `render()` with ``proofs/out/<name>.md``, or rewrite it with ``--update``."""
    parser = argparse.ArgumentParser(prog=f"proofs/{name}.py", description=render.__doc__)
    parser.add_argument("--update", action="store_true", help="rewrite the checked-in report")
    args = parser.parse_args(argv)
    text = render()
    path = OUT / f"{name}.md"
    if args.update:
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
        return 0
    old = path.read_text() if path.exists() else ""
    if old == text:
        print(f"{path.name}: up to date")
        return 0
    sys.stdout.writelines(difflib.unified_diff(
        old.splitlines(keepends=True), text.splitlines(keepends=True),
        fromfile=f"checked-in {path.name}", tofile="rendered"))
    print(f"\n{path.name} differs from the derivation; run with --update to refresh it.")
    return 1
