"""The sre2l baseline (INFER §7): class-specific synthesis as SRe2L. ipc problems; problem i optimises C free
images (one per class, each for its own class only; BN statistics over the batch of C, as SRe2L batches one image
per class) under teacher ``i % M`` (the M teachers in turn; SRe2L itself uses one), init standard normal noise in
normalised space as SRe2L (or the natural images with ``sre2l_init="natural"``); the result is stored as uint8
images, like SRe2L's saved PNGs."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from infer_fast.runtime import Normalisation, hashed_seed
from infer_fast.synth.budget import Storage
from infer_fast.synth.methods.base import Inputs, Method, register
from infer_fast.synth.problem import Problem


def sre2l_problems(ipc: int, num_classes: int, num_teachers: int, image_size: int, seed: int, norm: Normalisation,
                   naturals: torch.Tensor | None = None) -> list[Problem]:
    """ipc problems of C free images each (base = the mean image, i.e. 0 after normalisation), ordered by (m, i);
    initialised from ``naturals`` [ipc, C, 3, S, S] when given, else from seeded noise."""
    c, s = num_classes, image_size
    _, _, lo, hi = norm.tensors()
    lower = lo.view(1, 3, 1, 1).expand(c, 3, s, s).clone()
    upper = hi.view(1, 3, 1, 1).expand(c, 3, s, s).clone()
    problems = []
    for i in range(ipc):
        m = i % num_teachers
        if naturals is not None:
            init = norm.normalise(naturals[i])
        else:
            g = torch.Generator().manual_seed(hashed_seed("init", seed, i, m))
            init = torch.randn(c, 3, s, s, generator=g)
        problems.append(Problem(
            key=(i, m), teacher=m,
            base_index=torch.zeros(c, dtype=torch.int64), ufc_index=torch.arange(c),
            targets=torch.arange(c), init=init, lower=lower, upper=upper,
        ))
    return sorted(problems, key=lambda p: (p.teacher, p.key[0]))


def mean_image(norm: Normalisation, image_size: int) -> torch.Tensor:
    """[1, 3, S, S] float images in [0, 1] that normalise to 0: the base when the images are the parameters."""
    mean = norm.tensors()[0]
    return mean.view(1, 3, 1, 1).expand(1, 3, image_size, image_size).contiguous()


@register
class Sre2l(Method):
    name = "sre2l"
    # SRe2L's relabel stage labels every augmented batch: its images carry little class evidence on their own, so
    # one label of the clean image does not describe the crops and mixes a student sees (the demo's collapse)
    relabels = True
    key_name = "i"

    def samples_naturals(self, cfg) -> bool:
        return cfg.sre2l_init == "natural"

    def problems(self, inputs: Inputs) -> list[Problem]:
        cfg = inputs.cfg
        return sre2l_problems(cfg.ipc, inputs.num_classes, inputs.num_teachers, inputs.image_size, cfg.seed,
                              inputs.norm, inputs.naturals)

    def base(self, inputs: Inputs) -> torch.Tensor:
        return mean_image(inputs.norm, inputs.image_size)

    def problems_of_teacher(self, cfg, storage: Storage, teacher: int) -> int:
        return len(range(teacher, cfg.ipc, storage.num_teachers))

    def probe_batch(self, cfg, teacher, num_teachers, images, image_size, norm):
        ppb = cfg.problems_per_batch
        problems = [p for p in sre2l_problems(ppb * num_teachers, images, num_teachers, image_size, 0, norm)
                    if p.teacher == teacher][:ppb]
        return problems, mean_image(norm, image_size)

    def natural_mask(self, ds) -> torch.Tensor:
        return torch.zeros(len(ds), dtype=torch.bool)  # every stored image is synthesised

    def assemble(self, inputs: Inputs, solved: Iterable[tuple[Problem, torch.Tensor]]) -> dict[str, torch.Tensor]:
        s = inputs.image_size
        images = torch.zeros(inputs.cfg.ipc, inputs.num_classes, 3, s, s)
        for p, param in solved:
            images[p.key[0]] = param
        return {"naturals": inputs.norm.quantise(images)}
