"""mixed_soft_xent cases for the op suite (bench/suites): eager reference, torch.compile of it, infer_fast.

    python bench/bench_mixed_soft_xent.py [--quick] [--json PATH] [pytest-benchmark options]

Shapes: student logits 256x1000 (ImageNet), 64x10 and 256x100 (CIFAR) against mixed soft teacher targets
(permutation, lam=0.7, T=30 as in the research code), and 256x1000 against mixed hard labels; quick: the first;
tiny (test-only): the same four at a few rows and classes.
"""

from __future__ import annotations

import sys

import torch
from common import Case, run_suite_main

from infer_fast import reference
from infer_fast.ops.mixed_soft_xent import mixed_soft_xent

OP = "mixed_soft_xent"
LAM, TEMPERATURE = 0.7, 30.0
# (batch, classes, hard labels) per suite size
SHAPES = {
    "full": [(256, 1000, False), (64, 10, False), (256, 100, False), (256, 1000, True)],
    "quick": [(256, 1000, False)],  # each shape costs torch.compile a recompilation
    "tiny": [(8, 13, False), (4, 3, False), (8, 7, False), (8, 13, True)],
}


def shape_id(spec) -> str:
    b, k, hard = spec
    return f"{b}x{k}_{'hard' if hard else 'soft'}"


def case(spec, device: str) -> Case:
    b, k, hard = spec
    logits = (torch.randn(b, k, device=device) * 4).requires_grad_()
    target = torch.randint(0, k, (b,), device=device) if hard else torch.randn(b, k, device=device) * 4
    perm = torch.randperm(b, device=device)
    z_bytes = logits.numel() * logits.element_size()
    # forward reads z and y (y[perm] rereads rows of the same tensor: counted once) and writes dL/dz;
    # the backward reads dL/dz and writes the scaled copy.
    fwd = 2 * z_bytes + target.numel() * target.element_size()
    compiled = torch.compile(reference.mixed_soft_xent)
    return Case(
        op=OP,
        shape=shape_id(spec),
        providers={
            "eager": lambda z, y, p: reference.mixed_soft_xent(z, y, p, LAM, TEMPERATURE),
            "compile": lambda z, y, p: compiled(z, y, p, LAM, TEMPERATURE),
            "infer_fast": lambda z, y, p: mixed_soft_xent(z, y, p, LAM, TEMPERATURE),
        },
        inputs=(logits, target, perm),
        grad_inputs=(logits,),
        nbytes={"forward": fwd, "full": fwd + 2 * z_bytes},
    )


if __name__ == "__main__":
    sys.exit(run_suite_main(__doc__.strip().splitlines()[0], ops=[OP]))
