"""The public data API: ``dataset_info``, ``sample_naturals``, ``make_loader`` over "digits" or an ImageFolder root."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from infer_fast.data import digits
from infer_fast.data.eval_cache import cache_key, decode_once, decoded_bytes
from infer_fast.data.folder import TRAIN_SPLITS, DataError, SplitScan, scan_split
from infer_fast.data.sampling import resolve_shard
from infer_fast.data.torch_loader import BaseLoader, ResizeCenterCrop, TensorLoader, TorchFolderLoader, open_rgb
from infer_fast.runtime import IMAGENET_MEAN, IMAGENET_STD, index_in, mix_seed, resolve_device, sample_names

SMALL_MAX_SIDE = 64  # folders whose median image side is at most this get CIFAR-style augmentation
LARGE_DEFAULT_SIZE = 224
LOADERS = ("auto", "dali", "torch")


@dataclass(frozen=True)
class DatasetInfo:
    source: str
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    small: bool  # CIFAR-style (pad + random crop) vs ImageNet-style (random resized crop) training reads
    num_train: int
    train_bytes: int  # num_train * 3 * S * S (uint8 size of the train split at image_size)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def is_digits(source: str) -> bool:
    return str(source) == digits.DIGITS


def _check_size(image_size: int | None) -> int | None:
    if image_size is None:
        return None
    if int(image_size) != image_size or int(image_size) < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    return int(image_size)


def dataset_info(source: str, image_size: int | None = None) -> DatasetInfo:
    """Classes, normalisation, default image size and train-split size of ``source`` ("digits" or a folder)."""
    image_size = _check_size(image_size)
    if is_digits(source):
        s = image_size or digits.DEFAULT_SIZE
        mean, std = digits.mean_std(s)
        n = len(digits.split_indices("train"))
        return DatasetInfo(digits.DIGITS, list(digits.CLASSES), mean, std, s, True, n, n * 3 * s * s)
    scan = scan_split(source, "train")
    return _folder_info(scan, image_size)


def _folder_info(scan: SplitScan, image_size: int | None) -> DatasetInfo:
    small = scan.median_side <= SMALL_MAX_SIDE
    s = image_size or (scan.median_side if small else LARGE_DEFAULT_SIZE)
    n = len(scan.files)
    return DatasetInfo(scan.root, list(scan.classes), IMAGENET_MEAN, IMAGENET_STD, s, small, n, n * 3 * s * s)


@dataclass
class NaturalSample:
    images: torch.Tensor  # uint8 [C, per_class, 3, S, S]
    classes: list[str]
    files: list[list[str]]  # per class, the files picked ("digits:<index>" for the digits)


def files_by_class(scan: SplitScan) -> list[list[str]]:
    """A scan's valid files grouped by class index (absolute paths, the scan's order within a class)."""
    by_class: list[list[str]] = [[] for _ in scan.classes]
    for f, lab in zip(scan.files, scan.labels, strict=True):
        by_class[lab].append(f)
    return by_class


def _pick(n_avail: int, per_class: int, seed: int, c: int, name: str, where: str) -> list[int]:
    if per_class > n_avail:
        raise DataError(f"sample_naturals: class {name!r} has {n_avail} valid images in {where}, "
                        f"fewer than per_class={per_class}")
    g = torch.Generator().manual_seed(mix_seed(seed, c))
    return torch.randperm(n_avail, generator=g)[:per_class].tolist()


def sample_naturals(source: str, per_class: int, seed: int, image_size: int | None = None,
                    split: str = "train") -> NaturalSample:
    """``per_class`` natural images of every class (seeded, valid files only), resized + center-cropped to S."""
    if int(per_class) < 1:
        raise ValueError(f"sample_naturals: per_class must be >= 1, got {per_class}")
    image_size = _check_size(image_size)
    if is_digits(source):
        s = image_size or digits.DEFAULT_SIZE
        x, y, idx = digits.load(split, s)
        out, files = [], []
        for c, name in enumerate(digits.CLASSES):
            members = torch.nonzero(y == c).flatten()
            pick = members[_pick(len(members), per_class, seed, c, name, f"digits {split}")]
            out.append(x[pick])
            files.append([f"digits:{int(idx[i])}" for i in pick])
        return NaturalSample(torch.stack(out), list(digits.CLASSES), files)
    info = dataset_info(source, image_size)
    scan = scan_split(source, split)
    s = info.image_size
    by_class = files_by_class(scan)
    files = [[fs[i] for i in _pick(len(fs), per_class, seed, c, scan.classes[c], scan.split_dir)]
             for c, fs in enumerate(by_class)]
    tf = v2.Compose([ResizeCenterCrop(s, s), v2.PILToTensor()])
    flat = [f for fs in files for f in fs]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        imgs = list(pool.map(lambda f: tf(open_rgb(f, s)), flat))
    images = torch.stack(imgs).view(len(scan.classes), per_class, 3, s, s)
    return NaturalSample(images, list(scan.classes), files)


def natural_overlap(natural_files: list[list[str]] | None, val_source: str) -> dict | None:
    """How many of a distilled set's natural images (its manifest's ``source.natural_files``) are files of the
    evaluation split of ``val_source``, compared by real path (the links of ``data holdout`` count as their
    targets) among files of the same name, so that disjoint splits (ImageNet's train and val name their files
    differently) cost no file-system call. None when it cannot be told: no file list (sre2l, older sets), or the
    digits (their naturals come from the fixed training split, disjoint from its validation split by construction)."""
    paths = [f for fs in natural_files or [] for f in fs if isinstance(f, str) and not f.startswith("digits:")]
    if not paths or is_digits(val_source):
        return None
    scan = scan_split(val_source, "eval", require_all_classes=False, progress=False)
    names = {os.path.basename(f) for f in paths}
    val = {os.path.realpath(f) for f in scan.files if os.path.basename(f) in names}
    hits = [f for f in paths if val and os.path.realpath(f) in val]
    return {"naturals": len(paths), "in_val": len(hits), "val": scan.split_dir, "examples": hits[:3]}


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def match_classes(found: list[str], expected: list[str], where: str, against: str) -> list[int] | None:
    """Index in ``expected`` of each class of ``found`` (None when equal); refuses, naming the classes missing
    from ``where`` and those extra in it, when they are not the same set of names."""
    if found == expected:
        return None
    index, extra = index_in(found, expected)
    missing = index_in(expected, found)[1]
    if missing or extra:
        parts = ([f"missing {len(missing)} ({sample_names(missing, 8)})"] if missing else []) + (
            [f"extra {len(extra)} ({sample_names(extra, 8)})"] if extra else [])
        raise DataError(f"class folders of {where!r} differ from {against}: {'; '.join(parts)}")
    return index


def make_loader(source: str, split: str = "train", batch_size: int = 128, loader: str = "auto",
                image_size: int | None = None, seed: int = 0, shard: tuple[int, int] | None = None,
                num_workers: int = 2, device: str | torch.device | None = None, drop_last: bool | None = None,
                mean: tuple[float, float, float] | None = None,
                std: tuple[float, float, float] | None = None, classes: list[str] | None = None,
                small: bool | None = None, memory_budget: int = 0) -> BaseLoader:
    """Batches ``(images float32 [B, 3, S, S] normalised on device, labels int64 [B])`` of ``source``.

    ``split``: "train" (shuffled, augmented: random resized crop + flip, or pad-4 random crop + flip for small
    images; drops the last partial batch and gives every rank the same batch count) or "eval" (resize + center
    crop, every file of the shard exactly once). An eval source may hold only ``val/`` or ``test/``, or be a plain
    ``ROOT/<class>/<image>`` tree. ``loader``: "dali" (NVIDIA DALI; GPU decoding when ``device`` is CUDA), "torch"
    (DataLoader + PIL), or "auto" (DALI when importable; the digits are in memory and use the tensor loader).
    ``shard=(rank, world)`` defaults to the torch.distributed environment. Only files that passed validation are
    read (``loader.skipped`` counts the rest).

    ``classes`` (e.g. a distilled set's, from its manifest) fixes the class order: labels are indices into it,
    and a split whose class folders are another set of names is refused, naming the missing and extra ones.
    ``small`` overrides the small-image geometry read from the data. ``memory_budget`` (bytes; 0: off): an eval
    split whose decoded uint8 images fit it is decoded once, cached on disk and served from memory
    (:mod:`infer_fast.data.eval_cache`), with the same pixels as the streaming loader. A small-image train split
    that fits is decoded once too (its images at S x S, the reads before augmentation) and augmented in memory,
    batched (pad-4 random crop + flip, the same transform as the streaming reads, drawn from the loader's seed):
    re-decoding 100,000 thumbnails every epoch is most of a CPU epoch's data time. ImageNet-style train reads
    (random resized crops of the full-size image) always stream.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"make_loader: split must be 'train' or 'eval', got {split!r}")
    if loader not in LOADERS:
        raise ValueError(f"make_loader: loader must be one of {LOADERS}, got {loader!r}")
    train = split == "train"
    rank, world = resolve_shard(shard)
    dev = torch.device(device) if device is not None else resolve_device("auto")
    scan = None if is_digits(source) else scan_split(source, split)
    # Eval reads follow the train split's geometry when there is one, else the eval split's own.
    has_train = scan is None or os.path.isdir(os.path.join(source, TRAIN_SPLITS[0]))
    info = dataset_info(source, image_size) if train or has_train else _folder_info(scan, image_size)
    common = dict(
        classes=list(classes) if classes is not None else info.classes, mean=tuple(mean or info.mean),
        std=tuple(std or info.std), image_size=info.image_size, small=info.small if small is None else bool(small),
        train=train, batch_size=batch_size, seed=seed, rank=rank, world=world, device=dev,
        drop_last=train if drop_last is None else bool(drop_last),
    )
    for name, v in (("mean", common["mean"]), ("std", common["std"])):
        if len(v) != 3:
            raise ValueError(f"make_loader: {name} must have 3 values (RGB), got {v!r}")
    if is_digits(source):
        match_classes(list(digits.CLASSES), common["classes"], "digits", "the expected classes")
        x, y, _ = digits.load(split, info.image_size)
        if loader == "dali":
            from infer_fast.data.dali import DaliTensorLoader

            return DaliTensorLoader(x, y, num_workers=num_workers, **common)
        return TensorLoader(x, y, **common)
    against = "the given classes" if classes is not None else \
        f"those of {os.path.join(info.source, TRAIN_SPLITS[0])!r} (both splits need the same classes)"
    index = match_classes(scan.classes, common["classes"], scan.split_dir, against)
    labels = scan.labels if index is None else [index[lab] for lab in scan.labels]
    use_dali = loader == "dali" or (loader == "auto" and dali_available())
    if loader == "dali" and not dali_available():
        raise ImportError("make_loader(loader='dali'): NVIDIA DALI is not installed "
                          "(pip install nvidia-dali-cuda130, or pass loader='torch')")
    if use_dali:
        from infer_fast.data.dali import DaliFolderLoader as Stream
    else:
        Stream = TorchFolderLoader
    in_memory = bool(memory_budget) and (not train or common["small"])
    # a train split is decoded whole (every rank draws its own shard of each epoch's permutation from it)
    decoded_share = len(scan.files) / (1 if train else world)
    if not in_memory or decoded_bytes(decoded_share, info.image_size) > memory_budget:
        return Stream(scan.files, labels, num_workers=num_workers, skipped=len(scan.bad), **common)
    # Decode once (this rank's eval shard, or the whole train split) with eval reads -- for small images the
    # S x S image itself -- and an identity normalisation (mean 0, std 1/255: raw pixel values).
    shard = {"rank": 0, "world": 1} if train else {}
    raw = Stream(scan.files, labels, num_workers=num_workers, **{**common, **shard, "train": False,
                                                                 "drop_last": False, "mean": (0.0,) * 3,
                                                                 "std": (1 / 255,) * 3})
    key = cache_key(scan.fingerprint, labels, raw)
    path = None if scan.cache_path is None else os.path.join(os.path.dirname(scan.cache_path),
                                                          f"{'train' if train else 'eval'}-{key[:24]}.safetensors")
    images, shard_labels = decode_once(raw, path, key)
    memory = TensorLoader(images, shard_labels, skipped=len(scan.bad), **{**common, **({} if train else
                                                                                      {"rank": 0, "world": 1})})
    memory.provider = f"memory ({raw.provider}-decoded)"
    return memory
