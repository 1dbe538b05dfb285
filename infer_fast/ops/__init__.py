"""Typed entry points of the fused ops (one module per op; each registers fake and autograd kernels)."""

from infer_fast.ops import bn_stat_loss  # noqa: F401  (registers fake + autograd kernels)
