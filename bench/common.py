"""Shared benchmark helpers: the sampling rule, the one record shape, the op cases' forward/full closures, tables.

Benches run from the project root as ``python bench/<name>.py``. Python puts the script's own folder first on
``sys.path``, so the scripts share these helpers with ``from common import ...`` and import the installed package as
usual; pytest sees the same folder through ``pythonpath`` in pyproject.toml.

Every figure a bench reports is one ``record()``: STYLE's fixed schema (``SCHEMA``) plus the bench's own fields,
written as a JSON list with ``--json PATH``. The fused ops are timed by the pytest-benchmark suite in bench/suites
(cases defined in bench/bench_<op>.py; bench_ops.py and the per-op scripts run it through ``run_suite_main``), at
least ``MIN_SAMPLES`` rounds per figure. Other timed micro-figures go through ``time_fn``, which takes at least
``MIN_SAMPLES`` samples and ``MIN_SECONDS`` of measurement, whichever is more; end-to-end benches sample their own
loop and say in their docstring how many samples a figure rests on. Every record carries its sample count, and
``spread_flag`` marks one whose p80/p20 exceeds ``SPREAD_LIMIT`` (shown as ``!`` in the printed tables).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.utils.benchmark as tbench
from torch.utils.benchmark.utils.timer import timer as synced_clock

from infer_fast.runtime import atomic_write_json, git_commit  # noqa: F401  (git_commit: re-exported to the benches)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One sample is an anecdote (STYLE): a single stalled block once made mixed_soft_xent read 0.22x eager in a --quick
# run where the usual figure is ~4x. Ten samples give p20/p80 that mean something; 0.2 s spans enough scheduler
# ticks that one hiccup cannot be the whole measurement.
MIN_SAMPLES = 10
MIN_SECONDS = 0.2
SPREAD_LIMIT = 1.5  # p80/p20 beyond this: the figure is too noisy to quote on its own

SCHEMA = ("kernel", "provider", "mode", "metric", "unit", "x_name", "x_value", "p50", "p20", "p80", "samples",
          "spread", "spread_flag", "device", "threads", "torch_version", "commit", "timestamp")


def shared_data_dir() -> str:
    """``$INFER_FAST_DATA`` or ``../shared/data`` relative to the project root."""
    return os.environ.get("INFER_FAST_DATA") or os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer shapes and shorter timing (under a minute here)")
    p.add_argument("--json", metavar="PATH", help="write the records as a JSON list to PATH")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    return p


@dataclass(frozen=True)
class Stats:
    """p20/p50/p80 of the samples of one figure (linear interpolation) and how many samples there were."""

    p20: float
    p50: float
    p80: float
    samples: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if not values:
            raise ValueError("Stats.of: no samples")
        v = sorted(values)

        def q(f: float) -> float:
            pos = f * (len(v) - 1)
            lo = int(pos)
            hi = min(lo + 1, len(v) - 1)
            return v[lo] + (v[hi] - v[lo]) * (pos - lo)

        return cls(p20=q(0.2), p50=q(0.5), p80=q(0.8), samples=len(v))

    @property
    def spread(self) -> float | None:
        """p80/p20: the same for a time and for its reciprocal rate (both positive)."""
        return self.p80 / self.p20 if self.p20 > 0 else None


def record(kernel: str, provider: str, mode: str, metric: str, unit: str, x_name: str, x_value: object,
           stats: Stats, device: str, **fields: object) -> dict[str, object]:
    """One benchmark figure: STYLE's schema (``SCHEMA``; p20/p50/p80 in ``unit``) followed by the bench's ``fields``.

    ``metric`` names what p50 measures (``time``, ``images_per_s``, ...), ``x_name``/``x_value`` the axis a figure
    varies along (shape, workload, dataset). A field may not redefine a schema key, so every bench's records share
    one shape.
    """
    clash = sorted(set(SCHEMA) & fields.keys())
    if clash:
        raise ValueError(f"record: {clash} belong to the fixed schema; pass them as arguments")
    spread = stats.spread
    return {
        "kernel": kernel, "provider": provider, "mode": mode, "metric": metric, "unit": unit,
        "x_name": x_name, "x_value": x_value, "p50": stats.p50, "p20": stats.p20, "p80": stats.p80,
        "samples": stats.samples, "spread": spread, "spread_flag": spread is not None and spread > SPREAD_LIMIT,
        "device": device, "threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "commit": git_commit(), "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **fields,
    }


def time_fn(fn: Callable[[], object], min_run_time: float = MIN_SECONDS, min_samples: int = MIN_SAMPLES,
            warmup: int = 3) -> Stats:
    """Quantiles (ms per call) of ``fn`` from at least ``MIN_SAMPLES`` samples and ``MIN_SECONDS`` of measurement.

    torch.utils.benchmark's blocked_autorange (synchronizes CUDA) picks a block size and measures blocks until
    ``min_run_time`` has passed; each block is one sample. A call slower than a tenth of that leaves fewer than ten
    blocks, and one stalled block can leave a single one, so more blocks of the same size are measured on the same
    synchronising clock until there are ``min_samples``. Neither bound can be set below the rule.
    """
    min_run_time, min_samples = max(min_run_time, MIN_SECONDS), max(min_samples, MIN_SAMPLES)
    for _ in range(warmup):
        fn()
    # Timer runs on ONE thread unless told otherwise: time every provider on all the threads it would use.
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    number, times = m.number_per_run, list(m.times)
    while len(times) < min_samples:
        t0 = synced_clock()
        for _ in range(number):
            fn()
        times.append((synced_clock() - t0) / number)
    return Stats.of([t * 1e3 for t in times])


def make_modes(
    loss_fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], grad_inputs: Sequence[torch.Tensor]
) -> dict[str, Callable[[], object]]:
    """``forward`` (no autograd graph) and ``full`` (forward + backward) closures of a loss function."""

    def forward():
        with torch.no_grad():
            return loss_fn(*inputs)

    def full():
        out = loss_fn(*inputs)
        return torch.autograd.grad(out.sum(), grad_inputs)

    return {"forward": forward, "full": full}


@dataclass
class Case:
    """One op at one shape: a loss function per provider, its inputs, and the minimal bytes moved per mode (GB/s)."""

    op: str
    shape: str
    providers: dict[str, Callable[..., torch.Tensor]]  # provider name -> loss_fn(*inputs)
    inputs: Sequence[torch.Tensor]
    grad_inputs: Sequence[torch.Tensor]
    nbytes: dict[str, int]  # mode -> bytes a bandwidth-bound kernel must move
    grad_ties: int = 0  # gradient elements allowed to differ from the reference's at exact ties (see the op's case)


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A markdown table of ``columns``; a ``spread`` cell of a flagged record ends in ``!``, explained below."""

    def cell(row: dict, c: str) -> str:
        return _fmt(row.get(c)) + (" !" if c == "spread" and row.get("spread_flag") else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in rows]
    if "spread" in columns and any(row.get("spread_flag") for row in rows):
        lines.append(f"\n! p80/p20 above {SPREAD_LIMIT}: too noisy to quote on its own; rerun on a quiet machine")
    return "\n".join(lines)


