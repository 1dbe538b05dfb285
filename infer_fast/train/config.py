"""Hyperparameters of student training / evaluation, defaults from the paper (INFER §5).

``infer-fast evaluate`` maps 1:1 onto the fields (infer_fast.config_cli); ``resume=False`` marks the settings that a
``--resume`` may change (they do not alter the result).
"""

from __future__ import annotations

from dataclasses import dataclass

from infer_fast.config_cli import check_choices, option
from infer_fast.data.api import LOADERS
from infer_fast.ops.backend import BACKENDS

LABEL_MODES = ("static", "dynamic", "hard")
MIXES = ("mixup", "cutmix")

# Student protocols of the field, resolved into the run's saved config (values given as flags or in --config win).
PRESETS: dict[str, dict] = {
    # The SRe2L family's ImageNet-1k evaluation (VILA-Lab/SRe2L, SRe2L/validate/train_FKD.py + train_FKD.sh):
    "imagenet": {
        "student": "resnet18",  # torchvision ResNet-18 (train_FKD.py --model resnet18)
        "epochs": 300,  # train_FKD.py --epochs default 300
        "batch_size": 1024,  # train_FKD.sh --batch-size 1024 (two accumulation steps of 512 there)
        "lr": 1e-3,  # train_FKD.py --adamw-lr 0.001 (AdamW)
        "weight_decay": 0.01,  # train_FKD.py --adamw-weight-decay 0.01
        # cosine schedule (train_FKD.sh --cos); here per step, there per epoch
        "temperature": 20.0,  # train_FKD.sh -T 20
        "mix": "cutmix",  # train_FKD.sh --mix-type cutmix
        "cutmix_alpha": 1.0,  # lam ~ Beta(1, 1) (SRe2L relabel --cutmix 1.0), box side sqrt(1 - lam)
        # RandomResizedCrop(224, scale=(0.08, 1)) + horizontal flip for training, resize 256 + centre crop 224 for
        # validation (train_FKD.py): infer_fast's ImageNet-style augmentation and eval geometry at 224 px.
    },
}
PRESET_IMAGE_SIZE = {"imagenet": 224}



