"""The distilled-dataset format: what `infer-fast distill` writes and the student trainer reads.

A directory with
  manifest.json          format version, method, classes, normalisation, budget and storage accounting,
                         teachers, full config, package version, git commit, sha256 of every array file
                         (schema: :mod:`infer_fast.distilled.manifest`)
  naturals.safetensors   "naturals" uint8 [K, C, 3, S, S]  (set k holds one image per class; sre2l/random: the
                         ipc stored images per class, K = ipc)
  ufcs.safetensors       "ufcs" fp16 [K, M, 3, S, S]       (INFER only: one compensator per set and teacher)
  labels.safetensors     "labels" fp16 [N, C]              (static soft labels: mean teacher logits)
  preview.png            grid of natural and composed images
  metrics.jsonl          per-problem first/last losses of the optimisation (INFER, sre2l)

Synthetic image i (N = K*C*(M+1) for INFER, K*C otherwise): for i < K*C the natural image of set k = i // C,
class c = i % C; for i = K*C + (k*M + m)*C + c the composition ``clamp(norm(x_c^k) + u_{k,m})``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from safetensors.torch import load_file

from infer_fast.distilled.manifest import FORMAT_VERSION, DistilledFormatError, Manifest
from infer_fast.ops.backend import get as get_op
from infer_fast.runtime import Normalisation, atomic_save_safetensors, atomic_write_json, make_dirs, sha256_file

ARRAY_FILES = {"naturals": "naturals.safetensors", "ufcs": "ufcs.safetensors", "labels": "labels.safetensors"}


# ---- indexing ---------------------------------------------------------------------------------


def synthetic_index(k: int, c: int, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(base_index into naturals.view(K*C), ufc_index into ufcs.view(K*M) or -1, class) of every synthetic image."""
    nat = torch.arange(k * c)
    base = [nat]
    ufc = [torch.full((k * c,), -1, dtype=torch.int64)]
    if m > 0:
        kk, mm, cc = torch.meshgrid(torch.arange(k), torch.arange(m), torch.arange(c), indexing="ij")
        base.append((kk * c + cc).reshape(-1))
        ufc.append((kk * m + mm).reshape(-1))
    base_index = torch.cat(base)
    return base_index, torch.cat(ufc), base_index % c


# ---- the dataset ------------------------------------------------------------------------------


