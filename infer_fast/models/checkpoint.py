"""Safe teacher checkpoints: infer_fast's safetensors format, torchvision ``.pth`` and external ``.th`` files.

Nothing here ever unpickles arbitrary objects: safetensors files hold raw tensors plus a JSON metadata string,
and every other file goes through ``torch.load(weights_only=True)``, whose restricted unpickler only rebuilds
tensors and plain containers (it refuses any other global, so a malicious ``__reduce__`` never runs).

infer_fast's format: a ``.safetensors`` file with the model's ``state_dict`` and the metadata key
``infer_fast.teacher`` holding JSON ``{"format_version", "arch", "num_classes", "classes", "mean", "std",
"image_size", "val_acc", "width", "extra"}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from infer_fast.models.archs import ARCHS, HEADS, NATIVE_SIZE, build_model
from infer_fast.models.classes import class_index, declared_classes, restrict_head
from infer_fast.runtime import IMAGENET_MEAN, IMAGENET_STD, atomic_save_safetensors, sample_names, sha256_file

META_KEY = "infer_fast.teacher"
FORMAT_VERSION = 1
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class CheckpointError(ValueError):
    """A teacher file that cannot be used: not a checkpoint, refused content, wrong keys/shapes/classes."""


@dataclass
class TeacherMeta:
    """What a teacher was trained on and how to feed it. ``val_acc`` is a fraction in [0, 1] (None if
    unknown); ``fingerprint`` is the sha256 of the checkpoint file; ``extra`` holds the training config."""

    arch: str
    num_classes: int
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    val_acc: float | None = None
    fingerprint: str = ""
    width: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- saving
def save_teacher(model: nn.Module, meta: TeacherMeta, path: str, dtype: torch.dtype | None = None) -> TeacherMeta:
    """Write ``model``'s weights and ``meta`` to the safetensors file ``path`` atomically (temp + rename), floating
    tensors in ``dtype`` when given (e.g. float16 halves a committed file; :func:`load_teacher` copies them back
    into the float32 model). Returns ``meta`` with ``fingerprint`` set to the sha256 of the written file."""
    if meta.arch not in ARCHS:
        raise ValueError(f"save_teacher: meta.arch {meta.arch!r} is not one of {', '.join(ARCHS)}")
    if len(meta.classes) != meta.num_classes:
        raise ValueError(f"save_teacher: meta.classes has {len(meta.classes)} names, meta.num_classes is "
                         f"{meta.num_classes}")
    state = {k: v.detach().to("cpu", dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    head = state.get(HEADS[meta.arch])
    if head is None or head.shape[0] != meta.num_classes:
        raise ValueError(f"save_teacher: the model is not a {meta.arch} with {meta.num_classes} classes "
                         f"({HEADS[meta.arch]}: {None if head is None else tuple(head.shape)})")
    info = {k: v for k, v in dataclasses.asdict(meta).items() if k != "fingerprint"}
    info["format_version"] = FORMAT_VERSION
    atomic_save_safetensors(path, state, metadata={META_KEY: json.dumps(info)})
    return dataclasses.replace(meta, fingerprint=sha256_file(path))


# --------------------------------------------------------------------------------------------------- reading
def _kind(path: str) -> str:
    """'safetensors', 'torch' (zip or pickle container for torch.load) or 'unknown', from the file's bytes."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors first: its 8-byte little-endian header length can start with 0x80, the pickle protocol byte
    if len(head) == 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save zip archive / legacy pickle stream
        return "torch"
    return "unknown"


def _read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from exc
    if raw is None:
        return state, None
    try:
        info = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the {META_KEY!r} metadata is not valid JSON ({exc})") from exc
    return state, info


