"""Benchmark every fused op against the eager reference and torch.compile of the reference, in one run.

    python bench/bench_ops.py [--quick] [--json PATH]

Per op the shapes live in bench/bench_<op>.py (each runnable alone); this script runs them all.
"""

from __future__ import annotations

import bench_bn_stat_loss
import bench_compensator_broadcast
import bench_mixed_soft_xent
from common import run_cases_main

if __name__ == "__main__":
    run_cases_main(
        [bench_bn_stat_loss.cases, bench_compensator_broadcast.cases, bench_mixed_soft_xent.cases],
        __doc__.strip().splitlines()[0],
    )
