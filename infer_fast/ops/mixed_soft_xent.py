"""Fused mixup-aware distillation loss: ``torch.ops.infer_fast.mixed_soft_xent`` with fake and autograd kernels."""

from __future__ import annotations

import torch

from infer_fast import _C  # noqa: F401  (loads the extension that defines the ops)
from infer_fast.ops._autograd import block_double_backward
from infer_fast.ops._index_check import check_once, first_out_of_range

__all__ = ["mixed_soft_xent"]

_FORWARD = torch.ops.infer_fast.mixed_soft_xent.default
_BACKWARD = torch.ops.infer_fast._mixed_soft_xent_backward.default


def mixed_soft_xent(
    logits: torch.Tensor,
    target: torch.Tensor,
    perm: torch.Tensor | None = None,
    lam: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Batch mean of ``KL(p_b || softmax(z_b / T))`` over the rows of ``logits``, fused with its gradient.

    ``logits`` z ``[B, K]`` (float32/float64/float16/bfloat16), ``T = temperature > 0``, ``lam`` in ``[0, 1]``.

    * soft targets, ``target`` floating ``[B, K]`` (teacher logits, any float dtype):
      ``p_b = softmax(mix_b / T)`` with ``mix_b = lam * y_b + (1 - lam) * y_perm[b]``;
    * hard targets, ``target`` integer ``[B]`` (class indices):
      ``p_b = lam * onehot(y_b) + (1 - lam) * onehot(y_perm[b])`` (``0 * log 0 = 0``).

    ``perm`` is an int64 ``[B]`` index vector (the mixup permutation) or None for no mixing. Returns a 0-dim
    loss in float32 (float64 for float64 logits). Gradient flows to ``logits`` only:
    ``dloss/dz = (softmax(z / T) - p) / (T * B)``, computed by the forward in the same pass per row.
    """
    _check_index_values(logits, target, perm)
    if torch.compiler.is_compiling():  # traced through the op's registered fake and autograd kernels
        return _FORWARD(logits, target, perm, float(lam), float(temperature))[0]
    return _MixedSoftXent.apply(logits, target, perm, float(lam), float(temperature))


def _perm_error(host: torch.Tensor, b: int) -> str | None:
    bad = first_out_of_range(host, 0, b)
    return bad and f"mixed_soft_xent: perm[{bad[0]}] = {bad[1]} is out of range, expected an index in [0, {b})"


def _target_error(host: torch.Tensor, k: int) -> str | None:
    bad = first_out_of_range(host.long(), 0, k)
    return bad and f"mixed_soft_xent: target[{bad[0]}] = {bad[1]} is not a class index, expected one in [0, {k})"


def _raise_if(msg: str | None) -> None:
    if msg:
        raise RuntimeError(msg)


def _check_index_values(logits: torch.Tensor, target: torch.Tensor, perm: torch.Tensor | None) -> None:
    """On a GPU: perm and integer class targets checked once per tensor on the host, with the CPU kernel's message
    (the CUDA kernel would otherwise hit a device assert, which ends the CUDA context)."""
    if logits.dim() != 2:
        return  # the op's shape check speaks
    b, k = logits.shape
    if perm is not None and perm.dtype == torch.int64 and perm.shape == (b,):
        check_once(perm, ("mixed_soft_xent perm", b), lambda host: _raise_if(_perm_error(host, b)))
    if not target.dtype.is_floating_point and target.dtype != torch.bool and target.shape == (b,):
        check_once(target, ("mixed_soft_xent target", k), lambda host: _raise_if(_target_error(host, k)))


@torch.library.register_fake("infer_fast::mixed_soft_xent")
def _mixed_soft_xent_fake(logits, target, perm, lam, temperature):
    torch._check(logits.dim() == 2, lambda: f"mixed_soft_xent: logits must be 2-D [B, K], got {logits.dim()}-D")
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = logits.new_empty((), dtype=acc)
    grad_logits = logits.new_empty(logits.shape)
    return loss, grad_logits


@torch.library.register_fake("infer_fast::_mixed_soft_xent_backward")
def _mixed_soft_xent_backward_fake(grad_loss, grad_logits):
    return grad_logits.new_empty(grad_logits.shape)


def _setup_context(ctx, inputs, output):
    _, grad_logits = output
    ctx.mark_non_differentiable(grad_logits)
    ctx.save_for_backward(grad_logits)


def _backward(ctx, grad_loss, _grad_of_grad_logits):
    (grad_logits,) = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        if torch.is_grad_enabled():
            # create_graph=True: the saved dL/dz is a constant here, so a second derivative would come out
            # silently zero instead of softmax's Hessian.
            raise RuntimeError(
                "mixed_soft_xent: double backward (create_graph=True through logits) is not supported; "
                "use infer_fast.reference.mixed_soft_xent for higher-order derivatives"
            )
        grad = _BACKWARD(grad_loss, grad_logits)
    return grad, None, None, None, None


torch.library.register_autograd("infer_fast::mixed_soft_xent", _backward, setup_context=_setup_context)


class _MixedSoftXent(torch.autograd.Function):
    """The public function's autograd: the same forward op and backward as the registration above, calling the
    kernels below the Autograd key so that the ops' Python autograd kernels are skipped (that per-call Python work
    dominates at CIFAR sizes, e.g. 64x10 logits)."""

    @staticmethod
    def forward(ctx, logits, target, perm, lam, temperature):
        with torch._C._AutoDispatchBelowAutograd():
            loss, grad_logits = _FORWARD(logits, target, perm, lam, temperature)
        ctx.save_for_backward(grad_logits)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():
            return _backward(ctx, grad_loss, None)  # raises: no double backward
        (grad_logits,) = ctx.saved_tensors
        with torch._C._AutoDispatchBelowAutograd():
            grad = _BACKWARD(grad_loss, grad_logits) if ctx.needs_input_grad[0] else None
        return grad, None, None, None, None


block_double_backward("infer_fast::_mixed_soft_xent_backward", "mixed_soft_xent")
