"""Student training on a distilled dataset and validation on real data (INFER.md section 5).

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

import datetime as _dt
import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from infer_fast.config_cli import resume_fields
from infer_fast.train.augment import augment_batch
from infer_fast.train.config import EvalConfig

CHECKPOINT = "checkpoint.pt"
# config fields that must match for --resume to continue a run (the rest, e.g. device or progress, may change)
_RESUME_KEYS = resume_fields(EvalConfig)


# ----------------------------------------------------------------------------------------------- small utilities
def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def git_commit() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r} requested but no CUDA device is visible")
    return dev


def _dist_setup(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world, we_initialised) from the torchrun environment; single process when absent."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def loss_function(backend: str) -> Callable[..., torch.Tensor]:
    if backend == "reference":
        from infer_fast.reference import mixed_soft_xent
    else:
        from infer_fast.ops.mixed_soft_xent import mixed_soft_xent
    return mixed_soft_xent


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


def auto_student(small: bool) -> str:
    return "resnet18_cifar" if small else "resnet18"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------------- teachers
class TeacherEnsemble(nn.Module):
    """Mean logits of M frozen teachers on a batch normalised with the *dataset's* mean/std (re-normalised and
    resized per teacher when a teacher was trained with other statistics or another input size)."""

    def __init__(self, teachers: list[tuple[nn.Module, Any]], mean, std, image_size: int):
        super().__init__()
        if not teachers:
            raise ValueError("dynamic labels need at least one teacher")
        self.models = nn.ModuleList([m.eval().requires_grad_(False) for m, _ in teachers])
        self.adapt: list[tuple[torch.Tensor, torch.Tensor, int] | None] = []
        src_m, src_s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        for _, meta in teachers:
            tm = getattr(meta, "mean", None)
            ts = getattr(meta, "std", None)
            size = int(getattr(meta, "image_size", None) or image_size)
            same_norm = tm is None or (np.allclose(tm, mean, atol=1e-4) and np.allclose(ts, std, atol=1e-4))
            if same_norm and size == image_size:
                self.adapt.append(None)
                continue
            if same_norm:
                scale, shift = torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1)
            else:  # x_t = (x * s + m - m_t) / s_t
                tm_, ts_ = torch.tensor(tm).view(1, 3, 1, 1), torch.tensor(ts).view(1, 3, 1, 1)
                scale, shift = src_s / ts_, (src_m - tm_) / ts_
            self.adapt.append((scale, shift, size))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for model, adapt in zip(self.models, self.adapt, strict=True):
            xt = x
            if adapt is not None:
                scale, shift, size = adapt
                xt = x * scale.to(x) + shift.to(x)
                if size != x.shape[-1]:
                    xt = torch.nn.functional.interpolate(xt, size=(size, size), mode="bilinear", antialias=True,
                                                         align_corners=False)
            logits = model(xt).float()
            total = logits if total is None else total + logits
        return total / len(self.models)


def teacher_paths(cfg: EvalConfig, dataset) -> list[str]:
    """Teacher files for dynamic labels: --teacher overrides, else the distilled manifest's ``teachers``."""
    if cfg.teachers:
        paths = list(cfg.teachers)
    else:
        entries = (getattr(dataset, "manifest", None) or {}).get("teachers") or []
        paths = []
        for e in entries:
            p = e if isinstance(e, str) else (e.get("path") or e.get("file")) if isinstance(e, dict) else None
            if p:
                paths.append(p)
        if not paths:
            raise ValueError(
                f"--labels dynamic: the distilled dataset {cfg.distilled or '(in memory)'} names no teacher files in "
                "manifest.json['teachers']; pass them with --teacher PATH (repeatable)")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"--labels dynamic: teacher file(s) not found: {', '.join(missing)}")
    return paths


