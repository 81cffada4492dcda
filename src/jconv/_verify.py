"""The numeric half of `jconv explain`: run walked layers on random data and check them.

Every conv entry runs in full through the einsum engine; the check "each output map is the
**sum** of its per-input-channel correlations, not their average" recomputes each correlation
separately with the engine, on one channel and one filter (vmapped), for up to ``check_maps``
evenly spaced output maps (the first and the last included). Other entries (pool, dense,
batch norm, ...) run as plain `jax.numpy` / `lax.reduce_window` for their measured shapes.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import models
from ._engine import conv_general_dilated
from ._report import Check, LayerRow
from ._spec import ConvSpec, canonical_layouts

__all__ = ["DEFAULT_BUDGET", "Measured", "SkippedCheck", "Verifier", "engine_conv",
           "estimate_bytes"]

DEFAULT_BUDGET = 2 << 30  # bytes one layer's verification may use


class SkippedCheck(Exception):
    """A layer whose verification would not fit in the memory budget (not a failure)."""


def estimate_bytes(spec: ConvSpec, maps: int, itemsize: int, batch: int | None = None) -> int:
    """Bytes the verification of `spec` needs with `maps` checked maps on `batch` images:
    input, kernel, output, the gathered per-channel inputs and correlations (float32
    accumulators), and the engine's widest intermediate (window patches)."""
    n = spec.batch if batch is None else batch
    n_out = n // spec.batch_group_count
    cg = spec.group_in_features
    in_px = n * math.prod(spec.in_spatial)
    out_px = n_out * math.prod(spec.out_spatial)
    pairs = maps * cg
    arrays = in_px * spec.in_features + math.prod(spec.rhs_shape) + 2 * out_px * spec.out_features
    per_channel = pairs * (in_px + out_px)
    patches = out_px * spec.taps * spec.in_features
    return itemsize * (arrays + per_channel) + 4 * (pairs * out_px + patches)

