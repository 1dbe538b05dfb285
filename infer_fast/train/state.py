"""What a student run holds between its steps (setup, resume, epochs, finish: see :mod:`infer_fast.train.loop`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from infer_fast.runtime import DistContext
from infer_fast.train.checkpoint import CHECKPOINT
from infer_fast.train.config import EvalConfig


@dataclass
class StudentRun:
    cfg: EvalConfig  # resolved: student and out filled in
    ctx: DistContext
    dataset: Any  # a DistilledDataset, or a stand-in with compose / soft_labels / classes / mean / std / image_size
    model: nn.Module  # DDP-wrapped under torchrun
    val_loader: Iterable
    teachers: nn.Module | None  # the dynamic labels' ensemble
    num_teachers: int
    opt: torch.optim.Optimizer
    loss_fn: Callable
    epochs: int  # effective epochs (the dynamic-label rule applied)
    local_batch: int  # this rank's share of the global batch
    per_rank: int  # images per rank and epoch
    total_steps: int
    eval_every: int
    cfg_json: str  # what a resumed run must match
    start_epoch: int = 0
    step: int = 0
    val_overlap: dict | None = None  # the set's natural images found in the validation split (rank 0)

    @property
    def method(self) -> str:
        return getattr(self.dataset, "method", "unknown")

    @property
    def n(self) -> int:
        return len(self.dataset)

    @property
    def num_classes(self) -> int:
        return len(self.dataset.classes)

    @property
    def out(self) -> str:
        return self.cfg.out

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.cfg.out, CHECKPOINT)

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.cfg.out, "metrics.jsonl")
