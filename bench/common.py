"""Shared benchmark helpers: the sampling rule, the one record shape, forward/backward/full closures, tables.

Benches run from the project root as ``python bench/<name>.py``. Python puts the script's own folder first on
``sys.path``, so the scripts share these helpers with ``from common import ...`` and import the installed package as
usual; pytest sees the same folder through ``pythonpath`` in pyproject.toml.

Every figure a bench reports is one ``record()``: STYLE's fixed schema (``SCHEMA``) plus the bench's own fields,
written as a JSON list with ``--json PATH``. Timed micro-figures go through ``time_fn``, which takes at least
``MIN_SAMPLES`` samples and ``MIN_SECONDS`` of measurement, whichever is more; end-to-end benches sample their own
loop and say in their docstring how many samples a figure rests on. Every record carries its sample count, and
``spread_flag`` marks one whose p80/p20 exceeds ``SPREAD_LIMIT`` (shown as ``!`` in the printed tables).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch._dynamo.config
import torch._functorch.config
import torch.utils.benchmark as tbench
from torch.utils.benchmark.utils.timer import timer as synced_clock

from infer_fast.runtime import git_commit  # noqa: F401  (re-exported to the bench scripts)

# The "backward" mode reuses one graph (retain_graph=True); compiled graphs donate their saved buffers by default,
# which makes a second backward over the same graph fail.
torch._functorch.config.donated_buffer = False
# Each case compiles its own reference closure; past the default limit dynamo silently falls back to eager.
torch._dynamo.config.recompile_limit = 64

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


def memcpy_ms(nbytes: int, device: str, min_run_time: float = 0.3) -> float:
    """Time of copying ``nbytes / 2`` bytes (``nbytes`` read+written): the bandwidth limit for ``nbytes`` moved."""
    n = max(1, nbytes // 2 // 4)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return time_fn(lambda: dst.copy_(src), min_run_time=min_run_time).p50


def make_modes(
    loss_fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], grad_inputs: Sequence[torch.Tensor]
) -> dict[str, Callable[[], object]]:
    """forward / backward / full closures for a function returning a scalar (or summed) loss.

    ``backward`` times only the backward pass, over a graph built once with ``retain_graph``.
    """

    def forward():
        with torch.no_grad():
            return loss_fn(*inputs)

    def full():
        out = loss_fn(*inputs)
        return torch.autograd.grad(out.sum(), grad_inputs)

    out = loss_fn(*inputs).sum()

    def backward():
        return torch.autograd.grad(out, grad_inputs, retain_graph=True)

    return {"forward": forward, "backward": backward, "full": full}


@dataclass
class Case:
    """One op at one shape: a loss function per provider plus the minimal bytes moved (for GB/s)."""

    op: str
    shape: str
    providers: dict[str, Callable[..., torch.Tensor]]  # provider name -> loss_fn(*inputs)
    inputs: Sequence[torch.Tensor]
    grad_inputs: Sequence[torch.Tensor]
    nbytes: dict[str, int]  # mode -> bytes a bandwidth-bound kernel must move
    modes: Sequence[str] = ("forward", "backward", "full")


def run_case(case: Case, device: str, min_run_time: float) -> list[dict[str, object]]:
    """Records of every provider and mode of ``case``: time in ms, GB/s against memcpy, speedups of infer_fast."""
    records: list[dict[str, object]] = []
    for mode in case.modes:
        by_provider: dict[str, Stats] = {}
        for name, fn in case.providers.items():
            closure = make_modes(fn, case.inputs, case.grad_inputs)[mode]
            by_provider[name] = time_fn(closure, min_run_time=min_run_time)
        nbytes = case.nbytes.get(mode)
        copy_ms = memcpy_ms(nbytes, device) if nbytes else None
        for name, t in by_provider.items():
            fast = name == "infer_fast"
            records.append(record(
                case.op, name, mode, "time", "ms", "shape", case.shape, t, device,
                gb_per_s=nbytes / (t.p50 * 1e-3) / 1e9 if nbytes else None,
                memcpy_gb_per_s=nbytes / (copy_ms * 1e-3) / 1e9 if nbytes else None,
                speedup_vs_eager=by_provider["eager"].p50 / t.p50 if fast and "eager" in by_provider else None,
                speedup_vs_compile=by_provider["compile"].p50 / t.p50 if fast and "compile" in by_provider else None,
            ))
    return records


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
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(list(records), f, indent=1)
    os.replace(tmp, path)
    print(f"wrote {len(records)} records to {path}")


OPS_COLUMNS = ["kernel", "mode", "x_value", "provider", "p50", "samples", "spread", "gb_per_s", "memcpy_gb_per_s",
               "speedup_vs_eager", "speedup_vs_compile"]


def run_cases_main(case_fns: Sequence[Callable[[bool, str], list[Case]]], description: str,
                   argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    """CLI body shared by bench_ops.py and the per-op scripts: build cases, time, print, write JSON."""
    args = base_parser(description).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    min_run_time = MIN_SECONDS if args.quick else 1.0
    records: list[dict[str, object]] = []
    for case_fn in case_fns:
        for case in case_fn(args.quick, args.device):
            recs = run_case(case, args.device, min_run_time)
            records.extend(recs)
            print(markdown_table(recs, OPS_COLUMNS).split("\n", 2)[-1], flush=True)
    print()
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} commit={git_commit()}")
    print(markdown_table(records, OPS_COLUMNS))
    write_json(args.json, records)
    return records