# relative tolerance of the sum-over-channels check: |y - sum| <= tol * max|sum|
_TOL = {"float64": 1e-10, "float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


@dataclass(frozen=True)
class Measured:
    """What one run produced: the output's shape, size and bytes; for a conv, the checked
    maps ``ys`` and the sums of their per-channel correlations ``total``, both
    ``(maps, N, *out)``."""

    shape: tuple[int, ...]
    size: int
    nbytes: int
    ys: np.ndarray | None = None
    total: np.ndarray | None = None
    maps: int = 0
    sliced: str = ""  # why only a slice ran (batch cut to fit the memory budget)


class Verifier:
    """Runs walked layers on random data of `dtype` and compares them with their formulas.

    `measure` (thread-safe, one NumPy generator per layer) runs the arrays; `checks` compares
    a measurement with a layer's formulas. A float64 run turns 64-bit types on for its own
    thread and only while it runs (`jax.enable_x64`).
    """

    def __init__(self, dtype: str, check_maps: int, seed: int = 0,
                 memory_budget: int = DEFAULT_BUDGET) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"`seed` (={seed!r}) must be an integer >= 0.")
        self.dtype = dtype
        self.check_maps = check_maps
        self.seed = seed
        self.memory_budget = memory_budget

    def plan(self, spec: ConvSpec) -> tuple[int, tuple[int, ...], str]:
        """(batch, maps, note) that fit the memory budget: the whole layer if it fits, else
        one image and fewer maps; `SkippedCheck` when not even one map of one image fits."""
        itemsize = np.dtype(self.dtype).itemsize if self.dtype != "bfloat16" else 2
        maps = self._maps(spec)
        need = estimate_bytes(spec, len(maps), itemsize)
        if need <= self.memory_budget:
            return spec.batch, maps, ""
        batch = spec.batch_group_count
        for k in (len(maps), 4, 1):
            few = maps if k == len(maps) else _spaced(spec.out_features, k)
            small = estimate_bytes(spec, len(few), itemsize, batch)
            if small <= self.memory_budget:
                return batch, few, (f"verified on {batch} image(s) and {len(few)} map(s): the "
                                    f"whole layer needs ~{_gib(need)}, over the "
                                    f"{_gib(self.memory_budget)} verification budget")
        raise SkippedCheck(f"skipped: verifying this layer needs ~{_gib(need)} (one image: "
                           f"~{_gib(small)}), over the {_gib(self.memory_budget)} "
                           "verification budget")

    def measure(self, key: tuple[int, int], info: models.LayerInfo) -> Measured:
        """Run `info` on data drawn from the generator seeded ``(seed, *key)``."""
        x64 = jax.enable_x64(True) if self.dtype == "float64" else contextlib.nullcontext()
        with x64:
            return self._measure(np.random.default_rng([self.seed, *key]), info)

    def _measure(self, rng: np.random.Generator, info: models.LayerInfo) -> Measured:
        def rand(shape: tuple[int, ...]) -> jax.Array:
            return jnp.asarray(rng.standard_normal(shape, dtype="float32").astype(self.dtype))

        spec = info.spec
        if spec is None:
            elements = math.prod(info.in_shape)
            if elements * 8 > self.memory_budget:
                raise SkippedCheck(f"skipped: its input alone is ~{_gib(elements * 8)}, over "
                                   f"the {_gib(self.memory_budget)} verification budget")
            y = _reference_layer(info, rand(info.in_shape), rand)
            return Measured(tuple(y.shape), int(y.size), int(y.nbytes))
        batch, maps, note = self.plan(spec)
        return self.run(spec, rand((batch, *info.in_shape[1:])), rand(spec.rhs_shape), maps,
                        note)

    def run(self, spec: ConvSpec, x: jax.Array, w: jax.Array, maps: tuple[int, ...],
            note: str = "") -> Measured:
        """The layer `spec` (channels last) on `x` (its batch may be a slice) and `w`."""
        if x.shape[0] != spec.batch:
            spec = ConvSpec.from_lax(
                x.shape, spec.rhs_shape, spec.window_strides, spec.padding, spec.lhs_dilation,
                spec.rhs_dilation, canonical_layouts(spec.num_spatial),
                spec.feature_group_count, spec.batch_group_count)
        acc = "float64" if self.dtype == "float64" else "float32"
        y, ys, total = _conv_and_channel_sums(x, w, spec=spec, maps=maps, acc=acc)
        return Measured(tuple(y.shape), int(y.size), int(y.nbytes), np.asarray(ys),
                        np.asarray(total), len(maps), note)

    def checks(self, m: Measured, row: LayerRow, spec: ConvSpec | None) -> list[Check]:
        """Shape, element count and bytes; for a conv (`spec`) also the sum checks."""
        elems, nbytes = row.quantities["out_elements"].value, row.quantities["out_bytes"].value
        if m.sliced:
            out = [Check("shape", list(row.out_shape), list(m.shape), None, m.sliced)]
        else:
            out = [
                Check("shape", list(row.out_shape), list(m.shape), m.shape == row.out_shape),
                Check("elements", elems, m.size, m.size == elems),
                Check("bytes", nbytes, m.nbytes, m.nbytes == nbytes),
            ]
        if spec is not None and m.ys is not None and m.total is not None:
            out += self._sum_checks(m.ys, m.total, spec, m.maps)
        return out

    def _maps(self, spec: ConvSpec) -> tuple[int, ...]:
        """All output maps, or `check_maps` evenly spaced ones (first and last included)."""
        return _spaced(spec.out_features, self.check_maps)

    def _sum_checks(self, ys: np.ndarray, total: np.ndarray, spec: ConvSpec,
                    n_maps: int) -> list[Check]:
        cg = spec.group_in_features
        scale = max(float(np.abs(total).max()), float(np.finfo(np.float32).tiny))
        err = float(np.abs(ys - total).max()) / scale
        tol = _TOL[self.dtype]
        f = spec.out_features
        which = f"{n_maps} of {f} maps" if n_maps < f else f"all {f} maps"
        checks = [Check(
            "sum_over_channels", tol, float(f"{err:.3g}"), err <= tol,
            f"{which}: max |map - sum of its {cg} per-channel correlations| / max |sum|",
        )]
        if cg == 1:
            checks.append(Check("differs_from_average", None, None, None,
                                "one channel per map: its sum and its average coincide"))
            return checks
        diff = float(np.abs(ys - total / cg).max()) / scale
        expected = 1 - 1 / cg
        checks.append(Check(
            "differs_from_average", float(f"{expected:.3g}"), float(f"{diff:.3g}"),
            diff > max(2 * tol, 0.5 * expected),
            f"{which}: max |map - average of its {cg} correlations| / max |sum|, "
            f"expected 1 - 1/{cg}",
        ))
        return checks


def _spaced(f: int, k: int) -> tuple[int, ...]:
    if f <= k:
        return tuple(range(f))
    return tuple(sorted({round(i * (f - 1) / (k - 1)) for i in range(k)})) if k > 1 else (0,)


