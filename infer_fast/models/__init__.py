"""Teacher architectures by name, safe checkpoint loading, and teacher training.

Public API (the contract other stages build on): :func:`build_model`, :data:`ARCHS`, :func:`load_teacher`,
:func:`save_teacher`, :class:`TeacherMeta`, :class:`TeacherConfig`, :func:`train_teacher`,
:func:`default_teachers`; teacher classes by identity: :func:`imagenet1k_wnids`, :class:`ClassMismatchError`.
"""

from infer_fast.models.archs import ARCHS, build_model
from infer_fast.models.checkpoint import CheckpointError, TeacherMeta, load_teacher, save_teacher
from infer_fast.models.classes import IMAGENET1K, ClassMismatchError, imagenet1k_wnids
from infer_fast.models.teacher import TeacherConfig, default_teachers, train_teacher

__all__ = ["ARCHS", "IMAGENET1K", "CheckpointError", "ClassMismatchError", "TeacherConfig", "TeacherMeta",
           "build_model", "default_teachers", "imagenet1k_wnids", "load_teacher", "save_teacher", "train_teacher"]
