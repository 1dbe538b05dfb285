"""Build infer_fast: the Python package plus the `infer_fast._C` extension (fused ops, CPU and CUDA).

Sources are globbed from csrc/, csrc/cpu/ and csrc/cuda/: a new kernel never touches this file.

Environment:
  INFER_FAST_CUDA=0|1        force the CPU-only or the CUDA build (default: CUDA when torch has CUDA and nvcc exists)
  TORCH_CUDA_ARCH_LIST       CUDA architectures (default without a visible GPU: DEFAULT_ARCH_LIST below)
  INFER_FAST_CPU_ARCH        -march for the CPU kernels (default x86-64-v3 on x86_64: AVX2+FMA; "native" for this host)
  MAX_JOBS                   parallel compile jobs (ninja)
  INFER_FAST_SKIP_EXT=1      package only (the Makefile builds _C in place first, then installs editable with this)

A build with the extension writes infer_fast/_build.py (what _C was compiled against: torch, CUDA, architectures,
CPU ISA) and versions the package 0.1.0+pt<torch>cu<cuda> (or +pt<torch>cpu), pinning that torch: compiled
PyTorch extensions are tied to the exact torch they were built with.
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
# SASS for A100 (8.0), H100/H200 (9.0), B200/GB200 (10.0, runs on 10.3 too) and RTX 50xx/RTX PRO (12.0, runs on 12.1),
# plus PTX of the newest for what comes after. nvcc 13 has no sm_70 and below.
DEFAULT_ARCH_LIST = "8.0;9.0;10.0;12.0+PTX"


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


def _torch_requirements() -> list[str]:
    """The torch this build is for, and the torchvision of that release (its minor is torch's + 15)."""
    import torch

    public = torch.__version__.split("+")[0]
    major, minor = (int(v) for v in public.split(".")[:2])
    return [f"torch=={public}", f"torchvision>=0.{minor + 15},<0.{minor + 16}" if major == 2 else "torchvision"]


def _local_version(use_cuda: bool) -> str:
    """0.1.0+pt2141cu130: the torch (and CUDA) that _C is compiled against, as the wheel's local version."""
    import torch

    tag = "pt" + "".join(torch.__version__.split("+")[0].split(".")[:3])
    tag += "cu" + torch.version.cuda.replace(".", "") if use_cuda else "cpu"
    return f"{VERSION}+{tag}"


def _dali_version() -> str | None:
    from importlib import metadata

    for name in ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            pass
    return None


def _write_build_info(use_cuda: bool, cpu_arch: str | None) -> None:
    """infer_fast/_build.py, read at import before _C is loaded (a torch mismatch is then a one-line error)."""
    import torch

    values = {
        "VERSION": _local_version(use_cuda),
        "TORCH_VERSION": torch.__version__,
        "CUDA_VERSION": torch.version.cuda if use_cuda else None,
        "CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST") if use_cuda else None,
        "CPU_ARCH": cpu_arch,
        "DALI": _dali_version(),
    }
    lines = ["# Written by setup.py when infer_fast._C is built: what it was compiled against. Not in git.\n"]
    lines += [f"{k} = {v!r}\n" for k, v in values.items()]
    path = os.path.join(ROOT, "infer_fast", "_build.py")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(path + ".tmp", path)


def _extensions():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    use_cuda, reason = _cuda_config()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))

    cxx = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=fast"]
    # glibc symbol versions no newer than manylinux_2_28's (see the header); nvcc gets it as --pre-include below
    compat = os.path.join(ROOT, "csrc", "compat", "manylinux_2_28.h")
    if platform.system() == "Linux":
        cxx += ["-include", compat]
    if platform.machine() in ("x86_64", "AMD64"):
        cpu_arch = os.environ.get("INFER_FAST_CPU_ARCH", "x86-64-v3")
        cxx.append(f"-march={cpu_arch}")
    else:
        cpu_arch = os.environ.get("INFER_FAST_CPU_ARCH")
        if cpu_arch:
            cxx.append(f"-mcpu={cpu_arch}")
    define_macros = [("INFER_FAST_VERSION", f'"{VERSION}"')]
    include_dirs = [os.path.join(ROOT, "csrc")]
    kwargs = dict(extra_link_args=["-fopenmp"])

    if use_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            # the visible GPUs' architectures, spelled out so that _build.py records them; none visible: the default
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" for a, b in caps) or DEFAULT_ARCH_LIST
        # torch's CUDA headers (CUDAContext.h -> cublas etc.) live in the pip nvidia wheels
        try:
            import nvidia

            for base in nvidia.__path__:
                include_dirs.extend(sorted(glob.glob(os.path.join(base, "cu[0-9]*", "include"))))
        except ImportError:
            pass
        define_macros.append(("INFER_FAST_WITH_CUDA", "1"))
        # No --use_fast_math: it made s/std, log and 1/sqrt approximate, so CUDA disagreed with the CPU on pixels that
        # sit exactly on the clamp bounds. Intrinsics are spelled out where wanted (__expf in mixed_soft_xent.cu).
        nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
        if platform.system() == "Linux":
            nvcc += ["--pre-include", compat]
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
        f"  torch       : {torch.__version__}\n"
        f"  version     : {_local_version(use_cuda)}",
        flush=True,
    )
    _write_build_info(use_cuda, cpu_arch)
    return [ext], _local_version(use_cuda)


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


if os.environ.get("INFER_FAST_SKIP_EXT") == "1":
    EXT_MODULES, FULL_VERSION = [], VERSION
else:
    EXT_MODULES, FULL_VERSION = _extensions()

setup(
    name="infer_fast",
    version=FULL_VERSION,
    description="Fast INFER dataset distillation (Inter-Class Feature Compensator) with fused CPU/CUDA kernels",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["infer_fast", "infer_fast.*"]),
    package_data={"infer_fast.models": ["imagenet1k_wnids.txt"]},  # the 1,000 ImageNet-1k class ids (a fact)
    ext_modules=EXT_MODULES,
    cmdclass=_cmdclass(),
    install_requires=_torch_requirements() + INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["infer-fast=infer_fast.cli:main"]},
    zip_safe=False,
)
