"""`infer-fast export DIR --out OUT [--format imagefolder]`: a distilled dataset for other evaluators.

``--format imagefolder`` (the default):

OUT/<class>/<index:07d>.png  every synthetic image, composed and quantised to 8-bit RGB
OUT/labels.pt                soft labels float32 [N, C] (a plain tensor, loads with weights_only=True)
OUT/labels.safetensors       "soft_labels" [N, C] and "hard_labels" [N], same order
OUT/files.txt                the image paths in that order

The order is torchvision ImageFolder's (classes sorted, files sorted within a class), so
``ImageFolder(OUT).samples[i]`` belongs to ``labels[i]``.

"""

from __future__ import annotations

import io
import os

import torch
from PIL import Image
from tqdm import tqdm

from infer_fast.config_cli import require
from infer_fast.distilled.dataset import load_distilled
from infer_fast.runtime import atomic_save_safetensors, atomic_write_bytes

FORMATS = ("imagefolder",)


def _require_new(out: str) -> None:
    require(not (os.path.isdir(out) and os.listdir(out)), "--out", "a new or empty folder", out)


def export(directory: str, out: str, fmt: str = "imagefolder", backend: str = "fused", progress: bool = True) -> int:
    """Write ``directory``'s distilled set to ``out`` in format ``fmt`` (:data:`FORMATS`); returns the image count."""
    require(fmt in FORMATS, "--format", f"one of {', '.join(FORMATS)}", fmt)
    return export_imagefolder(directory, out, backend=backend, progress=progress)


def export_imagefolder(directory: str, out: str, backend: str = "fused", batch_size: int = 256,
                       progress: bool = True) -> int:
    """Write the ImageFolder export; returns the number of images."""
    ds = load_distilled(directory, backend=backend)
    _require_new(out)
    n = len(ds)
    # ImageFolder sorts class folder names as strings; the file names sort by synthetic index within a class.
    folders = sorted(ds.classes)
    for name in folders:
        os.makedirs(os.path.join(out, name), exist_ok=True)
    paths: list[str] = [""] * n
    with torch.no_grad(), tqdm(total=n, desc="export", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n))
            images = ds.denormalise(ds.compose(idx).float())
            u8 = (images * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
            for j, i in enumerate(idx.tolist()):
                rel = os.path.join(ds.classes[int(ds.hard_labels[i])], f"{i:07d}.png")
                buf = io.BytesIO()
                Image.fromarray(u8[j]).save(buf, format="PNG")
                atomic_write_bytes(os.path.join(out, rel), buf.getvalue(), fsync=False)  # thousands of small files
                paths[i] = rel
            bar.update(len(idx))
    order = sorted(range(n), key=lambda i: (folders.index(ds.classes[int(ds.hard_labels[i])]), paths[i]))
    order_t = torch.tensor(order, dtype=torch.int64)
    soft = ds.soft_labels[order_t] if ds.soft_labels is not None else None
    hard = torch.tensor([folders.index(ds.classes[int(ds.hard_labels[i])]) for i in order], dtype=torch.int64)
    tensors = {"hard_labels": hard}
    if soft is not None:
        tensors["soft_labels"] = soft
        buf = io.BytesIO()
        torch.save(soft.clone(), buf)
        atomic_write_bytes(os.path.join(out, "labels.pt"), buf.getvalue())
    atomic_save_safetensors(os.path.join(out, "labels.safetensors"), tensors)
    atomic_write_bytes(os.path.join(out, "files.txt"), "".join(paths[i] + "\n" for i in order).encode())
    return n

