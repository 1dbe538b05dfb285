"""Content controls of the quality study (issue 18): INFER's budget, problems and optimisation, then the stored
compensators replaced, so that a gain at equal student steps can be credited to what u holds rather than to the
extra, teacher-labelled views that any perturbation of the naturals would give.

- ``infer-noise``: every ``u_{k,m}`` replaced by Gaussian noise with the same per-channel L2 norm (seeded by the
  run's seed): the same perturbation energy, none of the content.
- ``infer-swap``: set k is composed with the compensators of set k + 1 (mod K): optimised content, optimised for
  other images (needs K >= 2 natural sets).

Each runs INFER's optimisation as ``--method infer`` does (same seed and config: the same u), then transforms the
result; its static labels are the teachers' on its own composed images. The third control of the study, u = 0 with
M fixed random augmentations of each natural ("just more views"), needs stored views rather than a UFC and is not
here yet.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from infer_fast.runtime import hashed_seed
from infer_fast.synth.methods.base import Inputs, register
from infer_fast.synth.methods.infer import Infer
from infer_fast.synth.problem import Problem


@register
class InferNoise(Infer):
    name = "infer-noise"
    control = True

    def assemble(self, inputs: Inputs, solved: Iterable[tuple[Problem, torch.Tensor]]) -> dict[str, torch.Tensor]:
        tensors = super().assemble(inputs, solved)
        u = tensors["ufcs"].float()  # [K, M, 3, S, S]
        g = torch.Generator().manual_seed(hashed_seed("control-noise", inputs.cfg.seed))
        z = torch.randn(u.shape, generator=g)
        scale = u.flatten(3).norm(dim=3) / z.flatten(3).norm(dim=3).clamp_min(1e-12)  # [K, M, 3]
        tensors["ufcs"] = (z * scale[..., None, None]).half()
        return tensors


@register
class InferSwap(Infer):
    name = "infer-swap"
    control = True

    def storage(self, ipc: int, num_classes: int, num_teachers: int, image_size: int):
        storage = super().storage(ipc, num_classes, num_teachers, image_size)
        if storage.num_natural_sets < 2:
            raise ValueError(f"--method {self.name}: needs at least 2 natural sets to swap their compensators; ipc "
                             f"{ipc} with {num_teachers} teachers and {num_classes} classes gives "
                             f"{storage.num_natural_sets} (raise --ipc)")
        return storage

    def assemble(self, inputs: Inputs, solved: Iterable[tuple[Problem, torch.Tensor]]) -> dict[str, torch.Tensor]:
        tensors = super().assemble(inputs, solved)
        tensors["ufcs"] = tensors["ufcs"].roll(-1, dims=0)  # set k gets set k + 1's u
        return tensors
