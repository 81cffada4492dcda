"""Whole networks: jconv against `jax.lax.conv_general_dilated` (and PyTorch CPU), forward
and training step.

    python benchmarks/networks.py            # writes benchmarks/results/networks.{json,md}
    python benchmarks/networks.py --quick    # 3 repetitions: results/networks_quick.*
    python benchmarks/networks.py --only resnet18 --tune all --layers   # and each conv alone
    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python benchmarks/networks.py --no-tune --no-torch --out networks_2dev  # a 2-device host

Five networks, each written once as plain JAX functions of a params pytree that take the
convolution as an argument (the conv hook, lax's signature): ResNet-18 (basic blocks,
batch 8 at 112x112), ResNet-50 (bottlenecks, batch 4 at 64x64), ResNet-20 for CIFAR-10
(16-64 channels, 1x1 projections, batch 128 at 32x32), MobileNetV1 (width 1.0, batch 8 at
112x112) and M5, a 1-D CNN over raw audio (batch 8 x 16000 samples). Every
layout is channels-last, batch normalisation uses the batch's statistics (written in
jnp, the same in every variant), padding is PyTorch's (symmetric), so the same weights give
the same loss in PyTorch.

Each network runs with four convolutions: lax; jconv with ``strategy="auto"`` (the cost
model's picks); jconv "tuned", after `jconv.tune(train_step, *args)` has timed every
candidate lowering of each of the step's convolutions here and `jconv.tune` of the forward
pass has judged their undifferentiated picks, which the step does not run (into a fresh
tuning cache per network, so "auto" is always the cost model; the time tuning took is
reported; by default ResNet-50 only, `TUNED`); and a
`torch.nn` copy of the network (channels-last, same weights), timed on its own with
``OMP_WAIT_POLICY=PASSIVE`` like `run.py`. The forward is ``logits = net(params, x)``; the
training step is the value and gradient of the mean softmax cross-entropy and an optax SGD
update with momentum 0.9, all jitted. The JAX variants are compiled once (their compiled
temporaries, ``memory_analysis().temp_size_in_bytes``, are reported), warmed up and timed
alternately in one process; ratios are ratios of medians against lax. Every step starts from
the same parameters and a zero momentum, so its momentum output is the gradient: jconv's
logits, loss and gradients are checked against lax's (relative norm, `TOL`; gradients
that differ more are compared with float64, `F64_FACTOR`, and where that fails replayed in
float64 with the same lowerings, `F64_REPLAY`), and PyTorch's against lax's.
Off the CPU, where JAX's default matmul precision is lower than float32 (TF32 on NVIDIA
GPUs, bfloat16 passes on TPUs), the values checked come from the same programs compiled at
``jax.default_matmul_precision("highest")`` (`CHECK_PRECISION`), so that the tolerances
measure jconv rather than the tensor cores' rounding; the timed programs keep the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import pathlib
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from run import cpu_name, fwd_bwd, matmul_flops, rel_err, timed

import jconv
from jconv import _tune_cache

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
Conv = Callable[..., jax.Array]
Params = dict[str, Any]
LR = 1e-2
MOMENTUM = 0.9
TOL = 1e-4
F64_FACTOR = 10.0
"""Deep networks with batch norm amplify float32 round-off in their gradients (the
backward of each norm cancels most of its cotangent): where jconv's gradient differs from
lax's by more than `TOL`, both are compared with the float64 gradient, and jconv passes if
its error is within this factor of lax's own."""
F64_REPLAY = 1e-9
"""Where jconv's float32 gradient fails `F64_FACTOR`, the same lowerings are run in float64
(`replayed_grad`): within this of lax's float64 gradient, they compute the network's
function, and the float32 difference is rounding the network amplifies (PyTorch's float32
gradient differs as much there), not a mismatch."""
VARIANTS = ("lax", "auto", "tuned")
TUNED = ("resnet50",)
"""The networks tuned by default: tuning compiles every candidate lowering of every
distinct convolution, forward and with gradients (about 1-3 s per candidate on 2 busy
cores): ResNet-50's 101 candidates take 3-5 minutes; ``--tune all`` adds 2-3 minutes each
for ResNet-18 (45) and MobileNetV1 (94), about one for M5 (18)."""
TUNE_REPS = 2


# ----------------------------------------------------------------------------- layers

def conv_nd(conv: Conv, x: jax.Array, w: jax.Array, stride: int = 1, pad: int = 0,
            groups: int = 1) -> jax.Array:
    """`x` (N, *spatial, C) convolved with `w` (*window, C // groups, F) by the hook `conv`,
    stride and symmetric zero padding `pad` on every spatial axis: (N, *out, F)."""
    ns = x.ndim - 2
    sp = "HW" if ns == 2 else "W"
    return conv(x, w, (stride,) * ns, ((pad, pad),) * ns,
                dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
                feature_group_count=groups)


