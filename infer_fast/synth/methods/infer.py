"""INFER (§2-3 of the method): K natural sets within the budget, one problem per (set k, teacher m): a UFC
[1, 3, S, S] shared by the C naturals of set k, init 0, bounded only loosely (every composed image is clamped to
the valid range instead; see ``problem.ufc_bounds``). Stored: the naturals [K, C, 3, S, S] and the UFCs
[K, M, 3, S, S] in fp16."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from infer_fast.runtime import Normalisation
from infer_fast.synth.budget import Storage, num_natural_sets
from infer_fast.synth.methods.base import Inputs, Method, register
from infer_fast.synth.problem import Problem, pinned_fraction, ufc_bounds


def infer_problems(naturals: torch.Tensor, num_teachers: int, norm: Normalisation,
                   bound: str = "loose") -> list[Problem]:
    """naturals uint8 [K, C, 3, S, S] -> K*M problems, ordered by (m, k); ``bound``: see problem.ufc_bounds."""
    k_sets, c = naturals.shape[0], naturals.shape[1]
    s = naturals.shape[-1]
    _, _, lo, hi = norm.tensors()
    problems = []
    bounds = [ufc_bounds(norm.normalise(naturals[k]), lo, hi, bound) for k in range(k_sets)]
    for m in range(num_teachers):
        for k in range(k_sets):
            lower, upper = bounds[k]
            problems.append(Problem(
                key=(k, m), teacher=m,
                base_index=k * c + torch.arange(c), ufc_index=torch.zeros(c, dtype=torch.int64),
                targets=torch.arange(c), init=torch.zeros(1, 3, s, s), lower=lower, upper=upper,
            ))
    return problems


@register
class Infer(Method):
    name = "infer"
    measured_r_bn = True

    def storage(self, ipc: int, num_classes: int, num_teachers: int, image_size: int) -> Storage:
        k = num_natural_sets(ipc, num_classes, num_teachers)
        storage = Storage(self.name, num_classes, ipc, k, num_teachers, k * num_classes, k * num_teachers,
                          k * num_classes * (num_teachers + 1), (3, image_size, image_size))
        assert storage.stored_images <= storage.budget_images, storage
        return storage

    def samples_naturals(self, cfg) -> bool:
        return True

    def problems(self, inputs: Inputs) -> list[Problem]:
        return infer_problems(inputs.naturals, inputs.num_teachers, inputs.norm, inputs.cfg.ufc_bound)

    def base(self, inputs: Inputs) -> torch.Tensor:
        s = inputs.image_size
        return inputs.naturals.reshape(-1, 3, s, s)

    def problems_of_teacher(self, cfg, storage: Storage, teacher: int) -> int:
        return storage.num_natural_sets

    def probe_batch(self, cfg, teacher, num_teachers, images, image_size, norm):
        g = torch.Generator().manual_seed(0)
        s = image_size
        naturals = torch.randint(0, 256, (cfg.problems_per_batch, images, 3, s, s), dtype=torch.uint8, generator=g)
        problems = [p for p in infer_problems(naturals, num_teachers, norm, cfg.ufc_bound) if p.teacher == teacher]
        return problems, naturals.reshape(-1, 3, s, s)

    def assemble(self, inputs: Inputs, solved: Iterable[tuple[Problem, torch.Tensor]]) -> dict[str, torch.Tensor]:
        s = inputs.image_size
        ufcs = torch.zeros(inputs.storage.num_natural_sets, inputs.num_teachers, 3, s, s)
        for p, param in solved:
            k, m = p.key
            ufcs[k, m] = param[0]
        return {"naturals": inputs.naturals, "ufcs": ufcs.half()}

    def summary(self, tensors: dict[str, torch.Tensor], norm: Normalisation) -> str:
        # INFER §3.5: the share of u that stayed at ~0 (the withdrawn bound rule pinned most of it)
        return f"; u within 1/255 of 0 on {pinned_fraction(tensors['ufcs'], norm.tensors()[1]):.1%} of its values"
