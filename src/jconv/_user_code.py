"""`jconv explain --fn/--torch MODULE:FACTORY`: load the user's model and explain it.

The factory is imported (``package.module:name`` or ``path/to/file.py:name``) and called
with no arguments. For ``--fn`` it returns a function of arrays, a Flax nnx module, a
linen module with its variables ``(module, variables)`` or ``(function, params)`` (called as
``f(params, *inputs)``); for ``--torch`` a `torch.nn.Module`. Inputs are ones of the
``--input`` shapes (batch included). Every failure of the user's code, from the import to
the trace, is one line on stderr and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, cast

from ._explain_report import ExplainReport

__all__ = ["load_factory", "user_report"]


class UserCodeError(Exception):
    """An error raised by (or while loading) the user's code."""


def load_factory(target: str) -> Callable[[], Any]:
    """``"pkg.mod:name"`` or ``"file.py:name"`` -> the callable `name`."""
    mod_name, sep, attr = target.rpartition(":")
    if not sep or not mod_name or not attr:
        raise UserCodeError(f"{target!r} must be MODULE:FACTORY, e.g. mypkg.models:make_net")
    try:
        if mod_name.endswith(".py") or os.sep in mod_name:
            if not os.path.exists(mod_name):
                raise UserCodeError(f"{mod_name!r} does not exist")
            spec = importlib.util.spec_from_file_location("_jconv_user_module", mod_name)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(mod_name)
    except UserCodeError:
        raise
    except ModuleNotFoundError as e:
        raise UserCodeError(f"cannot import {mod_name!r}: {e}") from e
    except Exception as e:
        raise UserCodeError(f"importing {mod_name!r} raised {type(e).__name__}: {e}") from e
    factory = getattr(module, attr, None)
    if factory is None:
        raise UserCodeError(f"module {mod_name!r} has no {attr!r}")
    if not callable(factory):
        raise UserCodeError(f"{target!r} is not callable")
    return factory


def _shapes(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> list[tuple[int, ...]]:
    if not args.input:
        example = "1x3x32x32" if args.torch else "1x32x32x3"
        fail(f"--{'torch' if args.torch else 'fn'} needs --input with the batch, e.g. "
             f"--input {example}")
    out = []
    for text in args.input:
        parts = text.strip().lower().split("x")
        if not all(p.isdigit() and int(p) >= 1 for p in parts):
            fail(f"--input {text!r}: must be sizes >= 1 joined by 'x', batch first, "
                 "e.g. --input 1x32x32x3")
        out.append(tuple(int(p) for p in parts))
    return out


def user_report(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> ExplainReport:
    """Load, trace and explain the model named by ``args.fn`` or ``args.torch``."""
    shapes = _shapes(args, fail)
    target = args.fn or args.torch
    flag = "--fn" if args.fn else "--torch"
    try:
        factory = load_factory(target)
        try:
            made = factory()
        except Exception as e:
            raise UserCodeError(f"{target}() raised {type(e).__name__}: {e}") from e
        if args.torch:
            from ._explain_model import program_report
            from ._torch_trace import trace_torch

            program = trace_torch(made, *shapes)
            return program_report(program, verify=args.verify, check_maps=args.check_maps,
                                  seed=args.seed, depth=args.depth, hypotheses=args.hypotheses,
                                  name=target)
        import jax.numpy as jnp

        from ._explain_model import explain

        inputs = [jnp.ones(s, args.dtype) for s in shapes]
        fn, extra = made, cast(tuple[Any, ...], ())
        if isinstance(made, tuple) and len(made) == 2:
            fn, extra = made[0], (made[1],)
        return explain(fn, *extra, *inputs, verify=args.verify, check_maps=args.check_maps,
                       seed=args.seed, depth=args.depth, hypotheses=args.hypotheses,
                       name=target)
    except (UserCodeError, Exception) as e:
        if args.debug:
            traceback.print_exc()
        msg = str(e) if isinstance(e, UserCodeError) else f"{type(e).__name__}: {e}"
        fail(f"{flag} {target!r}: {msg.splitlines()[0] if msg else type(e).__name__}")
