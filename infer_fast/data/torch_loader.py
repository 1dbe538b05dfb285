"""Plain PyTorch loaders: DataLoader + PIL/torchvision v2 for folders (the fallback when DALI is absent) and an
in-memory tensor loader for the digits. Same interface as the DALI loader (see :class:`BaseLoader`).

Augmentation is seeded per sample from ``(seed, epoch, index)``, so a run is reproducible and does not depend on
``num_workers``; the global torch RNG of the caller is left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from infer_fast.data.augment import random_crop_flip
from infer_fast.data.sampling import num_batches, shard_indices, train_batches
from infer_fast.runtime import mix_seed

# ImageNet-style eval reads resize the short side to S * 256 / 224, then center-crop S.
EVAL_RESIZE_RATIO = 256 / 224
PAD = 4  # small-image training: zero-pad 4 pixels, random S x S crop


def eval_resize_size(image_size: int, small: bool) -> int:
    return image_size if small else int(round(image_size * EVAL_RESIZE_RATIO))


class BaseLoader:
    """Iterable of ``(images float32 [B, 3, S, S] normalised on device, labels int64 [B])``.

    ``len()`` is the number of batches of this rank; ``set_epoch(e)`` selects the epoch (order and augmentation);
    without it, each new iteration advances the epoch by one.
    """

    provider = "base"

    def __init__(self, *, classes, mean, std, image_size, small, train, batch_size, seed, rank, world, device,
                 drop_last, num_files, skipped=0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.classes = list(classes)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.image_size = int(image_size)
        self.small = bool(small)
        self.train = bool(train)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank, self.world = rank, world
        self.device = torch.device(device)
        self.drop_last = bool(drop_last)
        self.num_files = int(num_files)  # files of the whole split (all shards)
        self.skipped = int(skipped)  # bad files left out by validation
        self._epoch = 0
        self._scale = torch.tensor([255.0 * s for s in self.std]).view(1, 3, 1, 1)
        self._shift = torch.tensor([255.0 * m for m in self.mean]).view(1, 3, 1, 1)

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def indices(self, epoch: int) -> torch.Tensor:
        """Dataset indices this rank reads in ``epoch``, in order (train: equal length on every rank)."""
        idx = shard_indices(self.num_files, self.seed, epoch, self.train, self.rank, self.world)
        if self.train and self.drop_last:
            idx = idx[: train_batches(self.num_files, self.world, self.batch_size) * self.batch_size]
        return idx

    def __len__(self) -> int:
        if self.train and self.drop_last:
            return train_batches(self.num_files, self.world, self.batch_size)
        return num_batches(len(self.indices(0)), self.batch_size, self.drop_last)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S] -> float32 normalised on ``self.device``."""
        x = x.to(self.device, non_blocking=True).float()
        return (x - self._shift.to(x.device)) / self._scale.to(x.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        return self._iter_epoch(epoch)

    def _iter_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(provider={self.provider}, classes={len(self.classes)}, files={self.num_files}, "
                f"shard={self.rank}/{self.world}, batch_size={self.batch_size}, batches={len(self)}, "
                f"train={self.train}, image_size={self.image_size}, device={self.device})")


class ResizeCenterCrop:
    """Resize the short side to ``resize`` (antialiased bilinear), then crop the central ``crop`` x ``crop``.

    The geometry is DALI's (``fn.resize(resize_shorter=)`` + ``fn.crop``): the long side is rounded to nearest and
    the crop offset rounds halves up, where torchvision truncates the long side and rounds offsets half-to-even,
    so both loaders cut the same window and eval outputs agree to decoder/resampler precision.
    """

    def __init__(self, resize: int, crop: int):
        self.resize, self.crop = int(resize), int(crop)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        r = self.resize
        size = (r, max(r, int(h * r / w + 0.5))) if w <= h else (max(r, int(w * r / h + 0.5)), r)
        if size != (w, h):
            img = img.resize(size, Image.BILINEAR)
        w, h = size
        left, top = (w - self.crop + 1) // 2, (h - self.crop + 1) // 2
        return img.crop((left, top, left + self.crop, top + self.crop))


def build_transform(image_size: int, small: bool, train: bool) -> v2.Compose:
    """PIL RGB image -> uint8 tensor [3, S, S]."""
    s = image_size
    if small:
        ops = [ResizeCenterCrop(s, s)]
        if train:
            ops += [v2.RandomCrop(s, padding=PAD), v2.RandomHorizontalFlip()]
    elif train:
        ops = [v2.RandomResizedCrop(s, antialias=True), v2.RandomHorizontalFlip()]
    else:
        ops = [ResizeCenterCrop(eval_resize_size(s, small), s)]
    return v2.Compose([*ops, v2.PILToTensor()])


def open_rgb(path: str, draft_side: int | None = None) -> Image.Image:
    """Decode ``path`` to RGB; JPEGs are downscaled during decoding (by 1/2, 1/4 or 1/8, libjpeg draft mode)
    as long as the short side stays >= ``draft_side``."""
    with Image.open(path) as im:
        if draft_side and im.format == "JPEG":
            w, h = im.size
            scale = draft_side / min(w, h)
            im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        return im.convert("RGB")


class FolderDataset(Dataset):
    """Validated files of a split; item ``(index, sample_seed)`` -> ``(uint8 [3, S, S], label)``."""

    def __init__(self, files: Sequence[str], labels: Sequence[int], transform, draft_side: int | None):
        self.files = list(files)
        self.labels = list(labels)
        self.transform = transform
        self.draft_side = draft_side

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item):
        index, sample_seed = item
        img = open_rgb(self.files[index], self.draft_side)
        # torchvision draws from the global CPU generator; seeding it directly costs ~10 us (torch.manual_seed
        # also visits every accelerator backend: ~0.5 ms). The loader restores the caller's state afterwards.
        torch.default_generator.manual_seed(sample_seed)
        return self.transform(img), self.labels[index]


