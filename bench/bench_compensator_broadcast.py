"""compensator_broadcast cases for the op suite (bench/suites): eager reference, torch.compile of it, infer_fast.

    python bench/bench_compensator_broadcast.py [--quick] [--json PATH] [pytest-benchmark options]

Shapes: ImageNet-size batches composed from 100 uint8 naturals and 10 fp32 UFCs (100 and 1000 images of
3x224x224), the CIFAR synthesis batch (10 naturals x 9 UFCs = 90 images of 3x32x32) and a Tiny-ImageNet-like
synthesis batch (200 naturals x 2 UFCs = 400 images of 3x32x32: few UFCs with many images each, the case the CUDA
backward splits into runs); quick: the two synthesis batches and 32 images of 3x224x224 (32 naturals, 4 UFCs);
tiny (test-only): the same compositions at 5x5 and 9x9 pixels.
"""

from __future__ import annotations

import sys

import torch
from common import Case, run_suite_main

import infer_fast.ops.compensator_broadcast as cb_op
from infer_fast import reference
from infer_fast.runtime import IMAGENET_MEAN, IMAGENET_STD

OP = "compensator_broadcast"
# (naturals, UFCs, batch, size) per suite size; batch == naturals x UFCs: synthesis (every natural with every UFC)
SHAPES = {
    "full": [(10, 9, 90, 32), (200, 2, 400, 32), (100, 10, 100, 224), (100, 10, 1000, 224)],
    "quick": [(10, 9, 90, 32), (200, 2, 400, 32), (32, 4, 32, 224)],
    "tiny": [(3, 2, 6, 5), (8, 2, 16, 5), (4, 3, 4, 9), (4, 3, 12, 9)],
}


def shape_id(spec) -> str:
    n_base, n_ufc, batch, size = spec
    return f"B{batch}_3x{size}x{size}_Nb{n_base}_U{n_ufc}"


def _inputs(n_base: int, n_ufc: int, batch: int, size: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (n_base, 3, size, size), dtype=torch.uint8, generator=g)
    ufc = 0.1 * torch.randn(n_ufc, 3, size, size, generator=g)
    if batch == n_base * n_ufc:  # synthesis: every natural with every UFC
        base_index = torch.arange(n_base).repeat(n_ufc)
        ufc_index = torch.arange(n_ufc).repeat_interleave(n_base)
    else:  # student training: random composition
        base_index = torch.randint(0, n_base, (batch,), generator=g)
        ufc_index = torch.randint(0, n_ufc, (batch,), generator=g)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    lo, hi = -mean / std, (1 - mean) / std
    tensors = [t.to(device) for t in (base, ufc, base_index, ufc_index, mean, std, lo, hi)]
    tensors[1].requires_grad_()
    return tensors


def case(spec, device: str) -> Case:
    n_base, n_ufc, batch, size = spec
    inputs = _inputs(n_base, n_ufc, batch, size, device)
    px = batch * 3 * size * size
    upx = n_ufc * 3 * size * size
    fwd = px * 1 + upx * 4 + px * 4  # read base (uint8) + ufc, write out
    bwd = px * 4 + px * 1 + upx * 4 + upx * 4  # read grad_out + base + ufc, write grad_ufc
    return Case(
        op=OP,
        shape=shape_id(spec),
        providers={
            "eager": reference.compensator_broadcast,
            "compile": torch.compile(reference.compensator_broadcast),
            "infer_fast": cb_op.compensator_broadcast,
        },
        inputs=inputs,
        grad_inputs=[inputs[1]],
        nbytes={"forward": fwd, "full": fwd + bwd},
        # A composed pixel exactly on a clamp bound (about 1 in 10^7 of them at 224 px) gets half its gradient from
        # torch.clamp with tensor bounds and none from the kernel; cases under 10^6 pixels allow no difference.
        grad_ties=px // 1_000_000,
    )


if __name__ == "__main__":
    sys.exit(run_suite_main(__doc__.strip().splitlines()[0], ops=[OP]))
