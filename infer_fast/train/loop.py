"""The student training loop on a distilled dataset and validation on real data (INFER §5).

One epoch is one shuffled pass over the synthetic images, composed on the fly (``DistilledDataset.compose``:
stored naturals + UFCs through the fused compensator_broadcast op). Each batch is augmented on device
(``augment.augment_batch``), then mixed (``augment.mix_batch``): ``x = lam * x + (1 - lam) * x[perm]`` with
``lam ~ Beta(0.8, 0.8)``, or CutMix.

- static labels: the stored teacher logits of the batch are mixed with the same ``lam``/``perm`` *inside* the fused
  ``mixed_soft_xent`` op (``p = softmax((lam * y + (1 - lam) * y[perm]) / T)``): the interpolated label of INFER §5.
- dynamic labels: the teacher ensemble runs on the augmented, already mixed batch and its mean logits are the label
  (``lam=1, perm=None`` in the op). The teachers see exactly the image the student sees, as the research code (and
  SRe2L/FKD-style relabelling) does; mixing the teachers' logits of the unmixed images would be a linearisation
  of the teacher that is wrong wherever the teacher is not linear, and saves nothing (still one pass per teacher).

AdamW with a per-step cosine schedule, KL at temperature T, final-epoch top-1 (top-5 for > 10 classes) reported.
Randomness (shuffle, augmentation, mixup) is drawn from generators seeded by (seed, epoch, rank), and a checkpoint
(model + optimizer + epoch, one atomic ``torch.save`` of tensors and plain containers, ``weights_only`` loadable) is
written after every epoch, so ``--resume`` continues exactly where an interrupted run stopped. Under ``torchrun``
the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA), ``--batch-size`` is the global batch
split across ranks, and validation counts are summed over the ranks' shards.

A run is four steps over one :class:`~infer_fast.train.state.StudentRun`: :func:`_setup` (data, teachers, model,
validation loader, optimizer, sizes), :func:`_resume` (the checkpoint, or a fresh folder), :func:`_epoch` per epoch,
and ``report.finish``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from infer_fast.config_cli import ConfigError
from infer_fast.dashboard import Dashboard
from infer_fast.data.augment import augment_batch, mix_batch
from infer_fast.labels import TeacherEnsemble, ensemble_for
from infer_fast.ops.backend import get as get_op
from infer_fast.runtime import (
    DistContext,
    append_text,
    atomic_write_text,
    epoch_seeds,
    git_commit,
    keeping,
    make_dirs,
    rank_and_world,
)
from infer_fast.train.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    resume_config_check,
    save_checkpoint,
    truncate_metrics,
    unwrap,
)
from infer_fast.train.config import PRESET_IMAGE_SIZE, EvalConfig
from infer_fast.train.report import evaluate_model, finish
from infer_fast.train.state import StudentRun


def _epoch_generators(seed: int, epoch: int, rank: int) -> tuple[torch.Generator, torch.Generator, Any]:
    """Shuffle generator shared by all ranks, per-rank augmentation generator and numpy generator (for Beta)."""
    shared, local = epoch_seeds(seed, epoch, rank)
    return torch.Generator().manual_seed(shared), torch.Generator().manual_seed(local), \
        np.random.default_rng([seed, epoch, rank])


def _cosine_lr(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))


def auto_student(small: bool) -> str:
    return "resnet18_cifar" if small else "resnet18"


def epoch_divisor(cfg: EvalConfig, dataset) -> int:
    """INFER's compute rule for dynamic labels (research code): an INFER set holds M+1 synthetic images per stored
    natural image (the natural plus one composition per UFC teacher), so it trains ``epochs // (M + 1)`` epochs,
    about the optimizer steps that ``epochs`` give a baseline of the same budget. Baselines (sre2l, random) hold
    one image per stored image and train the full ``epochs``: the rule never under-trains them."""
    if cfg.labels == "dynamic" and cfg.dynamic_divide_epochs:
        return int(getattr(dataset, "num_ufc_teachers", 0) or 0) + 1
    return 1


def effective_epochs(cfg: EvalConfig, dataset) -> int:
    return max(1, cfg.epochs // epoch_divisor(cfg, dataset))


def default_out(cfg: EvalConfig, method: str) -> str:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"eval-{method}-{cfg.labels}-{stamp}")


def train_student(
    cfg: EvalConfig,
    dataset=None,
    *,
    model: nn.Module | None = None,
    val_loader: Iterable | None = None,
    teachers: nn.Module | None = None,
) -> dict[str, Any]:
    """Train a student on the distilled dataset and validate it; returns the summary dict (also summary.json).

    ``dataset`` (a DistilledDataset: ``compose``, ``hard_labels``, ``soft_labels``, ``classes``, ``mean``, ``std``,
    ``image_size``, ``small``), ``model``, ``val_loader`` and ``teachers`` default to what ``cfg`` names; passing
    them lets callers (demo, tests) reuse objects already in memory.
    """
    cfg.validate()
    note = "the checkpoint of the last finished epoch is kept; free space or fix the folder, then rerun with --resume"
    with DistContext(cfg.device) as ctx, keeping(note):
        return _train(cfg, dataset, model, val_loader, teachers, ctx)


def train_students(cfg: EvalConfig) -> list[dict[str, Any]]:
    """``cfg.students`` trained in turn on one distilled set (loaded once), each in ``<out>/<student>``; rank 0
    writes ``students.json`` and a markdown table ``students.md`` in ``<out>``: the field's cross-architecture
    table. One student runs :func:`train_student` as it is."""
    from infer_fast.distilled import load_distilled

    students = cfg.students
    if len(students) == 1:
        return [train_student(dataclasses.replace(cfg, student=students[0]))]
    dataset = load_distilled(cfg.distilled)
    out = cfg.out or default_out(cfg, dataset.method)
    rows = []
    for name in students:
        rows.append(train_student(dataclasses.replace(cfg, student=name, out=os.path.join(out, name)), dataset))
    if rank_and_world()[0] == 0:  # torchrun: rank 0 writes the table
        table = students_table(rows)
        atomic_write_text(os.path.join(out, "students.json"), json.dumps(rows, indent=1))
        atomic_write_text(os.path.join(out, "students.md"), table + "\n")
        print(table)
    return rows


def students_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per student (final-epoch top-1/top-5, optimizer steps, wall time)."""
    lines = ["| student | top-1 % | top-5 % | epochs | steps | time s |", "|---|---|---|---|---|---|"]
    for r in rows:
        top5 = "-" if r.get("top5") is None else f"{r['top5']:.2f}"
        lines.append(f"| {r['student']} | {r['top1']:.2f} | {top5} | {r['epochs']} | {r['student_steps']} | "
                     f"{r['wall_time_s']:.0f} |")
    return "\n".join(lines)


