"""The two implementations of every op: ``fused`` (the infer_fast kernels, :mod:`infer_fast.ops`) and ``reference``
(the pure-PyTorch definitions, :mod:`infer_fast.reference`). Every stage picks its op through :func:`get`, so the
``--backend`` switch lives in one place and the format (``distilled.py``) does not reach into a stage for it."""

from __future__ import annotations

import importlib
from collections.abc import Callable

BACKENDS = ("fused", "reference")
OPS = ("bn_stat_loss", "compensator_broadcast", "mixed_soft_xent")


def check_backend(backend: str, where: str = "infer_fast") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def get(op: str, backend: str = "fused") -> Callable:
    """The function ``op`` (one of :data:`OPS`) of ``backend`` ("fused" or "reference"); both have the same
    signature and return the same values up to float rounding."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r} (expected one of {OPS})")
    check_backend(backend)
    # Imported on use: the reference backend must work without loading the compiled extension.
    module = importlib.import_module("infer_fast.reference" if backend == "reference" else f"infer_fast.ops.{op}")
    return getattr(module, op)
