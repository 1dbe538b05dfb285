"""bench/gpu_check.py: refuses at once without a GPU; its summary parsing and report (the GPU run itself needs one)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "bench", "gpu_check.py")


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_without_a_gpu_it_exits_at_once_saying_why(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, SCRIPT, str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "This check needs a CUDA GPU; nothing was run." in r.stderr
    assert not out.exists(), "nothing may be written without a GPU"


def test_junit_counts_and_failures(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="t" name="test_cpu_matches_cuda[a]">'
        '<skipped message="needs a CUDA device (none visible on this machine)"/></testcase>'
        '<testcase classname="t" name="test_cuda_x"/><testcase classname="t" name="test_y">'
        '<failure message="AssertionError: boom&#10;more"/></testcase></testsuite></testsuites>'
    )
    got = _module()._junit(str(xml))
    assert (got["tests"], got["failed"], got["skipped"], got["skipped_no_gpu"]) == (3, 1, 1, 1)
    assert got["failures"] == ["t::test_y: AssertionError: boom"]


def test_markdown_report_lists_every_part():
    summary = {
        "verdict": "FAIL",
        "commit": "abc",
        "seconds": 12.0,
        "parts": {
            "env": {"status": "ok", "gpu": "H200", "capability": "9.0", "torch": "2.11.0", "cuda": "13.0"},
            "build": {"status": "ok", "seconds": 80.0},
            "tests": {
                "status": "failed (exit 1)",
                "tests": 3,
                "failed": 1,
                "skipped": 0,
                "skipped_no_gpu": 0,
                "failures": ["t::test_y: boom"],
            },
            "synthesis": {"status": "ok", "records": [{"workload": "cifar10", "provider": "infer_fast",
                                                        "images_per_s": 98.51, "loss_check": "ok",
                                                        "loss_rdiff_first": 3.02e-07}]},
            "loader": {"status": "ok", "records": [{"provider": "torch-w2", "images_per_s": 10.0}]},
        },
    }
    md = _module().markdown(summary)
    assert md.startswith("# gpu-check FAIL") and "H200 (compute 9.0)" in md
    for line in ("| build | ok | 80.0 |", "| tests | failed (exit 1) |", "- t::test_y: boom", "| torch-w2 | 10 |",
                 "| cifar10 | infer_fast | 98.5 | ok | 3.02e-07 |"):  # 3 significant digits, small ones too
        assert line in md, line
