"""Teacher architectures by name, safe checkpoint loading, and teacher training.

Public API (the contract other stages build on): :func:`build_model`, :data:`ARCHS`, :func:`load_teacher`,
:func:`save_teacher`, :class:`TeacherMeta`, :class:`TeacherConfig`, :func:`train_teacher`,
:func:`default_teachers`.
"""

from infer_fast.models.archs import ARCHS, build_model
from infer_fast.models.checkpoint import CheckpointError, TeacherMeta, load_teacher, save_teacher
from infer_fast.models.teacher import TeacherConfig, default_teachers, train_teacher

__all__ = ["ARCHS", "CheckpointError", "TeacherConfig", "TeacherMeta", "build_model", "default_teachers",
           "load_teacher", "save_teacher", "train_teacher"]
