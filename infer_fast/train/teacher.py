"""Teacher training (``infer-fast train-teacher``) and the cached default digits ensemble.

Recipe (standard for CIFAR-sized classifiers, fixed here so that runs are comparable): SGD with Nesterov
momentum 0.9, weight decay 5e-4 on every parameter, label smoothing 0.1, and a one-cycle learning-rate
schedule stepped per batch (25 % warm-up from lr/25 to ``lr``, then cosine annealing to ~0) -- one-cycle
rather than plain cosine because it reaches good accuracy in the few epochs that CPU teachers get.
Augmentation and normalisation are the data pipeline's (``infer_fast.data.make_loader``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from infer_fast.config_cli import check_choices, option
from infer_fast.data.api import LOADERS
from infer_fast.models.archs import ARCHS, build_model
from infer_fast.models.checkpoint import TeacherMeta, save_teacher
from infer_fast.models.evaluate import accuracy_counts
from infer_fast.runtime import atomic_write_text, cache_root, resolve_device


@dataclass
class TeacherConfig:
    """One teacher training run; ``infer-fast train-teacher`` maps 1:1 onto these fields."""

    # "digits" or a dataset root with train/ and val/ (or test/) ImageFolder splits; the CLI's --data/--dataset
    source: str = option("digits", cli=False)
    arch: str = option("resnet18_cifar", choices=ARCHS, required=True)
    out: str = option("teacher.safetensors", metavar="FILE", required=True, help="output .safetensors file")
    epochs: int = option(30)
    batch_size: int = option(128)
    lr: float = option(0.1, help="peak learning rate of the one-cycle schedule")
    momentum: float = option(0.9)
    weight_decay: float = option(5e-4)
    label_smoothing: float = option(0.1)
    width: float = option(1.0, help="channel multiplier (e.g. 0.25 on CPU)")
    image_size: int | None = option(None, help="(default: the dataset's size)")  # see infer_fast.data.dataset_info
    seed: int = option(0)
    device: str | None = option(None, help="(default: cuda when available, else cpu)")
    loader: str = option("auto", choices=LOADERS)
    # --workers, the spelling of the other subcommands; the field keeps DataLoader's name
    num_workers: int = option(2, flag="workers", aliases=["--num-workers"], help="data loader workers")
    progress: bool = option(True, help="progress bar")

    def validate(self) -> None:
        check_choices(self, "TeacherConfig")
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TeacherConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if not self.lr > 0 or not self.width > 0:
            raise ValueError(f"TeacherConfig: lr and width must be > 0, got lr={self.lr}, width={self.width}")
        if self.source != "digits" and not os.path.isdir(self.source):
            raise ValueError(f"TeacherConfig.source: {self.source!r} is neither 'digits' nor a dataset folder")


def evaluate_accuracy(model: nn.Module, loader) -> float:
    """Top-1 accuracy (fraction) of ``model`` over ``loader``'s (images, labels) batches, in eval mode."""
    counts = accuracy_counts(model, loader)
    if counts[2] == 0:
        raise ValueError("evaluate_accuracy: the loader yielded no samples")
    return int(counts[0]) / int(counts[2])


