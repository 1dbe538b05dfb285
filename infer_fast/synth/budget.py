"""The INFER storage budget (INFER §2): how many natural sets fit, and what is stored.

``K = floor(ipc / (M / C + 1))`` natural sets, computed exactly in integers as ``(ipc * C) // (C + M)``;
storage ``K*C`` natural images + ``K*M`` UFCs <= ``ipc*C`` image-sized tensors; synthetic images ``K*C*(M+1)``.
What each method stores is its :meth:`~infer_fast.synth.methods.Method.storage`.
"""

from __future__ import annotations

from dataclasses import dataclass

from infer_fast.config_cli import ConfigError


def num_natural_sets(ipc: int, num_classes: int, num_teachers: int) -> int:
    """K for a budget of ``ipc`` images per class; a clear error when not even one set fits."""
    if ipc < 1 or num_classes < 1 or num_teachers < 1:
        raise ValueError(f"budget: ipc, classes and teachers must be >= 1 (got ipc={ipc}, C={num_classes}, "
                         f"M={num_teachers})")
    k = (ipc * num_classes) // (num_classes + num_teachers)
    if k < 1:
        need = min_ipc(num_classes, num_teachers)
        raise ConfigError(f"--ipc: expected >= {need}, the minimum for one natural set with C={num_classes} classes "
                          f"and M={num_teachers} teachers (K = floor(ipc / (M/C + 1)) >= 1), got {ipc}")
    return k


def min_ipc(num_classes: int, num_teachers: int) -> int:
    """Smallest ipc with K >= 1: ipc * C >= C + M."""
    return -(-(num_classes + num_teachers) // num_classes)


@dataclass(frozen=True)
class Storage:
    method: str
    num_classes: int
    ipc: int
    num_natural_sets: int  # K (infer) or ipc (sre2l, random: one "set" of C stored images per image per class)
    num_teachers: int
    stored_naturals: int  # stored uint8 images
    stored_ufcs: int  # stored fp16 compensators
    num_synthetic: int
    image_shape: tuple[int, int, int]

    @property
    def stored_images(self) -> int:
        return self.stored_naturals + self.stored_ufcs

    @property
    def budget_images(self) -> int:
        return self.ipc * self.num_classes

    @property
    def stored_bytes(self) -> int:
        n = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        return self.stored_naturals * n + self.stored_ufcs * n * 2  # uint8 naturals, fp16 UFCs

    @property
    def label_bytes(self) -> int:
        return self.num_synthetic * self.num_classes * 2  # fp16 static labels

    def as_dict(self, full_train_bytes: int | None) -> dict:
        d = {
            "budget_images": self.budget_images,
            "stored_images": self.stored_images,
            "stored_natural_images": self.stored_naturals,
            "stored_ufcs": self.stored_ufcs,
            "num_synthetic": self.num_synthetic,
            "stored_bytes": self.stored_bytes,
            "label_bytes": self.label_bytes,
            "full_train_bytes": full_train_bytes,
            "compression_ratio": (self.stored_bytes / full_train_bytes) if full_train_bytes else None,
        }
        return d
