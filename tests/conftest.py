"""Shared test fixtures: devices, dtypes, the shared real-data folder, worst-mismatch reporting, an isolated
environment (own cache, no torchrun variables) and the cached tiny digits teachers."""

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


@pytest.fixture
def isolated_env(monkeypatch, tmp_path):
    """This test's own cache (INFER_FAST_CACHE under tmp_path) and no torchrun variables (RANK, WORLD_SIZE,
    LOCAL_RANK): what a module opts into with ``pytestmark = pytest.mark.usefixtures("isolated_env")``."""
    monkeypatch.setenv("INFER_FAST_CACHE", str(tmp_path / "cache"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def teachers():
    """Two small ConvNets (different widths and seeds) on digits at 16 px (synth_helpers.SIZE), cached across
    test sessions."""
    from infer_fast import __version__, models
    from infer_fast.runtime import cache_root
    from infer_fast.train.teacher import TeacherConfig, train_teacher

    folder = os.path.join(cache_root(), f"test-teachers-{__version__}")
    paths = []
    for i, width in enumerate((0.25, 0.5)):
        path = os.path.join(folder, f"convnet-w{width}-s{i}.safetensors")
        try:
            models.load_teacher(path)
        except Exception:
            os.makedirs(folder, exist_ok=True)
            train_teacher(TeacherConfig(arch="convnet", width=width, epochs=3, image_size=16, batch_size=64, lr=0.05,
                                        seed=i, out=path, progress=False, num_workers=0))
        paths.append(path)
    return paths
