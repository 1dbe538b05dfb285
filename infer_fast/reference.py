"""Pure-PyTorch references of the fused ops: the definition of what each kernel computes.

Float64-safe (inputs in float64 are computed in float64; every other dtype in float32, as the kernels
accumulate). Tests compare the kernels against these, benchmarks time them eager and under
torch.compile, and ``--backend reference`` runs the whole pipeline on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def bn_stat_loss(
    x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, groups: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchNorm-statistic matching loss per group.

    x ``[N, C, *spatial]`` is split into ``groups`` equal contiguous groups along N. For group g,
    ``mean[g]`` and ``var[g]`` (biased) are the per-channel statistics over the group's samples and
    spatial positions, and ``loss[g] = ||var[g] - running_var||_2 + ||mean[g] - running_mean||_2``.
    Returns ``(loss [G], mean [G, C], var [G, C])`` in float32 (float64 for float64 input).
    """
    acc = _acc_dtype(x)
    n, c = x.shape[0], x.shape[1]
    xg = x.to(acc).reshape(groups, n // groups, c, -1)
    mean = xg.mean(dim=(1, 3))
    var = (xg - mean[:, None, :, None]).square().mean(dim=(1, 3))
    loss = torch.linalg.vector_norm(var - running_var.to(acc), dim=1) + torch.linalg.vector_norm(
        mean - running_mean.to(acc), dim=1
    )
    return loss, mean, var


def compensator_broadcast(
    base: torch.Tensor,
    ufc: torch.Tensor,
    base_index: torch.Tensor,
    ufc_index: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
) -> torch.Tensor:
    """Compose synthetic images from stored natural images and compensators.

    ``out[i] = clamp((base[base_index[i]] * s - mean) / std + ufc[ufc_index[i]], lo, hi)`` per channel, with
    ``s = 1/255`` for uint8 ``base`` and 1 for floating ``base``; ``ufc_index[i] == -1`` adds no compensator.
    base ``[Nb, C, H, W]``, ufc ``[U, C, H, W]``, indices ``[B]`` int64, mean/std/lo/hi ``[C]``.
    Returns ``[B, C, H, W]`` in ufc's dtype. Gradient flows to ``ufc`` only (inclusive clamp mask, as torch.clamp).
    """
    acc = _acc_dtype(ufc)
    c = base.shape[1]
    b = base.index_select(0, base_index).to(acc)
    if base.dtype == torch.uint8:
        b = b / 255.0
    b = (b - mean.to(acc).view(1, c, 1, 1)) / std.to(acc).view(1, c, 1, 1)
    # index -1 selects an appended zero image: works for U == 0 and keeps inf/nan of unused UFCs out
    zero_row = torch.zeros((1, *ufc.shape[1:]), dtype=ufc.dtype, device=ufc.device)
    u = torch.cat([ufc, zero_row]).index_select(0, torch.where(ufc_index < 0, ufc.shape[0], ufc_index)).to(acc)
    out = torch.clamp(b + u, min=lo.to(acc).view(1, c, 1, 1), max=hi.to(acc).view(1, c, 1, 1))
    return out.to(ufc.dtype)


def mixed_soft_xent(
    logits: torch.Tensor,
    target: torch.Tensor,
    perm: torch.Tensor | None = None,
    lam: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mixup-aware distillation loss, batch mean of ``KL(p_b || softmax(z_b / T))``.

    Soft targets (floating ``[B, K]`` teacher logits): ``p = softmax(mix(y) / T)``, ``mix(y) = lam * y + (1 - lam) * y[perm]``.
    Hard targets (integer ``[B]`` class indices): ``p = lam * onehot(y) + (1 - lam) * onehot(y[perm])``.
    ``perm`` None means no mixing. Returns a scalar in float32 (float64 for float64 logits).
    """
    acc = _acc_dtype(logits)
    z = logits.to(acc)
    k = z.shape[1]
    if perm is None:
        perm = torch.arange(z.shape[0], device=z.device)
    if target.dtype.is_floating_point:
        y = target.to(acc)
        ym = (lam * y + (1.0 - lam) * y.index_select(0, perm)) / temperature
        p = torch.softmax(ym, dim=1)
        plogp = p * torch.log_softmax(ym, dim=1)
    else:
        onehot = F.one_hot(target.long(), k).to(acc)
        p = lam * onehot + (1.0 - lam) * onehot.index_select(0, perm)
        plogp = torch.xlogy(p, p)
    logq = torch.log_softmax(z / temperature, dim=1)
    return (plogp - p * logq).sum() / z.shape[0]
