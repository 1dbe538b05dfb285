"""Fast validation (and small-image training): a split decoded once at the model's resolution, then read from memory.

Evaluating a student every few epochs re-decodes and re-resizes the same full-size JPEGs each time, which can take
nearly all of an ``evaluate`` run. When the decoded split (uint8, ``N * 3 * S * S`` bytes for this rank's shard)
fits a memory budget, the streaming loader that would have read it (DALI or torch, same geometry) decodes it once
with an identity normalisation, the uint8 result is kept in memory and on disk (safetensors, keyed by the good-file
fingerprint, the class mapping, size, geometry, decoder and shard) and every evaluation normalises it exactly as
the streaming loader does. A split over the budget is streamed as before. Small-image train splits use the same
cache (their eval read is the S x S image itself) and are augmented in memory (``data.api.make_loader``).
"""

from __future__ import annotations

import os
import sys

import torch
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from infer_fast.data.torch_loader import EVAL_RESIZE_RATIO, BaseLoader
from infer_fast.runtime import atomic_save_safetensors, json_key

CACHE_VERSION = 1
DEFAULT_BUDGET = 2 * 1024**3  # bytes of decoded uint8 images per rank


def decoded_bytes(num_images: int, image_size: int) -> int:
    return int(num_images) * 3 * int(image_size) ** 2


def cache_key(fingerprint: str, labels: list[int], loader: BaseLoader) -> str:
    """What the decoded pixels depend on: the files (fingerprint), their labels, size and eval geometry, the
    decoder (provider and device type) and the shard."""
    parts = {
        "version": CACHE_VERSION, "fingerprint": fingerprint, "size": loader.image_size, "small": loader.small,
        "resize_ratio": EVAL_RESIZE_RATIO, "provider": loader.provider, "device": loader.device.type,
        "shard": [loader.rank, loader.world],
        "labels": json_key(labels),
    }
    return json_key(parts)


def _read(path: str, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return f.get_tensor("images"), f.get_tensor("labels")
    except (SafetensorError, OSError, ValueError):
        return None  # absent or damaged: decode again


def decode_once(stream: BaseLoader, path: str | None, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [n, 3, S, S], int64 labels [n]) of ``stream``'s shard in its order, from ``path`` when it
    holds ``key``, else decoded by iterating ``stream`` once (built with mean 0 and std 1/255, so it yields raw
    pixel values) and saved to ``path`` atomically (a read-only cache location only costs the saving)."""
    if path is not None:
        hit = _read(path, key)
        if hit is not None:
            return hit
    images, labels = [], []
    for x, y in tqdm(stream, total=len(stream), desc="decode once", unit="batch", leave=False,
                     disable=len(stream) < 20):
        images.append(x.round_().clamp_(0, 255).to("cpu", torch.uint8))
        labels.append(y.to("cpu", torch.int64))
    out = torch.cat(images), torch.cat(labels)
    if path is not None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_save_safetensors(path, {"images": out[0], "labels": out[1]}, metadata={"key": key})
        except OSError as exc:
            print(f"data: could not cache the decoded validation set at {path} ({exc.strerror or exc}); it is kept "
                  "in memory for this run", file=sys.stderr)
    return out
