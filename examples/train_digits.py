"""Train a small CNN on scikit-learn's bundled 8x8 digits with jconv convolutions.

Flax's ``nnx.Conv`` takes the convolution as an argument, so jconv drops in unchanged:
``nnx.Conv(..., conv_general_dilated=jconv.conv_general_dilated)``. No download: the data
ships with scikit-learn. Run ``python examples/train_digits.py [--epochs N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jconv


class Result(NamedTuple):
    test_accuracy: float
    seconds: float
    epochs: int


class CNN(nnx.Module):
    """``(N, 8, 8, 1) -> (N, 10)``: two 3x3 convs (16 and 32 maps, the second strided), a dense."""

    def __init__(self, conv_fn: Callable[..., jax.Array], *, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(1, 16, (3, 3), conv_general_dilated=conv_fn, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), strides=2, conv_general_dilated=conv_fn, rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.conv1(x))
        x = nnx.relu(self.conv2(x))
        return self.head(x.reshape(x.shape[0], -1))


def load(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as ``(N, 8, 8, 1)`` float32 in [0, 1], split 75/25, stratified."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    return x_tr, x_te, y_tr, y_te


def train(
    epochs: int = 12,
    seed: int = 0,
    conv_fn: Callable[..., jax.Array] = jconv.conv_general_dilated,
    batch_size: int = 32,
) -> Result:
    """Train with Adam and return the test accuracy and the wall time (data load included)."""
    start = time.perf_counter()
    x_tr, x_te, y_tr, y_te = load(seed)
    model = CNN(conv_fn, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    def loss_fn(m: CNN, x: jax.Array, y: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @nnx.jit
    def step(m: CNN, opt: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        loss, grads = nnx.value_and_grad(loss_fn)(m, x, y)
        opt.update(m, grads)
        return loss

    @nnx.jit
    def predict(m: CNN, x: jax.Array) -> jax.Array:
        return jnp.argmax(m(x), axis=-1)

    rng = np.random.default_rng(seed)
    steps = len(x_tr) // batch_size  # drop the ragged last batch: one compiled shape
    for _ in range(epochs):
        order = rng.permutation(len(x_tr))
        for b in range(steps):
            idx = order[b * batch_size : (b + 1) * batch_size]
            step(model, optimizer, jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx]))
    accuracy = float(np.mean(np.asarray(predict(model, jnp.asarray(x_te))) == y_te))
    return Result(accuracy, time.perf_counter() - start, epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = train(args.epochs, args.seed)
    print(
        f"digits CNN with jconv convs: test accuracy {result.test_accuracy:.4f} after "
        f"{result.epochs} epochs in {result.seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
