"""One process of a small CNN's training with jconv, on one or two hosts; prints JSON losses.

``python tests/_distributed_worker.py single`` trains on one device;
``python tests/_distributed_worker.py PROCESS_ID PORT`` is process PROCESS_ID of 2 (4
simulated CPU devices each, `jax.distributed` over 127.0.0.1:PORT, gloo collectives), the 8
global devices on one mesh axis, and trains twice: data parallel (the batch split over the
8 devices) and spatially parallel (the height split, halos exchanged between devices, also
across the two processes). The model: two 3x3 SAME jconv convolutions (ReLU), a global
average pool, a dense layer; plain SGD on a squared error, a few steps on fixed random
data. Every process prints ``{layout: [loss per step]}`` (the losses are replicated) and
the number of collectives of each kind in the compiled training step.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count="
     + ("1" if (sys.argv[1:] or ["single"])[0] == "single" else "4")]).strip()

import json
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jconv

ROLE = (sys.argv[1:] or ["single"])[0]
STEPS, LR = 4, 0.1
N, H, W, C, F, CLASSES = 16, 16, 8, 4, 8, 3
DN = ("NHWC", "HWIO", "NHWC")
KINDS = ("all-gather", "all-reduce", "collective-permute", "reduce-scatter", "all-to-all")


def init() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.standard_normal((3, 3, C, F), np.float32) / np.sqrt(9 * C),
        "w2": rng.standard_normal((3, 3, F, F), np.float32) / np.sqrt(9 * F),
        "wd": rng.standard_normal((F, CLASSES), np.float32) / np.sqrt(F),
        "bd": np.zeros((CLASSES,), np.float32),
    }
    x = rng.standard_normal((N, H, W, C), np.float32)
    y = rng.standard_normal((N, CLASSES), np.float32)
    return params, x, y


def loss_fn(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    h = jax.nn.relu(jconv.conv_general_dilated(x, params["w1"], (1, 1), "SAME",
                                               dimension_numbers=DN))
    h = jax.nn.relu(jconv.conv_general_dilated(h, params["w2"], (1, 1), "SAME",
                                               dimension_numbers=DN))
    pooled = jnp.mean(h, axis=(1, 2))
    out = pooled @ params["wd"] + params["bd"]
    return jnp.mean((out - y) ** 2)


@jax.jit
def step(params: dict[str, jax.Array], x: jax.Array,
         y: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    return jax.tree.map(lambda p, g: p - LR * g, params, grads), loss


def train(params: Any, x: Any, y: Any) -> list[float]:
    losses = []
    for _ in range(STEPS):
        params, loss = step(params, x, y)
        losses.append(float(loss))
    return losses


def _global(a: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from the same host data in every process (each its own shards)."""
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def main() -> None:
    params, x, y = init()
    if ROLE == "single":
        assert jax.device_count() == 1
        print(json.dumps({"single": train(params, x, y)}))
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", num_processes=2,
                               process_id=int(ROLE))
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Explicit,))
    out: dict[str, Any] = {"process": jax.process_index()}
    with jax.set_mesh(mesh):
        rep = NamedSharding(mesh, P())
        gparams = {k: _global(v, rep) for k, v in params.items()}
        for layout, spec in (("data", P("d")), ("spatial", P(None, "d"))):
            xs = _global(x, NamedSharding(mesh, spec))
            ys = _global(y, NamedSharding(mesh, P("d") if layout == "data" else P()))
            out[layout] = train(gparams, xs, ys)
            hlo = step.lower(gparams, xs, ys).compile().as_text()
            out[f"{layout}_collectives"] = {
                kind: len(re.findall(rf"\b{kind}(?:-start)?\(", hlo)) for kind in KINDS}
    print(json.dumps(out))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
