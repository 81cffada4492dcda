"""Accumulate: shift-and-sum with the kernel offsets as the steps of a loop.

The sum of `shift`, ``out[n, o, f] = sum_k sum_c xp[n, o*s + k*d, c] * w[k, c, f]``, with
the offsets ``k`` the steps of a `lax.scan` whose carry is the output: each step slices
one window (`lax.dynamic_slice`), contracts its channels with that offset's kernel and adds
the product to the carry. Temporaries: the padded input and one step's window and product,
where `shift` keeps every offset's product alive until its fused sum
(``prod(window)`` output-sized arrays: 27 for a 3x3x3 kernel). The step is rematerialised,
so the gradients also hold one offset's slice at a time. For inputs nothing else fits
(volumes, high-resolution images of one sample, where batch chunks cannot help), and for
long windows (`LONG_WINDOW_TAPS`), where it measured faster than keeping every product; it
adds a read and a write of the output per offset.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._sharding import vary_like
from .._spec import ConvSpec
from ._common import (
    Cost,
    Geometry,
    chunked_cost,
    contract,
    group_input,
    group_kernel,
    lower_chunked,
    make_cost,
    offsets,
    ungroup_output,
    window_slice,
)
from ._model import Prediction, copy_seconds, gemm_rate

AUTO = True
"""`strategy="auto"` may pick it: the cost model does for long windows and where the others
exceed the memory budget, `jconv.tune` where it is measured fastest."""
ACCURACY = "summation"
"""Rounding error of summing the taps in the accumulation dtype (lax's class)."""
TRANSFORMS_KERNEL = False
"""The kernel is read as it is (`jconv.strategies`)."""
DIFFERENTIATED = True
"""`auto` may run it for a differentiated call's values (`jconv.planner`)."""

LONG_WINDOW_TAPS = 27
"""Windows of at least this many taps (3x3x3, 1-D k >= 27) scale the predicted time by
`LONG_WINDOW_OVERHEAD`."""
LONG_WINDOW_OVERHEAD = 0.5
"""Predicted time over the cost at the model's rates for long windows, where the per-offset
copies the model counts overstate the loop against shift, which keeps one output-sized
product per tap alive until its sum, and scatter, whose GEMM writes outputs that many
kernels wide. Measured (2-core x86, forward, alternating): 3x3x3 kernels over 8-64
channels and 8^3-48^3 volumes, 0.29-0.90x shift's time and 0.31-0.71x scatter's; 1-D k = 31
over 64 channels, 0.71-0.87x shift's in ten runs of the layer suite (k = 15: 1.01-1.51x, so
not below 27 taps). With it the planner's pick was the fastest forward on four of six 3-D
shapes and within 1.07x of the fastest forward+backward on five (without it, shift and
scatter, within 1.15x on one and none)."""
BACKWARD = 1.0
"""Gradients over the forward's predicted arithmetic: two GEMMs per offset, transposed."""
BACKWARD_COPY = 2.0
"""Gradients over the forward's predicted copies: the loop runs backward with the step
rematerialised (the window sliced again, the input gradient's slice added back)."""


def applicable(spec: ConvSpec, dtype: jax.typing.DTypeLike) -> str | None:
    """None: every convolution (one offset per step)."""
    return None


def lower(
    spec: ConvSpec,
    x: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *in, C), (*window, Cg, F) -> (N_out, *out, F)``, the offsets in a loop."""
    return lower_chunked(spec, x, w, cost_of, _lower_all, precision=precision,
                         acc_dtype=acc_dtype)


def _lower_all(
    spec: ConvSpec,
    xp: jax.Array,
    w: jax.Array,
    *,
    precision: lax.PrecisionLike,
    acc_dtype: jnp.dtype,
) -> jax.Array:
    """``(N, *padded, C), (*window, Cg, F) -> (N_out, *out, F)``."""
    ks = jnp.asarray(list(offsets(spec)), jnp.int32)
    wg = group_kernel(spec, w)
    wg = wg.reshape(len(ks), *wg.shape[spec.num_spatial:])
    n_out = spec.batch // spec.batch_group_count
    out = vary_like(jnp.zeros((n_out, *spec.out_spatial, spec.batch_group_count,
                               spec.feature_group_count,
                               spec.out_features // spec.groups), acc_dtype), xp, w)

    @jax.checkpoint
    def step(acc: jax.Array, kw: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        k, wk = kw
        xs = group_input(spec, window_slice(spec, xp, k))
        return acc + contract(spec, xs, wk, "", precision=precision, acc_dtype=acc_dtype), None

    return ungroup_output(spec, lax.scan(step, out, (ks, wg))[0])


def cost_of(geo: Geometry) -> Cost:
    """FLOPs ``2*MACs``. Temp, as XLA schedules the loop: the padded input, and with more
    than one offset one window slice and one product (the carry is the output's buffer);
    with one input channel per group (depthwise) the products fuse into the carry's
    update, leaving the padded input only. Moved: the padded input, and per offset its
    window slice and the carry read and written (the product's add fuses into the dot's
    output)."""
    slice_elems = geo.out_pixels * geo.g * geo.cg
    several = 0 if all(k == 1 for k in geo.window) else 1
    step = 0 if geo.depthwise else several * (slice_elems + geo.out_elems)
    return make_cost(
        flops=2 * geo.macs,
        temp_elems=geo.pad * geo.in_elems + step,
        moved_elems=geo.pad * geo.in_elems + geo.taps * (slice_elems + 2 * geo.out_elems),
        geo=geo,
    )


def cost(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Cost:
    """Cost of the loop for ``spec`` (see `cost_of`), over batch chunks where they apply."""
    return chunked_cost(spec, dtype, cost_of)


def formula(num_spatial: int) -> Cost:
    """`cost_of` over the symbols of `Geometry.symbols`."""
    return cost_of(Geometry.symbols(num_spatial))


def predict(spec: ConvSpec, dtype: jax.typing.DTypeLike = jnp.float32) -> Prediction:
    """One GEMM of depth ``C_g`` and width ``F_g`` per offset, and the copies of `cost_of`
    (times `LONG_WINDOW_OVERHEAD` for windows of `LONG_WINDOW_TAPS` taps and more)."""
    flops, _, moved = cost(spec, dtype).evaluate()
    scale = LONG_WINDOW_OVERHEAD if spec.taps >= LONG_WINDOW_TAPS else 1.0
    rate = gemm_rate(spec.group_in_features, spec.group_out_features)
    return Prediction.scaled(scale * flops / rate, scale * copy_seconds(moved), BACKWARD,
                             BACKWARD_COPY)
