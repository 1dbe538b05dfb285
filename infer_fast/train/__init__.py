"""Student training and evaluation on distilled data (static or dynamic labels), and the digits demo."""

from infer_fast.train.config import EvalConfig
from infer_fast.train.loop import train_student, train_students
from infer_fast.train.report import evaluate_model

__all__ = ["EvalConfig", "evaluate_model", "train_student", "train_students"]
