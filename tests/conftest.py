"""Test configuration shared by the whole suite.

NumPy-style implicit promotion is switched off so that a silent upcast in jconv (or in a
test) fails loudly: dtype promotion is "strict" and rank promotion raises. 64-bit types
stay off by default; a test that needs float64 uses ``with jax.enable_x64(True):`` or NumPy.
"""

from __future__ import annotations

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", False)
