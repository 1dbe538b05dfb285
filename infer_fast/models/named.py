"""Teachers by name: ``torchvision:MODEL[:WEIGHTS]``, the published ImageNet classifiers the paper distils from.

``torchvision:resnet18`` is ResNet-18 with the weights the paper used, ``IMAGENET1K_V1`` (also for MobileNet-V2,
whose torchvision ``DEFAULT`` is ``IMAGENET1K_V2``: the easy path would silently differ from the paper), and any
other torchvision classification model and weights tag works the same way (``torchvision:resnet50:IMAGENET1K_V2``).
A model without ``IMAGENET1K_V1`` weights gets its ``DEFAULT``, and the tag taken is recorded.

The weights come through torchvision's own download and checksum (``torch.hub.download_url_to_file`` with the
sha256 prefix in the file name) into torch's cache, ``$TORCH_HOME/hub/checkpoints`` -- the file
``torchvision.models.resnet18(weights=...)`` writes, so a cache filled either way serves both. Offline, the cached
copy is used; without one the error is one line naming the file to place and where. The file is read with
``torch.load(weights_only=True)`` and loaded strictly; its classes are declared ``imagenet1k`` (the 1,000 WordNet
ids in torchvision's output order), its normalisation and input size are the weights' own preset.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
from torch import nn

from infer_fast.models.checkpoint import CheckpointError, TeacherMeta, check_finite
from infer_fast.models.classes import IMAGENET1K, class_index, imagenet1k_wnids, restrict_head
from infer_fast.runtime import sha256_file

PREFIX = "torchvision:"
PAPER_WEIGHTS = "IMAGENET1K_V1"  # the paper's ImageNet teachers (ResNet-18, MobileNet-V2, EfficientNet-B0)
DOWNLOAD_TIMEOUT_S = 60  # per socket operation: a machine without network fails instead of hanging


def is_named(spec: str) -> bool:
    """Whether a ``--teachers`` entry names a model (``torchvision:...``) rather than a file."""
    return str(spec).startswith(PREFIX)


@dataclass(frozen=True)
class NamedTeacher:
    spec: str  # as given
    model: str  # torchvision model name
    weights: str  # the weights enum member taken (e.g. IMAGENET1K_V1)
    url: str
    path: str  # the cached file

    def record(self) -> dict:
        """What a manifest records of it."""
        return {"name": f"{PREFIX}{self.model}", "weights": self.weights, "url": self.url}


def resolve(spec: str) -> NamedTeacher:
    """Parse ``torchvision:MODEL[:WEIGHTS]`` and find its weights and cache file; one-line errors for unknown names."""
    import torchvision
    from torchvision.models import get_model_weights, list_models

    body = str(spec)[len(PREFIX):] if is_named(spec) else str(spec)
    name, _, tag = body.partition(":")
    known = list_models(module=torchvision.models)
    if name not in known:
        close = [k for k in known if k.startswith(name[:4])] or known[:8]
        raise CheckpointError(f"teacher {spec!r}: torchvision has no classification model {name!r} (e.g. "
                              f"{', '.join(close[:8])})")
    enum = get_model_weights(name)
    members = [m for m in enum.__members__ if m != "DEFAULT"]
    if tag:
        if tag not in enum.__members__:
            raise CheckpointError(f"teacher {spec!r}: {name} has no weights {tag!r}; it has {', '.join(members)}")
        weights = enum[tag]
    else:
        weights = enum[PAPER_WEIGHTS] if PAPER_WEIGHTS in enum.__members__ else enum.DEFAULT
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    return NamedTeacher(spec=str(spec), model=name, weights=weights.name, url=weights.url,
                        path=os.path.join(cache, os.path.basename(weights.url)))


def fetch(named: NamedTeacher) -> str:
    """The cached weights file of ``named``, downloaded and checksummed by torch.hub when absent."""
    if os.path.isfile(named.path):
        return named.path
    match = torch.hub.HASH_REGEX.search(os.path.basename(named.path))
    old = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        os.makedirs(os.path.dirname(named.path), exist_ok=True)
        torch.hub.download_url_to_file(named.url, named.path, hash_prefix=match.group(1) if match else None)
    except Exception as exc:  # noqa: BLE001 - offline, refused, checksum mismatch: the same one-line instruction
        raise CheckpointError(
            f"teacher {named.spec}: no cached weights at {named.path} and the download failed "
            f"({type(exc).__name__}: {str(exc)[:120]}); on a machine with network run `python -c \"import torchvision; "
            f"torchvision.models.get_model('{named.model}', weights='{named.weights}')\"` and copy "
            f"{os.path.basename(named.path)} there (TORCH_HOME sets the folder)") from None
    finally:
        socket.setdefaulttimeout(old)
    return named.path


def _head(model: nn.Module) -> str | None:
    """Dotted name of the last Linear layer (the classifier of every torchvision classification model but the
    SqueezeNets, whose classifier is a convolution)."""
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linear[-1] if linear else None


def load_named_teacher(spec: str, device: str | torch.device = "cpu",
                       data_classes: list[str] | None = None) -> tuple[nn.Module, TeacherMeta]:
    """``(model in eval mode on device, TeacherMeta)`` of ``torchvision:MODEL[:WEIGHTS]``, restricted to
    ``data_classes`` (ImageNet wnids, any order or subset) as :func:`infer_fast.models.load_teacher` does."""
    from torchvision.models import get_model, get_model_weights

    named = resolve(spec)
    path = fetch(named)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged cache file: say which and how to refill it
        raise CheckpointError(f"teacher {spec}: {path} is not a readable state dict ({type(exc).__name__}); delete "
                              "it to download it again") from None
    check_finite(state, path)
    model = get_model(named.model, weights=None)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"teacher {spec}: {path} does not fit torchvision's {named.model} "
                              f"({first[1].strip() if len(first) > 1 else first[0]})") from None
    weights = get_model_weights(named.model)[named.weights]
    preset = weights.transforms()
    classes = list(imagenet1k_wnids())
    categories = weights.meta.get("categories") or []
    if len(categories) != len(classes):
        raise CheckpointError(f"teacher {spec}: {named.weights} has {len(categories)} classes, not ImageNet-1k's "
                              f"{len(classes)}")
    meta = TeacherMeta(arch=f"{PREFIX}{named.model}", num_classes=len(classes), classes=classes,
                       mean=tuple(preset.mean), std=tuple(preset.std), image_size=int(preset.crop_size[0]),
                       val_acc=_top1(weights), fingerprint=sha256_file(path),
                       extra={**named.record(), "declared_classes": IMAGENET1K})
    if data_classes is not None:
        index = class_index(meta.classes, data_classes, path)
        if index is not None:
            head = _head(model)
            if head is None:
                raise CheckpointError(f"teacher {spec}: {named.model}'s classifier is not a Linear layer, so it "
                                      "cannot be restricted to the data's classes; use the full 1,000 classes")
            restrict_head(model, meta.arch, index, head=head)
            meta.extra = {**meta.extra, "teacher_classes": len(classes), "class_index": index}
            meta.num_classes, meta.classes = len(index), list(data_classes)
    return model.to(device).eval(), meta


def _top1(weights) -> float | None:
    acc = (weights.meta.get("_metrics", {}).get("ImageNet-1K") or {}).get("acc@1")
    return None if acc is None else float(acc) / 100
