"""An in-memory stand-in of a DistilledDataset (compose / hard_labels / soft_labels) built from real digits train
images (``data.sample_naturals``), for student-training tests that must not depend on the synthesis stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from infer_fast import data
from infer_fast.distilled import Manifest


class StandInDistilled:
    """``per_class`` real digits per class with soft labels = scaled one-hot logits (a confident teacher)."""

    method = "standin"

    def __init__(self, per_class: int = 10, image_size: int = 16, seed: int = 0, soft: bool = True):
        info = data.dataset_info("digits", image_size=image_size)
        sample = data.sample_naturals("digits", per_class=per_class, seed=seed, image_size=image_size)
        c = len(sample.classes)
        self.images = sample.images.reshape(c * per_class, 3, image_size, image_size)  # class-major
        self.hard_labels = torch.arange(c).repeat_interleave(per_class)
        self.soft_labels = F.one_hot(self.hard_labels, c).float() * 8.0 - 4.0 if soft else None
        self.classes = list(sample.classes)
        self.image_size = info.image_size
        self.small = info.small
        self.mean, self.std = tuple(info.mean), tuple(info.std)
        self.manifest = Manifest(method=self.method, classes=self.classes, mean=self.mean, std=self.std,
                                 image_size=self.image_size, small=self.small)
        self.tensors = {"naturals": self.images}

    def __len__(self) -> int:
        return self.images.shape[0]

    def compose(self, indices: torch.Tensor, device=None) -> torch.Tensor:
        m = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        out = (self.images.index_select(0, indices.cpu()).float() / 255.0 - m) / s
        return out.to(device) if device is not None else out


def write_standin_distilled(directory: str, per_class: int = 4, image_size: int = 16, seed: int = 0) -> str:
    """The stand-in written in the real distilled format (method "random": stored naturals + static labels)."""
    from infer_fast.distilled import write_distilled

    ds = StandInDistilled(per_class=per_class, image_size=image_size, seed=seed)
    c = len(ds.classes)
    naturals = ds.images.view(c, per_class, 3, image_size, image_size).transpose(0, 1).contiguous()  # [K, C, ...]
    labels = (F.one_hot(torch.arange(c).repeat(per_class), c).float() * 8.0 - 4.0).half()  # image i: class i % C
    manifest = {"method": "random", "classes": ds.classes, "mean": list(ds.mean), "std": list(ds.std),
                "image_size": image_size, "small": ds.small, "ipc": per_class, "teachers": [],
                "source": {"source": "digits"},
                "label_bytes": labels.numel() * 2}
    write_distilled(directory, manifest, {"naturals": naturals, "labels": labels})
    return directory
