"""manifest.json of a distilled dataset: the one place its schema is read and written (:class:`Manifest`).

Fields, in the order they are written:
  format_version      FORMAT_VERSION
  method              the synthesis method's registry name (infer_fast.synth.methods); the format itself does not
                      depend on it: what is stored is what the array files hold
  classes             class names, in label order
  mean, std           the normalisation of the composed images (3 values each)
  image_size, small   S, and whether the set is CIFAR-style (small images) or ImageNet-style
  ipc                 the storage budget in images per class
  num_natural_sets    K
  num_teachers        M (the teachers of the synthesis; the UFC teachers for INFER)
  num_synthetic       N
  storage             the storage accounting (synth.budget.Storage.as_dict): budget_images, stored_images,
                      stored_natural_images, stored_ufcs, num_synthetic, stored_bytes, label_bytes,
                      full_train_bytes, compression_ratio
  label_bytes         bytes of the static labels
  teachers            one entry per teacher: path, arch, fingerprint, num_classes, val_acc (+ classes, the
                      declaration the distillation loaded it with; teacher_classes and class_index)
  source              {"source": "digits" or the dataset root, "natural_files": the sampled files}
  config              the full resolved synthesis config
  defaults            {field: "value: where it comes from"} for the config fields the run left to the per-dataset
                      default (synth.config.DistillConfig.default_sources), e.g. the measured r_bn of many classes
  fingerprint         of the settings, teachers and natural sets that change the result (synth.runner.fingerprint):
                      what `distill --resume` into a finished folder checks
  package_version, torch_version, git_commit
  evidence            what distill measured of its images (infer_fast.synth.evidence): per teacher and for the
                      ensemble, top-1 and true-class probability on the naturals and on the composed/synthesised
                      images; under several teachers the composed figures split by compensator teacher (own
                      teacher / the others, beside the naturals' same pairs); the synthesis losses and the
                      initial gradient balance, averaged over problems
  files               {file name: {"sha256", "shape", "dtype"}} of every array file (written by write_distilled)
Keys this version does not know are kept (``extra``) and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1


class DistilledFormatError(ValueError):
    """A distilled-dataset directory that is missing, corrupt or of an unknown format."""


@dataclass
class Manifest:
    method: str
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    small: bool
    ipc: int | None = None
    num_natural_sets: int | None = None
    num_teachers: int | None = None
    num_synthetic: int | None = None
    storage: dict[str, Any] = field(default_factory=dict)
    label_bytes: int | None = None
    teachers: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, str] | None = None
    fingerprint: str | None = None
    package_version: str | None = None
    torch_version: str | None = None
    git_commit: str | None = None
    evidence: dict[str, Any] | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes = list(self.classes)
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.image_size = int(self.image_size)
        self.small = bool(self.small)

    # ---- what stages read ---------------------------------------------------------------------

    @property
    def teacher_files(self) -> list[str]:
        """The teacher checkpoint paths (entries without a path are skipped)."""
        return [t["path"] for t in self.teachers if t.get("path")]

    @property
    def teacher_declarations(self) -> dict[str, str]:
        """{path: the class declaration the distillation loaded it with} for the teachers that had one."""
        return {t["path"]: t["classes"] for t in self.teachers if t.get("path") and t.get("classes")}

    @property
    def data_source(self) -> str | None:
        """The data source the natural images were sampled from ("digits" or a dataset root)."""
        return self.source.get("source") or None

    @property
    def stored_images(self) -> int | None:
        return self.storage.get("stored_images")

    @property
    def stored_bytes(self) -> int | None:
        return self.storage.get("stored_bytes")

    @property
    def compression_ratio(self) -> float | None:
        return self.storage.get("compression_ratio")

    @property
    def static_label_bytes(self) -> int | None:
        return self.label_bytes if self.label_bytes is not None else self.storage.get("label_bytes")

    # ---- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = {"format_version": self.format_version}
        for f in dataclasses.fields(self):
            if f.name not in ("format_version", "files", "extra"):
                v = getattr(self, f.name)
                d[f.name] = list(v) if isinstance(v, tuple) else v
        return {**d, **self.extra, "files": self.files}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("method", "classes", "mean", "std", "image_size", "small") if k not in d]
        if missing:
            raise DistilledFormatError(f"load_distilled: {where} lacks {', '.join(missing)}")
        if not isinstance(d["method"], str) or not d["method"]:
            raise DistilledFormatError(f"load_distilled: {where}: method must be a non-empty name, got "
                                       f"{d['method']!r}")
        values = {k: v for k, v in d.items() if k in known}
        for k in ("storage", "source", "config", "files"):
            values[k] = values.get(k) or {}
        values["teachers"] = [dict(t) for t in values.get("teachers") or []]
        return cls(**values, extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def read(cls, directory: str) -> Manifest:
        """The manifest.json of a distilled dataset folder, its format version checked."""
        path = os.path.join(directory, "manifest.json")
        if not os.path.isfile(path):
            raise DistilledFormatError(f"load_distilled: {directory!r} is not a distilled dataset (no manifest.json)")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as exc:
            raise DistilledFormatError(f"load_distilled: {path} is not valid JSON ({exc})") from exc
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise DistilledFormatError(f"load_distilled: {path} has format_version {version!r}; this infer_fast "
                                       f"reads version {FORMAT_VERSION}")
        return cls.from_dict(d, path)