def _read_torch(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch.load(weights_only=True) + unwrapping of {"state_dict"|"model": ...} and "module." prefixes.
    Returns the state dict and the scalar side entries of the wrapper (e.g. ``best_prec1``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            found = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed|\.? Please|\n|$)", str(exc))
            raise CheckpointError(
                f"{path}: refused: the file contains pickled Python objects other than tensors and plain "
                f"containers, which would need arbitrary code execution to load"
                + (f" ({found.group(1)})" if found else "")) from exc
        raise CheckpointError(f"{path}: not a checkpoint (torch.load cannot read it: {exc})") from exc
    except Exception as exc:  # corrupt zip, truncated file, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    side: dict[str, Any] = {}
    while isinstance(obj, dict):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        side.update({k: v for k, v in obj.items() if isinstance(v, int | float | str)})
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: not a checkpoint: expected a state dict (name -> tensor), got "
                              f"{type(obj).__name__}{' (empty)' if isinstance(obj, dict) else ''}")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{path}: not a state dict: entries that are not name -> tensor: {bad[:5]}")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return state, side


def _problems(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable key/shape differences between a model's state dict and a checkpoint's."""
    missing, unexpected, shapes = _diff(expected, state)
    out = []
    if missing:
        out.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:4])})")
    if unexpected:
        out.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:4])})")
    if shapes:
        out.append(f"{len(shapes)} shape mismatches (" + "; ".join(shapes[:3]) + ")")
    return out


def _diff(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> tuple[list[str], ...]:
    optional = {k for k in expected if k.endswith("num_batches_tracked")}  # absent from older checkpoints
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: expected {tuple(v.shape)}, file has {tuple(state[k].shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    return missing, unexpected, shapes


def _convnet_size(state: dict[str, torch.Tensor]) -> int:
    """Input size of a ConvNet state dict: depth from its conv count, final map from the classifier width."""
    convs = [v for k, v in state.items() if k.startswith("features.") and v.dim() == 4]
    head = state.get("classifier.weight")
    if not convs or head is None or head.dim() != 2:
        return NATIVE_SIZE["convnet"]
    side = round((head.shape[1] / convs[0].shape[0]) ** 0.5)
    return max(8, side * 2 ** len(convs))


def _infer_arch(path: str, state: dict[str, torch.Tensor]) -> tuple[str, int]:
    """The one architecture (width 1) whose state dict matches ``state`` exactly, and its input size."""
    tried = []
    for arch in ARCHS:
        head = state.get(HEADS[arch])
        if head is None or head.dim() != 2:
            continue
        size = _convnet_size(state) if arch == "convnet" else NATIVE_SIZE[arch]
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            expected = build_model(arch, int(head.shape[0]), size).state_dict()
        problems = _problems(expected, state)
        if not problems:
            return arch, size
        tried.append((sum(map(len, _diff(expected, state))), arch, problems))
    if not tried:
        raise CheckpointError(f"{path}: no known classifier key ({', '.join(sorted(set(HEADS.values())))}) in the "
                              f"checkpoint; it is not a checkpoint of any of {', '.join(ARCHS)}")
    _, arch, problems = min(tried)
    raise CheckpointError(f"{path}: cannot tell the architecture (tried {', '.join(a for _, a, _ in tried)} at "
                          f"width 1; closest {arch}: {'; '.join(problems)}); pass arch=")


def _default_classes(arch: str, num_classes: int) -> list[str]:
    if arch.startswith("cifar_resnet") and num_classes == 10:
        return list(CIFAR10_CLASSES)
    if num_classes == 1000:
        from torchvision.models import ResNet18_Weights

        return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    return [str(i) for i in range(num_classes)]


def load_teacher(path: str, arch: str | None = None, num_classes: int | None = None,
                 device: str | torch.device = "cpu", classes: str | Sequence[str] | None = None,
                 data_classes: Sequence[str] | None = None) -> tuple[nn.Module, TeacherMeta]:
    """Load a teacher: ``(model in eval mode on device, TeacherMeta)``.

    Reads infer_fast safetensors teachers (architecture and normalisation from their metadata), torchvision
    ImageNet ``.pth`` state dicts and the external CIFAR ResNet ``.th`` files (``{"state_dict": ...}`` with
    ``module.`` prefixes), or any state dict of an :data:`ARCHS` architecture at width 1. ``arch`` is
    inferred from the keys and shapes when not given; ``num_classes``, when given, must match the file.
    For files without infer_fast metadata the normalisation is ImageNet's (what torchvision and the CIFAR
    ResNets were trained with) and ``image_size`` is the architecture's native size (32 or 224).
    ``classes`` declares the output classes of a file that does not state them (``"imagenet1k"``, a class-list
    file, or a list); a file with infer_fast metadata must agree with it. With ``data_classes`` the teacher is
    restricted to those classes, in that order (:func:`infer_fast.models.classes.class_index`): its logits are the
    full logits indexed by the mapping, ``meta.classes`` becomes ``data_classes`` and ``meta.extra`` records
    ``teacher_classes`` (the full count) and ``class_index``.
    Raises :class:`CheckpointError` naming the file for anything that does not fit, and
    :class:`~infer_fast.models.classes.ClassMismatchError` when the teacher's classes do not cover ``data_classes``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_teacher: no such checkpoint file: {path}")
    if arch is not None and arch not in ARCHS:
        raise ValueError(f"load_teacher: unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    state, info, side = _read(path)
    arch, size, width = _geometry(path, state, info, arch)
    model, file_classes = _build(path, state, arch, size, width, num_classes)
    model.to(device).eval()
    meta = _meta(path, info, side, arch, file_classes, size, width)
    if classes is not None:
        meta.classes = _declared(path, classes, info, file_classes)
    meta.fingerprint = sha256_file(path)
    if data_classes is not None:
        index = class_index(meta.classes, data_classes, path)
        if index is not None:
            restrict_head(model, arch, index)
            meta.extra = {**meta.extra, "teacher_classes": file_classes, "class_index": index}
            meta.num_classes, meta.classes = len(index), list(data_classes)
    return model, meta


def _read(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """(state dict, infer_fast metadata or None, the scalar side entries of a torch.save wrapper)."""
    kind = _kind(path)
    if kind == "safetensors":
        state, info = _read_safetensors(path)
        return state, info, {}
    if kind == "torch":
        state, side = _read_torch(path)
        return state, None, side
    raise CheckpointError(f"{path}: not a checkpoint (neither a safetensors file nor a torch.save file)")


def _geometry(path: str, state: dict[str, torch.Tensor], info: dict[str, Any] | None,
              arch: str | None) -> tuple[str, int, float]:
    """(arch, input size, width): from the metadata, else inferred from the keys and shapes (width 1)."""
    if info is not None:
        if info.get("format_version") != FORMAT_VERSION or info.get("arch") not in ARCHS:
            raise CheckpointError(f"{path}: unsupported infer_fast teacher metadata (format_version "
                                  f"{info.get('format_version')!r}, arch {info.get('arch')!r}); expected "
                                  f"format_version {FORMAT_VERSION} and an arch in {', '.join(ARCHS)}")
        if arch is not None and arch != info["arch"]:
            raise CheckpointError(f"{path}: holds a {info['arch']} teacher, but arch={arch!r} was requested")
        return info["arch"], int(info["image_size"]), float(info.get("width", 1.0))
    if arch is None:
        arch, size = _infer_arch(path, state)
        return arch, size, 1.0
    return arch, _convnet_size(state) if arch == "convnet" else NATIVE_SIZE[arch], 1.0


def _build(path: str, state: dict[str, torch.Tensor], arch: str, size: int, width: float,
           num_classes: int | None) -> tuple[nn.Module, int]:
    """The ``arch`` model holding ``state`` (every key and shape checked first), and its class count."""
    head = state.get(HEADS[arch])
    if head is None or head.dim() != 2:
        raise CheckpointError(f"{path}: no classifier weight {HEADS[arch]!r} for arch {arch}: "
                              + "; ".join(_problems(_meta_state(arch, 1, size, width), state)))
    file_classes = int(head.shape[0])
    if num_classes is not None and num_classes != file_classes:
        raise CheckpointError(f"{path}: the teacher has {file_classes} classes ({HEADS[arch]} is "
                              f"{tuple(head.shape)}), but {num_classes} were requested")
    problems = _problems(_meta_state(arch, file_classes, size, width), state)
    if problems:
        raise CheckpointError(f"{path}: does not fit {arch} (width {width:g}, {file_classes} classes): "
                              + "; ".join(problems))
    check_finite(state, path)
    model = build_model(arch, file_classes, size, width)
    model.load_state_dict(state, strict=False)  # strictness checked above (num_batches_tracked may be absent)
    return model, file_classes


def _meta(path: str, info: dict[str, Any] | None, side: dict[str, Any], arch: str, file_classes: int, size: int,
          width: float) -> TeacherMeta:
    """The TeacherMeta of the metadata, or of a file without it (ImageNet's normalisation, default classes)."""
    if info is not None:
        meta = TeacherMeta(arch=arch, num_classes=file_classes, classes=list(info["classes"]),
                           mean=tuple(info["mean"]), std=tuple(info["std"]), image_size=size,
                           val_acc=info.get("val_acc"), width=width, extra=dict(info.get("extra") or {}))
        if len(meta.classes) != file_classes:
            raise CheckpointError(f"{path}: metadata lists {len(meta.classes)} classes, the weights have "
                                  f"{file_classes}")
        return meta
    acc = side.get("best_prec1")
    return TeacherMeta(arch=arch, num_classes=file_classes, classes=_default_classes(arch, file_classes),
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=size,
                       val_acc=float(acc) / 100 if isinstance(acc, int | float) else None, width=width,
                       extra={k: v for k, v in side.items() if k != "best_prec1"})


def _declared(path: str, classes: str | Sequence[str], info: dict[str, Any] | None, file_classes: int) -> list[str]:
    """The declared output classes (``imagenet1k``, a class-list file or a list), checked against the file."""
    declared = declared_classes(classes) if isinstance(classes, str) else list(classes)
    if len(declared) != file_classes:
        raise CheckpointError(f"{path}: {len(declared)} classes declared ({sample_names(declared)}), but the "
                              f"teacher has {file_classes} outputs")
    if info is not None and list(info["classes"]) != declared:
        raise CheckpointError(f"{path}: its metadata names its classes ({sample_names(info['classes'])}); they "
                              f"differ from the declared {sample_names(declared)}")
    return declared


def load_teachers(paths: Sequence[str], data_classes: Sequence[str], device: str | torch.device = "cpu",
                  declared: str | dict[str, str] | None = None) -> list[tuple[nn.Module, TeacherMeta]]:
    """The teachers of every stage (distill, its static labels, evaluate's dynamic labels): each file of ``paths``
    loaded by :func:`load_teacher`, restricted to ``data_classes`` in that order, in eval mode with frozen weights.
    ``declared`` names the classes of files that do not state them (``imagenet1k`` or a class-list file), for all
    files or per path. An entry ``torchvision:MODEL[:WEIGHTS]`` is a teacher by name (:mod:`infer_fast.models.named`:
    torchvision's weights from its cache, classes declared imagenet1k)."""
    from infer_fast.models.named import is_named, load_named_teacher

    teachers = []
    for path in paths:
        if is_named(path):
            model, meta = load_named_teacher(path, device=device, data_classes=list(data_classes))
            teachers.append((model.requires_grad_(False), meta))
            continue
        if not os.path.isfile(path):
            raise FileNotFoundError(f"teacher file {path!r} does not exist")
        decl = declared.get(path) if isinstance(declared, dict) else declared
        model, meta = load_teacher(path, device=device, classes=decl, data_classes=list(data_classes))
        teachers.append((model.eval().requires_grad_(False), meta))
    return teachers


def check_finite(state: dict[str, torch.Tensor], path: str) -> None:
    """Refuse weights holding NaN or Inf (a diverged or damaged teacher would otherwise fail mid-synthesis),
    naming the file and the first such tensor."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{path}: tensor {key!r} holds {bad} non-finite value(s) (NaN/Inf) of "
                                  f"{value.numel()}; the teacher diverged or the file is damaged")


def _meta_state(arch: str, num_classes: int, size: int, width: float) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return build_model(arch, num_classes, size, width).state_dict()