def _train(cfg: EvalConfig, dataset, model: nn.Module | None, val_loader: Iterable | None,
           teachers: nn.Module | None, ctx: DistContext) -> dict[str, Any]:
    t_start = time.perf_counter()
    run = _setup(cfg, dataset, model, val_loader, teachers, ctx)
    history = _resume(run)
    bar = tqdm(range(run.start_epoch, run.epochs), desc=f"student {cfg.student} ({run.method}, {cfg.labels})",
               disable=ctx.rank != 0 or not cfg.progress, initial=run.start_epoch, total=run.epochs)
    stop_at = min(run.epochs, run.start_epoch + cfg.stop_after) if cfg.stop_after else run.epochs
    with Dashboard(cfg.log_dir, "evaluate", ctx.rank) as board:
        for epoch in bar:
            if epoch >= stop_at:
                break
            row = _epoch(run, epoch)
            if ctx.rank == 0:
                save_checkpoint(run.ckpt_path, run.model, run.opt, epoch + 1, run.step, run.cfg_json)
                append_text(run.metrics_path, json.dumps(row) + "\n")
                history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", **({"top1": f"{row['top1']:.2f}"} if "top1" in row else {}))
                board.scalars(run.step, "student", loss=row["loss"], top1=row.get("top1"), lr=row["lr"],
                              images_per_s=run.n / row["epoch_time_s"])
    bar.close()
    ctx.barrier()
    if stop_at < run.epochs:
        if ctx.rank == 0:
            print(f"evaluate: stopped after epoch {stop_at}/{run.epochs} (--stop-after); continue with --resume "
                  f"--out {run.out}", flush=True)
        return {"stopped_after": stop_at, "epochs": run.epochs, "out": run.out}
    return finish(run, history, time.perf_counter() - t_start)