def train_teacher(cfg: TeacherConfig) -> tuple[str, TeacherMeta]:
    """Train ``cfg.arch`` on ``cfg.source`` with the recipe of this module, measure the validation accuracy,
    and save the teacher atomically as safetensors with metadata at ``cfg.out``. Returns (path, meta)."""
    from infer_fast import __version__
    from infer_fast.data import dataset_info, make_loader

    cfg.validate()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    info = dataset_info(cfg.source, image_size=cfg.image_size)
    common = dict(batch_size=cfg.batch_size, loader=cfg.loader, image_size=info.image_size, seed=cfg.seed,
                  num_workers=cfg.num_workers, device=device)
    train = make_loader(cfg.source, "train", **common)
    val = make_loader(cfg.source, "eval", **common)
    steps = cfg.epochs * len(train)
    if steps == 0:
        raise ValueError(f"train_teacher: the train split of {cfg.source!r} gives no batch of {cfg.batch_size}")

    model = build_model(cfg.arch, len(info.classes), info.image_size, cfg.width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.25)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    start = time.perf_counter()
    bar = tqdm(total=steps, desc=f"train-teacher {cfg.arch} w{cfg.width:g}", unit="batch", disable=not cfg.progress)
    model.train()
    loss_sum = torch.zeros((), device=device)
    for epoch in range(cfg.epochs):
        train.set_epoch(epoch)
        loss_sum.zero_()
        for images, labels in train:
            loss = criterion(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
            bar.update()
        epoch_loss = float(loss_sum) / len(train)  # one host sync per epoch
        if not torch.isfinite(torch.tensor(epoch_loss)):
            raise FloatingPointError(f"train_teacher: loss became {epoch_loss} in epoch {epoch}; lower --lr "
                                     f"(now {cfg.lr})")
        bar.set_postfix(epoch=epoch, loss=f"{epoch_loss:.3f}")
    val_acc = evaluate_accuracy(model, val)
    bar.set_postfix(loss=f"{epoch_loss:.3f}", val_acc=f"{val_acc:.4f}")
    bar.close()
    seconds = time.perf_counter() - start

    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"}
    meta = TeacherMeta(arch=cfg.arch, num_classes=len(info.classes), classes=list(info.classes),
                       mean=tuple(info.mean), std=tuple(info.std), image_size=info.image_size, val_acc=val_acc,
                       width=cfg.width, extra={"config": config, "train_loss": epoch_loss,
                                               "train_seconds": round(seconds, 2), "version": __version__})
    meta = save_teacher(model.cpu(), meta, cfg.out)
    if cfg.progress:
        print(f"train-teacher: {cfg.arch} (width {cfg.width:g}) on {cfg.source}: val acc {val_acc:.2%} after "
              f"{cfg.epochs} epochs in {seconds:.1f} s -> {cfg.out} (sha256 {meta.fingerprint[:12]})")
    return cfg.out, meta


# The default digits ensemble: three architecture families at small widths, > 90 % digits val accuracy each
# (measured at 32 px, seed 0: convnet 93.6 %, resnet18_cifar 93.9 %, cifar_resnet20 93.9 %). Training cost,
# indicative only (one thread of a 2-core machine shared by many jobs, load ~10): convnet ~25 s, each ResNet
# ~3.5 min wall. mobilenet_v2 / shufflenet_v2 are left out: their depthwise convolutions are several times
# slower per step on CPU (pass them explicitly as teachers where that is affordable).
# (arch, width, epochs)
DEFAULT_ENSEMBLE: tuple[tuple[str, float, int], ...] = (
    ("convnet", 0.25, 3),
    ("resnet18_cifar", 0.125, 4),
    ("cifar_resnet20", 0.5, 4),
)
# Small batches: more updates for the same compute, which is what few-epoch training needs.
DEFAULT_BATCH_SIZE, DEFAULT_LR = 32, 0.05


def default_teachers(source: str = "digits", cache_dir: str | None = None, image_size: int = 32, seed: int = 0,
                     progress: bool = True) -> list[str]:
    """Train (seeded) or reuse the default ensemble :data:`DEFAULT_ENSEMBLE` on ``source`` and return the
    checkpoint paths. Cached under ``cache_dir`` (default ``<cache_root()>/teachers``) in a folder keyed by
    (source, ensemble and its recipe, image_size, seed, package version); a cached file is reused when it
    loads. Concurrent callers may both train, but each file is written atomically."""
    from infer_fast import __version__
    from infer_fast.models.checkpoint import CheckpointError, load_teacher

    src = source if source == "digits" else os.path.abspath(source)
    key = json.dumps({"source": src, "ensemble": DEFAULT_ENSEMBLE, "batch_size": DEFAULT_BATCH_SIZE,
                      "lr": DEFAULT_LR, "image_size": image_size, "seed": seed, "version": __version__},
                     sort_keys=True)
    folder = os.path.join(cache_dir or cache_root("teachers"),
                          hashlib.sha256(key.encode()).hexdigest()[:16])
    paths = []
    for arch, width, epochs in DEFAULT_ENSEMBLE:
        path = os.path.join(folder, f"{arch}-w{width:g}.safetensors")
        try:
            load_teacher(path)
        except (FileNotFoundError, CheckpointError):
            train_teacher(TeacherConfig(source=source, arch=arch, out=path, epochs=epochs, width=width,
                                        image_size=image_size, seed=seed, batch_size=DEFAULT_BATCH_SIZE, lr=DEFAULT_LR,
                                        progress=progress))
        paths.append(path)
    atomic_write_text(os.path.join(folder, "key.json"), key)  # what the folder name hashes, for humans
    return paths