def load_ensemble(paths: list[str], dataset, device: torch.device) -> TeacherEnsemble:
    from infer_fast.models import load_teacher

    n_cls = len(dataset.classes)
    teachers = []
    for p in paths:
        model, meta = load_teacher(p, device=str(device))
        if getattr(meta, "num_classes", n_cls) != n_cls:
            raise ValueError(f"teacher {p}: {meta.num_classes} classes, the distilled dataset has {n_cls}")
        teachers.append((model, meta))
    return TeacherEnsemble(teachers, dataset.mean, dataset.std, dataset.image_size).to(device)


# ------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_model(model: nn.Module, loader: Iterable, device: torch.device, topk5: bool) -> dict[str, float]:
    """Top-1 (and top-5) accuracy in percent over ``loader``; counts are summed over DDP ranks."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct1, correct5, total
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == labels[:, None]
        counts[0] += hit[:, 0].sum()
        counts[1] += hit.any(dim=1).sum()
        counts[2] += labels.numel()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    model.train(was_training)
    if counts[2] == 0:
        raise ValueError("validation loader yielded no images")
    out = {"top1": float(100.0 * counts[0] / counts[2]), "val_images": int(counts[2])}
    if topk5:
        out["top5"] = float(100.0 * counts[1] / counts[2])
    return out


# ---------------------------------------------------------------------------------------------------- curves
def plot_curves(curves: dict[str, list[tuple[int, float]]], path: str, title: str = "student validation top-1") -> None:
    """Accuracy-vs-epoch PNG (matplotlib Agg, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, pts in curves.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- checkpoint
def save_checkpoint(path: str, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, step: int,
                    cfg_json: str) -> None:
    state = {"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
             "config": cfg_json}
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, device: torch.device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets the same clear message
        raise ValueError(f"--resume: {path} is not a readable infer_fast student checkpoint ({exc})") from exc


def _resume_config_check(saved_json: str, cfg: EvalConfig, path: str) -> None:
    saved = json.loads(saved_json)
    now = asdict(cfg)
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in _RESUME_KEYS if saved.get(k) != now[k]]
    if diff:
        raise ValueError(f"--resume: {path} was written with other settings ({'; '.join(diff)}); use the same "
                         "settings or another --out folder")


