"""The random baseline (INFER §7): ipc natural images per class, nothing optimised (static teacher labels
only)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from infer_fast.synth.methods.base import Inputs, Method, register
from infer_fast.synth.problem import Problem


@register
class RandomNaturals(Method):
    name = "random"

    def samples_naturals(self, cfg) -> bool:
        return True

    def assemble(self, inputs: Inputs, solved: Iterable[tuple[Problem, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {"naturals": inputs.naturals}
