"""infer_fast: INFER dataset distillation with fused CPU/CUDA kernels.

Importing the package loads the compiled extension, which registers the ops under
``torch.ops.infer_fast``; the typed Python entry points live in :mod:`infer_fast.ops`.
"""

from __future__ import annotations

import torch  # noqa: F401  (libtorch must be loaded before the extension)

__version__ = "0.1.0"


def _check_build_torch() -> None:
    from infer_fast.buildinfo import recorded_build, torch_mismatch

    build = recorded_build()
    msg = build and torch_mismatch(build.TORCH_VERSION, torch.__version__)
    if msg:
        raise ImportError(msg)


_check_build_torch()

try:
    from infer_fast import _C
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "infer_fast: the compiled extension infer_fast._C could not be imported "
        f"({exc}). Build it with `pip install -e . --no-build-isolation` (or `python setup.py build_ext --inplace`) "
        "in the project root, with the same torch version that is installed now."
    ) from exc

from infer_fast import ops  # noqa: E402


def cuda_enabled() -> bool:
    """True when this build of the extension contains the CUDA kernels."""
    return bool(_C.cuda_enabled())


__all__ = ["__version__", "cuda_enabled", "ops"]
