"""Teacher training (``infer-fast train-teacher``) and the cached default digits ensemble.

Recipe (the standard one for CIFAR-sized classifiers, so that runs are comparable): SGD with Nesterov momentum 0.9,
weight decay 5e-4 on every parameter, cosine learning-rate annealing stepped per batch (optionally after a linear
warm-up; ``--schedule onecycle`` keeps the one-cycle policy of earlier releases), and the data pipeline's
augmentation (pad-4 crop + flip for small images, random resized crop + flip otherwise) and normalisation.

No label smoothing by default. A teacher exists here to be distilled from: its soft labels (and the class evidence
the UFC optimisation pushes into the compensators) carry the similarity structure between classes, and label
smoothing erases exactly that -- it pulls every wrong class to the same probability and clusters each class's
penultimate features tightly, so a smoothed teacher is a worse distillation teacher even when its top-1 is higher
(Mueller, Kornblith and Hinton, "When does label smoothing help?", NeurIPS 2019, section 4).

Long runs resume: ``<out>.train/`` holds the last finished epoch's checkpoint (model, optimiser, scheduler, metrics
so far; written atomically, ``torch.load(weights_only=True)``), ``metrics.jsonl`` and ``accuracy.png``;
``--resume`` continues from it (the settings that change the result must match), ``--stop-after N`` ends a sitting
after N more epochs. The folder is removed once the teacher file is written.

Knowledge distillation (``--distill-from FILE ...``): the loss becomes ``(1 - a) CE(z, y) + a T^2 KL(p_T || q_T)``
(Hinton, Vinyals and Dean 2015) with ``p_T`` the softened mean logits of the given teachers (the ensemble of
:mod:`infer_fast.labels`) on the very augmented batch the network sees, ``q_T = softmax(z / T)``, ``a = --kd-weight``
and ``T = --kd-temperature`` (defaults 0.9 and 4, the CIFAR setting of Tian, Krishnan and Isola, ICLR 2020). The KL
term is the product's fused ``mixed_soft_xent``. It trains one network from an ensemble of several, which can be
stronger than any member (Tiny-ImageNet-32: ResNet-18 + ShuffleNet-V2 35.65 % val top-1 against 33.71 / 33.83 %,
``bench/bench_teachers.py``, bench/teachers/README.md); with ``--init`` of one member it is a born-again restart
(Furlanello et al., ICML 2018). The distilling teachers cost one forward each per batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from infer_fast.config_cli import ConfigError, check_choices, data_option, option, require, resume_fields
from infer_fast.dashboard import Dashboard
from infer_fast.data.api import LOADERS
from infer_fast.models.archs import ARCHS, build_model
from infer_fast.models.checkpoint import TeacherMeta, save_teacher
from infer_fast.models.evaluate import accuracy_counts
from infer_fast.models.named import is_named
from infer_fast.runtime import (
    Normalisation,
    atomic_torch_save,
    atomic_write_text,
    cache_root,
    lock_folder,
    make_dirs,
    resolve_device,
)

SCHEDULES = ("cosine", "onecycle")
STATE_SUFFIX = ".train"  # <out>.train/: the resumable state of an unfinished run
CHECKPOINT = "checkpoint.pt"


@dataclass
class TeacherConfig:
    """One teacher training run; ``infer-fast train-teacher`` maps 1:1 onto these fields."""

    # --data, the spelling of the other subcommands; the field keeps its name for saved runs and the Python API
    source: str = data_option("digits", flag="data", required=True)
    arch: str = option("resnet18_cifar", choices=ARCHS, required=True, help="teacher architecture")
    out: str = option("teacher.safetensors", metavar="FILE", required=True, resume=False,
                      help="output .safetensors file (resumable state in FILE.train/ until it is written)")
    epochs: int = option(30, help="training epochs")
    batch_size: int = option(128, help="training batch size")
    lr: float = option(0.1, help="peak learning rate")
    schedule: str = option("cosine", choices=SCHEDULES, help="cosine annealing per batch (after --warmup-epochs of "
                           "linear warm-up), or the one-cycle policy (25 %% warm-up, cycled momentum)")
    warmup_epochs: float = option(0.0, help="cosine: linear warm-up from lr/25 over this many epochs")
    momentum: float = option(0.9, help="SGD Nesterov momentum")
    weight_decay: float = option(5e-4, help="SGD weight decay on every parameter")
    label_smoothing: float = option(0.0, help="0: keep the inter-class structure soft labels carry (see the module)")
    width: float = option(1.0, help="channel multiplier (e.g. 0.25 on CPU)")
    image_size: int | None = option(None, help="image side in pixels (default: the dataset's size, see "
                                    "infer_fast.data.dataset_info)")
    seed: int = option(0, help="seed of the initialisation, the data order and the augmentation")
    # A warm restart (SGDR, Loshchilov and Hutter, ICLR 2017) or a fine-tune: a new schedule over --epochs from a
    # trained teacher's weights. Its classes must cover the dataset's (a superset keeps the matching head rows).
    init: str | None = option(None, metavar="FILE", help="start from the weights of this teacher (same --arch and "
                              "--width; any file load_teacher reads) instead of a random initialisation: a warm "
                              "restart with a new schedule, or a fine-tune")
    distill_from: list[str] = option(default_factory=list, metavar="FILE", help="knowledge distillation: also match "
                                     "the softened mean logits of these teachers on each augmented batch (files "
                                     "load_teacher reads, or torchvision:MODEL names; their classes must cover the "
                                     "dataset's). The recorded train_loss is then the mixed loss")
    kd_weight: float = option(0.9, help="with --distill-from: weight a of the distillation term (the cross-entropy "
                              "on the true labels gets 1 - a)")
    kd_temperature: float = option(4.0, help="with --distill-from: softmax temperature T of both sides (the term is "
                                   "scaled by T^2 so its gradient keeps its size)")
    storage: str = option("fp32", choices=("fp32", "fp16"), resume=False,
                          help="dtype of the saved weights (fp16 halves the file; loads back to fp32)")
    eval_every: int = option(0, resume=False, help="validate every N epochs as well (0: only at the end)")
    # Not a resume key: it acts after the last epoch only (training and every saved epoch are unchanged), so a run
    # may finish with it; the final file records it.
    precise_bn: int = option(0, metavar="BATCHES", resume=False,
                             help="after the last epoch, recompute every BatchNorm's running statistics as the exact "
                                  "average over this many training batches (training augmentation, no gradient) "
                                  "before the final validation and save: the running averages of the last steps "
                                  "are noisy, and distillation matches them (0: off)")
    # channels-last runs oneDNN's convolutions without layout reorders: 1.7x (ResNet-18 w0.5) to 2.9x
    # (MobileNet-V2 w0.5) faster per CPU training step at 32 px here; the result is the same network
    channels_last: bool = option(True, resume=False, help="train in the channels-last memory format")
    memory_gb: float = option(2.0, resume=False, help="decode small-image splits once and keep them in memory "
                              "when they fit this budget (GB; 0: stream every epoch)")
    device: str | None = option(None, resume=False, help="cpu, cuda or cuda:N (default: cuda when available, "
                                "else cpu)")
    loader: str = option("auto", choices=LOADERS, resume=False, help="data loader: auto (DALI when importable, else "
                         "torch's DataLoader; digits are in memory), dali or torch")
    # --workers, the spelling of the other subcommands; the field keeps DataLoader's name
    num_workers: int = option(2, flag="workers", aliases=["--num-workers"], resume=False, help="data loader workers")
    log_dir: str | None = option(None, metavar="DIR", resume=False, help="also write TensorBoard scalars to DIR")
    resume: bool = option(False, resume=False, help="continue from FILE.train/ (same settings)")
    stop_after: int = option(0, metavar="N", resume=False,
                             help="end this sitting (resumably) after N epochs (0: run to the end)")
    progress: bool = option(True, resume=False, help="progress bar")

    def validate(self) -> None:
        check_choices(self)
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"--{name.replace('_', '-')}", "an integer >= 1", value)
        for name in ("eval_every", "stop_after", "precise_bn"):
            require(getattr(self, name) >= 0, f"--{name.replace('_', '-')}", ">= 0 (0 = off)", getattr(self, name))
        require(self.lr > 0, "--lr", "> 0", self.lr)
        require(self.width > 0, "--width", "> 0", self.width)
        require(0 <= self.warmup_epochs < self.epochs, "--warmup-epochs", f"a value in [0, --epochs {self.epochs})",
                self.warmup_epochs)
        require(0 <= self.label_smoothing < 1, "--label-smoothing", "a value in [0, 1)", self.label_smoothing)
        require(self.source == "digits" or os.path.isdir(self.source), "--data", "digits or a dataset folder",
                self.source)
        require(self.init is None or os.path.isfile(self.init), "--init", "an existing teacher file", self.init)
        for path in self.distill_from:
            require(is_named(path) or os.path.isfile(path), "--distill-from",
                    "existing teacher files or torchvision:MODEL names", path)
        require(0 <= self.kd_weight <= 1, "--kd-weight", "a value in [0, 1]", self.kd_weight)
        require(self.kd_temperature > 0, "--kd-temperature", "> 0", self.kd_temperature)


RESUME_KEYS = resume_fields(TeacherConfig)


def evaluate_accuracy(model: nn.Module, loader) -> float:
    """Top-1 accuracy (fraction) of ``model`` over ``loader``'s (images, labels) batches, in eval mode."""
    counts = accuracy_counts(model, loader)
    if counts[2] == 0:
        raise ValueError("evaluate_accuracy: the loader yielded no samples")
    return int(counts[0]) / int(counts[2])


