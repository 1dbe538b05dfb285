"""Install infer_fast as a user would, into a fresh venv outside the source tree, and smoke-test it.

    python3 .ci/wheel_check.py --wheel wheelhouse/infer_fast-*.whl     # make wheel-check (after make dist)
    python3 .ci/wheel_check.py --source                                # make source-check: pip install <clean clone>
    python3 .ci/wheel_check.py --wheel W.whl --source                  # both, one venv (CI)

The venv holds only what pip installs for the package (torch, torchvision and the runtime requirements of
setup.py; no DALI, no test tools). ``--source`` clones the repository's HEAD into a scratch folder and runs
``pip install <clone>`` with build isolation: pip builds in an isolated environment that gets its own torch from
pyproject.toml's build requirements. The smoke test, run from the scratch folder (never from the source tree):
import (and from where), the package data, ``infer-fast info``, one forward + backward of each fused op on CPU
against the reference, a 1-epoch teacher and a 2-iteration distill on the embedded digits, read back with
load_distilled.
Stdlib only: it runs with any python3 of the wheel's version. Prints the seconds of each step.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OPS_SMOKE = r"""
import os, sys, torch, infer_fast
from infer_fast import reference
from infer_fast.ops.bn_stat_loss import bn_stat_loss
from infer_fast.ops.compensator_broadcast import compensator_broadcast
from infer_fast.ops.mixed_soft_xent import mixed_soft_xent

where = os.path.dirname(infer_fast.__file__)
assert where.startswith(sys.prefix), f"infer_fast imported from {where}, not from the venv {sys.prefix}"
print("infer_fast", infer_fast.__version__, "from", where, "cuda kernels:", infer_fast.cuda_enabled())
import importlib.resources
wnids = importlib.resources.files("infer_fast.models").joinpath("imagenet1k_wnids.txt").read_text().split()
assert len(wnids) == 1000, f"package data imagenet1k_wnids.txt holds {len(wnids)} class ids"
torch.manual_seed(0)


def check(name, fused, ref, inputs, grad_inputs):
    out = fused(*inputs)
    want = ref(*inputs)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} forward: {m}")
    g = torch.autograd.grad(out.sum(), grad_inputs)
    gw = torch.autograd.grad(want.sum(), grad_inputs)
    for a, b in zip(g, gw):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} backward: {m}")
    print(name, "ok")


x = (torch.randn(6, 5, 7, 7) * 1.5).requires_grad_()
rm, rv = torch.randn(5) * 0.1, torch.rand(5) + 0.5
check("bn_stat_loss", lambda *a: bn_stat_loss(*a, 3)[0], lambda *a: reference.bn_stat_loss(*a, 3)[0],
      (x, rm, rv), (x,))

base = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
ufc = (0.5 * torch.randn(3, 3, 5, 5)).requires_grad_()
bidx, uidx = torch.randint(0, 4, (9,)), torch.randint(-1, 3, (9,))
mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
check("compensator_broadcast", compensator_broadcast, reference.compensator_broadcast,
      (base, ufc, bidx, uidx, mean, std, -mean / std, (1 - mean) / std), (ufc,))

z = (torch.randn(8, 13) * 4).requires_grad_()
y, perm = torch.randn(8, 13) * 4, torch.randperm(8)
check("mixed_soft_xent", lambda *a: mixed_soft_xent(*a, 0.7, 30.0), lambda *a: reference.mixed_soft_xent(*a, 0.7, 30.0),
      (z, y, perm), (z,))
"""

READ_BACK = r"""
import sys
from infer_fast.distilled import load_distilled
ds = load_distilled(sys.argv[1])
images = ds.compose(list(range(len(ds))))
assert images.shape[0] == len(ds) > 0 and images.isfinite().all(), images.shape
print("distilled set:", len(ds), "images of", tuple(images.shape[1:]))
"""


def step(name: str, cmd: list[str], cwd: str, env: dict | None = None) -> str:
    t0 = time.monotonic()
    print(f"wheel-check: {name}: {' '.join(cmd)}", flush=True)
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(r.stdout[-3000:], end="" if r.stdout.endswith("\n") else "\n")
    print(f"wheel-check: {name}: {'ok' if r.returncode == 0 else f'FAILED (exit {r.returncode})'} in "
          f"{time.monotonic() - t0:.0f} s", flush=True)
    if r.returncode != 0:
        sys.exit(f"wheel-check: {name} failed")
    return r.stdout


def smoke(venv: str, work: str, tag: str) -> None:
    py, cli = os.path.join(venv, "bin", "python"), os.path.join(venv, "bin", "infer-fast")
    step(f"{tag}: import + ops", [py, "-c", OPS_SMOKE], work)
    info = step(f"{tag}: infer-fast info", [cli, "info"], work)
    assert "build:" in info and "runtime:" in info, info
    out = os.path.join(work, tag)
    teacher = os.path.join(out, "teacher.safetensors")
    step(f"{tag}: train-teacher", [cli, "train-teacher", "--data", "digits", "--arch", "convnet", "--width", "0.25",
                                   "--epochs", "1", "--image-size", "16", "--workers", "0", "--no-progress",
                                   "--out", teacher], work)
    step(f"{tag}: distill", [cli, "distill", "--data", "digits", "--teachers", teacher, "--ipc", "2",
                             "--iterations", "2", "--image-size", "16", "--threads", "1", "--out",
                             os.path.join(out, "distilled")], work)
    step(f"{tag}: read back", [py, "-c", READ_BACK, os.path.join(out, "distilled")], work)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", nargs="*", default=[], help="the wheel to install (one file; a glob is expanded)")
    p.add_argument("--source", action="store_true", help="pip install a clean clone of HEAD (build isolation)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the fresh venv (default: this one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (printed) instead of deleting it")
    a = p.parse_args(argv)
    wheels = sorted({w for pattern in a.wheel for w in glob.glob(pattern)})
    if len(wheels) > 1 or (a.wheel and not wheels) or not (wheels or a.source):
        p.error(f"give one wheel (found {wheels or 'none'} for {a.wheel}) and/or --source")
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="infer-fast-wheel-check-")
    try:
        venv = os.path.join(work, "venv")
        step("fresh venv", [a.python, "-m", "venv", venv], work)
        pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--no-input", "--progress-bar", "off"]
        if wheels:
            step("install wheel", [*pip, os.path.abspath(wheels[0])], work)
            smoke(venv, work, "wheel")
        if a.source:
            clone = os.path.join(work, "clone")
            step("clean clone", ["git", "clone", "--quiet", "--no-hardlinks", ROOT, clone], work)
            if wheels:
                step("uninstall wheel", [*pip[:3], "uninstall", "-y", "infer_fast"], work)
            # The CUDA kernels were already compiled (in place and for the wheel); this build checks the packaging
            # path a user takes (isolated build environment from pyproject.toml, sources from a clone), which
            # does not depend on nvcc, so it is CPU-only to stay within CI's time.
            env = {**os.environ, "INFER_FAST_CUDA": os.environ.get("INFER_FAST_CUDA", "0")}
            step("pip install <clone> (build isolation)", [*pip, clone], work, env)
            smoke(venv, work, "source")
        print(f"wheel-check: all ok in {time.monotonic() - t0:.0f} s")
    finally:
        if a.keep:
            print(f"wheel-check: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
