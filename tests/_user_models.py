"""Models written as a user would write them, for `jconv.explain` tests: a ResNet-18 in Flax
nnx and its linen twin (CIFAR-sized stem for small inputs), a plain function, a scan over
layers, and a ResNet-18 in plain `torch.nn`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen, nnx

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


class BasicBlock(nnx.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(c_in, c_out, (3, 3), strides=stride, padding=1, use_bias=False,
                              rngs=rngs)
        self.bn1 = nnx.BatchNorm(c_out, rngs=rngs)
        self.conv2 = nnx.Conv(c_out, c_out, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(c_out, rngs=rngs)
        self.down = nnx.data(None)
        if stride != 1 or c_in != c_out:
            self.down = nnx.data(nnx.Conv(c_in, c_out, (1, 1), strides=stride,
                                          use_bias=False, rngs=rngs))
            self.down_bn = nnx.BatchNorm(c_out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        short = x if self.down is None else self.down_bn(self.down(x))
        return nnx.relu(y + short)


class ResNet18(nnx.Module):
    def __init__(self, classes: int = 10, *, rngs: nnx.Rngs) -> None:
        self.stem = nnx.Conv(3, 64, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(64, rngs=rngs)
        blocks, c = [], 64
        for width, stride in STAGES:
            blocks += [BasicBlock(c, width, stride, rngs), BasicBlock(width, width, 1, rngs)]
            c = width
        self.blocks = nnx.List(blocks)
        self.fc = nnx.Linear(512, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(axis=(1, 2)))


class LinenBlock(linen.Module):
    c_out: int
    stride: int

    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        norm = functools.partial(linen.BatchNorm, use_running_average=True)
        y = linen.Conv(self.c_out, (3, 3), self.stride, padding=1, use_bias=False)(x)
        y = linen.relu(norm()(y))
        y = norm()(linen.Conv(self.c_out, (3, 3), padding=1, use_bias=False)(y))
        if self.stride != 1 or x.shape[-1] != self.c_out:
            x = norm()(linen.Conv(self.c_out, (1, 1), self.stride, use_bias=False)(x))
        return linen.relu(y + x)


class LinenResNet18(linen.Module):
    classes: int = 10

    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = linen.Conv(64, (3, 3), padding=1, use_bias=False)(x)
        x = linen.relu(linen.BatchNorm(use_running_average=True)(x))
        for width, stride in STAGES:
            x = LinenBlock(width, stride)(x)
            x = LinenBlock(width, 1)(x)
        return linen.Dense(self.classes)(x.mean(axis=(1, 2)))


def resnet18_nnx(seed: int = 0) -> ResNet18:
    return ResNet18(rngs=nnx.Rngs(seed))


def resnet18_linen(x: jax.Array) -> tuple[LinenResNet18, dict]:
    model = LinenResNet18()
    return model, model.init(jax.random.key(0), x)


def small_cnn(params: dict, x: jax.Array) -> jax.Array:
    """A plain function: two convs (lax, NHWC) with biases, a dense head."""
    dn = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_general_dilated(x, params["w1"], (1, 1), "SAME", dimension_numbers=dn)
    y = jax.nn.relu(y + params["b1"].reshape(1, 1, 1, -1))
    y = jax.lax.conv_general_dilated(y, params["w2"], (2, 2), "SAME", dimension_numbers=dn)
    y = jax.nn.relu(y + params["b2"].reshape(1, 1, 1, -1))
    return y.mean(axis=(1, 2)) @ params["w3"] + params["b3"].reshape(1, -1)


def small_params(c_in: int = 3, key: int = 0) -> dict:
    k = jax.random.split(jax.random.key(key), 3)
    return {"w1": 0.1 * jax.random.normal(k[0], (3, 3, c_in, 8)), "b1": jnp.zeros(8),
            "w2": 0.1 * jax.random.normal(k[1], (3, 3, 8, 16)), "b2": jnp.zeros(16),
            "w3": 0.1 * jax.random.normal(k[2], (16, 10)), "b3": jnp.zeros(10)}


def scan_stack(params: dict, x: jax.Array) -> jax.Array:
    """L identical conv layers run by `lax.scan` over stacked weights (L, 3, 3, C, C)."""
    dn = ("NHWC", "HWIO", "NHWC")

    def layer(h: jax.Array, wb: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        w, b = wb
        h = jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=dn)
        return jax.nn.relu(h + b.reshape(1, 1, 1, -1)), None

    y, _ = jax.lax.scan(layer, x, (params["w"], params["b"]))
    return y


def scan_params(depth: int = 4, c: int = 8) -> dict:
    w = 0.1 * jax.random.normal(jax.random.key(1), (depth, 3, 3, c, c))
    return {"w": w, "b": jnp.zeros((depth, c))}


def torch_resnet18(classes: int = 10):
    """ResNet-18 in plain torch.nn (no torchvision), CIFAR stem."""
    import torch.nn as tnn

    class Block(tnn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = tnn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(c_out)
            self.conv2 = tnn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(c_out)
            self.relu = tnn.ReLU()
            self.down = None
            if stride != 1 or c_in != c_out:
                self.down = tnn.Sequential(tnn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                           tnn.BatchNorm2d(c_out))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + (x if self.down is None else self.down(x)))

    class Net(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU()
            layers, c = [], 64
            for width, stride in STAGES:
                layers += [Block(c, width, stride), Block(width, width, 1)]
                c = width
            self.layers = tnn.Sequential(*layers)
            self.pool = tnn.AdaptiveAvgPool2d(1)
            self.fc = tnn.Linear(512, classes)

        def forward(self, x):
            x = self.layers(self.relu(self.bn(self.stem(x))))
            return self.fc(self.pool(x).flatten(1))

    return Net()
