"""Hyperparameters of student training / evaluation, defaults from the paper (INFER.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass, field

from infer_fast.ops.backend import BACKENDS

LABEL_MODES = ("static", "dynamic")


@dataclass
class EvalConfig:
    distilled: str = ""  # distilled dataset folder (load_distilled)
    val: str = "digits"  # validation source: "digits" or a dataset root with val/ or test/
    student: str = "auto"  # models.ARCHS name; auto: resnet18_cifar for small images, resnet18 otherwise
    width: float = 1.0  # student width multiplier
    labels: str = "static"  # static: stored teacher logits, mixed; dynamic: teacher ensemble online
    epochs: int = 400  # paper: CIFAR ipc 10, 400 static (dynamic: 400 / (M + 1) = 80)
    # Dynamic labels on an INFER set (M+1 synthetic images per stored natural): epochs // (M + 1), as the research
    # code; baselines always train the full epochs. Every summary records the optimizer steps taken.
    dynamic_divide_epochs: bool = True
    batch_size: int = 64
    lr: float = 1e-3  # AdamW
    weight_decay: float = 0.01
    temperature: float = 30.0  # KL temperature of the research code
    mixup_alpha: float = 0.8  # lam ~ Beta(alpha, alpha); 0 disables mixup
    eval_every: int = 0  # validate every N epochs (0: about 25 points over the run); the last epoch always
    eval_batch_size: int = 256
    device: str = "auto"  # auto: cuda when available
    loader: str = "auto"  # validation loader backend (data.make_loader): auto | dali | torch
    workers: int = 2
    backend: str = "fused"  # loss: fused infer_fast op or the pure-PyTorch reference
    teachers: list[str] = field(default_factory=list)  # dynamic labels: override the manifest's teacher files
    out: str = ""  # run folder (default runs/eval-<method>-<labels>-<time>)
    resume: bool = False
    stop_after: int = 0  # stop (resumably) after this many epochs in this run; 0: run to the end
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.labels not in LABEL_MODES:
            raise ValueError(f"--labels: expected one of {LABEL_MODES}, got {self.labels!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend: expected one of {BACKENDS}, got {self.backend!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(self, name)}")
        if self.stop_after < 0:
            raise ValueError(f"--stop-after: expected >= 0, got {self.stop_after}")
        if self.eval_every < 0:
            raise ValueError(f"--eval-every: expected >= 0, got {self.eval_every}")
        if not self.lr > 0:
            raise ValueError(f"--lr: expected > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"--wd: expected >= 0, got {self.weight_decay}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature: expected > 0, got {self.temperature}")
        if self.mixup_alpha < 0:
            raise ValueError(f"--mixup-alpha: expected >= 0, got {self.mixup_alpha}")
        if not self.width > 0:
            raise ValueError(f"--width: expected > 0, got {self.width}")
