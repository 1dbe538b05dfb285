"""An in-memory stand-in of a DistilledDataset (compose / hard_labels / soft_labels) built from real digits images,
for student-training tests that must not depend on the synthesis stage."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def digits_arrays(image_size: int = 16):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.float32)).unsqueeze(1)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(d.target.astype(np.int64))


class StandInDistilled:
    """``per_class`` real digits per class (from the first 1,400 images) with soft labels = scaled one-hot logits."""

    method = "standin"
    small = True

    def __init__(self, per_class: int = 10, image_size: int = 16, seed: int = 0):
        x, y = digits_arrays(image_size)
        g = torch.Generator().manual_seed(seed)
        picks = []
        for c in range(10):
            cand = torch.nonzero(y[:1400] == c).flatten()
            picks.append(cand[torch.randperm(cand.numel(), generator=g)[:per_class]])
        idx = torch.cat(picks)
        self.images = x[idx]
        self.hard_labels = y[idx]
        self.soft_labels = F.one_hot(self.hard_labels, 10).float() * 8.0 - 4.0
        self.classes = [str(i) for i in range(10)]
        self.image_size = image_size
        f = x[:1400].double() / 255.0
        self.mean = tuple(f.mean(dim=(0, 2, 3)).tolist())
        self.std = tuple(f.std(dim=(0, 2, 3)).tolist())
        self.manifest = {"method": self.method, "teachers": []}
        self.tensors = {"images": self.images}

    def __len__(self) -> int:
        return self.images.shape[0]

    def compose(self, indices: torch.Tensor, device=None) -> torch.Tensor:
        m = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        out = (self.images.index_select(0, indices.cpu()).float() / 255.0 - m) / s
        return out.to(device) if device is not None else out


class DigitsValLoader:
    """Real digits held out from the stand-in's pool (images 1,400 onward), normalised like the stand-in."""

    def __init__(self, ds: StandInDistilled, batch_size: int = 128):
        x, y = digits_arrays(ds.image_size)
        m = torch.tensor(ds.mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(ds.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.x = (x[1400:].float() / 255.0 - m) / s
        self.y = y[1400:]
        self.batch_size = batch_size
        self.classes = ds.classes

    def __iter__(self):
        for i in range(0, len(self.y), self.batch_size):
            yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)
