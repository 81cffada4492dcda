"""A `torch.nn.Module` as a `jconv._trace.TracedProgram`, with `torch.fx`.

`torch.fx.symbolic_trace` gives the module graph; `ShapeProp` on meta tensors (no
computation, no memory) gives every node's input shape. Conv1d/2d/3d become their
`ConvSpec` (PyTorch's NC... / OI... layouts; a transposed conv as the lhs-dilated conv it
is: stride 1, ``lhs_dilation = stride``, pads ``d*(k-1) - p`` and ``+ output_padding``),
Linear a dense layer, every other module holding parameters (BatchNorm, LayerNorm,
Embedding, ...) a group of its own. Parameters are `named_parameters()`; batch-norm running
mean and variance are the statistics.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from ._spec import ConvSpec
from ._trace import Leaf, TracedLayer, TracedProgram, TraceError

__all__ = ["trace_torch"]


def _pairs(padding: Any, k: tuple[int, ...], d: tuple[int, ...]) -> Any:
    if isinstance(padding, str):
        return padding.upper()
    return tuple((int(p), int(p)) for p in padding)


def _conv_spec(mod: Any, shape: tuple[int, ...]) -> ConvSpec:
    import torch.nn as tnn

    n = len(shape) - 2
    k, s, d = tuple(mod.kernel_size), tuple(mod.stride), tuple(mod.dilation)
    g = mod.groups
    if isinstance(mod, tnn.modules.conv._ConvTransposeNd):
        p, a = tuple(mod.padding), tuple(mod.output_padding)
        pads = tuple((di * (ki - 1) - pi, di * (ki - 1) - pi + ai)
                     for ki, pi, ai, di in zip(k, p, a, d, strict=True))
        rhs = (mod.out_channels, mod.in_channels // g, *k)
        return ConvSpec.from_lax(shape, rhs, (1,) * n, pads, s, d, None, g)
    rhs = tuple(mod.weight.shape)
    return ConvSpec.from_lax(shape, rhs, s, _pairs(mod.padding, k, d), None, d, None, g)


def trace_torch(model: Any, *inputs: Any) -> TracedProgram:
    """Trace `model` on `inputs` (tensors or shapes) into layers; no computation."""
    import torch
    import torch.nn as tnn
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    if not isinstance(model, tnn.Module):
        raise TraceError(f"`model` (={type(model).__name__}) must be a torch.nn.Module")
    try:
        gm = symbolic_trace(model)
    except Exception as e:
        raise TraceError(f"torch.fx could not trace {type(model).__name__}: "
                         f"{type(e).__name__}: {e}") from e
    meta = copy.deepcopy(gm).to("meta")
    shapes = [tuple(x.shape) if hasattr(x, "shape") else tuple(x) for x in inputs]
    args = [torch.empty(sh, device="meta") for sh in shapes]
    try:
        ShapeProp(meta).propagate(*args)
    except Exception as e:
        raise TraceError(f"running {type(model).__name__} on meta inputs {shapes} failed: "
                         f"{type(e).__name__}: {e}") from e
    leaves: list[Leaf] = []
    index: dict[str, int] = {}
    for name, p in model.named_parameters():
        index[name] = len(leaves)
        leaves.append(Leaf(len(leaves), tuple(name.split(".")), tuple(p.shape),
                           str(p.dtype).removeprefix("torch."), "params", True))
    for name, b in model.named_buffers():
        coll = "stats" if name.split(".")[-1] in ("running_mean", "running_var") else "other"
        index[name] = len(leaves)
        leaves.append(Leaf(len(leaves), tuple(name.split(".")), tuple(b.shape),
                           str(b.dtype).removeprefix("torch."), coll, True))
    modules = dict(model.named_modules())
    layers: list[TracedLayer] = []
    seen: set[str] = set()
    for order, node in enumerate(meta.graph.nodes):
        if node.op != "call_module":
            continue
        mod = modules.get(node.target)
        if mod is None:
            continue
        arg = node.args[0] if node.args else None
        meta_in = getattr(arg, "meta", {}).get("tensor_meta")
        in_shape = tuple(meta_in.shape) if meta_in is not None else ()
        own = [f"{node.target}.{n}" for n, _ in mod.named_parameters(recurse=False)]
        bufs = [f"{node.target}.{n}" for n, _ in mod.named_buffers(recurse=False)]
        first = node.target not in seen
        seen.add(node.target)
        if isinstance(mod, tnn.modules.conv._ConvNd):
            spec = _conv_spec(mod, in_shape)
            kind = "conv_transpose" if isinstance(mod, tnn.modules.conv._ConvTransposeNd) \
                else ("depthwise" if mod.groups > 1 and spec.group_in_features == 1 else "conv")
            layer = TracedLayer(kind, node.target, 1, spec=spec, in_shape=spec.lhs_shape,
                                out_shape=spec.canonical_out_shape, kernel_shape=spec.rhs_shape,
                                weight=index[f"{node.target}.weight"] if first else None,
                                where="torch", order=order)
            if first and mod.bias is not None:
                layer.biases.append(index[f"{node.target}.bias"])
        elif isinstance(mod, tnn.Linear):
            rows = math.prod(in_shape[:-1]) if in_shape else 1
            layer = TracedLayer("dense", node.target, 1, in_shape=(rows, mod.in_features),
                                out_shape=(rows, mod.out_features),
                                kernel_shape=(mod.in_features, mod.out_features),
                                weight=index[f"{node.target}.weight"] if first else None,
                                dense=(rows, mod.in_features, mod.out_features), order=order)
            if first and mod.bias is not None:
                layer.biases.append(index[f"{node.target}.bias"])
        elif own or bufs:
            if not first:
                continue
            kind = "norm" if isinstance(mod, tnn.modules.batchnorm._NormBase | tnn.LayerNorm |
                                        tnn.GroupNorm) else (
                "embedding" if isinstance(mod, tnn.Embedding) else "param")
            layer = TracedLayer(kind, node.target, 1, order=order,
                                others=[index[n] for n in own + bufs
                                        if leaves[index[n]].collection != "other"])
        else:
            continue
        layers.append(layer)
    for layer in layers:
        for j in ([layer.weight] if layer.weight is not None else []) + layer.biases:
            leaves[j].used_as = "weight" if j == layer.weight else "bias"
    title = type(model).__name__
    return TracedProgram(layers, leaves, None, [], None, "torch", title,  # type: ignore[arg-type]
                         [tuple(s) for s in shapes])
