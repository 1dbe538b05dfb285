"""The extension loads, reports its build, and registers every op for every backend it was built with."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch

import infer_fast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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

    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("INFER_FAST_CUDA") == "0":
        return False
    return bool(CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))) or bool(shutil.which("nvcc"))


def test_build_records_the_torch_and_cuda_it_was_compiled_against():
    from infer_fast.buildinfo import recorded_build

    build = recorded_build()
    assert build is not None, "setup.py writes infer_fast/_build.py whenever it builds the extension"
    assert build.TORCH_VERSION.split("+")[0] == infer_fast._C.torch_version == torch.__version__.split("+")[0]
    assert (build.CUDA_VERSION is None) == (not infer_fast.cuda_enabled())
    if infer_fast.cuda_enabled():
        assert build.CUDA_VERSION == torch.version.cuda == infer_fast._C.cuda_version
    tag = "pt" + "".join(torch.__version__.split("+")[0].split(".")[:3])
    tag += "cu" + build.CUDA_VERSION.replace(".", "") if build.CUDA_VERSION else "cpu"
    assert build.VERSION == f"{infer_fast.__version__}+{tag}", build.VERSION


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64" and shutil.which("objdump")),
                    reason="checks an x86-64 Linux build's glibc symbol versions with objdump")
def test_extension_needs_no_glibc_newer_than_manylinux_2_28():
    """setup.py force-includes csrc/compat/manylinux_2_28.h, so _C's own references stay within glibc 2.28 even when
    built on a newer glibc (here 2.36: exp and log would need 2.29, libstdc++'s __libc_single_threaded 2.32) and
    the wheel can be tagged manylinux_2_28 (auditwheel repair checks the same in make dist)."""
    out = subprocess.run(["objdump", "-T", infer_fast._C.__file__], capture_output=True, text=True, check=True).stdout
    versions = {(int(a), int(b)) for a, b in re.findall(r"\bGLIBC_(\d+)\.(\d+)", out)}
    assert versions, "objdump listed no GLIBC symbol versions at all"
    newer = [(f"GLIBC_{a}.{b}", sym) for line in out.splitlines()
             for a, b, sym in re.findall(r"\bGLIBC_(\d+)\.(\d+)\)?\s+(\S+)$", line) if (int(a), int(b)) > (2, 28)]
    assert not newer, f"_C references glibc symbols newer than 2.28: {newer}"


def test_torch_mismatch_is_one_line_naming_both_versions():
    from infer_fast.buildinfo import torch_mismatch

    assert torch_mismatch("2.14.1+cu130", "2.14.1+cu130") is None
    msg = torch_mismatch("2.11.0+cu130", "2.14.1+cu130")
    assert "\n" not in msg and "built against torch 2.11.0+cu130" in msg and "torch 2.14.1+cu130 is installed" in msg


def test_import_under_another_torch_fails_with_that_line():
    """Fake the recorded build torch (no second torch here): the import stops before loading _C. The faked version
    is one that no machine runs (the GPU check's machine has torch 2.11, so a real version could be the installed
    one there)."""
    import subprocess
    import sys

    built = "1.0.0+cu999"
    assert torch.__version__ != built
    fake = (
        f"import sys, types; m = types.ModuleType('infer_fast._build'); m.TORCH_VERSION = '{built}'; "
        "sys.modules['infer_fast._build'] = m; import infer_fast"
    )
    r = subprocess.run([sys.executable, "-c", fake], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ImportError: infer_fast was built against torch {built} but torch "), r.stderr
    assert f"torch {torch.__version__} is installed" in last
    assert "undefined symbol" not in r.stderr


@pytest.mark.parametrize(
    "cap,archs,want",
    [
        ((9, 0), "8.0;9.0;10.0;12.0+PTX", "yes (SASS)"),
        ((10, 3), "8.0;9.0;10.0;12.0+PTX", "yes (SASS)"),
        ((12, 1), "8.0;9.0;10.0;12.0+PTX", "yes (SASS)"),
        ((13, 0), "8.0;9.0;10.0;12.0+PTX", "yes (PTX"),
        ((8, 6), "8.0;9.0", "yes (SASS)"),
        ((10, 0), "8.0;9.0", "NO: built for 8.0;9.0"),
        ((7, 5), "8.0;9.0;10.0;12.0+PTX", "NO"),
        ((9, 0), None, "no (CPU-only build)"),
    ],
)
def test_kernels_for_a_gpu(cap, archs, want):
    from infer_fast.buildinfo import kernels_for

    assert kernels_for(cap, archs).startswith(want)


def test_info_prints_build_and_runtime_sides(capsys):
    from infer_fast.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("build:\n") and "\nruntime:\n" in out
    assert f"torch: {torch.__version__}" in out and "CUDA architectures" in out
