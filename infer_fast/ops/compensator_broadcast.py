"""Compose a batch from stored natural images and UFCs in one pass: ``infer_fast.ops.compensator_broadcast``.

``out[i] = clamp((base[base_index[i]] * s - mean) / std + ufc[ufc_index[i]], lo, hi)`` per channel, with
``s = 1/255`` for a uint8 ``base`` and 1 for a floating one; ``ufc_index[i] == -1`` composes the natural image
alone (still normalised and clamped). The gradient flows to ``ufc`` only: for each UFC the sum, over the images
composed with it, of ``grad_out`` masked by the inclusive clamp mask (``lo <= pre <= hi``, as torch.clamp).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from infer_fast import _C  # noqa: F401  (registers torch.ops.infer_fast.*)
from infer_fast.ops._autograd import block_double_backward
from infer_fast.ops._index_check import check_once, range_message

__all__ = ["compensator_broadcast"]

_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _channels(v: torch.Tensor | Sequence[float], like: torch.Tensor) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    return torch.tensor(v, dtype=torch.float64 if like.dtype == torch.float64 else torch.float32, device=like.device)


def compensator_broadcast(
    base: torch.Tensor,
    ufc: torch.Tensor,
    base_index: torch.Tensor,
    ufc_index: torch.Tensor,
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
    lo: torch.Tensor | Sequence[float],
    hi: torch.Tensor | Sequence[float],
) -> torch.Tensor:
    """Compose ``B`` images ``clamp(normalise(base[base_index[i]]) + ufc[ufc_index[i]], lo, hi)`` in one pass.

    Args:
        base: ``[Nb, C, H, W]`` uint8 (scaled by 1/255) or float16/bfloat16/float32/float64 natural images.
            Treated as data: no gradient flows to it.
        ufc: ``[U, C, H, W]`` float16/bfloat16/float32/float64 compensators (the parameters; ``U`` may be 0).
        base_index: ``[B]`` int64 in ``[0, Nb)``.
        ufc_index: ``[B]`` int64 in ``[-1, U)``; -1 adds no compensator.
        mean, std, lo, hi: ``[C]`` floating tensors (or sequences of floats) of the normalisation and clamp.

    Returns:
        ``[B, C, H, W]`` in ufc's dtype, channels_last when ``ufc`` is channels_last, contiguous otherwise.
        Math in float32 (float64 for float64 ufc). A base stored in the other memory format is gathered to the
        ``B`` images used, not converted whole.

    On a GPU the index values are checked on the host the first time each index tensor is seen (one copy), then
    never again while it is unchanged: reuse the same index tensors across iterations and no call synchronises.
    """
    _check_index_values(base_index, "base_index", 0, base.shape[0])
    _check_index_values(ufc_index, "ufc_index", -1, ufc.shape[0])
    return torch.ops.infer_fast.compensator_broadcast.default(
        base,
        ufc,
        base_index,
        ufc_index,
        _channels(mean, ufc),
        _channels(std, ufc),
        _channels(lo, ufc),
        _channels(hi, ufc),
    )


def _check_index_values(idx: torch.Tensor, name: str, lo: int, hi_excl: int) -> None:
    def check(host: torch.Tensor) -> None:
        msg = range_message("compensator_broadcast", name, host, lo, hi_excl)
        if msg:
            raise RuntimeError(msg)

    if isinstance(idx, torch.Tensor) and idx.dim() == 1 and idx.dtype == torch.int64:  # else the op's check speaks
        check_once(idx, ("compensator_broadcast", lo, hi_excl), check)


def _out_format(ufc: torch.Tensor) -> torch.memory_format:
    # mirrors output_format() in csrc/compensator_broadcast.h
    if not ufc.is_contiguous() and ufc.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _check_meta(base, ufc, base_index, ufc_index, mean, std, lo, hi) -> None:
    torch._check(base.dim() == 4, lambda: f"compensator_broadcast: base must be [Nb, C, H, W], got {base.dim()}-D")
    torch._check(ufc.dim() == 4, lambda: f"compensator_broadcast: ufc must be [U, C, H, W], got {ufc.dim()}-D")
    torch._check(
        base.dtype == torch.uint8 or base.dtype in _FLOAT,
        lambda: f"compensator_broadcast: base must be uint8 or floating, got {base.dtype}",
    )
    torch._check(ufc.dtype in _FLOAT, lambda: f"compensator_broadcast: ufc must be floating, got {ufc.dtype}")
    torch._check(
        base.shape[1:] == ufc.shape[1:],
        lambda: (
            f"compensator_broadcast: base and ufc must share [C, H, W], got {tuple(base.shape)} and {tuple(ufc.shape)}"
        ),
    )
    for name, t in (("base_index", base_index), ("ufc_index", ufc_index)):
        torch._check(
            t.dim() == 1 and t.dtype == torch.int64,
            lambda name=name, t=t: f"compensator_broadcast: {name} must be 1-D int64, got {t.dim()}-D {t.dtype}",
        )
    torch._check(
        base_index.shape[0] == ufc_index.shape[0],
        lambda: "compensator_broadcast: base_index and ufc_index must have the same length",
    )
    for name, t in (("mean", mean), ("std", std), ("lo", lo), ("hi", hi)):
        torch._check(
            t.dim() == 1 and t.shape[0] == ufc.shape[1],
            lambda name=name, t=t: f"compensator_broadcast: {name} must be [C], got {tuple(t.shape)}",
        )


@torch.library.register_fake("infer_fast::compensator_broadcast")
def _compensator_broadcast_fake(base, ufc, base_index, ufc_index, mean, std, lo, hi):
    _check_meta(base, ufc, base_index, ufc_index, mean, std, lo, hi)
    shape = (base_index.shape[0], ufc.shape[1], ufc.shape[2], ufc.shape[3])
    return torch.empty(shape, dtype=ufc.dtype, device=ufc.device, memory_format=_out_format(ufc))


@torch.library.register_fake("infer_fast::_compensator_broadcast_backward")
def _compensator_broadcast_backward_fake(grad_out, base, ufc, base_index, ufc_index, mean, std, lo, hi):
    _check_meta(base, ufc, base_index, ufc_index, mean, std, lo, hi)
    return torch.empty(ufc.shape, dtype=ufc.dtype, device=ufc.device, memory_format=_out_format(ufc))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_out):
    base, ufc, base_index, ufc_index, mean, std, lo, hi = ctx.saved_tensors
    grad_ufc = None
    if ctx.needs_input_grad[1]:
        grad_ufc = torch.ops.infer_fast._compensator_broadcast_backward.default(
            grad_out, base, ufc, base_index, ufc_index, mean, std, lo, hi
        )
    return None, grad_ufc, None, None, None, None, None, None


torch.library.register_autograd("infer_fast::compensator_broadcast", _backward, setup_context=_setup_context)


block_double_backward("infer_fast::_compensator_broadcast_backward", "compensator_broadcast")
