"""Static soft labels (spec section 4): per synthetic image, the mean of the M teachers' logits on the
un-augmented image, computed once and stored as fp16."""

from __future__ import annotations

import torch
import torch.nn as nn
from tqdm import tqdm

from infer_fast.distilled import DistilledDataset


@torch.no_grad()
def static_labels(
    teachers: list[nn.Module], ds: DistilledDataset, batch_size: int, device: torch.device, progress: bool = True
) -> torch.Tensor:
    """float32 [len(ds), C] on CPU: mean over ``teachers`` of their logits on ``ds.compose(i)``."""
    n = len(ds)
    out = torch.empty(n, ds.num_classes, dtype=torch.float32)
    with tqdm(total=n, desc="static labels", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n))
            x = ds.compose(idx, device)
            acc = None
            for model in teachers:
                z = model(x).float()
                acc = z if acc is None else acc + z
            out[start:start + len(idx)] = (acc / len(teachers)).cpu()
            bar.update(len(idx))
    return out
