"""Shared benchmark helpers: timing, forward/backward/full closures, records, markdown tables.

Every benchmark times its providers side by side in ONE run and reports ratios against the strongest
baseline of that run. Records have a fixed schema (see ``Record``); ``--json PATH`` writes them as a list.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch._dynamo.config
import torch._functorch.config
import torch.utils.benchmark as tbench

# The "backward" mode reuses one graph (retain_graph=True); compiled graphs donate their saved buffers by default,
# which makes a second backward over the same graph fail.
torch._functorch.config.donated_buffer = False
# Each case compiles its own reference closure; past the default limit dynamo silently falls back to eager.
torch._dynamo.config.recompile_limit = 64

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from infer_fast.runtime import git_commit  # noqa: E402,F401  (re-exported to the bench scripts)


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


@dataclass
class Timing:
    p20: float
    p50: float
    p80: float
    runs: int


def time_fn(fn: Callable[[], object], min_run_time: float = 0.5, warmup: int = 3) -> Timing:
    """Median and quantiles (ms) of ``fn`` via torch.utils.benchmark (synchronizes CUDA)."""
    for _ in range(warmup):
        fn()
    # Timer runs on ONE thread unless told otherwise: time every provider on all the threads it would use.
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = sorted(m.times)

    def q(f: float) -> float:
        return times[min(len(times) - 1, int(f * len(times)))] * 1e3

    return Timing(p20=q(0.2), p50=m.median * 1e3, p80=q(0.8), runs=len(times))


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


@dataclass
class Record:
    op: str
    mode: str
    shape: str
    provider: str
    ms_p50: float
    ms_p20: float
    ms_p80: float
    gb_per_s: float | None = None
    memcpy_gb_per_s: float | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    device: str = "cpu"
    threads: int = field(default_factory=torch.get_num_threads)
    torch_version: str = torch.__version__
    commit: str = field(default_factory=git_commit)
    timestamp: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))


def run_case(case: Case, device: str, min_run_time: float) -> list[Record]:
    records: list[Record] = []
    for mode in case.modes:
        by_provider: dict[str, Timing] = {}
        for name, fn in case.providers.items():
            closure = make_modes(fn, case.inputs, case.grad_inputs)[mode]
            by_provider[name] = time_fn(closure, min_run_time=min_run_time)
        nbytes = case.nbytes.get(mode)
        copy_ms = memcpy_ms(nbytes, device) if nbytes else None
        for name, t in by_provider.items():
            r = Record(case.op, mode, case.shape, name, t.p50, t.p20, t.p80, device=device)
            if nbytes:
                r.gb_per_s = nbytes / (t.p50 * 1e-3) / 1e9
                r.memcpy_gb_per_s = nbytes / (copy_ms * 1e-3) / 1e9
            if name == "infer_fast":
                if "eager" in by_provider:
                    r.speedup_vs_eager = by_provider["eager"].p50 / t.p50
                if "compile" in by_provider:
                    r.speedup_vs_compile = by_provider["compile"].p50 / t.p50
            records.append(r)
    return records


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_json(path: str | None, records: Sequence[object]) -> None:
    if not path:
        return
    rows = [asdict(r) if hasattr(r, "__dataclass_fields__") else r for r in records]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, path)
    print(f"wrote {len(rows)} records to {path}")


OPS_COLUMNS = ["op", "mode", "shape", "provider", "ms_p50", "gb_per_s", "memcpy_gb_per_s", "speedup_vs_eager",
               "speedup_vs_compile"]


def run_cases_main(case_fns: Sequence[Callable[[bool, str], list[Case]]], description: str, argv=None) -> list[Record]:
    """CLI body shared by bench_ops.py and the per-op scripts: build cases, time, print, write JSON."""
    args = base_parser(description).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    min_run_time = 0.2 if args.quick else 1.0
    records: list[Record] = []
    for case_fn in case_fns:
        for case in case_fn(args.quick, args.device):
            recs = run_case(case, args.device, min_run_time)
            records.extend(recs)
            print(markdown_table([asdict(r) for r in recs], OPS_COLUMNS).split("\n", 2)[-1], flush=True)
    print()
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} commit={git_commit()}")
    print(markdown_table([asdict(r) for r in records], OPS_COLUMNS))
    write_json(args.json, records)
    return records
