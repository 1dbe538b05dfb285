"""The problems of each method, including the baselines of spec section 7.

- infer: one problem per (set k, teacher m): a UFC [1, 3, S, S] shared by the C naturals of set k, init 0,
  bounded only loosely (spec 3.5: every composed image is clamped to the valid range instead).
- sre2l: class-specific synthesis as SRe2L: ipc problems, problem i optimises C free images (one per class,
  each for its own class only; BN statistics over the batch of C, as SRe2L batches one image per class) under
  teacher ``i % M`` (so the M teachers are used in turn; SRe2L itself uses one), init standard normal noise in
  normalised space as SRe2L (or the natural images with ``sre2l_init="natural"``); the result is stored as
  uint8 images, like SRe2L's saved PNGs.
- random: ipc natural images per class, nothing to optimise (static teacher labels only).
"""

from __future__ import annotations

import torch

from infer_fast.synth.ufc import Problem, problem_seed, ufc_bounds


def normalise(images_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, S, S] -> float32 normalised (the same arithmetic as compensator_broadcast)."""
    x = images_u8.float() / 255.0
    return (x - mean.view(3, 1, 1)) / std.view(3, 1, 1)


def quantise(images_norm: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """float32 normalised -> uint8 RGB (round to nearest)."""
    x = images_norm * std.view(3, 1, 1) + mean.view(3, 1, 1)
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


def infer_problems(naturals: torch.Tensor, num_teachers: int, mean: torch.Tensor, std: torch.Tensor,
                   lo: torch.Tensor, hi: torch.Tensor, bound: str = "loose") -> list[Problem]:
    """naturals uint8 [K, C, 3, S, S] -> K*M problems, ordered by (m, k); ``bound``: see ufc.ufc_bounds."""
    k_sets, c = naturals.shape[0], naturals.shape[1]
    s = naturals.shape[-1]
    problems = []
    bounds = [ufc_bounds(normalise(naturals[k], mean, std), lo, hi, bound) for k in range(k_sets)]
    for m in range(num_teachers):
        for k in range(k_sets):
            lower, upper = bounds[k]
            problems.append(Problem(
                key=(k, m), teacher=m,
                base_index=k * c + torch.arange(c), ufc_index=torch.zeros(c, dtype=torch.int64),
                targets=torch.arange(c), init=torch.zeros(1, 3, s, s), lower=lower, upper=upper,
            ))
    return problems


def sre2l_problems(ipc: int, num_classes: int, num_teachers: int, image_size: int, seed: int, mean: torch.Tensor,
                   std: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                   naturals: torch.Tensor | None = None) -> list[Problem]:
    """ipc problems of C free images each (base = the mean image, i.e. 0 after normalisation), ordered by (m, i)."""
    c, s = num_classes, image_size
    lower = lo.view(1, 3, 1, 1).expand(c, 3, s, s).clone()
    upper = hi.view(1, 3, 1, 1).expand(c, 3, s, s).clone()
    problems = []
    for i in range(ipc):
        m = i % num_teachers
        if naturals is not None:
            init = normalise(naturals[i], mean, std)
        else:
            g = torch.Generator().manual_seed(problem_seed(seed, i, m, salt="init"))
            init = torch.randn(c, 3, s, s, generator=g)
        problems.append(Problem(
            key=(i, m), teacher=m,
            base_index=torch.zeros(c, dtype=torch.int64), ufc_index=torch.arange(c),
            targets=torch.arange(c), init=init, lower=lower, upper=upper,
        ))
    return sorted(problems, key=lambda p: (p.teacher, p.key[0]))


def make_batches(problems: list[Problem], per_batch: int) -> list[list[Problem]]:
    """Fixed partition: problems of one teacher, in key order, ``per_batch`` at a time (depends only on config)."""
    batches = []
    teachers = sorted({p.teacher for p in problems})
    for m in teachers:
        mine = sorted((p for p in problems if p.teacher == m), key=lambda p: p.key)
        batches += [mine[i:i + per_batch] for i in range(0, len(mine), per_batch)]
    return batches
