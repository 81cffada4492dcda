"""Flax drop-in: models with jconv convs equal the same models with lax convs, values and grads."""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import jconv


def rel(a: object, b: object) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a64.shape == b64.shape, (a64.shape, b64.shape)
    return float(np.max(np.abs(a64 - b64), initial=0.0) / max(np.max(np.abs(b64), initial=0), 1))


class NnxNet(nnx.Module):
    """Plain, strided, dilated, grouped, CIRCULAR-padded, 1x1 and lhs-dilated convs."""

    def __init__(self, conv: Callable[..., jax.Array], rngs: nnx.Rngs) -> None:
        kw = dict(conv_general_dilated=conv, precision="highest", rngs=rngs)
        self.layers = nnx.List([
            nnx.Conv(3, 8, (3, 3), **kw),
            nnx.Conv(8, 8, (3, 3), strides=2, padding="CIRCULAR", **kw),
            nnx.Conv(8, 8, (2, 3), kernel_dilation=(2, 1), feature_group_count=4,
                     padding="REFLECT", **kw),
            nnx.Conv(8, 6, (3, 3), input_dilation=2, padding=((1, 2), (2, 1)), **kw),
            nnx.Conv(6, 4, (1, 1), use_bias=False, **kw),
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


def _nnx_pair() -> tuple[NnxNet, NnxNet]:
    ref = NnxNet(lax.conv_general_dilated, nnx.Rngs(0))
    mine = NnxNet(jconv.conv_general_dilated, nnx.Rngs(0))
    return ref, mine


def test_nnx_outputs_and_gradients_match_lax() -> None:
    ref, mine = _nnx_pair()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 8, 3)), jnp.float32)

    def loss(m: NnxNet, x: jax.Array) -> jax.Array:
        return (m(x) ** 2).mean()

    assert rel(mine(x), ref(x)) < 1e-5
    grad = nnx.jit(nnx.grad(loss, argnums=(0, 1)))
    g_ref, g_mine = grad(ref, x), grad(mine, x)
    leaves_ref = jax.tree.leaves(g_ref)
    leaves_mine = jax.tree.leaves(g_mine)
    assert len(leaves_ref) == len(leaves_mine) == 10  # 9 parameters and the input
    for a, b in zip(leaves_mine, leaves_ref, strict=True):
        assert rel(a, b) < 1e-4


class LinenNet(nn.Module):
    conv: Callable[..., jax.Array]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(conv_general_dilated=self.conv, precision="highest")
        x = jnp.tanh(nn.Conv(6, (3,), strides=2, padding="CAUSAL", **kw)(x))
        x = jnp.tanh(nn.Conv(6, (4,), kernel_dilation=2, feature_group_count=3, **kw)(x))
        return nn.Conv(2, (3,), padding="VALID", **kw)(x)


def test_linen_outputs_and_gradients_match_lax() -> None:
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 17, 3)), jnp.float32)
    ref, mine = LinenNet(lax.conv_general_dilated), LinenNet(jconv.conv_general_dilated)
    params = ref.init(jax.random.key(0), x)

    def loss(apply: Callable[..., jax.Array], p: object, x: jax.Array) -> jax.Array:
        return (apply(p, x) ** 2).sum()

    assert rel(mine.apply(params, x), ref.apply(params, x)) < 1e-5
    g_ref = jax.grad(loss, argnums=(1, 2))(ref.apply, params, x)
    g_mine = jax.grad(loss, argnums=(1, 2))(mine.apply, params, x)
    for a, b in zip(jax.tree.leaves(g_mine), jax.tree.leaves(g_ref), strict=True):
        assert rel(a, b) < 1e-4


def test_nnx_under_jit() -> None:
    ref, mine = _nnx_pair()
    x = jnp.ones((1, 8, 8, 3), jnp.float32)
    assert rel(nnx.jit(lambda m, x: m(x))(mine, x), ref(x)) < 1e-5


def test_out_sharding_none_is_accepted_and_other_is_applied() -> None:
    x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    y = jconv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, out_sharding=None)
    mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    z = jconv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                   out_sharding=sharding)
    assert isinstance(z.sharding, jax.sharding.NamedSharding) and z.sharding.mesh == mesh
    assert rel(z, y) == 0


@pytest.fixture(scope="module")
def train_digits() -> object:
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_example_learns_quickly(train_digits: object) -> None:
    # optax's Adam mixes Python floats with int32 step counts: not strict-promotion clean
    with jax.numpy_dtype_promotion("standard"):
        result = train_digits.train(epochs=2, seed=1)  # type: ignore[attr-defined]
    assert result.test_accuracy > 0.8  # chance is 0.1
    assert result.seconds < 60