class TorchFolderLoader(BaseLoader):
    provider = "torch"

    def __init__(self, files, labels, *, num_workers: int = 2, draft: bool = True, **kw):
        super().__init__(num_files=len(files), **kw)
        self.num_workers = int(num_workers)
        # Draft decoding keeps the short side >= the eval resize (S * 256/224): eval reads lose nothing, and
        # training crops of huge images are read from a 1/2..1/8 downscale, like a resize-on-load cache would.
        draft_side = eval_resize_size(self.image_size, self.small) if draft else None
        self.dataset = FolderDataset(files, labels, build_transform(self.image_size, self.small, self.train),
                                     draft_side)

    def _iter_epoch(self, epoch):
        idx = self.indices(epoch).tolist()
        items = [(i, mix_seed(self.seed, epoch, i)) for i in idx]
        dl = DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=items, num_workers=self.num_workers,
            drop_last=self.drop_last, pin_memory=self.device.type == "cuda",
            persistent_workers=False, prefetch_factor=4 if self.num_workers else None,
            generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.rank)),  # not the global RNG
        )
        it = iter(dl)
        while True:
            state = torch.get_rng_state() if self.num_workers == 0 else None  # samples reseed the global RNG
            try:
                x, y = next(it)
            except StopIteration:
                return
            finally:
                if state is not None:
                    torch.set_rng_state(state)
            yield self.normalise(x), y.to(self.device, torch.int64)


class TensorLoader(BaseLoader):
    """In-memory uint8 images (the digits): batched gather + vectorized augmentation on the target device."""

    provider = "tensor"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, **kw):
        super().__init__(num_files=len(images), **kw)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)

    def _iter_epoch(self, epoch):
        idx = self.indices(epoch)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.rank))
        n = len(idx)
        stop = n - n % self.batch_size if self.drop_last else n
        for lo in range(0, stop, self.batch_size):
            b = idx[lo:lo + self.batch_size].to(self.device)
            x = self.images[b]
            if self.train:
                x = random_crop_flip(x, PAD, g)
            yield self.normalise(x), self.labels[b]
