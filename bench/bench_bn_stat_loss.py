"""bn_stat_loss cases for the op suite (bench/suites): eager reference, torch.compile of it, infer_fast.

    python bench/bench_bn_stat_loss.py [--quick] [--json PATH] [pytest-benchmark options]

Shapes: CIFAR (32x32 input, 9 groups of 10 classes = batch 90) at the three feature-map sizes, and ImageNet
56x56 (batch 100) with 1 and 4 groups; one channels_last case. The loss summed over groups is differentiated
w.r.t. x. Bytes: forward reads x; full reads x twice and writes dx. The test-only size ("tiny") keeps every case's
groups and layout at a few elements (3x3 and 7x7 planes: not whole vectors).
"""

from __future__ import annotations

import sys

import torch
from common import Case, run_suite_main

from infer_fast import reference
from infer_fast.ops.bn_stat_loss import bn_stat_loss

OP = "bn_stat_loss"
# (shape, groups, channels_last) per suite size
SHAPES = {
    "full": [
        ((90, 64, 32, 32), 9, False),
        ((90, 64, 32, 32), 9, True),
        ((90, 128, 16, 16), 9, False),
        ((90, 512, 4, 4), 9, False),
        ((100, 64, 56, 56), 1, False),
        ((100, 64, 56, 56), 4, False),
    ],
    "quick": [((90, 64, 32, 32), 9, False), ((90, 512, 4, 4), 9, False)],
    "tiny": [
        ((18, 5, 4, 4), 9, False),
        ((18, 5, 4, 4), 9, True),
        ((18, 6, 3, 3), 9, False),
        ((18, 8, 2, 2), 9, False),
        ((4, 5, 7, 7), 1, False),
        ((8, 5, 7, 7), 4, False),
    ],
}


def shape_id(spec) -> str:
    shape, groups, channels_last = spec
    return "x".join(map(str, shape)) + f"_g{groups}" + ("_cl" if channels_last else "")


def case(spec, device: str) -> Case:
    shape, groups, channels_last = spec
    c = shape[1]
    x = torch.randn(shape, device=device) * 1.5 + 0.3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    rm = torch.randn(c, device=device) * 0.1
    rv = torch.rand(c, device=device) + 0.5

    def eager(x, rm, rv):
        return reference.bn_stat_loss(x, rm, rv, groups)[0]

    def fused(x, rm, rv):
        return bn_stat_loss(x, rm, rv, groups)[0]

    nb = x.numel() * x.element_size()
    return Case(
        op=OP,
        shape=shape_id(spec),
        providers={"eager": eager, "compile": torch.compile(eager), "infer_fast": fused},
        inputs=(x, rm, rv),
        grad_inputs=(x,),
        nbytes={"forward": nb, "full": 3 * nb},
    )


if __name__ == "__main__":
    sys.exit(run_suite_main(__doc__.strip().splitlines()[0], ops=[OP]))
