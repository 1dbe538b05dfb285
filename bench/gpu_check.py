"""One-command check of infer_fast on a GPU machine: build, CUDA tests, CPU-vs-CUDA agreement, benchmarks.

    python3 bench/gpu_check.py OUT_DIR [--budget 460] [--parts build,tests,ops,synthesis,loader]

Needs only the machine's own python3 with torch (2.11 or later, CUDA), nvcc, ninja, pybind11 and pytest (and
pytest-benchmark for the ops part, which runs the op suite): no venv, no network, no data (the loader images are
generated). Every part runs in its own process under its own time box,
and a part that fails or times out does not stop the next one. Parts, in order:

  env        nvidia-smi, torch/CUDA versions (always runs first, a few seconds)
  build      python3 setup.py build_ext --inplace for the visible GPU's architecture (MAX_JOBS = all cores)
  tests      the op tests (every CUDA test, the CPU-vs-CUDA agreement tests), test_build, the DALI tests (skip
             without DALI), test_fold's CUDA bf16 synthesis test, test_cuda_graphs (the captured synthesis
             iteration against the eager one; no host sync per iteration), then `infer-fast info`
  ops        bench/bench_ops.py --quick (the op suite, bench/suites): each fused op vs eager and torch.compile
  synthesis  bench/bench_synthesis.py --quick --device cuda with its loss-agreement check, per workload in half the
             time box: cifar10 (reference, infer_fast = fp32 channels-last, +bn_fold = channels-first, +compile,
             +bf16, +cuda_graphs) and imagenet (reference, infer_fast, +bf16, +cuda_graphs)
  loader     generated 375x500 JPEGs through the torch loader (2 and 8 workers) and DALI `mixed` when importable

OUT_DIR receives summary.json (every part: status, seconds, parsed results, the log tail) and summary.md (the
verdict table), plus one log per part: at most 8 files. Verdict PASS (exit status 0) when build and tests passed.
Without a visible GPU it exits at once (status 2) saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
# seconds per part (each also capped by what is left of --budget); the build and tests matter most
LIMITS = {"env": 30, "build": 240, "tests": 200, "ops": 90, "synthesis": 170, "loader": 60}
PARTS = list(LIMITS)
TEST_FILES = ["tests/test_build.py", "tests/test_bn_stat_loss.py", "tests/test_compensator_broadcast.py",
              "tests/test_mixed_soft_xent.py", "tests/test_data_dali.py",
              "tests/test_fold.py::test_cuda_bf16_channels_last_synthesis_matches_fp32", "tests/test_cuda_graphs.py"]
# per workload, each with half the part's time box, so that one workload's overrun leaves the other's figures
SYNTH_RUNS = [("cifar10", "reference,infer_fast,+bn_fold,+compile,+bf16,+cuda_graphs"),
              ("imagenet", "reference,infer_fast,+bf16,+cuda_graphs")]


def gpu_problem() -> str | None:
    """Why this machine cannot run the check, or None."""
    try:
        import torch
    except ImportError as exc:
        return f"torch is not importable with {PY} ({exc})"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    return None


def run(cmd: list[str], log: str, timeout: float, env: dict | None = None) -> dict:
    """Run cmd with output to log; status ok / failed (rc) / timeout, seconds and the log's tail.

    The package is not installed on a bare GPU machine: the project root goes on PYTHONPATH, so that the benches
    (run as `python3 bench/x.py`, with only bench/ on their path) import the freshly built infer_fast.
    """
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    t0 = time.monotonic()
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=max(timeout, 1),
                                env=env).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"timeout after {timeout:.0f} s"
        except OSError as exc:
            status = f"failed to start: {exc}"
    with open(log, encoding="utf-8", errors="replace") as f:
        tail = f.read()[-3000:]
    return {"status": status, "seconds": round(time.monotonic() - t0, 1), "tail": tail}


def part_env(out: str, timeout: float) -> dict:
    log = os.path.join(out, "env.log")
    r = run(["nvidia-smi"], log, min(timeout, 15)) if shutil.which("nvidia-smi") else {"status": "no nvidia-smi"}
    code = ("import torch, json; p = torch.cuda.get_device_properties(0); print(json.dumps({'torch': "
            "torch.__version__, 'cuda': torch.version.cuda, 'gpu': p.name, 'capability': f'{p.major}.{p.minor}', "
            "'gpus': torch.cuda.device_count(), 'memory_gib': round(p.total_memory / 2**30, 1)}))")
    info = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=max(timeout, 5))
    res = {"status": "ok" if info.returncode == 0 else "failed", "nvidia_smi": r["status"],
           "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        res.update(json.loads(info.stdout.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        res["error"] = info.stderr[-1000:]
    return res


def part_build(out: str, timeout: float) -> dict:
    env = {"MAX_JOBS": str(os.cpu_count() or 4), "INFER_FAST_CUDA": "1"}
    os.environ.pop("TORCH_CUDA_ARCH_LIST", None)  # setup.py then builds for the visible GPU's architecture
    return run([PY, "setup.py", "-q", "build_ext", "--inplace"], os.path.join(out, "build.log"), timeout, env)


def _junit(path: str) -> dict:
    """Counts and the failing tests (name: first line of the message) from a pytest junit xml."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    cases = list(root.iter("testcase"))
    failed, skipped, no_gpu = [], 0, 0
    for c in cases:
        bad = c.find("failure")
        if bad is None:
            bad = c.find("error")
        if bad is not None:
            msg = (bad.get("message") or "").splitlines()
            failed.append(f"{c.get('classname')}::{c.get('name')}: {msg[0][:300] if msg else ''}")
        elif (skip := c.find("skipped")) is not None:
            skipped += 1
            no_gpu += "needs a CUDA device" in (skip.get("message") or "")  # tests/conftest.py's requires_cuda
    return {"tests": len(cases), "failed": len(failed), "skipped": skipped, "skipped_no_gpu": no_gpu,
            "failures": failed[:40]}


