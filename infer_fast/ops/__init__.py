"""Typed entry points of the fused ops, one module per op (``from infer_fast.ops.bn_stat_loss import bn_stat_loss``).

Importing each module registers its fake and autograd kernels, so importing infer_fast makes every op usable under
autograd and torch.compile. The modules (not their functions) are the package attributes, so that
``import infer_fast.ops.<op> as m`` keeps returning the module.
"""

from infer_fast.ops import bn_stat_loss, compensator_broadcast, mixed_soft_xent  # noqa: F401
