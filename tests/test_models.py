"""jconv.models against published counts, PyTorch re-definitions and the engine's shapes.

Sources (also in `jconv.models.PUBLISHED`):
- LeNet-5: LeCun, Bottou, Bengio, Haffner, Proc. IEEE 86(11):2278-2324, 1998, Sec. II-B.
- VGG-16, ResNet-50: torchvision model documentation (IMAGENET1K_V1 weights, "num_params"
  and "GFLOPS", which are multiply-adds), https://pytorch.org/vision/stable/models.html.
- MobileNetV1: Howard et al., arXiv:1704.04861 (2017), Table 8: 569M mult-adds, 4.2M params.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import jconv
from jconv import ConvSpec
from jconv.models import (
    MODELS,
    PUBLISHED,
    BatchNorm,
    Conv,
    Dense,
    Depthwise,
    Flatten,
    GlobalPool,
    Network,
    Pool,
    ReLU,
    Residual,
    Separable,
)


def _rounded(value: int, unit: int) -> int:
    return (value + unit // 2) // unit * unit


@pytest.mark.parametrize("name", sorted(MODELS))
def test_published_counts(name: str) -> None:
    """Params and MACs equal the published figures at the precision they were published
    (every model's params; MACs where published: not ResNet-20's, whose paper gives none)."""
    net, pub = MODELS[name](), PUBLISHED[name]
    assert pub["source"] and pub["convention"]
    assert _rounded(net.params(), pub["rounding"]["params"]) == pub["params"]
    assert ("macs" in pub) == (name != "resnet20")
    if "macs" in pub:
        assert _rounded(net.macs(), pub["rounding"]["macs"]) == pub["macs"]


def test_exact_counts_of_torchvision_and_keras_conventions() -> None:
    # torchvision resnet50 / vgg16 num_params (exact); ResNet-50's BN running stats are
    # 53,120 buffers; Keras MobileNet(alpha=1) model.summary(): 4,231,976 trainable,
    # 21,888 non-trainable (BN moving mean/variance).
    assert MODELS["resnet50"]().params() == 25_557_032
    assert MODELS["resnet50"]().params(trainable_only=False) == 25_557_032 + 53_120
    assert MODELS["vgg16"]().params() == 138_357_544
    mobilenet = MODELS["mobilenet_v1"]()
    assert mobilenet.params() == 4_231_976
    assert mobilenet.params(trainable_only=False) - mobilenet.params() == 21_888


def test_lenet5_dense_variant_reconciles_with_the_1998_totals() -> None:
    """60,000 paper parameters -> 61,706 here: only C3, S2, S4 and the output differ."""
    paper = PUBLISHED["lenet5"]["paper"]
    parts = ("c3", "s2", "s4", "output_rbf")
    per_layer = PUBLISHED["lenet5"]["layers"]
    assert paper["params"] == sum(v["params"] for v in per_layer.values()) + sum(
        paper[k]["params"] for k in parts)
    assert paper["connections"] == sum(v["connections"] for v in per_layer.values()) + sum(
        paper[k]["connections"] for k in parts)
    infos = {i.name: i for i in MODELS["lenet5"]().walk()}
    dense_c3, out = infos["c3"].params, infos["output"].params
    assert dense_c3 == 5 * 5 * 6 * 16 + 16 and out == 84 * 10 + 10
    expected = paper["params"] - sum(paper[k]["params"] for k in parts) + dense_c3 + out
    assert MODELS["lenet5"]().params() == expected


def test_lenet5_layers_match_lecun_1998() -> None:
    """C1, C5, F6 of LeCun et al. (1998): parameters and connections (= MACs + bias adds)."""
    infos = {i.name: i for i in MODELS["lenet5"]().walk()}
    for name, pub in PUBLISHED["lenet5"]["layers"].items():
        info = infos[name]
        positions = info.out_shape[1] * info.out_shape[2] if len(info.out_shape) == 4 else 1
        assert info.weights + info.biases == pub["params"]
        assert info.macs + info.biases * positions == pub["connections"]


# ----------------------------------------------------------------------------- PyTorch twins
def _torch_lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
        nn.ReLU(), nn.Linear(84, 10),
    )


def _torch_vgg16() -> nn.Module:
    layers: list[nn.Module] = []
    c = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            assert isinstance(v, int)
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    layers += [nn.Flatten(), nn.Linear(25088, 4096), nn.ReLU(), nn.Linear(4096, 4096),
               nn.ReLU(), nn.Linear(4096, 1000)]
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width),
        )
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != 4 * width:
            self.down = nn.Sequential(nn.Conv2d(cin, 4 * width, 1, stride, bias=False),
                                      nn.BatchNorm2d(4 * width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.main(x) + self.down(x))


def _torch_resnet50() -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            layers.append(_Bottleneck(cin, width, stride if b == 0 else 1))
            cin = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    return nn.Sequential(*layers)


class _Basic(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
        )
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != width:
            self.down = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False),
                                      nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.main(x) + self.down(x))


def _torch_resnet20() -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                               nn.ReLU()]
    cin = 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        for b in range(3):
            layers.append(_Basic(cin, width, stride if b == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def _torch_mobilenet_v1() -> nn.Module:
    def bn_relu(c: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(c), nn.ReLU()]

    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), *bn_relu(32)]
    c = 32
    for f, s in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
                 (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)):
        layers += [nn.Conv2d(c, c, 3, s, 1, groups=c, bias=False), *bn_relu(c),
                   nn.Conv2d(c, f, 1, bias=False), *bn_relu(f)]
        c = f
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000)]
    return nn.Sequential(*layers)


_TORCH = {"lenet5": _torch_lenet5, "vgg16": _torch_vgg16, "resnet20": _torch_resnet20,
          "resnet50": _torch_resnet50, "mobilenet_v1": _torch_mobilenet_v1}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_counts_equal_pytorch_definition(name: str) -> None:
    """Parameters (sum of numel) and FLOPs/2 (FlopCounterMode) of an independent definition."""
    net = MODELS[name]()
    with torch.device("meta"):
        module = _TORCH[name]()
        h, w, c = net.input_shape
        x = torch.empty(2, c, h, w)
        counter = FlopCounterMode(display=False)
        with counter:
            y = module(x)
    assert tuple(y.shape) == net.walk(batch=2)[-1].out_shape
    assert sum(p.numel() for p in module.parameters()) == net.params()
    buffers = sum(b.numel() for n, b in module.named_buffers() if "running" in n)
    assert net.params(trainable_only=False) - net.params() == buffers
    assert counter.get_total_flops() == 2 * net.macs(batch=2)


@functools.cache
def _engine_out_shape(spec: ConvSpec) -> tuple[int, ...]:
    """Output shape of the engine (abstract evaluation) for `spec` with NHWC/HWIO operands."""
    y = jax.eval_shape(
        lambda x, w: jconv.conv_general_dilated(
            x, w, spec.window_strides, spec.padding, spec.lhs_dilation, spec.rhs_dilation,
            ("NHWC", "HWIO", "NHWC"), spec.feature_group_count),
        jax.ShapeDtypeStruct(spec.lhs_shape, jnp.float32),
        jax.ShapeDtypeStruct(spec.rhs_shape, jnp.float32),
    )
    return tuple(y.shape)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_walk_shapes_and_weights_run_through_the_engine(name: str) -> None:
    """Params = sizes of real weight arrays; each conv's shape = the engine's output shape."""
    arrays: dict[tuple[int, ...], jax.Array] = {}
    rng = np.random.default_rng(0)
    total = 0
    for info in MODELS[name]().walk():
        if info.kernel_shape is None:
            total += jnp.asarray(rng.standard_normal(info.bn_params, np.float32)).size
            continue
        if info.kernel_shape not in arrays:  # a real array per distinct shape, reused
            arrays[info.kernel_shape] = jnp.asarray(
                rng.standard_normal(info.kernel_shape, np.float32))
        w = arrays[info.kernel_shape]
        b = jnp.asarray(rng.standard_normal(w.shape[-1], np.float32)) if info.biases else None
        total += w.size + (0 if b is None else b.size)
        if info.kind == "dense":
            x = jax.ShapeDtypeStruct(info.in_shape, jnp.float32)
            out = tuple(jax.eval_shape(jnp.matmul, x, w).shape)
        else:
            assert info.spec is not None and w.shape == info.spec.rhs_shape
            out = _engine_out_shape(info.spec)
        assert out == info.out_shape
        # every output element sums prod(kernel_shape[:-1]) products (window * C_in / groups)
        assert info.macs == math.prod(out) * math.prod(w.shape[:-1])
    assert total == MODELS[name]().params()


def test_small_network_runs_end_to_end() -> None:
    """A network with every layer kind: walked shapes equal shapes of real engine outputs."""
    net = Network("tiny", (9, 9, 4), (
        Conv(6, 3, stride=2, padding="SAME", groups=2), BatchNorm(), ReLU(),
        Depthwise(3, multiplier=2, padding=1, dilation=2), Separable(5, 3, padding="VALID"),
        Residual((Conv(5, 1), ReLU())), Residual((Conv(8, 3),), (Conv(8, 1, bias=False),)),
        Pool("max", 2, stride=1), GlobalPool(), Dense(3),
    ))
    infos = net.walk(batch=2)
    for info in infos:
        if info.spec is not None:
            assert info.kernel_shape is not None
            x = jnp.ones(info.in_shape, jnp.float32)
            w = jnp.ones(info.kernel_shape, jnp.float32)
            y = jconv.conv(x, w, stride=info.spec.window_strides, padding=info.spec.padding,
                           dilation=info.spec.rhs_dilation, groups=info.groups)
            assert y.shape == info.out_shape
    assert [i.kind for i in infos].count("add") == 2
    assert infos[-1].out_shape == (2, 3)
    assert net.params() == sum(i.weights + i.biases + i.bn_params for i in infos)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Conv(0, 3), r"`Conv.filters` \(=0\)"),
        (lambda: Conv(4, 3, groups=3), r"`Conv.filters` \(=4\) must be divisible by `Conv.groups`"),
        (lambda: Conv(4, (3, 0)), r"`Conv.kernel` \(=\(3, 0\)\)"),
        (lambda: Conv(4, 3, padding="FULL"), r"`Conv.padding` \(='FULL'\)"),
        (lambda: Depthwise(3, multiplier=0), r"`Depthwise.multiplier` \(=0\)"),
        (lambda: Pool("min", 2), r"`Pool.kind` \(='min'\)"),
        (lambda: Dense(-1), r"`Dense.units` \(=-1\)"),
        (lambda: Residual(()), r"`Residual.main`"),
        (lambda: Network("x", (0, 3), ()), r"`Network.input_shape`"),
    ],
)
def test_bad_layer_arguments(make: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()  # type: ignore[operator]


def test_each_entry_names_its_layer_and_rule() -> None:
    """Every walked entry points at the layer that produced it and says how it is formed."""
    conv, dw, sep = Conv(6, 3, groups=2), Depthwise(3, multiplier=2), Separable(5, 3)
    pool, gap, dense = Pool("max", 2), GlobalPool(), Dense(3)
    res = Residual((Conv(12, 1), ReLU()), (BatchNorm(),), name="block")
    net = Network("kinds", (8, 8, 4), (conv, dw, sep, pool, Conv(12, 1), res, gap, dense))
    infos = net.walk()
    assert [i.name for i in infos] == [
        "conv0", "depthwise1", "separable2/dw", "separable2/pw", "pool3", "conv4",
        "block/main/conv0", "block/main/relu1", "block/shortcut/batchnorm0", "block/add",
        "globalpool6", "dense7",
    ]
    assert [i.layer for i in infos] == [conv, dw, sep, sep, pool, net.layers[4], res.main[0],
                                        res.main[1], res.shortcut[0], res, gap, dense]
    rules = {i.name: i.rule() for i in infos}
    assert rules["conv0"] == ("sum over C_in/g = 2 per-channel correlations (g = 2 groups)",
                              "nyxijgc,ijgcf->nyxgf")
    assert rules["depthwise1"] == (
        "1 per-channel correlation (depthwise, C_in = 6, m = 2), no sum",
        "nyxijc,ijcm->nyxcm")
    assert rules["separable2/dw"][1] == "nyxijc,ijcm->nyxcm"
    assert rules["separable2/pw"] == ("sum over C_in = 12 per-channel correlations",
                                      "nyxijc,ijcf->nyxf")
    assert rules["dense7"] == ("sum over D_in = 12 inputs", "nd,de->ne")
    assert rules["block/add"] == ("main branch + shortcut, map by map", None)
    for name in ("pool3", "block/main/relu1", "block/shortcut/batchnorm0", "globalpool6"):
        assert rules[name][1] is None and rules[name][0], name
    one_d = Network("1d", (10, 2), (Conv(3, 3), Flatten())).walk()
    assert one_d[0].rule()[1] == "nxic,icf->nxf"
    assert one_d[1].rule() == ("maps laid end to end", None)
    assert Network("3d", (4, 4, 4, 1), (Conv(2, 3),)).walk()[0].rule()[1] == (
        "nzyxijkc,ijkcf->nzyxf")


def test_pool_slides_the_window_of_its_depthwise_spec() -> None:
    spec = Pool("avg", (2, 3), stride=(1, 2), padding=1).spec((2, 5, 7, 3))
    assert spec.window == (2, 3) and spec.window_strides == (1, 2)
    assert spec.padding == ((1, 1), (1, 1)) and spec.feature_group_count == 3
    assert spec.out_shape == (2, 6, 4, 3)
    assert Pool("max", 2).spec((1, 8, 8, 4)).window_strides == (2, 2)  # stride = window


def test_bad_networks_raise_on_walk() -> None:
    with pytest.raises(ValueError, match=r"`Conv.groups` \(=2\) must divide the input channels"):
        Network("g", (8, 8, 3), (Conv(4, 3, groups=2),)).walk()
    with pytest.raises(ValueError, match="must have the same shape"):
        Network("r", (8, 8, 3), (Residual((Conv(4, 3),)),)).walk()
    with pytest.raises(ValueError, match=r"`layers\[1\]` \(='relu'\) is not a jconv.models layer"):
        Network("x", (8, 8, 3), (Conv(4, 3), "relu")).walk()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`Conv.kernel` \(=\(3, 3, 3\)\) must have one entry"):
        Network("k", (8, 8, 3), (Conv(4, (3, 3, 3)),)).walk()
    with pytest.raises(ValueError, match="must have 1 to 3 spatial dimensions"):
        Network("4d", (4, 4, 4, 4, 1), (Conv(2, 3),)).walk()
