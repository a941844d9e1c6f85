"""Crash-safe writes: a file is written under a temporary name in its folder, then renamed.

A kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``."""
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
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: Any, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> dict[str, Any]:
        return super().load_checkpoint(path, *args, weights_only=weights_only is not False, **kwargs)


def write_image(path: str | os.PathLike, images: Any, **grid: Any) -> Path:
    """A grid of 0..1 images (``(N, C, H, W)``) as an image file, through torchvision's ``save_image``."""
    from torchvision.utils import save_image

    fmt = Path(path).suffix.lstrip(".") or "png"  # the temporary name has no telling suffix
    return atomic_write(path, lambda tmp: save_image(images.detach().float().cpu(), tmp, format=fmt, **grid))
