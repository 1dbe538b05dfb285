"""Registration helper shared by the op modules."""

from __future__ import annotations

import torch


def block_double_backward(backward_op: str, forward_name: str) -> None:
    """Make differentiating through ``backward_op`` (a ``_<op>_backward``) a clear error, not a silent zero."""

    def _raise(ctx, *grads):
        raise RuntimeError(
            f"{backward_op} is not differentiable: double backward through {forward_name} is not supported "
            f"(use infer_fast.reference.{forward_name} for higher-order gradients)"
        )

    torch.library.register_autograd(backward_op, _raise, setup_context=lambda ctx, inputs, output: None)