def _setup(cfg: EvalConfig, dataset, model: nn.Module | None, val_loader: Iterable | None,
           teachers: nn.Module | None, ctx: DistContext) -> StudentRun:
    """The data (checked against the labels mode and preset), the teachers of dynamic labels, the student, the
    validation loader, the optimizer and the run's sizes."""
    if dataset is None:
        if not cfg.distilled:
            raise ValueError("evaluate: no distilled dataset folder given (DIR)")
        from infer_fast.distilled import load_distilled

        dataset = load_distilled(cfg.distilled)
    if len(dataset) == 0:
        raise ValueError(f"distilled dataset {cfg.distilled}: holds no synthetic images")
    if cfg.labels == "static" and dataset.soft_labels is None:
        raise ValueError(f"--labels static: the distilled dataset {cfg.distilled or '(in memory)'} stores no soft "
                         "labels; use --labels dynamic")
    if cfg.student == "auto":
        cfg.student = auto_student(bool(dataset.small)) if model is None else type(model).__name__
    if cfg.preset is not None and dataset.image_size != PRESET_IMAGE_SIZE[cfg.preset]:
        raise ConfigError(f"--preset {cfg.preset}: {cfg.distilled or 'the distilled set'} holds "
                          f"{dataset.image_size} px images; the preset trains {PRESET_IMAGE_SIZE[cfg.preset]} px "
                          "students (distil at that --image-size, or drop --preset and give its settings as flags)")
    device, world = ctx.device, ctx.world
    if cfg.labels == "dynamic" and teachers is None:
        teachers = ensemble_for(dataset, device, cfg.teachers, cfg.distilled, cfg.teacher_classes)
    num_teachers = len(teachers.models) if isinstance(teachers, TeacherEnsemble) else len(cfg.teachers) or 1
    model = _student(cfg, dataset, model, ctx)
    overlap = None
    if val_loader is None:
        from infer_fast.data import make_loader

        # class order and geometry from the distilled set's manifest, never from the folder alone
        val_loader = make_loader(cfg.val, "eval", batch_size=cfg.eval_batch_size, loader=cfg.loader,
                                 image_size=dataset.image_size, seed=cfg.seed, num_workers=cfg.workers,
                                 device=device, mean=tuple(dataset.mean), std=tuple(dataset.std),
                                 classes=list(dataset.classes), small=bool(dataset.small),
                                 memory_budget=int(cfg.val_memory_gb * 2**30))
        overlap = _val_overlap(dataset, cfg.val) if ctx.rank == 0 else None
    local_batch = max(1, math.ceil(cfg.batch_size / world))
    per_rank = math.ceil(len(dataset) / world)
    steps_per_epoch = math.ceil(per_rank / local_batch)
    # --steps N: equal compute across sets of different sizes; else the epochs (the dynamic-label rule applied)
    epochs = math.ceil(cfg.steps / steps_per_epoch) if cfg.steps else effective_epochs(cfg, dataset)
    cfg.out = cfg.out or default_out(cfg, getattr(dataset, "method", "unknown"))
    return StudentRun(
        cfg=cfg, ctx=ctx, dataset=dataset, model=model, val_loader=val_loader, teachers=teachers,
        num_teachers=num_teachers, opt=torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        loss_fn=get_op("mixed_soft_xent", cfg.backend), epochs=epochs, local_batch=local_batch, per_rank=per_rank,
        total_steps=cfg.steps or steps_per_epoch * epochs, eval_every=cfg.eval_every or max(1, epochs // 25),
        cfg_json=json.dumps(asdict(cfg), sort_keys=True), val_overlap=overlap)


def _val_overlap(dataset, val: str) -> dict | None:
    """The set's natural images that are files of the split ``val`` (data.natural_overlap); one warning line when
    there are any."""
    from infer_fast.data import natural_overlap

    source = getattr(getattr(dataset, "manifest", None), "source", None) or {}
    overlap = natural_overlap(source.get("natural_files"), val)
    if overlap and overlap["in_val"]:
        print(f"evaluate: warning: {overlap['in_val']} of the set's {overlap['naturals']} natural images are files of "
              f"the validation split {overlap['val']} (e.g. {overlap['examples'][0]}): its accuracy is not on "
              "held-out images (distil with --data OUT of `infer-fast data holdout` and score on OUT/holdout)",
              flush=True)
    return overlap


def _student(cfg: EvalConfig, dataset, model: nn.Module | None, ctx: DistContext) -> nn.Module:
    """The student in training mode on the device (built from ``cfg`` when not given), DDP-wrapped under torchrun."""
    if model is None:
        from infer_fast.models import build_model

        torch.manual_seed(cfg.seed)  # seeded initialisation: the same --seed gives the same run
        model = build_model(cfg.student, len(dataset.classes), image_size=dataset.image_size, width=cfg.width)
    model = model.to(ctx.device).train()
    if ctx.world > 1:
        device = ctx.device
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def _resume(run: StudentRun) -> list[dict[str, Any]]:
    """Continue from the checkpoint in ``run.out`` (``--resume``) or start a fresh folder; rank 0 writes
    config.json. Returns the metrics history so far."""
    cfg, rank, history = run.cfg, run.ctx.rank, []
    if cfg.resume and os.path.exists(run.ckpt_path):
        ckpt = load_checkpoint(run.ckpt_path, run.ctx.device)
        resume_config_check(ckpt["config"], cfg, run.ckpt_path)
        unwrap(run.model).load_state_dict(ckpt["model"])
        run.opt.load_state_dict(ckpt["optimizer"])
        run.start_epoch, run.step = int(ckpt["epoch"]), int(ckpt["step"])
        if rank == 0:
            history = truncate_metrics(run.metrics_path, run.start_epoch)
            print(f"evaluate: resuming {run.out} after epoch {run.start_epoch}/{run.epochs}")
    elif rank == 0:
        if os.path.exists(run.ckpt_path):
            raise FileExistsError(f"--out {run.out}: already holds a run ({CHECKPOINT}); pass --resume to continue "
                                  "it or choose another folder")
        make_dirs(run.out)
        if os.path.exists(run.metrics_path):
            os.remove(run.metrics_path)
    if rank == 0:
        from infer_fast import __version__

        meta = {"config": asdict(cfg), "method": run.method, "effective_epochs": run.epochs,
                "epoch_divisor": epoch_divisor(cfg, run.dataset), "student_steps": run.total_steps,
                "num_teachers": run.num_teachers,
                "world_size": run.ctx.world, "local_batch": run.local_batch, "synthetic_images": run.n,
                "classes": run.num_classes, "version": __version__, "commit": git_commit(), "torch": torch.__version__,
                "device": str(run.ctx.device)}
        atomic_write_text(os.path.join(run.out, "config.json"), json.dumps(meta, indent=1))
    return history


def _epoch(run: StudentRun, epoch: int) -> dict[str, Any]:
    """One shuffled pass over this rank's share of the synthetic images; returns the epoch's metrics row."""
    cfg, device, rank, world = run.cfg, run.ctx.device, run.ctx.rank, run.ctx.world
    t_ep = time.perf_counter()
    g_shared, g_local, rng = _epoch_generators(cfg.seed, epoch, rank)
    order = torch.randperm(run.n, generator=g_shared)
    if world > 1:  # pad so that every rank runs the same number of steps (DDP needs it)
        order = torch.cat([order, order[: run.per_rank * world - run.n]])[rank::world]
    loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
    for i in range(0, order.numel(), run.local_batch):
        if run.step >= run.total_steps:  # --steps: the last epoch ends at the step budget
            break
        idx = order[i:i + run.local_batch]
        x = augment_batch(run.dataset.compose(idx, device=device), bool(run.dataset.small), g_local)
        x, lam, perm = mix_batch(x, cfg.mix, cfg.mix_alpha, rng, g_local)
        temperature = cfg.temperature
        if cfg.labels == "static":  # the stored labels, mixed with the images' lam and perm inside the loss op
            target = run.dataset.soft_labels.index_select(0, idx).to(device=device, dtype=torch.float32)
        elif cfg.labels == "hard":  # class indices: the op mixes their one-hots; at T = 1 its gradient is CE's
            target = run.dataset.hard_labels.index_select(0, idx).to(device=device, dtype=torch.int64)
            temperature = 1.0
        else:  # the teachers on the augmented, mixed batch: the label is already the mixed image's
            target, lam, perm = run.teachers(x), 1.0, None
        for group in run.opt.param_groups:
            group["lr"] = _cosine_lr(cfg.lr, run.step, run.total_steps)
        loss = run.loss_fn(run.model(x), target, perm, lam, temperature)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        run.step += 1
        loss_sum += loss.detach().double() * x.shape[0]
        seen += x.shape[0]
    if world > 1:  # the logged loss is the mean over every rank's images
        totals = torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=device)])
        run.ctx.all_reduce(totals)
        loss_sum, seen = totals[0], int(totals[1])
    row: dict[str, Any] = {"epoch": epoch + 1, "step": run.step, "loss": float(loss_sum) / max(1, seen),
                           "lr": _cosine_lr(cfg.lr, run.step, run.total_steps),
                           "epoch_time_s": time.perf_counter() - t_ep}
    if (epoch + 1) % run.eval_every == 0 or epoch + 1 == run.epochs:
        row.update(evaluate_model(run.model, run.val_loader, device, run.num_classes > 10))
    return row
