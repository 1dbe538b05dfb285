"""Build infer_fast: the Python package plus the `infer_fast._C` extension (fused ops, CPU and CUDA).

Sources are globbed from csrc/, csrc/cpu/ and csrc/cuda/: a new kernel never touches this file.

Environment:
  INFER_FAST_CUDA=0|1        force the CPU-only or the CUDA build (default: CUDA when torch has CUDA and nvcc exists)
  TORCH_CUDA_ARCH_LIST       CUDA architectures (default without a visible GPU: "8.0;9.0")
  INFER_FAST_CPU_ARCH        -march for the CPU kernels (default x86-64-v3 on x86_64: AVX2+FMA; "native" for this host)
  MAX_JOBS                   parallel compile jobs (ninja)
  INFER_FAST_SKIP_EXT=1      package only (the Makefile builds _C in place first, then installs editable with this)
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


def _resolve_cuda_home() -> None:
    """Set CUDA_HOME before torch.utils.cpp_extension reads it at import.

    torch derives it from `which nvcc`, which breaks when nvcc on PATH is a wrapper script (here /usr/local/bin/nvcc
    execs /usr/local/cuda-13.0/bin/nvcc: torch would pick /usr/local and the link fails with -lcudart not found).
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
        return
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.isdir(os.path.join(home, "lib64")) or os.path.isdir(os.path.join(home, "lib")):
            os.environ["CUDA_HOME"] = home


_resolve_cuda_home()

INSTALL_REQUIRES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "numpy",
    "safetensors",
    "tqdm",
    "matplotlib",
    "PyYAML",
    "scikit-learn",
]
EXTRAS = {
    "dali": ["nvidia-dali-cuda130"],
    "test": ["pytest", "pytest-benchmark", "pybind11", "ninja", "cmake>=3.27", "ruff"],
}


def _cuda_config() -> tuple[bool, str]:
    """Decide whether to build the CUDA kernels; returns (use_cuda, reason)."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    forced = os.environ.get("INFER_FAST_CUDA")
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    have_nvcc = bool(nvcc and os.path.exists(nvcc)) or shutil.which("nvcc") is not None
    if forced not in (None, "", "0", "1"):
        sys.exit(f"setup.py: INFER_FAST_CUDA must be 0 or 1, got {forced!r}")
    if forced == "0":
        return False, "INFER_FAST_CUDA=0"
    if torch.version.cuda is None:
        if forced == "1":
            sys.exit("setup.py: INFER_FAST_CUDA=1 but this torch has no CUDA support")
        return False, "torch has no CUDA"
    if not have_nvcc:
        if forced == "1":
            sys.exit(f"setup.py: INFER_FAST_CUDA=1 but nvcc was not found (CUDA_HOME={CUDA_HOME})")
        return False, f"nvcc not found (CUDA_HOME={CUDA_HOME})"
    return True, f"torch CUDA {torch.version.cuda}, nvcc at {CUDA_HOME}"


def _extensions():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    use_cuda, reason = _cuda_config()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))

    cxx = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=fast"]
    if platform.machine() in ("x86_64", "AMD64"):
        cxx.append(f"-march={os.environ.get('INFER_FAST_CPU_ARCH', 'x86-64-v3')}")
    else:
        arch = os.environ.get("INFER_FAST_CPU_ARCH")
        if arch:
            cxx.append(f"-mcpu={arch}")
    define_macros = [("INFER_FAST_VERSION", f'"{VERSION}"')]
    include_dirs = [os.path.join(ROOT, "csrc")]
    kwargs = dict(extra_link_args=["-fopenmp"])

    if use_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"  # A100, H100; with a GPU torch picks its arch
        # torch's CUDA headers (CUDAContext.h -> cublas etc.) live in the pip nvidia wheels
        try:
            import nvidia

            for base in nvidia.__path__:
                include_dirs.extend(sorted(glob.glob(os.path.join(base, "cu[0-9]*", "include"))))
        except ImportError:
            pass
        define_macros.append(("INFER_FAST_WITH_CUDA", "1"))
        nvcc = ["-O3", "-std=c++20", "--use_fast_math", "--expt-relaxed-constexpr", "-lineinfo"]
        ext = CUDAExtension(
            "infer_fast._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            **kwargs,
        )
    else:
        ext = CppExtension(
            "infer_fast._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx},
            **kwargs,
        )
    print(
        "infer_fast build configuration:\n"
        f"  cuda        : {use_cuda} ({reason})\n"
        f"  arch list   : {os.environ.get('TORCH_CUDA_ARCH_LIST', '(visible GPUs)') if use_cuda else '-'}\n"
        f"  cxx flags   : {' '.join(cxx)}\n"
        f"  sources     : {len(sources)} C++ + {len(cuda_sources) if use_cuda else 0} CUDA\n"
        f"  torch       : {torch.__version__}",
        flush=True,
    )
    return [ext]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    name="infer_fast",
    version=VERSION,
    description="Fast INFER dataset distillation (Inter-Class Feature Compensator) with fused CPU/CUDA kernels",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["infer_fast", "infer_fast.*"]),
    ext_modules=[] if os.environ.get("INFER_FAST_SKIP_EXT") == "1" else _extensions(),
    cmdclass=_cmdclass(),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["infer-fast=infer_fast.cli:main"]},
    zip_safe=False,
)
