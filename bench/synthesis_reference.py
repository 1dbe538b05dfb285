"""The baseline of bench_synthesis.py: a straightforward PyTorch port of the research code's UFC loop.

One (k, m) problem per forward pass; BN statistics from Python forward hooks on every BatchNorm, computed as
SRe2L's ``BNFeatureHook`` does (``mean([0, 2, 3])`` and ``permute(1, 0, 2, 3).contiguous().view(C, -1).var``);
plain autograd; a host sync per iteration (the losses are read with ``.item()`` for logging, as the research code
prints them). The model is used as given (NCHW, BatchNorm unfolded).

Two deliberate departures make its losses comparable with infer_fast's for the same seed: it draws its
augmentation from the same per-problem generator as :mod:`infer_fast.synth.ufc` (the research code calls
``random``), and it clamps the stored UFC (INFER §3; the research code clamps a temporary). Neither changes
its cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from infer_fast.runtime import hashed_seed
from infer_fast.synth.augment import AugSettings, apply_aug, draw_aug
from infer_fast.synth.problem import Problem


class BNFeatureHook:
    def __init__(self, module: nn.Module) -> None:
        self.hook = module.register_forward_hook(self.hook_fn)
        self.r_feature: torch.Tensor | None = None

    def hook_fn(self, module, inputs, output) -> None:
        x = inputs[0]
        nch = x.shape[1]
        mean = x.mean([0, 2, 3])
        var = x.permute(1, 0, 2, 3).contiguous().view([nch, -1]).var(1, unbiased=False)
        self.r_feature = torch.norm(module.running_var.data - var, 2) + torch.norm(module.running_mean.data - mean, 2)

    def close(self) -> None:
        self.hook.remove()


def optimise_problem(
    problem: Problem,
    model: nn.Module,
    base: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    seed: int,
    iterations: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    r_bn: float,
    first_bn_multiplier: float,
    aug: AugSettings,
    class_chunk: int = 0,
    on_iteration: Callable[[int, float, float], None] | None = None,
) -> tuple[torch.Tensor, list[float], list[float]]:
    """Optimise one problem; returns (its parameter, per-iteration CE, per-iteration BN loss)."""
    hooks = [BNFeatureHook(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    c = base.shape[1]
    x_nat = base[problem.base_index].float()
    if base.dtype == torch.uint8:
        x_nat = x_nat / 255.0
    x_nat = (x_nat - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)
    lo4, hi4 = lo.view(1, c, 1, 1), hi.view(1, c, 1, 1)
    u = problem.init.clone().requires_grad_(True)
    lower, upper = problem.lower, problem.upper
    opt = torch.optim.Adam([u], lr=lr, betas=betas, eps=eps)
    g = torch.Generator().manual_seed(hashed_seed("aug", seed, *problem.key))
    n, size = problem.num_images, base.shape[-1]
    chunk = class_chunk if 0 < class_chunk < n else n
    chunks = [range(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    ces, bns = [], []
    try:
        for t in range(iterations):
            for group in opt.param_groups:
                group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * t / iterations))
            opt.zero_grad()
            params = draw_aug(g, aug, n, size)
            ce_t = bn_t = 0.0
            for ids in chunks:
                sl = slice(ids.start, ids.stop)
                inputs = torch.clamp(x_nat[sl] + u[problem.ufc_index[sl]], lo4, hi4)
                inputs = apply_aug(inputs, params, ids)
                outputs = model(inputs)
                ce = F.cross_entropy(outputs, problem.targets[sl])
                rescale = [first_bn_multiplier] + [1.0] * (len(hooks) - 1)
                bn = sum(h.r_feature * w for h, w in zip(hooks, rescale, strict=True))
                loss = (ce + r_bn * bn) / len(chunks)
                loss.backward()
                ce_t += ce.item() / len(chunks)  # the research code's per-iteration logging: a host sync
                bn_t += bn.item() / len(chunks)
            opt.step()
            with torch.no_grad():
                u.copy_(torch.clamp(u, lower, upper))
            ces.append(ce_t)
            bns.append(bn_t)
            if on_iteration is not None:
                on_iteration(t, ce_t, bn_t)
    finally:
        for h in hooks:
            h.close()
    return u.detach(), ces, bns
