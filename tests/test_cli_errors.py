"""Malformed `jconv explain` command lines: exit status 2, one line naming the bad token.

Every case runs through `jconv.cli.main` in-process, and one case of each distinct kind also as
a `python -m jconv` subprocess (a few at a time, in one module fixture) for the real exit
status and the absence of a traceback. The grammar's own examples are checked to parse.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from jconv import models
from jconv._grammar import KINDS, GrammarError, parse_input, parse_layer
from jconv.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}

# (kind of mistake, command line after `explain`, token the message must name)
CASES: list[tuple[str, list[str], str]] = [
    ("unknown layer kind", ["--layer", "cnv:64"], "'cnv'"),
    ("missing filters", ["--layer", "conv:k=3"], "'conv:k=3'"),
    ("non-integer filters", ["--layer", "conv:abc"], "'abc'"),
    ("zero filters", ["--layer", "conv:0,k=3"], "'0'"),
    ("unknown option", ["--layer", "conv:64,q=3"], "'q=3'"),
    ("bad padding word", ["--layer", "conv:64,p=full"], "'p=full'"),
    ("malformed size", ["--layer", "conv:64,k=3x"], "'k=3x'"),
    ("repeated option", ["--layer", "conv:64,k=3,k=5"], "'k=5'"),
    ("bad pool kind", ["--layer", "pool:min,k=2"], "'min'"),
    ("bad bias flag", ["--layer", "dense:10,bias=maybe"], "'bias=maybe'"),
    ("missing units", ["--layer", "dense"], "'dense'"),
    ("empty item", ["--layer", "conv:64,,k=3"], "'conv:64,,k=3'"),
    ("argument to a parameter-free layer", ["--layer", "relu:3"], "'3'"),
    ("negative stride", ["--layer", "conv:8,s=-1"], "'s=-1'"),
    ("bad input size", ["--input", "0x28x1", "--layer", "conv:8"], "'0'"),
    ("input without channels", ["--input", "224", "--layer", "conv:8"], "'224'"),
    ("groups not dividing channels", ["--input", "28x28x3", "--layer", "conv:64,g=4"],
     "'conv:64,g=4'"),
    ("window larger than input", ["--input", "3x3x1", "--layer", "conv:8,k=5,p=valid"],
     "'conv:8,k=5,p=valid'"),
    ("zero batch", ["--batch", "0"], "--batch 0"),
    ("model and layers together", ["--model", "vgg16", "--layer", "conv:8"], "--model"),
    ("unknown model", ["--model", "vgg19"], "'vgg19'"),
    ("unknown dtype", ["--dtype", "int8"], "'int8'"),
]


# one subprocess per distinct code path: grammar, input, geometry, options, argparse
SUBPROCESS = ("unknown layer kind", "missing filters", "unknown option", "bad padding word",
              "repeated option", "bad input size", "groups not dividing channels",
              "window larger than input", "zero batch", "unknown model")


def check_message(name: str, err: str, token: str) -> None:
    err = err.strip()
    assert "\n" not in err, err  # one line
    assert "Traceback" not in err
    assert token in err, err
    if name not in ("unknown model", "unknown dtype"):  # argparse lists the choices instead
        assert "example: " in err, err


@pytest.mark.parametrize(("name", "args", "token"), CASES, ids=[c[0] for c in CASES])
def test_malformed_in_process(
    capsys: pytest.CaptureFixture[str], name: str, args: list[str], token: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explain", *args])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    check_message(name, err, token)


@pytest.fixture(scope="module")
def results() -> dict[str, subprocess.CompletedProcess[str]]:
    def one(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jconv", "explain", *args], capture_output=True, text=True,
            encoding="utf-8", env=ENV, cwd=ROOT, timeout=120, check=False,
        )

    cases = [c for c in CASES if c[0] in SUBPROCESS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(one, [args for _, args, _ in cases]))
    return {name: p for (name, _, _), p in zip(cases, procs, strict=True)}


@pytest.mark.parametrize(("name", "args", "token"), [c for c in CASES if c[0] in SUBPROCESS],
                         ids=SUBPROCESS)
def test_malformed_subprocess_exits_2(
    results: dict[str, subprocess.CompletedProcess[str]], name: str, args: list[str], token: str
) -> None:
    proc = results[name]
    assert proc.returncode == 2, (args, proc.stderr)
    assert proc.stdout == ""
    check_message(name, proc.stderr, token)


def test_at_least_eight_kinds_of_mistake() -> None:
    assert len(set(SUBPROCESS)) >= 8 and set(SUBPROCESS) <= {name for name, _, _ in CASES}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_grammar_examples_parse(kind: str) -> None:
    for example in KINDS[kind].example.split("  or  "):
        layer = parse_layer(example)
        assert isinstance(layer, models.Layer), example


def test_parse_layer_values() -> None:
    conv = parse_layer("conv:64,kernel=3x5,s=2,p=1x2,d=2,g=4,bias=0")
    assert conv == models.Conv(64, (3, 5), stride=2, padding=(1, 2), dilation=2, groups=4,
                               bias=False)
    assert parse_layer("dw:k=5,m=2,p=valid") == models.Depthwise(5, multiplier=2,
                                                                padding="VALID")
    assert parse_layer("sep:128") == models.Separable(128, 3)
    assert parse_layer("pool:avg,k=3") == models.Pool("avg", 3, stride=3)
    assert parse_layer("GAP:max") == models.GlobalPool("max")
    assert parse_layer("dense:10") == models.Dense(10)
    assert parse_input("224x224x3") == (224, 224, 3)
    with pytest.raises(GrammarError, match="'p=same_upper'"):
        parse_layer("conv:8,p=same_upper")


def test_version_and_usage_errors_answer_without_importing_jax() -> None:
    """`jconv --version` and usage errors import neither JAX nor SymPy (the package's names
    load on first use), so they answer at once."""
    code = (
        "import sys, contextlib, io\n"
        "from jconv.cli import main\n"
        "quiet = io.StringIO()\n"
        "with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):\n"
        "    for argv in (['--version'], ['explain', '--bogus'], ['explain', '--seed', '-1']):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted(m for m in ('jax', 'sympy', 'jaxlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
