"""The op suite's options and reports (pytest-benchmark; the suite itself, timer settings included, is test_ops.py).

Options: ``--bench-size full|quick|tiny`` (default full; tiny, the test-only mode, when ``--benchmark-disable``),
``--bench-providers`` (the gate times infer_fast only), ``--bench-device``, ``--bench-threads`` and
``--bench-json PATH`` (the figures as bench/common.py records). After pytest-benchmark's own tables the session
prints one markdown table: p50 per op, shape, mode and provider, GB/s against the memcpy of the same bytes, and
infer_fast's speed-up over eager, over torch.compile and over the better of the two, all measured in this session.
Saved JSON (``--benchmark-save``, ``--benchmark-json``) carries the same derived figures in each benchmark's
``extra_info``.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.config
from common import OPS_COLUMNS, markdown_table, suite_records, write_json

# Every shape of an op recompiles the same reference code object (per grad mode): past dynamo's default limit of 8
# it silently falls back to eager, and the compile baseline would time eager.
torch._dynamo.config.recompile_limit = 64

def pytest_addoption(parser):
    g = parser.getgroup("infer_fast op suite")
    g.addoption("--bench-size", choices=("full", "quick", "tiny"), default=None,
                help="full (default), quick, or tiny (test-only mode; the default with --benchmark-disable)")
    g.addoption("--bench-providers", default=None, metavar="A,B",
                help="only these providers (eager, compile, infer_fast, memcpy; default: all)")
    g.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda when a GPU is visible)")
    g.addoption("--bench-threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    g.addoption("--bench-json", metavar="PATH", default=None,
                help="also write every figure as a record of bench/common.py's schema (a JSON list)")


def pytest_configure(config):
    if config.getoption("bench_threads"):
        torch.set_num_threads(config.getoption("bench_threads"))


def suite_size(config) -> str:
    return config.getoption("bench_size") or ("tiny" if config.getoption("benchmark_disable") else "full")


def suite_device(config) -> str:
    return config.getoption("bench_device") or ("cuda" if torch.cuda.is_available() else "cpu")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Saved runs carry the derived figures too (p20/p80, GB/s, speed-ups), in each benchmark's extra_info."""
    derived = {(r["kernel"], r["x_value"], r["mode"], r["provider"]): r for r in suite_records(benchmarks)}
    for b in output_json["benchmarks"]:
        info = b["extra_info"]
        r = derived.get((info.get("kernel"), info.get("shape"), info.get("mode"), info.get("provider")))
        if r:
            info.update({k: r.get(k) for k in ("p20", "p50", "p80", "samples", "spread", "gb_per_s",
                                               "memcpy_gb_per_s", "speedup_vs_eager", "speedup_vs_compile",
                                               "speedup_vs_best") if k in r})


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    rows = suite_records(session.benchmarks) if session is not None else []
    if rows:
        r0 = rows[0]
        terminalreporter.write_line("")
        terminalreporter.write_line(f"device={r0['device']} threads={r0['threads']} torch={r0['torch_version']} "
                                    f"commit={r0['commit']} (ms per call; speed-ups of infer_fast, same session)")
        terminalreporter.write_line(markdown_table(rows, OPS_COLUMNS))
    write_json(config.getoption("bench_json"), rows)
