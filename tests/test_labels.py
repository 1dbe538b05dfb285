"""labels.py: the teacher ensemble (mean logits, re-normalisation and resizing per teacher), the teacher files of a
distilled set, the one way teachers are loaded (models.load_teachers through load_ensemble) and static labels."""

from __future__ import annotations

import pytest
import torch

from infer_fast.distilled import DistilledDataset, Manifest
from infer_fast.labels import TeacherEnsemble, ensemble_for, load_ensemble, static_labels, teacher_paths
from infer_fast.models import build_model, save_teacher
from infer_fast.models.checkpoint import TeacherMeta
from infer_fast.runtime import Normalisation

S = 8
CLASSES = ["a", "b", "c"]
NORM = Normalisation((0.3, 0.3, 0.3), (0.2, 0.2, 0.2))


class _Linear(torch.nn.Module):
    def __init__(self, seed: int, size: int = S, classes: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(3 * size * size, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _dataset(paths: list[str] | None = None) -> DistilledDataset:
    teachers = [{"path": p, "arch": "convnet", "fingerprint": ""} for p in paths or []]
    naturals = torch.randint(0, 256, (2, 3, 3, S, S), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    manifest = Manifest(method="random", classes=CLASSES, mean=NORM.mean, std=NORM.std, image_size=S, small=True,
                        teachers=teachers)
    return DistilledDataset(manifest, {"naturals": naturals}, backend="reference")


def _teacher_file(tmp_path, name: str, classes: list[str], seed: int = 0, norm: Normalisation = NORM) -> str:
    torch.manual_seed(seed)
    meta = TeacherMeta(arch="convnet", num_classes=len(classes), classes=classes, mean=norm.mean, std=norm.std,
                       image_size=S, width=0.125)
    path = str(tmp_path / f"{name}.safetensors")
    save_teacher(build_model("convnet", len(classes), image_size=S, width=0.125), meta, path)
    return path


def test_teacher_ensemble_is_the_mean_and_renormalises():
    class Meta:
        mean, std, image_size = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), S

    a, b = _Linear(1), _Linear(2)
    x = torch.randn(4, 3, S, S)
    ens = TeacherEnsemble([(a, None), (b, None)], (0.3,) * 3, (0.2,) * 3, S)
    torch.testing.assert_close(ens(x), (a(x) + b(x)) / 2)
    ens2 = TeacherEnsemble([(a, Meta)], (0.3,) * 3, (0.2,) * 3, S)
    x_t = (x * 0.2 + 0.3 - 0.5) / 0.25  # same pixels, teacher's normalisation
    torch.testing.assert_close(ens2(x), a(x_t), atol=1e-5, rtol=1e-5)


def test_teacher_ensemble_tolerance_and_resizing():
    class Close:  # within Normalisation.TOLERANCE of the data's: fed the data's images as they are
        mean, std, image_size = tuple(v + 0.5e-4 for v in NORM.mean), NORM.std, S

    class Larger:  # same statistics, another input size: resized (antialiased bilinear)
        mean, std, image_size = NORM.mean, NORM.std, 2 * S

    ens = TeacherEnsemble([(_Linear(1), Close)], NORM.mean, NORM.std, S)
    assert ens.adapt == [None]
    big = _Linear(3, size=2 * S)
    x = torch.randn(2, 3, S, S)
    ens = TeacherEnsemble([(big, Larger)], NORM.mean, NORM.std, S)
    expected = big(torch.nn.functional.interpolate(x, size=(2 * S, 2 * S), mode="bilinear", antialias=True,
                                                   align_corners=False))
    torch.testing.assert_close(ens(x), expected)
    with pytest.raises(ValueError, match="at least one teacher"):
        TeacherEnsemble([], NORM.mean, NORM.std, S)


def test_teacher_paths_explicit_manifest_and_missing(tmp_path):
    path = _teacher_file(tmp_path, "t", CLASSES)
    assert teacher_paths(_dataset([path])) == [path]
    assert teacher_paths(_dataset(["/elsewhere"]), explicit=[path]) == [path], "explicit files override"
    with pytest.raises(ValueError, match="names no teacher files"):
        teacher_paths(_dataset())
    with pytest.raises(FileNotFoundError, match="not found: .*gone"):
        teacher_paths(_dataset([str(tmp_path / "gone.safetensors")]))


def test_load_ensemble_restricts_each_teacher_to_the_data_classes(tmp_path):
    """A teacher of more classes, in another order, is read at the data's classes in the data's order."""
    wide = _teacher_file(tmp_path, "wide", ["c", "x", "a", "b"], seed=1)
    same = _teacher_file(tmp_path, "same", CLASSES, seed=2)
    ds = _dataset([wide, same])
    ens = ensemble_for(ds, torch.device("cpu"))
    x = ds.compose(torch.arange(len(ds)))
    from infer_fast.models import load_teacher

    full = load_teacher(wide)[0](x)
    own = load_teacher(same)[0](x)
    torch.testing.assert_close(ens(x), (full[:, [2, 3, 0]] + own) / 2)
    assert all(not p.requires_grad for p in ens.parameters()), "teachers are frozen"
    labels = static_labels(ens, ds, batch_size=4, device=torch.device("cpu"), progress=False)
    assert labels.shape == (len(ds), 3) and labels.dtype == torch.float32
    torch.testing.assert_close(labels, ens(x))


def test_load_ensemble_refuses_a_teacher_that_misses_a_class(tmp_path):
    from infer_fast.models import ClassMismatchError

    path = _teacher_file(tmp_path, "two", ["a", "b"])
    with pytest.raises(ClassMismatchError, match="1 missing"):
        load_ensemble([path], _dataset(), torch.device("cpu"))
