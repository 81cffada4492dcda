"""Communication and per-device bytes of a convolution split over devices, in SymPy.

A layout splits the convolution's canonical operands, input ``(N, *spatial, C)``, kernel
``(*window, C/groups, F)`` and output ``(N, *out, F)``, over a device mesh, as jconv runs
explicitly sharded operands (`jax.set_mesh` + `jax.device_put(x, NamedSharding(...))`):

- batch over ``P_b`` devices: no collective forward; backward, the kernel gradient of each
  device's images is summed (one all-reduce of the kernel block's bytes);
- spatial dimension ``i`` over ``P_i`` devices (each device's output block starting where
  its input block does: ``out_i / P_i * s_i == in_i / P_i``): before its convolution, which
  is VALID on that dimension, each device receives the last ``lo_i`` rows of the previous
  device's block and the first ``hi_i`` rows of the next one's (one `ppermute` each way, the
  ends receive zeros); split dimensions exchange in order, each on the block already
  extended along the earlier ones (so the corners travel with the later exchange); backward
  the transposed exchanges send the cotangents of those rows back (the same bytes), and the
  kernel gradient is all-reduced as for the batch;
- output features over ``P_f`` devices: no collective forward; backward the input's
  gradient, a partial sum on every feature device, is all-reduced (the input block's bytes);
- input channels over ``P_c`` devices (one group): each device's output is a partial sum
  over its channels, added by one `psum` forward (the output block's bytes); backward
  nothing (input and kernel blocks are both split over the channels' devices).

Halo widths (one spatial dimension; kernel ``k``, dilation ``d``, stride ``s``, padding
``(p_lo, p_hi)``, input ``i`` over ``D`` devices, block ``b = i / D``, output block
``o = out / D`` with ``o * s == b``): device ``j``'s input block starts at ``j * b`` and its
output rows ``j*o .. (j+1)*o - 1`` read input rows ``j*o*s - p_lo`` to
``((j+1)*o - 1)*s - p_lo + d*(k-1)``, i.e. ``j*b - p_lo`` to ``(j+1)*b - 1 + (d*(k-1)+1 - s
- p_lo)``: the offset ``j * b`` cancels, every device needs ``lo = p_lo`` rows before its
block and ``hi = d*(k-1)+1 - s - p_lo`` after it (a negative width is a crop of its own
block, no exchange: ``max(., 0)`` rows travel).

A device count given as a symbol is taken to be more than one. Bytes are those of one
device's program (the operands of its collectives, as XLA's
compiled HLO prints them; all devices run the same program, the ends exchanging zeros).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sympy as sp

from .geometry import Size, as_size, effective_window, output_size, same_padding

__all__ = ["communication_bytes", "halo_widths", "per_device_bytes", "spatial_split_kept"]


def _pads(i: Size, k: Size, s: Size, d: Size, padding: Any) -> tuple[sp.Expr, sp.Expr]:
    if isinstance(padding, str):
        kind = padding.upper()
        if kind == "VALID":
            return sp.Integer(0), sp.Integer(0)
        if kind in ("SAME", "SAME_LOWER"):
            return same_padding(i, k, s, d, lower=kind == "SAME_LOWER")
        raise ValueError(f"`padding` (={padding!r}) must be 'SAME', 'SAME_LOWER', 'VALID' "
                         "or a (lo, hi) pair.")
    lo, hi = padding
    return as_size(lo, "padding[0]"), as_size(hi, "padding[1]")


def halo_widths(k: Size, s: Size = 1, d: Size = 1, padding: Any = (0, 0),
                i: Size | None = None) -> tuple[sp.Expr, sp.Expr]:
    """Rows one device receives from its previous and next neighbour along a spatial
    dimension split over devices: ``(max(p_lo, 0), max(d*(k-1)+1 - s - p_lo, 0))``, the
    same for every device (see the module's derivation). String paddings need the
    dimension's size ``i``.

    >>> halo_widths(3, 1, 1, (1, 1)), halo_widths(3, 2, 1, "SAME", i=64)
    ((1, 1), (0, 1))
    """
    if isinstance(padding, str) and padding.upper() != "VALID" and i is None:
        raise ValueError(f"`padding` (={padding!r}) needs the dimension's size `i`.")
    lo, _ = _pads(i if i is not None else 1, k, s, d, padding)
    hi = effective_window(k, d) - as_size(s, "s") - lo
    return sp.Max(lo, 0), sp.Max(hi, 0)


def spatial_split_kept(i: Size, k: Size, s: Size, d: Size, padding: Any, devices: Size) -> Any:
    """Whether jconv keeps a split of this spatial dimension over `devices` (exchanging
    halos) rather than gathering it: the input and output sizes divide evenly, each
    device's output block starts where its input block does (``out/D * s == in/D``), and
    the halos are no wider than one block. A SymPy boolean (True/False for numbers)."""
    i_, s_, n = as_size(i, "i"), as_size(s, "s"), as_size(devices, "devices")
    out = output_size(i_, k, s_, padding, d)
    lo, _ = _pads(i_, k, s_, d, padding)
    hi_h = effective_window(k, d) - s_ - lo
    conds = [sp.Eq(sp.Mod(i_, n), 0), sp.Eq(sp.Mod(out, n), 0), sp.Eq(out / n * s_, i_ / n),
             sp.Le(sp.Abs(lo), i_ / n), sp.Le(sp.Abs(hi_h), i_ / n)]
    return sp.And(*conds)


def _seq(value: Any, n: int, name: str) -> tuple[Any, ...]:
    if value is None:
        return (1,) * n
    if isinstance(value, (int, sp.Expr)):
        return (value,) * n
    out = tuple(value)
    if len(out) != n:
        raise ValueError(f"`{name}` (={value!r}) must have one entry per spatial dimension "
                         f"({n}).")
    return out


def _layout(n: Size, spatial: Sequence[Size], c: Size, f: Size, window: Sequence[Size],
            strides: Any, dilation: Any, padding: Any, batch: Size,
            spatial_split: Any, features: Size, channels: Size) -> dict[str, Any]:
    ns = len(spatial)
    if len(window) != ns:
        raise ValueError(f"`window` (={tuple(window)!r}) must have {ns} entries.")
    s, d = _seq(strides, ns, "strides"), _seq(dilation, ns, "dilation")
    pads = [padding] * ns if isinstance(padding, str) else list(padding)
    if len(pads) != ns:
        raise ValueError(f"`padding` (={padding!r}) must have {ns} (lo, hi) pairs.")
    ps = _seq(spatial_split, ns, "spatial_split")
    pb, pf, pc = (as_size(v, name) for v, name in ((batch, "batch"), (features, "features"),
                                                 (channels, "channels")))
    out = [output_size(i, k, si, p, di)
           for i, k, si, p, di in zip(spatial, window, s, pads, d, strict=True)]
    halos = []
    for i, k, si, di, p, pi in zip(spatial, window, s, d, pads, ps, strict=True):
        split = not (isinstance(pi, int) and pi == 1)
        halos.append(halo_widths(k, si, di, p, i) if split else (sp.Integer(0), sp.Integer(0)))
    return {"s": s, "d": d, "pads": pads, "ps": [as_size(p, "spatial_split") for p in ps],
            "pb": pb, "pf": pf, "pc": pc, "out": out, "halos": halos}


def per_device_bytes(n: Size, spatial: Sequence[Size], c: Size, f: Size,
                     window: Sequence[Size], strides: Any = None, dilation: Any = None,
                     padding: Any = "VALID", *, batch: Size = 1, spatial_split: Any = None,
                     features: Size = 1, channels: Size = 1,
                     itemsize: Size = 4) -> dict[str, sp.Expr]:
    """Bytes one device holds: ``input`` (its block of ``(N, *spatial, C)``), ``halo_input``
    (the block extended by the received halo rows, what its convolution reads), ``kernel``
    (its block of the kernel ``(*window, C, F)``, one group) and ``output`` (its block of
    ``(N, *out, F)``), for a layout splitting the batch over `batch` devices, spatial
    dimension ``i`` over ``spatial_split[i]``, the output features over `features` and the
    input channels over `channels`.

    >>> per_device_bytes(16, (32, 32), 8, 16, (3, 3), padding="SAME", batch=8)["input"]
    65536
    """
    lay = _layout(n, spatial, c, f, window, strides, dilation, padding, batch, spatial_split,
                  features, channels)
    nb, cb = as_size(n, "n") / lay["pb"], as_size(c, "c") / lay["pc"]
    fb = as_size(f, "f") / lay["pf"]
    blocks = [as_size(i, "spatial") / p for i, p in zip(spatial, lay["ps"], strict=True)]
    halo = [b + lo + hi for b, (lo, hi) in zip(blocks, lay["halos"], strict=True)]
    outs = [o / p for o, p in zip(lay["out"], lay["ps"], strict=True)]
    it = as_size(itemsize, "itemsize")
    mul = sp.Mul
    return {
        "input": mul(nb, *blocks, cb) * it,
        "halo_input": mul(nb, *halo, cb) * it,
        "kernel": mul(*(as_size(k, "window") for k in window), cb, fb) * it,
        "output": mul(nb, *outs, fb) * it,
    }


def communication_bytes(n: Size, spatial: Sequence[Size], c: Size, f: Size,
                        window: Sequence[Size], strides: Any = None, dilation: Any = None,
                        padding: Any = "VALID", *, batch: Size = 1,
                        spatial_split: Any = None, features: Size = 1, channels: Size = 1,
                        itemsize: Size = 4) -> dict[str, Any]:
    """Bytes one device sends per training step, by collective, for the layout of
    `per_device_bytes` (the mesh axes of different splits are distinct; the batch, each
    split spatial dimension, the features and the channels each on their own devices):

    - ``halos``: per spatial dimension, `halo_widths` (zeros where not split);
    - ``forward``: ``{"collective-permute": halo bytes, "all-reduce": psum of the output's
      partial sums (channel split)}``; halo bytes: for each split dimension in order, its
      ``lo + hi`` rows of the block (earlier split dimensions extended by their halos);
    - ``backward`` (the gradients of input and kernel, the forward's values kept):
      ``{"collective-permute": the same halo bytes (the transposed exchanges), "all-reduce":
      the kernel block's gradient (if the kernel is replicated over the batch's or a split
      spatial dimension's devices) + the input block's gradient (if the input is replicated
      over the features' devices)}``;
    - ``gradient``: the collectives of a program computing only the gradients (the forward's
      halos, which the kernel gradient reads, and ``backward``; the forward's psum feeds
      only the unused loss);
    - ``forward_total``, ``backward_total``, ``step_total``: sums.

    >>> communication_bytes(16, (32, 32), 8, 16, (3, 3), padding="SAME", batch=8)["backward"]
    {'collective-permute': 0, 'all-reduce': 4608}
    """
    lay = _layout(n, spatial, c, f, window, strides, dilation, padding, batch, spatial_split,
                  features, channels)
    blocks = per_device_bytes(n, spatial, c, f, window, strides, dilation, padding,
                              batch=batch, spatial_split=spatial_split, features=features,
                              channels=channels, itemsize=itemsize)
    it = as_size(itemsize, "itemsize")
    nb = as_size(n, "n") / lay["pb"]
    cb = as_size(c, "c") / lay["pc"]
    extents = [as_size(i, "spatial") / p for i, p in zip(spatial, lay["ps"], strict=True)]
    permute = sp.Integer(0)
    for dim, (lo, hi) in enumerate(lay["halos"]):
        rows = lo + hi
        others = [e for j, e in enumerate(extents) if j != dim]
        permute += sp.Mul(nb, rows, *others, cb) * it
        extents[dim] = extents[dim] + lo + hi
    one = sp.Integer(1)

    def replicated(p: sp.Expr) -> sp.Expr:
        """1 if a split over `p` devices leaves an operand replicated there, else 0 (a
        symbolic device count is taken to be more than one)."""
        return sp.Integer(0) if p == one else sp.Integer(1)

    spatial_devices = sp.Mul(*lay["ps"])
    w_replicated = replicated(lay["pb"] * spatial_devices)
    x_replicated = replicated(lay["pf"])
    psum = blocks["output"] * replicated(lay["pc"])
    forward = {"collective-permute": sp.simplify(permute), "all-reduce": sp.simplify(psum)}
    backward = {"collective-permute": sp.simplify(permute),
                "all-reduce": sp.simplify(blocks["kernel"] * w_replicated
                                          + blocks["input"] * x_replicated)}
    gradient = {"collective-permute": sp.simplify(2 * permute),
                "all-reduce": backward["all-reduce"]}
    fwd_total = sp.simplify(sum(forward.values(), sp.Integer(0)))
    bwd_total = sp.simplify(sum(backward.values(), sp.Integer(0)))
    return {"halos": tuple(lay["halos"]), "forward": forward, "backward": backward,
            "gradient": gradient, "forward_total": fwd_total, "backward_total": bwd_total,
            "step_total": sp.simplify(fwd_total + bwd_total)}
