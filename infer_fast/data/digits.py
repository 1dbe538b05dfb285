"""The embedded default source: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

Pixels 0..16 become uint8 0..255, are upsampled (bilinear) to ``image_size`` and repeated to 3 channels, so the
digits look like any small RGB dataset. The train/val split is fixed (stratified, seed 0): 1,437 / 360.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

DIGITS = "digits"
CLASSES = [str(i) for i in range(10)]
NUM_VAL = 360
DEFAULT_SIZE = 32


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # [1797, 8, 8]
    idx = np.arange(len(x))
    tr, va = train_test_split(idx, test_size=NUM_VAL, stratify=d.target, random_state=0)
    tr.sort()
    va.sort()
    return x, d.target.astype(np.int64), tr, va


def split_indices(split: str) -> np.ndarray:
    """Indices into the 1,797 digits of the train or eval split."""
    _, _, tr, va = _raw()
    if split == "train":
        return tr
    if split in ("eval", "val", "test"):
        return va
    raise ValueError(f"digits: split must be 'train' or 'eval', got {split!r}")


@functools.lru_cache(maxsize=8)
def _images(image_size: int) -> torch.Tensor:
    x, _, _, _ = _raw()
    t = torch.from_numpy(x).float().unsqueeze(1)  # [N, 1, 8, 8]
    if image_size != 8:
        t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return t.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def load(split: str = "train", image_size: int = DEFAULT_SIZE) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``(images uint8 [N, 3, S, S], labels int64 [N], indices into the full set)`` of a split."""
    if int(image_size) < 8:
        raise ValueError(f"digits: image_size must be >= 8, got {image_size}")
    _, y, _, _ = _raw()
    idx = split_indices(split)
    t = torch.from_numpy(idx)
    return _images(int(image_size))[t], torch.from_numpy(y[idx]), idx


@functools.lru_cache(maxsize=8)
def mean_std(image_size: int = DEFAULT_SIZE) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean/std (0..1 scale) of the upsampled train split."""
    x, _, _ = load("train", image_size)
    f = x.double() / 255.0
    m = f.mean(dim=(0, 2, 3)).tolist()
    s = f.std(dim=(0, 2, 3)).tolist()
    return (m[0], m[1], m[2]), (s[0], s[1], s[2])
