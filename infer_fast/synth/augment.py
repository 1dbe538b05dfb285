"""The synthesis's augmentation: per problem and iteration, a random resized crop + flip (ImageNet-style images)
and a random roll of up to ``jitter`` pixels, drawn on the host from the problem's own generator.

:func:`draw_aug` + :func:`apply_aug` are the eager loop's; :func:`aug_row` + :func:`apply_aug_static` the same draws
as one integer row per problem, applied with fixed-shape tensor ops (the roll a gather, exactly ``torch.roll``; the
crop a product with bilinear resampling matrices, equal to ``interpolate`` up to float rounding), so that a CUDA
graph can replay them.

Why not :func:`infer_fast.data.augment.random_resized_crop` (the student's): that one draws a whole batch from tensor
ops and clips a crop that does not fit (no retry), with ``grid_sample``. Here the crop follows torchvision's
``RandomResizedCrop.get_params`` exactly (10 tries, then the whole image) with antialiased resizing, one draw per
problem (all its images share the crop, as the research code), and its parameters must exist on the host as
integers for the graph-ready rows. Drawing them the student's way would change every distilled set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugSettings:
    small: bool  # CIFAR-style: roll only; else random resized crop + flip, then roll
    jitter: int
    scale: tuple[float, float] = (0.08, 1.0)
    per_image_crop: bool = False


def _uniform(g: torch.Generator, a: float, b: float) -> float:
    return a + (b - a) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] inclusive."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _crop_params(g: torch.Generator, h: int, w: int, scale: tuple[float, float]) -> tuple[int, int, int, int, bool]:
    """torchvision RandomResizedCrop.get_params (ratio 3/4..4/3) + a flip coin, drawn from ``g``."""
    area = h * w
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    box = None
    for _ in range(10):
        target = area * _uniform(g, *scale)
        aspect = math.exp(_uniform(g, *log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            box = (_randint(g, 0, h - ch), _randint(g, 0, w - cw), ch, cw)
            break
    if box is None:  # fallback: whole image (torchvision's central crop at ratio 1 for square inputs)
        box = (0, 0, h, w)
    return (*box, bool(torch.rand((), generator=g) < 0.5))


def draw_aug(g: torch.Generator, s: AugSettings, n: int, size: int) -> dict:
    """One iteration's augmentation parameters for one problem of n images."""
    p: dict = {}
    if not s.small:
        p["crops"] = [_crop_params(g, size, size, s.scale) for _ in range(n if s.per_image_crop else 1)]
    p["roll"] = (_randint(g, -s.jitter, s.jitter), _randint(g, -s.jitter, s.jitter)) if s.jitter else (0, 0)
    return p


def _crop(x: torch.Tensor, box: tuple[int, int, int, int, bool], size: int) -> torch.Tensor:
    top, left, ch, cw, flip = box
    y = x[:, :, top:top + ch, left:left + cw]
    if (ch, cw) != (size, size):
        y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.flip(3) if flip else y


def apply_aug(x: torch.Tensor, p: dict, image_ids: range) -> torch.Tensor:
    """Augment one problem's chunk ``x`` [n, 3, S, S] (images ``image_ids`` of the problem)."""
    size = x.shape[-1]
    if "crops" in p:
        crops = p["crops"]
        if len(crops) == 1:
            x = _crop(x, crops[0], size)
        else:
            x = torch.cat([_crop(x[j:j + 1], crops[i], size) for j, i in enumerate(image_ids)])
    dy, dx = p["roll"]
    if dy or dx:
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return x


def aug_width(s: AugSettings, n: int) -> int:
    """Length of an :func:`aug_row` for a problem of n images."""
    return 2 + 5 * (0 if s.small else n if s.per_image_crop else 1)


def aug_row(p: dict) -> list[int]:
    """:func:`draw_aug`'s parameters as integers: ``[dy, dx]`` then ``top, left, ch, cw, flip`` per crop."""
    row = list(p["roll"])
    for top, left, ch, cw, flip in p.get("crops", ()):
        row += [top, left, ch, cw, int(flip)]
    return row


def _resample(offset: torch.Tensor, length: torch.Tensor, flip: torch.Tensor | None, size: int) -> torch.Tensor:
    """Bilinear resampling matrices ``[..., size (output), size (input)]``: the window ``[offset, offset + length)``
    of a line resized to ``size`` (align_corners=False), output reversed where ``flip``. A crop is never larger than
    the image, so the antialiasing filter of the default's ``interpolate(antialias=True)`` is this triangle filter;
    a whole line (``length == size``) gives the identity, exactly so in float32 matmul (torch's default; TF32 would
    round it)."""
    pos = torch.arange(size, device=offset.device, dtype=torch.float32)
    length = length.unsqueeze(-1).float()
    src = ((pos + 0.5) * (length / size) - 0.5).clamp_min(0).minimum(length - 1) + offset.unsqueeze(-1)
    if flip is not None:
        src = torch.where(flip.unsqueeze(-1).bool(), src.flip(-1), src)
    return (1 - (pos - src.unsqueeze(-1)).abs()).clamp_min(0)


def apply_aug_static(x: torch.Tensor, params: torch.Tensor, image_ids: range) -> torch.Tensor:
    """:func:`apply_aug` for every problem of a chunk at once, driven by the device tensor ``params`` [P, F] (one
    :func:`aug_row` per problem): fixed shapes, no host read, so it can be captured in a CUDA graph.

    ``x`` [P * nj, 3, S, S] holds the chunk's ``nj = len(image_ids)`` images of each problem in turn. The roll is a
    gather, so forward and backward equal ``torch.roll`` exactly; the crop and flip are a product with
    :func:`_resample` matrices, equal to the default's ``interpolate`` up to float rounding (the identity where
    the crop is the whole image).
    """
    num_p, size = params.shape[0], x.shape[-1]
    x = x.view(num_p, -1, *x.shape[1:])  # [P, nj, 3, S, S]
    if params.shape[1] > 2:
        crops = params[:, 2:].view(num_p, -1, 5)
        if crops.shape[1] > 1:  # one crop per image
            crops = crops[:, image_ids.start:image_ids.stop]
        top, left, ch, cw, flip = crops.unbind(-1)  # [P, 1 or nj] each
        rows = _resample(top, ch, None, size).unsqueeze(2)  # [P, 1 or nj, 1, S, S], broadcast over channels
        cols = _resample(left, cw, flip, size).unsqueeze(2)
        x = rows @ x @ cols.transpose(-1, -2)
    shift = (torch.arange(size, device=x.device) - params[:, :2, None]) % size  # [P, 2, S]: out[i] = in[i - d]
    x = x.gather(3, shift[:, 0].view(num_p, 1, 1, size, 1).expand_as(x))
    x = x.gather(4, shift[:, 1].view(num_p, 1, 1, 1, size).expand_as(x))
    return x.reshape(-1, *x.shape[2:])
