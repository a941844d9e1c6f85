"""The command-line face of ``python -m pretrain`` and ``python -m finetune``: resuming, one clear
message per error, exit statuses, and no run folder left behind by a run that never started.

Errors in what the user gave (config, data, encoder file) print ``error: MESSAGE`` and exit
with status 2; a run stopped by a NaN loss exits with 1, a run stopped by SIGTERM with 143
(128 + 15, as if the signal had killed it) after saving its checkpoint. With
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
from pretrain.resume import finished_before_restart, resumed_config
from pretrain.validate import ConfigError

INPUT_ERRORS = (ConfigError, DataError, EncoderError, EncoderFileError)
OUR_CODE = tuple(str(Path(__file__).resolve().parents[1] / pkg) + os.sep for pkg in ("pretrain", "finetune"))


def run_command(cfg: DictConfig, run: Callable[[DictConfig, Path], Any]) -> None:
    """Run ``run(cfg, run_dir)`` inside ``@hydra.main`` as a command."""
    hydra = HydraConfig.get()
    hydra_dir = Path(hydra.runtime.output_dir)
    before = _files(hydra_dir)
    run_dir = hydra_dir
    try:
        cfg, run_dir = resumed_config(cfg, hydra_dir, list(hydra.overrides.task))
        if finished_before_restart(cfg.get("resume"), run_dir):
            print(f"SLURM restarted this job after its run had ended: {run_dir} is left as it is", file=sys.stderr)
            return
        run(cfg, run_dir)
    except SIGTERMException:
        if hydra.mode == RunMode.MULTIRUN:
            raise
        print(f"stopped by SIGTERM; continue with: python -m {hydra.job.config_name} resume={run_dir}", file=sys.stderr)
        sys.exit(143)
    except Exception as err:
        error = _reported(err)
        if error is None or hydra.mode == RunMode.MULTIRUN:
            raise
        if not isinstance(error, NonFiniteLossError):
            _remove_if_only_hydra_wrote(hydra_dir, before)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1 if isinstance(error, NonFiniteLossError) else 2)


def _reported(err: BaseException) -> BaseException | None:
    """The error to report in one line: ours, or a ValueError raised on purpose by our code
    (a task refusing a backbone, say); None for anything else, which keeps its traceback."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, (*INPUT_ERRORS, NonFiniteLossError)):
        return err
    if isinstance(err, ValueError) and err.__traceback__ is not None:
        tb = err.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        if str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(OUR_CODE):
            return err
    return None


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