def batch_norm(p: Params, x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Batch normalisation of (N, *spatial, C) by the batch's statistics (biased variance,
    as PyTorch's training mode), then ``* weight + bias``."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axes, keepdims=True)
    scale = (lax.rsqrt(var + eps) * p["weight"].reshape(var.shape))
    return (x - mean) * scale + p["bias"].reshape(var.shape)


def max_pool(x: jax.Array, k: int, stride: int, pad: int = 0) -> jax.Array:
    """Max pooling of (N, *spatial, C), window `k`, padding `pad` with -inf."""
    ns = x.ndim - 2
    return lax.reduce_window(x, -jnp.inf, lax.max,
                             (1, *(k,) * ns, 1), (1, *(stride,) * ns, 1),
                             ((0, 0), *((pad, pad),) * ns, (0, 0)))


def conv_bn(conv: Conv, p: Params, name: str, x: jax.Array, stride: int = 1, pad: int = 0,
            groups: int = 1, relu: bool = True) -> jax.Array:
    """``relu(bn(conv(x)))`` with ``p[name]`` the kernel and ``p[name + "_bn"]`` the norm."""
    y = batch_norm(p[name + "_bn"], conv_nd(conv, x, p[name]["weight"], stride, pad, groups))
    return jax.nn.relu(y) if relu else y


def head(p: Params, x: jax.Array) -> jax.Array:
    """Global average pool of (N, *spatial, C) and the linear classifier: (N, classes)."""
    pooled = jnp.mean(x, tuple(range(1, x.ndim - 1)))
    return pooled @ p["fc"]["weight"] + p["fc"]["bias"][None]


# ----------------------------------------------------------------------------- networks

@dataclasses.dataclass(frozen=True)
class Net:
    """One network: its hyper-parameters, input shape (N, *spatial, C) and class count.

    kind "resnet": `blocks` per stage, `bottleneck` blocks or basic ones, stem `width`;
    "cifar_resnet": the same stages after a 3x3 stem and no pooling (He et al. 2016, 4.2);
    "mobilenet": `separable` blocks' (output channels, stride), `width` multiplies every
    channel count; "m5": `width` channels in the first layers (Dai et al. 2017)."""

    name: str
    kind: str
    x: tuple[int, ...]
    classes: int
    width: float = 64
    blocks: tuple[int, ...] = ()
    bottleneck: bool = False
    separable: tuple[tuple[int, int], ...] = ()

    @property
    def label(self) -> str:
        return f"{self.x[0]} x {'x'.join(map(str, self.x[1:-1]))} x {self.x[-1]}"


MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
                    (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
"""MobileNetV1 (Howard et al. 2017, Table 1): output channels and stride of each
depthwise-separable block, after a 3x3/2 stem of 32 channels."""

NETWORKS = (
    Net("resnet18", "resnet", (8, 112, 112, 3), 1000, 64, (2, 2, 2, 2)),
    Net("resnet50", "resnet", (4, 64, 64, 3), 1000, 64, (3, 4, 6, 3), bottleneck=True),
    Net("resnet20", "cifar_resnet", (128, 32, 32, 3), 10, 16, (3, 3, 3)),
    Net("mobilenet_v1", "mobilenet", (8, 112, 112, 3), 1000, 1.0, separable=MOBILENET_V1),
    Net("audio_m5", "m5", (8, 16000, 1), 35, 128),
)
SMOKE = (
    Net("resnet18", "resnet", (2, 16, 16, 3), 10, 4, (1, 1)),
    Net("resnet50", "resnet", (2, 16, 16, 3), 10, 4, (1,), bottleneck=True),
    Net("resnet20", "cifar_resnet", (2, 8, 8, 3), 10, 4, (1, 1)),
    Net("mobilenet_v1", "mobilenet", (2, 16, 16, 3), 10, 0.25, separable=((16, 1), (32, 2))),
    Net("audio_m5", "m5", (2, 1200, 1), 5, 8),
)
"""Tiny versions of `NETWORKS` (fewer stages and blocks, narrow, small inputs), every
path of each kind kept (stem, pooling, strided blocks and projections, depthwise blocks)."""


def layers(net: Net) -> list[tuple[str, tuple[int, ...], int, int, int]]:
    """The network's convolutions in order: ``(name, kernel shape (*window, C/g, F), stride,
    pad, groups)``; names are paths into the params (blocks' names joined by '.')."""
    out: list[tuple[str, tuple[int, ...], int, int, int]] = []
    if net.kind in ("resnet", "cifar_resnet"):
        w = int(net.width)
        out.append(("conv1", (7, 7, 3, w), 2, 3, 1) if net.kind == "resnet"
                   else ("conv1", (3, 3, 3, w), 1, 1, 1))
        cin = w
        for s, n in enumerate(net.blocks):
            c = w * 2**s
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                pre = f"layers.{s}.{b}"
                if net.bottleneck:
                    cout = 4 * c
                    out += [(f"{pre}.conv1", (1, 1, cin, c), 1, 0, 1),
                            (f"{pre}.conv2", (3, 3, c, c), stride, 1, 1),
                            (f"{pre}.conv3", (1, 1, c, cout), 1, 0, 1)]
                else:
                    cout = c
                    out += [(f"{pre}.conv1", (3, 3, cin, c), stride, 1, 1),
                            (f"{pre}.conv2", (3, 3, c, c), 1, 1, 1)]
                if stride != 1 or cin != cout:
                    out.append((f"{pre}.proj", (1, 1, cin, cout), stride, 0, 1))
                cin = cout
    elif net.kind == "mobilenet":
        def ch(c: int) -> int:
            return max(8, int(c * net.width))
        out.append(("conv1", (3, 3, 3, ch(32)), 2, 1, 1))
        cin = ch(32)
        for i, (c, stride) in enumerate(net.separable):
            out += [(f"blocks.{i}.dw", (3, 3, 1, cin), stride, 1, cin),
                    (f"blocks.{i}.pw", (1, 1, cin, ch(c)), 1, 0, 1)]
            cin = ch(c)
    elif net.kind == "m5":
        w = int(net.width)
        out += [("conv1", (80, 1, w), 4, 0, 1), ("conv2", (3, w, w), 1, 1, 1),
                ("conv3", (3, w, 2 * w), 1, 1, 1), ("conv4", (3, 2 * w, 4 * w), 1, 1, 1)]
    else:
        raise ValueError(f"`net.kind` (={net.kind!r}) must be 'resnet', 'cifar_resnet', "
                         "'mobilenet' or 'm5'.")
    return out


def init(net: Net, seed: int = 0) -> Params:
    """Parameters of `net`: He-normal kernels, unit norm scales, zero biases, a small-normal
    classifier; nested dicts (lists of blocks as string-indexed dicts) of float32 arrays."""
    rng = np.random.default_rng(seed)
    params: Params = {}

    def put(path: str, leaf: dict[str, np.ndarray]) -> None:
        node = params
        for part in path.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[path.split(".")[-1]] = leaf

    cout = 0
    for name, shape, _, _, _ in layers(net):
        fan_in = math.prod(shape[:-1])
        cout = shape[-1]
        put(name, {"weight": (rng.standard_normal(shape) * math.sqrt(2 / fan_in)
                              ).astype(np.float32)})
        put(name + "_bn", {"weight": np.ones(cout, np.float32),
                           "bias": np.zeros(cout, np.float32)})
    params["fc"] = {
        "weight": (rng.standard_normal((cout, net.classes)) / math.sqrt(cout)).astype(np.float32),
        "bias": np.zeros(net.classes, np.float32)}
    return jax.device_put(params)


class JaxOps:
    """The layers of `forward` in JAX: params `params`, every convolution by the hook
    `conv` (lax's signature), batch norm and pooling in jnp."""

    def __init__(self, net: Net, conv: Conv, params: Params) -> None:
        self.convs = {name: (stride, pad, groups) for name, _, stride, pad, groups in layers(net)}
        self.conv, self.params = conv, params

    def conv_bn(self, path: str, x: jax.Array, relu: bool = True) -> jax.Array:
        """``relu(bn(conv(x)))`` of the layer at `path`."""
        parent, _, leaf = path.rpartition(".")
        p = self.params
        for part in parent.split(".") if parent else ():
            p = p[part]
        return conv_bn(self.conv, p, leaf, x, *self.convs[path], relu=relu)

    def max_pool(self, x: jax.Array, k: int, stride: int, pad: int = 0) -> jax.Array:
        return max_pool(x, k, stride, pad)

    def add_relu(self, x: jax.Array, y: jax.Array) -> jax.Array:
        return jax.nn.relu(x + y)

    def head(self, x: jax.Array) -> jax.Array:
        return head(self.params, x)


def forward(net: Net, ops: Any, x: Any) -> Any:
    """Logits (N, classes) of `net` on `x` (N, *spatial, C), with the layers of `ops`
    (`JaxOps`, or `torch_net`'s for PyTorch): the one definition of each network."""
    names = {name for name, *_ in layers(net)}
    if net.kind in ("resnet", "cifar_resnet"):
        x = ops.conv_bn("conv1", x)
        if net.kind == "resnet":
            x = ops.max_pool(x, 3, 2, 1)
        for s, n in enumerate(net.blocks):
            for b in range(n):
                pre = f"layers.{s}.{b}"
                convs = ("conv1", "conv2", "conv3") if net.bottleneck else ("conv1", "conv2")
                y = x
                for i, nm in enumerate(convs):
                    y = ops.conv_bn(f"{pre}.{nm}", y, relu=i < len(convs) - 1)
                short = ops.conv_bn(f"{pre}.proj", x, relu=False) if f"{pre}.proj" in names else x
                x = ops.add_relu(y, short)
    elif net.kind == "mobilenet":
        x = ops.conv_bn("conv1", x)
        for i in range(len(net.separable)):
            x = ops.conv_bn(f"blocks.{i}.pw", ops.conv_bn(f"blocks.{i}.dw", x))
    else:
        for i in range(1, 5):
            x = ops.max_pool(ops.conv_bn(f"conv{i}", x), 4, 4)
    return ops.head(x)


def apply(net: Net, conv: Conv, params: Params, x: jax.Array) -> jax.Array:
    """Logits (N, classes) of `net` on `x` (N, *spatial, C), every convolution by `conv`."""
    return forward(net, JaxOps(net, conv, params), x)


def loss_fn(net: Net, conv: Conv, params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of `net`'s logits on `x` against labels `y` (N,)."""
    logits = apply(net, conv, params, x)
    picked = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


OPTIMIZER = optax.sgd(LR, momentum=MOMENTUM)


def train_step(net: Net, conv: Conv) -> Callable[..., tuple[Params, Any, jax.Array]]:
    """``step(params, opt_state, x, y) -> (params, opt_state, loss)``: value and gradient
    of `loss_fn`, then an SGD update with momentum (from a zero momentum, the new momentum
    is the gradient: `gradient`)."""
    def step(params: Params, opt_state: Any, x: jax.Array,
             y: jax.Array) -> tuple[Params, Any, jax.Array]:
        loss, grads = jax.value_and_grad(lambda p: loss_fn(net, conv, p, x, y))(params)
        updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


def gradient(opt_state: Any) -> Params:
    """The momentum of `opt_state`: the gradient, after one step from a zero momentum."""
    return optax.tree_utils.tree_get(opt_state, "trace")


def reference_grad(net: Net, params: Params, x: jax.Array, y: jax.Array) -> Params:
    """The gradient of `loss_fn` computed in float64 with lax (as float64 NumPy arrays)."""
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
        grad = jax.jit(jax.grad(lambda p, a: loss_fn(net, lax_conv, p, a, y)))(
            p64, np.asarray(x, np.float64))
        return jax.tree_util.tree_map(np.asarray, grad)


def replay_picks(net: Net, params: Params, x: jax.Array, y: jax.Array, tuned: bool
                 ) -> dict[str, dict[str, str]]:
    """The lowerings jconv's float32 step runs for each of its convolutions and their input
    gradients, in every role (the tuning cache's where `tuned`, else the cost model's), as
    tuning-cache entries under the float64 keys: `_tune_cache.overlay` makes a float64 step
    run them."""
    with jconv.planner.recording() as calls:
        jax.make_jaxpr(jax.grad(lambda p: loss_fn(net, jconv_conv, p, x, y)))(params)
    specs = {s for s, _, _ in calls} | {s.input_gradient() for s, _, _ in calls}
    f32 = jnp.float32
    return {_tune_cache.key(s, jnp.float64, False): {
        "forward": jconv.planner.plan(s, f32, tuned=tuned),
        "differentiated": jconv.planner.plan(s, f32, differentiated=True, tuned=tuned),
        "input_gradient": jconv.planner.plan(s, f32, input_gradient=True, tuned=tuned)}
        for s in specs}


def replayed_grad(net: Net, params: Params, x: jax.Array, y: jax.Array, tuned: bool
                  ) -> Params:
    """The gradient of `loss_fn` in float64 with jconv running the float32 step's lowerings
    (`replay_picks`), as float64 NumPy arrays."""
    picks = replay_picks(net, params, x, y, tuned)
    with jax.enable_x64(True), _tune_cache.overlay(picks):
        p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
        grad = jax.jit(jax.grad(lambda p, a: loss_fn(net, jconv_conv, p, a, y)))(
            p64, np.asarray(x, np.float64))
        return jax.tree_util.tree_map(np.asarray, grad)


def inputs(net: Net, seed: int = 1) -> tuple[jax.Array, jax.Array]:
    """Standard-normal inputs (N, *spatial, C) and random labels (N,)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(net.x).astype(np.float32)
    return jax.device_put(x), jax.device_put(rng.integers(0, net.classes, net.x[0]))


# ----------------------------------------------------------------------------- conv hooks

def lax_conv(*args: Any, **kwargs: Any) -> jax.Array:
    return lax.conv_general_dilated(*args, **kwargs)


def jconv_conv(*args: Any, **kwargs: Any) -> jax.Array:
    return jconv.conv_general_dilated(*args, strategy="auto", **kwargs)


def jconv_tuned(*args: Any, **kwargs: Any) -> jax.Array:
    """jconv's auto, traced after tuning (a distinct function, so nothing is reused from the
    traces made before the tuning cache was filled)."""
    return jconv.conv_general_dilated(*args, strategy="auto", **kwargs)


HOOKS: dict[str, Conv] = {"lax": lax_conv, "auto": jconv_conv, "tuned": jconv_tuned}


@dataclasses.dataclass
class Compiled:
    """One variant's compiled forward and training step, their temp bytes and compile
    seconds, and the outputs checked: logits, loss and gradient."""

    forward: Any
    step: Any
    temp_bytes: dict[str, int]
    compile_s: float
    logits: np.ndarray
    loss: float
    grad: Params


def temp_bytes(compiled: Any) -> int:
    """The compiled program's temporaries (`memory_analysis().temp_size_in_bytes`)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        raise ValueError("this backend gives no memory analysis of compiled programs.")
    return int(analysis.temp_size_in_bytes)


CHECK_PRECISION = "highest"
"""`jax.default_matmul_precision` of the programs whose outputs are checked, off the CPU."""


def checks_apart() -> bool:
    """Whether the outputs checked come from programs compiled apart, at `CHECK_PRECISION`:
    off the CPU, whose default precision is already float32's."""
    return jax.default_backend() != "cpu"


def compile_variant(net: Net, conv: Conv, params: Params, opt_state: Any, x: jax.Array,
                    y: jax.Array) -> Compiled:
    """Compile `net`'s forward and training step with the hook `conv` and run each once
    (off the CPU, the outputs checked come from the programs compiled again at
    `CHECK_PRECISION`)."""
    def compile_both() -> tuple[Any, Any]:
        return (jax.jit(lambda p, a: apply(net, conv, p, a)).lower(params, x).compile(),
                jax.jit(train_step(net, conv)).lower(params, opt_state, x, y).compile())

    t0 = time.perf_counter()
    fwd, step = compile_both()
    compile_s = time.perf_counter() - t0
    temps = {"forward": temp_bytes(fwd), "train": temp_bytes(step)}
    check_fwd, check_step = fwd, step
    if checks_apart():
        with jax.default_matmul_precision(CHECK_PRECISION):
            check_fwd, check_step = compile_both()
    logits = np.asarray(check_fwd(params, x))
    _, state, loss = check_step(params, opt_state, x, y)
    return Compiled(fwd, step, temps, compile_s, logits, float(loss),
                    jax.device_get(gradient(state)))


# ----------------------------------------------------------------------------- PyTorch

def to_torch_layout(a: np.ndarray) -> np.ndarray:
    """A JAX leaf in PyTorch's layout: kernels (*window, I, O) -> (O, I, *window), the
    classifier (in, out) -> (out, in)."""
    if a.ndim >= 2:
        return np.ascontiguousarray(a.transpose(a.ndim - 1, a.ndim - 2, *range(a.ndim - 2)))
    return a


def from_torch_layout(a: np.ndarray) -> np.ndarray:
    """The inverse of `to_torch_layout`."""
    if a.ndim >= 2:
        return np.ascontiguousarray(a.transpose(*range(2, a.ndim), 1, 0))
    return a


def leaf_names(params: Params) -> dict[str, np.ndarray]:
    """``{"layers.0.1.conv1.weight": array, ...}``: PyTorch's parameter names."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {".".join(str(k.key) for k in path): np.asarray(v) for path, v in flat}


def torch_net(net: Net, params: Params) -> Any:
    """`net` as a `torch.nn.Module` (train mode, batch statistics, channels-last for 2-D)
    holding `params`; its parameters have the names of `leaf_names(params)`."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    two_d = len(net.x) == 4
    conv_cls: Any
    conv_cls, bn_cls, pool_cls = ((nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if two_d
                                  else (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d))

    class Ops(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, shape, stride, pad, groups in layers(net):
                parent: nn.Module = self
                *path, leaf = name.split(".")
                for part in path:
                    if part not in parent._modules:
                        parent.add_module(part, nn.ModuleDict())
                    parent = parent.get_submodule(part)
                cout, cin = shape[-1], shape[-2] * groups
                parent.add_module(leaf, conv_cls(cin, cout, shape[:-2], stride, pad,
                                                 groups=groups, bias=False))
                parent.add_module(leaf + "_bn", bn_cls(cout, track_running_stats=False))
            self.fc = nn.Linear(params["fc"]["weight"].shape[0], net.classes)

        def conv_bn(self, path: str, x: Any, relu: bool = True) -> Any:
            mod = self.get_submodule(path)
            y = self.get_submodule(path + "_bn")(mod(x))
            return torch.relu(y) if relu else y

        def max_pool(self, x: Any, k: int, stride: int, pad: int = 0) -> Any:
            return pool_cls(k, stride, pad)(x)

        def add_relu(self, x: Any, y: Any) -> Any:
            return torch.relu(x + y)

        def head(self, x: Any) -> Any:
            return self.fc(x.mean(dim=tuple(range(2, x.ndim))))

        def forward(self, x: Any) -> Any:
            return forward(net, self, x)

    model: Any = Ops()
    ours = leaf_names(params)
    theirs = dict(model.named_parameters())
    if set(ours) != set(theirs):
        raise ValueError(f"PyTorch's parameters {sorted(set(theirs) ^ set(ours))} differ "
                         "from the JAX network's.")
    with torch.no_grad():
        for name, p in theirs.items():
            p.copy_(torch.from_numpy(np.array(to_torch_layout(ours[name]))))
    return model.to(memory_format=torch.channels_last) if two_d else model


def torch_thunks(net: Net, params: Params, x: jax.Array, y: jax.Array
                 ) -> tuple[Callable[[], Any], Callable[[], Any], float, Params]:
    """PyTorch's forward and training-step thunks for `net` with `params`, and its loss and
    gradient (JAX's layouts) of one step from `params`."""
    import torch
    import torch.nn.functional as tf

    model = torch_net(net, params)
    xt = torch.from_numpy(np.array(x).transpose(0, x.ndim - 1, *range(1, x.ndim - 1)))
    if x.ndim == 4:
        xt = xt.contiguous(memory_format=torch.channels_last)
    else:
        xt = xt.contiguous()
    yt = torch.from_numpy(np.array(y)).long()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss = tf.cross_entropy(model(xt), yt)
    loss.backward()
    grads = {n: from_torch_layout(p.grad.numpy().copy()) for n, p in model.named_parameters()}
    ref = leaf_names(params)
    grad_tree = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(params), [grads[n] for n in ref])
    model.zero_grad(set_to_none=True)

    def fwd() -> Any:
        with torch.no_grad():
            return model(xt)

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        out = tf.cross_entropy(model(xt), yt)
        out.backward()
        opt.step()
        return out

    return fwd, step, loss.item(), grad_tree


# ----------------------------------------------------------------------------- benchmark

def fresh_tune_cache(path: pathlib.Path) -> None:
    """Point jconv's tuning cache at `path` (a new file: "auto" plans by the cost model)."""
    os.environ["JCONV_TUNE_CACHE"] = str(path)
    _tune_cache.reload()


def conv_label(spec: jconv.ConvSpec) -> str:
    """``(N, *in, C) * (*window, C_g, F)`` with stride and groups where they are not 1."""
    text = f"{spec.lhs_shape} * {spec.rhs_shape}"
    if spec.strided:
        text += f" s={spec.window_strides[0]}"
    if spec.groups > 1:
        text += f" g={spec.groups}"
    return text


def distinct_convs(step: Callable[..., Any], *args: Any) -> list[tuple[Any, Any, int]]:
    """``(spec, dtype, count)`` of each distinct ``strategy="auto"`` convolution of `step`
    (traced, not run), in the order the step first calls them."""
    with jconv.planner.recording() as calls:
        jax.make_jaxpr(step)(*args)
    counts: dict[Any, int] = {}
    for spec, dtype, _ in calls:
        counts[spec, dtype] = counts.get((spec, dtype), 0) + 1
    return [(spec, dtype, n) for (spec, dtype), n in counts.items()]


def plans(step: Callable[..., Any], *args: Any) -> list[dict[str, Any]]:
    """Each distinct ``strategy="auto"`` convolution of `step` (`distinct_convs`): its
    label, how many times the step calls it and the lowerings planned for it (forward, and
    values and gradients when differentiated)."""
    return [plan_row(*c) for c in distinct_convs(step, *args)]


def plan_row(spec: jconv.ConvSpec, dtype: Any, count: int) -> dict[str, Any]:
    """A convolution's label, count and planned lowerings (forward, differentiated)."""
    return {"conv": conv_label(spec), "count": count,
            "forward": jconv.planner.plan(spec, dtype),
            "differentiated": jconv.planner.plan(spec, dtype, differentiated=True)}


def layer_times(net: Net, reps: int, budget_s: float) -> list[dict[str, Any]]:
    """Each distinct convolution of `net`'s training step alone, jconv's auto against lax:
    forward, and forward with the pullback of the squared error's cotangent to input and
    kernel (`fwd_bwd`, what a layer does in training), median ms of alternate runs; with
    its count and lowerings (`plans`)."""
    params, (x, y) = init(net), inputs(net)
    convs = distinct_convs(train_step(net, jconv_conv), params, OPTIMIZER.init(params), x, y)
    return [plan_row(*c) | _time_layer(c[0], reps, budget_s) for c in convs]


def _time_layer(spec: jconv.ConvSpec, reps: int, budget_s: float) -> dict[str, float]:
    sp = "HW" if len(spec.lhs_shape) == 4 else "W"
    kw: dict[str, Any] = dict(window_strides=spec.window_strides, padding=spec.padding,
                              dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
                              feature_group_count=spec.feature_group_count)
    rng = np.random.default_rng(0)
    a, b, ct = (jax.device_put(rng.standard_normal(s).astype(np.float32))
                for s in (spec.lhs_shape, spec.rhs_shape, spec.out_shape))

    def ref(a: jax.Array, b: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(a, b, **kw)

    def ours(a: jax.Array, b: jax.Array) -> jax.Array:
        return jconv.conv_general_dilated(a, b, **kw)

    tf = timed([functools.partial(f, a, b) for f in (jax.jit(ref), jax.jit(ours))], reps,
               budget_s)
    tt = timed([functools.partial(g, a, b, ct) for g in (fwd_bwd(ref), fwd_bwd(ours))], reps,
               budget_s)
    return {"lax_fwd_ms": 1e3 * tf[0], "auto_fwd_ms": 1e3 * tf[1],
            "lax_train_ms": 1e3 * tt[0], "auto_train_ms": 1e3 * tt[1]}


def bench_net(net: Net, reps: int, budget_s: float, tune: bool, torch_col: bool,
              cache_dir: pathlib.Path, tune_reps: int = TUNE_REPS,
              per_layer: bool = False, max_temps: float = 1.05) -> dict[str, Any]:
    """Compile, check and time `net`'s forward and training step with every variant
    (`VARIANTS`, "tuned" only if `tune`; PyTorch if `torch_col`); a JSON-able record.
    "auto" plans with an empty tuning cache; tuning fills ``cache_dir/<name>.json``,
    where picks already stored are reused without timing (`max_temps`: `jconv.tune`'s).
    `per_layer`: add `layer_times` (``rec["layers"]``)."""
    params = init(net)
    x, y = inputs(net)
    opt_state = OPTIMIZER.init(params)
    fresh_tune_cache(cache_dir / f"{net.name}.model.json")  # never written: the cost model
    rec: dict[str, Any] = {
        "network": net.name, "input": net.label, "classes": net.classes,
        "params_m": sum(a.size for a in jax.tree_util.tree_leaves(params)) / 1e6,
        "convs": plans(train_step(net, jconv_conv), params, opt_state, x, y)}
    comp = {v: compile_variant(net, HOOKS[v], params, opt_state, x, y) for v in VARIANTS[:2]}
    if per_layer:
        rec["layers"] = layer_times(net, reps, budget_s)
    if tune:
        fresh_tune_cache(cache_dir / f"{net.name}.json")
        t0 = time.perf_counter()
        report = jconv.tune(train_step(net, jconv_conv), params, opt_state, x, y,
                            reps=tune_reps, progress=False, max_temps=max_temps)
        # the step runs no undifferentiated convolution: the forward pass judges those picks
        forward = jconv.tune(functools.partial(apply, net, jconv_conv), params, x,
                             reps=tune_reps, progress=False, max_temps=max_temps)
        rec["tune_s"] = time.perf_counter() - t0
        # each check's tuned picks kept, of those the program runs that moved
        rec["tune_kept"] = {phase: [len(r.moved) - len(r.dropped), len(r.moved)]
                            for phase, r in (("train", report), ("forward", forward))}
        # each whole-program check: ms and MiB with the cost model's picks, then tuned
        rec["tune_check"] = {
            phase: None if r.program_seconds is None or r.program_temp_bytes is None else
            [1e3 * r.program_seconds[0], 1e3 * r.program_seconds[1],
             r.program_temp_bytes[0] / 2**20, r.program_temp_bytes[1] / 2**20]
            for phase, r in (("train", report), ("forward", forward))}
        picks = {conv_label(c.spec): c for c in report.convs}
        for row in rec["convs"]:
            c = picks[row["conv"]]
            row["tuned_forward"], row["tuned_differentiated"] = c.forward, c.differentiated
            row["tune_ms"] = {n: [1e3 * t for t in ts] for n, ts in c.seconds.items()}
        comp["tuned"] = compile_variant(net, HOOKS["tuned"], params, opt_state, x, y)
    ref = comp["lax"]
    rec["rel_err"] = {v: {"logits": rel_err(c.logits, ref.logits),
                          "loss": abs(c.loss - ref.loss) / abs(ref.loss),
                          "grad": rel_err(c.grad, ref.grad)}
                      for v, c in comp.items() if v != "lax"}
    rec["loss"] = ref.loss
    if any(e["grad"] > TOL for e in rec["rel_err"].values()):  # lax itself may be that far off
        exact = reference_grad(net, params, x, y)
        f64 = rec["grad_err_f64"] = {v: rel_err(c.grad, exact) for v, c in comp.items()}
        over = [v for v in comp if v != "lax" and f64[v] > max(TOL, F64_FACTOR * f64["lax"])]
        if over:  # the same lowerings in float64: exact, or a mismatch
            rec["grad_err_f64_replay"] = {v: rel_err(replayed_grad(
                net, params, x, y, tuned=v == "tuned"), exact) for v in over}
    rec["compile_s"] = {v: c.compile_s for v, c in comp.items()}
    names = list(comp)
    fwd_t = timed([functools.partial(c.forward, params, x) for c in comp.values()], reps,
                  budget_s)
    step_t = timed([functools.partial(c.step, params, opt_state, x, y) for c in comp.values()],
                   reps, budget_s)
    for phase, ts in (("forward", fwd_t), ("train", step_t)):
        rec[phase] = {
            "ms": {v: 1e3 * t for v, t in zip(names, ts, strict=True)},
            "temp_mb": {v: c.temp_bytes[phase] / 2**20 for v, c in comp.items()}}
    if torch_col:
        fwd, step, loss, grad = torch_thunks(net, params, x, y)
        rec["rel_err"]["torch"] = {"loss": abs(loss - ref.loss) / abs(ref.loss),
                                   "grad": rel_err(grad, ref.grad)}
        if "grad_err_f64" in rec:
            rec["grad_err_f64"]["torch"] = rel_err(grad, exact)
        # timed on its own: its idle OpenMP threads would slow the next thunk
        rec["forward"]["ms"]["torch"] = 1e3 * timed([fwd], reps, budget_s)[0]
        rec["train"]["ms"]["torch"] = 1e3 * timed([step], reps, budget_s)[0]
    return rec


def mismatches(rec: dict[str, Any]) -> list[str]:
    """The variants of `rec` whose outputs differ from lax's: logits or loss by more than
    `TOL`, or the gradient by more than `TOL` and, against the float64 gradient, by more
    than `F64_FACTOR` times lax's own error, unless the same lowerings run in float64 give
    that gradient to `F64_REPLAY` (PyTorch: the loss only)."""
    bad = []
    for v, errs in rec["rel_err"].items():
        if v == "torch":
            ok = errs["loss"] <= TOL
        else:
            f64 = rec.get("grad_err_f64", {})
            ok = errs["logits"] <= TOL and errs["loss"] <= TOL and (
                errs["grad"] <= TOL
                or f64.get(v, math.inf) <= max(TOL, F64_FACTOR * f64.get("lax", 0.0))
                or rec.get("grad_err_f64_replay", {}).get(v, math.inf) <= F64_REPLAY)
        if not ok:
            bad.append(f"{rec['network']} {v}")
    return bad


# ----------------------------------------------------------------------------- writers

COLUMNS = ("network", "phase", "lax ms", "jconv auto ms (ratio)", "jconv tuned ms (ratio)",
           "torch ms (ratio)", "temps lax MB", "jconv auto MB (ratio)",
           "jconv tuned MB (ratio)")


def _with_ratio(value: float | None, base: float, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f} ({value / base:.2f})"


def markdown(meta: dict[str, Any], recs: list[dict[str, Any]]) -> str:
    """The results as Markdown: the timing table, then one row per network (sizes,
    compile and tuning seconds, errors against lax)."""
    lines = [
        f"Machine: {meta['machine']}; jax {meta['jax']}"
        + (f", torch {meta['torch']}" if meta.get("torch") else "")
        + f"; float32; matmul {meta['matmul_gflops']:.0f} GFLOP/s; up to {meta['reps']} "
        "alternating reps per timing after 2 warm-ups (at least 3, fewer than asked where a "
        f"round takes over {meta['budget_s'] / meta['reps']:.1f} s); ratio = median / median "
        "lax. "
        "Forward: logits; train: loss, gradients and an SGD-momentum update. Temps: "
        "compiled temporaries (`memory_analysis().temp_size_in_bytes`).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in recs:
        for phase, label in (("forward", "forward"), ("train", "train step")):
            ms, mb = r[phase]["ms"], r[phase]["temp_mb"]
            lines.append("| " + " | ".join([
                r["network"], label, f"{ms['lax']:.1f}",
                _with_ratio(ms["auto"], ms["lax"], 1),
                _with_ratio(ms.get("tuned"), ms["lax"], 1),
                _with_ratio(ms.get("torch"), ms["lax"], 1),
                f"{mb['lax']:.1f}", _with_ratio(mb["auto"], mb["lax"], 1),
                _with_ratio(mb.get("tuned"), mb["lax"], 1)]) + " |")
    head = ("network", "input (N x spatial x C)", "params (M)", "distinct convs",
            "compile s (lax/auto/tuned)", "tuning s", "err auto", "err tuned",
            "err torch loss", "err torch grad", "grad err vs float64 (lax/auto/tuned/torch)")
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in recs:
        err = {v: f"{max(e.values()):.1e}" for v, e in r["rel_err"].items()}
        torch_err = r["rel_err"].get("torch")
        lines.append("| " + " | ".join([
            r["network"], r["input"], f"{r['params_m']:.2f}", str(len(r["convs"])),
            "/".join(f"{s:.0f}" for s in r["compile_s"].values()),
            f"{r['tune_s']:.0f}{kept_note(r['tune_kept'])}" if "tune_s" in r else "-",
            err.get("auto", "-"), err.get("tuned", "-"),
            f"{torch_err['loss']:.1e}" if torch_err else "-",
            f"{torch_err['grad']:.1e}" if torch_err else "-",
            "/".join(f"{e:.1e}" for e in r["grad_err_f64"].values())
            if "grad_err_f64" in r else "-"]) + " |")
    lines += [
        "",
        "Errors are relative to lax (`||a - b|| / ||b||` over all leaves); jconv: the largest "
        "of logits, loss and gradients; PyTorch: same weights and inputs. Where a gradient "
        "differs from lax's by more than 1e-4, every variant's gradient is compared with "
        "lax's in float64 (last column).",
    ]
    for r in recs:
        for v, e in r.get("grad_err_f64_replay", {}).items():
            f64 = r["grad_err_f64"]
            lines += ["", f"{r['network']} {v}: its float32 gradient is {f64[v]:.1e} from the "
                      f"float64 gradient (lax's {f64['lax']:.1e}); the same lowerings run in "
                      f"float64 give it to {e:.1e}"
                      + (": float32 rounding, which the network amplifies."
                         if e <= F64_REPLAY else ": a mismatch.")]
    for r in recs:
        if "layers" in r:
            lines += ["", *layer_markdown(r)]
    return "\n".join(lines) + "\n"


def kept_note(kept: dict[str, list[int]]) -> str:
    """How many of the tuned picks that moved `jconv.tune` kept, for the step and the
    forward pass (`TuneReport.moved`, `TuneReport.dropped`), where it left some out."""
    notes = [f"{phase}: {n} of {moved} kept" for phase, (n, moved) in kept.items() if n < moved]
    return f" ({'; '.join(notes)})" if notes else ""


def layer_markdown(rec: dict[str, Any]) -> list[str]:
    """`rec`'s per-convolution times (`layer_times`) as Markdown lines, with totals."""
    head = ("convolution", "count", "lowering (fwd/grad)", "lax fwd ms", "jconv fwd ms",
            "lax f+b ms", "jconv f+b ms", "f+b ratio")
    lines = [f"Convolutions of {rec['network']} alone (median ms of one call; totals x count):",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total = dict.fromkeys(("lax_fwd_ms", "auto_fwd_ms", "lax_train_ms", "auto_train_ms"), 0.0)
    for c in rec["layers"]:
        for k in total:
            total[k] += c["count"] * c[k]
        low = c["forward"] if c["forward"] == c["differentiated"] else (
            f"{c['forward']}/{c['differentiated']}")
        lines.append("| " + " | ".join([
            c["conv"], str(c["count"]), low, f"{c['lax_fwd_ms']:.2f}", f"{c['auto_fwd_ms']:.2f}",
            f"{c['lax_train_ms']:.2f}", f"{c['auto_train_ms']:.2f}",
            f"{c['auto_train_ms'] / c['lax_train_ms']:.2f}"]) + " |")
    ratio = total["auto_train_ms"] / total["lax_train_ms"]
    lines.append("| total x count | | | " + " | ".join(f"{t:.1f}" for t in total.values())
                 + f" | {ratio:.2f} |")
    return lines


def write_results(meta: dict[str, Any], recs: list[dict[str, Any]],
                  base: pathlib.Path) -> None:
    """Write `base`.json (meta and records) and `base`.md (`markdown`)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps({"meta": meta, "networks": recs},
                                                    indent=1))
    base.with_suffix(".md").write_text(markdown(meta, recs))


def torch_version() -> str | None:
    """PyTorch's version if it is importable, else None (its column is left out)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="run only networks whose name contains this")
    ap.add_argument("--reps", type=int, default=None, help="alternating repetitions")
    ap.add_argument("--quick", action="store_true", help="3 repetitions")
    ap.add_argument("--tune", default=",".join(TUNED),
                    help="networks to tune, comma-separated, or 'all' (default: %(default)s)")
    ap.add_argument("--no-tune", action="store_true", help="leave out the tuned variant")
    ap.add_argument("--tune-cache", default=None,
                    help="folder of the tuning caches (<network>.json; picks found there are "
                         "reused untimed); default: a new temporary folder")
    ap.add_argument("--max-temps", type=float, default=1.05,
                    help="jconv.tune's max_temps: the temporaries a tuned program may keep, "
                         "times the cost model's (default: %(default)s)")
    ap.add_argument("--no-torch", action="store_true", help="leave out PyTorch")
    ap.add_argument("--smoke", action="store_true", help="tiny networks, 1 repetition")
    ap.add_argument("--layers", action="store_true",
                    help="also time each distinct convolution alone (jconv auto vs lax)")
    ap.add_argument("--out", default=None,
                    help="basename in benchmarks/results/ (an absolute path: written there)")
    a = ap.parse_args(argv)
    reps = a.reps if a.reps is not None else 1 if a.smoke else 3 if a.quick else 7
    if reps < 1:
        ap.error(f"--reps={reps}: must be at least 1")
    nets = [n for n in (SMOKE if a.smoke else NETWORKS) if a.only in n.name]
    if not nets:
        ap.error(f"--only={a.only!r}: no network's name contains it "
                 f"({', '.join(n.name for n in NETWORKS)})")
    budget_s = 0.5 if a.smoke else 3.0 if a.quick else 6.0
    tv = None if a.no_torch else torch_version()
    meta: dict[str, Any] = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores ({platform.machine()}, "
                   f"{platform.system()}), jax device {jax.devices()[0].platform}: "
                   f"{jax.devices()[0].device_kind}"
                   + (f" x {jax.device_count()} (operands on one)" if jax.device_count() > 1
                      else ""),
        "jax": jax.__version__, "torch": tv, "reps": reps, "budget_s": budget_s,
        "tune_max_temps": a.max_temps,
        "matmul_gflops": matmul_flops(3, 256 if a.smoke else 2048, 1) / 1e9,
        "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    base = RESULTS / (a.out or ("networks_smoke" if a.smoke else
                                "networks_quick" if a.quick else "networks"))
    recs: list[dict[str, Any]] = []
    bad: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = pathlib.Path(a.tune_cache or tmp)
        for net in nets:
            t0 = time.perf_counter()
            tune = not a.no_tune and (a.tune == "all" or net.name in a.tune.split(","))
            rec = bench_net(net, reps, budget_s, tune=tune, torch_col=tv is not None,
                            cache_dir=cache_dir, per_layer=a.layers, max_temps=a.max_temps)
            recs.append(rec)
            bad += mismatches(rec)
            f, t = rec["forward"]["ms"], rec["train"]["ms"]
            print(f"{net.name:14s} fwd lax {f['lax']:.1f} ms auto {f['auto'] / f['lax']:.2f}"
                  + (f" tuned {f['tuned'] / f['lax']:.2f}" if "tuned" in f else "")
                  + f" | train lax {t['lax']:.1f} ms auto {t['auto'] / t['lax']:.2f}"
                  + (f" tuned {t['tuned'] / t['lax']:.2f}" if "tuned" in t else "")
                  + (f" (tuning {rec['tune_s']:.0f}s)" if "tune_s" in rec else "")
                  + f" [{time.perf_counter() - t0:.0f}s]", flush=True)
            write_results(meta, recs, base)  # after every network: a cut run keeps its rows
    print(markdown(meta, recs))
    if bad:
        raise SystemExit("outputs differ from lax's beyond tolerance: " + ", ".join(bad))


if __name__ == "__main__":
    main()
