"""BatchNorm-statistic matching loss per group (``torch.ops.infer_fast.bn_stat_loss``) and a model-level matcher.

``bn_stat_loss`` is the fused op; ``BNStatMatcher`` hooks it onto every BatchNorm of a model (the synthesis
loss of INFER §3: ``sum_l w_l * R_l`` with ``w_1 = first_bn_multiplier``), per group of samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from infer_fast import _C  # noqa: F401  (registers the ops)
from infer_fast.ops._autograd import block_double_backward
from infer_fast.ops.backend import check_backend
from infer_fast.ops.backend import get as get_op

_OP = "infer_fast::bn_stat_loss"
_BWD = "infer_fast::_bn_stat_loss_backward"


def bn_stat_loss(
    x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, groups: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group BN-statistic matching loss, fused (one pass over ``x`` forward, one backward).

    ``x`` ``[N, C, *spatial]`` (rank 2..5; contiguous or channels-last read directly) is split into ``groups``
    equal contiguous groups along N. For group g, ``mean[g]`` and ``var[g]`` (biased) are the per-channel
    statistics over the group's samples and spatial positions, and

        ``loss[g] = ||var[g] - running_var||_2 + ||mean[g] - running_mean||_2``.

    Args:
        x: float32, float16, bfloat16 or float64 activations (statistics accumulate in float32, float64 for float64).
        running_mean, running_var: ``[C]`` float32 or float64.
        groups: number of groups; must divide N.

    Returns:
        ``(loss [G], mean [G, C], var [G, C])`` in float32 (float64 for float64 ``x``). Differentiable w.r.t. ``x``
        (dL/dx in x's dtype and memory format) and the running statistics; not twice differentiable.
    """
    return torch.ops.infer_fast.bn_stat_loss.default(x, running_mean, running_var, groups)


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.register_fake(_OP)
def _bn_stat_loss_fake(x, running_mean, running_var, groups):
    torch._check(2 <= x.dim() <= 5, lambda: f"bn_stat_loss: x must have rank 2 to 5, got rank {x.dim()}")
    torch._check(groups >= 1, lambda: f"bn_stat_loss: groups must be >= 1, got {groups}")
    c = x.shape[1]
    dt = _stat_dtype(x)
    return x.new_empty((groups,), dtype=dt), x.new_empty((groups, c), dtype=dt), x.new_empty((groups, c), dtype=dt)


@torch.library.register_fake(_BWD)
def _bn_stat_loss_backward_fake(grad_loss, grad_mean, grad_var, x, running_mean, running_var, mean, var, groups):
    # Mirrors bn_empty_like in csrc/bn_stat_loss.h: contiguous, or channels-last for a channels-last x.
    if x.is_contiguous():
        return x.new_empty(x.shape)
    if x.movedim(1, -1).is_contiguous():
        return x.new_empty(x.movedim(1, -1).shape).movedim(-1, 1)
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, running_mean, running_var, groups = inputs
    _, mean, var = output
    ctx.save_for_backward(x, running_mean, running_var, mean, var)
    ctx.groups = groups


def _backward(ctx, grad_loss, grad_mean, grad_var):
    x, running_mean, running_var, mean, var = ctx.saved_tensors
    grad_loss = torch.zeros_like(mean[:, 0]) if grad_loss is None else grad_loss
    grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
    grad_var = torch.zeros_like(var) if grad_var is None else grad_var
    dx = drm = drv = None
    if ctx.needs_input_grad[0]:
        dx = torch.ops.infer_fast._bn_stat_loss_backward.default(
            grad_loss, grad_mean, grad_var, x, running_mean, running_var, mean, var, ctx.groups
        )
    # The running statistics are buffers in practice; their tiny [C] gradients are plain PyTorch.
    if ctx.needs_input_grad[1]:
        dm = mean - running_mean.to(mean.dtype)
        drm = -(grad_loss[:, None] * dm * _inv_norm(dm)).sum(0).to(running_mean.dtype)
    if ctx.needs_input_grad[2]:
        dv = var - running_var.to(var.dtype)
        drv = -(grad_loss[:, None] * dv * _inv_norm(dv)).sum(0).to(running_var.dtype)
    return dx, drm, drv, None


def _inv_norm(d: torch.Tensor) -> torch.Tensor:
    """1 / ||d_g|| per row, 0 where the norm is 0 (as torch.linalg.vector_norm's backward)."""
    n = torch.linalg.vector_norm(d, dim=1, keepdim=True)
    return torch.where(n > 0, 1.0 / n, torch.zeros_like(n))


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


block_double_backward(_BWD, "bn_stat_loss")


_BatchNorm = nn.modules.batchnorm._BatchNorm


class BNStatMatcher:
    """Hooks ``bn_stat_loss`` onto the input of every BatchNorm (1d/2d/3d) of ``model``, in ``model.modules()`` order.

    After a forward pass, :meth:`loss` is ``sum_l w_l * loss_l`` per group, a ``[G]`` tensor on the model's
    device, with ``w_1 = first_bn_multiplier`` and ``w_l = 1`` otherwise. The sum is accumulated on the device
    during the forward pass: no host synchronisation and no data-dependent Python branching per layer. Each
    forward of ``model`` starts a new sum. ``groups`` may be changed between forwards (``matcher.groups = 4``).

    Use as a context manager, or call :meth:`remove` to detach the hooks::

        with BNStatMatcher(teacher, groups=9) as bn:
            logits = teacher(x)
            loss = ce(logits, y) + r_bn * bn.loss().sum()

    ``backend="reference"`` computes the same quantity with :func:`infer_fast.reference.bn_stat_loss`.
    """

    def __init__(
        self, model: nn.Module, groups: int = 1, first_bn_multiplier: float = 10.0, backend: str = "fused"
    ) -> None:
        check_backend(backend, "BNStatMatcher")
        self.layers: list[tuple[str, _BatchNorm]] = [
            (name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)
        ]
        if not self.layers:
            raise ValueError(f"BNStatMatcher: {type(model).__name__} has no BatchNorm layer to match")
        for name, m in self.layers:
            if m.running_mean is None or m.running_var is None:
                raise ValueError(
                    f"BNStatMatcher: BatchNorm layer {name!r} has no running statistics (track_running_stats=False)"
                )
        self.groups = groups
        self.first_bn_multiplier = float(first_bn_multiplier)
        self._fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = get_op("bn_stat_loss", backend)
        self._total: torch.Tensor | None = None
        self._handles = [model.register_forward_pre_hook(self._start)]
        for i, (_, m) in enumerate(self.layers):
            weight = self.first_bn_multiplier if i == 0 else 1.0
            self._handles.append(m.register_forward_pre_hook(self._make_hook(weight)))

    def _start(self, module: nn.Module, args: tuple) -> None:
        self._total = None

    def _make_hook(self, weight: float):
        def hook(module: _BatchNorm, args: tuple) -> None:
            loss, _, _ = self._fn(args[0], module.running_mean, module.running_var, self.groups)
            term = loss * weight if weight != 1.0 else loss
            self._total = term if self._total is None else self._total + term

        return hook

    def loss(self) -> torch.Tensor:
        """``[G]`` weighted sum of the BN losses of the last forward pass (float32; float64 for a float64 model)."""
        if self._total is None:
            raise RuntimeError("BNStatMatcher.loss(): no forward pass through the model since it was attached")
        return self._total

    def remove(self) -> None:
        """Detach every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._total = None

    def __enter__(self) -> BNStatMatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
