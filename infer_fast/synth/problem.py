"""What the synthesis optimises: a :class:`Problem` (its parameters, images, targets and bounds), the result of a
batch of them, the bound rules of a stored compensator and the fixed partition of a run's problems into batches.

A *problem* is one optimisation with its own parameters, its own images and its own BN-statistics group: for
INFER one UFC ``u_{k,m}`` ([1, 3, S, S]) shared by the C natural images of set k under teacher m; for sre2l
C free images (one per class). Each method (:mod:`infer_fast.synth.methods`) builds its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

UFC_BOUNDS = ("loose", "set")  # bound rules of the stored UFC, see ufc_bounds


@dataclass
class Problem:
    key: tuple[int, int]  # (k, m) for INFER, (i, m) for sre2l
    teacher: int
    base_index: torch.Tensor  # [n] int64 rows of the base tensor
    ufc_index: torch.Tensor  # [n] int64 rows of this problem's parameters
    targets: torch.Tensor  # [n] int64 classes
    init: torch.Tensor  # [p, 3, S, S] float32 initial parameters
    lower: torch.Tensor  # [p, 3, S, S] clamp bounds of the stored parameters
    upper: torch.Tensor

    @property
    def num_images(self) -> int:
        return int(self.base_index.numel())


@dataclass
class BatchResult:
    params: list[torch.Tensor]  # per problem, [p, 3, S, S] float32 on CPU
    ce: torch.Tensor  # [T, P] float32 per-iteration CE per problem
    bn: torch.Tensor  # [T, P] float32 per-iteration BN-matching loss per problem
    # [P, 3] float32 at the initial parameters, un-augmented: |dCE/dp|, |r_bn dBN/dp| and their cosine per problem
    gradients: torch.Tensor | None = None


def ufc_bounds(base_norm: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
               rule: str = "loose") -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds [1, 3, S, S] of the stored compensator shared by the normalised images ``base_norm`` [n, 3, S, S].

    ``"loose"`` (INFER §3.5, the default): ``[lo - hi, hi - lo]`` per channel. Every composed image is clamped to
    [lo, hi] in the optimisation forward and wherever it is composed, so u only needs a box beyond which all
    images are clamped anyway; this never pins u, whatever the number of classes.
    ``"set"`` (the old, withdrawn rule, for ablations): ``lo - min_n x <= u <= hi - max_n x``, the condition for
    every ``x + u`` to be in range without clamping; with 100+ images per set it pins u to ~0 at most pixels.
    """
    c, s = base_norm.shape[1], base_norm.shape[-2:]
    if rule == "loose":
        span = (hi - lo).view(1, c, 1, 1)
        return (-span).expand(1, c, *s).clone(), span.expand(1, c, *s).clone()
    if rule == "set":
        lower = lo.view(1, c, 1, 1) - base_norm.amin(0, keepdim=True)
        upper = hi.view(1, c, 1, 1) - base_norm.amax(0, keepdim=True)
        return lower, upper
    raise ValueError(f"ufc_bounds: rule must be one of {UFC_BOUNDS}, got {rule!r}")


def pinned_fraction(ufc: torch.Tensor, std: torch.Tensor, tol: float = 1.0 / 255) -> float:
    """Fraction of a compensator's values [..., 3, S, S] (normalised units) whose size in pixel units,
    ``|u| * std_c``, is at most ``tol`` (default one grey level): the values that the bound pinned at ~0."""
    pixel = ufc.float().abs() * std.float().view(3, 1, 1)
    return float((pixel <= tol).float().mean())


def make_batches(problems: list[Problem], per_batch: int) -> list[list[Problem]]:
    """Fixed partition: problems of one teacher, in key order, ``per_batch`` at a time (depends only on config)."""
    batches = []
    teachers = sorted({p.teacher for p in problems})
    for m in teachers:
        mine = sorted((p for p in problems if p.teacher == m), key=lambda p: p.key)
        batches += [mine[i:i + per_batch] for i in range(0, len(mine), per_batch)]
    return batches
