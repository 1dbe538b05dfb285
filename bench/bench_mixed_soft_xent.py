"""Benchmark mixed_soft_xent (fused mixup distillation loss) against the eager reference and torch.compile of it.

    python bench/bench_mixed_soft_xent.py [--quick] [--json PATH]

Shapes: student logits 256x1000 (ImageNet), 64x10 and 256x100 (CIFAR) against mixed soft teacher targets
(permutation, lam=0.7, T=30 as in the research code), and 256x1000 against mixed hard labels.
"""

from __future__ import annotations

import torch
import torch._functorch.config
from common import Case, run_cases_main

from infer_fast import reference
from infer_fast.ops.mixed_soft_xent import mixed_soft_xent

LAM, TEMPERATURE = 0.7, 30.0


def _case(b: int, k: int, hard: bool, device: str, compiled) -> Case:
    logits = (torch.randn(b, k, device=device) * 4).requires_grad_()
    target = torch.randint(0, k, (b,), device=device) if hard else torch.randn(b, k, device=device) * 4
    perm = torch.randperm(b, device=device)
    z_bytes = logits.numel() * logits.element_size()
    # forward reads z and y (y[perm] rereads rows of the same tensor: counted once) and writes dL/dz;
    # backward reads dL/dz and writes the scaled copy.
    fwd = 2 * z_bytes + target.numel() * target.element_size()
    bwd = 2 * z_bytes
    return Case(
        op="mixed_soft_xent",
        shape=f"{b}x{k} {'hard' if hard else 'soft'} lam={LAM} T={TEMPERATURE:g}",
        providers={
            "eager": lambda z, y, p: reference.mixed_soft_xent(z, y, p, LAM, TEMPERATURE),
            "compile": lambda z, y, p: compiled(z, y, p, LAM, TEMPERATURE),
            "infer_fast": lambda z, y, p: mixed_soft_xent(z, y, p, LAM, TEMPERATURE),
        },
        inputs=(logits, target, perm),
        grad_inputs=(logits,),
        nbytes={"forward": fwd, "backward": bwd, "full": fwd + bwd},
    )


def cases(quick: bool, device: str) -> list[Case]:
    # The harness's backward mode reuses one graph (retain_graph=True), which compiled graphs with donated
    # buffers refuse; donation only saves an allocation in the compiled backward.
    torch._functorch.config.donated_buffer = False
    compiled = torch.compile(reference.mixed_soft_xent)
    shapes = [(256, 1000, False)]  # --quick: one shape (each shape costs torch.compile a recompilation)
    if not quick:
        shapes += [(64, 10, False), (256, 100, False), (256, 1000, True)]
    return [_case(b, k, hard, device, compiled) for b, k, hard in shapes]


if __name__ == "__main__":
    run_cases_main([cases], __doc__.strip().splitlines()[0])
