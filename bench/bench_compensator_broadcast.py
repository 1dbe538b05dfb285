"""Benchmark compensator_broadcast: eager reference vs torch.compile(reference) vs infer_fast, one run.

    python bench/bench_compensator_broadcast.py [--quick] [--json PATH]

Shapes: ImageNet-size batches composed from 100 uint8 naturals and 10 fp32 UFCs (100 and 1000 images of
3x224x224), the CIFAR synthesis batch (10 naturals x 9 UFCs = 90 images of 3x32x32) and a Tiny-ImageNet-like
synthesis batch (200 naturals x 2 UFCs = 400 images of 3x32x32: few UFCs with many images each, the case the CUDA
backward splits into runs); --quick: the two synthesis batches and 32 images of 3x224x224 (32 naturals, 4 UFCs).
"""

from __future__ import annotations

import torch
import torch._functorch.config
from common import Case, run_cases_main

import infer_fast.ops.compensator_broadcast as cb_op
from infer_fast import reference
from infer_fast.runtime import IMAGENET_MEAN, IMAGENET_STD

# The harness's `backward` mode re-runs one graph with retain_graph=True, which compiled backwards with donated
# buffers refuse; donation only saves a buffer allocation, so turn it off for the compiled baseline.
torch._functorch.config.donated_buffer = False


def _inputs(n_base: int, n_ufc: int, batch: int, size: int, device: str):
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (n_base, 3, size, size), dtype=torch.uint8, generator=g)
    ufc = (0.1 * torch.randn(n_ufc, 3, size, size, generator=g)).requires_grad_()
    if batch == n_base * n_ufc:  # synthesis: every natural with every UFC
        base_index = torch.arange(n_base).repeat(n_ufc)
        ufc_index = torch.arange(n_ufc).repeat_interleave(n_base)
    else:  # student training: random composition
        base_index = torch.randint(0, n_base, (batch,), generator=g)
        ufc_index = torch.randint(0, n_ufc, (batch,), generator=g)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    lo, hi = -mean / std, (1 - mean) / std
    tensors = [base, ufc.detach(), base_index, ufc_index, mean, std, lo, hi]
    tensors = [t.to(device) for t in tensors]
    tensors[1].requires_grad_()
    return tensors


def cases(quick: bool, device: str) -> list[Case]:
    # (naturals, UFCs, batch, size); --quick keeps the synthesis batches and a small 224 batch (time budget)
    if quick:
        shapes = [(10, 9, 90, 32), (200, 2, 400, 32), (32, 4, 32, 224)]
    else:
        shapes = [(10, 9, 90, 32), (200, 2, 400, 32), (100, 10, 100, 224), (100, 10, 1000, 224)]
    compiled = torch.compile(reference.compensator_broadcast)
    out = []
    for n_base, n_ufc, batch, size in shapes:
        inputs = _inputs(n_base, n_ufc, batch, size, device)
        px = batch * 3 * size * size
        upx = n_ufc * 3 * size * size
        nbytes = {
            "forward": px * 1 + upx * 4 + px * 4,  # read base (uint8) + ufc, write out
            "backward": px * 4 + px * 1 + upx * 4 + upx * 4,  # read grad_out + base + ufc, write grad_ufc
        }
        nbytes["full"] = nbytes["forward"] + nbytes["backward"]
        out.append(
            Case(
                op="compensator_broadcast",
                shape=f"B={batch} 3x{size}x{size} Nb={n_base} U={n_ufc}",
                providers={
                    "eager": reference.compensator_broadcast,
                    "compile": compiled,
                    "infer_fast": cb_op.compensator_broadcast,
                },
                inputs=inputs,
                grad_inputs=[inputs[1]],
                nbytes=nbytes,
            )
        )
    return out


if __name__ == "__main__":
    run_cases_main([cases], __doc__.strip().splitlines()[0])