@dataclass
class EvalConfig:
    distilled: str = option("", positional=True, metavar="DIR", help="distilled dataset folder")
    # "digits" or a dataset root with val/ or test/; the CLI defaults to the manifest's data source
    val: str = option("digits", metavar="ROOT|digits", aliases=("--dataset",), help="the validation data: a dataset "
                      "root holding val/ or test/ class folders, or digits (default: the data the set was distilled "
                      "from, as its manifest names it)")
    student: str = option("auto", metavar="ARCH[,ARCH...]", help="student architecture (models.ARCHS), or a comma "
                          "list (resnet18,resnet50) to train each in turn; auto: resnet18_cifar for small images, "
                          "resnet18 otherwise")
    width: float = option(1.0, help="student width multiplier")
    labels: str = option("static", choices=LABEL_MODES, help="static: stored teacher logits, mixed; dynamic: the "
                         "teacher ensemble online; hard: each image's class (a composition its natural's), mixed, "
                         "plain cross-entropy (no teacher, --temperature unused): does the image itself carry its "
                         "class?")
    # paper: CIFAR ipc 10, 400 static (dynamic: 400 / (M + 1) = 80)
    epochs: int = option(400, help="student training epochs (dynamic labels on an INFER set: epochs // (M + 1), see "
                         "--dynamic-divide-epochs)")
    # Dynamic labels on an INFER set (M+1 synthetic images per stored natural): epochs // (M + 1), as the research
    # code; baselines always train the full epochs. Every summary records the optimizer steps taken.
    dynamic_divide_epochs: bool = option(True, aliases=["--no-divide-epochs"], help="dynamic labels on an INFER "
                                         "set: train epochs // (M + 1); --no-dynamic-divide-epochs: the full --epochs "
                                         "(baselines always train the full --epochs)")
    steps: int = option(0, metavar="N", help="train exactly N optimizer steps (cosine over N; the last epoch is cut "
                        "short), whatever --epochs gives: students of different sets at equal compute. 0: --epochs")
    batch_size: int = option(64, help="global batch")
    lr: float = option(1e-3, help="AdamW learning rate")
    weight_decay: float = option(0.01, aliases=["--wd"], help="AdamW weight decay")
    temperature: float = option(30.0, help="KL temperature")  # 30: the research code's
    mix: str = option("mixup", choices=MIXES, help="batch mixing: mixup (x = lam x + (1 - lam) x[perm]) or cutmix "
                      "(a box of x[perm] pasted in; lam = the kept area); the labels mix with the same lam, perm")
    mixup_alpha: float = option(0.8, help="mixup: lam ~ Beta(a, a), 0 disables mixing")
    cutmix_alpha: float = option(1.0, help="cutmix: lam ~ Beta(a, a), 0 disables mixing")
    preset: str | None = option(None, choices=tuple(PRESETS), help="a published student protocol: imagenet (the "
                                "SRe2L family's ImageNet-1k recipe, 224 px); flags and --config override its values")
    eval_every: int = option(0, resume=False,
                             help="validate every N epochs (default: ~25 points, always the last)")
    eval_batch_size: int = option(256, resume=False, help="validation batch size")
    device: str = option("auto", resume=False, help="cpu, cuda, cuda:N or auto (cuda when available)")
    loader: str = option("auto", choices=LOADERS, resume=False, help="validation loader")
    workers: int = option(2, resume=False, help="validation loader workers")
    val_memory_gb: float = option(2.0, resume=False, help="decode the validation split once and keep it in memory "
                                  "(and on disk) when its uint8 images fit this budget per rank; 0: always stream")
    backend: str = option("fused", choices=BACKENDS, resume=False, help="loss implementation: the fused infer_fast "
                          "op or the pure-PyTorch reference")
    teachers: list[str] = option(default_factory=list, metavar="FILE", aliases=["--teacher"], help="dynamic labels: "
                                 "teacher files (default: the manifest's teachers)")
    teacher_classes: str | None = option(None, metavar="imagenet1k|FILE", help="the output classes of --teachers "
                                         "files that do not state them (as distill --teacher-classes)")
    out: str = option("", metavar="RUNDIR", resume=False,
                      help="run folder (default: runs/eval-<method>-<labels>-<time>)")
    log_dir: str | None = option(None, metavar="DIR", resume=False,
                                 help="also write TensorBoard scalars (loss, top-1, lr, images/s) to DIR")
    resume: bool = option(False, resume=False, help="continue the run in --out from its last checkpoint")
    stop_after: int = option(0, metavar="N", resume=False,
                             help="stop (resumably) after N epochs of this run (0: run to the end)")
    seed: int = option(0, help="seed of the student's initialisation, batches and augmentation")
    progress: bool = option(True, resume=False, help="progress bar")

    def validate(self) -> None:
        check_choices(self)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(self, name)}")
        if self.stop_after < 0:
            raise ValueError(f"--stop-after: expected >= 0, got {self.stop_after}")
        if self.steps < 0:
            raise ValueError(f"--steps: expected >= 0, got {self.steps}")
        if self.eval_every < 0:
            raise ValueError(f"--eval-every: expected >= 0, got {self.eval_every}")
        if not self.lr > 0:
            raise ValueError(f"--lr: expected > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay: expected >= 0, got {self.weight_decay}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature: expected > 0, got {self.temperature}")
        for name in ("mixup_alpha", "cutmix_alpha", "val_memory_gb"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')}: expected >= 0, got {getattr(self, name)}")
        if not self.width > 0:
            raise ValueError(f"--width: expected > 0, got {self.width}")

    @property
    def students(self) -> list[str]:
        """The students of one evaluation: ``--student resnet18,resnet50`` trains each in turn (the field's
        cross-architecture table)."""
        return [s.strip() for s in self.student.split(",") if s.strip()]

    @property
    def mix_alpha(self) -> float:
        return self.cutmix_alpha if self.mix == "cutmix" else self.mixup_alpha


def with_preset(values: dict) -> dict:
    """Config values with the preset named in ``values`` filled in under them (given values win)."""
    name = values.get("preset")
    if name is None:
        return values
    if name not in PRESETS:
        raise ValueError(f"--preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    return {**PRESETS[name], **values}
