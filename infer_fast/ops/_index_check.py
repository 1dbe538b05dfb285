"""Index values of device tensors checked on the host once per tensor, not once per call.

The CPU kernels check index ranges as they read them. On a GPU the same check costs a device->host copy and a
stream synchronisation per call (and cannot be captured in a CUDA graph), while the indices of a synthesis problem
never change. So the public functions check each index tensor the first time they see it (one copy), remember it
by identity and version counter (an in-place write bumps the version and brings a fresh check), and raise the
CPU kernel's own message. The CUDA kernels keep device asserts as a backstop for raw ``torch.ops`` calls.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

# id(tensor) -> (weak reference, stamps checked); the reference's callback drops the entry with the tensor.
_SEEN: dict[int, tuple[weakref.ref, set[tuple]]] = {}


def _forget(key: int) -> Callable[[weakref.ref], None]:
    return lambda _ref: _SEEN.pop(key, None)


def check_once(t: torch.Tensor, key: tuple, check: Callable[[torch.Tensor], None]) -> None:
    """``check(host copy of t)`` for a device tensor not yet checked for ``key`` in its current state.

    CPU tensors are skipped (the CPU kernels check them for free) and so is tracing under torch.compile.
    """
    if t.device.type == "cpu" or torch.compiler.is_compiling():
        return
    check_cached(t, key, check)


def check_cached(t: torch.Tensor, key: tuple, check: Callable[[torch.Tensor], None]) -> None:
    """Run ``check(t.cpu())`` unless ``t`` (same object, storage and version) already passed it for ``key``."""
    stamp = (t.data_ptr(), t._version, key)
    entry = _SEEN.get(id(t))
    if entry is not None and entry[0]() is not t:
        entry = None  # a dead tensor's id reused before its callback ran
    if entry is not None and stamp in entry[1]:
        return
    check(t.detach().cpu())
    if entry is None:
        entry = (weakref.ref(t, _forget(id(t))), set())
        _SEEN[id(t)] = entry
    entry[1].add(stamp)


def range_message(op: str, name: str, idx: torch.Tensor, lo: int, hi_excl: int) -> str | None:
    """``op: name values must lie in [lo, hi_excl - 1], got min .. and max ..`` when out of range, else None."""
    if idx.numel() == 0:
        return None
    mn, mx = (int(v) for v in idx.aminmax())
    if mn >= lo and mx < hi_excl:
        return None
    return f"{op}: {name} values must lie in [{lo}, {hi_excl - 1}], got min {mn} and max {mx}"


def first_out_of_range(idx: torch.Tensor, lo: int, hi_excl: int) -> tuple[int, int] | None:
    """(position, value) of the first entry of a host 1-D ``idx`` outside ``[lo, hi_excl)``, or None."""
    bad = ((idx < lo) | (idx >= hi_excl)).nonzero()
    if bad.numel() == 0:
        return None
    pos = int(bad[0, 0])
    return pos, int(idx[pos])
