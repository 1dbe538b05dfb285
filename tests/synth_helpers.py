"""Shared helpers of the synthesis tests: a tiny calibrated teacher, random natural sets, one optimise_batch call
with the test defaults, and the tiny digits distillation config (with conftest's ``teachers``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from infer_fast.runtime import Normalisation
from infer_fast.synth.config import DistillConfig
from infer_fast.synth.ufc import PixelGeometry, SynthesisSettings, optimise_batch

NORM = Normalisation((0.5, 0.45, 0.4), (0.25, 0.2, 0.3))
SIZE = 16  # digits image size of the distill tests (conftest's teachers are trained at it)
ITER = 12


def tiny_teacher(c: int = 5) -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, c))
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(16, 3, 8, 8) * 0.8 + 0.1)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def setup_naturals(k_sets=2, c=5, s=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    naturals = torch.randint(0, 256, (k_sets, c, 3, s, s), generator=g, dtype=torch.uint8)
    naturals[0, 0, 0] = 0  # extreme pixels: the clamp bounds are tight there
    naturals[0, 1, 0] = 255
    mean, std, lo, hi = NORM.tensors()
    return naturals, mean, std, lo, hi


def run_batch(problems, model, base, mean, std, lo, hi, **settings):
    """optimise_batch with seed 0, lr 0.25, Adam (0.5, 0.9, 1e-8), r_bn 1 and first-BN multiplier 10 unless
    ``settings`` say otherwise (``aug`` and ``iterations`` are required)."""
    defaults = dict(seed=0, lr=0.25, betas=(0.5, 0.9), eps=1e-8, r_bn=1.0, first_bn_multiplier=10.0)
    return optimise_batch(problems, model, PixelGeometry(base, mean, std, lo, hi),
                          SynthesisSettings(**{**defaults, **settings}))


def distill_config(out, teachers, **kw) -> DistillConfig:
    # r_bn 0.05: with these weak teachers the BN term (first layer x10) otherwise dominates the short run;
    # jitter 1: digits are 8 px images upsampled to 16, a 4 px roll would shift them by half a digit
    base = dict(data="digits", image_size=SIZE, teachers=[str(t) for t in teachers], ipc=3, iterations=ITER,
                out=str(out), log_every=4, problems_per_batch=2, seed=3, r_bn=0.05, jitter=1)
    base.update(kw)
    return DistillConfig(**base)