class DistilledDataset:
    """Stored tensors + manifest of a distilled dataset; composes synthetic images on demand.

    ``len(ds)`` synthetic images; ``ds.compose(idx, device)`` -> normalised float32 images [B, 3, S, S];
    ``ds.hard_labels`` [N] int64 (the class of each image's natural); ``ds.soft_labels`` [N, C] float32 (static
    teacher logits) or None; ``ds.get_batch(idx, device)`` -> (images, soft labels or hard labels).
    """

    def __init__(self, manifest: Manifest | dict[str, Any], tensors: dict[str, torch.Tensor],
                 backend: str = "fused") -> None:
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)
        self.tensors = tensors
        self.backend = backend
        self.method: str = self.manifest.method
        self.classes: list[str] = list(self.manifest.classes)
        self.norm = Normalisation(self.manifest.mean, self.manifest.std)
        self.mean: tuple[float, float, float] = self.norm.mean
        self.std: tuple[float, float, float] = self.norm.std
        self.image_size: int = self.manifest.image_size
        self.small: bool = self.manifest.small
        self.teacher_fingerprints: list[str] = [t["fingerprint"] for t in self.manifest.teachers]
        nat = tensors["naturals"]
        self.num_sets, c = nat.shape[0], nat.shape[1]
        ufcs = tensors.get("ufcs")
        self.num_ufc_teachers = 0 if ufcs is None else ufcs.shape[1]
        self._base_index, self._ufc_index, self.hard_labels = synthetic_index(self.num_sets, c, self.num_ufc_teachers)
        labels = tensors.get("labels")
        self.soft_labels = None if labels is None else labels.float()
        self._cache: dict[str, tuple] = {}

    def __len__(self) -> int:
        return int(self.hard_labels.numel())

    @property
    def composed_mask(self) -> torch.Tensor:
        """bool [N]: the images composed with a UFC (the rest are stored images as they are)."""
        return self._ufc_index >= 0

    @property
    def ufc_teacher(self) -> torch.Tensor:
        """int64 [N]: the teacher m whose compensator composed each image (-1 for stored images)."""
        m = max(self.num_ufc_teachers, 1)
        return torch.where(self._ufc_index >= 0, self._ufc_index % m, -1)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def teachers(self) -> list[dict]:
        """The teachers the set was distilled with (``path``, ``arch``, ``fingerprint``, ``num_classes``,
        ``val_acc``), as the runner recorded them."""
        return [dict(t) for t in self.manifest.teachers]

    @property
    def teacher_files(self) -> list[str]:
        return self.manifest.teacher_files

    @property
    def data_source(self) -> str | None:
        """The data source the natural images were sampled from ("digits" or a dataset root)."""
        return self.manifest.data_source

    def _on(self, device: torch.device) -> tuple:
        key = str(device)
        if key not in self._cache:
            s = self.image_size
            base = self.tensors["naturals"].reshape(-1, 3, s, s).to(device)
            ufcs = self.tensors.get("ufcs")
            # fp32 compensators (the op returns the ufc dtype); a zero row when there are none (index -1 everywhere)
            ufc = torch.zeros(1, 3, s, s) if ufcs is None or ufcs.numel() == 0 else ufcs.reshape(-1, 3, s, s).float()
            self._cache[key] = tuple(t.to(device) for t in (base, ufc, *self.norm.tensors()))
        return self._cache[key]

    def compose(self, indices: torch.Tensor | list[int], device: torch.device | str | None = None) -> torch.Tensor:
        """Normalised float32 synthetic images [B, 3, S, S] for ``indices`` (uint8 naturals + fp16 UFCs)."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"compose: indices must be in [0, {len(self)}), got range [{int(idx.min())}, "
                             f"{int(idx.max())}]")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        base, ufc, mean, std, lo, hi = self._on(dev)
        compose = get_op("compensator_broadcast", self.backend)
        return compose(base, ufc, self._base_index[idx].to(dev), self._ufc_index[idx].to(dev), mean, std, lo, hi)

    def get_batch(self, indices: torch.Tensor | list[int], device: torch.device | str | None = None):
        """(images, labels): static soft labels (float32 [B, C]) when stored, else hard labels (int64 [B])."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        images = self.compose(idx, device)
        labels = self.soft_labels[idx] if self.soft_labels is not None else self.hard_labels[idx]
        return images, labels.to(images.device)

    def denormalise(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> [0, 1] RGB."""
        return self.norm.denormalise(images)


# ---- writing and reading ----------------------------------------------------------------------


def write_distilled(out: str, manifest: Manifest | dict[str, Any], tensors: dict[str, torch.Tensor]) -> Manifest:
    """Write the array files (atomically) and then manifest.json with their sha256; returns the manifest."""
    manifest = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)
    make_dirs(out)
    files = {}
    for name, tensor in tensors.items():
        if name not in ARRAY_FILES:
            raise ValueError(f"write_distilled: unknown array {name!r} (expected one of {sorted(ARRAY_FILES)})")
        path = os.path.join(out, ARRAY_FILES[name])
        atomic_save_safetensors(path, {name: tensor}, metadata={"format_version": str(FORMAT_VERSION)})
        files[ARRAY_FILES[name]] = {"sha256": sha256_file(path), "shape": list(tensor.shape),
                                    "dtype": str(tensor.dtype).replace("torch.", "")}
    manifest = dataclasses.replace(manifest, format_version=FORMAT_VERSION, files=files)
    atomic_write_json(os.path.join(out, "manifest.json"), manifest.to_dict())
    return manifest


def load_distilled(directory: str, backend: str = "fused", verify: bool = True) -> DistilledDataset:
    """Open a distilled dataset; checks the format version and (``verify``) every array file's sha256."""
    mpath = os.path.join(directory, "manifest.json")
    manifest = Manifest.read(directory)
    files = manifest.files
    if "naturals.safetensors" not in files:
        raise DistilledFormatError(f"load_distilled: {mpath} lists no naturals.safetensors")
    tensors = {}
    for name, fname in ARRAY_FILES.items():
        if fname not in files:
            continue
        path = os.path.join(directory, fname)
        if not os.path.isfile(path):
            raise DistilledFormatError(f"load_distilled: {path} is listed in the manifest but missing")
        if verify:
            digest = sha256_file(path)
            if digest != files[fname]["sha256"]:
                raise DistilledFormatError(f"load_distilled: checksum mismatch in {path}: sha256 {digest}, manifest "
                                           f"says {files[fname]['sha256']} (the file is corrupt or was modified)")
        try:
            data = load_file(path)
        except Exception as exc:  # safetensors raises its own error types for malformed headers
            raise DistilledFormatError(f"load_distilled: {path} is not a readable safetensors file ({exc})") from exc
        if name not in data:
            raise DistilledFormatError(f"load_distilled: {path} holds no tensor {name!r} (has {sorted(data)})")
        t = data[name]
        if list(t.shape) != files[fname]["shape"]:
            raise DistilledFormatError(f"load_distilled: {path}: shape {list(t.shape)}, manifest says "
                                       f"{files[fname]['shape']}")
        tensors[name] = t
    nat = tensors["naturals"]
    s, c = manifest.image_size, len(manifest.classes)
    if nat.dtype != torch.uint8 or nat.dim() != 5 or tuple(nat.shape[1:]) != (c, 3, s, s):
        raise DistilledFormatError(f"load_distilled: naturals must be uint8 [K, {c}, 3, {s}, {s}], got "
                                   f"{nat.dtype} {list(nat.shape)}")
    if "ufcs" in tensors:
        u = tensors["ufcs"]
        if u.dim() != 5 or u.shape[0] != nat.shape[0] or tuple(u.shape[2:]) != (3, s, s):
            raise DistilledFormatError(f"load_distilled: ufcs must be [{nat.shape[0]}, M, 3, {s}, {s}], got "
                                       f"{list(u.shape)}")
    ds = DistilledDataset(manifest, tensors, backend=backend)
    if ds.soft_labels is not None and tuple(ds.soft_labels.shape) != (len(ds), c):
        raise DistilledFormatError(f"load_distilled: labels must be [{len(ds)}, {c}], got "
                                   f"{list(ds.soft_labels.shape)}")
    return ds
