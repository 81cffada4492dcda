"""Every proofs/ script runs end to end and reproduces its checked-in report exactly."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PROOFS = Path(__file__).resolve().parent.parent / "proofs"
SCRIPTS = ("channels", "output_size", "receptive_field", "adjoint", "error_bound")


def test_every_script_is_listed() -> None:
    found = {p.stem for p in PROOFS.glob("*.py") if not p.stem.startswith("_")}
    assert found == set(SCRIPTS)
    assert {p.stem for p in (PROOFS / "out").glob("*.md")} == set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_output_matches_checked_in_report(name: str) -> None:
    proc = subprocess.run([sys.executable, str(PROOFS / f"{name}.py")], capture_output=True,
                          text=True, cwd=PROOFS.parent, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"{name}.md: up to date" in proc.stdout
    text = (PROOFS / "out" / f"{name}.md").read_text()
    assert "False" not in text  # every identity the report states was verified


def test_runner_detects_a_stale_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(PROOFS))
    runner = importlib.import_module("_runner")
    monkeypatch.setattr(runner, "OUT", tmp_path)
    assert runner.run("demo", lambda: "a = 1\n", []) == 1  # nothing checked in yet
    assert runner.run("demo", lambda: "a = 1\n", ["--update"]) == 0
    assert (tmp_path / "demo.md").read_text() == "a = 1\n"
    assert runner.run("demo", lambda: "a = 1\n", []) == 0
    assert runner.run("demo", lambda: "a = 2\n", []) == 1
    out = capsys.readouterr().out
    assert "-a = 1" in out and "+a = 2" in out and "--update" in out
