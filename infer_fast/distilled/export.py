"""`infer-fast export DIR --out OUT [--format imagefolder|ddranking]`: a distilled dataset for other evaluators.

``--format imagefolder`` (the default):

OUT/<class>/<index:07d>.png  every synthetic image, composed and quantised to 8-bit RGB
OUT/labels.pt                soft labels float32 [N, C] (a plain tensor, loads with weights_only=True)
OUT/labels.safetensors       "soft_labels" [N, C] and "hard_labels" [N], same order
OUT/files.txt                the image paths in that order

The order is torchvision ImageFolder's (classes sorted, files sorted within a class), so
``ImageFolder(OUT).samples[i]`` belongs to ``labels[i]``.

``--format ddranking``: the tensors DD-Ranking's ``SoftLabelEvaluator.compute_metrics(image_tensor=...,
soft_labels=...)`` takes (``ddranking`` 0.2, ``ddranking/metrics/soft_label.py``). Its hard labels are
``[0]*ipc + [1]*ipc + ...``, so the images are written class-major with the same count per class (K(M+1) for an INFER
set, K = ipc for the baselines), and the evaluator's ``ipc`` is that count, not the storage budget of ``distill --ipc``:

OUT/ddranking.safetensors  "image_tensor" float32 [C*ipc, 3, S, S]: composed images, normalised with the set's
                           mean/std (ddranking feeds the tensor to the student as it is: it must be in the
                           normalised space of its validation loader, whose mean/std for a named dataset are its own)
                           "soft_labels" float32 [C*ipc, C]: the static labels, mean teacher logits (ddranking's
                           teachers give logits too; its KL/SCE losses soften them with their temperature)
                           "hard_labels" int64 [C*ipc]: the class of each row (= the evaluator's own hard labels)
                           "synthetic_index" int64 [C*ipc]: the row's image index in the distilled set
OUT/ddranking.json         ipc, num_classes, classes (column / class order), mean, std, image_size, method, source
OUT/README.md              how to call the evaluator with them
"""

from __future__ import annotations

import io
import os

import torch
from PIL import Image
from tqdm import tqdm

from infer_fast.config_cli import require
from infer_fast.distilled.dataset import DistilledDataset, load_distilled
from infer_fast.runtime import atomic_save_safetensors, atomic_write_bytes, atomic_write_json, atomic_write_text

FORMATS = ("imagefolder", "ddranking")


def _require_new(out: str) -> None:
    require(not (os.path.isdir(out) and os.listdir(out)), "--out", "a new or empty folder", out)


def export(directory: str, out: str, fmt: str = "imagefolder", backend: str = "fused", progress: bool = True) -> int:
    """Write ``directory``'s distilled set to ``out`` in format ``fmt`` (:data:`FORMATS`); returns the image count."""
    require(fmt in FORMATS, "--format", f"one of {', '.join(FORMATS)}", fmt)
    if fmt == "ddranking":
        return export_ddranking(directory, out, backend=backend, progress=progress)
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


def class_major_order(ds: DistilledDataset) -> tuple[torch.Tensor, int]:
    """(synthetic indices ordered class by class, in class order, each class's images in index order; images per
    class). Every class of a distilled set holds the same count (synthetic_index); checked here."""
    counts = torch.bincount(ds.hard_labels, minlength=ds.num_classes)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"class_major_order: classes hold different image counts {counts.tolist()}")
    return torch.argsort(ds.hard_labels, stable=True), int(counts[0])


def export_ddranking(directory: str, out: str, backend: str = "fused", batch_size: int = 256,
                     progress: bool = True) -> int:
    """Write the DD-Ranking export (see the module docstring); returns the number of images."""
    ds = load_distilled(directory, backend=backend)
    _require_new(out)
    order, ipc = class_major_order(ds)
    n, s = len(ds), ds.image_size
    images = torch.empty(n, 3, s, s, dtype=torch.float32)
    with torch.no_grad(), tqdm(total=n, desc="export", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            images[start:start + batch_size] = ds.compose(order[start:start + batch_size]).float()
            bar.update(min(batch_size, n - start))
    tensors = {"image_tensor": images, "hard_labels": ds.hard_labels[order].clone(), "synthetic_index": order}
    if ds.soft_labels is not None:
        tensors["soft_labels"] = ds.soft_labels[order].float()
    atomic_save_safetensors(os.path.join(out, "ddranking.safetensors"), tensors)
    info = {"ipc": ipc, "num_classes": ds.num_classes, "classes": ds.classes, "images": n, "image_size": s,
            "normalised": True, "mean": list(ds.mean), "std": list(ds.std),
            "soft_labels": "mean teacher logits" if ds.soft_labels is not None else None,
            "method": ds.method, "source": ds.data_source, "distilled": os.path.abspath(directory)}
    atomic_write_json(os.path.join(out, "ddranking.json"), info)
    atomic_write_text(os.path.join(out, "README.md"), _DDRANKING_README.format(
        ipc=ipc, c=ds.num_classes, n=n, s=s, mean=[round(v, 4) for v in ds.mean],
        std=[round(v, 4) for v in ds.std],
        classes=", ".join(ds.classes[:10]) + (", ..." if ds.num_classes > 10 else "")))
    return n


_DDRANKING_README = """# DD-Ranking export of an infer_fast distilled set

{n} images, {c} classes x ipc {ipc}, {s} x {s} px, class-major (rows [c*{ipc}, (c+1)*{ipc}) are class c).
Class order (the columns of soft_labels and the class index of each row; ddranking's dataset must use the same
order): {classes} -- all of them in ddranking.json.

```python
from safetensors.torch import load_file
from ddranking.metrics import SoftLabelEvaluator

t = load_file("ddranking.safetensors")
evaluator = SoftLabelEvaluator(..., ipc={ipc}, im_size=({s}, {s}), soft_label_mode="S")
evaluator.compute_metrics(image_tensor=t["image_tensor"], soft_labels=t["soft_labels"])
```

Pass `ipc={ipc}`: the images per class of this tensor, not the storage budget `distill --ipc`.
`image_tensor` is normalised with mean {mean} and std {std} (the set's own normalisation, which
its teachers saw; exact values in ddranking.json). ddranking uses the tensor as it is, in the normalised space
of its own validation loader: where its mean/std for the dataset differ, renormalise first:
`(x * std_here + mean_here - mean_dd) / std_dd` per channel.
`soft_labels` are teacher logits (ddranking's losses soften them with their temperature).
"""