def _truncate_metrics(path: str, last_epoch: int) -> list[dict]:
    """Keep metrics.jsonl lines up to ``last_epoch`` (an interrupted run may have logged one epoch too many)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if r.get("epoch", 0) <= last_epoch]
    _atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


# ------------------------------------------------------------------------------------------------------ training
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
    device = resolve_device(cfg.device)
    rank, world, own_pg = _dist_setup(device)
    try:
        return _train(cfg, dataset, model, val_loader, teachers, device, rank, world)
    finally:
        if own_pg:
            dist.destroy_process_group()


def _train(cfg, dataset, model, val_loader, teachers, device, rank, world) -> dict[str, Any]:
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

    if cfg.labels == "dynamic" and teachers is None:
        teachers = load_ensemble(teacher_paths(cfg, dataset), dataset, device)
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

        val_loader = make_loader(cfg.val, "eval", batch_size=cfg.eval_batch_size, loader=cfg.loader,
                                 image_size=dataset.image_size, seed=cfg.seed, num_workers=cfg.workers,
                                 device=device, mean=tuple(dataset.mean), std=tuple(dataset.std))
        val_classes = list(getattr(val_loader, "classes", classes))
        if val_classes != classes:
            raise ValueError(f"--val {cfg.val}: classes {val_classes[:5]}... do not match the distilled dataset's "
                             f"{classes[:5]}... ({len(val_classes)} vs {n_cls})")

    loss_fn = loss_function(cfg.backend)
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
        _resume_config_check(ckpt["config"], cfg, ckpt_path)
        _unwrap(model).load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        if rank == 0:
            history = _truncate_metrics(metrics_path, start_epoch)
            print(f"evaluate: resuming {out} after epoch {start_epoch}/{epochs}")
    elif rank == 0:
        if os.path.exists(ckpt_path):
            raise FileExistsError(f"--out {out}: already holds a run ({CHECKPOINT}); pass --resume to continue it "
                                  "or choose another folder")
        os.makedirs(out, exist_ok=True)
        if os.path.exists(metrics_path):
            os.remove(metrics_path)
    if rank == 0:
        from infer_fast import __version__

        meta = {"config": asdict(cfg), "method": method, "effective_epochs": epochs,
                "epoch_divisor": epoch_divisor(cfg, dataset), "student_steps": total_steps,
                "num_teachers": num_teachers,
                "world_size": world, "local_batch": local_batch, "synthetic_images": n, "classes": n_cls,
                "version": __version__, "commit": git_commit(), "torch": torch.__version__, "device": str(device)}
        _atomic_write_text(os.path.join(out, "config.json"), json.dumps(meta, indent=1))

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
            if cfg.mixup_alpha > 0 and b > 1:
                lam = float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
                perm = torch.randperm(b, generator=g_local).to(device)
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
            dist.all_reduce(totals)
            loss_sum, seen = totals[0], int(totals[1])
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "loss": float(loss_sum) / max(1, seen),
                               "lr": _cosine_lr(cfg.lr, step, total_steps), "epoch_time_s": time.perf_counter() - t_ep}
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            row.update(evaluate_model(model, val_loader, device, topk5))
        if rank == 0:
            save_checkpoint(ckpt_path, model, opt, epoch + 1, step, cfg_json)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", **({"top1": f"{row['top1']:.2f}"} if "top1" in row else {}))
    bar.close()
    if world > 1:
        dist.barrier()
    if stop_at < epochs:
        if rank == 0:
            print(f"evaluate: stopped after epoch {stop_at}/{epochs} (--stop-after); continue with --resume "
                  f"--out {out}", flush=True)
        return {"stopped_after": stop_at, "epochs": epochs, "out": out}
    return _finish(cfg, out, model, history, rank, method, epochs, total_steps, n, n_cls,
                   time.perf_counter() - t_start)


def _finish(cfg, out, model, history, rank, method, epochs, steps, n, n_cls, wall) -> dict[str, Any]:
    evals = [r for r in history if "top1" in r]
    final = evals[-1] if evals else {}
    best = max(evals, key=lambda r: r["top1"]) if evals else {}
    summary = {
        "method": method, "labels": cfg.labels, "student": cfg.student, "width": cfg.width, "epochs": epochs,
        "student_steps": steps, "batch_size": cfg.batch_size, "synthetic_images": n, "classes": n_cls,
        "top1": final.get("top1"), "top5": final.get("top5"),
        "best_top1_selected_on_val": best.get("top1"), "best_epoch": best.get("epoch"),
        "wall_time_s": wall, "out": out,
    }
    if rank == 0:
        from safetensors.torch import save_file

        sd = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
        tmp = os.path.join(out, f"student.safetensors.tmp{os.getpid()}")
        save_file(sd, tmp, metadata={"arch": cfg.student, "num_classes": str(n_cls), "method": method,
                                     "labels": cfg.labels, "top1": str(summary["top1"])})
        os.replace(tmp, os.path.join(out, "student.safetensors"))
        plot_curves({f"{method} ({cfg.labels})": [(r["epoch"], r["top1"]) for r in evals]},
                    os.path.join(out, "accuracy.png"))
        _atomic_write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=1))
        top5 = f" top5={summary['top5']:.2f}%" if summary["top5"] is not None else ""
        print(f"evaluate: {method} labels={cfg.labels} student={cfg.student} epochs={epochs} steps={steps} images={n} "
              f"top1={summary['top1']:.2f}%{top5} (best {summary['best_top1_selected_on_val']:.2f}% at epoch "
              f"{summary['best_epoch']}, selected on val) time={wall:.1f}s -> {out}", flush=True)
    return summary
