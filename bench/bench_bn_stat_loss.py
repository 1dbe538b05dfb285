"""Benchmark bn_stat_loss: eager reference vs torch.compile(reference) vs infer_fast, at ResNet-18 BN inputs.

    python bench/bench_bn_stat_loss.py [--quick] [--json PATH]

Shapes: CIFAR (32x32 input, 9 groups of 10 classes = batch 90) at the three feature-map sizes, and ImageNet
56x56 (batch 100) with 1 and 4 groups; one channels_last case. The loss summed over groups is differentiated
w.r.t. x. Bytes: forward reads x; backward reads x and writes dx; full does both.
"""

from __future__ import annotations

import torch
import torch._dynamo.config
import torch._functorch.config
from common import Case, run_cases_main

from infer_fast import reference
from infer_fast.ops.bn_stat_loss import bn_stat_loss

# The harness times backward alone over a graph kept with retain_graph=True, which compiled backwards with donated
# buffers refuse.
torch._functorch.config.donated_buffer = False
# Every case compiles the same `eager` code object (per shape, grad mode and thread count): keep dynamo from
# falling back to eager after its default 8 recompiles, which would make the compile baseline meaningless.
torch._dynamo.config.recompile_limit = 64

# (shape, groups, channels_last)
FULL = [
    ((90, 64, 32, 32), 9, False),
    ((90, 64, 32, 32), 9, True),
    ((90, 128, 16, 16), 9, False),
    ((90, 512, 4, 4), 9, False),
    ((100, 64, 56, 56), 1, False),
    ((100, 64, 56, 56), 4, False),
]
QUICK = [((90, 64, 32, 32), 9, False), ((90, 512, 4, 4), 9, False)]


def _case(shape: tuple[int, ...], groups: int, channels_last: bool, device: str) -> Case:
    c = shape[1]
    x = torch.randn(shape, device=device) * 1.5 + 0.3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    rm = torch.randn(c, device=device) * 0.1
    rv = torch.rand(c, device=device) + 0.5

    def eager(x, rm, rv):
        return reference.bn_stat_loss(x, rm, rv, groups)[0]

    compiled = torch.compile(eager)

    def fused(x, rm, rv):
        return bn_stat_loss(x, rm, rv, groups)[0]

    nb = x.numel() * x.element_size()
    name = "x".join(map(str, shape)) + f" g{groups}" + (" cl" if channels_last else "")
    return Case(
        op="bn_stat_loss",
        shape=name,
        providers={"eager": eager, "compile": compiled, "infer_fast": fused},
        inputs=(x, rm, rv),
        grad_inputs=(x,),
        nbytes={"forward": nb, "backward": 2 * nb, "full": 3 * nb},
    )


def cases(quick: bool, device: str) -> list[Case]:
    return [_case(s, g, cl, device) for s, g, cl in (QUICK if quick else FULL)]


if __name__ == "__main__":
    run_cases_main([cases], __doc__.strip().splitlines()[0])
