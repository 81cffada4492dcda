"""Data-parallel training with jconv convolutions in Flax nnx, over 8 devices.

The batch is split over the devices (explicit sharding: `jax.set_mesh` and a
`NamedSharding`), the parameters replicated; jconv reads the operands' shardings while
tracing and runs each device's share of every convolution in `shard_map`: no collective
forward, and backward the one all-reduce of each kernel's gradient. The same training runs
on one device, and the script checks that the loss curves are equal (float32 tolerance).

Run ``python examples/train_sharded.py [--steps N] [--devices D]``. On a machine with fewer
devices than asked, simulated CPU devices stand in (``XLA_FLAGS=
--xla_force_host_platform_device_count=D``, set here before JAX is imported unless the
environment sets a device count already).
"""

from __future__ import annotations

import argparse
import os
import sys

_devices = 8
for _i, _arg in enumerate(sys.argv):  # the device count, before JAX is imported
    if _arg == "--devices" and _i + 1 < len(sys.argv):
        _devices = int(sys.argv[_i + 1])
    elif _arg.startswith("--devices="):
        _devices = int(_arg.split("=", 1)[1])
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                        f"--xla_force_host_platform_device_count={_devices}"])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jconv  # noqa: E402


class CNN(nnx.Module):
    """``(N, 16, 16, 3) -> (N, 10)``: two 3x3 jconv convolutions (the second strided), a
    global average pool and a dense layer."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        conv = jconv.conv_general_dilated
        self.conv1 = nnx.Conv(3, 16, (3, 3), conv_general_dilated=conv, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), strides=2, conv_general_dilated=conv, rngs=rngs)
        self.head = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.conv1(x))
        x = nnx.relu(self.conv2(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed random images, labelled by a fixed random linear map of their pooled pixels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16, 16, 3), np.float32)
    teacher = rng.standard_normal((16 * 16 * 3, 10), np.float32)
    return x, np.argmax(x.reshape(n, -1) @ teacher, axis=1).astype(np.int32)


@nnx.jit
def train_step(model: CNN, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    def loss_fn(model: CNN) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def train(x: jax.Array, y: jax.Array, steps: int, sharding: NamedSharding | None) -> list[float]:
    """Losses of `steps` SGD steps from the same initial parameters; with `sharding`, the
    parameters are replicated on its mesh."""
    model = CNN(rngs=nnx.Rngs(0))
    if sharding is not None:
        state = nnx.state(model)
        nnx.update(model, jax.device_put(state, sharding))
    optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)
    return [float(train_step(model, optimizer, x, y)) for _ in range(steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    d = args.devices
    if jax.device_count() < d:
        sys.exit(f"{jax.device_count()} devices, {d} asked: set XLA_FLAGS before running.")
    x, y = data(args.batch)

    single = train(jnp.asarray(x), jnp.asarray(y), args.steps, None)

    mesh = jax.make_mesh((d,), ("data",), axis_types=(AxisType.Explicit,),
                         devices=jax.devices()[:d])
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        ys = jax.device_put(y, NamedSharding(mesh, P("data")))
        sharded = train(xs, ys, args.steps, NamedSharding(mesh, P()))

    print(f"{'step':>4}  {'1 device':>10}  {f'{d} devices':>10}")
    for i, (a, b) in enumerate(zip(single, sharded, strict=True)):
        print(f"{i:>4}  {a:>10.6f}  {b:>10.6f}")
    same = np.allclose(sharded, single, rtol=1e-4, atol=1e-6)
    worst = max(abs(a - b) / abs(a) for a, b in zip(single, sharded, strict=True))
    print(f"data parallel over {d} devices ({jax.devices()[0].platform}): loss curve "
          f"{'equal to' if same else 'DIFFERENT from'} one device's "
          f"(largest relative difference {worst:.1e})")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
