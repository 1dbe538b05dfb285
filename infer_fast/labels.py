"""Soft labels from a teacher ensemble (INFER §4-5): one rule for both label modes.

- :class:`TeacherEnsemble`: mean logits of M frozen teachers on images normalised with the *dataset's* mean/std,
  re-normalised and resized per teacher when a teacher was trained with other statistics or another input size.
- :func:`static_labels`: the ensemble's logits on every un-augmented synthetic image of a distilled set, computed
  once by ``infer-fast distill`` and stored as fp16.
- :func:`ensemble_for`: the ensemble of a distilled set (its manifest's teachers, or explicit files) for dynamic
  labels during student training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from infer_fast.distilled import DistilledDataset
from infer_fast.models.named import is_named
from infer_fast.runtime import Normalisation


class TeacherEnsemble(nn.Module):
    """Mean logits of M frozen teachers on a batch normalised with the *dataset's* mean/std (re-normalised and
    resized per teacher when a teacher was trained with other statistics or another input size).

    ``teachers``: (model, meta) pairs; ``meta`` has ``mean``, ``std`` and ``image_size`` (a TeacherMeta) or is
    None (the teacher takes the dataset's images as they are).
    """

    def __init__(self, teachers: Sequence[tuple[nn.Module, Any]], mean, std, image_size: int):
        super().__init__()
        if not teachers:
            raise ValueError("dynamic labels need at least one teacher")
        self.models = nn.ModuleList([m.eval().requires_grad_(False) for m, _ in teachers])
        self.adapt: list[tuple[torch.Tensor, torch.Tensor, int] | None] = []
        src_m, src_s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        for _, meta in teachers:
            tm = getattr(meta, "mean", None)
            ts = getattr(meta, "std", None)
            size = int(getattr(meta, "image_size", None) or image_size)
            same_norm = tm is None or Normalisation(tm, ts).matches(Normalisation(mean, std))
            if same_norm and size == image_size:
                self.adapt.append(None)
                continue
            if same_norm:
                scale, shift = torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1)
            else:  # x_t = (x * s + m - m_t) / s_t
                tm_, ts_ = torch.tensor(tm).view(1, 3, 1, 1), torch.tensor(ts).view(1, 3, 1, 1)
                scale, shift = src_s / ts_, (src_m - tm_) / ts_
            self.adapt.append((scale, shift, size))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean(self.each(x))

    @staticmethod
    def mean(each: Sequence[torch.Tensor]) -> torch.Tensor:
        """The ensemble's logits from every teacher's (summed in teacher order, then divided)."""
        total = each[0]
        for logits in each[1:]:
            total = total + logits
        return total / len(each)

    @torch.no_grad()
    def each(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every teacher's float32 logits on ``x`` (the ensemble is their mean)."""
        out = []
        for model, adapt in zip(self.models, self.adapt, strict=True):
            xt = x
            if adapt is not None:
                scale, shift, size = adapt
                xt = x * scale.to(x) + shift.to(x)
                if size != x.shape[-1]:
                    xt = torch.nn.functional.interpolate(xt, size=(size, size), mode="bilinear", antialias=True,
                                                         align_corners=False)
            out.append(model(xt).float())
        return out


def teacher_paths(dataset, explicit: Sequence[str] = (), where: str = "") -> list[str]:
    """Teacher files for dynamic labels: ``explicit`` (--teacher) overrides, else the distilled set's teachers."""
    if explicit:
        paths = list(explicit)
    else:
        paths = dataset.manifest.teacher_files if hasattr(dataset, "manifest") else []
        if not paths:
            raise ValueError(
                f"--labels dynamic: the distilled dataset {where or '(in memory)'} names no teacher files in "
                "manifest.json['teachers']; pass them with --teacher PATH (repeatable)")
    missing = [p for p in paths if not is_named(p) and not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"--labels dynamic: teacher file(s) not found: {', '.join(missing)}")
    return paths


def load_ensemble(paths: Sequence[str], dataset, device: torch.device,
                  declared: dict[str, str] | str | None = None) -> TeacherEnsemble:
    """The ensemble of the teacher files ``paths`` for ``dataset`` (its classes, mean/std and image size). Each
    teacher is restricted to the dataset's classes in the dataset's order (models.classes); ``declared`` names the
    classes of files that do not state them (``imagenet1k`` or a class-list file), for all files or per path."""
    from infer_fast.models import load_teachers

    teachers = load_teachers(paths, dataset.classes, device, declared)
    return TeacherEnsemble(teachers, dataset.mean, dataset.std, dataset.image_size).to(device)


def ensemble_for(dataset, device: torch.device, explicit: Sequence[str] = (), where: str = "",
                 declared: str | None = None) -> TeacherEnsemble:
    """The dynamic-label ensemble of a distilled set: ``explicit`` files (their classes declared by ``declared``),
    else the teachers it was distilled with (with the declarations the distillation used)."""
    paths = teacher_paths(dataset, explicit, where)
    if not explicit:
        declared = dataset.manifest.teacher_declarations if hasattr(dataset, "manifest") else None
    return load_ensemble(paths, dataset, device, declared)


@torch.no_grad()
def static_labels(
    teachers: TeacherEnsemble, ds: DistilledDataset, batch_size: int, device: torch.device, progress: bool = True,
    evidence=None, natural: torch.Tensor | None = None, by_ufc: bool = True,
) -> torch.Tensor:
    """float32 [len(ds), C] on CPU: the ensemble's mean logits on every un-augmented ``ds.compose(i)``.

    ``evidence`` (a :class:`infer_fast.synth.evidence.EvidenceMeter`) also gets every teacher's logits of the same
    pass, each image in the group "natural" where the bool mask ``natural`` [len(ds)] is set, else "composed" (with the
    teacher whose compensator made it, ``ds.ufc_teacher``, unless ``by_ufc`` is False: networks other than the set's
    teachers, whose indices do not name compensators)."""
    n = len(ds)
    out = torch.empty(n, ds.num_classes, dtype=torch.float32)
    ufc_teacher = ds.ufc_teacher if evidence is not None and by_ufc else None
    with tqdm(total=n, desc="static labels", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n))
            each = teachers.each(ds.compose(idx, device))
            out[start:start + len(idx)] = teachers.mean(each).cpu()
            if evidence is not None:
                src = None if ufc_teacher is None else ufc_teacher[idx]
                for group, rows in (("natural", natural[idx]), ("composed", ~natural[idx])):
                    evidence.add(group, [z[rows.to(z.device)] for z in each], ds.hard_labels[idx][rows],
                                 ufc_teacher=src[rows] if group == "composed" and src is not None else None)
            bar.update(len(idx))
    return out
