"""NVIDIA DALI loaders (the fast path): same interface and read order as :mod:`infer_fast.data.torch_loader`.

Graph per split (NVIDIA's ResNet-50 example): ``fn.readers.file`` over the validated file list (sharded with
``shard_id``/``num_shards``) ->
  train, ImageNet-style: ``fn.decoders.image_random_crop`` (decodes only the random crop) -> resize S x S -> flip
  train, small images:   decode -> resize short side S + center crop -> zero-pad 4 random S x S crop -> flip
  eval:                  decode -> resize short side (S*256/224, or S for small) -> center crop S
-> ``fn.crop_mirror_normalize`` (float32 CHW, normalized). With a CUDA ``device`` decoding is "mixed" (nvJPEG,
hardware decoder where present) and every later op runs on the GPU; otherwise the whole pipeline is on the CPU
(``device_id=None``). Each epoch builds a pipeline over that epoch's permutation (seeded by ``(seed, epoch)``),
so the order, the shards and the augmentation of every epoch are reproducible and ``set_epoch`` can jump.
"""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from infer_fast.data.sampling import epoch_order
from infer_fast.data.torch_loader import PAD, BaseLoader, eval_resize_size
from infer_fast.runtime import mix_seed

READER = "Reader"
_WHITESPACE = re.compile(r"\s")
PREFETCH = 2
# nvJPEG buffer padding from NVIDIA's ResNet-50 example: preallocated once, so ImageNet-sized images never
# trigger reallocations in the mixed (GPU) decoder.
MIXED_DECODER_KW = dict(device_memory_padding=211025920, host_memory_padding=140544512)


def _dali_seed(*parts: int) -> int:
    return mix_seed(*parts) & 0x7FFFFFFF


def _normalise(images, mean, std, mirror=None):
    return fn.crop_mirror_normalize(
        images, dtype=types.FLOAT, output_layout="CHW",
        mean=[255.0 * m for m in mean], std=[255.0 * s for s in std], mirror=0 if mirror is None else mirror,
    )


def _small_train(images, size):
    """Zero-pad ``PAD`` pixels and take a random size x size window (integer anchor in [-PAD, PAD])."""
    anchor = fn.random.uniform(values=list(range(-PAD, PAD + 1)), shape=[2], dtype=types.INT32)
    return fn.slice(images, start=anchor, shape=[size, size], axis_names="WH", out_of_bounds_policy="pad",
                    fill_values=0)


@pipeline_def
def folder_pipeline(source, shard_id, num_shards, train, small, size, mean, std, gpu, pad_last):
    """``source``: the reader's file arguments, ``file_list=``/``file_root=`` or ``files=``/``labels=``."""
    jpegs, labels = fn.readers.file(
        **source, shard_id=shard_id, num_shards=num_shards, random_shuffle=False, pad_last_batch=pad_last,
        name=READER,
    )
    decoder = "mixed" if gpu else "cpu"
    decoder_kw = dict(device=decoder, output_type=types.RGB, **(MIXED_DECODER_KW if gpu else {}))
    mirror = fn.random.coin_flip(probability=0.5) if train else None
    if train and not small:
        # Fused decode-and-crop: only the random crop is decoded (the largest win on full-size JPEGs).
        images = fn.decoders.image_random_crop(
            jpegs, random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=100, **decoder_kw
        )
        images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
    else:
        images = fn.decoders.image(jpegs, **decoder_kw)
        images = fn.resize(images, resize_shorter=eval_resize_size(size, small), antialias=True)
        images = fn.crop(images, crop=[size, size])  # center
        if train:
            images = _small_train(images, size)
    out = _normalise(images, mean, std, mirror)
    return out, (labels.gpu() if gpu else labels)


