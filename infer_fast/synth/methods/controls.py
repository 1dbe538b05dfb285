"""Content controls of the quality study (issue 18): INFER's budget and natural sets, with the compensators replaced,
so that a gain at equal student steps can be credited to what u holds rather than to the extra, teacher-labelled
views that any perturbation of the naturals would give.

- ``infer-noise``: every ``u_{k,m}`` replaced by Gaussian noise with the same per-channel L2 norm (seeded by the
  run's seed): the same perturbation energy, none of the content.
- ``infer-swap``: set k is composed with the compensators of set k + 1 (mod K): optimised content, optimised for
  other images (needs K >= 2 natural sets).
- ``infer-views``: u = 0 and, in place of the M compositions of each natural, M fixed random augmentations of it
  (the student's own training augmentation, :func:`infer_fast.data.augment.augment_batch`, drawn once from the
  run's seed): "just more views". The views are stored as images (sets K .. K(M+1)-1 of ``naturals``, in the order
  of INFER's compositions), so this control stores (M+1) x the naturals, over INFER's budget: it controls for
  content, not for storage.

The first two optimise INFER's compensators as ``--method infer`` does (same seed and config: the same u), or take
them from a finished infer run with ``--compensators-from DIR`` (checked to match; the result is identical and the
optimisation is not paid twice), then transform them. Every control's static labels are the teachers' on its own
images.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from infer_fast.runtime import hashed_seed
from infer_fast.synth.budget import Storage
from infer_fast.synth.methods.base import Inputs, Method, register
from infer_fast.synth.methods.infer import Infer
from infer_fast.synth.problem import Problem

CONTROL_HINT = "a content control: what its transformation of the compositions costs, not a fault"


class _CompensatorControl(Infer):
    """INFER's optimisation (or another run's compensators), then :meth:`transform` of the stored arrays."""

    control = True
    takes_compensators = True
    evidence_hint = CONTROL_HINT

    def assemble(self, inputs: Inputs, solved: Iterable[tuple[Problem, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return self.transform(inputs, super().assemble(inputs, solved))


@register
class InferNoise(_CompensatorControl):
    name = "infer-noise"

    def transform(self, inputs: Inputs, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        u = tensors["ufcs"].float()  # [K, M, 3, S, S]
        g = torch.Generator().manual_seed(hashed_seed("control-noise", inputs.cfg.seed))
        z = torch.randn(u.shape, generator=g)
        scale = u.flatten(3).norm(dim=3) / z.flatten(3).norm(dim=3).clamp_min(1e-12)  # [K, M, 3]
        return {**tensors, "ufcs": (z * scale[..., None, None]).half()}


@register
class InferSwap(_CompensatorControl):
    name = "infer-swap"

    def storage(self, ipc: int, num_classes: int, num_teachers: int, image_size: int) -> Storage:
        storage = super().storage(ipc, num_classes, num_teachers, image_size)
        if storage.num_natural_sets < 2:
            raise ValueError(f"--method {self.name}: needs at least 2 natural sets to swap their compensators; ipc "
                             f"{ipc} with {num_teachers} teachers and {num_classes} classes gives "
                             f"{storage.num_natural_sets} (raise --ipc)")
        return storage

    def transform(self, inputs: Inputs, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**tensors, "ufcs": tensors["ufcs"].roll(-1, dims=0)}  # set k gets set k + 1's u


@register
class InferViews(Method):
    name = "infer-views"
    control = True
    measured_r_bn = True  # INFER's settings, so that one bench_quality row set shares them
    evidence_hint = CONTROL_HINT

    def storage(self, ipc: int, num_classes: int, num_teachers: int, image_size: int) -> Storage:
        k = Infer().storage(ipc, num_classes, num_teachers, image_size).num_natural_sets
        n = k * num_classes * (num_teachers + 1)  # INFER's synthetic images, every one stored
        return Storage(self.name, num_classes, ipc, k, num_teachers, n, 0, n, (3, image_size, image_size))

    def samples_naturals(self, cfg) -> bool:
        return True

    def assemble(self, inputs: Inputs, solved: Iterable[tuple[Problem, torch.Tensor]]) -> dict[str, torch.Tensor]:
        from infer_fast.data.augment import augment_batch

        naturals = inputs.naturals  # uint8 [K, C, 3, S, S]
        k_sets, m = naturals.shape[0], inputs.num_teachers
        g = torch.Generator().manual_seed(hashed_seed("control-views", inputs.cfg.seed))
        views = torch.empty((k_sets, m, *naturals.shape[1:]), dtype=torch.uint8)
        for k in range(k_sets):
            x = inputs.norm.normalise(naturals[k])
            for j in range(m):
                views[k, j] = inputs.norm.quantise(augment_batch(x, inputs.small, generator=g))
        return {"naturals": torch.cat([naturals, views.flatten(0, 1)])}  # set K + k*M + m: view m of set k

    def natural_mask(self, ds) -> torch.Tensor:
        return torch.arange(len(ds)) < ds.manifest.num_natural_sets * ds.num_classes

    def summary(self, tensors: dict[str, torch.Tensor], norm) -> str:
        return f"; {tensors['naturals'].shape[0]} sets stored (the naturals and their fixed views)"
