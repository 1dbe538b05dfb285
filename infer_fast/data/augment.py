"""Batched training augmentation on device: the data loaders' small-image training reads and student training
(INFER.md section 5).

Small (CIFAR-style) images: random crop of the original size from the image zero-padded by 4 pixels, then a
random horizontal flip. ImageNet-style images: random resized crop (scale 0.08-1, ratio 3/4-4/3, bilinear) back to
the input size, then a random horizontal flip. Everything is drawn per image from an explicit ``torch.Generator``
(so a resumed run replays the same augmentation) and applied to the whole batch in one indexing / grid-sample op.
Inputs are normalised images, so zero padding is the dataset-mean colour (torchvision's RandomCrop on a normalised
tensor does the same).
"""

from __future__ import annotations

import math

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
