"""Student checkpoints and ``--resume``: one atomic ``torch.save`` of tensors and plain containers per epoch
(``weights_only`` loadable), the settings a resumed run must share, and the metrics log cut back to the checkpoint."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import torch
import torch.nn as nn

from infer_fast.config_cli import resume_fields
from infer_fast.runtime import atomic_torch_save, atomic_write_text
from infer_fast.train.config import EvalConfig

CHECKPOINT = "checkpoint.pt"
# config fields that must match for --resume to continue a run (the rest, e.g. device or progress, may change)
RESUME_KEYS = resume_fields(EvalConfig)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (what checkpoints and the final weights hold)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(path: str, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, step: int,
                    cfg_json: str) -> None:
    state = {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
             "config": cfg_json}
    atomic_torch_save(path, state)


def load_checkpoint(path: str, device: torch.device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets the same clear message
        raise ValueError(f"--resume: {path} is not a readable infer_fast student checkpoint ({exc})") from exc


def resume_config_check(saved_json: str, cfg: EvalConfig, path: str) -> None:
    # a setting added after the checkpoint was written had its default value then
    saved = {**asdict(EvalConfig()), **json.loads(saved_json)}
    now = asdict(cfg)
    diff = [f"{k}: checkpoint {saved[k]!r} vs now {now[k]!r}" for k in RESUME_KEYS if saved[k] != now[k]]
    if diff:
        raise ValueError(f"--resume: {path} was written with other settings ({'; '.join(diff)}); use the same "
                         "settings or another --out folder")


def truncate_metrics(path: str, last_epoch: int) -> list[dict]:
    """Keep metrics.jsonl lines up to ``last_epoch`` (an interrupted run may have logged one epoch too many)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if r.get("epoch", 0) <= last_epoch]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows
