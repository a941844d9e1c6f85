"""Crash-safe writes: a file is written under a temporary name in its folder, then renamed.

A kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_TEMPORARY = re.compile(r"\..+\.(\d+)\.tmp")  # atomic_write's temporary names: .NAME.PID.tmp


class NoSpaceError(OSError):
    """A write found its file system full (or the user's quota spent)."""

    def __init__(self, path: str | os.PathLike, needed: int | None = None) -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.needed = needed
        self.free = _free_bytes(Path(path).parent)

    def __str__(self) -> str:
        sizes = [f"about {_mb(self.needed)} needed"] if self.needed else []
        sizes += [] if self.free is None else [f"{_mb(self.free)} free"]
        return f"no space left on device writing {self.filename}" + (f" ({', '.join(sizes)})" if sizes else "")


def _mb(size: int) -> str:
    return f"{size / 2**20:.0f} MB" if size >= 2**20 else f"{size / 2**10:.0f} kB"


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], size: int | None = None) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    A full disk raises ``NoSpaceError`` naming ``path`` (and ``size``, the bytes it needs, where
    the caller knows them); ``path`` itself is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        with open(tmp, "wb") as f:  # created as open() creates any file: its mode follows the umask
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), mode)  # a writer that stages its own temporary file (safetensors) leaves 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        if no_space_cause(err) is None:
            raise
        tmp.unlink(missing_ok=True)  # before measuring the free space: it is the partial file's too
        raise NoSpaceError(path, size) from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def no_space_cause(err: BaseException | None) -> OSError | None:
    """The OSError(ENOSPC or EDQUOT) that ``err`` is or was raised while handling (torch's writer,
    say, failing to close its archive after it), or None: ``err`` does not come from a full disk."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return err
        err = err.__cause__ or err.__context__
    return None


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that ``atomic_write`` calls of processes no longer running (a
    kill during a write leaves one); never those of a live process. Returns the removed paths."""
    removed = []
    for path in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else ():
        match = _TEMPORARY.fullmatch(path.name)
        if match and not _running(int(match[1])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        pass
    return True


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex: names a file by its content, wherever it lies."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through ``atomic_write``.

    Lightning (2.6) stages a checkpoint in a temporary file under the system temp folder and
    then moves it over the target: where that folder is another file system (a local /tmp
    beside a shared run folder, as on most clusters) the move is a copy, and a kill during it
    leaves a half-written ``last.ckpt``. Here the temporary file sits beside the target, so
    the rename is atomic, and it is synced to disk first.

    Loading reads tensors and plain values only (``weights_only=True``) unless asked otherwise.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")

        def save(tmp: Path) -> None:
            # Through a Python file: a full disk then raises OSError(ENOSPC), where torch's own
            # writer of a path raises a RuntimeError that names neither the file nor the cause.
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)

        atomic_write(path, save, size=_tensor_bytes(checkpoint))

    def load_checkpoint(self, path: Any, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> dict[str, Any]:
        return super().load_checkpoint(path, *args, weights_only=weights_only is not False, **kwargs)


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def write_image(path: str | os.PathLike, images: Any, **grid: Any) -> Path:
    """A grid of 0..1 images (``(N, C, H, W)``) as an image file, through torchvision's ``save_image``."""
    from torchvision.utils import save_image

    fmt = Path(path).suffix.lstrip(".") or "png"  # the temporary name has no telling suffix
    return atomic_write(path, lambda tmp: save_image(images.detach().float().cpu(), tmp, format=fmt, **grid))
