"""The interface every synthesis method implements, and the registry that maps ``--method`` names to them.

A method decides what a run stores within the budget (:meth:`Method.storage`), whether natural images are sampled,
which problems are optimised (:meth:`Method.problems`, on which base images) and how the solved problems become the
stored arrays of the format (:meth:`Method.assemble`). The runner, the planner and the budget ask the method object
and never test its name, so a new method or a content control of the quality study is one subclass registered with
:func:`register` and imported by ``methods/__init__.py``. For example INFER with ``u`` replaced by Gaussian noise of
the same per-channel norm: ``class NoiseU(Infer)`` with ``name = "infer-noise-u"``, ``control = True`` and an
``assemble`` that calls ``super().assemble`` and swaps the ``ufcs`` for the noise (seeded by ``inputs.cfg.seed``);
``u`` of another natural set permutes the ``ufcs`` over k the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from infer_fast.runtime import Normalisation
from infer_fast.synth.budget import Storage
from infer_fast.synth.evidence import R_BN_HINT
from infer_fast.synth.problem import Problem

if TYPE_CHECKING:
    from infer_fast.synth.config import DistillConfig


@dataclass(frozen=True)
class Inputs:
    """What a method builds its problems and its stored arrays from."""

    cfg: DistillConfig  # resolved (DistillConfig.resolved)
    storage: Storage
    norm: Normalisation
    image_size: int
    naturals: torch.Tensor | None  # uint8 [K, C, 3, S, S] when the method samples them, else None
    small: bool = True  # CIFAR-style images (the per-dataset regime of INFER §3.2), else ImageNet-style

    @property
    def num_classes(self) -> int:
        return self.storage.num_classes

    @property
    def num_teachers(self) -> int:
        return self.storage.num_teachers


class Method:
    """One synthesis method (a registered subclass per ``--method`` name)."""

    name: ClassVar[str]
    # True: the method's images are trained on with labels the teachers give every augmented, mixed batch (its own
    # relabel protocol, e.g. SRe2L's), not with one stored label per un-augmented image
    relabels: ClassVar[bool] = False
    key_name: ClassVar[str] = "k"  # what a problem key's first value counts, in metrics.jsonl
    # A content control of the quality study rather than a method: left out where "every method" is meant (the demo)
    control: ClassVar[bool] = False
    # True: the stored compensators can come from a finished INFER run (``--compensators-from``) through
    # :meth:`transform` instead of being optimised again (the content controls that reuse INFER's u)
    takes_compensators: ClassVar[bool] = False
    # True: r_bn defaults to the measured per-dataset choice (synth.config.MANY_CLASSES_R_BN) rather than the
    # paper's regime value (the methods that optimise compensators, and the controls beside them)
    measured_r_bn: ClassVar[bool] = False
    # The likely cause named when the composed images carry less class evidence than the naturals (None: none)
    evidence_hint: ClassVar[str | None] = R_BN_HINT

    def storage(self, ipc: int, num_classes: int, num_teachers: int, image_size: int) -> Storage:
        """What a run stores within the budget ``ipc * C`` (default: ipc stored images per class, no UFC)."""
        return Storage(self.name, num_classes, ipc, ipc, num_teachers, ipc * num_classes, 0, ipc * num_classes,
                       (3, image_size, image_size))

    def samples_naturals(self, cfg: DistillConfig) -> bool:
        """Whether the run samples ``storage.num_natural_sets`` natural images per class."""
        return False

    def problems(self, inputs: Inputs) -> list[Problem]:
        """The problems to optimise (none: nothing is optimised)."""
        return []

    def base(self, inputs: Inputs) -> torch.Tensor | None:
        """The base images [Nb, 3, S, S] the problems compose from (None without problems)."""
        return None

    def problems_of_teacher(self, cfg: DistillConfig, storage: Storage, teacher: int) -> int:
        """How many problems teacher ``teacher`` optimises (the plan's count, without building them)."""
        return 0

    def probe_batch(self, cfg: DistillConfig, teacher: int, num_teachers: int, images: int, image_size: int,
                    norm: Normalisation) -> tuple[list[Problem], torch.Tensor]:
        """One batch of ``problems_per_batch`` problems of ``teacher`` with ``images`` images each on random images,
        and its base: what ``distill --plan`` times."""
        raise NotImplementedError(f"method {self.name!r} optimises nothing")

    def assemble(self, inputs: Inputs, solved: Iterable[tuple[Problem, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The stored arrays of the format (``naturals``, ``ufcs``; the labels come later) from every problem with
        its optimised parameters."""
        raise NotImplementedError

    def transform(self, inputs: Inputs, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``takes_compensators`` methods: the stored arrays from INFER's (``naturals``, ``ufcs``)."""
        raise NotImplementedError(f"method {self.name!r} does not take another run's compensators")

    def natural_mask(self, ds) -> torch.Tensor:
        """bool [len(ds)]: which images of the distilled set ``ds`` are real natural images (the class-evidence
        reference); the others are the method's composed or synthesised images. Default: the stored images."""
        return ~ds.composed_mask

    def summary(self, tensors: dict[str, torch.Tensor], norm: Normalisation) -> str:
        """A clause for the run's last line (what is worth knowing about the stored arrays), or ""."""
        return ""


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` the method named ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"synthesis method {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> Method:
    """The method registered as ``name``."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown synthesis method {name!r}; known: {', '.join(_REGISTRY)}") from None


def names(controls: bool = True) -> tuple[str, ...]:
    """The registered names in registration order (``controls=False``: the methods without the content controls)."""
    return tuple(name for name, cls in _REGISTRY.items() if controls or not cls.control)
