"""The command-line face of ``python -m pretrain`` and ``python -m finetune``: resuming, one clear
message per error, exit statuses, and no run folder left behind by a run that never started.

Errors in what the user gave (config, data, encoder file, checkpoint) print ``error: MESSAGE``
and exit with status 2; a run stopped by a NaN loss exits with 1, a run stopped by SIGTERM with
143 (128 + 15, as if the signal had killed it) after saving its checkpoint, a run that found its
disk full with 74 (``EX_IOERR`` of sysexits.h: neither the input nor the run is at fault, and the
checkpoint it had is intact, so it can be resumed once there is space). With
``HYDRA_FULL_ERROR=1`` the exception is raised with its whole traceback instead, and under
``--multirun`` it is raised for the sweep to handle.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from pretrain.callbacks.finite_loss import NonFiniteLossError
from pretrain.data import DataError
from pretrain.encoders import EncoderError
from pretrain.export import EncoderFileError
from pretrain.files import NoSpaceError, no_space_cause
from pretrain.resume import LAST, resumed_config
from pretrain.text import printable
from pretrain.validate import ConfigError

INPUT_ERRORS = (ConfigError, DataError, EncoderError, EncoderFileError)
EX_IOERR = 74
OUR_CODE = tuple(str(Path(__file__).resolve().parents[1] / pkg) + os.sep for pkg in ("pretrain", "finetune"))


def run_command(cfg: DictConfig, run: Callable[[DictConfig, Path], Any]) -> None:
    """Run ``run(cfg, run_dir)`` inside ``@hydra.main`` as a command."""
    hydra = HydraConfig.get()
    hydra_dir = Path(hydra.runtime.output_dir)
    before = _files(hydra_dir)
    run_dir = hydra_dir
    try:
        cfg, run_dir = resumed_config(cfg, hydra_dir, list(hydra.overrides.task))
        run(cfg, run_dir)
    except SIGTERMException:
        if hydra.mode == RunMode.MULTIRUN:
            raise
        print(f"stopped by SIGTERM; continue with: python -m {hydra.job.config_name} resume={run_dir}", file=sys.stderr)
        sys.exit(143)
    except Exception as err:
        error = _reported(err, run_dir)
        if error is None or hydra.mode == RunMode.MULTIRUN:
            raise
        if not isinstance(error, (NonFiniteLossError, NoSpaceError)):
            _remove_if_only_hydra_wrote(hydra_dir, before)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = printable(error, keep="\n")  # messages may quote files: no escape sequence reaches the terminal
        if isinstance(error, NoSpaceError):
            print(f"error: {message}: {_after_no_space(run_dir, hydra.job.config_name)}", file=sys.stderr)
            sys.exit(EX_IOERR)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1 if isinstance(error, NonFiniteLossError) else 2)


def _reported(err: BaseException, run_dir: Path | None = None) -> BaseException | None:
    """The error to report in one line: ours, a full disk, or a ValueError raised on purpose by
    our code (a task refusing a backbone, say); None for anything else, which keeps its traceback."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, (*INPUT_ERRORS, NonFiniteLossError, NoSpaceError)):
        return err
    cause = no_space_cause(err)  # from a write not through files.atomic_write (a log, say)
    if cause is not None:
        return NoSpaceError(cause.filename or run_dir or "the run folder")
    if isinstance(err, ValueError) and err.__traceback__ is not None:
        tb = err.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        if str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(OUR_CODE):
            return err
    return None


def _after_no_space(run_dir: Path, command: str) -> str:
    """What to do after a full disk: the run's checkpoint, if it has one, is whole (atomic writes)."""
    if (run_dir / LAST).is_file():
        return (
            f"{run_dir / LAST} from before is intact; free space there and continue with: "
            f"python -m {command} resume={run_dir}"
        )
    return "free space there, or point hydra.run.dir at a disk with room, and run again"


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


def _remove_if_only_hydra_wrote(folder: Path, hydra_files: set[Path]) -> None:
    """A run refused at start-up leaves no folder: remove ``folder`` if it holds nothing but what
    Hydra wrote before the run (its .hydra record and log), and then its empty parents."""
    if not folder.is_dir() or _files(folder) - hydra_files:
        return
    if any(p.name != f"{HydraConfig.get().job.name}.log" and ".hydra" not in p.parts for p in hydra_files):
        return  # a folder that held more than Hydra's record before this run (e.g. resume=): keep
    for path in hydra_files:
        path.unlink(missing_ok=True)
    folder = folder.resolve()
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        path.rmdir()
    folder.rmdir()
    cwd = Path.cwd().resolve()
    for parent in folder.parents:  # outputs/pretrain/DATE left empty by the first run of the day
        if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()