class _DaliLoader(BaseLoader):
    provider = "dali"

    def __init__(self, *, num_workers: int = 2, **kw):
        super().__init__(**kw)
        self.num_threads = max(1, int(num_workers))
        self.gpu = self.device.type == "cuda"

    def _pipeline_kwargs(self, epoch: int) -> dict:
        return dict(
            batch_size=self.batch_size, num_threads=self.num_threads,
            device_id=(self.device.index if self.device.index is not None else torch.cuda.current_device())
            if self.gpu else None,
            seed=_dali_seed(self.seed, epoch, self.rank), prefetch_queue_depth=PREFETCH,
        )

    def _run(self, pipe, epoch: int):
        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        it = DALIGenericIterator([pipe], ["images", "labels"], reader_name=READER, last_batch_policy=policy,
                                 auto_reset=False)
        try:
            for i, out in enumerate(it):
                if i >= len(self):
                    break  # training: every rank stops at the batch count of the smallest shard
                x, y = out[0]["images"], out[0]["labels"]
                yield x.to(self.device, non_blocking=True), y.reshape(-1).to(self.device, torch.int64)
        finally:
            del it, pipe


class DaliFolderLoader(_DaliLoader):
    """DALI reader + decoders over a validated file list.

    Each epoch's order goes to the reader as a ``file_list`` text file: for ImageNet's 1.28M files that builds
    in ~1 s, where passing Python lists as operator arguments takes ~8 s. Paths containing whitespace (which the
    file_list format cannot hold) fall back to the ``files=``/``labels=`` arguments.
    """

    def __init__(self, files, labels, **kw):
        super().__init__(num_files=len(files), **kw)
        self.files = np.asarray(files, dtype=object)
        self.labels = np.asarray(labels, dtype=np.int32)
        self._lines = None
        if not _WHITESPACE.search("".join(files)) and all(os.path.isabs(f) for f in files[:1]):
            self._lines = np.asarray([f"{f} {lab}\n" for f, lab in zip(files, labels, strict=True)], dtype=object)

    def _iter_epoch(self, epoch):
        order = epoch_order(self.num_files, self.seed, epoch, self.train).numpy()
        list_path = None
        if self._lines is not None:
            fd, list_path = tempfile.mkstemp(prefix="infer_fast_dali_", suffix=".txt")
            with os.fdopen(fd, "w") as f:
                f.write("".join(self._lines[order]))
            source = dict(file_list=list_path, file_root="/")  # absolute paths
        else:
            source = dict(files=self.files[order].tolist(), labels=self.labels[order].tolist())
        try:
            pipe = folder_pipeline(
                source=source, shard_id=self.rank, num_shards=self.world, train=self.train, small=self.small,
                size=self.image_size, mean=self.mean, std=self.std, gpu=self.gpu, pad_last=not self.drop_last,
                **self._pipeline_kwargs(epoch),
            )
            pipe.build()  # the reader has parsed the list now
        finally:
            if list_path:
                os.unlink(list_path)
        return self._run(pipe, epoch)


@pipeline_def
def tensor_pipeline(source, train, size, mean, std, gpu):
    images, labels = fn.external_source(source=source, num_outputs=2, layout=["HWC", ""], batch=True,
                                        device="cpu", no_copy=False)
    if gpu:
        images, labels = images.gpu(), labels.gpu()
    mirror = None
    if train:
        images = _small_train(images, size)
        mirror = fn.random.coin_flip(probability=0.5)
    return _normalise(images, mean, std, mirror), labels


class DaliTensorLoader(_DaliLoader):
    """In-memory uint8 images (the digits) fed to DALI by ``fn.external_source``, small-image augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, **kw):
        super().__init__(num_files=len(images), **kw)
        self.images_hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels_np = labels.numpy().astype(np.int64)

    def _iter_epoch(self, epoch):
        idx = self.indices(epoch).numpy()
        n = len(idx)
        stop = n - n % self.batch_size if self.drop_last else n
        batches = [idx[lo:lo + self.batch_size] for lo in range(0, stop, self.batch_size)]

        def source(iteration: int):
            if iteration >= len(batches):
                raise StopIteration
            b = batches[iteration]
            return list(self.images_hwc[b]), list(self.labels_np[b])

        pipe = tensor_pipeline(source=source, train=self.train, size=self.image_size, mean=self.mean,
                               std=self.std, gpu=self.gpu, **self._pipeline_kwargs(epoch))
        pipe.build()
        it = DALIGenericIterator([pipe], ["images", "labels"], last_batch_policy=LastBatchPolicy.PARTIAL,
                                 auto_reset=False)
        try:
            for out in it:
                x, y = out[0]["images"], out[0]["labels"]
                yield x.to(self.device, non_blocking=True), y.reshape(-1).to(self.device, torch.int64)
        finally:
            del it, pipe
