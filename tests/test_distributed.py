"""jconv across hosts: 2 processes x 4 simulated CPU devices (`jax.distributed` on
127.0.0.1, gloo collectives) train a small CNN data parallel (the batch over the 8 global
devices) and spatially parallel (the height over them: halos exchanged between devices,
across the processes at their boundary), and the losses equal one device's, to float32
tolerance. The worker is `_distributed_worker.py`."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
TIMEOUT = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _json(out: str) -> dict[str, Any]:
    return json.loads(out.strip().splitlines()[-1])


def _run(env: dict[str, str]) -> list[tuple[int, str, str]]:
    """The single-device run and the two processes (a fresh port): (returncode, stdout,
    stderr) of each; every process is killed on the way out."""
    worker = str(HERE / "_distributed_worker.py")
    port = str(_free_port())
    procs: list[subprocess.Popen[str]] = []
    try:
        for args in (["single"], ["0", port], ["1", port]):
            procs.append(subprocess.Popen([sys.executable, worker, *args], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]


def test_two_processes_train_as_one_device() -> None:
    env = dict(os.environ)
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    runs = _run(env)
    if any(rc for rc, _, _ in runs):  # once more, on a fresh port (one taken meanwhile)
        runs = _run(env)
    for rc, _, _ in runs:
        assert rc == 0, "\n".join(e[-3000:] for _, _, e in runs)
    outs = [(out, err) for _, out, err in runs]
    single, *hosts = (_json(out) for out, _ in outs)
    ref = np.array(single["single"])
    assert ref[-1] < ref[0]  # it trains
    assert sorted(h["process"] for h in hosts) == [0, 1]
    for host in hosts:
        for layout in ("data", "spatial"):
            np.testing.assert_allclose(host[layout], ref, rtol=2e-5, err_msg=layout)
        # data parallel: the gradients' all-reduces and no halo; spatial: halo exchanges
        assert host["data_collectives"]["collective-permute"] == 0
        assert host["data_collectives"]["all-reduce"] >= 1
        assert host["spatial_collectives"]["collective-permute"] >= 4
        assert host["data_collectives"]["all-gather"] == 0
        assert host["spatial_collectives"]["all-gather"] == 0
