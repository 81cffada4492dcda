r"""The collectives of a compiled program, read from its optimized HLO text.

Used wherever jconv's communication is measured against its formulas
(`jconv.symbolic.communication`): the tests and ``benchmarks/scaling.py``.

>>> collectives("%p = f32[2,4]{1,0} parameter(0)\n"
...             "ROOT %r = f32[2,4]{1,0} all-reduce(%p), to_apply=%add")
{'all-reduce': [1, 32]}
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["KINDS", "collectives", "shape_bytes"]

KINDS = ("all-gather", "all-reduce", "collective-permute", "reduce-scatter", "all-to-all")
_OP = re.compile(r"\b(" + "|".join(KINDS) + r")(-start)?\(")
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")


_DEF = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*")
_NAME = re.compile(r"%([\w.\-]+)")


def _balanced(text: str, start: int) -> int:
    """The index just past the bracket group opening at `start`."""
    depth = 0
    for j in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            return j + 1
    raise ValueError("unbalanced HLO")


def shape_bytes(text: str) -> int:
    """Bytes of the array shapes in `text` (``f32[2,58,64]{2,1,0}``, ``pred[]``, tuples)."""
    total = 0
    for dtype, dims in _ARRAY.findall(text):
        bits = 8 if dtype == "pred" else int(re.sub(r"\D", "", dtype))
        total += int(np.prod([int(d) for d in dims.split(",") if d])) * bits // 8
    return total


def collectives(hlo: str) -> dict[str, list[int]]:
    """``{kind: [count, operand bytes]}`` of the collectives in compiled HLO text (an async
    pair once, by its ``-start``). The text names an instruction's operands without their
    shapes (``collective-permute(%wrapped_slice)``): each is looked up where it is defined
    (``%wrapped_slice = f32[2,1,16,8]{3,2,1,0} fusion(...)``)."""
    shapes: dict[str, str] = {}
    ops = []
    for line in hlo.splitlines():
        d = _DEF.match(line)
        if d is None:
            continue
        rest = line[d.end():]
        end = _balanced(rest, 0) if rest.startswith("(") else rest.index(" ")
        shapes[d.group(1)] = rest[:end]
        m = _OP.search(rest, end)
        if m is not None and rest[end:m.start()].strip() == "":
            args = rest[m.end() - 1:_balanced(rest, m.end() - 1)]
            ops.append((m.group(1), _NAME.findall(args)))
    out: dict[str, list[int]] = {}
    for kind, names in ops:
        entry = out.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += sum(shape_bytes(shapes[n]) for n in names)
    return out
