"""The ground floor every stage shares: atomic writes, checksums and JSON keys, seed derivation, the git commit, the
device, the rank and the torchrun context, the cache root, and normalisation (the ImageNet constants and the
:class:`Normalisation` value).

Every file infer_fast writes goes through the ``atomic_*`` functions: the bytes go to a temporary file in the
target's folder (``.NAME.XXXX.tmp``), are fsynced and renamed over the target, so a reader (or a ``--resume``
after ``kill -9``) never sees a partial file. An OS error that the user must act on (no space, no permission,
read-only file system) becomes one :class:`OutputError` line naming the path and, inside :func:`keeping`, what
is kept on disk; the CLI prints that line instead of a traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import hashlib
import io
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from infer_fast.config_cli import ConfigError

# The normalisation of ImageNet-trained torchvision models, also used for folder datasets.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class Normalisation:
    """The per-channel normalisation of a set of images: ``x = (pixel / 255 - mean) / std``. ``lo``/``hi`` are the
    normalised values of pixel 0 and 255 (every composed image is clamped to them)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Two normalisations closer than this (per value) are the same: a teacher trained with one is fed the other's
    # images as they are. Stored statistics are float32 (6-7 digits); 1e-4 is far above their rounding and far below
    # any real difference (ImageNet's and CIFAR's differ by >1e-2).
    TOLERANCE: ClassVar[float] = 1e-4

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"Normalisation: mean and std need 3 values each, got {self.mean}, {self.std}")

    def matches(self, other: Normalisation) -> bool:
        return all(abs(a - b) <= self.TOLERANCE
                   for a, b in zip(self.mean + self.std, other.mean + other.std, strict=True))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """float32 [3] tensors (mean, std, lo, hi) on the CPU: the arguments of compensator_broadcast."""
        mean = torch.tensor(self.mean, dtype=torch.float32)
        std = torch.tensor(self.std, dtype=torch.float32)
        return mean, std, -mean / std, (1 - mean) / std

    def normalise(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] -> float32 normalised (the same arithmetic as compensator_broadcast)."""
        mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (self.mean, self.std))
        return (images_u8.float() / 255.0 - mean) / std

    def quantise(self, images: torch.Tensor) -> torch.Tensor:
        """float32 normalised [..., 3, H, W] -> uint8 RGB (round to nearest)."""
        mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (self.mean, self.std))
        return ((images * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)

    def denormalise(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised [B, 3, H, W] -> [0, 1] RGB."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images * std + mean).clamp(0, 1)


def cache_root(*parts: str) -> str:
    """``$INFER_FAST_CACHE`` or ``~/.cache/infer_fast`` (joined with ``parts``): every cache of the package."""
    root = os.environ.get("INFER_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "infer_fast")
    return os.path.join(root, *parts)

# ---- seeds and keys ---------------------------------------------------------------------------
# Every seed the package derives comes from here. The three rules differ for history only: each fixes the numbers
# of runs already made (a distillation's problems, the loaders' epoch orders, a student's epochs), so unifying them
# would change results and resume fingerprints.


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix64-style), stable across runs and platforms: the data loaders'
    epoch orders and per-image draws."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def hashed_seed(salt: str, *parts: int) -> int:
    """A 63-bit seed for ``parts`` under ``salt`` (sha256; stable across processes and versions): a synthesis
    problem's augmentation (salt "aug") and initial noise (salt "init"), keyed by (seed, a, b)."""
    h = hashlib.sha256(":".join(["infer_fast", salt, *(str(int(p)) for p in parts)]).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def epoch_seeds(seed: int, epoch: int, rank: int) -> tuple[int, int]:
    """(shared, per-rank) seeds of a student-training epoch: the shuffle every rank shares and this rank's
    augmentation and mixing draws."""
    shared = seed * 1_000_003 + epoch
    return shared, shared * 131 + rank + 1


def json_key(obj: Any, *blobs: bytes) -> str:
    """sha256 hex digest of ``obj`` as canonical JSON (sorted keys, ``str()`` for what JSON cannot hold), then of
    ``blobs``: the key of caches and the fingerprint of resumable runs."""
    h = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode())
    for blob in blobs:
        h.update(blob)
    return h.hexdigest()


# ---- errors -----------------------------------------------------------------------------------

# Errors the user fixes outside the program (free space, permissions, mount options): one line, no traceback.
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}
_KEPT: contextvars.ContextVar[str] = contextvars.ContextVar("infer_fast_kept", default="")


