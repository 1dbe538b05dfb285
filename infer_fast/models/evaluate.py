"""Classification accuracy of a model over a loader: the one evaluator of teachers and students."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


@torch.no_grad()
def accuracy_counts(model: nn.Module, loader: Iterable, device: torch.device | None = None,
                    all_ranks: bool = False) -> torch.Tensor:
    """float64 ``[top-1 correct, top-5 correct, images]`` of ``model`` (in eval mode, restored after) over
    ``loader``'s (images, labels) batches, moved to ``device`` when given. ``all_ranks``: summed over the torchrun
    ranks (every rank must call it then; each holds its shard of the loader)."""
    was_training = model.training
    model.eval()
    counts = None
    for images, labels in loader:
        if device is not None:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        if counts is None:
            counts = torch.zeros(3, dtype=torch.float64, device=logits.device)
        hit = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
        counts[0] += hit[:, 0].sum()
        counts[1] += hit.any(dim=1).sum()
        counts[2] += labels.numel()
    if counts is None:
        counts = torch.zeros(3, dtype=torch.float64, device=device)
    if all_ranks and dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    model.train(was_training)
    return counts
