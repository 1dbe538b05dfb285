"""Hyperparameters of student training / evaluation, defaults from the paper (INFER.md section 5).

``infer-fast evaluate`` maps 1:1 onto the fields (infer_fast.config_cli); ``resume=False`` marks the settings that a
``--resume`` may change (they do not alter the result).
"""

from __future__ import annotations

from dataclasses import dataclass

from infer_fast.config_cli import check_choices, option
from infer_fast.data.api import LOADERS
from infer_fast.ops.backend import BACKENDS

LABEL_MODES = ("static", "dynamic")


@dataclass
class EvalConfig:
    distilled: str = option("", positional=True, metavar="DIR", help="distilled dataset folder")
    # "digits" or a dataset root with val/ or test/; the CLI defaults to the manifest's data source
    val: str = option("digits", metavar="ROOT", help="dataset root holding val/ or test/ class folders (default: the "
                      "manifest's data source)")
    student: str = option("auto", help="student architecture (models.ARCHS); auto: resnet18_cifar for small images, "
                          "resnet18 otherwise")
    width: float = option(1.0, help="student width multiplier")
    labels: str = option("static", choices=LABEL_MODES, help="static: stored teacher logits, mixed; dynamic: the "
                         "teacher ensemble online")
    # paper: CIFAR ipc 10, 400 static (dynamic: 400 / (M + 1) = 80)
    epochs: int = option(400, help="dynamic labels on an INFER set run epochs // (M + 1)")
    # Dynamic labels on an INFER set (M+1 synthetic images per stored natural): epochs // (M + 1), as the research
    # code; baselines always train the full epochs. Every summary records the optimizer steps taken.
    dynamic_divide_epochs: bool = option(True, aliases=["--no-divide-epochs"], help="dynamic labels on an INFER "
                                         "set: train epochs // (M + 1); --no-dynamic-divide-epochs: the full --epochs "
                                         "(baselines always train the full --epochs)")
    batch_size: int = option(64, help="global batch")
    lr: float = option(1e-3, help="AdamW learning rate")
    weight_decay: float = option(0.01, aliases=["--wd"], help="AdamW weight decay")
    temperature: float = option(30.0, help="KL temperature")  # 30: the research code's
    mixup_alpha: float = option(0.8, help="lam ~ Beta(a, a), 0 disables mixup")
    eval_every: int = option(0, resume=False,
                             help="validate every N epochs (default: ~25 points, always the last)")
    eval_batch_size: int = option(256, resume=False)
    device: str = option("auto", resume=False, help="cpu, cuda, cuda:N or auto (cuda when available)")
    loader: str = option("auto", choices=LOADERS, resume=False, help="validation loader")
    workers: int = option(2, resume=False, help="validation loader workers")
    backend: str = option("fused", choices=BACKENDS, resume=False, help="loss implementation: the fused infer_fast "
                          "op or the pure-PyTorch reference")
    teachers: list[str] = option(default_factory=list, metavar="FILE", aliases=["--teacher"], help="dynamic labels: "
                                 "teacher files (default: the manifest's teachers)")
    out: str = option("", metavar="RUNDIR", resume=False,
                      help="run folder (default: runs/eval-<method>-<labels>-<time>)")
    resume: bool = option(False, resume=False, help="continue the run in --out from its last checkpoint")
    stop_after: int = option(0, metavar="N", resume=False,
                             help="stop (resumably) after N epochs of this run (0: run to the end)")
    seed: int = option(0)
    progress: bool = option(True, resume=False, help="progress bar")

    def validate(self) -> None:
        check_choices(self)
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
            raise ValueError(f"--weight-decay: expected >= 0, got {self.weight_decay}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature: expected > 0, got {self.temperature}")
        if self.mixup_alpha < 0:
            raise ValueError(f"--mixup-alpha: expected >= 0, got {self.mixup_alpha}")
        if not self.width > 0:
            raise ValueError(f"--width: expected > 0, got {self.width}")
