"""Sharded operands: what XLA's partitioner may split, and the per-device convolution.

jconv runs on sharded arrays as `jax.lax.conv_general_dilated` does, in JAX's three modes:

- auto partitioning (jit over arrays placed with a `NamedSharding` on ``Auto`` mesh axes):
  the shardings are unknown while tracing, so the lowerings keep every image separate
  (no reshape merges the batch with another axis where the partitioner could not follow
  it) and run batch chunks strided (`may_partition`), and XLA splits the program;
- `shard_map`: the convolution sees per-device shapes and is planned on them;
- explicit sharding (the array type carries the sharding, `jax.typeof(x).sharding`):
  the engine reads it while tracing and runs the convolution per device itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._spec import ConvSpec

__all__ = ["Split", "exchange_halo", "explicit_split", "may_partition", "named_axes",
           "out_axes", "partition_factor", "partition_spec", "per_device", "plan_split",
           "vary_like"]


_PER_DEVICE: contextvars.ContextVar[bool] = contextvars.ContextVar("per_device", default=False)


@contextlib.contextmanager
def per_device() -> Iterator[None]:
    """Trace per-device code (a `custom_partitioning` rule's body): `may_partition` is
    False inside."""
    token = _PER_DEVICE.set(True)
    try:
        yield
    finally:
        _PER_DEVICE.reset(token)


def may_partition() -> bool:
    """True if XLA's partitioner may split what is being traced now: more than one device,
    not per-device code (`per_device`), and the mesh in context (if any) has an axis that
    is not manual (`shard_map`)."""
    if jax.device_count() == 1 or _PER_DEVICE.get():
        return False
    mesh = jax.sharding.get_abstract_mesh()
    return mesh.empty or any(t != AxisType.Manual for t in mesh.axis_types)


def partition_factor(n: int) -> int:
    """The largest number of devices a batch of ``n`` images can be split evenly over
    (``gcd(n, device count)``) when `may_partition`, else 1: batch chunks are multiples
    of it, so that a batch-sharded chunk keeps its images on their devices."""
    return math.gcd(n, jax.device_count()) if may_partition() else 1


Axes = tuple[str, ...]
"""Mesh axes one array dimension is split over (major to minor)."""


@dataclasses.dataclass(frozen=True)
class Split:
    """How the engine runs a convolution on explicitly sharded operands, per device.

    ``x``, ``w``, ``y``: the mesh axes (or None) of each dimension of the canonical input
    ``(N, *spatial, C)``, kernel ``(*window, I, O)`` and output ``(N, *out, F)``: the
    operands are resharded to ``x`` and ``w`` (a local slice where they were replicated,
    a gather only where a split cannot be kept), and each device computes its block of
    ``y``. ``halos``: per spatial dimension, the rows each device receives from the
    previous and the next device along that dimension's axes (`lax.ppermute`) before it
    runs the convolution VALID on that dimension. ``reduce``: the mesh axes the input
    channels are split over (groups of one), whose partial sums are added (`lax.psum`).
    ``local``: the convolution each device runs (the planner plans on it).
    """

    mesh: AbstractMesh | Mesh
    x: tuple[Axes | None, ...]
    w: tuple[Axes | None, ...]
    y: tuple[Axes | None, ...]
    halos: tuple[tuple[int, int], ...]
    reduce: Axes
    local: ConvSpec

    def run(self, fn: Callable[[ConvSpec, jax.Array, jax.Array], jax.Array],
            x: jax.Array, w: jax.Array) -> jax.Array:
        """``fn(local, x_block, w_block)`` on every device (`jax.shard_map`), after the
        halo exchanges; the output's blocks form the canonical output sharded as ``y``."""
        x = _reshard(x, self.mesh, self.x)
        w = _reshard(w, self.mesh, self.w)

        split = self.axes

        def per_device(xb: jax.Array, wb: jax.Array) -> jax.Array:
            # both blocks vary over every split axis: their cotangents are summed over the
            # axes each was replicated on once, at the boundary (the kernel's gradient over
            # the batch's devices, not a transformed kernel's inside the lowering)
            xb, wb = (_vary(a, split) for a in (xb, wb))
            yb = self.partial(fn, xb, wb)
            return lax.psum(yb, self.reduce) if self.reduce else yb

        return jax.shard_map(
            per_device, mesh=self.mesh, in_specs=(partition_spec(self.x), partition_spec(self.w)),
            out_specs=partition_spec(self.y), axis_names=frozenset(self.mesh.axis_names),
        )(x, w)

    @property
    def axes(self) -> Axes:
        """Every mesh axis the split uses (sorted)."""
        return tuple(sorted({a for axes in (*self.x, *self.w, *self.y) if axes for a in axes}))

    def partial(self, fn: Callable[[ConvSpec, jax.Array, jax.Array], jax.Array],
                xb: jax.Array, wb: jax.Array) -> jax.Array:
        """One device's output block before the partial sums over ``reduce`` are added:
        the halo exchanges, then ``fn(local, xb, wb)`` (per-device code: inside
        `shard_map` or a `custom_partitioning` rule)."""
        for dim, (lo, hi) in enumerate(self.halos):
            axes = self.x[1 + dim]
            if axes is not None and (lo or hi):
                xb = exchange_halo(xb, 1 + dim, axes, self.mesh, lo, hi)
        return fn(self.local, xb, wb)


def _vary(x: jax.Array, axes: Axes) -> jax.Array:
    missing = tuple(a for a in axes if a not in jax.typeof(x).manual_axis_type.varying)
    return lax.pcast(x, missing, to="varying") if missing else x


def vary_like(x: jax.Array, *refs: jax.Array) -> jax.Array:
    """``x`` typed as varying over the `shard_map` axes any of `refs` varies over (a
    loop's fresh carry, so that it has the type the loop's body gives it); ``x`` itself
    outside `shard_map`."""
    axes = sorted({a for r in refs for a in jax.typeof(r).manual_axis_type.varying})
    return _vary(x, tuple(axes)) if axes else x


def transposed(fn: Callable[[jax.Array], jax.Array], shape: tuple[int, ...],
               dtype: jax.typing.DTypeLike, t: jax.Array) -> jax.Array:
    """The transpose of the linear map `fn` (from arrays of `shape` and `dtype`) applied to
    ``t``, by reverse mode: the values at zero are never used, and the zeros vary over the
    `shard_map` axes ``t`` does (else the transpose would sum over them). Reverse mode of
    the result runs `fn` itself."""
    _, transpose = jax.vjp(fn, vary_like(jnp.zeros(shape, dtype), t))
    (out,) = transpose(t)
    return out


def exchange_halo(x: jax.Array, axis: int, axes: Axes, mesh: AbstractMesh | Mesh, lo: int,
                  hi: int) -> jax.Array:
    """``x`` (one device's block) extended along `axis` by the last `lo` rows of the
    previous device's block and the first `hi` rows of the next one's (zeros at the ends),
    along the mesh `axes`: one `lax.ppermute` each (its transpose is the reverse one)."""
    d = math.prod(mesh.shape[a] for a in axes)
    name = axes if len(axes) > 1 else axes[0]
    parts = []
    if lo:
        tail = lax.slice_in_dim(x, x.shape[axis] - lo, x.shape[axis], axis=axis)
        parts.append(lax.ppermute(tail, name, [(j, j + 1) for j in range(d - 1)]))
    parts.append(x)
    if hi:
        head = lax.slice_in_dim(x, 0, hi, axis=axis)
        parts.append(lax.ppermute(head, name, [(j + 1, j) for j in range(d - 1)]))
    return jnp.concatenate(parts, axis=axis)


def partition_spec(axes: tuple[Axes | None, ...]) -> P:
    """The `PartitionSpec` of per-dimension mesh axes (None: whole)."""
    return P(*(None if a is None else a[0] if len(a) == 1 else a for a in axes))


def _reshard(x: jax.Array, mesh: AbstractMesh | Mesh, axes: tuple[Axes | None, ...]) -> jax.Array:
    target = partition_spec(axes)
    if _axes_of(jax.typeof(x), x.ndim, mesh) == axes:
        return x
    return jax.sharding.reshard(x, NamedSharding(mesh, target))


def _norm(entry: Any) -> Axes | None:
    if entry is None or entry == P.UNCONSTRAINED:
        return None
    axes = (entry,) if isinstance(entry, str) else tuple(entry)
    return axes or None


def _axes_of(aval: Any, ndim: int, mesh: AbstractMesh | Mesh | None) -> tuple[Axes | None, ...]:
    """The explicit mesh axes of each dimension of an abstract value (None: replicated)."""
    sharding = getattr(aval, "sharding", None)
    if not isinstance(sharding, NamedSharding) or sharding.mesh.empty:
        return (None,) * ndim
    return named_axes(sharding, ndim, set(sharding.mesh.explicit_axes))


def named_axes(sharding: Any, ndim: int,
               among: set[str] | None = None) -> tuple[Axes | None, ...]:
    """The mesh axes (those in `among`, default all) each of the `ndim` dimensions of an
    array placed with `sharding` is split over; None: whole (not a `NamedSharding`:
    every dimension whole)."""
    if not isinstance(sharding, NamedSharding):
        return (None,) * ndim
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    out = []
    for entry in spec[:ndim]:
        axes = tuple(a for a in (_norm(entry) or ()) if among is None or a in among)
        out.append(axes or None)
    return tuple(out)


def _explicit_mesh(*avals: Any) -> AbstractMesh | None:
    for aval in avals:
        sharding = getattr(aval, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh.explicit_axes:
            return sharding.mesh.abstract_mesh
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty or not mesh.explicit_axes else mesh


def out_axes(out_sharding: Any, spec: ConvSpec) -> tuple[tuple[Axes | None, ...], Any]:
    """`out_sharding` (a `NamedSharding` or a `PartitionSpec` on the mesh in context, in
    the user's output layout) as mesh axes of the canonical output, and its mesh."""
    ndim = len(spec.canonical_out_shape)
    if out_sharding is None:
        return (None,) * ndim, None
    if isinstance(out_sharding, NamedSharding):
        mesh, pspec = out_sharding.mesh.abstract_mesh, out_sharding.spec
    else:
        mesh, pspec = jax.sharding.get_abstract_mesh(), P(*out_sharding)
    entries = tuple(pspec) + (None,) * (ndim - len(pspec))
    user = [_norm(e) for e in entries]
    return tuple(user[a] for a in _inverse(spec.canonical_to_out)), mesh


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def explicit_split(lhs: Any, rhs: Any, spec: ConvSpec, out_sharding: Any = None) -> Split | None:
    """How to run `spec` on operands of abstract values `lhs`, `rhs` (the user's layouts)
    split over explicit mesh axes, and with `out_sharding`; None when no operand is split
    over an explicit axis and `out_sharding` asks for no split (the plain path).

    Kept splits, each dimension on axes that divide it and that no other dimension uses:
    the batch (one batch group); a spatial dimension when each device's output block starts
    where its input block does (``out/D * stride == in/D``, no lhs dilation) and the halos
    come from the neighbours; the output features (one group); with feature groups, the
    groups (input channels and output features together); with one group, the input
    channels (partial sums added). Any other split is gathered first. A split `out_sharding`
    asks for, of a dimension the operands leave whole, is made on the operands (a local
    slice)."""
    mesh = _explicit_mesh(lhs, rhs)
    want, out_mesh = out_axes(out_sharding, spec)
    if mesh is None and out_mesh is not None and out_mesh.explicit_axes:
        mesh = out_mesh
    if mesh is None:
        return None
    xa = _axes_of(lhs, len(spec.lhs_shape), mesh)
    wa = _axes_of(rhs, len(spec.rhs_shape), mesh)
    xa = tuple(xa[i] for i in spec.lhs_to_canonical)
    wa = tuple(wa[i] for i in spec.rhs_to_canonical)
    explicit = set(mesh.explicit_axes)
    want = tuple(a if a and set(a) <= explicit else None for a in want)
    if not any(xa) and not any(wa) and not any(want):
        return None
    return plan_split(spec, mesh, xa, wa, want)


def plan_split(spec: ConvSpec, mesh: AbstractMesh | Mesh, xa: tuple[Axes | None, ...],
               wa: tuple[Axes | None, ...], want: tuple[Axes | None, ...]) -> Split:
    """The `Split` of `spec` for operands split over the mesh axes ``xa``, ``wa`` (per
    dimension of the canonical input and kernel) and an output asked to be split as
    ``want`` (see `explicit_split` for which splits are kept)."""
    ns = spec.num_spatial
    used: set[str] = set()

    def size(axes: Axes) -> int:
        return math.prod(mesh.shape[a] for a in axes)

    def take(axes: Axes | None, *extents: int) -> Axes | None:
        if not axes or used & set(axes) or any(e % size(axes) for e in extents):
            return None
        used.update(axes)
        return axes

    one_group = spec.batch_group_count == 1
    g = spec.feature_group_count
    # the groups (feature groups > 1): input channels and output features split together
    grouped = None
    if one_group and g > 1:
        cand = xa[-1] or wa[-1] or want[-1]
        if cand and xa[-1] in (None, cand) and wa[-1] in (None, cand) and g % size(cand) == 0:
            grouped = take(cand, g)
    nb = take(xa[0] or want[0], spec.batch) if one_group else None
    spatial, halos, pads, local_in = [], [], [], []
    for i in range(ns):
        axes = xa[1 + i] or want[1 + i]
        ok = _halos(spec, i, size(axes)) if axes else None
        axes = take(axes) if ok is not None else None
        spatial.append(axes)
        if axes is None:
            halos.append((0, 0))
            pads.append(spec.padding[i])
            local_in.append(spec.in_spatial[i])
        else:
            assert ok is not None
            (lo, hi), pad = ok
            halos.append((lo, hi))
            pads.append(pad)
            local_in.append(spec.in_spatial[i] // size(axes) + lo + hi)
    reduce = None
    if one_group and g == 1 and xa[-1] and wa[-2] in (None, xa[-1]):
        reduce = take(xa[-1], spec.in_features)
    feats = None
    if one_group and g == 1:
        feats = take(wa[-1] or want[-1], spec.out_features)
    c_axes, f_axes = grouped or reduce, grouped or feats
    x_axes = (nb, *spatial, c_axes)
    w_axes = (*(None,) * ns, reduce, f_axes)
    y_axes = (nb, *spatial, f_axes)

    def div(axes: Axes | None) -> int:
        return size(axes) if axes else 1

    local = dataclasses.replace(
        spec,
        lhs_shape=(spec.batch // div(nb), *local_in, spec.in_features // div(c_axes)),
        rhs_shape=(*spec.window, spec.rhs_shape[-2] // div(reduce),
                   spec.out_features // div(f_axes)),
        padding=tuple(pads),
        feature_group_count=g // div(grouped),
    )
    return Split(mesh, x_axes, w_axes, y_axes, tuple(halos), reduce or (), local)


def _halos(spec: ConvSpec, i: int, d: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """For spatial dimension `i` split over `d` devices: the rows each device receives
    from its previous and next neighbour and the padding left for its own convolution
    (negative: crop), or None if the blocks do not line up (see `explicit_split`).

    With lhs dilation ``l`` (a transposed convolution), input row ``r`` sits at position
    ``p_lo + r*l`` of the padded, dilated input. A device's output block (``c`` rows,
    stride ``s``) starts where its input block does when ``c*s == b*l`` (``b`` rows a
    block); it needs the previous block's last ``floor(p_lo / l)`` rows, and the next
    block's first rows up to its last window's end."""
    size, out, s = spec.in_spatial[i], spec.out_spatial[i], spec.window_strides[i]
    dil = spec.lhs_dilation[i]
    if size % d or out % d or (out // d) * s != (size // d) * dil:
        return None
    b, c = size // d, out // d
    p_lo = spec.padding[i][0]
    # past the last own row's position: the block's last window's end (negative: crop)
    reach = (c - 1) * s + spec.effective_window[i] - 1 - p_lo - (b - 1) * dil
    lo, hi = max(p_lo, 0) // dil, max(reach, 0) // dil
    if max(lo, hi) > b or min(p_lo, reach) < -b:
        return None
    return (lo, hi), (p_lo - lo * dil, reach - hi * dil)
