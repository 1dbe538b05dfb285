"""The extension loads, reports its build, and registers every op for every backend it was built with."""

from __future__ import annotations

import torch

import infer_fast

OPS = [
    "bn_stat_loss",
    "_bn_stat_loss_backward",
    "compensator_broadcast",
    "_compensator_broadcast_backward",
    "mixed_soft_xent",
    "_mixed_soft_xent_backward",
]


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"infer_fast::{op}", key)


def test_version_and_build_flag():
    assert infer_fast.__version__ == infer_fast._C.version
    assert isinstance(infer_fast.cuda_enabled(), bool)


def test_every_op_has_a_cpu_kernel():
    missing = [op for op in OPS if not _has_kernel(op, "CPU")]
    assert not missing, f"ops without a CPU kernel: {missing}"


def test_cuda_kernels_registered_when_built_with_cuda():
    if not infer_fast.cuda_enabled():
        assert torch.version.cuda is None or not _cuda_toolkit_present(), (
            "torch has CUDA and nvcc is present, yet the extension was built without CUDA"
        )
        return
    missing = [op for op in OPS if not _has_kernel(op, "CUDA")]
    assert not missing, f"CUDA build without CUDA kernels for: {missing}"


def test_fake_and_autograd_registered():
    for op in OPS:
        if op.startswith("_"):
            continue
        assert _has_kernel(op, "Meta") or torch._library.simple_registry.singleton.find(
            f"infer_fast::{op}"
        ).fake_impl.kernel is not None, f"{op} has no fake kernel"
        assert _has_kernel(op, "Autograd"), f"{op} has no autograd kernel"


def _cuda_toolkit_present() -> bool:
    import os
    import shutil

    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("INFER_FAST_CUDA") == "0":
        return False
    return bool(CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))) or bool(shutil.which("nvcc"))
