"""Student training: mixed-label loss, a short real run on digits, resume, dynamic labels, argument errors."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_standin import StandInDistilled  # noqa: E402

from infer_fast.labels import TeacherEnsemble  # noqa: E402
from infer_fast.ops.backend import get as get_op  # noqa: E402
from infer_fast.train import EvalConfig, train_student  # noqa: E402

S = 16  # digits image size used by these tests (small and fast)


def _plain_mixed_kl(logits, y, perm, lam, t):
    """What the paper writes, in plain PyTorch: KL(softmax(mix(y)/T) || softmax(z/T)), batch mean."""
    y_mix = lam * y + (1 - lam) * y[perm]
    return F.kl_div(F.log_softmax(logits / t, dim=1), F.softmax(y_mix / t, dim=1), reduction="batchmean")


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("lam,t", [(0.3, 30.0), (1.0, 4.0), (0.77, 1.0)])
def test_mixed_label_loss_matches_plain_pytorch(backend, lam, t):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(9, 10, generator=g, dtype=torch.float64) * 5
    y = torch.randn(9, 10, generator=g, dtype=torch.float64) * 8
    perm = torch.randperm(9, generator=g)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    loss = get_op("mixed_soft_xent", backend)
    ours = loss(z1.float() if backend == "fused" else z1, y.float() if backend == "fused" else y, perm, lam, t)
    plain = _plain_mixed_kl(z2, y, perm, lam, t)
    tol = 1e-5 if backend == "fused" else 1e-10
    torch.testing.assert_close(ours.double(), plain, atol=tol, rtol=tol)
    ours.backward()
    plain.backward()
    torch.testing.assert_close(z1.grad, z2.grad, atol=tol, rtol=1e-4)


def _cfg(tmp_path, name="run", **kw) -> EvalConfig:
    base = dict(epochs=3, batch_size=32, out=str(tmp_path / name), progress=False, eval_every=1, temperature=1.0,
                lr=1e-2, device="cpu", val="digits", workers=0, student="convnet", width=0.25)
    base.update(kw)
    return EvalConfig(**base)


def test_short_static_run_beats_chance_and_writes_outputs(tmp_path):
    ds = StandInDistilled(per_class=10, image_size=S)
    summary = train_student(_cfg(tmp_path, epochs=4), ds)
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert all("top1" in r and "loss" in r and "lr" in r for r in rows)
    assert "top5" not in rows[-1], "top-5 is reported only for more than 10 classes"
    assert summary["top1"] == rows[-1]["top1"]
    assert summary["top1"] > 20.0, f"4 short epochs on real digits should beat chance (10%) clearly: {summary}"
    png = (out / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert json.loads((out / "summary.json").read_text())["method"] == "standin"
    assert load_file(str(out / "student.safetensors")), "final student weights written"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["epochs"] == 4 and cfg["effective_epochs"] == 4 and "commit" in cfg


def test_resume_equals_uninterrupted(tmp_path):
    ds = StandInDistilled(per_class=6, image_size=S)
    full = train_student(_cfg(tmp_path, "full", epochs=3), ds)
    part = train_student(_cfg(tmp_path, "split", epochs=3, stop_after=2), ds)
    assert part["stopped_after"] == 2 and not (tmp_path / "split" / "student.safetensors").exists()
    resumed = train_student(_cfg(tmp_path, "split", epochs=3, resume=True), ds)
    a = load_file(str(tmp_path / "full" / "student.safetensors"))
    b = load_file(str(tmp_path / "split" / "student.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # exact: same seeded per-epoch generators, same restored optimizer state, same CPU kernels
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert resumed["top1"] == full["top1"]
    rows = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


class _Linear(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(3 * S * S, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_dynamic_labels_run_and_divide_epochs(tmp_path):
    ds = StandInDistilled(per_class=4, image_size=S, soft=False)  # no stored labels: dynamic needs none
    ds.num_ufc_teachers = 3  # an INFER set of M = 3 UFC teachers
    teachers = TeacherEnsemble([(_Linear(1), None), (_Linear(2), None), (_Linear(3), None)], ds.mean, ds.std, S)
    seen = []
    orig = teachers.forward

    def spy(x):
        seen.append(x.shape)
        return orig(x)

    teachers.forward = spy
    summary = train_student(_cfg(tmp_path, labels="dynamic", epochs=8, eval_every=0), ds, teachers=teachers)
    assert summary["epochs"] == 2, "dynamic labels train epochs // (M + 1) = 8 // 4"
    assert seen and all(s[1:] == (3, S, S) for s in seen)
    assert sum(s[0] for s in seen) == 2 * len(ds), "teachers label every (augmented, mixed) training image"
    assert summary["top1"] is not None


def test_hard_labels_train_on_each_images_class_with_plain_cross_entropy(tmp_path, monkeypatch):
    """--labels hard: the loss op gets each image's class index (no stored or online teacher) at T = 1, where its
    value and gradient are the mixed one-hot cross-entropy; a set without soft labels trains."""
    import infer_fast.train.loop as loop

    ds = StandInDistilled(per_class=4, image_size=S, soft=False)
    ds.hard_labels = ds.hard_labels.flip(0)  # labels that no image order or soft label would give back
    calls, fused = [], get_op("mixed_soft_xent", "fused")

    def recording(name, backend):
        def loss(z, target, perm, lam, t):
            calls.append((target.clone(), t))
            return fused(z, target, perm, lam, t)
        return loss

    monkeypatch.setattr(loop, "get_op", recording)
    summary = train_student(_cfg(tmp_path, labels="hard", epochs=2, eval_every=0, temperature=30.0, batch_size=8), ds)
    assert summary["labels"] == "hard" and summary["epochs"] == 2
    assert all(t.dtype == torch.int64 and temp == 1.0 for t, temp in calls), "class indices at T = 1"
    epoch = torch.cat([t for t, _ in calls[: len(calls) // 2]])
    assert torch.equal(epoch.sort().values, ds.hard_labels.sort().values), "one epoch: every image's own class once"
    order = torch.randperm(len(ds), generator=loop._epoch_generators(0, 0, 0)[0])
    assert torch.equal(epoch, ds.hard_labels[order]), "each image's label, in the epoch's order"
    z = torch.randn(6, 10, requires_grad=True)
    y, perm = torch.tensor([3, 1, 4, 1, 5, 9]), torch.tensor([5, 4, 3, 2, 1, 0])
    fused(z, y, perm, 0.7, 1.0).backward()
    z2 = z.detach().clone().requires_grad_()  # the plain mixed cross-entropy, in PyTorch
    plain = 0.7 * F.cross_entropy(z2, y) + 0.3 * F.cross_entropy(z2, y[perm])
    plain.backward()
    torch.testing.assert_close(z.grad, z2.grad)


def test_dynamic_labels_load_teacher_files_from_the_manifest(tmp_path):
    from infer_fast.models import build_model, save_teacher
    from infer_fast.models.checkpoint import TeacherMeta

    ds = StandInDistilled(per_class=3, image_size=S)
    paths = []
    for i, arch in enumerate(["convnet", "resnet18_cifar"]):
        torch.manual_seed(i)
        meta = TeacherMeta(arch=arch, num_classes=10, classes=ds.classes, mean=ds.mean, std=ds.std, image_size=S,
                           width=0.125)
        path = str(tmp_path / f"{arch}.safetensors")
        save_teacher(build_model(arch, 10, image_size=S, width=0.125), meta, path)
        paths.append(path)
    ds.manifest.teachers = [{"path": p, "arch": "x"} for p in paths]
    summary = train_student(_cfg(tmp_path, labels="dynamic", epochs=3, eval_every=0), ds)
    assert summary["epochs"] == 3, "a baseline set (no UFCs) trains the full epochs under dynamic labels too"
    steps_per_epoch = -(-len(ds) // 32)
    assert summary["student_steps"] == 3 * steps_per_epoch
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["num_teachers"] == 2 and cfg["epoch_divisor"] == 1
    ds.num_ufc_teachers = 2  # an INFER set of M = 2 UFC teachers: M + 1 synthetic images per stored natural
    summary = train_student(_cfg(tmp_path, "infer", labels="dynamic", epochs=3, eval_every=0), ds)
    assert summary["epochs"] == 1 and summary["student_steps"] == steps_per_epoch, "INFER: 3 // (M + 1)"
    assert json.loads((tmp_path / "infer" / "config.json").read_text())["epoch_divisor"] == 3
    summary = train_student(_cfg(tmp_path, "infer-static", epochs=3, eval_every=0), ds)
    assert summary["epochs"] == 3, "static labels never divide"
    with pytest.raises(FileNotFoundError, match="teacher file"):
        train_student(_cfg(tmp_path, "missing", labels="dynamic", teachers=[str(tmp_path / "nope.safetensors")]), ds)


def test_bad_settings_give_clear_errors(tmp_path):
    ds = StandInDistilled(per_class=2, image_size=S)
    for kw, msg in [({"labels": "soft"}, "--labels"), ({"epochs": 0}, "--epochs"), ({"temperature": 0.0},
                                                                                     "--temperature"),
                    ({"backend": "cuda"}, "--backend"), ({"batch_size": -1}, "--batch-size")]:
        with pytest.raises(ValueError, match=msg):
            train_student(_cfg(tmp_path, **kw), ds)
    with pytest.raises(ValueError, match="stores no soft labels"):
        train_student(_cfg(tmp_path, "nolabels"), StandInDistilled(per_class=2, image_size=S, soft=False))
    with pytest.raises(ValueError, match="names no teacher files"):
        train_student(_cfg(tmp_path, "noteachers", labels="dynamic"), ds)
    train_student(_cfg(tmp_path, "once", epochs=1), ds)
    with pytest.raises(FileExistsError, match="--resume"):
        train_student(_cfg(tmp_path, "once", epochs=1), ds)
    with pytest.raises(ValueError, match="other settings.*lr"):
        train_student(_cfg(tmp_path, "once", epochs=1, lr=0.5, resume=True), ds)


def test_cli_errors(tmp_path, capsys):
    from infer_fast.cli import main

    for argv, msg in [
        ([str(tmp_path / "missing"), "--val", "digits"], "DIR: expected a distilled dataset folder"),
        ([str(tmp_path), "--labels", "sometimes"], "--labels: expected one of static, dynamic, hard, got 'sometimes'"),
        ([str(tmp_path), "--val", str(tmp_path / "nope")], "--val: expected digits or a dataset root"),
        ([str(tmp_path), "--val", "digits", "--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    ]:
        assert main(["evaluate", *argv]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"infer-fast evaluate: error: {msg}"), err


def test_evaluate_cli_on_the_distilled_format(tmp_path, capsys):
    from train_standin import write_standin_distilled

    from infer_fast.cli import main

    d = write_standin_distilled(str(tmp_path / "distilled"), per_class=3, image_size=S)
    out = tmp_path / "cli"
    # no --val/--dataset: validates on the split of the manifest's data source (digits)
    rc = main(["evaluate", d, "--student", "convnet", "--width", "0.25", "--epochs", "2",
               "--out", str(out), "--no-progress", "--workers", "0"])
    assert rc == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("evaluate: random labels=static")]
    assert line and "top1=" in line[0]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_images"] == 360, "the whole digits validation split is evaluated"


@pytest.mark.slow
def test_ddp_two_ranks_gloo(tmp_path):
    """torchrun with 2 CPU ranks: same steps on each rank, validation counts summed over the two shards."""
    import socket
    import subprocess

    from train_standin import write_standin_distilled

    d = write_standin_distilled(str(tmp_path / "distilled"), per_class=4, image_size=S)
    out = tmp_path / "ddp"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m",
           "infer_fast", "evaluate", d, "--val", "digits", "--student", "convnet", "--width", "0.25",
           "--epochs", "2", "--batch-size", "16", "--out", str(out), "--no-progress", "--workers", "0"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["local_batch"] == 8
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6], "40 images over 2 ranks at 8 per rank: 3 steps per epoch"
    assert rows[-1]["val_images"] == 360
    assert (out / "student.safetensors").exists()


def test_steps_trains_exactly_that_many_optimizer_steps_with_cosine_over_them(tmp_path):
    ds = StandInDistilled(per_class=5, image_size=S)  # 50 images, batch 32: 2 steps per epoch
    summary = train_student(_cfg(tmp_path, "steps", steps=5, epochs=400, eval_every=0), ds)
    assert summary["student_steps"] == 5 and summary["epochs"] == 3, "ceil(5 / 2) epochs, the last cut at step 5"
    rows = [json.loads(line) for line in open(tmp_path / "steps" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [2, 4, 5] and rows[-1]["lr"] == 0.0 and "top1" in rows[-1]
    again = train_student(_cfg(tmp_path, "epochs", epochs=3, eval_every=0), ds)
    assert again["student_steps"] == 6  # without --steps: whole epochs
    with pytest.raises(ValueError, match="--steps: expected >= 0"):
        _cfg(tmp_path, steps=-1).validate()


def test_curve_styles_give_one_colour_per_method_across_compute_budgets(tmp_path):
    from infer_fast.train.report import curve_styles, plot_curves

    names = ["infer/static 1x (n=3)", "random/static 1x (n=3)", "random/static 2x (n=3)", "infer/static 2x (n=3)"]
    styles = curve_styles(names)
    assert styles[0][0] == styles[3][0] != styles[1][0] == styles[2][0]  # a method keeps its colour
    assert styles[0][1] != styles[3][1] and styles[1][1] != styles[2][1]  # its budgets differ in line style
    many = curve_styles([f"m{i}" for i in range(12)])  # past the 10 colours: a new style, never a repeated look
    assert len(set(many)) == 12
    plot_curves({n: [(1, 1.0), (2, 2.0)] for n in names}, str(tmp_path / "c.png"), xlabel="optimizer step")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
