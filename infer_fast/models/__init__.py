"""Teacher architectures by name and safe checkpoint loading (training teachers is a stage: infer_fast.train.teacher).

Public API (the contract other stages build on): :func:`build_model`, :data:`ARCHS`, :func:`load_teacher`,
:func:`load_teachers` (the one way every stage loads its teachers), :func:`save_teacher`, :class:`TeacherMeta`;
teacher classes by identity: :func:`imagenet1k_wnids`, :class:`ClassMismatchError`.
"""

from infer_fast.models.archs import ARCHS, build_model
from infer_fast.models.checkpoint import CheckpointError, TeacherMeta, load_teacher, load_teachers, save_teacher
from infer_fast.models.classes import IMAGENET1K, ClassMismatchError, imagenet1k_wnids

__all__ = ["ARCHS", "IMAGENET1K", "CheckpointError", "ClassMismatchError", "TeacherMeta",
           "build_model", "imagenet1k_wnids", "load_teacher", "load_teachers", "save_teacher"]
