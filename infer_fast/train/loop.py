"""The student training loop on a distilled dataset and validation on real data (INFER.md section 5).

One epoch is one shuffled pass over the synthetic images, composed on the fly (``DistilledDataset.compose``:
stored naturals + UFCs through the fused compensator_broadcast op). Each batch is augmented on device
(``augment.augment_batch``), then mixed: ``x = lam * x + (1 - lam) * x[perm]`` with ``lam ~ Beta(0.8, 0.8)``.

- static labels: the stored teacher logits of the batch are mixed with the same ``lam``/``perm`` *inside* the fused
  ``mixed_soft_xent`` op (``p = softmax((lam * y + (1 - lam) * y[perm]) / T)``): the interpolated label of INFER.md.
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
from infer_fast.data.augment import augment_batch
from infer_fast.labels import TeacherEnsemble, ensemble_for
from infer_fast.ops.backend import get as get_op
from infer_fast.runtime import DistContext, append_text, atomic_write_text, git_commit, keeping, make_dirs
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


def _epoch_generators(seed: int, epoch: int, rank: int) -> tuple[torch.Generator, torch.Generator, Any]:
    """Shuffle generator shared by all ranks, per-rank augmentation generator and numpy generator (for Beta)."""
    shared = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    local = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 131 + rank + 1)
    return shared, local, np.random.default_rng([seed, epoch, rank])


def _cosine_lr(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))


def mixup_inputs(x: torch.Tensor, lam: float, perm: torch.Tensor | None) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]`` (the images; the labels are mixed the same way inside the loss op)."""
    if perm is None or lam == 1.0:
        return x
    return lam * x + (1.0 - lam) * x.index_select(0, perm)


def cutmix_inputs(x: torch.Tensor, lam: float, perm: torch.Tensor, generator: torch.Generator
                  ) -> tuple[torch.Tensor, float]:
    """CutMix (Yun et al. 2019, as SRe2L's relabel/train code draws it): a box of side ratio ``sqrt(1 - lam)``
    around a uniform centre, clipped to the image, is pasted from ``x[perm]``. Returns the images and the label
    weight of ``x``: the kept area ``1 - box area / image area`` (after clipping), so the area-weighted label is
    ``lam' * y + (1 - lam') * y[perm]``, mixed inside the fused loss op exactly as for mixup."""
    h, w = x.shape[-2:]
    cut = math.sqrt(max(0.0, 1.0 - lam))
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=generator))  # CPU generator: no device sync
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    if y2 <= y1 or x2 <= x1:
        return x, 1.0
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[:, :, y1:y2, x1:x2].index_select(0, perm)  # gather the box only
    return out, 1.0 - (y2 - y1) * (x2 - x1) / (h * w)


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
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 writes the table
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


