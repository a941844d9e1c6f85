"""One run per folder: a run holds an exclusive lock on its folder (``RUN/.lock``) while it lives.

Two processes in one folder (the same ``hydra.run.dir``, or ``resume=RUN`` while RUN still runs)
would write one run's config beside the other's checkpoint and results. The second one is
refused with the first one's process id, host and command, before Hydra writes anything there
(``pretrain.run.cli.CommandStart`` takes the lock between Hydra's composition and its first write). A new run
is refused a folder that already holds a run's record (``.hydra``): it would overwrite it; to
continue that run, resume it. ``resume=auto`` (a requeued job in its own folder) may reuse its
folder.

The lock is ``flock``: the system drops it when the process ends, however it ends, and NFS
clients share it where the server runs a lock manager (NFSv4, or v3 with lockd). The ranks > 0
of a distributed run (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID`` ... nonzero) work in rank 0's
folder under rank 0's lock and take none.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import IO

LOCK = ".lock"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
_held: dict[Path, tuple[IO[str], bool]] = {}  # folder -> its lock file, and whether this process made it


class RunFolderError(ValueError):
    """The run folder is another run's."""


def is_secondary_rank() -> bool:
    """Whether this process is a rank > 0 of a distributed run (by the variables launchers set)."""
    return any(os.environ.get(name, "0").strip() not in ("", "0") for name in RANK_VARIABLES)


def hold(folder: Path, new_run: bool, record: str = ".hydra") -> None:
    """Lock ``folder`` for this process until it ends (or ``release``); with ``new_run``, refuse
    a folder that holds another run's ``record``. Refused: a RunFolderError, and nothing written."""
    folder = Path(folder).resolve()
    if folder in _held or is_secondary_rank():
        return
    lock = folder / LOCK
    used = f"{folder} already holds a run (its {record}): resume it with resume={folder}, or start a new run elsewhere"
    if new_run and (folder / record).exists() and not lock.exists():
        raise RunFolderError(used)  # nothing to ask, and nothing created
    folder.mkdir(parents=True, exist_ok=True)
    made = not lock.exists()
    handle = open(lock, "a+")  # noqa: SIM115 - held open for the run's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not written its name yet"
        handle.close()
        raise RunFolderError(
            f"{folder} is in use by another run: {holder} (it holds {lock}). Wait until it ends to resume it; "
            "start a new run in another folder (hydra.run.dir=...)"
        ) from None
    _held[folder] = handle, made
    if new_run and (folder / record).exists():
        release(folder, remove=True)
        raise RunFolderError(used)
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}: {shlex.join([sys.executable, *sys.argv])}\n")
    handle.flush()


def release(folder: Path, remove: bool = False) -> None:
    """Give up the lock on ``folder``; ``remove``: delete the lock file too if ``hold`` made it
    (the run is refused, and leaves nothing behind)."""
    handle, made = _held.pop(Path(folder).resolve(), (None, False))
    if handle is None:
        return
    if remove and made:
        Path(handle.name).unlink(missing_ok=True)  # while held, so no other process locks the old file
    handle.close()
