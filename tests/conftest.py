"""Shared test fixtures: devices, dtypes, the shared real-data folder, worst-mismatch reporting."""

from __future__ import annotations

import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none visible on this machine)")


def shared_data_dir() -> str:
    return os.environ.get("INFER_FAST_DATA") or os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))


def require_shared(name: str) -> str:
    """Path of ``name`` inside the shared data folder, or skip the test saying what is missing."""
    path = os.path.join(shared_data_dir(), name)
    if not os.path.exists(path):
        pytest.skip(f"needs {path} (shared real data; set INFER_FAST_DATA to its folder)")
    return path


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str = "") -> None:
    """torch.testing.assert_close that also prints the worst mismatches on failure."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    err = (a - e).abs() - (atol + rtol * e.abs())
    if err.numel() and err.max() > 0:
        flat = err.flatten()
        worst = flat.topk(min(5, flat.numel())).indices
        lines = [
            f"  at {tuple(int(i) for i in torch.unravel_index(w, a.shape))}: got {a.flatten()[w]:.6g}, "
            f"expected {e.flatten()[w]:.6g}"
            for w in worst
        ]
        raise AssertionError(f"{what}: {int((err > 0).sum())} of {a.numel()} mismatched; worst:\n" + "\n".join(lines))


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs error relative to the max magnitude of the expected value (for the bf16/fp16 2x rule)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((a - e).abs().max() / e.abs().max().clamp_min(1e-12))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