def _train(cfg, dataset, model, val_loader, teachers, ctx: DistContext) -> dict[str, Any]:
    device, rank, world = ctx.device, ctx.rank, ctx.world
    t_start = time.perf_counter()
    if dataset is None:
        if not cfg.distilled:
            raise ValueError("evaluate: no distilled dataset folder given (DIR)")
        from infer_fast.distilled import load_distilled

        dataset = load_distilled(cfg.distilled)
    method = getattr(dataset, "method", "unknown")
    n, classes = len(dataset), list(dataset.classes)
    n_cls = len(classes)
    if n == 0:
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

    if cfg.labels == "dynamic" and teachers is None:
        teachers = ensemble_for(dataset, device, cfg.teachers, cfg.distilled, cfg.teacher_classes)
    num_teachers = len(teachers.models) if isinstance(teachers, TeacherEnsemble) else len(cfg.teachers) or 1
    epochs = effective_epochs(cfg, dataset)

    if model is None:
        from infer_fast.models import build_model

        torch.manual_seed(cfg.seed)  # seeded initialisation: the same --seed gives the same run
        model = build_model(cfg.student, n_cls, image_size=dataset.image_size, width=cfg.width)
    model = model.to(device).train()
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if val_loader is None:
        from infer_fast.data import make_loader

        # class order and geometry from the distilled set's manifest, never from the folder alone
        val_loader = make_loader(cfg.val, "eval", batch_size=cfg.eval_batch_size, loader=cfg.loader,
                                 image_size=dataset.image_size, seed=cfg.seed, num_workers=cfg.workers,
                                 device=device, mean=tuple(dataset.mean), std=tuple(dataset.std), classes=classes,
                                 small=bool(dataset.small), memory_budget=int(cfg.val_memory_gb * 2**30))

    loss_fn = get_op("mixed_soft_xent", cfg.backend)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    local_batch = max(1, math.ceil(cfg.batch_size / world))
    per_rank = math.ceil(n / world)
    steps_per_epoch = math.ceil(per_rank / local_batch)
    total_steps = steps_per_epoch * epochs
    eval_every = cfg.eval_every or max(1, epochs // 25)

    out = cfg.out or default_out(cfg, method)
    cfg.out = out
    cfg_json = json.dumps(asdict(cfg), sort_keys=True)
    ckpt_path = os.path.join(out, CHECKPOINT)
    metrics_path = os.path.join(out, "metrics.jsonl")
    start_epoch, step, history = 0, 0, []
    if cfg.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, device)
        resume_config_check(ckpt["config"], cfg, ckpt_path)
        unwrap(model).load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        if rank == 0:
            history = truncate_metrics(metrics_path, start_epoch)
            print(f"evaluate: resuming {out} after epoch {start_epoch}/{epochs}")
    elif rank == 0:
        if os.path.exists(ckpt_path):
            raise FileExistsError(f"--out {out}: already holds a run ({CHECKPOINT}); pass --resume to continue it "
                                  "or choose another folder")
        make_dirs(out)
        if os.path.exists(metrics_path):
            os.remove(metrics_path)
    if rank == 0:
        from infer_fast import __version__

        meta = {"config": asdict(cfg), "method": method, "effective_epochs": epochs,
                "epoch_divisor": epoch_divisor(cfg, dataset), "student_steps": total_steps,
                "num_teachers": num_teachers,
                "world_size": world, "local_batch": local_batch, "synthetic_images": n, "classes": n_cls,
                "version": __version__, "commit": git_commit(), "torch": torch.__version__, "device": str(device)}
        atomic_write_text(os.path.join(out, "config.json"), json.dumps(meta, indent=1))

    soft = dataset.soft_labels
    topk5 = n_cls > 10
    bar = tqdm(range(start_epoch, epochs), desc=f"student {cfg.student} ({method}, {cfg.labels})",
               disable=rank != 0 or not cfg.progress, initial=start_epoch, total=epochs)
    stop_at = min(epochs, start_epoch + cfg.stop_after) if cfg.stop_after else epochs
    for epoch in bar:
        if epoch >= stop_at:
            break
        t_ep = time.perf_counter()
        g_shared, g_local, rng = _epoch_generators(cfg.seed, epoch, rank)
        order = torch.randperm(n, generator=g_shared)
        if world > 1:  # pad so that every rank runs the same number of steps (DDP needs it)
            order = torch.cat([order, order[: per_rank * world - n]])[rank::world]
        loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
        for i in range(0, order.numel(), local_batch):
            idx = order[i:i + local_batch]
            x = augment_batch(dataset.compose(idx, device=device), bool(dataset.small), g_local)
            b = x.shape[0]
            alpha = cfg.mix_alpha
            if alpha > 0 and b > 1:
                lam = float(rng.beta(alpha, alpha))
                perm = torch.randperm(b, generator=g_local).to(device)
                if cfg.mix == "cutmix":
                    x, lam = cutmix_inputs(x, lam, perm, g_local)
                else:
                    x = mixup_inputs(x, lam, perm)
            else:
                lam, perm = 1.0, None
            if cfg.labels == "static":
                target = soft.index_select(0, idx).to(device=device, dtype=torch.float32)
                t_perm, t_lam = perm, lam
            else:
                target = teachers(x)
                t_perm, t_lam = None, 1.0
            lr = _cosine_lr(cfg.lr, step, total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            logits = model(x)
            loss = loss_fn(logits, target, t_perm, t_lam, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.detach().double() * b
            seen += b
        if world > 1:  # the logged loss is the mean over every rank's images
            totals = torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=device)])
            ctx.all_reduce(totals)
            loss_sum, seen = totals[0], int(totals[1])
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "loss": float(loss_sum) / max(1, seen),
                               "lr": _cosine_lr(cfg.lr, step, total_steps), "epoch_time_s": time.perf_counter() - t_ep}
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            row.update(evaluate_model(model, val_loader, device, topk5))
        if rank == 0:
            save_checkpoint(ckpt_path, model, opt, epoch + 1, step, cfg_json)
            append_text(metrics_path, json.dumps(row) + "\n")
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", **({"top1": f"{row['top1']:.2f}"} if "top1" in row else {}))
    bar.close()
    ctx.barrier()
    if stop_at < epochs:
        if rank == 0:
            print(f"evaluate: stopped after epoch {stop_at}/{epochs} (--stop-after); continue with --resume "
                  f"--out {out}", flush=True)
        return {"stopped_after": stop_at, "epochs": epochs, "out": out}
    return finish(cfg, out, model, history, rank, method, epochs, total_steps, n, n_cls,
                   time.perf_counter() - t_start)