def _gib(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


def engine_conv(x: jax.Array, w: jax.Array, spec: ConvSpec,
                groups: int | None = None) -> jax.Array:
    """`jconv.conv_general_dilated` with `spec`'s geometry (channels last) and `groups`
    (default: the spec's feature groups)."""
    return conv_general_dilated(
        x, w, window_strides=spec.window_strides, padding=spec.padding,
        lhs_dilation=spec.lhs_dilation, rhs_dilation=spec.rhs_dilation,
        dimension_numbers=canonical_layouts(spec.num_spatial),
        feature_group_count=spec.feature_group_count if groups is None else groups,
    )


@functools.partial(jax.jit, static_argnames=("spec", "maps", "acc"))
def _conv_and_channel_sums(
    x: jax.Array, w: jax.Array, *, spec: ConvSpec, maps: tuple[int, ...], acc: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The full layer ``y`` through the engine; for the output maps `maps`, ``y[..., maps]``
    and the sum of their per-input-channel correlations, each correlation a separate
    one-channel, one-filter engine call (vmapped): shapes ``(M, N, *out)``."""
    y = engine_conv(x, w, spec)
    cg, fg = spec.group_in_features, spec.group_out_features
    map_idx = np.repeat(np.asarray(maps), cg)
    local = np.tile(np.arange(cg), len(maps))
    chan = (map_idx // fg) * cg + local
    xs = jnp.moveaxis(x[..., chan], -1, 0)  # (P, N, *S): one input channel each
    ws = jnp.moveaxis(w[..., local, map_idx], -1, 0)  # (P, *K): its kernel for that map

    def one(xc: jax.Array, wc: jax.Array) -> jax.Array:
        return engine_conv(xc[..., None], wc[..., None, None], spec, groups=1)[..., 0]

    corr = jax.vmap(one)(xs, ws).astype(acc)  # (P, N, *out)
    total = corr.reshape(len(maps), cg, *corr.shape[1:]).sum(axis=1)
    ys = jnp.moveaxis(y[..., np.asarray(maps)], -1, 0).astype(acc)
    return y, ys, total


def _reference_layer(info: models.LayerInfo, x: jax.Array,
                     rand: Callable[[tuple[int, ...]], jax.Array]) -> jax.Array:
    """A non-conv entry in plain jax.numpy / lax.reduce_window (for its measured shape)."""
    layer, n = info.layer, x.shape[0]
    if isinstance(layer, models.Dense):
        return x.reshape(n, -1) @ rand((info.in_shape[-1], layer.units))
    if isinstance(layer, models.Flatten):
        return x.reshape(n, -1)
    if isinstance(layer, models.ReLU):
        return jnp.maximum(x, jnp.zeros((), x.dtype))
    if isinstance(layer, models.BatchNorm):
        axes = tuple(range(x.ndim - 1))
        return (x - x.mean(axes, keepdims=True)) / jnp.sqrt(x.var(axes, keepdims=True) + 1e-5)
    if isinstance(layer, models.Residual | models.Add):  # an "add" entry
        return x + rand(x.shape)
    if isinstance(layer, models.Concat):
        extra = info.out_shape[-1] - x.shape[-1]
        return jnp.concatenate([x, rand((*x.shape[:-1], extra))], axis=-1)
    if isinstance(layer, models.Upsample):
        for axis, (i, o) in enumerate(zip(x.shape[1:-1], info.out_shape[1:-1], strict=True)):
            x = jnp.repeat(x, o // i, axis=axis + 1)
        return x
    if isinstance(layer, models.GlobalPool):
        axes = tuple(range(1, x.ndim - 1))
        return x.max(axes) if layer.kind == "max" else x.mean(axes)
    if isinstance(layer, models.Pool):
        spec = layer.spec(x.shape)
        pads = ((0, 0), *spec.padding, (0, 0))
        dims, strides = (1, *spec.window, 1), (1, *spec.window_strides, 1)
        if layer.kind == "max":
            init = jnp.array(-jnp.inf, x.dtype)
            return lax.reduce_window(x, init, lax.max, dims, strides, pads)
        total = lax.reduce_window(x, jnp.zeros((), x.dtype), lax.add, dims, strides, pads)
        return total / spec.taps
    raise ValueError(f"`info.kind` (={info.kind!r}) is not a layer kind explain can run.")
