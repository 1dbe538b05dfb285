"""The shared runtime's promises: atomic writes, one-line errors for a full/read-only disk, one writer per output
folder, and ``distill --resume`` after ``kill -9`` at any point giving the uninterrupted result tensor for tensor."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from synth_helpers import SIZE
from synth_helpers import distill_config as _cfg

from infer_fast import runtime
from infer_fast.cli import main
from infer_fast.distilled import load_distilled
from infer_fast.synth.runner import PROGRESS_DIR, run_distill

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "x.json"
    runtime.atomic_write_json(str(path), {"a": 1})
    runtime.atomic_write_json(str(path), {"a": 2})
    assert path.read_text() == '{\n  "a": 2\n}\n'
    assert sorted(os.listdir(path.parent)) == ["x.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~runtime._UMASK)


def test_write_error_is_one_line_naming_path_and_what_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", _no_space)
    path = str(tmp_path / "x.bin")
    with runtime.keeping("earlier files are kept"), pytest.raises(runtime.OutputError) as info:
        runtime.atomic_write_bytes(path, b"data")
    assert str(info.value) == f"cannot write {path}: No space left on device; earlier files are kept"
    assert os.listdir(tmp_path) == [], "the temporary file is removed"
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError) as info:  # not the user's to fix: the original error, traceback and all
        runtime.atomic_write_bytes(path, b"data")
    assert not isinstance(info.value, runtime.OutputError)


def test_distill_on_a_full_disk_says_one_line(teachers, tmp_path, monkeypatch, capsys):
    out = tmp_path / "full"
    monkeypatch.setattr(os, "fsync", _no_space)
    rc = main(["distill", "--data", "digits", "--image-size", str(SIZE), "--teachers", *teachers, "--ipc", "3",
               "--iterations", "2", "--out", str(out), "--seed", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith(f"infer-fast: cannot write {out / PROGRESS_DIR}"), err[-3:]
    assert "No space left on device; finished batches in" in err[-1] and "rerun with --resume" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_second_writer_is_refused(teachers, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    with runtime.lock_folder(str(out), "test"), pytest.raises(runtime.BusyError, match="another process"):
        run_distill(_cfg(out, teachers, resume=True), progress=False)


# ---- kill -9 at several points, then --resume ---------------------------------------------------------------

ITERATIONS = 40  # long enough per batch that a poll of a few ms lands between the writes


def _args(out, teachers):
    return ["--data", "digits", "--image-size", str(SIZE), "--teachers", *teachers, "--ipc", "3", "--iterations",
            str(ITERATIONS), "--out", str(out), "--log-every", "4", "--problems-per-batch", "1", "--seed", "3",
            "--r-bn", "0.05", "--jitter", "1", "--device", "cpu", "--threads", "1"]


def _distill(out, teachers, *extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "infer_fast", "distill", *_args(out, teachers), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def _kill_when(out, teachers, ready) -> None:
    """Start a distill run and SIGKILL it as soon as ``ready(out)`` holds (or when it would have finished)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "infer_fast", "distill", *_args(out, teachers)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not ready(out) and time.monotonic() < deadline:
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def clean_run(teachers, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "d"
    proc = _distill(out, teachers)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_distilled(str(out)).tensors


POINTS = {
    "before any write": lambda out: True,
    "mid-batches": lambda out: (out / PROGRESS_DIR / "batch_00000.safetensors").exists(),
    "after labels": lambda out: (out / "metrics.jsonl").exists(),  # written once the static labels are computed
    "mid-format": lambda out: (out / "naturals.safetensors").exists(),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_then_resume_equals_clean_run(point, clean_run, teachers, tmp_path):
    out = tmp_path / "k"
    _kill_when(out, teachers, POINTS[point])
    proc = _distill(out, teachers, "--resume")
    assert proc.returncode == 0, f"resume after kill {point}: {proc.stderr[-3000:]}"
    fresh = "holds no interrupted run; starting fresh" in proc.stderr
    assert fresh == (point == "before any write"), f"kill {point}: {proc.stderr[-2000:]}"
    resumed = load_distilled(str(out)).tensors
    assert set(resumed) == set(clean_run) == {"naturals", "ufcs", "labels"}
    for name in clean_run:
        assert torch.equal(resumed[name], clean_run[name]), f"{name} differs after kill {point} + --resume"
    left = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if runtime.is_temp_file(f)]
    assert not left, f"temporary files left behind: {left}"