def part_tests(out: str, timeout: float) -> dict:
    log = os.path.join(out, "tests.log")
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        res = run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *TEST_FILES], log,
                  timeout - 20)
        res.update(_junit(xml))
    info = run([PY, "-m", "infer_fast", "info"], log, 20)
    res["info"] = info["tail"].split("$ ")[-1]
    if res.get("skipped_no_gpu"):
        res["status"] = f"failed ({res['skipped_no_gpu']} CUDA tests skipped for want of a device: GPU not used)"
    return res


def _bench(script: str, extra: list[str], name: str, out: str, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        js = os.path.join(tmp, "records.json")
        res = run([PY, script, "--quick", "--device", "cuda", "--json", js, *extra], os.path.join(out, f"{name}.log"),
                  timeout)
        try:
            with open(js, encoding="utf-8") as f:
                res["records"] = json.load(f)
        except (OSError, json.JSONDecodeError):
            res["records"] = []
    return res


def part_ops(out: str, timeout: float) -> dict:
    return _bench("bench/bench_ops.py", [], "ops", out, timeout)


def part_synthesis(out: str, timeout: float) -> dict:
    t0, runs = time.monotonic(), {}
    for i, (workload, providers) in enumerate(SYNTH_RUNS):
        left = timeout - (time.monotonic() - t0)
        share = left / (len(SYNTH_RUNS) - i)  # what an early finisher leaves goes to the next run
        runs[workload] = _bench("bench/bench_synthesis.py", ["--providers", providers, "--workloads", workload],
                                "synthesis", out, share)
    bad = [f"{w}: {r['status']}" for w, r in runs.items() if r["status"] != "ok"]
    return {"status": "ok" if not bad else "; ".join(bad), "records": [x for r in runs.values() for x in r["records"]],
            "tail": runs[SYNTH_RUNS[-1][0]]["tail"]}


def part_loader(out: str, timeout: float) -> dict:
    return run([PY, os.path.abspath(__file__), "--loader-worker", out], os.path.join(out, "loader.log"), timeout)


def loader_worker(out: str, device: str = "cuda") -> int:
    """Generated ImageNet-sized JPEGs (375x500) through each loader; images/s of the train reads to the GPU."""
    import numpy as np
    from bench_loader import loader_record
    from PIL import Image

    rng = np.random.default_rng(0)
    records = []
    with tempfile.TemporaryDirectory() as root:
        for c in range(8):
            os.makedirs(os.path.join(root, "train", f"class{c}"))
            for i in range(64):
                img = rng.integers(0, 256, (375 // 8, 500 // 8, 3), dtype=np.uint8)  # smooth: upsampled noise
                Image.fromarray(img).resize((500, 375)).save(os.path.join(root, "train", f"class{c}", f"{i}.jpg"),
                                                             quality=90)
        from infer_fast.data import dali_available

        providers = [("torch-w2", "torch", 2), ("torch-w8", "torch", 8)]
        if dali_available():
            providers.append(("dali-mixed", "dali", 8))
        for name, loader, workers in providers:
            try:  # 3 epochs (the samples) of 16 batches of 32, the first 2 of each untimed
                records.append(loader_record("generated-375x500", "train", name, loader, workers, 32, 224, root,
                                             1000, 3, device) | {"images": 512})
            except Exception as exc:  # noqa: BLE001  (one provider failing must not hide the others)
                records.append({"provider": name, "error": f"{type(exc).__name__}: {exc}"[:500]})
            print(json.dumps(records[-1]), flush=True)
    with open(os.path.join(out, "loader_records.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(records, f)
    return 0 if any(r.get("images_per_s") for r in records) else 1


def _loader_records(out: str, res: dict) -> None:
    path = os.path.join(out, "loader_records.json.tmp")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            res["records"] = json.load(f)
        os.remove(path)


def markdown(summary: dict) -> str:
    env = summary["parts"].get("env", {})
    lines = [f"# gpu-check {summary['verdict']}", "",
             f"{env.get('gpu', '?')} (compute {env.get('capability', '?')}), torch {env.get('torch', '?')}, "
             f"CUDA {env.get('cuda', '?')}, python {env.get('python', '?')}, commit {summary['commit']}, "
             f"{summary['seconds']:.0f} s in all", "",
             "| part | status | seconds | what it found |", "|---|---|---|---|"]
    for name, r in summary["parts"].items():
        found = ""
        if name == "tests" and "tests" in r:
            found = (f"{r['tests']} tests, {r['failed']} failed, {r['skipped']} skipped "
                     f"({r['skipped_no_gpu']} of them for want of a CUDA device)")
        elif name in ("ops", "synthesis", "loader"):
            found = f"{len(r.get('records', []))} records"
        lines.append(f"| {name} | {r.get('status')} | {r.get('seconds', '')} | {found} |")
    fails = summary["parts"].get("tests", {}).get("failures", [])
    if fails:
        lines += ["", "## Failing tests", "", *[f"- {f}" for f in fails]]
    def cell(r: dict, k: str) -> str:  # as bench/common.py's tables: "!" marks a record with spread_flag
        v = r.get(k, "")
        text = f"{v:.3g}" if isinstance(v, float) else str(v)  # 3 significant digits: 3.02e-07 stays readable
        return text + " !" if k == "spread" and r.get("spread_flag") else text

    for name, cols in (("ops", ["kernel", "provider", "mode", "x_value", "p50", "unit", "samples", "spread"]),
                       ("synthesis", ["workload", "provider", "images_per_s", "samples", "spread",
                                      "speedup_vs_reference", "loss_check", "loss_rdiff_first", "loss_rdiff_timed"]),
                       ("loader", ["provider", "images_per_s", "samples", "spread", "error"])):
        recs = summary["parts"].get(name, {}).get("records") or []
        if recs and isinstance(recs[0], dict):
            keys = [k for k in cols if any(k in r for r in recs)] or list(recs[0])[:6]
            lines += ["", f"## {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(cell(r, k) for k in keys) + " |" for r in recs[:60]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder for summary.json, summary.md and the part logs (at most 8 files)")
    p.add_argument("--budget", type=float, default=460.0, help="seconds for everything (default %(default)s)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    p.add_argument("--loader-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loader-device", default="cuda", help=argparse.SUPPRESS)  # cpu: to try the worker without a GPU
    args = p.parse_args(argv)
    if args.loader_worker:
        return loader_worker(args.out, args.loader_device)
    parts = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--parts: unknown {unknown}; known: {','.join(PARTS)}")
    problem = gpu_problem()
    if problem:
        print(f"gpu-check: {problem}. This check needs a CUDA GPU; nothing was run.", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    t0 = time.monotonic()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    summary = {"commit": commit.stdout.strip() or "unknown", "parts": {}, "verdict": "", "seconds": 0.0}
    funcs = {"env": part_env, "build": part_build, "tests": part_tests, "ops": part_ops,
             "synthesis": part_synthesis, "loader": part_loader}
    for name in PARTS:
        if name not in parts:
            continue
        left = args.budget - (time.monotonic() - t0)
        if left < 10:
            summary["parts"][name] = {"status": "not run (budget spent)"}
            continue
        print(f"gpu-check: {name} (up to {min(LIMITS[name], left):.0f} s)", flush=True)
        t = time.monotonic()
        try:
            res = funcs[name](args.out, min(LIMITS[name], left))
        except Exception as exc:  # noqa: BLE001  (a broken part is reported, the next one still runs)
            res = {"status": f"error: {type(exc).__name__}: {exc}"}
        res.setdefault("seconds", round(time.monotonic() - t, 1))
        if name == "loader":
            _loader_records(args.out, res)
        summary["parts"][name] = res
        print(f"gpu-check: {name}: {res.get('status')} ({res['seconds']} s)", flush=True)
    ok = all(summary["parts"].get(n, {}).get("status") == "ok" for n in ("build", "tests"))
    complete = all(n in parts for n in ("build", "tests"))
    summary["verdict"] = ("PASS" if ok else "FAIL") if complete else "INCOMPLETE (build and tests not both selected)"
    summary["seconds"] = round(time.monotonic() - t0, 1)
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, default=str)
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(markdown(summary))
    print(f"gpu-check: {summary['verdict']} in {summary['seconds']:.0f} s; see {args.out}/summary.md")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
