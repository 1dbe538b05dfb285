"""Optional TensorBoard logging (``--log-dir DIR`` on ``distill``, ``evaluate`` and ``train-teacher``).

Scalars (losses, accuracy, learning rate, images/s) and image grids go through ``torch.utils.tensorboard`` into
``DIR`` (``tensorboard --logdir DIR`` shows them); nothing logs in, nothing is sent anywhere. Without the
``tensorboard`` package the run says so in one line and goes on. Only rank 0 writes. Every run also keeps its
``metrics.jsonl`` and PNG curves whether or not this is on.
"""

from __future__ import annotations

import sys

import torch


class Dashboard:
    """A TensorBoard writer for ``log_dir`` (None: off), or a no-op when it is off or unavailable."""

    def __init__(self, log_dir: str | None, what: str, rank: int = 0) -> None:
        self.writer = None
        if not log_dir or rank != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print(f"{what}: --log-dir {log_dir}: the tensorboard package is not installed (pip install tensorboard); "
                  "going on without it", file=sys.stderr)
            return
        self.writer = SummaryWriter(log_dir)

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def scalars(self, step: int, prefix: str = "", **values: float | None) -> None:
        """``prefix/name`` = value at ``step`` for every value that is not None."""
        if self.writer is None:
            return
        for name, value in values.items():
            if value is not None:
                self.writer.add_scalar(f"{prefix}/{name}" if prefix else name, float(value), int(step))

    def image(self, tag: str, image: torch.Tensor, step: int = 0) -> None:
        """A [3, H, W] image in [0, 1] (e.g. a torchvision ``make_grid`` of distilled images)."""
        if self.writer is not None:
            self.writer.add_image(tag, image.detach().float().clamp(0, 1).cpu(), int(step))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
