"""Teacher classes by identity: which teacher output is which data class.

A teacher states the class names of its outputs (infer_fast teachers in their metadata; other files by a
declaration such as ``imagenet1k``, the 1,000 ImageNet-1k WordNet ids in the standard order, sorted, as
torchvision's and timm's ImageNet weights use). A dataset names its classes by its folders. When the data's
classes are the teacher's, in any order, or a subset of them (Imagenette, Imagewoof, ImageNet-100 against an
ImageNet-1k teacher), the teacher is restricted to the data's classes in the data's order by keeping only those
rows of its final linear layer: its logits are then exactly the full logits indexed by the mapping, so CE targets,
static labels and dynamic labels all see the teacher's logits over the dataset's classes and nothing downstream
needs to know. Anything else is refused with the classes that are missing.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from importlib import resources

import torch
from torch import nn

from infer_fast.models.archs import HEADS
from infer_fast.runtime import index_in, sample_names

IMAGENET1K = "imagenet1k"
DECLARATIONS = (IMAGENET1K,)
_WNID = re.compile(r"n\d{8}")


class ClassMismatchError(ValueError):
    """A teacher whose classes do not cover the data's classes (or a declaration that does not fit it)."""


@functools.cache
def imagenet1k_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet ids in output order (sorted; package data ``imagenet1k_wnids.txt``, the
    list timm ships as ``imagenet_synsets.txt``)."""
    text = resources.files("infer_fast.models").joinpath("imagenet1k_wnids.txt").read_text()
    wnids = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(wnids) != 1000 or list(wnids) != sorted(wnids):  # a damaged install must not silently relabel
        raise RuntimeError(f"infer_fast/models/imagenet1k_wnids.txt holds {len(wnids)} ids (sorted: "
                           f"{list(wnids) == sorted(wnids)}); expected the 1,000 sorted ImageNet-1k wnids")
    return wnids


def declared_classes(spec: str) -> list[str]:
    """The class list a declaration names: ``imagenet1k``, or a text file with one class name per line."""
    if spec == IMAGENET1K:
        return list(imagenet1k_wnids())
    if not os.path.isfile(spec):
        raise ValueError(f"--teacher-classes {spec!r}: expected one of {', '.join(DECLARATIONS)} or a text file "
                         "with one class name per line (in the teacher's output order)")
    with open(spec, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"--teacher-classes {spec}: expected distinct class names, one per line; got {len(names)} "
                         f"lines with {len(set(names))} distinct names")
    return names


def anonymous(classes: Sequence[str]) -> bool:
    """True for the placeholder names ``0..K-1`` of a file that never said what its outputs are."""
    return list(classes) == [str(i) for i in range(len(classes))]


def class_index(teacher_classes: Sequence[str], data_classes: Sequence[str], teacher: str) -> list[int] | None:
    """The teacher output index of each data class, in the data's order; None when they are the same list.

    Placeholder teacher names (``0..K-1``) with as many outputs as data classes are taken positionally (their
    file never named them). Raises :class:`ClassMismatchError` naming ``teacher`` and the missing classes."""
    teacher_classes, data_classes = list(teacher_classes), list(data_classes)
    if teacher_classes == data_classes:
        return None
    if anonymous(teacher_classes) and len(teacher_classes) == len(data_classes):
        return None
    index, missing = index_in(data_classes, teacher_classes)
    if missing:
        hint = ""
        if len(teacher_classes) == 1000 and all(_WNID.fullmatch(n) for n in data_classes) and not all(
                _WNID.fullmatch(n) for n in teacher_classes):
            hint = f"; if it is an ImageNet-1k model, declare its classes with --teacher-classes {IMAGENET1K}"
        raise ClassMismatchError(
            f"teacher {teacher}: its {len(teacher_classes)} classes do not cover the data's {len(data_classes)}: "
            f"{len(missing)} missing ({sample_names(missing)}); the teacher's classes are "
            f"{sample_names(teacher_classes)}{hint}")
    return index


@torch.no_grad()
def restrict_head(model: nn.Module, arch: str, index: Sequence[int], head: str | None = None) -> nn.Module:
    """Keep only the rows ``index`` of the final linear layer of ``model`` (an ``arch`` network, or the layer
    named ``head``), in place: its logits become the full logits indexed by ``index``. Returns ``model``."""
    path = head or HEADS[arch].rsplit(".", 1)[0]  # "fc", "classifier.1", "linear", ...
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
    if not isinstance(old, nn.Linear):
        raise TypeError(f"restrict_head: {arch}'s head {path!r} is a {type(old).__name__}, not a Linear layer")
    rows = torch.as_tensor(list(index), dtype=torch.long, device=old.weight.device)
    new = nn.Linear(old.in_features, len(rows), bias=old.bias is not None, device=old.weight.device,
                    dtype=old.weight.dtype)
    new.weight.copy_(old.weight.index_select(0, rows))
    if old.bias is not None:
        new.bias.copy_(old.bias.index_select(0, rows))
    new.requires_grad_(old.weight.requires_grad)
    if attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    return model
