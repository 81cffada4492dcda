"""The persistent cache of tuned picks: which lowering measured fastest for a spec here.

One JSON file (``$JCONV_TUNE_CACHE``, else ``~/.cache/jconv/tune.json``) maps keys to
one pick per `COLUMNS` role: ``{"forward": name, "differentiated": name, "input_gradient":
name}`` (an entry without ``"input_gradient"`` gives its forward pick there), and
``"judged"``: the roles a whole program's check kept or replaced (`jconv.tune`). A key names
everything a measurement depends on: the backend and device kind, the jax version, the spec
(its ``repr``: every hyper-parameter and shape in normal form, layouts aside), the
accumulation dtype and whether the normwise-accurate lowerings were allowed. Writes merge
under a lock file and replace the file atomically, so concurrent processes never see a torn
file nor lose each other's entries. The planner reads the file once per process (and again
after `store`); plans are therefore deterministic for a given cache and memory budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import jax

from ._spec import ConvSpec

__all__ = ["COLUMNS", "cache_path", "entries", "generation", "key", "lookup", "overlay",
           "reload", "store"]

COLUMNS = ("forward", "differentiated", "input_gradient")
"""The roles a spec is planned in (`jconv.planner.plan`): undifferentiated, a differentiated
call's values, and another convolution's input gradient (`ConvSpec.input_gradient`, in a
training step's backward pass): one pick each."""

_entries: dict[str, dict[str, Any]] | None = None
_overlay: dict[str, dict[str, Any]] = {}
_generation = 0


def cache_path() -> pathlib.Path:
    """``$JCONV_TUNE_CACHE``, else ``~/.cache/jconv/tune.json``."""
    env = os.environ.get("JCONV_TUNE_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "jconv" / "tune.json"


def key(spec: ConvSpec, dtype: Any, normwise: bool) -> str:
    """The cache key of `spec` planned at `dtype` on the default device: backend, device
    kind, jax version, the spec's shapes and hyper-parameters in canonical order, the dtype
    and the accuracy class allowed."""
    dev = jax.devices()[0]
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)
              if f.name != "perms"}  # the lowerings run in canonical layout whatever the user's
    return "|".join([dev.platform, dev.device_kind, jax.__version__, repr(fields),
                     str(jax.numpy.dtype(dtype)), "normwise" if normwise else "summation"])


def _read(path: pathlib.Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ValueError(f"the tuning cache {path} cannot be read as JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"the tuning cache {path} must hold a JSON object.")
    return data


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def entries() -> dict[str, dict[str, Any]]:
    """Every tuned pick (read once per process)."""
    global _entries
    if _entries is None:
        _entries = _read(cache_path())
    return _entries


def lookup(spec: ConvSpec, dtype: Any, normwise: bool, column: str) -> str | None:
    """The tuned lowering for `spec` planned in role `column` (`COLUMNS`), or None if it was
    never tuned here."""
    name = key(spec, dtype, normwise)
    entry = _overlay.get(name, entries().get(name))
    if entry is None:
        return None
    return entry.get(column, entry.get("forward") if column == "input_gradient" else None)


@contextlib.contextmanager
def overlay(picks: Mapping[str, Mapping[str, Any]]) -> Iterator[None]:
    """Within the block the planner reads `picks` (key -> one pick per column) in place of
    the stored entries of their keys; nothing is written."""
    global _overlay, _generation
    before = _overlay
    _overlay = {**before, **{k: dict(v) for k, v in picks.items()}}
    _generation += 1
    try:
        yield
    finally:
        _overlay = before
        _generation += 1


def store(picks: Mapping[str, Mapping[str, Any]]) -> None:
    """Merge `picks` (key -> one pick per `COLUMNS` role, and ``"judged"``) into the cache
    file, under its lock, by an atomic replace; the planner sees them from its next plan
    on."""
    global _entries, _generation
    path = cache_path()
    with _locked(path):
        merged = {**_read(path), **{k: dict(v) for k, v in picks.items()}}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(merged, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    _entries = merged
    _generation += 1


def generation() -> int:
    """A counter that changes whenever this process stores picks or reloads the file (part of
    the planner's cache key)."""
    return _generation


def reload() -> None:
    """Forget what was read, so the next plan reads the file again (e.g. after another
    process tuned, or `JCONV_TUNE_CACHE` changed)."""
    global _entries, _generation
    _entries = None
    _generation += 1
