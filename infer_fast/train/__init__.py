"""Student training and evaluation on distilled data (static or dynamic labels), and the digits demo."""

from infer_fast.train.config import EvalConfig
from infer_fast.train.student import evaluate_model, train_student

__all__ = ["EvalConfig", "evaluate_model", "train_student"]
