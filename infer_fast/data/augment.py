"""Batched training augmentation on device: the data loaders' small-image training reads and student training
(INFER §5), and the student's batch mixing (mixup, CutMix).

Small (CIFAR-style) images: random crop of the original size from the image zero-padded by 4 pixels, then a
random horizontal flip. ImageNet-style images: random resized crop (scale 0.08-1, ratio 3/4-4/3, bilinear) back to
the input size, then a random horizontal flip. Everything is drawn per image from an explicit ``torch.Generator``
(so a resumed run replays the same augmentation) and applied to the whole batch in one indexing / grid-sample op.
Inputs are normalised images, so zero padding is the dataset-mean colour (torchvision's RandomCrop on a normalised
tensor does the same).

Mixing (:func:`mix_batch`) returns the images and the ``(lam, perm)`` the labels are mixed with (inside the fused
``mixed_soft_xent`` op): mixup ``x = lam * x + (1 - lam) * x[perm]``, or CutMix, a box of ``x[perm]`` pasted in with
``lam`` the kept area.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Flip each image of ``x [B, C, H, W]`` horizontally with probability ``p``."""
    flip = (_rand(x.shape[0], generator) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def random_crop(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random ``H x W`` crop of ``x [B, C, H, W]`` zero-padded by ``padding`` on every side."""
    b, _, h, w = x.shape
    if padding <= 0:
        return x
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = dx[:, None] + torch.arange(w, device=x.device)  # [B, W]
    bidx = torch.arange(b, device=x.device)[:, None, None]
    # advanced indexing over (batch, row, col) with the channel slice in between gives [B, H, W, C]
    out = padded[bidx, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_resized_crop(
    x: torch.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-image random resized crop of ``x [B, C, H, W]`` back to ``H x W`` (bilinear), as torchvision's
    RandomResizedCrop: area fraction ~ U(scale), log aspect ratio ~ U(log ratio); a crop that does not fit is
    clipped to the image (torchvision retries 10 times then falls back to a center crop; clipping keeps it batched).
    """
    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    cw = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
    ch = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - cw)  # crop centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - ch)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cw
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``pad``, crop a random H x W window per image, flip half of them horizontally (CIFAR-style)."""
    return random_flip(random_crop(x, pad, generator), generator)


def augment_batch(x: torch.Tensor, small: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """The dataset's training augmentation: crop (padded for small images, resized otherwise) then flip."""
    if x.dim() != 4:
        raise ValueError(f"augment_batch: expected images [B, C, H, W], got shape {tuple(x.shape)}")
    x = random_crop(x, 4, generator) if small else random_resized_crop(x, generator=generator)
    return random_flip(x, generator)


def mixup_inputs(x: torch.Tensor, lam: float, perm: torch.Tensor | None) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]`` (the images; the labels are mixed the same way inside the loss op)."""
    if perm is None or lam == 1.0:
        return x
    return lam * x + (1.0 - lam) * x.index_select(0, perm)


def cutmix_inputs(x: torch.Tensor, lam: float, perm: torch.Tensor, generator: torch.Generator
                  ) -> tuple[torch.Tensor, float]:
    """CutMix (Yun et al. 2019, as SRe2L's relabel/train code draws it): a box of side ratio ``sqrt(1 - lam)``
    around a uniform centre, clipped to the image, is pasted from ``x[perm]``. Returns the images and the label
    weight of ``x``: the kept area ``1 - box area / image area`` (after clipping), so the area-weighted label is
    ``lam' * y + (1 - lam') * y[perm]``, mixed inside the fused loss op exactly as for mixup."""
    h, w = x.shape[-2:]
    cut = math.sqrt(max(0.0, 1.0 - lam))
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=generator))  # CPU generator: no device sync
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    if y2 <= y1 or x2 <= x1:
        return x, 1.0
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[:, :, y1:y2, x1:x2].index_select(0, perm)  # gather the box only
    return out, 1.0 - (y2 - y1) * (x2 - x1) / (h * w)


def mix_batch(x: torch.Tensor, mode: str, alpha: float, rng: Any, generator: torch.Generator
              ) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """Mix a batch: ``lam ~ Beta(alpha, alpha)`` from the numpy generator ``rng``, a permutation from
    ``generator``, then mixup or (``mode == "cutmix"``) CutMix. Returns (images, lam, perm); ``(x, 1.0, None)``
    when ``alpha`` is 0 or the batch has one image."""
    b = x.shape[0]
    if alpha <= 0 or b <= 1:
        return x, 1.0, None
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(b, generator=generator).to(x.device)
    if mode == "cutmix":
        x, lam = cutmix_inputs(x, lam, perm, generator)
    else:
        x = mixup_inputs(x, lam, perm)
    return x, lam, perm