def write_json(path: str | None, records: Sequence[dict]) -> None:
    """The records as a JSON list at ``path`` (atomically, through the package's one writer); no path: nothing."""
    if not path:
        return
    atomic_write_json(path, list(records), indent=1)
    print(f"wrote {len(records)} records to {path}")


OPS_COLUMNS = ["kernel", "mode", "x_value", "provider", "p50", "samples", "spread", "gb_per_s", "memcpy_gb_per_s",
               "speedup_vs_eager", "speedup_vs_compile", "speedup_vs_best"]


BASELINES = ("eager", "compile")  # what infer_fast is compared with in the op suite


def suite_records(benchmarks: Sequence) -> list[dict[str, object]]:
    """Records of the op suite's timed benchmarks (pytest-benchmark's, with the suite's ``extra_info``): ms per call,
    GB/s, the memcpy GB/s of the same bytes, and infer_fast's speed-ups over each baseline and over the better one."""
    rows = []
    for b in benchmarks:
        info = b.extra_info
        if "kernel" not in info or not b.stats.data:
            continue
        stats = Stats.of([t * 1e3 for t in b.stats.data])
        gbs = info["nbytes"] / (stats.p50 * 1e-3) / 1e9 if info.get("nbytes") else None
        rows.append(record(info["kernel"], info["provider"], info["mode"], "time", "ms", "shape", info["shape"], stats,
                           info["device"], gb_per_s=gbs))
    by_group: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_group.setdefault((r["kernel"], r["x_value"], r["mode"]), {})[r["provider"]] = r
    for group in by_group.values():
        copy = group.get("memcpy")
        for r in group.values():
            r["memcpy_gb_per_s"] = copy["gb_per_s"] if copy else None
        fast = group.get("infer_fast")
        if fast is None:
            continue
        for name in BASELINES:
            fast[f"speedup_vs_{name}"] = group[name]["p50"] / fast["p50"] if name in group else None
        base = [group[name]["p50"] for name in BASELINES if name in group]
        fast["speedup_vs_best"] = min(base) / fast["p50"] if base else None
    return rows


SUITE = os.path.join(ROOT, "bench", "suites")


def run_suite_main(description: str, ops: Sequence[str] | None = None, argv: Sequence[str] | None = None) -> int:
    """CLI of bench_ops.py and the per-op scripts: the pytest-benchmark suite (bench/suites) with the old flags.

    ``--quick`` runs the quick shapes at ``MIN_SECONDS`` per figure, ``--json`` writes the records; any other argument
    goes to pytest as it is (``--benchmark-save=NAME``, ``-k infer_fast``, ...).
    """
    import pytest

    args, rest = base_parser(description).parse_known_args(argv)
    cmd = [SUITE, "-q", "-p", "no:cacheprovider", "--benchmark-only", f"--bench-device={args.device}",
           f"--bench-size={'quick' if args.quick else 'full'}"]
    if args.quick:
        cmd.append(f"--benchmark-max-time={MIN_SECONDS}")
    if args.json:
        cmd.append(f"--bench-json={os.path.abspath(args.json)}")
    if args.threads:
        cmd.append(f"--bench-threads={args.threads}")
    if ops:
        cmd += ["-k", " or ".join(ops)]
    return int(pytest.main([*cmd, *rest]))
