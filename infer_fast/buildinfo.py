"""What infer_fast._C was built against and what this process runs with: ``infer-fast info``, and the torch check
made at import (a compiled extension only loads under the exact torch it was built with).

The build side comes from ``infer_fast/_build.py``, which setup.py writes next to the extension; it is read without
loading the extension. A checkout whose extension was built another way (CMake) has no such file: nothing to check.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import torch


def recorded_build() -> ModuleType | None:
    """The ``infer_fast._build`` module written by setup.py, or None when this build did not write one."""
    try:
        return importlib.import_module("infer_fast._build")
    except ImportError:
        return None


def torch_mismatch(built: str, running: str) -> str | None:
    """The one-line import error when the build's torch is not the running one, else None."""
    if built == running:
        return None
    return (
        f"infer_fast was built against torch {built} but torch {running} is installed; install the infer_fast wheel "
        f"built for torch {running} or rebuild it (pip install -e . --no-build-isolation)"
    )


def _cc(arch: str) -> tuple[int, int, bool]:
    """'9.0' -> (9, 0, False); '12.0+PTX' -> (12, 0, True)."""
    ptx = arch.endswith("+PTX")
    major, minor = arch.removesuffix("+PTX").split(".")
    return int(major), int(minor.rstrip("af")), ptx


def kernels_for(capability: tuple[int, int], arch_list: str | None) -> str:
    """Whether a build for ``arch_list`` (TORCH_CUDA_ARCH_LIST syntax) has kernels for a GPU of ``capability``.

    SASS for X.Y runs on X.Z with Z >= Y (same major); PTX for X.Y is compiled by the driver for any later GPU.
    """
    if not arch_list:
        return "no (CPU-only build)"
    archs = [_cc(a) for a in arch_list.replace(" ", ";").split(";") if a]
    major, minor = capability
    if any(a == major and b <= minor for a, b, _ in archs):
        return "yes (SASS)"
    if any((a, b) <= (major, minor) for a, b, ptx in archs if ptx):
        return "yes (PTX, JIT-compiled by the driver at first use)"
    return f"NO: built for {arch_list}, this GPU is {major}.{minor} ('no kernel image' at the first launch)"


def build_side() -> dict[str, object]:
    b = recorded_build()
    if b is None:
        return {"recorded": "no infer_fast/_build.py (extension not built by setup.py)"}
    return {
        "infer_fast": b.VERSION,
        "torch": b.TORCH_VERSION,
        "CUDA": b.CUDA_VERSION or "none (CPU-only build)",
        "CUDA architectures": b.CUDA_ARCH_LIST or "-",
        "CPU ISA (-march)": b.CPU_ARCH or "compiler default",
        "DALI at build time": b.DALI or "not installed",
    }


def _probe(device: int) -> str:
    """Run one tiny fused op on the GPU: the certain answer to 'are there kernels for it'."""
    from infer_fast.ops.compensator_broadcast import compensator_broadcast

    dev = torch.device("cuda", device)
    try:
        idx = torch.zeros(1, dtype=torch.long, device=dev)
        one = torch.ones(1, device=dev)
        out = compensator_broadcast(
            torch.zeros(1, 1, 2, 2, device=dev), torch.ones(1, 1, 2, 2, device=dev), idx, idx, 0 * one, one, -one, one
        )
        return "kernel launch ok" if out.sum().item() == 4.0 else "kernel launch gave a WRONG result"
    except RuntimeError as exc:
        return f"kernel launch FAILED: {str(exc).splitlines()[0]}"


def runtime_side() -> dict[str, object]:
    import infer_fast

    b = recorded_build()
    out: dict[str, object] = {"torch": torch.__version__, "torch CUDA": torch.version.cuda or "none"}
    out["CUDA kernels in _C"] = infer_fast.cuda_enabled()
    gpus = []
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        cap = torch.cuda.get_device_capability(i)
        line = f"{i}: {torch.cuda.get_device_name(i)} (compute {cap[0]}.{cap[1]}), kernels: "
        line += kernels_for(cap, b.CUDA_ARCH_LIST) if b is not None else "unknown (no _build.py)"
        if infer_fast.cuda_enabled():
            line += f"; {_probe(i)}"
        gpus.append(line)
    out["GPUs"] = gpus or "none visible"
    out["DALI"] = "importable" if _dali_importable() else "not importable"
    return out


def _dali_importable() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


def format_info() -> str:
    lines = []
    for title, side in (("build", build_side()), ("runtime", runtime_side())):
        lines.append(f"{title}:")
        for k, v in side.items():
            if isinstance(v, list):
                lines.append(f"  {k}:")
                lines.extend(f"    {g}" for g in v)
            else:
                lines.append(f"  {k}: {v}")
    return "\n".join(lines)
