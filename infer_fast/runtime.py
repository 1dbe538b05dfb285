"""The ground floor every stage shares: atomic writes, checksums, the git commit, the device and the torchrun
context, and the ImageNet normalisation constants.

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
from typing import Any

import torch
import torch.distributed as dist

# The normalisation of ImageNet-trained torchvision models, also used for folder datasets.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TMP_SUFFIX = ".tmp"


def cache_root(*parts: str) -> str:
    """``$INFER_FAST_CACHE`` or ``~/.cache/infer_fast`` (joined with ``parts``): every cache of the package."""
    root = os.environ.get("INFER_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "infer_fast")
    return os.path.join(root, *parts)

# ---- errors -----------------------------------------------------------------------------------

# Errors the user fixes outside the program (free space, permissions, mount options): one line, no traceback.
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}
_KEPT: contextvars.ContextVar[str] = contextvars.ContextVar("infer_fast_kept", default="")


def sample_names(names: Sequence[str], n: int = 5) -> str:
    """The first ``n`` of ``names`` for a one-line message, with the count when some are left out."""
    shown = ", ".join(map(str, list(names)[:n]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


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


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``None``/``"auto"``: this process's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else the CPU;
    ``"cuda"`` without an index: ``cuda:LOCAL_RANK``; an explicit device is checked to exist."""
    if name is None or name == "auto":
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device: {str(name)!r} requested but no CUDA device is visible")
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
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank = int(os.environ.get("RANK", "0"))
            self.world = int(os.environ.get("WORLD_SIZE", "1"))
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