def sample_names(names: Sequence[str], n: int = 5) -> str:
    """The first ``n`` of ``names`` for a one-line message, with the count when some are left out."""
    shown = ", ".join(map(str, list(names)[:n]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def index_in(names: Sequence[str], within: Sequence[str]) -> tuple[list[int], list[str]]:
    """Class matching: the index in ``within`` of each of ``names`` (in the order of ``names``), and the names that
    ``within`` lacks (their index is left out). The data's classes against a teacher's or a split's folders."""
    position = {name: i for i, name in enumerate(within)}
    return [position[n] for n in names if n in position], [n for n in names if n not in position]


class OutputError(OSError):
    """A write failed for a reason outside the program; ``str()`` is the one line to show the user."""


class BusyError(RuntimeError):
    """Another process is writing into the same output folder."""


@contextlib.contextmanager
def keeping(note: str) -> Iterator[None]:
    """Inside this block, a failed write says ``note`` (what is kept on disk and how to continue)."""
    token = _KEPT.set(note)
    try:
        yield
    finally:
        _KEPT.reset(token)


def _check(path: str, exc: OSError) -> None:
    """Raise ``exc`` as an OutputError when the user must act on it; other errors (bugs) propagate unchanged."""
    if isinstance(exc, OutputError) or exc.errno not in _USER_ERRNOS:
        return
    note = _KEPT.get()
    err = OutputError(f"cannot write {path}: {os.strerror(exc.errno)}" + (f"; {note}" if note else ""))
    err.errno = exc.errno  # one-argument OSError: str() is the message alone, without an "[Errno N]" prefix
    raise err from exc


# ---- atomic writes ----------------------------------------------------------------------------

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def make_dirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)`` with the OutputError rule."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        _check(path, exc)
        raise


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is one of our temporary files (left behind only by a killed process)."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def remove_temp_files(folder: str) -> int:
    """Delete the temporary files a killed writer left in ``folder``; returns how many. Call it only while no other
    process writes there (see :func:`lock_folder`)."""
    removed = 0
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if is_temp_file(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def atomic_write_bytes(path: str, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file + os.replace (readers never see a partial file); ``fsync``
    for durability (off only for thousands of small files). Creates the parent folder."""
    d = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TMP_SUFFIX, dir=d)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp creates 0600; the final file gets the usual mode
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            _check(path, exc)
        raise


def atomic_write_text(path: str, text: str, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), fsync=fsync)


def atomic_write_json(path: str, obj: Any, indent: int | None = 2) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def atomic_save_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors file of ``tensors`` (moved to CPU, contiguous). Serialised in memory first so that a full disk
    is an OSError of our write, not an opaque safetensors error."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def atomic_torch_save(path: str, obj: Any) -> None:
    """``torch.save(obj)`` atomically (checkpoints)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_with(path: str, write: Callable[[io.BytesIO], None]) -> None:
    """Atomically write what ``write(buffer)`` puts into an in-memory buffer (matplotlib, torchvision images)."""
    buf = io.BytesIO()
    write(buf)
    atomic_write_bytes(path, buf.getvalue())


def append_text(path: str, text: str) -> None:
    """Append ``text`` to ``path`` (line logs such as metrics.jsonl), with the OutputError rule."""
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as exc:
        _check(path, exc)
        raise


@contextlib.contextmanager
def lock_folder(folder: str, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (flock on the directory itself: no lock file, released by the kernel
    when the process dies, even by ``kill -9``). A second process gets a BusyError instead of two runs writing
    and deleting the same files."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"{what}: another process is writing into {folder!r}; wait for it or stop it, then "
                            "rerun") from None
        yield
    finally:
        os.close(fd)  # releases the lock


# ---- checksums and provenance -----------------------------------------------------------------


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def git_commit(short: bool = True) -> str:
    """The commit of the infer_fast checkout, abbreviated unless ``short=False`` (``"unknown"`` outside git)."""
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = ["git", "-C", here, "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---- device and torchrun ----------------------------------------------------------------------


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: the initialised process group's, else torchrun's RANK and WORLD_SIZE
    (0, 1 without torchrun). The one place that reads them."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``None``/``"auto"``: this process's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else the CPU;
    ``"cuda"`` without an index: ``cuda:LOCAL_RANK``; an explicit device is checked to exist."""
    if name is None or name == "auto":
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device: expected a visible device, got {str(name)!r} (no CUDA device is visible)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank())
    return dev


class DistContext:
    """Rank, world size and device of this process, from the torchrun environment (one process without it).

    Joins a process group that is already initialised, else initialises one under torchrun (nccl on CUDA, gloo on
    CPU) and destroys it in :meth:`close`. Under torchrun each rank uses ``cuda:LOCAL_RANK``.
    """

    def __init__(self, device: str | torch.device | None = "auto") -> None:
        self.owns_group = False
        self.rank, self.world = rank_and_world()
        self.device = resolve_device(device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank())
        if self.world > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.owns_group = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks in place (no-op in one process)."""
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()
            self.owns_group = False

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
