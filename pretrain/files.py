"""Crash-safe writes: a file is written under a temporary name in its folder, then renamed.

A kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_image(path: str | os.PathLike, images: Any, **grid: Any) -> Path:
    """A grid of 0..1 images (``(N, C, H, W)``) as an image file, through torchvision's ``save_image``."""
    from torchvision.utils import save_image

    fmt = Path(path).suffix.lstrip(".") or "png"  # the temporary name has no telling suffix
    return atomic_write(path, lambda tmp: save_image(images.detach().float().cpu(), tmp, format=fmt, **grid))
