"""Collective bytes of sharded jconv calls on 8 simulated CPU devices; prints one JSON object.

Run as a script (``python tests/_communication_cases.py [case ...]``; the device count must
be set before JAX is imported): for each layout, the bytes of every collective's operands in
the optimized HLO of the forward and of the gradient of a linear loss (by kind), and each
device's block bytes of the input, kernel and output. `tests/test_communication.py`
compares them with `jconv.symbolic.communication_bytes` and `per_device_bytes`.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()

import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jconv
from jconv._hlo import collectives

# name: (mesh shape, axis names, x NHWC, x spec, w HWIO, w spec, strides, padding, dilation,
#        layout for the formulas: batch, spatial_split, features, channels)
CASES: dict[str, tuple] = {
    "batch": ((8,), ("d",), (16, 16, 16, 8), P("d"), (3, 3, 8, 16), P(), (1, 1), "SAME",
              (1, 1), dict(batch=8)),
    "batch_strided": ((8,), ("d",), (8, 16, 16, 8), P("d"), (3, 3, 8, 8), P(), (2, 2),
                      "SAME", (1, 1), dict(batch=8)),
    "height": ((8,), ("d",), (2, 32, 16, 8), P(None, "d"), (3, 3, 8, 16), P(), (1, 1), "SAME",
               (1, 1), dict(spatial_split=(8, 1))),
    "height_strided": ((8,), ("d",), (2, 64, 16, 8), P(None, "d"), (3, 3, 8, 8), P(), (2, 2),
                       "SAME", (1, 1), dict(spatial_split=(8, 1))),
    "height_5x5_dilated": ((8,), ("d",), (2, 64, 8, 4), P(None, "d"), (5, 5, 4, 4), P(),
                           (1, 1), "SAME", (2, 1), dict(spatial_split=(8, 1))),
    "height_width_2d": ((2, 4), ("h", "w"), (2, 16, 32, 8), P(None, "h", "w"), (3, 3, 8, 8),
                        P(), (1, 1), "SAME", (1, 1), dict(spatial_split=(2, 4))),
    "batch_height_2d": ((2, 4), ("b", "h"), (4, 32, 8, 8), P("b", "h"), (3, 3, 8, 8), P(),
                        (1, 1), "SAME", (1, 1), dict(batch=2, spatial_split=(4, 1))),
    "features": ((8,), ("d",), (4, 16, 16, 8), P(), (3, 3, 8, 32), P(None, None, None, "d"),
                 (1, 1), "SAME", (1, 1), dict(features=8)),
    "batch_features_2d": ((2, 4), ("b", "f"), (8, 16, 16, 8), P("b"), (3, 3, 8, 32),
                          P(None, None, None, "f"), (1, 1), "SAME", (1, 1),
                          dict(batch=2, features=4)),
    "channels": ((8,), ("d",), (4, 16, 16, 32), P(None, None, None, "d"), (3, 3, 32, 8),
                 P(None, None, "d", None), (1, 1), "SAME", (1, 1), dict(channels=8)),
}


def run_case(name: str) -> dict[str, Any]:
    mesh_shape, names, xs, x_spec, ws, w_spec, strides, padding, dil, layout = CASES[name]
    rng = np.random.default_rng(0)  # not jax.random: its programs take seconds to compile
    x, w = (rng.standard_normal(s, np.float32) for s in (xs, ws))
    mesh = jax.make_mesh(mesh_shape, names, axis_types=(AxisType.Explicit,) * len(names))

    def fwd(a: jax.Array, b: jax.Array) -> jax.Array:
        return jconv.conv_general_dilated(a, b, strides, padding, rhs_dilation=dil,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def loss(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
        return jnp.sum(fwd(a, b) * c)

    out: dict[str, Any] = {"x": xs, "w": ws, "strides": strides, "padding": padding,
                           "dilation": dil, "layout": layout}
    with jax.set_mesh(mesh):
        xd = jax.device_put(x, NamedSharding(mesh, x_spec))
        wd = jax.device_put(w, NamedSharding(mesh, w_spec))
        compiled = jax.jit(fwd).lower(xd, wd).compile()
        y = compiled(xd, wd)
        out["fwd"] = collectives(compiled.as_text())
        ct = jax.device_put(rng.standard_normal(y.shape, np.float32), y.sharding)
        grad = jax.grad(loss, argnums=(0, 1))
        compiled = jax.jit(grad).lower(xd, wd, ct).compile()
        gx, gw = compiled(xd, wd, ct)
        out["grad"] = collectives(compiled.as_text())
        out["blocks"] = {"input": xd.addressable_shards[0].data.nbytes,
                         "kernel": wd.addressable_shards[0].data.nbytes,
                         "output": y.addressable_shards[0].data.nbytes}
        out["grad_blocks"] = [gx.addressable_shards[0].data.nbytes,
                              gw.addressable_shards[0].data.nbytes]
    return out


def main(names: list[str]) -> None:
    start = time.perf_counter()
    out = {name: run_case(name) for name in names or CASES}
    out["_seconds"] = time.perf_counter() - start
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