def precise_bn(model: nn.Module, loader, batches: int, epoch: int) -> int:
    """Replace the running mean and variance of every BatchNorm of ``model`` by their exact average over the first
    ``batches`` batches of ``loader`` (its order of epoch ``epoch``; train-mode forwards without gradient), the
    "precise BN" of Wu & Johnson (2021); returns the batches used. The exponential averages that training leaves
    weigh the last few dozen batches most (one ad-hoc check, not a benchmark: a ResNet-18 w0.5 Tiny-ImageNet-32
    teacher's checkpoint after 11 of 15 epochs read 22.6 % val top-1, 28.2 % with exact averages over 40 batches;
    the final teacher's gain was not measured, its EMA statistics were replaced)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta, was_training = [m.momentum for m in norms], model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.train()
    loader.set_epoch(epoch)
    used = 0
    with torch.no_grad():
        for images, _ in loader:
            if used == batches:
                break
            model(images)
            used += 1
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return used


def make_scheduler(cfg: TeacherConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """The per-batch learning-rate schedule of ``cfg`` over ``cfg.epochs * steps_per_epoch`` steps."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:  # multiplies cfg.lr (the optimiser's initial lr)
        if step < warm:
            return (1 + step * 24 / warm) / 25  # lr/25 -> lr, as the one-cycle warm-up
        return 0.5 * (1 + math.cos(math.pi * min(step - warm, total - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class _Run:
    """What one training run holds between its steps."""

    cfg: TeacherConfig
    device: torch.device
    info: object  # infer_fast.data.DatasetInfo
    train: object  # loaders (infer_fast.data.BaseLoader)
    val: object
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: object
    state_dir: str
    history: list[dict]
    epoch: int = 0  # the next epoch to train
    seconds: float = 0.0  # training time of the finished epochs, all sittings
    init: dict | None = None  # the --init teacher (file, sha256, val_acc, epochs) or None
    kd: nn.Module | None = None  # the --distill-from ensemble (infer_fast.labels.TeacherEnsemble) or None
    kd_info: dict | None = None  # what the final file records of it


def _setup(cfg: TeacherConfig) -> _Run:
    from infer_fast.data import dataset_info, make_loader

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    info = dataset_info(cfg.source, image_size=cfg.image_size)
    common = dict(batch_size=cfg.batch_size, loader=cfg.loader, image_size=info.image_size, seed=cfg.seed,
                  num_workers=cfg.num_workers, device=device, memory_budget=int(cfg.memory_gb * 2**30))
    train = make_loader(cfg.source, "train", **common)
    val = make_loader(cfg.source, "eval", **common)
    if len(train) == 0:
        raise ValueError(f"train_teacher: the train split of {cfg.source!r} gives no batch of {cfg.batch_size}")
    model = build_model(cfg.arch, len(info.classes), info.image_size, cfg.width).to(device)
    init = _load_init(cfg, model, info) if cfg.init else None
    kd, kd_info = _load_distill(cfg, info, device) if cfg.distill_from else (None, None)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        kd = kd.to(memory_format=torch.channels_last) if kd is not None else None
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    sched = make_scheduler(cfg, opt, len(train))
    return _Run(cfg, device, info, train, val, model, opt, sched, os.path.abspath(cfg.out) + STATE_SUFFIX, [],
                init=init, kd=kd, kd_info=kd_info)


def _load_distill(cfg: TeacherConfig, info, device: torch.device) -> tuple[nn.Module, dict]:
    """The ``--distill-from`` ensemble on ``info``'s classes and normalisation, and its record for the final file."""
    from infer_fast.labels import TeacherEnsemble
    from infer_fast.models import load_teachers

    teachers = load_teachers(cfg.distill_from, info.classes, device)
    record = {"teachers": [{"file": os.path.basename(p), "sha256": m.fingerprint, "arch": m.arch, "width": m.width,
                            "val_acc": m.val_acc} for p, (_, m) in zip(cfg.distill_from, teachers, strict=True)],
              "weight": cfg.kd_weight, "temperature": cfg.kd_temperature}
    return TeacherEnsemble(teachers, info.mean, info.std, info.image_size).to(device), record


def _load_init(cfg: TeacherConfig, model: nn.Module, info) -> dict:
    """Copy ``cfg.init``'s weights into ``model`` (same architecture, width and input size; the teacher's head
    restricted to the dataset's classes) and return what the final file records of it."""
    from infer_fast.models import load_teacher

    teacher, meta = load_teacher(cfg.init, arch=cfg.arch, data_classes=info.classes)
    if abs(meta.width - cfg.width) > 1e-9 or meta.image_size != info.image_size:
        raise ConfigError(f"--init: {cfg.init} is a {meta.arch} of width {meta.width:g} at {meta.image_size} px; "
                          f"expected width {cfg.width:g} (--width) at {info.image_size} px (the dataset's size)")
    if not Normalisation(info.mean, info.std).matches(Normalisation(meta.mean, meta.std)):
        print(f"train-teacher: warning: --init: {cfg.init} was trained with mean/std {tuple(meta.mean)}/"
              f"{tuple(meta.std)}; training goes on with the dataset's {tuple(info.mean)}/{tuple(info.std)}",
              file=sys.stderr)
    model.load_state_dict(teacher.state_dict())
    return {"file": os.path.basename(cfg.init), "sha256": meta.fingerprint, "val_acc": meta.val_acc,
            "epochs": (meta.extra.get("config") or {}).get("epochs")}


def _config_json(cfg: TeacherConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k in RESUME_KEYS}


def _resume(run: _Run) -> None:
    """Load ``run.state_dir``'s checkpoint into ``run`` (``--resume``), or refuse to start over an unfinished run."""
    path = os.path.join(run.state_dir, CHECKPOINT)
    if not os.path.exists(path):
        if run.cfg.resume:
            print(f"train-teacher: --resume: no checkpoint in {run.state_dir}; starting from epoch 0")
        return
    if not run.cfg.resume:
        raise ConfigError(f"{run.state_dir} holds an unfinished run of {run.cfg.out}; pass --resume to "
                         "continue it, or remove that folder to start over")
    try:
        state = torch.load(path, map_location=run.device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets the same one-line message
        raise ConfigError(f"--resume: {path} is not a readable teacher checkpoint ({exc})") from exc
    # a setting added after the checkpoint was written reads as its default (what that run trained with)
    saved, now = {**_config_json(TeacherConfig()), **state["config"]}, _config_json(run.cfg)
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in RESUME_KEYS if saved.get(k) != now[k]]
    if diff:
        raise ConfigError(f"--resume: {path} was written with other settings ({'; '.join(diff)}); use "
                         "the same settings or another --out")
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    run.epoch, run.seconds, run.history = int(state["epoch"]), float(state["seconds"]), list(state["history"])


def _train_epoch(run: _Run, criterion: nn.Module, bar) -> float:
    """One epoch of SGD; returns the mean training loss (one host sync per epoch)."""
    run.model.train()
    run.train.set_epoch(run.epoch)
    loss_sum = torch.zeros((), device=run.device)
    layout = torch.channels_last if run.cfg.channels_last else torch.contiguous_format
    if run.kd is not None:
        from infer_fast.ops.mixed_soft_xent import mixed_soft_xent
    a, t = run.cfg.kd_weight, run.cfg.kd_temperature
    for images, labels in run.train:
        images = images.contiguous(memory_format=layout)
        logits = run.model(images)
        loss = criterion(logits, labels)
        if run.kd is not None:
            loss = (1 - a) * loss + (a * t * t) * mixed_soft_xent(logits, run.kd(images), temperature=t)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        run.sched.step()
        loss_sum += loss.detach()
        bar.update()
    loss = float(loss_sum) / len(run.train)
    if not math.isfinite(loss):
        raise FloatingPointError(f"train_teacher: loss became {loss} in epoch {run.epoch}; lower --lr "
                                 f"(now {run.cfg.lr})")
    return loss


def _save_state(run: _Run) -> None:
    """The finished epochs, resumable: checkpoint, metrics.jsonl line and the accuracy curve."""
    from infer_fast.train.report import plot_curves

    atomic_torch_save(os.path.join(run.state_dir, CHECKPOINT), {
        "model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
        "epoch": run.epoch, "seconds": run.seconds, "history": run.history, "config": _config_json(run.cfg)})
    # rewritten whole from the checkpoint's history: a kill between the two writes cannot lose or repeat a line
    atomic_write_text(os.path.join(run.state_dir, "metrics.jsonl"), "".join(json.dumps(h) + "\n" for h in run.history))
    points = [(h["epoch"], 100 * h["val_acc"]) for h in run.history if h.get("val_acc") is not None]
    if points:
        plot_curves({run.cfg.arch: points}, os.path.join(run.state_dir, "accuracy.png"),
                    title=f"teacher {run.cfg.arch} w{run.cfg.width:g}: validation top-1")


def train_teacher(cfg: TeacherConfig) -> tuple[str, TeacherMeta | None]:
    """Train ``cfg.arch`` on ``cfg.source`` with the recipe of this module, measure the validation accuracy,
    and save the teacher atomically as safetensors with metadata at ``cfg.out``. Returns (path, meta); meta is
    None when ``cfg.stop_after`` ended the sitting before the last epoch (the run resumes with ``--resume``)."""
    cfg.validate()
    run = _setup(cfg)
    make_dirs(run.state_dir)
    with lock_folder(run.state_dir, "train-teacher"), Dashboard(cfg.log_dir, "train-teacher") as board:
        _resume(run)
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        bar = tqdm(total=cfg.epochs * len(run.train), initial=run.epoch * len(run.train), unit="batch",
                   desc=f"train-teacher {cfg.arch} w{cfg.width:g}", disable=not cfg.progress)
        stop = cfg.epochs if not cfg.stop_after else min(cfg.epochs, run.epoch + cfg.stop_after)
        while run.epoch < stop:
            start = time.perf_counter()
            loss = _train_epoch(run, criterion, bar)
            run.seconds += time.perf_counter() - start
            run.epoch += 1
            last = run.epoch == cfg.epochs
            if last and cfg.precise_bn:
                precise_bn(run.model, run.train, cfg.precise_bn, epoch=run.epoch)
            val_acc = evaluate_accuracy(run.model, run.val) if last or (
                cfg.eval_every and run.epoch % cfg.eval_every == 0) else None
            run.history.append({"epoch": run.epoch, "train_loss": round(loss, 5), "val_acc": val_acc,
                                "lr": run.opt.param_groups[0]["lr"], "seconds": round(run.seconds, 1)})
            board.scalars(run.epoch, "teacher", train_loss=loss, val_top1=val_acc, lr=run.history[-1]["lr"],
                          images_per_s=len(run.train) * cfg.batch_size / (time.perf_counter() - start))
            bar.set_postfix(epoch=run.epoch, loss=f"{loss:.3f}",
                            **({} if val_acc is None else {"val_acc": f"{val_acc:.4f}"}))
            _save_state(run)
        bar.close()
        if run.epoch < cfg.epochs:
            if cfg.progress:
                print(f"train-teacher: stopped after epoch {run.epoch}/{cfg.epochs} (--stop-after); continue with "
                      f"--resume (state in {run.state_dir})")
            return cfg.out, None
        meta = _finish(run)
    shutil.rmtree(run.state_dir, ignore_errors=True)
    return cfg.out, meta


def _finish(run: _Run) -> TeacherMeta:
    from infer_fast import __version__

    cfg, info, last = run.cfg, run.info, run.history[-1]
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k in RESUME_KEYS or k in ("storage", "precise_bn")}
    meta = TeacherMeta(arch=cfg.arch, num_classes=len(info.classes), classes=list(info.classes),
                       mean=tuple(info.mean), std=tuple(info.std), image_size=info.image_size,
                       val_acc=last["val_acc"], width=cfg.width,
                       extra={"config": config, "train_loss": last["train_loss"], "train_seconds": last["seconds"],
                              "history": run.history, "version": __version__,
                              **({"init": run.init} if run.init else {}),
                              **({"distill_from": run.kd_info} if run.kd_info else {})})
    model = run.model.cpu().to(memory_format=torch.contiguous_format)
    meta = save_teacher(model, meta, cfg.out, dtype=torch.float16 if cfg.storage == "fp16" else None)
    if cfg.progress:
        print(f"train-teacher: {cfg.arch} (width {cfg.width:g}) on {cfg.source}: val acc {meta.val_acc:.2%} after "
              f"{cfg.epochs} epochs in {last['seconds']:.1f} s -> {cfg.out} (sha256 {meta.fingerprint[:12]})")
    return meta


# The default digits ensemble: three architecture families at small widths (digits val accuracy at 16 px, the
# demo's size, seed 0, the recipe below: convnet 78.1 %, resnet18_cifar 77.8 %, cifar_resnet20 86.4 %). Training cost,
# indicative only (one thread of a 2-core machine shared by many jobs, load ~10): convnet ~25 s, each ResNet
# ~3.5 min wall. mobilenet_v2 / shufflenet_v2 are left out: their depthwise convolutions are several times
# slower per step on CPU (pass them explicitly as teachers where that is affordable).
# (arch, width, epochs)
DEFAULT_ENSEMBLE: tuple[tuple[str, float, int], ...] = (
    ("convnet", 0.25, 3),
    ("resnet18_cifar", 0.125, 4),
    ("cifar_resnet20", 0.5, 4),
)
# Small batches: more updates for the same compute, which is what few-epoch training needs; and the one-cycle
# schedule, which reaches more in 3-4 epochs than cosine does (digits at 16 px, seed 0, no label smoothing:
# resnet18_cifar 77.8 % vs 65.3 %, cifar_resnet20 86.4 % vs 85.0 %, convnet 78.1 % vs 77.2 %).
DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_SCHEDULE = 32, 0.05, "onecycle"


def default_teachers(source: str = "digits", cache_dir: str | None = None, image_size: int = 32, seed: int = 0,
                     progress: bool = True) -> list[str]:
    """Train (seeded) or reuse the default ensemble :data:`DEFAULT_ENSEMBLE` on ``source`` and return the
    checkpoint paths. Cached under ``cache_dir`` (default ``<cache_root()>/teachers``) in a folder keyed by
    (source, ensemble and its recipe, image_size, seed, package version); a cached file is reused when it
    loads. Concurrent callers may both train, but each file is written atomically."""
    from infer_fast import __version__
    from infer_fast.models.checkpoint import CheckpointError, load_teacher

    src = source if source == "digits" else os.path.abspath(source)
    recipe = {k: v for k, v in dataclasses.asdict(TeacherConfig(schedule=DEFAULT_SCHEDULE)).items()
              if k in RESUME_KEYS}
    key = json.dumps({"source": src, "ensemble": DEFAULT_ENSEMBLE, "batch_size": DEFAULT_BATCH_SIZE,
                      "lr": DEFAULT_LR, "image_size": image_size, "seed": seed, "version": __version__,
                      "recipe": recipe}, sort_keys=True)
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
                                        schedule=DEFAULT_SCHEDULE, progress=progress))
        paths.append(path)
    atomic_write_text(os.path.join(folder, "key.json"), key)  # what the folder name hashes, for humans
    return paths
