"""Typed entry points of the fused ops (one module per op; importing it registers its fake and autograd kernels)."""

from infer_fast.ops.bn_stat_loss import BNStatMatcher, bn_stat_loss
from infer_fast.ops.compensator_broadcast import compensator_broadcast
from infer_fast.ops.mixed_soft_xent import mixed_soft_xent

__all__ = ["BNStatMatcher", "bn_stat_loss", "compensator_broadcast", "mixed_soft_xent"]
