"""Benchmark every fused op against the eager reference and torch.compile of the reference, in one run.

    python bench/bench_ops.py [--quick] [--json PATH] [--device cuda] [pytest-benchmark options]

The op suite (bench/suites, pytest-benchmark) with the flags this script always took; the shapes live in
bench/bench_<op>.py. The same as `pytest bench/suites --benchmark-only [--bench-size quick]`.
"""

from __future__ import annotations

import sys

from common import run_suite_main

if __name__ == "__main__":
    sys.exit(run_suite_main(__doc__.strip().splitlines()[0]))
